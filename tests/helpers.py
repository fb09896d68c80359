"""Small helpers shared by the test modules (tests/ is on sys.path)."""

from configs import lenet5_mnist


def lenet5_smoke(data_dir, **over):
  """The dense LeNet-5 smoke config on ``data_dir``, fields overridden."""
  c = lenet5_mnist.get_config("smoke")
  c.data_dir = data_dir
  for k, v in over.items():
    setattr(c, k, v)
  return c
