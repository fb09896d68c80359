"""Structured pruning on CIFAR-10: ResNet-20 on the CPU (shortened), and
ResNet-20 / ResNet-56 / VGG-16 at the full schedule for a GPU (issue 13).

  python -m train.prune --config configs/structured_cifar10.py \
      --workdir runs/gat_r20 --config.data.dir=../shared/data \
      [--config.prune.method=l1_filter] [--config.prune.dense_checkpoint=runs/r20]
  python -m train.prune --config configs/structured_cifar10.py:resnet56_full ...
  python -m train.prune --config configs/structured_cifar10.py:vgg16_full ...

``target_sparsity`` is the fraction of the prunable channels removed. The
ResNets use option-B shortcuts (``resnetN_b``), whose 1x1 projections let
surgery remove channels of the residual streams as well as inside the blocks
(with option A only the blocks' inner channels can go; see
proxnag_jax/surgery.py). Methods: gat (seed 003, default), l1_filter,
slimming, group_proxnag.

* default (``resnet20``, CPU): a 10-epoch dense ResNet-20-B on the 45,000
  training images left after the 5,000-image validation split, then 5
  epochs of pruning + fine-tuning, 50% of the channels. About 3 h on these
  2-core CPUs (a shortened schedule: the paper's is 200 epochs).
* ``resnet20_full``, ``resnet56_full``, ``vgg16_full`` (GPU): a 200-epoch
  dense model, then 60 epochs of pruning + fine-tuning, 50% of the channels.
* ``vgg16`` (CPU, shortened): VGG-16 (BatchNorm) trained dense for 10
  epochs on one 10,000-image CIFAR-10 shard (9,000 train, 1,000 held out
  for validation), then 5 epochs of pruning + fine-tuning; the full test
  set. A VGG-16 step is ~8x a ResNet-20 step (~30 images/s on one core of
  these CPUs: ~5 min an epoch of the shard).
* ``smoke``: seconds, one CIFAR shard.
"""

from configs import common
from configs import proxnag_resnet20_cifar10
from configs import resnet20_cifar10

VARIANTS = ("smoke", "resnet20_full", "resnet56_full", "vgg16_full", "vgg16")


def get_config(arg: str = ""):
  common.check_variant(arg, VARIANTS)
  smoke = arg == "smoke"
  c = proxnag_resnet20_cifar10.get_config("smoke" if smoke else "")
  model = {"resnet56_full": "resnet56_b", "vgg16_full": "vgg16",
           "vgg16": "vgg16"}.get(arg, "resnet20_b")
  c.model.name = model
  c.prune.method = "gat"
  c.prune.target_sparsity = 0.5
  # Group-lasso lambda per epoch of prune-training. LeNet-5's 2e-3 moves a
  # ResNet-20 weight by ~0.02 (prune_lr 0.01 x lambda, summed over the <= 2.5
  # epochs of the 5-epoch budget) against a per-weight rms of 0.03-0.1 in
  # its block filters (the trained 10-epoch dense ResNet-20-B): almost no
  # filter would reach zero and the rest would be forced. 1e-2 moves them
  # ~0.11, the scale of the element-wise lambda of
  # configs/proxnag_resnet20_cifar10.py. Chosen from the weights' scale
  # before any group_proxnag run, not tuned.
  c.group_proxnag.l1_step = 1e-2
  if arg.endswith("full"):
    c.prune.budget_epochs = 60.0
  elif smoke:
    c.prune.budget_epochs = 1.0
    c.group_proxnag.l1_step = 0.05
  else:
    c.dense.num_epochs = 10
    c.prune.budget_epochs = 5.0
  if arg == "vgg16":
    c.data.train_subset = 10000
    c.data.val_size = 1000
    # At the ResNet schedule's 0.1 from the first step this VGG-16 diverged
    # (epoch 1: training loss 4.30, then chance, loss 2.31, at step 105);
    # half the step after a one-epoch warm-up (set, not tuned).
    c.dense.learning_rate = 0.05
    c.dense.warmup_epochs = 1.0
  return c
