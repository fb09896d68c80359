"""ResNet-20 (option-A shortcuts) on CIFAR-10, dense training (GPU job).

He et al. 2016 schedule in epochs: SGD with Nesterov momentum 0.9, batch 128,
lr 0.1 with cosine decay over 200 epochs, weight decay 5e-4, pad-4 crop + flip.

  python -m train.train --config configs/resnet20_cifar10.py --workdir runs/r20 \
      --config.data_dir=../shared/data
  python -m train.train --config configs/resnet20_cifar10.py:smoke ...  # CPU
"""

from configs import common


VARIANTS = ("smoke", "cpu_short")


def get_config(arg: str = ""):
  common.check_variant(arg, VARIANTS)
  c = common.base_config()
  c.model = "resnet20"
  c.dataset = "cifar10"
  c.num_epochs = 200
  c.batch_size = 128
  c.learning_rate = 0.1
  c.weight_decay = 5e-4
  c.schedule = "cosine"
  if arg == "smoke":        # one shard of the npz data, seconds per epoch
    c.num_epochs = 2
    c.batch_size = 32
    c.train_subset = 256
    c.val_size = common.SMOKE_VAL_SIZE
    c.test_subset = 256
    c.eval_batch_size = 128
    c.log_every_s = 30.0
  elif arg == "cpu_short":  # one epoch on one shard: minutes on a 2-core CPU
    c.num_epochs = 1
    c.train_subset = 10000
    c.val_size = 1000
    c.test_subset = 2000
  return c
