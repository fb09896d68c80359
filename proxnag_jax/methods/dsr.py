"""Dynamic Sparse Reparameterization (Mostafa & Wang 2019), from scratch.

Defaults follow the reference implementation (IntelAI/dynamic-reparameterization,
WRN-28-2 on CIFAR-10), scaled to any model as follows:

* **How many to reallocate.** The reference prunes ``N_p = 20,000`` weights
  per reallocation for WRN-28-2, whose sparse convs hold 1,451,520 weights
  (the same ``N_p`` at every sparsity from 50% to 90%). Here ``N_p =
  n_prune_fraction * (weights in the sparse layers)`` with ``n_prune_fraction
  = 20000 / 1451520``, capped at ``max_prune_fraction = 20000 / 145152`` of
  the nonzero weights (the largest share the reference used, at 90%
  sparsity), so that a sparser run than any the reference made (99%) does not
  try to reallocate more weights than it has.
* **When.** Every ``periods[k]`` steps from ``period_starts[k]`` (a fraction
  of the run) on: the reference's 100 / 200 / 400 / 800 steps from epochs
  0 / 25 / 80 / 140 of 200; no reallocation from ``stop_fraction`` of the
  run on (the reference stops at epoch 190 of 200). The periods are in
  steps, as in the reference (batch 100 there).
* **Which layers.** The layers whose names match a regex in ``dense`` stay
  dense (the reference: the first conv, the shortcut convs and the
  classifier) and are outside the reallocation; the other prunable layers
  start with the same density, chosen so that the whole network meets the
  target exactly. When the dense layers alone hold more weights than the
  target keeps (e.g. 99% on LeNet-5) they are made sparse like the others
  (the run's trace records it in ``init``'s event as ``dense_kept = 0``).

Each reallocation: prune the alive weights of the sparse layers with ``|w|
< H`` (one global threshold ``H``, at least one weight kept per layer);
regrow as many at uniformly random positions that are off and were not just
pruned, shared between layers in proportion to their nonzero counts after
pruning (exactly: the number of nonzero weights never changes); then adapt
``H`` for the next reallocation (``2H`` when fewer than ``(1 - delta) N_p``
were pruned, ``H / 2`` when more than ``(1 + delta) N_p``). Regrown weights
start at zero; gradients are masked (as the reference's ``mask * w``).
Differences from the reference, on purpose: the regrowth split is exact (the
reference rounds with ``np.round`` and gives the rounding error to a random
layer), and the initial counts are exact per layer.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

from proxnag_jax import masks as masks_lib
from proxnag_jax.methods import base
from proxnag_jax.methods.base import Method

# The reference's WRN-28-2 numbers (see the module docstring).
REF_N_PRUNE = 20000
REF_SPARSE_WEIGHTS = 1451520
REF_NONZERO_AT_90 = 145152


def period_at(step, total_steps: int, periods, period_starts) -> jax.Array:
  """The reallocation period in force at ``step`` (traceable)."""
  frac = jnp.asarray(step, jnp.float32) / max(total_steps, 1)
  out = jnp.int32(periods[0])
  for p, s in zip(periods[1:], period_starts[1:]):
    out = jnp.where(frac >= s, jnp.int32(p), out)
  return out


def dsr(n_prune_fraction: float = REF_N_PRUNE / REF_SPARSE_WEIGHTS,
        max_prune_fraction: float = REF_N_PRUNE / REF_NONZERO_AT_90,
        periods: tuple = (100, 200, 400, 800),
        period_starts: tuple = (0.0, 0.125, 0.4, 0.7),
        stop_fraction: float = 0.95, delta: float = 0.1,
        threshold: float = 1e-3, dense: tuple = ()) -> Method:
  """DSR from scratch; see the module docstring for the rule and defaults.

  Args:
    n_prune_fraction: ``N_p`` as a fraction of the sparse layers' weights.
    max_prune_fraction: cap on ``N_p`` as a fraction of their nonzeros.
    periods / period_starts: reallocation period (steps) in force from each
      start (fraction of the run); ``period_starts[0]`` must be 0.
    stop_fraction: no reallocation from this fraction of the run on.
    delta: tolerance of the threshold adaptation.
    threshold: the initial ``H``.
    dense: regexes on leaf names (``'conv1/kernel'``) of layers kept dense.
  """
  periods, period_starts = tuple(periods), tuple(period_starts)
  if (len(periods) != len(period_starts) or not periods or
      period_starts[0] != 0 or any(p < 1 for p in periods) or
      list(period_starts) != sorted(period_starts)):
    raise ValueError("dsr: periods and period_starts must have the same "
                     "length, periods >= 1 and period_starts rising from 0; "
                     f"got {periods} and {period_starts}.")
  if not 0 < n_prune_fraction < 1 or not 0 < max_prune_fraction <= 1:
    raise ValueError("dsr: n_prune_fraction and max_prune_fraction must be "
                     "in (0, 1).")
  try:
    pats = [re.compile(p) for p in dense]
  except re.error as e:
    raise ValueError(f"dsr: dense holds an invalid regular expression ({e}); "
                     f"got {dense}.") from None

  def layers(ctx):
    """Indices of the prunable leaves and which of them are dense-matched."""
    names = [masks_lib.path_name(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(ctx.prunable)[0]]
    which = jax.tree.leaves(ctx.prunable)
    idx = [i for i, w in enumerate(which) if w]
    return idx, [any(p.search(names[i]) for p in pats) for i in idx]

  def in_sparse(state, ctx):
    """Per prunable leaf: is it in the sparse (reallocated) set? (traced)"""
    idx, matched = layers(ctx)
    sizes = [jax.tree.leaves(state.params)[i].size for i in idx]
    n_dense = sum(s for s, d in zip(sizes, matched) if d)
    fits = n_dense <= base.n_keep(state.params, state.hp, ctx)
    return jnp.array([not d for d in matched]) | ~fits, fits

  def init(key, state, ctx, tx):
    idx, _ = layers(ctx)
    leaves, treedef = jax.tree.flatten(state.params)
    sizes = jnp.array([leaves[i].size for i in idx], jnp.int32)
    sparse, fits = in_sparse(state, ctx)
    keep_total = base.n_keep(state.params, state.hp, ctx) - jnp.sum(
        jnp.where(sparse, 0, sizes))
    # Uniform density over the sparse layers, exact in total.
    counts = base.allocate(keep_total, jnp.where(sparse, sizes, 0),
                           jnp.where(sparse, sizes, 0))
    keys = jax.random.split(key, len(idx))
    masks = [jnp.ones(l.shape, bool) for l in leaves]
    for j, i in enumerate(idx):
      m = masks_lib.topk_mask(jax.random.uniform(keys[j], leaves[i].shape),
                              counts[j])
      masks[i] = jnp.where(sparse[j], m, True)
    state = base.start_with_masks(state, jax.tree.unflatten(treedef, masks),
                                  tx)
    ms = {"threshold": jnp.float32(threshold), "pruned": jnp.int32(0),
          "target": jnp.float32(0.0)}
    return state.replace(method_state=ms), {"init": base.event(
        True, dense_kept=fits.astype(jnp.int32),
        sparse_layers=sparse.sum(dtype=jnp.int32))}

  def update(key, state, metrics, ctx):
    del metrics
    t = state.step
    period = period_at(t, ctx.total_steps, periods, period_starts)
    due = ((t > 0) & (t % period == 0) &
           (t < int(stop_fraction * ctx.total_steps)))

    def move(state):
      h = state.method_state["threshold"]
      idx, _ = layers(ctx)
      sparse, _ = in_sparse(state, ctx)
      treedef = jax.tree.structure(ctx.prunable)
      w_l = treedef.flatten_up_to(state.params)
      m_l = treedef.flatten_up_to(base.masks_of(state.opt_state))
      keeps, pruned_now, alive, counts, capacity, sizes = {}, {}, [], [], [], []
      for j, i in enumerate(idx):
        m, a = m_l[i], jnp.abs(w_l[i])
        keep = m & (a >= h)
        # Never empty a layer: keep its largest weight.
        top1 = masks_lib.topk_mask(jnp.where(m, a, -jnp.inf), 1) & m
        keep = jnp.where(keep.any(), keep, top1)
        keep = jnp.where(sparse[j], keep, m)
        keeps[i], pruned_now[i] = keep, m & ~keep
        alive.append(m.sum(dtype=jnp.int32))
        counts.append(keep.sum(dtype=jnp.int32))
        capacity.append(jnp.where(sparse[j], m.size - counts[-1] - pruned_now[
            i].sum(dtype=jnp.int32), 0))
        sizes.append(m.size)
      alive, counts = jnp.stack(alive), jnp.stack(counts)
      pruned = jnp.sum(alive - counts)
      grow = base.allocate(pruned, jnp.where(sparse, counts, 0).astype(
          jnp.float32), jnp.stack(capacity))
      keys = jax.random.split(key, len(idx))
      new = list(m_l)
      for j, i in enumerate(idx):
        scores = jnp.where(keeps[i] | pruned_now[i], -1.0,
                           jax.random.uniform(keys[j], keeps[i].shape))
        new[i] = keeps[i] | (masks_lib.topk_mask(scores, grow[j]) &
                             (scores >= 0))
      n_sparse = jnp.sum(jnp.where(sparse, jnp.array(sizes), 0))
      nz_sparse = jnp.sum(jnp.where(sparse, alive, 0))
      n_p = jnp.minimum(n_prune_fraction * n_sparse.astype(jnp.float32),
                        max_prune_fraction * nz_sparse.astype(jnp.float32))
      pf = pruned.astype(jnp.float32)
      h = jnp.where(pf < (1 - delta) * n_p, 2.0 * h,
                    jnp.where(pf > (1 + delta) * n_p, 0.5 * h, h))
      state, _ = base.change_masks(state, jax.tree.unflatten(treedef, new))
      return state.replace(method_state={"threshold": h, "pruned": pruned,
                                         "target": n_p})

    state = jax.lax.cond(due, move, lambda s: s, state)
    ms = state.method_state
    return state, {"reallocate": base.event(
        due, threshold=ms["threshold"], pruned=ms["pruned"],
        target=ms["target"], period=period,
        sparsity=base.sparsity_of(state.params, ctx.prunable))}

  return Method("dsr", init=init, update=update, start="scratch",
                description="DSR: prune below an adaptive global threshold "
                f"(N_p = {n_prune_fraction:.2%} of the sparse weights, at "
                f"most {max_prune_fraction:.1%} of their nonzeros) every "
                f"{'/'.join(map(str, periods))} steps, stop at "
                f"{stop_fraction:.0%} of the run; regrow at random, shared "
                "by nonzeros" + (f"; dense: {', '.join(dense)}" if dense
                                  else ""))


__all__ = ["dsr", "period_at"]
