"""Dynamic Sparse Reparameterization (Mostafa & Wang 2019)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from proxnag_jax import masks as masks_lib
from proxnag_jax.methods import base
from proxnag_jax.methods.base import Method
from proxnag_jax.methods.magnitude import random as random_method


def dsr(every: int = 200, np_fraction: float = 0.02, delta: float = 0.1,
        threshold: float = 1e-3) -> Method:
  """DSR, from scratch, with random initial masks (uniform per layer).

  Every ``every`` steps: prune the alive weights with ``|w| < H`` (one global
  threshold); adapt ``H`` towards pruning ``np_fraction`` of the nonzero
  budget per reallocation (double it when fewer than ``(1 - delta) N_p`` were
  pruned, halve it when more than ``(1 + delta) N_p``); regrow as many
  weights at random zero positions, allocated to layers in proportion to
  their nonzero counts after pruning.
  """
  base_init = random_method().init

  def init(key, state, ctx):
    state, _ = base_init(key, state, ctx)
    return state.replace(method_state={"threshold": jnp.float32(threshold),
                           "pruned": jnp.int32(0)}), {}

  def update(key, state, metrics, ctx):
    del metrics
    t = state.step
    due = base.every(t, every) & (t < ctx.total_steps)

    def move(state):
      h = state.method_state["threshold"]
      treedef = jax.tree.structure(ctx.prunable)
      idx = [i for i, w in enumerate(jax.tree.leaves(ctx.prunable)) if w]
      w_l = treedef.flatten_up_to(state.params)
      m_l = treedef.flatten_up_to(base.masks_of(state.opt_state))
      budget = sum(m_l[i].sum(dtype=jnp.int32) for i in idx)
      keeps, counts, capacity = {}, [], []
      for i in idx:
        keeps[i] = m_l[i] & (jnp.abs(w_l[i]) >= h)
        counts.append(keeps[i].sum(dtype=jnp.int32))
        capacity.append(m_l[i].size - counts[-1])
      pruned = budget - sum(counts)
      grow = base.allocate(pruned, jnp.stack(counts).astype(jnp.float32),
                           jnp.stack(capacity))
      keys = jax.random.split(key, len(idx))
      new = list(m_l)
      for j, i in enumerate(idx):
        scores = jnp.where(keeps[i], -1.0,
                           jax.random.uniform(keys[j], keeps[i].shape))
        new[i] = keeps[i] | masks_lib.topk_mask(scores, grow[j])
      n_p = np_fraction * budget.astype(jnp.float32)
      pf = pruned.astype(jnp.float32)
      h = jnp.where(pf < (1 - delta) * n_p, 2.0 * h,
                    jnp.where(pf > (1 + delta) * n_p, 0.5 * h, h))
      state, _ = base.change_masks(state, jax.tree.unflatten(treedef, new))
      return state.replace(method_state={"threshold": h, "pruned": pruned})

    state = jax.lax.cond(due, move, lambda s: s, state)
    ms = state.method_state
    return state, {"reallocate": base.event(
        due, threshold=ms["threshold"], pruned=ms["pruned"],
        sparsity=base.sparsity_of(state.params, ctx.prunable))}

  return Method("dsr", init=init, update=update, start="scratch",
                description=f"DSR: every {every} steps prune below an adaptive "
                f"global threshold (target {np_fraction:.0%} of the budget), "
                "regrow randomly, reallocated by nonzeros")


__all__ = ["dsr"]
