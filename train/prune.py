"""Pruning to a target sparsity with any method (default: iterative Prox-NAG).

  python -m train.prune --config configs/proxnag_lenet5_mnist.py --workdir DIR \
      --config.data.dir=../shared/data --config.prune.target_sparsity=0.9 \
      [--config.prune.method=snip] [--config.proxnag.l1_step=1e-3]

Writes DIR/summary.json, trace.jsonl, report.md, pruned/ (params, batch
stats, masks), and PNG plots. Re-running the same command resumes.
"""

from proxnag_jax import commands
from train import cli

if __name__ == "__main__":
  cli.run(commands.prune, kind="prune")
