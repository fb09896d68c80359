"""LeNet networks used in the pruning literature (Han et al. 2015).

* ``LeNet5``: the Caffe variant: conv 5x5x20, max-pool, conv 5x5x50,
  max-pool, fc 500, ReLU, fc 10 (431,080 parameters for 28x28x1 input).
  ``batch_norm=True`` (registered as ``lenet5_bn``) adds BatchNorm after
  each conv and fc1 (network slimming's channel scales).
* ``LeNet300100``: fc 300, fc 100, fc 10 with ReLU (266,610 parameters).

``widths`` sets the hidden widths (conv1, conv2, fc1 / fc1, fc2): the
smaller networks that :mod:`proxnag_jax.surgery` builds.
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
  widths: tuple = (20, 50, 500)
  batch_norm: bool = False

  @nn.compact
  def __call__(self, x, train: bool = True):
    def norm(x, name):
      if not self.batch_norm:
        return x
      return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                          epsilon=1e-5, name=name)(x)

    c1, c2, f1 = self.widths
    x = norm(Conv(c1, (5, 5), padding="VALID", name="conv1")(x), "bn1")
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = norm(Conv(c2, (5, 5), padding="VALID", name="conv2")(x), "bn2")
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(norm(nn.Dense(f1, name="fc1")(x), "bn3"))
    return nn.Dense(self.num_classes, name="fc2")(x)


class LeNet300100(nn.Module):
  num_classes: int = 10
  widths: tuple = (300, 100)

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.widths[0], name="fc1")(x))
    x = nn.relu(nn.Dense(self.widths[1], name="fc2")(x))
    return nn.Dense(self.num_classes, name="fc3")(x)
