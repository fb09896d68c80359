"""LeNet networks used in the pruning literature (Han et al. 2015).

* ``LeNet5``: the Caffe variant: conv 5x5x20, max-pool, conv 5x5x50,
  max-pool, fc 500, ReLU, fc 10 (431,080 parameters for 28x28x1 input).
* ``LeNet300100``: fc 300, fc 100, fc 10 with ReLU (266,610 parameters).
"""

from __future__ import annotations

import functools

import flax.linen as nn

from proxnag_jax.models import conv as conv_lib

# Flax Conv with the CPU-fast gradients of models/conv.py (same values).
Conv = functools.partial(nn.Conv,
                         conv_general_dilated=conv_lib.conv_general_dilated)


class LeNet5(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train
    x = Conv(20, (5, 5), padding="VALID", name="conv1")(x)
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = Conv(50, (5, 5), padding="VALID", name="conv2")(x)
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(500, name="fc1")(x))
    return nn.Dense(self.num_classes, name="fc2")(x)


class LeNet300100(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(300, name="fc1")(x))
    x = nn.relu(nn.Dense(100, name="fc2")(x))
    return nn.Dense(self.num_classes, name="fc3")(x)
