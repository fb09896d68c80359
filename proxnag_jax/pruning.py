"""The iterative Prox-NAG pruning algorithm (paper section 3, Fig. 5).

Starting from a trained dense model, rounds ``r = 0, 1, ...`` of

1. **prune-train** with Prox-NAG at ``lambda_r`` under the mask ``M`` of the
   weights alive at the round's start (pruned weights stay exactly zero, so
   sparsity never goes down between rounds). The sparse iterate ``w~`` is
   monitored every ``monitor_every`` steps; prune-training stops at

   * the target sparsity, or
   * a local maximum of the sparsity of ``w~`` (it fell ``drop_tol`` below
     its best value, or made no new maximum for ``patience`` monitors), or
   * a sharp rise of the training loss (its moving average exceeds
     ``loss_rise`` times its value at the round's start), or
   * ``prune_max_epochs``;

   and keeps ``w~`` from the best (sparsest) monitor: the paper found the
   best model at the local maximum.
2. **fine-tune** with the new mask fixed, for ``finetune_epochs +
   r * finetune_growth`` epochs (later rounds shrink the survivors more);
3. if the target is not reached, ``lambda_{r+1} = lambda_r + l1_step`` and go
   to 1.

**Overshoot.** If a prune-train phase ends sparser than the target, the
weights zeroed *in that round* with the largest magnitude at the round's start
are restored (with their round-start values) until exactly
``round(target * n)`` prunable weights are zero; fine-tuning then trains
them. So the final sparsity equals the target to one weight.

Everything the loop carries is one pytree, :class:`PruneState`, moved by the
pure functions below and checkpointed with orbax by ``train/prune.py``.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from proxnag_jax import masks as masks_lib
from proxnag_jax import transforms

PyTree = Any

PRUNE, FINETUNE, DONE = 0, 1, 2
PHASE_NAMES = {PRUNE: "prune", FINETUNE: "finetune", DONE: "done"}


@flax.struct.dataclass
class PruneState:
  """The whole pruning loop state (a pytree).

  Attributes:
    train: the :class:`~proxnag_jax.engine.TrainState` (params, BN stats and
      the phase's optimizer state, which holds the masks).
    round_start: params at the start of the round (for overshoot repair).
    best_params / best_batch_stats / best_sparsity: the sparsest ``w~`` seen
      in this prune-train phase.
    monitors_since_best: monitors without a new maximum.
    loss_ref / loss_ema: training-loss moving average at the phase start and
      now.
    lam: the current L1 coefficient.
    round / phase / phase_step: where the loop is.
  """

  train: Any
  round_start: PyTree
  best_params: PyTree
  best_batch_stats: PyTree
  best_sparsity: jax.Array
  monitors_since_best: jax.Array
  loss_ref: jax.Array
  loss_ema: jax.Array
  lam: jax.Array
  round: jax.Array
  phase: jax.Array
  phase_step: jax.Array


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


def init_state(train_state, lam: float) -> PruneState:
  p = _copy(train_state.params)
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  i32 = lambda v: jnp.asarray(v, jnp.int32)
  return PruneState(
      train=train_state, round_start=p, best_params=p,
      best_batch_stats=_copy(train_state.batch_stats),
      best_sparsity=f32(-1.0),
      monitors_since_best=i32(0), loss_ref=f32(jnp.nan),
      loss_ema=f32(jnp.nan), lam=f32(lam), round=i32(0), phase=i32(PRUNE),
      phase_step=i32(0))


def start_prune(state: PruneState) -> PruneState:
  """Resets the per-phase trackers at the start of a prune-train phase."""
  p = state.train.params
  return state.replace(
      round_start=_copy(p), best_params=_copy(p),
      best_batch_stats=_copy(state.train.batch_stats),
      best_sparsity=jnp.float32(-1.0), monitors_since_best=jnp.int32(0),
      loss_ref=jnp.float32(jnp.nan), loss_ema=jnp.float32(jnp.nan),
      phase=jnp.int32(PRUNE), phase_step=jnp.int32(0))


def monitor(state: PruneState, loss: jax.Array, n_monitor: jax.Array, *,
            ema: float, warmup_monitors: int,
            prunable=None) -> tuple[PruneState, jax.Array]:
  """One monitor of a prune-train phase (pure, jit-able).

  Updates the loss moving average (``ema`` decay; its value after
  ``warmup_monitors`` monitors is the phase's reference loss) and the best
  (sparsest) sparse iterate. ``n_monitor`` counts monitors in the phase
  (1 for the first). Returns the new state and the sparsity of ``w~``.
  """
  sp_params = transforms.sparse_params(state.train.opt_state)
  s = masks_lib.sparsity(sp_params, prunable)
  ema_new = jnp.where(jnp.isnan(state.loss_ema), loss,
                      ema * state.loss_ema + (1 - ema) * loss)
  loss_ref = jnp.where(jnp.isnan(state.loss_ref) &
                       (n_monitor >= warmup_monitors),
                       ema_new, state.loss_ref)
  better = s > state.best_sparsity
  pick = lambda new, old: jax.tree.map(
      lambda a, b: jnp.where(better, a, b), new, old)
  state = state.replace(
      best_params=pick(sp_params, state.best_params),
      best_batch_stats=pick(state.train.batch_stats, state.best_batch_stats),
      best_sparsity=jnp.where(better, s, state.best_sparsity),
      monitors_since_best=jnp.where(better, 0, state.monitors_since_best + 1),
      loss_ema=ema_new, loss_ref=loss_ref)
  return state, s


def stop_reason(state: PruneState, sparsity: float, *, target: float,
                drop_tol: float, patience: int, loss_rise: float,
                loss_rise_min: float = 0.0) -> str:
  """Why prune-training should stop now ('' to go on). Host side.

  ``'target'``: the sparsity reached ``target``; ``'local_max'``: it fell
  ``drop_tol`` below its best or made no new best for ``patience``
  monitors; ``'loss_rise'``: the loss average exceeds ``loss_rise`` times
  the reference and by at least ``loss_rise_min``.
  """
  best = float(state.best_sparsity)
  if sparsity >= target:
    return "target"
  if best > 0 and sparsity < best - drop_tol:
    return "local_max"
  if best > 0 and patience and int(state.monitors_since_best) >= patience:
    return "local_max"
  ref, now = float(state.loss_ref), float(state.loss_ema)
  if (loss_rise and np.isfinite(ref) and best > 0 and
      now > loss_rise * ref and now - ref > loss_rise_min):
    return "loss_rise"
  return ""


def prunable_count(params: PyTree, prunable=None) -> int:
  which = masks_lib.prunable_tree(params, prunable)
  return int(sum(p.size for p, w in zip(jax.tree.leaves(params),
                                        jax.tree.leaves(which)) if w))


def masks_from_params(params: PyTree, prunable=None) -> PyTree:
  """Masks of the nonzero prunable weights (other leaves all True)."""
  which = masks_lib.prunable_tree(params, prunable)
  return jax.tree.map(
      lambda p, w: (p != 0) if w else jnp.ones(p.shape, bool), params, which)


def repair_overshoot(params: PyTree, round_start: PyTree, target: float,
                     prunable=None) -> tuple[PyTree, int]:
  """Restores the largest weights zeroed this round until sparsity == target.

  Among prunable weights that are zero in ``params`` but were nonzero in
  ``round_start``, the ones with the largest ``|round_start|`` get their
  round-start values back, until exactly ``round(target * n)`` prunable
  weights are zero. Returns ``(params, number_restored)``.
  """
  which = masks_lib.prunable_tree(params, prunable)
  leaves, treedef = jax.tree.flatten(params)
  start = treedef.flatten_up_to(round_start)
  w = treedef.flatten_up_to(which)
  n = sum(p.size for p, k in zip(leaves, w) if k)
  zeros = sum(int(jnp.sum(p == 0)) for p, k in zip(leaves, w) if k)
  want = int(round(target * n))
  excess = zeros - want
  if excess <= 0:
    return params, 0
  idx = [i for i, k in enumerate(w) if k]
  cand = jnp.concatenate([
      jnp.ravel(jnp.where((leaves[i] == 0) & (start[i] != 0),
                          jnp.abs(start[i]).astype(jnp.float32), -1.0))
      for i in idx])
  restore = masks_lib.topk_mask(cand, excess) & (cand >= 0)
  out = list(leaves)
  off = 0
  for i in idx:
    size = leaves[i].size
    r = restore[off:off + size].reshape(leaves[i].shape)
    out[i] = jnp.where(r, start[i], leaves[i])
    off += size
  return jax.tree.unflatten(treedef, out), int(restore.sum())


def target_fraction(params: PyTree, target: float, prunable=None) -> float:
  """``round(target * n) / n``: the sparsity that counts as the target."""
  n = prunable_count(params, prunable)
  return round(target * n) / n


def reached(params: PyTree, target: float, prunable=None) -> bool:
  """True when at least ``round(target * n)`` prunable weights are zero
  (an exact count, free of float rounding)."""
  rep = masks_lib.sparsity_report(params, prunable=prunable)
  n = rep["prunable_params"]
  return n - rep["prunable_nonzero"] >= round(target * n)


def finetune_steps(config, round_: int, final: bool, steps_per_epoch: int,
                   steps_done: int) -> int:
  """Fine-tune length of a round, in steps.

  ``finetune_epochs + round * finetune_growth`` epochs (fractions allowed);
  the final round at least ``final_finetune_epochs``. With ``fill_budget``
  the final fine-tune instead takes whatever is left of ``budget_epochs``
  after the ``steps_done`` steps of the earlier phases (at least one step),
  so Prox-NAG trains exactly the budget the other methods get.
  """
  e = config.finetune_epochs + round_ * config.finetune_growth
  if final:
    e = max(e, config.get("final_finetune_epochs", 0))
    if config.get("fill_budget", False):
      left = int(round(config.budget_epochs * steps_per_epoch)) - steps_done
      return max(1, left)
  return max(1, int(round(e * steps_per_epoch)))


def lam_for_round(config, round_: int) -> float:
  return float(config.l1_init + round_ * config.l1_step)
