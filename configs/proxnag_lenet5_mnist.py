"""Iterative Prox-NAG pruning of LeNet-5 on MNIST (the CPU-scale experiment).

  python -m train.prune --config configs/proxnag_lenet5_mnist.py \
      --workdir runs/proxnag_lenet5_90 --config.data_dir=../shared/data \
      --config.target_sparsity=0.9

Starts from `dense_checkpoint` (a finished `train.train` workdir) or, if
empty, trains the dense model of `configs/lenet5_mnist.py` in WORKDIR/dense.
"""

from configs import common
from configs import lenet5_mnist


def prune_defaults(c):
  """Pruning-loop fields shared by the Prox-NAG configs."""
  c.method = "proxnag"
  c.target_sparsity = 0.9
  c.dense_checkpoint = ""
  # Leaves NOT to prune, as regexes on names like 'conv1/kernel' (default:
  # every conv and dense kernel is pruned; biases and norm scales never).
  c.prune_exclude = ()
  # lambda_r = l1_init + r * l1_step (linear raise between rounds).
  c.l1_init = 5e-4
  c.l1_step = 5e-4
  c.max_rounds = 10
  # Prune-train (Prox-NAG) phase.
  c.prune_lr = 0.01
  c.prune_weight_decay = 0.0
  c.fista = False
  c.prune_max_epochs = 2.0
  c.monitor_every = 20          # steps between sparsity/loss monitors
  c.drop_tol = 0.002            # local max: sparsity fell this far below best
  c.patience = 15               # ... or no new max for this many monitors
  c.loss_ema = 0.9              # loss moving average per monitor
  c.loss_warmup_monitors = 3    # its value after 3 monitors is the reference
  c.loss_rise = 2.0             # sharp rise: EMA > 2x reference ...
  c.loss_rise_min = 0.05        # ... and by at least 0.05
  # Fine-tune phase: finetune_epochs + round * finetune_growth epochs;
  # the last round at least final_finetune_epochs.
  c.finetune_lr = 0.01
  c.finetune_weight_decay = 5e-4
  c.finetune_epochs = 1.0
  c.finetune_growth = 1.0
  c.final_finetune_epochs = 4.0
  c.checkpoint_every_steps = 200
  # The baselines (proxnag_jax.methods, python -m train.sweep), one budget:
  # dense-start methods train budget_epochs, scratch methods
  # dense.num_epochs + budget_epochs.
  c.budget_epochs = 10.0
  c.fill_budget = False          # Prox-NAG: final fine-tune fills the budget
  c.magnitude_scope = "global"
  c.gmp_every = 100             # steps between GMP mask updates
  c.gmp_end_fraction = 0.5      # GMP reaches the target at half the budget
  c.l2_iterations = 3           # Han et al.: prune / retrain iterations
  c.sm_prune_rate = 0.5         # Sparse Momentum: initial prune rate
  c.dsr_every = 200             # DSR: steps between reallocations
  c.dsr_np = 0.02               # DSR: target pruned per reallocation
  c.dsr_delta = 0.1             # DSR: threshold tolerance
  c.dsr_threshold = 1e-3        # DSR: initial threshold H
  return c


def get_config(arg: str = ""):
  c = common.base_config()
  c.model = "lenet5"
  c.dataset = "mnist"
  c.batch_size = 128
  c.dense = lenet5_mnist.get_config()
  prune_defaults(c)
  if arg == "smoke":
    c.dense = lenet5_mnist.get_config("smoke")
    c.batch_size = 64
    c.train_subset = 512
    c.test_subset = 500
    c.target_sparsity = 0.5
    c.l1_init = 0.02
    c.l1_step = 0.02
    c.max_rounds = 4
    c.prune_max_epochs = 2.0
    c.monitor_every = 2
    c.patience = 4
    c.finetune_epochs = 1.0
    c.finetune_growth = 0.0
    c.final_finetune_epochs = 1.0
    c.checkpoint_every_steps = 4
    c.log_every_s = 30.0
    c.budget_epochs = 2.0
    c.gmp_every = 2
    c.dsr_every = 4
  return c
