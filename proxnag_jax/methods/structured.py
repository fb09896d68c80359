"""The structured methods' toolkit: channel masks over the channel groups
of :mod:`proxnag_jax.surgery`, the target as a fraction of channels, MACs or
parameters, and the export as a physically smaller network. Used by
``l1_filter``, ``slimming``, ``gat`` and ``group_proxnag``; all traceable
except the host checks.

>>> keep = structured.keep_for_target(pick, hp, ctx, "macs")
>>> state = structured.prune_channels(state, keep, ctx)
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from proxnag_jax import surgery
from proxnag_jax.methods.base import Context
from proxnag_jax.methods.base import RunState
from proxnag_jax.methods.base import change_masks
from proxnag_jax.methods.base import default_eval_params
from proxnag_jax.methods.base import default_export
from proxnag_jax.methods.base import masks_of
from proxnag_jax.methods.base import start_with_masks



def check_groups(name: str, ctx: Context, *, needs_scales: bool = False
                 ) -> None:
  """Host check of a structured method: the model has prunable channel
  groups (and BatchNorm scales in each, for network slimming)."""
  gs = surgery.prunable_groups(ctx.groups)
  if not gs:
    raise ValueError(
        f"{name}: the model has no prunable channel groups (structured "
        "pruning needs a model that proxnag_jax.surgery knows: lenet5, "
        "lenet5_bn, lenet300_100, convN, vgg16, resnetN(_b)).")
  if needs_scales:
    missing = [g.name for g in gs if not g.scales()]
    if missing:
      raise ValueError(
          f"{name}: channel groups {missing} have no BatchNorm scale to "
          "regularise; use a model with BatchNorm (e.g. model='lenet5_bn').")


def channel_target(hp: dict, ctx: Context) -> jax.Array:
  """Channels a structured method removes: ``round(hp['target'] *
  channels)`` over the prunable groups (int32)."""
  n = surgery.num_channels(ctx.groups)
  return jnp.round(hp["target"] * n).astype(jnp.int32)


MATCHES = ("channels", "macs", "params")


def check_match(name: str, match: str) -> None:
  if match not in MATCHES:
    raise ValueError(f"{name}: match must be one of {MATCHES}, got "
                     f"{match!r}.")


def keep_for_target(pick: Callable[[jax.Array], dict], hp: dict,
                    ctx: Context, match: str) -> dict:
  """The channels a structured method keeps, from its selection rule
  ``pick(fraction of channels removed) -> {group: keep}``:

  * ``match='channels'``: ``pick(hp['target'])``;
  * ``'macs'`` / ``'params'``: ``pick(s)`` at the smallest ``s`` whose
    shrunk network has at most ``1 - hp['target']`` of the dense network's
    MACs / params (:func:`proxnag_jax.surgery.select_for_cost`), so every
    method is held to the same cost whatever its allocation across layers.

  Traceable."""
  if match == "channels":
    return pick(hp["target"])
  if match not in ctx.costs:
    raise ValueError(f"match={match!r} needs ctx.costs[{match!r}] (the loop "
                     "builds it for structured methods).")
  return surgery.select_for_cost(pick, ctx.costs[match], ctx.groups,
                                 hp["target"])


def target_met(keep: dict, hp: dict, ctx: Context, match: str) -> jax.Array:
  """Whether keeping ``keep`` removes the target (as :func:`keep_for_target`
  counts it). Traceable."""
  if match == "channels":
    return surgery.num_removed(keep) >= channel_target(hp, ctx)
  terms = ctx.costs[match]
  dense = float(sum(t.cost for t in terms))
  return surgery.shrunk_cost(terms, ctx.groups, keep) <= (
      1.0 - hp["target"]) * dense


def prune_channels(state: RunState, keep: dict, ctx: Context, *,
                   start: bool = False, tx=None) -> RunState:
  """Switches off the channels ``keep`` drops (all their producer params),
  on top of the current masks: with ``start`` (the method's first masks)
  through :func:`start_with_masks` with ``tx``, else :func:`change_masks`."""
  new = surgery.channel_masks(state.params, ctx.groups, keep)
  if start:
    return start_with_masks(state, new, tx)
  new = jax.tree.map(jnp.logical_and, new, masks_of(state.opt_state))
  return change_masks(state, new)[0]


def shrink_export(state: RunState, model, eval_params=default_eval_params):
  """The export of a structured method: the smaller dense network without
  the channels its channel masks switch off (:mod:`proxnag_jax.surgery`;
  without masks in the optimizer state: without the channels whose
  producers are all zero).

  A channel the masks keep stays even where its weights went to zero in
  training, so the widths are the ones the method chose and matched its
  cost target at (e.g. after rounding to multiples of 8: group-lasso
  Prox-NAG may round a group of 15 live channels up to 16, and a width of 15
  would run slower and miss the matched cost). Same outputs either way."""
  _, variables = default_export(state, model, eval_params)
  try:
    masks = masks_of(state.opt_state)
  except ValueError:
    small, small_vars, _ = surgery.shrink_to_alive(model, variables)
    return small, small_vars
  keep = surgery.kept_by_masks(masks, surgery.channel_groups(model,
                                                             variables))
  return surgery.shrink(model, variables, keep)


__all__ = ["check_groups", "channel_target", "prune_channels",
           "shrink_export", "MATCHES", "check_match", "keep_for_target",
           "target_met"]
