"""ADMM and reweighted ADMM pruning of LeNet-5 on MNIST (seed 004).

  python -m train.prune --config configs/admm_lenet5_mnist.py \
      --workdir runs/admm_lenet5 --config.data.dir=../shared/data \
      [--config.prune.dense_checkpoint=runs/lenet5_val]
  python -m train.prune --config configs/admm_lenet5_mnist.py:rw ...   # reweighted
  python -m train.prune --config configs/admm_lenet5_mnist.py:rw_rel ...  # layer-relative
  python -m train.prune --config configs/admm_lenet5_mnist.py:proxnag ...     # Prox-NAG
  python -m train.prune --config configs/admm_lenet5_mnist.py:proxnag_rw ...  # at both
  python -m train.prune --config configs/admm_lenet5_mnist.py:budget ...      # per-layer
  python -m train.prune --config configs/admm_lenet5_mnist.py:rw_budget ...   # budgets
  python -m train.prune --config configs/admm_lenet5_mnist.py:rw71 ...  # reweighted, 71x
  python -m train.prune --config configs/admm_lenet5_mnist.py:proxnag_budget ...
      # Prox-NAG (target schedule) held to the same per-layer budget

Targets (weights of the Caffe LeNet-5: 430,500; with biases 431,080):
* ``admm``: 98.73% of the weights pruned, 5,467 kept: 78.7x over the
  weights, 71.3x over all parameters (Zhang et al. 2018: 71.2x over the
  weights at 99.2%).
* ``rw``: 99.719% pruned, 1,209 kept: 356x over the weights (seed 004:
  355.9x), 240x over all parameters.

Per-layer budgets (``:budget``, ``:rw_budget``): the kept fractions of the
ADMM reference's 71x LeNet-5 (KaiqiZhang/admm-pruning: 100 / 2,000 / 3,600 /
350 weights of conv1 / conv2 / fc1 / fc2) taken to the target by one
exponent (``masks.power_allocation``): at 356x 48 / 634 / 423 / 105.
``:proxnag_budget`` holds Prox-NAG's target schedule to the same budget
(``proxnag.layer_keep``: the penalty trimmed inside each layer), so the
three methods can be compared at one allocation; override its fractions as
the others', e.g. ``--config.proxnag.layer_keep.conv1=0.33``.

Budget: 40 epochs after the dense model; ADMM takes the first half with a
Z/U step every epoch (20 rounds, as the reference's Caffe LeNet-5 solver),
then hard pruning and 20 epochs of masked retraining.
"""

from configs import common
from configs import proxnag_lenet5_mnist


VARIANTS = ("smoke", "rw", "rw_rel", "rw_smoke", "proxnag",
            "proxnag_rw", "budget", "rw_budget", "rw71", "budget_smoke",
            "proxnag_budget", "proxnag_budget_smoke")

# Kept fractions per layer of the ADMM reference's 71x LeNet-5.
ADMM_71X = {"conv1": 100 / 500, "conv2": 2000 / 25000,
            "fc1": 3600 / 400000, "fc2": 350 / 5000}


def get_config(arg: str = ""):
  common.check_variant(arg, VARIANTS)
  smoke = arg.endswith("smoke")
  c = proxnag_lenet5_mnist.get_config("smoke" if smoke else "")
  rw = arg.startswith("rw") or arg == "proxnag_rw"
  budget = arg.startswith(("budget", "rw_budget", "proxnag_budget"))
  c.prune.method = ("proxnag" if arg.startswith("proxnag_budget") else
              "rw_admm" if rw else "admm")
  c.prune.target_sparsity = (0.99719 if (rw or budget) and arg != "rw71"
                             else 0.9873)
  c.prune.budget_epochs = 40.0
  # prune.finetune_lr: the default 0.01 (SGD, as the reference's Caffe
  # solver).
  for m in (c.admm, c.rw_admm):
    m.admm_fraction = 0.5
    m.every_epochs = 1.0
  if budget:
    c[c.prune.method].layer_keep = dict(ADMM_71X)
  if arg == "rw_rel":
    # Weights compared to their layer's RMS before the global threshold.
    c.rw_admm.relative = True
  # :proxnag_budget: Prox-NAG's target schedule (the default: a lambda
  # controller to the count, then fine-tuning from the phase start) held to
  # the budget.
  if arg.startswith("proxnag") and not arg.startswith("proxnag_budget"):
    # Prox-NAG at the same target, from the same dense model, in the same
    # 40 epochs (its rounds, then a final fine-tune filling the budget).
    c.prune.method = "proxnag"
    p = c.proxnag
    proxnag_lenet5_mnist.paper_schedule(p, 1e-3, 1e-3)
    p.max_rounds = 15
    p.finetune_epochs = 1.0
    p.finetune_growth = 0.5
    p.final_finetune_epochs = 6.0
    p.fill_budget = True
  if smoke:
    c.prune.target_sparsity = 0.9
    c.prune.budget_epochs = 2.0
    for m in (c.admm, c.rw_admm):
      m.every_epochs = 0.25
  return c
