"""The Conv-2 / Conv-4 / Conv-6 / Conv-8 CIFAR networks of the lottery-ticket
and edge-popup papers (Frankle & Carbin 2019; Ramanujan et al. 2020).

Convs (3x3, padding 1, ReLU) ``64, 64, M, 128, 128, M, 256, 256, M, 512, 512,
M`` truncated to 2 / 4 / 6 / 8 convs (``M``: 2x2 max-pool after each pair),
then a head ``256, 256, num_classes`` (ReLU between). As in edge-popup's
reference, no biases and no BatchNorm: every parameter is a prunable kernel.
"""

from __future__ import annotations

import functools

import flax.linen as nn

from proxnag_jax.models import conv as conv_lib

Conv = functools.partial(nn.Conv,
                         conv_general_dilated=conv_lib.conv_general_dilated)

WIDTHS = (64, 64, 128, 128, 256, 256, 512, 512)


class ConvN(nn.Module):
  """``depth`` in (2, 4, 6, 8) conv layers and the 256-256-classes head."""

  depth: int = 2
  num_classes: int = 10
  widths: tuple | None = None   # the conv widths (default WIDTHS[:depth])
  head: tuple = (256, 256)

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train
    if self.depth not in (2, 4, 6, 8):
      raise ValueError(f"ConvN depth must be 2, 4, 6 or 8, got {self.depth}.")
    widths = self.widths or WIDTHS[:self.depth]
    for i, w in enumerate(widths):
      x = nn.relu(Conv(w, (3, 3), padding=1, use_bias=False,
                       name=f"conv{i + 1}")(x))
      if i % 2 == 1:
        x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.head[0], use_bias=False, name="fc1")(x))
    x = nn.relu(nn.Dense(self.head[1], use_bias=False, name="fc2")(x))
    return nn.Dense(self.num_classes, use_bias=False, name="fc3")(x)
