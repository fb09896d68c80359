"""Pruning methods behind one interface (see :mod:`.base`).

>>> method = get_method("sparse_momentum", config)
>>> masks, mstate = method.init(key, params, ctx)
"""

from __future__ import annotations

from proxnag_jax.methods import dynamic
from proxnag_jax.methods import simple
from proxnag_jax.methods.base import Context
from proxnag_jax.methods.base import Method
from proxnag_jax.methods.base import momentum_of
from proxnag_jax.methods.base import reset_where

_FACTORIES = {
    "random": simple.random,
    "magnitude": simple.magnitude,
    "gmp": simple.gmp,
    "l2": simple.l2,
    "snip": simple.snip,
    "sparse_momentum": dynamic.sparse_momentum,
    "dsr": dynamic.dsr,
}
# Prox-NAG runs its own prune-train / fine-tune loop (proxnag_jax.prune_run).
METHOD_NAMES = tuple(sorted(list(_FACTORIES) + ["proxnag"]))


def get_method(name: str, config) -> Method:
  if name == "proxnag":
    raise ValueError("proxnag runs through proxnag_jax.prune_run.prune, not "
                     "the masked-training runner.")
  if name not in _FACTORIES:
    raise ValueError(f"unknown method {name!r}; valid methods: "
                     f"{', '.join(METHOD_NAMES)}.")
  return _FACTORIES[name](config)


__all__ = ["Context", "Method", "get_method", "METHOD_NAMES", "momentum_of",
           "reset_where"]
