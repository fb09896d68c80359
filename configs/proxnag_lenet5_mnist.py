"""Iterative Prox-NAG pruning of LeNet-5 on MNIST (the CPU-scale experiment).

  python -m train.prune --config configs/proxnag_lenet5_mnist.py \
      --workdir runs/proxnag_lenet5_90 --config.data.dir=../shared/data \
      --config.prune.target_sparsity=0.9

Starts from `dense_checkpoint` (a finished `train.train` workdir) or, if
empty, trains the dense model of `configs/lenet5_mnist.py` in WORKDIR/dense.
Variants: `:paper` (the core paper's schedule, open-loop lambda, absolute
threshold), `:bn` / `:bn_paper` (the same on LeNet-5 with BatchNorm).
Any other method runs with `--config.prune.method=NAME`; each method reads
its own sub-config (`config.proxnag`, `config.sparse_momentum`, ...), whose
defaults are the factory's (proxnag_jax.methods), e.g.
`--config.proxnag.l1_step=1e-3`.
"""

from configs import common
from configs import lenet5_mnist


def paper_schedule(p, l1_init: float = 5e-4, l1_step: float = 5e-4):
  """Prox-NAG as the core paper runs it: open-loop lambda rounds
  (``l1_init + r * l1_step``) stopped at a local maximum of sparsity, and
  the absolute threshold on every kernel (``scale_invariant=False``)."""
  p.schedule = "paper"
  p.scale_invariant = False
  p.l1_init = l1_init
  p.l1_step = l1_step
  p.monitor_every = 20


def smoke_proxnag(p):
  """Prox-NAG settings for a seconds-long smoke run: monitors every 2
  steps (read by both schedules, so a sweep's paper-schedule variant of a
  smoke base takes it too)."""
  p.monitor_every = 2


VARIANTS = ("smoke", "paper", "bn", "bn_paper")


def get_config(arg: str = ""):
  common.check_variant(arg, VARIANTS)
  smoke = arg == "smoke"
  c = common.pruning_config(lenet5_mnist.get_config("smoke" if smoke else ""))
  c.model.name = "lenet5_bn" if arg.startswith("bn") else "lenet5"
  # Prox-NAG (the default, target schedule): the sparsity ramp ends at 40%
  # of the budget, then the mask is fine-tuned.
  c.prune.budget_epochs = 20.0
  if arg.endswith("paper"):
    # The paper's schedule (open-loop lambda rounds; 5 rounds to 90% took
    # 16.6 epochs, docs/results.md).
    paper_schedule(c.proxnag)
  # DSR keeps the first conv and the classifier dense, as its reference.
  c.dsr.dense = ("^conv1/", "^fc2/")
  if smoke:
    c.prune.target_sparsity = 0.5
    smoke_proxnag(c.proxnag)
    common.smoke_run(c.run, chunk_steps=4)
    # 21 steps: the ramp reaches 50% at step 6, then the mask fine-tunes.
    c.prune.budget_epochs = 3.0
    c.gmp.every = 2
    c.dsr.periods = (4, 8)
    c.dsr.period_starts = (0.0, 0.5)
  return c
