"""All methods on LeNet-5 / MNIST at 50, 90 and 99% (a CPU-sized Table 1).

  python -m train.sweep --config configs/sweep_lenet5_mnist.py \
      --workdir runs/sweep_lenet5 --config.data.dir=../shared/data

Budget: a 3-epoch dense run shared by the dense-start methods, then 3
epochs of pruning/fine-tuning; scratch methods train 6 epochs. Prox-NAG's
final fine-tune fills what its rounds leave of the 3 epochs (at least half
an epoch is kept for it; a run that cannot reach the target in the rest says
so: reached_target false, `*` in the table). Three seeds; a 5,000-image
validation split held out of the training set.
"""

import ml_collections

from configs import common

from configs import proxnag_lenet5_mnist

METHODS = ("proxnag", "magnitude", "gmp", "l2", "snip", "sparse_momentum",
           "dsr", "random", "admm", "rw_admm")


def get_config(arg: str = ""):
  common.check_variant(arg)
  c = ml_collections.ConfigDict()
  c.data = common.sweep_data()
  c.methods = METHODS
  c.sparsities = (0.5, 0.9, 0.99)
  # Three seeds: the margins between methods are a few tenths of a point.
  c.seeds = (0, 1, 2)
  # Run the cells of each method as one vmapped program (same results as
  # one by one; fills an accelerator with small models).
  c.vmap_runs = False
  b = proxnag_lenet5_mnist.get_config()
  b.dense.num_epochs = 3
  b.dense.warmup_epochs = 0.5
  b.prune.budget_epochs = 3.0
  # Prox-NAG inside the budget: larger lambda steps, half-epoch fine-tunes.
  p = b.proxnag
  # The paper's schedule, as in the committed 3-seed sweep.
  proxnag_lenet5_mnist.paper_schedule(p, 3e-3, 3e-3)
  p.fill_budget = True
  p.prune_max_epochs = 0.5
  p.finetune_epochs = 0.25
  p.finetune_growth = 0.0
  # Kept back for the final fine-tune (which fills what the rounds leave).
  p.final_finetune_epochs = 0.5
  b.gmp.every = 50
  # ADMM inside 3 epochs: Z/U every half epoch over the first half (3
  # rounds), then hard prune and 1.5 epochs of retraining.
  for m in (b.admm, b.rw_admm):
    m.every_epochs = 0.5
  c.base = b
  c.paper_table = {}
  if arg == "smoke":
    c.base = proxnag_lenet5_mnist.get_config("smoke")
    c.methods = ("proxnag", "magnitude", "snip", "sparse_momentum")
    c.sparsities = (0.5, 0.8)
    c.seeds = (0,)
  return c
