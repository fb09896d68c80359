"""Flax networks by name.

>>> model = get_model("resnet20", num_classes=10)
>>> variables = init_model(model, jax.random.PRNGKey(0), (1, 32, 32, 3))

Every model is a ``flax.linen.Module`` called as ``model.apply(variables, x,
train=...)``; models with BatchNorm keep running statistics in the
``batch_stats`` collection.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from proxnag_jax.models.cifar_resnet import CifarResNet
from proxnag_jax.models.conv_n import ConvN
from proxnag_jax.models.imagenet_resnet import ImageNetResNet
from proxnag_jax.models.lenet import LeNet300100
from proxnag_jax.models.lenet import LeNet5
from proxnag_jax.models.vgg import VGG

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    **{f"resnet{d}": functools.partial(CifarResNet, depth=d)
       for d in (8, 20, 32, 44, 56, 110)},
    **{f"resnet{d}_b": functools.partial(CifarResNet, depth=d, shortcut="B")
       for d in (20, 32, 44, 56, 110)},
    **{f"conv{d}": functools.partial(ConvN, depth=d) for d in (2, 4, 6, 8)},
    "vgg16": VGG,
    "lenet5": LeNet5,
    "lenet5_bn": functools.partial(LeNet5, batch_norm=True),
    "lenet300_100": LeNet300100,
    "resnet18_imagenet": functools.partial(ImageNetResNet, depth=18),
    "resnet50_imagenet": functools.partial(ImageNetResNet, depth=50),
}

MODEL_NAMES = tuple(sorted(_REGISTRY))


def get_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
  """The model registered as ``name`` (e.g. ``'resnet20'``, ``'lenet5'``).

  ``resnetN`` are the CIFAR ResNets with option-A shortcuts, ``resnetN_b``
  with option B; ``*_imagenet`` the ImageNet-style ResNets.
  """
  if name not in _REGISTRY:
    raise ValueError(
        f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}.")
  return _REGISTRY[name](num_classes=num_classes, **kwargs)


def init_model(model: nn.Module, key: jax.Array, input_shape) -> dict:
  """Initialises variables (``params`` and, if any, ``batch_stats``).

  The jitted initialiser is compiled once per (model, input shape) in a
  process (a pruning run initialises its model several times: the dense
  run, the template, the runs from scratch)."""
  return _init_fn(model, tuple(int(d) for d in input_shape))(key)


@functools.lru_cache(maxsize=32)
def _init_fn(model: nn.Module, input_shape: tuple):
  return jax.jit(lambda key: model.init(
      key, jnp.zeros(input_shape, jnp.float32), train=False))


__all__ = ["get_model", "init_model", "MODEL_NAMES", "CifarResNet", "ConvN",
           "VGG",
           "LeNet5", "LeNet300100", "ImageNetResNet"]
