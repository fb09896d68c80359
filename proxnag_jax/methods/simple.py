"""One-shot and scheduled magnitude-style methods: random, magnitude, GMP, L2,
SNIP. Each is a :class:`~proxnag_jax.methods.base.Method` of pure functions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from proxnag_jax import masks as masks_lib
from proxnag_jax.methods.base import Method
from proxnag_jax.methods.base import no_update


def _pruned_masks(params, scores, sparsity, scope, prunable):
  return masks_lib.magnitude_masks(params, sparsity, scope=scope,
                                   scores=scores,
                                   prunable=lambda p, x: _lookup(prunable, p))


def _lookup(tree, path):
  node = tree
  for k in path:
    node = node[getattr(k, "key", getattr(k, "idx", k))]
  return node


def random(config) -> Method:
  """Random masks, the same sparsity in every layer: the sanity floor."""

  def init(key, params, ctx):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    scores = jax.tree.unflatten(treedef, [
        jax.random.uniform(k, p.shape) for k, p in zip(keys, leaves)])
    return _pruned_masks(params, scores, ctx.target, "layer",
                         ctx.prunable), ()

  return Method("random", "scratch", init, no_update,
                description="random masks, uniform per-layer sparsity, at "
                "initialisation; then sparse training")


def magnitude(config) -> Method:
  """One-shot magnitude pruning of the trained dense model, then masked
  fine-tuning (``config.magnitude_scope``: 'layer' or 'global')."""
  scope = config.get("magnitude_scope", "global")

  def init(key, params, ctx):
    del key
    return _pruned_masks(params, None, ctx.target, scope, ctx.prunable), ()

  return Method("magnitude", "dense", init, no_update,
                description=f"one-shot {scope} magnitude pruning of the dense "
                "model, then masked fine-tuning")


def gmp_sparsity(t: int, t0: int, n_steps: int, s_i: float, s_f: float):
  """Zhu & Gupta 2017: s_t = s_f + (s_i - s_f)(1 - (t - t0)/n)^3."""
  frac = min(max((t - t0) / max(n_steps, 1), 0.0), 1.0)
  return s_f + (s_i - s_f) * (1.0 - frac) ** 3


def gmp(config) -> Method:
  """Gradual magnitude pruning (Zhu & Gupta 2017) from the dense model.

  Every ``gmp_every`` steps during the first ``gmp_end_fraction`` of the
  budget the layer-wise magnitude masks are recomputed at the cubic
  schedule's sparsity; the rest of the budget fine-tunes with the final mask.
  """
  every = int(config.get("gmp_every", 100))
  end_frac = float(config.get("gmp_end_fraction", 0.5))

  def init(key, params, ctx):
    del key
    return masks_lib.ones_masks(params), {"t": jnp.int32(0)}

  def update(key, t, params, masks, mstate, opt_state, ctx):
    del key, opt_state
    n = int(end_frac * ctx.total_steps)
    s = gmp_sparsity(t, 0, n, 0.0, ctx.target)
    # Magnitude of the (already masked) weights; pruned ones stay pruned.
    new = _pruned_masks(params, None, s, "layer", ctx.prunable)
    new = jax.tree.map(jnp.logical_and, new, masks)
    return new, {"t": jnp.int32(t)}

  def due(step, epoch_end, ctx):
    del epoch_end
    return step % every == 0 and step <= end_frac * ctx.total_steps + every

  return Method("gmp", "dense", init, update, due,
                description=f"gradual magnitude pruning, cubic schedule over "
                f"the first {end_frac:.0%} of the budget, every {every} steps")


def l2(config) -> Method:
  """Han et al. 2015: train with L2, prune below quality x layer std, retrain.

  ``l2_iterations`` prune steps at evenly spaced epoch ends of the first
  half of the budget, each raising the sparsity linearly to the target.
  Pruning ``|w| < q * std_l`` for one quality ``q`` is a global ranking of
  ``|w| / std_l`` (std over the layer's surviving weights), so ``q`` is the
  value that removes exactly the scheduled count.
  """
  k_iters = int(config.get("l2_iterations", 3))

  def init(key, params, ctx):
    del key
    return masks_lib.ones_masks(params), {"k": jnp.int32(0)}

  def update(key, t, params, masks, mstate, opt_state, ctx):
    del key, t, opt_state
    k = int(mstate["k"]) + 1
    n_prunes = len(l2_prune_epochs(k_iters,
                                   ctx.total_steps // ctx.steps_per_epoch))
    s = ctx.target * min(k, n_prunes) / n_prunes

    def normalised(p, m):
      alive = m.astype(bool)
      n = jnp.maximum(alive.sum(), 1)
      mean = jnp.sum(jnp.where(alive, p, 0)) / n
      var = jnp.sum(jnp.where(alive, (p - mean) ** 2, 0)) / n
      return jnp.where(alive, jnp.abs(p) / jnp.sqrt(var + 1e-12), -1.0)

    scores = jax.tree.map(normalised, params, masks)
    new = _pruned_masks(params, scores, s, "global", ctx.prunable)
    return jax.tree.map(jnp.logical_and, new, masks), {"k": jnp.int32(k)}

  def due(step, epoch_end, ctx):
    epochs = ctx.total_steps // ctx.steps_per_epoch
    return epoch_end and (step // ctx.steps_per_epoch) in l2_prune_epochs(
        k_iters, epochs)

  return Method("l2", "dense", init, update, due,
                description=f"Han et al. 2015: L2 training, {k_iters} "
                "prune (quality x layer std) / retrain iterations")


def l2_prune_epochs(k_iters: int, epochs: int) -> list[int]:
  """Epoch ends at which L2 prunes: evenly over the first half of the budget."""
  half = max(1, epochs // 2)
  return sorted({max(1, round(half * (i + 1) / k_iters)) for i in
                 range(k_iters)})


def snip(config) -> Method:
  """SNIP (Lee et al. 2019): at initialisation keep the global top-k of the
  connection sensitivity ``|g * w|`` on one minibatch, then train sparse."""

  def init(key, params, ctx):
    del key
    grads = ctx.grad_fn(params)
    scores = jax.tree.map(lambda g, w: jnp.abs(g * w).astype(jnp.float32),
                          grads, params)
    return _pruned_masks(params, scores, ctx.target, "global",
                         ctx.prunable), ()

  return Method("snip", "scratch", init, no_update,
                description="SNIP: global top-k of |g*w| on one minibatch at "
                "initialisation; then sparse training")


__all__ = ["random", "magnitude", "gmp", "l2", "snip", "gmp_sparsity",
           "l2_prune_epochs"]
