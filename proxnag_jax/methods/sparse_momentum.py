"""Sparse Momentum (Dettmers & Zettlemoyer 2019): dynamic sparse training that
regrows weights where the momentum is large."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from proxnag_jax import masks as masks_lib
from proxnag_jax.methods import base
from proxnag_jax.methods.base import Method
from proxnag_jax.methods.magnitude import random as random_method


def cosine_rate(epoch, total_epochs: int, start: float, end: float = 0.005):
  """Cosine annealing of the prune rate from ``start`` to ``end``."""
  frac = jnp.clip(jnp.asarray(epoch, jnp.float32) / max(total_epochs, 1),
                  0.0, 1.0)
  return end + 0.5 * (start - end) * (1 + jnp.cos(math.pi * frac))


def prune_counts(alive, sizes, share, rate):
  """How many weights each layer prunes (traceable).

  ``ceil(p_l * alive_l)`` with ``p_l = min(rate, 1 - density_l)`` for a
  layer with density > 0.8 whose momentum ``share`` exceeds ``1 / L``, and
  ``p_l = rate`` otherwise (the reference's ``adjust_prune_rate``). The ceil
  forgives float32 rounding (``0.1 * 540`` is 54, not 55).
  """
  alive = jnp.asarray(alive, jnp.int32)
  a = alive.astype(jnp.float32)
  free = 1.0 - a / jnp.asarray(sizes, jnp.float32)
  rate = jnp.where((free < 0.2) & (share > 1.0 / alive.shape[0]),
                   jnp.minimum(free, rate), rate)
  return jnp.minimum(jnp.ceil(rate * a - 1e-3).astype(jnp.int32), alive)


def sparse_momentum(prune_rate: float = 0.5,
                    final_prune_rate: float = 0.005) -> Method:
  """Sparse Momentum, from scratch, with random initial masks (uniform
  per-layer sparsity).

  At the end of every epoch but the last, with ``p_t`` the prune rate
  (cosine decay from ``prune_rate`` to ``final_prune_rate``) and ``s_l`` the
  momentum share of layer ``l`` (mean ``|momentum|`` over its alive weights,
  normalised to sum to one over the ``L`` layers):

  1. in every layer remove the ``ceil(p_l * alive_l)`` alive weights with
     the smallest magnitude, where ``p_l = min(p_t, 1 - density_l)`` for a
     nearly dense layer (density > 0.8) whose share ``s_l > 1 / L``, and
     ``p_l = p_t`` otherwise;
  2. split the removed count over layers in proportion to ``s_l`` (capped by
     each layer's free positions, the rest to the others: exact, so the
     number of nonzero weights never changes);
  3. in each layer regrow that many positions, among those off after step 1
     (including the ones just removed), with the largest ``|momentum|``.

  The optimizer steps on dense gradients (only the weights are masked), so
  pruned positions keep accumulating momentum, which is what growth ranks;
  grown weights start at zero with the momentum they have (not reset), and a
  weight removed and regrown in the same round keeps its value.

  Differences from the reference (TimDettmers/sparse_learning), on purpose:
  the regrowth split is exact (the reference rounds with ceil/floor, caps a
  layer at 99% of its free slots and corrects the nonzero count over later
  rounds), the initial masks have an exact count per layer (the reference
  draws Bernoulli masks), and ties in the magnitude/momentum ranking go to
  the lowest index (the reference's sort order is unspecified).
  """
  base_init = random_method().init

  def tx(hp, ctx):
    # As the reference (sparse_learning: optimizer.step on dense gradients,
    # then the mask on the weights): the momentum of pruned weights keeps
    # accumulating, which is what growth ranks.
    return base.masked_sgd(hp, ctx, dense_grads=True)

  def init(key, state, ctx, tx):
    # random's masks, started with this method's transformation.
    state, _ = base_init(key, state, ctx, tx)
    return state.replace(method_state={"prune_rate": jnp.float32(prune_rate)}), {}

  def update(key, state, metrics, ctx):
    del key, metrics
    spe, t = ctx.steps_per_epoch, state.step
    epochs = ctx.total_steps // spe
    due = base.every(t, spe) & (t < ctx.total_steps)

    def move(state):
      p_t = cosine_rate(t // spe, epochs, prune_rate, final_prune_rate)
      treedef = jax.tree.structure(ctx.prunable)
      which = jax.tree.leaves(ctx.prunable)
      idx = [i for i, w in enumerate(which) if w]
      w_l = treedef.flatten_up_to(state.params)
      m_l = treedef.flatten_up_to(base.masks_of(state.opt_state))
      mo_l = treedef.flatten_up_to(base.momentum_of(state.opt_state))
      alive = {i: m_l[i].sum(dtype=jnp.int32) for i in idx}
      contrib = jnp.stack([
          jnp.sum(jnp.where(m_l[i], jnp.abs(mo_l[i]), 0.0))
          / jnp.maximum(alive[i], 1) for i in idx])
      share = contrib / jnp.maximum(contrib.sum(), 1e-30)
      k = prune_counts(jnp.stack([alive[i] for i in idx]),
                       [m_l[i].size for i in idx], share, p_t)
      keeps, removed, capacity = {}, [], []
      for j, i in enumerate(idx):
        m = m_l[i]
        scores = jnp.where(m, -jnp.abs(w_l[i]).astype(jnp.float32), -jnp.inf)
        keep = m & ~masks_lib.topk_mask(scores, k[j])  # drop k smallest alive
        keeps[i] = keep
        removed.append(alive[i] - keep.sum(dtype=jnp.int32))
        capacity.append(m.size - keep.sum(dtype=jnp.int32))
      grow = base.allocate(sum(removed), contrib, jnp.stack(capacity))
      new = list(m_l)
      for j, i in enumerate(idx):
        scores = jnp.where(keeps[i], -1.0, jnp.abs(mo_l[i]).astype(
            jnp.float32))
        new[i] = keeps[i] | masks_lib.topk_mask(scores, grow[j])
      state, _ = base.change_masks(state, jax.tree.unflatten(treedef, new),
                                   reset_grown=False)
      return state.replace(method_state={"prune_rate": p_t})

    state = jax.lax.cond(due, move, lambda s: s, state)
    return state, {"regrow": base.event(
        due, prune_rate=state.method_state["prune_rate"],
        sparsity=base.sparsity_of(state.params, ctx.prunable))}

  return Method("sparse_momentum", init=init, tx=tx, update=update,
                start="scratch",
                description=f"Sparse Momentum: per-epoch magnitude prune at a "
                f"cosine-decayed rate (from {prune_rate}), momentum "
                "redistribution and momentum regrowth")


__all__ = ["sparse_momentum", "cosine_rate", "prune_counts"]
