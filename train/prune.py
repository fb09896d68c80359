"""Iterative Prox-NAG pruning to a target sparsity.

  python -m train.prune --config configs/proxnag_lenet5_mnist.py --workdir DIR \
      --config.data_dir=../shared/data --config.target_sparsity=0.9

Writes DIR/summary.json, trace.jsonl, report.md, pruned/ (params, batch
stats, masks), and PNG plots. Re-running the same command resumes.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from proxnag_jax import prune_run

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Discard a workdir holding a different config.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)   # orbax is chatty at INFO
  prune_run.prune(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)


if __name__ == "__main__":
  app.run(main)
