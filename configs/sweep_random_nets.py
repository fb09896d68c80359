"""Pruning randomly initialised networks (seed 002): edge-popup vs sparse
binary programming, with the dense-trained network as reference.

  python -m train.sweep --config configs/sweep_random_nets.py \
      --workdir runs/random_lenet300 --config.data_dir=../shared/data
  python -m train.sweep --config configs/sweep_random_nets.py:conv2 \
      --workdir runs/random_conv2 --config.data_dir=../shared/data
  python -m train.sweep --config configs/sweep_random_nets.py:conv2_full ...  # GPU

Both methods train only masks over frozen random weights (the scores, SGD 0.1
cosine, momentum 0.9), from scratch, for the same number of epochs as the
dense reference (``dense.num_epochs + budget_epochs``; the dense model is
trained for ``dense.num_epochs`` and its accuracy is the table's dense row).

* default: LeNet-300-100 on MNIST at 50 / 70 / 90% (CPU): 10 epochs.
* ``conv2``: Conv-2 on CIFAR-10 at 50 / 70% (CPU, shortened: 10 epochs
  on one 10,000-image shard, not the reference's 100 epochs on 50,000).
* ``sbp_search``: SBP's step size on LeNet-300-100 at 50 / 90%, seed 0,
  chosen on the validation split (SBP is our reading of an abstract, so
  its one free setting is searched; edge-popup keeps its reference's 0.1):
  ``python -m train.sweep --config configs/sweep_random_nets.py:sbp_search
  --workdir runs/random_sbp_search --config.data_dir=../shared/data``.
* ``conv2_full`` (and ``conv4_full`` ... ``conv8_full``): the reference
  schedule, 100 epochs, batch 128, on all 50,000 images (GPU).
"""

import ml_collections

from configs import common
from configs import proxnag_lenet5_mnist
from configs import resnet20_cifar10

SBP_STEPS = (0.03, 0.1, 0.3, 1.0, 3.0)
VARIANTS = ("smoke", "conv2", "conv2_smoke", "sbp_search") + tuple(
    f"conv{d}_full" for d in (2, 4, 6, 8))


def get_config(arg: str = ""):
  common.check_variant(arg, VARIANTS)
  c = ml_collections.ConfigDict()
  c.data_dir = ""
  c.methods = ("edge_popup", "sbp")
  c.seeds = (0, 1, 2)
  c.vmap_runs = False
  b = proxnag_lenet5_mnist.get_config("smoke" if arg == "smoke" else "")
  if arg.startswith("conv"):
    depth = int(arg[4])
    b = proxnag_lenet5_mnist.get_config()
    b.model = f"conv{depth}"
    b.dataset = "cifar10"
    b.dense = resnet20_cifar10.get_config()
    b.dense.model = b.model
    b.dense.learning_rate = 0.01       # the dense Conv-N: no BatchNorm
    b.dense.weight_decay = 1e-4
    b.dense.num_epochs = 50 if arg.endswith("full") else 5
    b.budget_epochs = 50.0 if arg.endswith("full") else 5.0
    c.sparsities = (0.5, 0.7)
    if not arg.endswith("full"):
      b.train_subset = 10000
      b.val_size = 1000
    if arg.endswith("smoke"):
      b.train_subset = 320
      b.val_size = 64
      b.test_subset = 256
      b.batch_size = 32
      b.dense.num_epochs = 1
      b.budget_epochs = 1.0
      c.seeds = (0,)
  else:
    b.model = "lenet300_100"
    b.dense.model = "lenet300_100"
    b.dense.num_epochs = 5
    b.dense.warmup_epochs = 0.0
    b.budget_epochs = 5.0
    c.sparsities = (0.5, 0.7, 0.9)
    if arg == "sbp_search":
      # ConfigDict keys may not contain dots: lr 0.03 -> sbp_lr0p03.
      c.variants = {"sbp_lr" + f"{lr:g}".replace(".", "p"):
                    {"method": "sbp", "learning_rate": lr}
                    for lr in SBP_STEPS}
      c.methods = tuple(c.variants)
      c.sparsities = (0.5, 0.9)
      c.seeds = (0,)
    if arg == "smoke":
      b.dense = proxnag_lenet5_mnist.get_config("smoke").dense
      b.dense.model = "lenet300_100"
      b.dense.num_epochs = 1
      b.budget_epochs = 1.0
      c.seeds = (0,)
  c.base = b
  c.paper_table = {}
  return c
