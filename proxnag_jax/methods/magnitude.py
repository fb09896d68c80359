"""Magnitude-based pruning: random (the floor), one-shot magnitude, gradual
magnitude pruning (GMP) and Han et al.'s L2 prune/retrain.

Each is a :class:`~proxnag_jax.methods.base.Method` that overrides only what
makes it different: its first masks (``init``) and, for the scheduled ones, a
jitted ``update`` that re-ranks the weights on its schedule.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from proxnag_jax.methods import base
from proxnag_jax.methods.base import Method


def random() -> Method:
  """Random masks with the same sparsity in every layer, at initialisation;
  then sparse training. The sanity floor."""

  def init(key, state, ctx, tx):
    leaves, treedef = jax.tree.flatten(state.params)
    keys = jax.random.split(key, len(leaves))
    scores = jax.tree.unflatten(treedef, [
        jax.random.uniform(k, p.shape) for k, p in zip(keys, leaves)])
    masks = base.layer_topk_masks(scores, ctx.prunable, state.hp["target"])
    return base.start_with_masks(state, masks,
                                 tx), {}

  return Method("random", init=init, start="scratch",
                description="random masks, uniform per-layer sparsity, at "
                "initialisation; then sparse training")


def magnitude(scope: str = "global") -> Method:
  """One-shot magnitude pruning of the trained dense model (``scope``:
  ``'global'``, one threshold, or ``'layer'``, the same rate per layer),
  then masked fine-tuning."""
  if scope not in ("global", "layer"):
    raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}.")

  def init(key, state, ctx, tx):
    del key
    scores = jax.tree.map(jnp.abs, state.params)
    if scope == "global":
      masks = base.global_topk_masks(scores, ctx.prunable, base.n_keep(
          state.params, state.hp, ctx))
    else:
      masks = base.layer_topk_masks(scores, ctx.prunable, state.hp["target"])
    return base.start_with_masks(state, masks,
                                 tx), {}

  return Method("magnitude", init=init, start="dense",
                description=f"one-shot {scope} magnitude pruning of the dense "
                "model, then masked fine-tuning")


def gmp_sparsity(t, t_end, s_f):
  """Zhu & Gupta 2017 with s_i = 0: ``s_t = s_f (1 - (1 - t/t_end)^3)``."""
  frac = jnp.clip(jnp.asarray(t, jnp.float32) / max(t_end, 1), 0.0, 1.0)
  return s_f * (1.0 - (1.0 - frac) ** 3)


def gmp(every: int = 100, end_fraction: float = 0.5) -> Method:
  """Gradual magnitude pruning (Zhu & Gupta 2017) from the dense model.

  Every ``every`` steps until ``end_fraction`` of the budget, the per-layer
  magnitude masks are recomputed at the cubic schedule's sparsity (pruned
  weights stay pruned); the last update lands exactly on the target, and the
  rest of the budget fine-tunes with the final mask.
  """

  def init(key, state, ctx, tx):
    del key
    return base.start_with_masks(state, base.ones_like_masks(state.params),
                                 tx), {}

  def update(key, state, metrics, ctx):
    del key, metrics
    t = state.step
    t_end = max(every, int(round(end_fraction * ctx.total_steps / every))
                * every)
    due = base.every(t, every) & (t <= t_end)

    def prune(state):
      s = gmp_sparsity(t, t_end, state.hp["target"])
      old = base.masks_of(state.opt_state)
      scores = jax.tree.map(
          lambda p, m: jnp.where(m, jnp.abs(p), -1.0), state.params, old)
      new = base.layer_topk_masks(scores, ctx.prunable, s)
      new = jax.tree.map(jnp.logical_and, new, old)
      return base.change_masks(state, new)[0]

    state = jax.lax.cond(due, prune, lambda s: s, state)
    return state, {"prune": base.event(
        due, sparsity=base.sparsity_of(state.params, ctx.prunable))}

  return Method("gmp", init=init, update=update, start="dense",
                description=f"gradual magnitude pruning, cubic schedule over "
                f"the first {end_fraction:.0%} of the budget, every {every} "
                "steps")


def l2_prune_epochs(iterations: int, epochs: int) -> list[int]:
  """Epoch ends at which L2 prunes: evenly over the first half of the budget."""
  half = max(1, epochs // 2)
  return sorted({max(1, round(half * (i + 1) / iterations))
                 for i in range(iterations)})


def l2(iterations: int = 3) -> Method:
  """Han et al. 2015: train with L2, prune below quality x layer std, retrain.

  ``iterations`` prunes at evenly spaced epoch ends of the first half of the
  budget, each raising the sparsity linearly to the target. Pruning
  ``|w| < q * std_l`` for one quality ``q`` is a global ranking of
  ``|w| / std_l`` (std over the layer's surviving weights), so ``q`` is the
  value that removes exactly the scheduled count.
  """

  def init(key, state, ctx, tx):
    del key
    state = base.start_with_masks(state, base.ones_like_masks(state.params),
                                  tx)
    return state.replace(method_state={"k": jnp.int32(0)}), {}

  def update(key, state, metrics, ctx):
    del key, metrics
    spe = ctx.steps_per_epoch
    epochs = l2_prune_epochs(iterations, ctx.total_steps // spe)
    due = jnp.isin(state.step, jnp.asarray([e * spe for e in epochs]))

    def prune(state):
      k = state.method_state["k"] + 1
      s_frac = jnp.minimum(k, len(epochs)).astype(jnp.float32) / len(epochs)
      old = base.masks_of(state.opt_state)
      n = base.num_prunable(state.params, ctx.prunable)
      n_zero = jnp.floor(s_frac * state.hp["n_zero"].astype(jnp.float32)
                         + 0.5).astype(jnp.int32)

      def normalised(p, m):
        n_alive = jnp.maximum(m.sum(), 1)
        mean = jnp.sum(jnp.where(m, p, 0)) / n_alive
        var = jnp.sum(jnp.where(m, (p - mean) ** 2, 0)) / n_alive
        return jnp.where(m, jnp.abs(p) / jnp.sqrt(var + 1e-12), -1.0)

      scores = jax.tree.map(normalised, state.params, old)
      new = base.global_topk_masks(scores, ctx.prunable, n - n_zero)
      new = jax.tree.map(jnp.logical_and, new, old)
      state = base.change_masks(state, new)[0]
      return state.replace(method_state={"k": k})

    state = jax.lax.cond(due, prune, lambda s: s, state)
    return state, {"prune": base.event(
        due, sparsity=base.sparsity_of(state.params, ctx.prunable))}

  return Method("l2", init=init, update=update, start="dense",
                description=f"Han et al. 2015: L2 training, {iterations} "
                "prune (quality x layer std) / retrain iterations")


__all__ = ["random", "magnitude", "gmp", "l2", "gmp_sparsity",
           "l2_prune_epochs"]
