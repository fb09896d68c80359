"""Dense training: `python -m train.train --config configs/X.py --workdir DIR`.

Config fields are overridden with `--config.<field>=value`; a `:smoke` suffix
on the config path picks its tiny variant. Re-running the same command
resumes from the last checkpoint in DIR.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from proxnag_jax import engine

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Discard a workdir holding a different config.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)   # orbax is chatty at INFO
  engine.train(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)


if __name__ == "__main__":
  app.run(main)
