"""LeNet-5 (Caffe variant) on MNIST, dense training; the CPU-scale job.

  python -m train.train --config configs/lenet5_mnist.py --workdir runs/lenet5 \
      --config.data_dir=../shared/data
  python -m train.train --config configs/lenet5_mnist.py:smoke ...   # seconds
"""

from configs import common


def get_config(arg: str = ""):
  common.check_variant(arg)
  c = common.base_config()
  c.model = "lenet5"
  c.dataset = "mnist"
  c.num_epochs = 15
  c.batch_size = 128
  c.learning_rate = 0.02     # Caffe's LeNet uses 0.01; 0.05 diverges
  c.warmup_epochs = 1.0
  c.weight_decay = 5e-4
  c.schedule = "cosine"
  if arg == "smoke":
    c.num_epochs = 2
    c.batch_size = 64
    c.warmup_epochs = 0.0
    c.train_subset = 512
    c.val_size = common.SMOKE_VAL_SIZE
    c.test_subset = 500
    c.log_every_s = 30.0
  return c
