"""Methods x sparsities x seeds with one budget (paper Table 1 and Fig. 9).

  python -m train.sweep --config configs/sweep_lenet5_mnist.py --workdir DIR \
      --config.data.dir=../shared/data [--reuse_from=OTHER_SWEEP_DIR,...] \
      [--report_only]

Finished cells are skipped on a re-run; ``--reuse_from`` copies finished
cells of other sweeps that ran exactly a cell's config (``sweep.reuse_cells``);
writes DIR/results.csv, table.md and accuracy_vs_sparsity.png
(``--report_only``: the same for the cells finished so far, in DIR/partial/,
running nothing). ``--worker``: start several (e.g. ``taskset -c K`` or
``CUDA_VISIBLE_DEVICES=K`` each) on the same DIR to share its cells.
"""

from absl import flags

from proxnag_jax import sweep
from train import cli

_REPORT = flags.DEFINE_bool(
    "report_only", False, "Run nothing: write DIR/partial/table.md (and the "
    "csv and plot) from the cells finished so far; safe beside a running "
    "sweep.")
_REUSE = flags.DEFINE_list(
    "reuse_from", [], "Sweep workdirs whose finished cells may be copied "
    "when they ran exactly one of this sweep's cell configs.")


_WORKER = flags.DEFINE_bool(
    "worker", False, "One of several processes running this sweep in the "
    "same workdir together (start one per core or device, each with "
    "--worker): each claims the next unfinished cell no other worker holds; "
    "the last to finish writes the tables.")


def _run(config, workdir, **kw):
  return sweep.run(config, workdir, reuse_from=_REUSE.value,
                   report_only=_REPORT.value, worker=_WORKER.value, **kw)


if __name__ == "__main__":
  cli.run(_run, "Sweep config.", kind="sweep")
