"""Gradient-based adaptive-threshold structured pruning (seed 003: Wang et
al., Computer Engineering 48(9), 2022), as a structured Method.

Only the abstract is available; this is our reading of it, step by step:

1. **Weight importance from gradients.** On the trained dense model, every
   weight of a prunable channel group's kernels gets the first-order Taylor
   score ``s = |w * dL/dw|`` (the loss change when the weight is removed),
   on the run's fixed minibatch (``ctx.grad_fn``, as SNIP's).
2. **A threshold per layer by grid search and curvature.** For each group,
   the remaining fraction ``r(t) = mean(s > t)`` is evaluated on a grid of
   ``grid`` thresholds, log-spaced between the group's smallest positive and
   largest score; the threshold is the knee of that curve, the grid point of
   largest curvature ``|r''| / (1 + r'^2)^(3/2)`` (both axes scaled to
   [0, 1]). The weights above it are the layer's *effective* weights and
   ``rho_l = r(t_knee)`` its remaining fraction.
3. **Kernels with the most effective weights stay.** Each output kernel
   (channel) counts its effective weights; the layer keeps the ``k_l``
   kernels with the most (ties by the sum of scores):

   * ``budget='target'`` (default, so methods can be compared at the same
     channel reduction): ``round((1 - target) * channels)`` kernels in all,
     split over the layers in proportion to ``rho_l * C_l`` (each at least
     one, at most ``C_l``);
   * ``budget='knee'`` (the seed's own rates): ``k_l = ceil(rho_l * C_l)``.
4. **Retrain** the smaller network (here: fine-tune with the removed channels
   held at zero for the rest of the budget; the export is the smaller dense
   network).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from proxnag_jax import masks as masks_lib
from proxnag_jax import surgery
from proxnag_jax.methods import base
from proxnag_jax.methods import structured
from proxnag_jax.methods.base import Method


def knee(scores: jax.Array, grid: int = 100):
  """The knee of ``t -> mean(scores > t)`` on a log grid (traceable).

  Returns ``(threshold, remaining_fraction)``: the grid threshold of largest
  curvature of the remaining-fraction curve (axes scaled to [0, 1]) and the
  fraction of ``scores`` above it.
  """
  s = jnp.ravel(scores).astype(jnp.float32)
  pos = jnp.where(s > 0, s, jnp.inf)
  lo = jnp.log(jnp.maximum(jnp.min(pos), 1e-30))
  hi = jnp.log(jnp.maximum(jnp.max(s), 1e-30))
  hi = jnp.maximum(hi, lo + 1e-6)
  ts = jnp.exp(jnp.linspace(lo, hi, grid))
  r = jax.vmap(lambda t: jnp.mean(s > t))(ts)
  x = jnp.linspace(0.0, 1.0, grid)
  y = (r - r.min()) / jnp.maximum(r.max() - r.min(), 1e-12)
  d1 = jnp.gradient(y, x)
  d2 = jnp.gradient(d1, x)
  curvature = jnp.abs(d2) / (1.0 + d1 * d1) ** 1.5
  i = jnp.argmax(curvature)
  return ts[i], r[i]


def gat(budget: str = "target", grid: int = 100, round_to: int = 1,
        match: str = "channels") -> Method:
  """Seed 003's structured pruning; see the module docstring (``match``:
  what the target is a fraction of with ``budget='target'``,
  :func:`proxnag_jax.methods.structured.keep_for_target`)."""
  if budget not in ("target", "knee"):
    raise ValueError(f"gat: budget must be 'target' or 'knee', got "
                     f"{budget!r}.")
  structured.check_match("gat", match)
  if budget == "knee" and match != "channels":
    raise ValueError("gat: budget='knee' sets the channels itself; match "
                     "applies to budget='target' only.")
  if grid < 3:
    raise ValueError("gat: grid must be >= 3.")

  def check(params, hp, ctx):
    del params, hp
    structured.check_groups("gat", ctx)
    if ctx.grad_fn is None:
      raise ValueError("gat needs the loop's gradient minibatch "
                       "(ctx.grad_fn).")

  def select(params, grads, hp, ctx):
    """``{group: keep}`` and ``{group: rho}`` (traceable)."""
    gs = surgery.prunable_groups(ctx.groups)
    score_tree = jax.tree.map(lambda w, g: jnp.abs(w * g), params, grads)
    counts, sums, rhos = [], [], []
    for g in gs:
      leaves = [surgery.slot_leaf(score_tree, s, g.size) for s in g.kernels()]
      t, rho = knee(jnp.concatenate([jnp.ravel(x) for x in leaves]), grid)
      eff = jax.tree.map(lambda x: (x > t).astype(jnp.float32), score_tree)
      counts.append(surgery.channel_sums(eff, g))
      sums.append(surgery.channel_sums(score_tree, g))
      rhos.append(rho)
    sizes = jnp.asarray([g.size for g in gs], jnp.int32)
    rho = jnp.stack(rhos)
    ranks = {g.name: counts[i] + sums[i] / (jnp.max(sums[i]) + 1e-30) * 0.5
             for i, g in enumerate(gs)}   # most effective weights first

    def keep_k(k):
      keep = {g.name: masks_lib.topk_mask(ranks[g.name], k[i])
              for i, g in enumerate(gs)}
      return surgery.round_keep(keep, ranks, ctx.groups, round_to)

    if budget == "knee":
      return keep_k(jnp.clip(jnp.ceil(rho * sizes), 1, sizes).astype(
          jnp.int32)), rho

    def pick(s):   # remove round(s * channels), allocated by the knees
      n_keep = jnp.sum(sizes) - jnp.round(
          s * jnp.sum(sizes)).astype(jnp.int32)
      return keep_k(1 + base.allocate(n_keep - len(gs), rho * sizes,
                                      sizes - 1))
    return structured.keep_for_target(pick, hp, ctx, match), rho

  def init(key, state, ctx, tx):
    del key
    grads = ctx.grad_fn(state.params)
    keep, rho = select(state.params, grads, state.hp, ctx)
    state = structured.prune_channels(state, keep, ctx, start=True,
                                tx=tx)
    return state, {"prune": base.event(
        True, removed=surgery.removed_channels(state.params, ctx.groups),
        sparsity=base.sparsity_of(state.params, ctx.prunable),
        mean_rho=jnp.mean(rho))}

  return Method("gat", init=init, export=structured.shrink_export, start="dense",
                check=check, structured=True, match=match,
                description="seed 003: gradient (Taylor) weight scores, a "
                "per-layer knee threshold, kernels with the most effective "
                f"weights kept ({budget} budget), then fine-tuning; the "
                "export is the smaller network")


__all__ = ["gat", "knee"]
