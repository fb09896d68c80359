"""Iterative Prox-NAG pruning of LeNet-5 on MNIST (the CPU-scale experiment).

  python -m train.prune --config configs/proxnag_lenet5_mnist.py \
      --workdir runs/proxnag_lenet5_90 --config.data_dir=../shared/data \
      --config.target_sparsity=0.9

Starts from `dense_checkpoint` (a finished `train.train` workdir) or, if
empty, trains the dense model of `configs/lenet5_mnist.py` in WORKDIR/dense.
Variants: `:paper` (the core paper's schedule, open-loop lambda, absolute
threshold), `:bn` / `:bn_paper` (the same on LeNet-5 with BatchNorm).
Any other method runs with `--config.method=NAME`; each method reads its own
sub-config (`config.proxnag`, `config.sparse_momentum`, ...), whose defaults
are the factory's (proxnag_jax.methods), e.g. `--config.proxnag.l1_step=1e-3`.
"""

from configs import common
from configs import lenet5_mnist
from proxnag_jax import methods


def prune_defaults(c):
  """Pruning fields shared by the pruning configs: the run, the budget, and
  one sub-config per method (its factory's defaults)."""
  c.method = "proxnag"
  c.target_sparsity = 0.9
  c.dense_checkpoint = ""
  # Leaves NOT to prune, as regexes on names like 'conv1/kernel' (default:
  # every conv and dense kernel is pruned; biases and norm scales never).
  c.prune_exclude = ()
  # One budget for every method: methods that start from the dense model
  # train budget_epochs; methods from scratch dense.num_epochs + budget_epochs.
  c.budget_epochs = 10.0
  # Masked training from the dense model (magnitude, GMP, L2): cosine from
  # finetune_lr; from scratch: the dense config's schedule. Both Nesterov SGD
  # with `momentum` and the dense config's weight decay.
  c.finetune_lr = 0.01
  c.momentum = 0.9
  c.checkpoint_every_steps = 200
  for name in methods.PRUNING_METHODS:
    c[name] = methods.method_config(name)
  return c


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
  c = common.run_config()
  c.model = "lenet5_bn" if arg.startswith("bn") else "lenet5"
  c.dataset = "mnist"
  c.batch_size = 128
  c.dense = lenet5_mnist.get_config()
  prune_defaults(c)
  # Prox-NAG (the default, target schedule): the sparsity ramp ends at 40%
  # of the budget, then the mask is fine-tuned.
  c.budget_epochs = 20.0
  if arg.endswith("paper"):
    # The paper's schedule (open-loop lambda rounds; 5 rounds to 90% took
    # 16.6 epochs, docs/results.md).
    paper_schedule(c.proxnag)
  # DSR keeps the first conv and the classifier dense, as its reference.
  c.dsr.dense = ("^conv1/", "^fc2/")
  if arg == "smoke":
    c.dense = lenet5_mnist.get_config("smoke")
    c.batch_size = 64
    c.train_subset = 512
    c.val_size = common.SMOKE_VAL_SIZE
    c.test_subset = 500
    c.target_sparsity = 0.5
    smoke_proxnag(c.proxnag)
    c.chunk_steps = 4
    c.checkpoint_every_steps = 4
    c.log_every_s = 30.0
    c.budget_epochs = 8.0   # the smoke rounds reach 50% in about 7.4
    c.gmp.every = 2
    c.dsr.periods = (4, 8)
    c.dsr.period_starts = (0.0, 0.5)
  return c
