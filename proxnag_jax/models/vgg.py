"""VGG-16 with BatchNorm for 32x32 inputs (CIFAR).

Thirteen 3x3 conv layers (64, 64, M, 128, 128, M, 256 x3, M, 512 x3, M,
512 x3, M), each conv followed by BatchNorm and ReLU, then a single linear
classifier on the 512-d feature (the common CIFAR variant; about 14.7M
parameters for 10 classes).
"""

from __future__ import annotations

import functools

import flax.linen as nn

from proxnag_jax.models.cifar_resnet import conv_init

from proxnag_jax.models import conv as conv_lib

# Flax Conv with the CPU-fast gradients of models/conv.py (same values).
Conv = functools.partial(nn.Conv,
                         conv_general_dilated=conv_lib.conv_general_dilated)

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512,
             "M", 512, 512, 512, "M")


class VGG(nn.Module):
  cfg: tuple = VGG16_CFG
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = True):
    i = 0
    for v in self.cfg:
      if v == "M":
        x = nn.max_pool(x, (2, 2), (2, 2))
      else:
        x = Conv(v, (3, 3), padding=1, kernel_init=conv_init,
                    name=f"conv{i}")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         epsilon=1e-5, name=f"bn{i}")(x)
        x = nn.relu(x)
        i += 1
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes, name="fc")(x)
