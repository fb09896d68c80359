"""Pruning methods behind one interface (see :mod:`.base`), one file each.

>>> method = get_method("sparse_momentum", prune_rate=0.5)
>>> method = get_method("proxnag", **config.proxnag)     # its own sub-config

Each factory's signature holds its defaults (written once);
:func:`method_config` turns them into an ``ml_collections.ConfigDict`` so a
config file can list them and the command line can override them
(``--config.proxnag.l1_step=1e-3``).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  import ml_collections

from proxnag_jax.methods import base
from proxnag_jax.methods.base import Context
from proxnag_jax.methods.base import Method
from proxnag_jax.methods.base import RunState
# Modules (one per method file); the factories are their functions.
from proxnag_jax.methods import admm
from proxnag_jax.methods import dense
from proxnag_jax.methods import dsr
from proxnag_jax.methods import edge_popup
from proxnag_jax.methods import gat
from proxnag_jax.methods import group_proxnag
from proxnag_jax.methods import l1_filter
from proxnag_jax.methods import magnitude
from proxnag_jax.methods import proxnag
from proxnag_jax.methods import snip
from proxnag_jax.methods import slimming
from proxnag_jax.methods import sparse_momentum

_FACTORIES = {
    "dense": dense.dense,
    "random": magnitude.random,
    "magnitude": magnitude.magnitude,
    "gmp": magnitude.gmp,
    "l2": magnitude.l2,
    "snip": snip.snip,
    "sparse_momentum": sparse_momentum.sparse_momentum,
    "dsr": dsr.dsr,
    "proxnag": proxnag.proxnag,
    "admm": admm.admm,
    "rw_admm": admm.rw_admm,
    "edge_popup": edge_popup.edge_popup,
    "sbp": edge_popup.sbp,
    "l1_filter": l1_filter.l1_filter,
    "slimming": slimming.slimming,
    "gat": gat.gat,
    "group_proxnag": group_proxnag.group_proxnag,
}
METHOD_NAMES = tuple(sorted(_FACTORIES))
# The structured methods (whole channels; the export is a smaller network):
# read from each method's own ``structured`` flag at its defaults.
STRUCTURED_METHODS = tuple(n for n in METHOD_NAMES
                           if _FACTORIES[n]().structured)
# The pruning methods (every name but 'dense').
PRUNING_METHODS = tuple(n for n in METHOD_NAMES if n != "dense")


def _check_name(name: str) -> None:
  if name not in _FACTORIES:
    raise ValueError(f"unknown method {name!r}; valid methods: "
                     f"{', '.join(METHOD_NAMES)}.")


def get_method(name: str, **kwargs) -> Method:
  """The method ``name`` built with ``kwargs`` (its factory's arguments)."""
  _check_name(name)
  factory = _FACTORIES[name]
  params = inspect.signature(factory).parameters
  unknown = sorted(set(kwargs) - set(params))
  if unknown:
    raise ValueError(f"method {name!r} has no setting {unknown}; its "
                     f"settings: {', '.join(params) or '(none)'}.")
  return factory(**kwargs)


def method_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """The settings of method ``name`` with their defaults, as a ConfigDict."""
  # Imported here: the library runs without ml_collections (e.g. on a lent
  # GPU machine, train/gpu_check.py); only configs need it.
  import ml_collections  # pylint: disable=g-import-not-at-top
  _check_name(name)
  params = inspect.signature(_FACTORIES[name]).parameters
  c = ml_collections.ConfigDict({k: p.default for k, p in params.items()})
  for k, v in overrides.items():
    if k not in c:
      raise ValueError(f"method {name!r} has no setting {k!r}.")
    c[k] = v
  return c


__all__ = ["Context", "Method", "RunState", "base", "get_method",
           "method_config", "METHOD_NAMES", "PRUNING_METHODS",
           "STRUCTURED_METHODS"]
