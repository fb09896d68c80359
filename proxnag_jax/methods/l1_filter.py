"""L1-filter pruning (Li et al. 2017, "Pruning filters for efficient
ConvNets"), as a structured Method.

From the trained dense model, every prunable channel group (a conv's output
filters, a Dense layer's units; see :mod:`proxnag_jax.surgery`) is scored by
the L1 norm of its filters (``sum |w|`` over each output filter of the
group's producer kernels; a residual stream sums its producers), the lowest
are removed in one shot, and the network is fine-tuned with those channels
held at zero for the rest of the budget. The export is the smaller dense
network (:func:`~proxnag_jax.methods.structured.shrink_export`).

``target_sparsity`` is the fraction of channels removed: ``scope='layer'``
removes that fraction of every group (Li et al. prune each layer at its own
rate from a sensitivity analysis; one rate for all is their uniform
baseline), ``'global'`` one threshold over filter norms divided by their
group's mean (filters of different layers are not on one scale).
Li et al. fine-tune after one-shot pruning ("prune once and retrain"), as
here. Reference details: the filter norm covers the kernel only (not the
bias or BatchNorm), and the next layer's input channels go with the filter.
"""

from __future__ import annotations

import jax.numpy as jnp

from proxnag_jax import surgery
from proxnag_jax.methods import base
from proxnag_jax.methods import structured
from proxnag_jax.methods.base import Method


def l1_filter(scope: str = "layer", round_to: int = 1,
              match: str = "channels") -> Method:
  """One-shot L1-norm filter pruning of the dense model, then fine-tuning
  (``round_to``: kept channel counts rounded to its multiples,
  :func:`proxnag_jax.surgery.round_keep`; ``match``: what the target is a
  fraction of, ``'channels'``, ``'macs'`` or ``'params'``,
  :func:`proxnag_jax.methods.structured.keep_for_target`)."""
  if scope not in ("layer", "global"):
    raise ValueError(f"l1_filter: scope must be 'layer' or 'global', got "
                     f"{scope!r}.")
  structured.check_match("l1_filter", match)

  def check(params, hp, ctx):
    del params, hp
    structured.check_groups("l1_filter", ctx)

  def init(key, state, ctx, tx):
    del key
    scores = {}
    for g in surgery.prunable_groups(ctx.groups):
      n = surgery.channel_norms(state.params, g, ord=1)
      scores[g.name] = n / jnp.maximum(jnp.mean(n), 1e-12)
    keep = structured.keep_for_target(
        lambda s: surgery.round_keep(surgery.select_channels(
            scores, ctx.groups, s, scope), scores, ctx.groups, round_to),
        state.hp, ctx, match)
    state = structured.prune_channels(state, keep, ctx, start=True,
                                tx=tx)
    return state, {"prune": base.event(
        True, removed=surgery.removed_channels(state.params, ctx.groups),
        sparsity=base.sparsity_of(state.params, ctx.prunable))}

  return Method("l1_filter", init=init, export=structured.shrink_export,
                start="dense", check=check, structured=True, match=match,
                description=f"Li et al. 2017: one-shot L1-norm filter "
                f"pruning ({scope} rate), then fine-tuning; the export is "
                "the smaller network")


__all__ = ["l1_filter"]
