"""What every command line here shares: `--config`, `--workdir`,
`--overwrite`, `--allow_changes`, `--debug`.

A user error (a bad config value, missing or malformed data, a workdir that
holds another run, a diverged loss) ends the command with exit status 2 and
one paragraph that says what to do; ``--debug`` shows the Python traceback
instead (keep it for bugs).
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from proxnag_jax import data as data_lib
from proxnag_jax import engine
from proxnag_jax import methods as methods_lib

# Errors that are the user's to fix, not bugs.
USER_ERRORS = (ValueError, FileNotFoundError, data_lib.DataError,
               engine.TrainingDiverged, engine.WorkdirLocked)


def unused_method_flags(config, argv) -> list:
  """``--config.<method>.<field>`` flags for a method the run does not use."""
  if "method" not in config:
    return []
  out = []
  for a in argv:
    if not a.startswith("--config."):
      continue
    parts = a[len("--config."):].split("=")[0].split(".")
    if (len(parts) > 1 and parts[0] in methods_lib.METHOD_NAMES and
        parts[0] != config.method):
      out.append(a.split("=")[0])
  return out


def run(fn, help_config: str = "Config file.") -> None:
  """Defines the shared flags and runs ``fn(config, workdir, overwrite=...)``.

  ``--config.<field>=value`` overrides a field; ``:smoke`` after the config
  path picks its tiny variant.
  """
  config = config_flags.DEFINE_config_file("config", None, help_config,
                                           lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "Output directory.")
  overwrite = flags.DEFINE_bool(
      "overwrite", False, "Discard a workdir holding a different config.")
  allow_changes = flags.DEFINE_bool(
      "allow_changes", False, "Resume a workdir under a changed config (e.g. "
      "a lower learning rate after a NaN); the changes are recorded in "
      "config_changes.jsonl.")
  debug = flags.DEFINE_bool(
      "debug", False, "Show the Python traceback of a user error.")
  flags.mark_flags_as_required(["config", "workdir"])

  def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)   # orbax is chatty at INFO
    try:
      unused = unused_method_flags(config.value, sys.argv)
      if unused:
        raise ValueError(
            f"{', '.join(unused)} set a method this run does not use "
            f"(config.method is {config.value.method!r}); drop them or set "
            "--config.method to that method.")
      fn(config.value, workdir.value, overwrite=overwrite.value,
         allow_changes=allow_changes.value)
    except USER_ERRORS as e:
      if debug.value:
        raise
      sys.stderr.write(f"\nerror: {e}\n(--debug shows the traceback)\n")
      sys.exit(2)

  app.run(main)
