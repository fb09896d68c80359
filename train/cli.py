"""What every command line here shares: `--config`, `--workdir`,
`--overwrite`, `--allow_changes`, `--debug`.

A user error (a bad config value, missing or malformed data, a workdir that
holds another run, a diverged loss) ends the command with exit status 2 and
one paragraph that says what to do; ``--debug`` shows the Python traceback
instead (keep it for bugs).
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from proxnag_jax import data as data_lib
from proxnag_jax import distributed
from proxnag_jax import engine
from proxnag_jax import methods as methods_lib

# Errors that are the user's to fix, not bugs.
USER_ERRORS = (ValueError, FileNotFoundError, data_lib.DataError,
               engine.TrainingDiverged, engine.WorkdirLocked,
               distributed.PrimaryFailed)


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
  coordinator = flags.DEFINE_string(
      "coordinator_address", None, "Several processes: process 0's "
      f"host:port (or ${distributed.ENV['coordinator_address']}).")
  num_processes = flags.DEFINE_integer(
      "num_processes", None, "Several processes: how many (or "
      f"${distributed.ENV['num_processes']}).")
  process_id = flags.DEFINE_integer(
      "process_id", None, "Several processes: this one's id, 0 .. n-1 (or "
      f"${distributed.ENV['process_id']}).")
  auto_distributed = flags.DEFINE_bool(
      "distributed", False, "Start jax.distributed from the cluster's "
      "environment (SLURM, Open MPI, Cloud TPU).")
  flags.mark_flags_as_required(["config", "workdir"])

  def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)   # orbax is chatty at INFO
    try:
      distributed.initialize(coordinator.value, num_processes.value,
                             process_id.value, auto=auto_distributed.value)
      if not distributed.is_primary():
        # Process 0 reports; the others' progress would repeat it.
        sys.stdout = open(os.devnull, "w")  # pylint: disable=consider-using-with
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
