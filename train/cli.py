"""What every command line here shares: `--config`, `--workdir`,
`--overwrite`, `--allow_changes`, `--debug`.

A user error (a bad config value, missing or malformed data, a workdir that
holds another run, a diverged loss) ends the command with exit status 2 and
one paragraph that says what to do; ``--debug`` shows the Python traceback
instead (keep it for bugs).
"""

import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from proxnag_jax import data as data_lib
from proxnag_jax import distributed
from proxnag_jax import hostio
from proxnag_jax import experiment
from proxnag_jax import methods as methods_lib

# Errors that are the user's to fix, not bugs.
USER_ERRORS = (ValueError, FileNotFoundError, data_lib.DataError,
               hostio.TrainingDiverged, hostio.WorkdirLocked,
               distributed.PrimaryFailed)


def define_once(define, name: str, default, help_text: str):
  """``define(name, default, help_text)`` unless a module imported earlier in
  this process defined flag ``name`` already; then that flag's holder.

  Two commands may share a flag name (``--run``, ``--repeats``); this lets
  their modules be imported together (by a test or a notebook) without a
  duplicate-flag error. A command run from the shell imports only its own
  module, so its own default and help apply.
  """
  if name in flags.FLAGS:
    return flags.FlagHolder(flags.FLAGS, flags.FLAGS[name])
  return define(name, default, help_text)


def run_flag(help_text: str):
  """The ``--run`` flag (a finished workdir) that several commands read."""
  return define_once(flags.DEFINE_string, "run", None, help_text)


def unused_method_flags(config, argv) -> list:
  """``--config.<method>.<field>`` flags for a method the run does not use."""
  if not experiment.is_pruning_config(config):
    return []
  out = []
  for a in argv:
    if not a.startswith("--config."):
      continue
    parts = a[len("--config."):].split("=")[0].split(".")
    if (len(parts) > 1 and parts[0] in methods_lib.PRUNING_METHODS and
        parts[0] != config.prune.method):
      out.append(a.split("=")[0])
  return out


def ignored_flags(config, argv) -> list:
  """``--config.<field>`` overrides of a pruning run that the run would not
  read (:func:`proxnag_jax.experiment.ignored_fields`), with the reason."""
  if not experiment.is_pruning_config(config):
    return []
  ignored = experiment.ignored_fields(config, experiment.method_of(config))
  out = []
  for a in argv:
    if a.startswith("--config."):
      path = a[len("--config."):].split("=")[0]
      if path in ignored:
        out.append(f"--config.{path} ({ignored[path]})")
  return out


def flag_error_message(err: Exception, argv) -> str:
  """One paragraph for an error raised while reading the command line: a
  config file that cannot be loaded, an unknown or malformed override."""
  text = str(err.args[0] if err.args else err)
  no_get_config = "has no attribute 'get_config'" in text
  unknown_field = (isinstance(err, (AttributeError, KeyError)) and
                   not no_get_config)
  if unknown_field:
    given = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    bad = [a for a in given if a.split(".")[-1] in text] or given or [
        "--config.<field>"]
    where = bad[0]
    mean = re.search(r'Did you mean "([^"]+)"', text)
    hint = f" (did you mean {mean.group(1)!r}?)" if mean else ""
    return (f"{where}: the config has no field "
            f"{where.split('.')[-1]!r}{hint}. The valid fields are the "
            "ones the config file sets (a method's settings live under "
            "config.<method>, e.g. --config.proxnag.prune_lr); --helpfull "
            "lists them (the layout: configs/common.py).")
  config = [a for a in argv[1:] if a.startswith("--config=")]
  if not config and "--config" in argv[:-1]:
    config = ["--config " + argv[argv.index("--config") + 1]]
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  detail = lines[-1] if lines else type(err).__name__
  if isinstance(err, SyntaxError):
    detail = f"{err.msg} in {err.filename}, line {err.lineno}"
  elif no_get_config:
    detail = "the file has no get_config()"
  return (f"could not read the config ({' '.join(config) or '--config'}): "
          f"{detail.rstrip('.')}. Give the path of a Python file with a "
          "get_config() "
          "(e.g. configs/proxnag_lenet5_mnist.py, optionally with "
          ":variant).")


def report_error(err: Exception, argv) -> None:
  sys.stderr.write(f"\nerror: {flag_error_message(err, argv)}\n"
                   "(--debug shows the traceback)\n")
  sys.exit(2)


def legacy_flags(argv, kind: str) -> list:
  """``argv`` with each ``--config.<field>`` of the flat config layout of
  before (``--config.data_dir``, ``--config.target_sparsity``, ...) written
  as today's (``--config.data.dir``, ``--config.prune.target_sparsity``),
  with a note on stderr, so older command lines keep working. ``kind``:
  the command's config, 'train', 'prune' or 'sweep'."""
  out, moved = [], []
  for a in argv:
    new = experiment.legacy_flag(a, kind) if a.startswith("--config.") else None
    out.append(new or a)
    if new:
      moved.append(f"{a.split('=')[0]} -> {new.split('=')[0]}")
  if moved:
    sys.stderr.write("note: the config has one sub-config per component "
                     f"now (configs/common.py): {'; '.join(moved)}\n")
  return out


def flags_parser(kind: str):
  """:func:`parse_flags` for a command whose config is of ``kind``."""
  return lambda argv: parse_flags(argv, kind)


def parse_flags(argv, kind: str = ""):
  """absl's flag parsing, with a command-line error reported as a user
  error (one paragraph, exit 2; ``--debug`` raises it); with ``kind``,
  the flat layout's flags are read as today's (:func:`legacy_flags`)."""
  if kind:
    new = legacy_flags(argv, kind)
    if list(argv) == sys.argv:
      sys.argv[:] = new      # ml_collections reads the overrides from it
    argv = new
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    if "--debug" in argv or "--debug=true" in argv:
      raise
    report_error(e, argv)


def run(fn, help_config: str = "Config file.", kind: str = "train") -> None:
  """Defines the shared flags and runs ``fn(config, workdir, overwrite=...)``.

  ``--config.<field>=value`` overrides a field; ``:smoke`` after the config
  path picks its tiny variant. ``kind``: the config's ('train', 'prune' or
  'sweep'), for reading older command lines (:func:`legacy_flags`).
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
      config.value.get("seed")        # a config file that failed to load
    except Exception as e:  # pylint: disable=broad-except
      if debug.value:
        raise
      report_error(e, sys.argv)
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
            f"(config.prune.method is {config.value.prune.method!r}); drop "
            "them or set --config.prune.method to that method.")
      ignored = ignored_flags(config.value, sys.argv)
      if ignored:
        raise ValueError(
            f"{'; '.join(ignored)}: this run would not read "
            f"{'it' if len(ignored) == 1 else 'them'}; drop "
            f"{'it' if len(ignored) == 1 else 'them'} or change the setting "
            "that makes it unused.")
      fn(config.value, workdir.value, overwrite=overwrite.value,
         allow_changes=allow_changes.value)
    except USER_ERRORS as e:
      if debug.value:
        raise
      sys.stderr.write(f"\nerror: {e}\n(--debug shows the traceback)\n")
      sys.exit(2)

  app.run(main, flags_parser=flags_parser(kind))
