"""Methods x sparsities x seeds with one budget (paper Table 1 and Fig. 9).

  python -m train.sweep --config configs/sweep_lenet5_mnist.py --workdir DIR \
      --config.data_dir=../shared/data

Finished cells are skipped on a re-run; writes DIR/results.csv, table.md and
accuracy_vs_sparsity.png.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from proxnag_jax import sweep

_CONFIG = config_flags.DEFINE_config_file("config", None, "Sweep config.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Discard a sweep dir holding a different config.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  sweep.run(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)


if __name__ == "__main__":
  app.run(main)
