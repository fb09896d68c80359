"""Methods x sparsities x seeds with one budget (paper Table 1 and Fig. 9).

  python -m train.sweep --config configs/sweep_lenet5_mnist.py --workdir DIR \
      --config.data_dir=../shared/data

Finished cells are skipped on a re-run; writes DIR/results.csv, table.md and
accuracy_vs_sparsity.png.
"""

from proxnag_jax import sweep
from train import cli

if __name__ == "__main__":
  cli.run(sweep.run, "Sweep config.")
