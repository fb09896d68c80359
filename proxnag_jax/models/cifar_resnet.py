"""CIFAR ResNets of He et al. 2016 (section 4.2): ResNet-(6n+2).

Three stages of ``n`` basic blocks with 16, 32 and 64 channels, a 3x3 stem
conv, global average pooling and a linear classifier. Two shortcut options
for the blocks that change shape:

* ``'A'`` (default, as in the paper's CIFAR experiments): parameter-free,
  subsample by 2 and zero-pad the new channels;
* ``'B'``: a 1x1 strided conv + BatchNorm projection.

ResNet-20 has 269,722 parameters with option A and 272,474 with option B
(conv + BN + fc).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from proxnag_jax.models import conv as conv_lib

# Flax Conv with the CPU-fast gradients of models/conv.py (same values).
Conv = functools.partial(nn.Conv,
                         conv_general_dilated=conv_lib.conv_general_dilated)

# He-normal (fan_in), as PyTorch's kaiming_normal_.
conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class BasicBlock(nn.Module):
  channels: int
  stride: int = 1
  shortcut: str = "A"
  inner: int | None = None   # conv1's width (default ``channels``)

  @nn.compact
  def __call__(self, x, train: bool = True):
    norm = lambda name: nn.BatchNorm(use_running_average=not train,
                                     momentum=0.9, epsilon=1e-5, name=name)
    y = Conv(self.inner or self.channels, (3, 3), (self.stride, self.stride),
                padding=1, use_bias=False, kernel_init=conv_init,
                name="conv1")(x)
    y = nn.relu(norm("bn1")(y))
    y = Conv(self.channels, (3, 3), padding=1, use_bias=False,
                kernel_init=conv_init, name="conv2")(y)
    y = norm("bn2")(y)
    if self.stride != 1 or x.shape[-1] != self.channels:
      if self.shortcut == "A":
        x = x[:, ::self.stride, ::self.stride, :]
        pad = self.channels - x.shape[-1]
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (pad // 2, pad - pad // 2)))
      else:
        x = Conv(self.channels, (1, 1), (self.stride, self.stride),
                    use_bias=False, kernel_init=conv_init,
                    name="shortcut_conv")(x)
        x = norm("shortcut_bn")(x)
    return nn.relu(y + x)


class CifarResNet(nn.Module):
  """ResNet-(6n+2) for 32x32 inputs.

  ``widths``: the three stages' (residual stream) widths; ``block_widths``:
  the inner width (conv1) of each of the ``3n`` blocks, in order (default:
  the stage's width). Both are set by :mod:`proxnag_jax.surgery`.
  """

  depth: int = 20
  num_classes: int = 10
  shortcut: str = "A"
  widths: tuple = (16, 32, 64)
  block_widths: tuple | None = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    if (self.depth - 2) % 6:
      raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {self.depth}.")
    if self.shortcut not in ("A", "B"):
      raise ValueError(f"shortcut must be 'A' or 'B', got {self.shortcut!r}.")
    n = (self.depth - 2) // 6
    x = Conv(self.widths[0], (3, 3), padding=1, use_bias=False,
                kernel_init=conv_init, name="conv1")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     epsilon=1e-5, name="bn1")(x)
    x = nn.relu(x)
    for stage, width in enumerate(self.widths):
      for block in range(n):
        stride = 2 if stage > 0 and block == 0 else 1
        inner = (self.block_widths[stage * n + block]
                 if self.block_widths else None)
        x = BasicBlock(width, stride, self.shortcut, inner,
                       name=f"layer{stage + 1}_{block}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="fc")(x)
