"""Reweighted ADMM (and ADMM) on ResNet-32 / ResNet-56, CIFAR-10 (seed 004's
CIFAR models; GPU jobs).

  python -m train.prune --config configs/admm_resnet_cifar10.py:resnet56 \
      --workdir runs/rw_admm_r56 --config.data.dir=DATA \
      [--config.prune.method=admm] [--config.prune.dense_checkpoint=runs/r56]

Without a dense checkpoint the dense model (200 epochs, as
configs/resnet20_cifar10.py) is trained first in WORKDIR/dense. Pruning: 60
epochs, ADMM over the first half with a Z/U step every 3 epochs (10 rounds),
then masked retraining; 90% of the conv and fc weights pruned. The ':smoke'
variants run a few steps on one CIFAR shard on the CPU.
"""

from configs import common
from configs import proxnag_resnet20_cifar10
from configs import resnet20_cifar10


VARIANTS = ("resnet32", "resnet56", "smoke",
            "resnet56_smoke")


def get_config(arg: str = "resnet32"):
  common.check_variant(arg, VARIANTS)
  arg = arg or "resnet32"
  smoke = arg.endswith("smoke")
  model = "resnet56" if arg.startswith("resnet56") else "resnet32"
  c = proxnag_resnet20_cifar10.get_config("smoke" if smoke else "")
  c.model.name = model
  c.prune.method = "rw_admm"
  c.prune.target_sparsity = 0.9
  c.prune.budget_epochs = 60.0
  for m in (c.admm, c.rw_admm):
    m.admm_fraction = 0.5
    m.every_epochs = 3.0
  if smoke:
    c.prune.target_sparsity = 0.5
    c.prune.budget_epochs = 2.0
    for m in (c.admm, c.rw_admm):
      m.every_epochs = 0.5
  return c
