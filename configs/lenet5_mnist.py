"""LeNet-5 (Caffe variant) on MNIST, dense training; the CPU-scale job.

  python -m train.train --config configs/lenet5_mnist.py --workdir runs/lenet5 \
      --config.data.dir=../shared/data
  python -m train.train --config configs/lenet5_mnist.py:smoke ...   # seconds
"""

from configs import common


def get_config(arg: str = ""):
  common.check_variant(arg)
  c = common.base_config()
  c.model.name = "lenet5"
  c.data.name = "mnist"
  t = c.train
  t.num_epochs = 15
  t.learning_rate = 0.02     # Caffe's LeNet uses 0.01; 0.05 diverges
  t.warmup_epochs = 1.0
  if arg == "smoke":
    t.num_epochs = 2
    t.warmup_epochs = 0.0
    c.data.batch_size = 64
    c.data.train_subset = 512
    c.data.val_size = common.SMOKE_VAL_SIZE
    c.data.test_subset = 500
    common.smoke_run(c.run)
  return c
