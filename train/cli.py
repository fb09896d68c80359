"""What every command line here shares: `--config`, `--workdir`, `--overwrite`."""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags


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
  flags.mark_flags_as_required(["config", "workdir"])

  def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)   # orbax is chatty at INFO
    fn(config.value, workdir.value, overwrite=overwrite.value)

  app.run(main)
