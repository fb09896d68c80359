"""ResNet-20 (option-A shortcuts) on CIFAR-10, dense training (GPU job).

He et al. 2016 schedule in epochs: SGD with Nesterov momentum 0.9, batch 128,
lr 0.1 with cosine decay over 200 epochs, weight decay 5e-4, pad-4 crop + flip.

  python -m train.train --config configs/resnet20_cifar10.py --workdir runs/r20 \
      --config.data.dir=../shared/data
  python -m train.train --config configs/resnet20_cifar10.py:smoke ...  # CPU
"""

from configs import common


VARIANTS = ("smoke", "cpu_short")


def get_config(arg: str = ""):
  common.check_variant(arg, VARIANTS)
  c = common.base_config()
  c.model.name = "resnet20"
  c.data.name = "cifar10"
  c.train.num_epochs = 200
  c.train.learning_rate = 0.1
  if arg == "smoke":        # one shard of the npz data, seconds per epoch
    c.train.num_epochs = 2
    c.data.batch_size = 32
    c.data.train_subset = 256
    c.data.val_size = common.SMOKE_VAL_SIZE
    c.data.test_subset = 256
    c.run.eval_batch_size = 128
    common.smoke_run(c.run)
  elif arg == "cpu_short":  # one epoch on one shard: minutes on a 2-core CPU
    c.train.num_epochs = 1
    c.data.train_subset = 10000
    c.data.val_size = 1000
    c.data.test_subset = 2000
  return c
