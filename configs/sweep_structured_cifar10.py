"""Structured pruning of ResNet-20-B on CIFAR-10, four methods at equal cost
(issue 13's CIFAR part; a shortened CPU schedule).

  python -m train.sweep --config configs/sweep_structured_cifar10.py \
      --workdir runs/sweep_structured_cifar10 --config.data_dir=../shared/data
  python -m train.sweep --config configs/sweep_structured_cifar10.py:full ...

Every method's target is a fraction of the dense network's MACs removed
(``match='macs'``; each keeps its own ranking and allocation across layers):
50% (2x fewer MACs: issue 13's speed bar asks for >= 1.5x measured there)
and 75%. Kept channel counts are rounded to multiples of 8
(``round_to=8``): XLA:CPU runs such widths markedly faster than odd ones
(docs/results.md, session 4), and the cost match is made after rounding.

Budget (the same for every method): a shared 10-epoch dense ResNet-20-B
(option-B 1x1 shortcuts, so surgery can narrow the residual streams too;
45,000 training images, 5,000 held out for validation), then 5 epochs of
pruning and fine-tuning each. One seed (0). About 4 h on these 2-core CPUs
(~170 images/s; the 50% column runs first and is done after ~2.3 h).
The table and every cell's summary.json carry the MAC and parameter ratios
and the measured inference speed-up of the exported smaller network.

``full`` (GPU): the 200-epoch dense model and 60 epochs each, 3 seeds.
"""

import ml_collections

from configs import common
from configs import structured_cifar10

METHODS = ("gat", "l1_filter", "slimming", "group_proxnag")
VARIANTS = ("smoke", "full")


def get_config(arg: str = ""):
  common.check_variant(arg, VARIANTS)
  c = ml_collections.ConfigDict()
  c.data_dir = ""
  c.methods = METHODS
  c.sparsities = (0.5, 0.75)
  c.seeds = (0,)
  c.vmap_runs = False
  b = structured_cifar10.get_config({"full": "resnet20_full"}.get(arg, arg))
  for m in METHODS:
    b[m].match = "macs"
    b[m].round_to = 8
  if arg != "smoke":
    # A CPU epoch is ~350 steps (~5 min on one core): lose at most that.
    b.checkpoint_every_steps = 350
  if arg == "full":
    c.seeds = (0, 1, 2)
  elif arg == "smoke":
    c.methods = ("gat", "l1_filter")
    c.sparsities = (0.5,)
    for m in METHODS:
      b[m].round_to = 4
  # The committed sweep ran group-lasso Prox-NAG with the absolute channel
  # threshold (its lambda steps are in those units); the scale-invariant
  # step (the factory default since issue 27) needs its lambda chosen anew.
  b.group_proxnag.scale_invariant = False
  c.base = b
  c.paper_table = {}
  c.target_note = ("Columns: the fraction of the dense network's MACs "
                   "removed (every method matched to it, kept channel "
                   f"counts rounded to multiples of {b.gat.round_to}).")
  return c
