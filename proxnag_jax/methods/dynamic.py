"""Dynamic sparse training from scratch: Sparse Momentum and DSR.

Both keep the number of nonzero prunable weights fixed (the target) while
moving connections: prune some, regrow as many elsewhere. Grown weights start
at zero and the runner resets their optimizer state. Counts are exact; the
allocation of regrowth across layers is done on the host (it is integer
bookkeeping over a handful of layers), everything per-weight in JAX.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from proxnag_jax import masks as masks_lib
from proxnag_jax.methods.base import Method
from proxnag_jax.methods.base import momentum_of
from proxnag_jax.methods.simple import random as random_method


def _flat(tree, which):
  leaves, treedef = jax.tree.flatten(tree)
  idx = [i for i, w in enumerate(treedef.flatten_up_to(which)) if w]
  return leaves, treedef, idx


def allocate(total: int, weights: np.ndarray, capacity: np.ndarray) -> list:
  """Splits ``total`` into integers proportional to ``weights``, each at most
  ``capacity``; what a full layer cannot take goes to the others (exact)."""
  out = np.zeros(len(weights), np.int64)
  w = np.where(capacity > 0, np.maximum(weights, 0.0), 0.0)
  left = int(total)
  while left > 0 and np.any(capacity - out > 0):
    room = capacity - out
    ww = np.where(room > 0, w, 0.0)
    if ww.sum() <= 0:
      ww = (room > 0).astype(np.float64)
    share = np.floor(left * ww / ww.sum()).astype(np.int64)
    share = np.minimum(share, room)
    if share.sum() == 0:          # hand out the remainder one by one
      order = np.argsort(-ww)
      for i in order:
        if left == 0:
          break
        if room[i] > 0 and ww[i] > 0:
          out[i] += 1
          left -= 1
      continue
    out += share
    left -= int(share.sum())
  return out.tolist()


def cosine_rate(epoch: int, total_epochs: int, start: float,
                end: float = 0.005) -> float:
  """Cosine annealing of the prune rate from ``start`` to ``end``."""
  frac = min(max(epoch / max(total_epochs, 1), 0.0), 1.0)
  return end + 0.5 * (start - end) * (1 + math.cos(math.pi * frac))


def sparse_momentum(config) -> Method:
  """Sparse Momentum (Dettmers & Zettlemoyer 2019), from scratch.

  At the end of every epoch: in every layer remove the fraction ``p_t`` of
  its nonzero weights with the smallest magnitude (``p_t``: cosine decay of
  ``sm_prune_rate``, 0.5 by default); redistribute the removed count over
  layers in proportion to the mean momentum magnitude of their surviving
  weights; in each layer regrow that many zero positions with the largest
  momentum magnitude. Initial masks: random, uniform per-layer sparsity.
  """
  rate0 = float(config.get("sm_prune_rate", 0.5))

  def update(key, t, params, masks, mstate, opt_state, ctx):
    del key
    mom = momentum_of(opt_state)
    epochs = ctx.total_steps // ctx.steps_per_epoch
    p_t = cosine_rate(t // ctx.steps_per_epoch, epochs, rate0)
    leaves, treedef, idx = _flat(params, ctx.prunable)
    m_leaves = treedef.flatten_up_to(masks)
    mo_leaves = treedef.flatten_up_to(mom)
    new_masks = list(m_leaves)
    removed, contrib, capacity = 0, [], []
    after_prune = {}
    for i in idx:
      m = m_leaves[i].astype(bool)
      alive = int(m.sum())
      k = int(math.floor(p_t * alive))
      scores = jnp.where(m, jnp.abs(leaves[i]), jnp.inf)
      drop = masks_lib.topk_mask(-scores, k)       # k smallest alive
      keep = m & ~drop
      after_prune[i] = keep
      removed += k
      contrib.append(float(jnp.sum(jnp.where(m, jnp.abs(mo_leaves[i]), 0.0))
                           / max(alive, 1)))
      capacity.append(int(m.size - keep.sum()))
    grow = allocate(removed, np.asarray(contrib), np.asarray(capacity))
    for i, g in zip(idx, grow):
      keep = after_prune[i]
      scores = jnp.where(keep, -1.0, jnp.abs(mo_leaves[i]).astype(jnp.float32))
      new_masks[i] = keep | masks_lib.topk_mask(scores, g)
    return jax.tree.unflatten(treedef, new_masks), {"prune_rate": jnp.float32(
        p_t)}

  base = random_method(config)

  def init(key, params, ctx):
    masks, _ = base.init(key, params, ctx)
    return masks, {"prune_rate": jnp.float32(rate0)}

  def due(step, epoch_end, ctx):
    del step, ctx
    return epoch_end

  return Method("sparse_momentum", "scratch", init, update, due,
                description=f"Sparse Momentum: per-epoch magnitude prune at a "
                f"cosine-decayed rate (from {rate0}), momentum redistribution "
                "and momentum regrowth")


def dsr(config) -> Method:
  """Dynamic Sparse Reparameterization (Mostafa & Wang 2019), from scratch.

  Every ``dsr_every`` steps: prune the alive weights with ``|w| < H`` (one
  global threshold); adapt ``H`` towards pruning ``dsr_np`` (a fraction of
  the nonzero budget) per reallocation: double it when fewer than
  ``(1 - delta) N_p`` were pruned, halve it when more than ``(1 + delta)
  N_p``; regrow as many weights at random zero positions, allocated to layers
  in proportion to their nonzero counts after pruning.
  """
  every = int(config.get("dsr_every", 200))
  np_frac = float(config.get("dsr_np", 0.02))
  delta = float(config.get("dsr_delta", 0.1))
  h0 = float(config.get("dsr_threshold", 1e-3))

  def update(key, t, params, masks, mstate, opt_state, ctx):
    del t, opt_state
    h = float(mstate["threshold"])
    leaves, treedef, idx = _flat(params, ctx.prunable)
    m_leaves = treedef.flatten_up_to(masks)
    budget = sum(int(m_leaves[i].sum()) for i in idx)
    n_p = np_frac * budget
    new_masks = list(m_leaves)
    pruned, counts, capacity, keeps = 0, [], [], {}
    for i in idx:
      m = m_leaves[i].astype(bool)
      keep = m & (jnp.abs(leaves[i]) >= h)
      keeps[i] = keep
      pruned += int(m.sum() - keep.sum())
      counts.append(int(keep.sum()))
      capacity.append(int(m.size - keep.sum()))
    grow = allocate(pruned, np.asarray(counts, np.float64),
                    np.asarray(capacity))
    keys = jax.random.split(key, len(idx))
    for j, (i, g) in enumerate(zip(idx, grow)):
      keep = keeps[i]
      scores = jnp.where(keep, -1.0, jax.random.uniform(keys[j], keep.shape))
      new_masks[i] = keep | masks_lib.topk_mask(scores, g)
    if pruned < (1 - delta) * n_p:
      h *= 2.0
    elif pruned > (1 + delta) * n_p:
      h *= 0.5
    return jax.tree.unflatten(treedef, new_masks), {
        "threshold": jnp.float32(h), "pruned": jnp.int32(pruned)}

  base = random_method(config)

  def init(key, params, ctx):
    masks, _ = base.init(key, params, ctx)
    return masks, {"threshold": jnp.float32(h0), "pruned": jnp.int32(0)}

  def due(step, epoch_end, ctx):
    del epoch_end, ctx
    return step % every == 0

  return Method("dsr", "scratch", init, update, due,
                description=f"DSR: every {every} steps prune below an adaptive "
                f"global threshold (target {np_frac:.0%} of the budget), "
                "regrow randomly, reallocated by nonzeros")
