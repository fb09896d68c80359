"""Iterative Prox-NAG pruning to a target sparsity.

  python -m train.prune --config configs/proxnag_lenet5_mnist.py --workdir DIR \
      --config.data_dir=../shared/data --config.target_sparsity=0.9

Writes DIR/summary.json, trace.jsonl, report.md, pruned/ (params, batch
stats, masks), and PNG plots. Re-running the same command resumes.
"""

from proxnag_jax import prune_run
from train import cli

if __name__ == "__main__":
  cli.run(prune_run.prune)
