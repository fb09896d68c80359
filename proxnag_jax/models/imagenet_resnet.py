"""ImageNet-style ResNets (He et al. 2016): ResNet-18 and ResNet-50.

7x7/2 stem conv, 3x3/2 max-pool, four stages (64, 128, 256, 512 base widths)
of basic (18/34) or bottleneck (50/101/152) blocks with 1x1 projection
shortcuts, global average pooling and a linear classifier.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from proxnag_jax.models.cifar_resnet import conv_init

from proxnag_jax.models import conv as conv_lib

# Flax Conv with the CPU-fast gradients of models/conv.py (same values).
Conv = functools.partial(nn.Conv,
                         conv_general_dilated=conv_lib.conv_general_dilated)


def _bn(train, name, zero=False):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, name=name,
                      scale_init=nn.initializers.zeros if zero else
                      nn.initializers.ones)


class Basic(nn.Module):
  width: int
  stride: int = 1
  expansion = 1

  @nn.compact
  def __call__(self, x, train):
    y = Conv(self.width, (3, 3), self.stride, padding=1, use_bias=False,
                kernel_init=conv_init, name="conv1")(x)
    y = nn.relu(_bn(train, "bn1")(y))
    y = Conv(self.width, (3, 3), padding=1, use_bias=False,
                kernel_init=conv_init, name="conv2")(y)
    y = _bn(train, "bn2")(y)
    return nn.relu(y + _project(x, self.width, self.stride, train))


class Bottleneck(nn.Module):
  width: int
  stride: int = 1
  expansion = 4

  @nn.compact
  def __call__(self, x, train):
    y = Conv(self.width, (1, 1), use_bias=False, kernel_init=conv_init,
                name="conv1")(x)
    y = nn.relu(_bn(train, "bn1")(y))
    y = Conv(self.width, (3, 3), self.stride, padding=1, use_bias=False,
                kernel_init=conv_init, name="conv2")(y)
    y = nn.relu(_bn(train, "bn2")(y))
    y = Conv(self.width * 4, (1, 1), use_bias=False, kernel_init=conv_init,
                name="conv3")(y)
    y = _bn(train, "bn3")(y)
    return nn.relu(y + _project(x, self.width * 4, self.stride, train))


def _project(x, channels, stride, train):
  if stride == 1 and x.shape[-1] == channels:
    return x
  x = Conv(channels, (1, 1), stride, use_bias=False, kernel_init=conv_init,
              name="shortcut_conv")(x)
  return _bn(train, "shortcut_bn")(x)


_STAGES = {18: (Basic, (2, 2, 2, 2)), 34: (Basic, (3, 4, 6, 3)),
           50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3)),
           152: (Bottleneck, (3, 8, 36, 3))}


class ImageNetResNet(nn.Module):
  depth: int = 50
  num_classes: int = 1000

  @nn.compact
  def __call__(self, x, train: bool = True):
    block, sizes = _STAGES[self.depth]
    x = Conv(64, (7, 7), 2, padding=3, use_bias=False,
                kernel_init=conv_init, name="conv1")(x)
    x = nn.relu(_bn(train, "bn1")(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for stage, n in enumerate(sizes):
      for b in range(n):
        stride = 2 if stage > 0 and b == 0 else 1
        x = block(64 * 2 ** stage, stride, name=f"layer{stage + 1}_{b}")(
            x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="fc")(x)
