"""Group-lasso Prox-NAG (the core paper's stated future work), as a
structured Method: Prox-NAG whose proximal step is the channel group lasso,
so whole channels become exact zeros during training and surgery removes
them.

From the trained dense model:

1. **Prune-train** with Prox-NAG (Nesterov extrapolation between proximal
   iterates, as :func:`proxnag_jax.transforms.proxnag`) and the proximal map
   of ``lambda * sum_c sqrt(p_c) ||w_c||_2`` over every prunable channel
   ``c`` (its kernel column, bias and BatchNorm scale and shift together,
   ``p_c`` params; :func:`proxnag_jax.transforms.prox_channel_l1`).
   ``lambda`` rises linearly, ``l1_init + l1_step * epochs``, as the core
   method raises it between rounds; the count of all-zero channels of the
   sparse iterate is checked every step.
2. When ``round(target * channels)`` channels are zero (with ``match``
   ``'macs'`` / ``'params'``: when the network without the zero channels
   has at most ``1 - target`` of the dense MACs / params), or at
   ``prune_fraction`` of the budget, the sparse iterate is kept and exactly
   the target is removed: the zero channels first, then (if too few are
   zero) those of smallest ``||w_c|| / sqrt(p_c)`` (reported as ``forced``
   in the trace; under the scale-invariant step, those of smallest share
   of their group's scale, :func:`proxnag_jax.surgery.relative_channel_scales`).
   With ``scale_invariant`` (default) and a model whose channels feed
   BatchNorm (``ctx.normalized``), the step is the scale-invariant one of
   :func:`proxnag_jax.surgery.group_soft_threshold`: channels measured by
   their BatchNorm scale and shift, thresholded relative to their group's
   rms channel norm, the group's norm kept (lambda is unitless there).
3. **Fine-tune** the rest of the budget with those channels held at zero
   (Nesterov SGD, cosine from ``finetune_lr``); the export is the smaller
   dense network.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from proxnag_jax import surgery
from proxnag_jax import transforms
from proxnag_jax.methods import base
from proxnag_jax.methods import phases
from proxnag_jax.methods import structured
from proxnag_jax.methods.base import Method

PRUNE, FINETUNE = phases.PRUNE, phases.FINETUNE


def group_proxnag(l1_init: float = 0.0, l1_step: float = 2e-3,
                  prune_lr: float = 0.01, prune_fraction: float = 0.5,
                  finetune_lr: float = 0.01, weighted: bool = True,
                  round_to: int = 1, match: str = "channels",
                  scale_invariant: bool = True) -> Method:
  """Group-lasso Prox-NAG; see the module docstring (``match``: what the
  target is a fraction of, :func:`proxnag_jax.methods.structured.keep_for_target`).
  """
  structured.check_match("group_proxnag", match)
  if l1_init < 0 or l1_step < 0 or l1_init + l1_step == 0:
    raise ValueError("group_proxnag: l1_init and l1_step must be "
                     "non-negative and not both zero.")
  if not 0 < prune_fraction < 1:
    raise ValueError("group_proxnag: prune_fraction must be in (0, 1).")

  def check(params, hp, ctx):
    del params, hp
    structured.check_groups("group_proxnag", ctx)

  def tx(hp, ctx):
    def chain(learning_rate, l1, weight_decay):
      return optax.chain(
          optax.add_decayed_weights(weight_decay),
          optax.scale_by_learning_rate(learning_rate),
          transforms.prox_channel_l1(
              l1, learning_rate, ctx.groups, weighted=weighted,
              normalized=ctx.normalized if scale_invariant else None),
          transforms.nesterov_extrapolation(hp["momentum"]))
    return transforms.with_masks(optax.inject_hyperparams(chain)(
        learning_rate=hp["prune_lr"], l1=hp["l1_init"],
        weight_decay=hp["weight_decay"]))

  def prune_end(ctx):
    return max(1, int(round(prune_fraction * ctx.total_steps)))

  def init(key, state, ctx, tx):
    del key
    state = base.start_with_masks(state, base.ones_like_masks(state.params),
                                  tx)
    ms = {"phase": jnp.int32(PRUNE), "lam": jnp.float32(state.hp["l1_init"]),
          "ft_start": jnp.int32(0), "forced": jnp.int32(0)}
    return state.replace(method_state=ms), {}

  def leave_prune(state, ctx):
    params = transforms.sparse_params(state.opt_state)
    gs = surgery.prunable_groups(ctx.groups)
    scores = {}
    normalized = ctx.normalized if scale_invariant else None
    for g in gs:
      rel = surgery.relative_channel_scales(params, g, normalized)
      if rel is not None:
        # The scale-invariant step's own measure: the channel's share of
        # its group's scale (its kernel columns' norm is arbitrary).
        scores[g.name] = rel
        continue
      n = jnp.sqrt(surgery.channel_sums(
          jax.tree.map(jnp.square, params), g,
          [s for s in g.producers if s.collection == "params"]))
      scores[g.name] = n / math.sqrt(surgery.channel_param_count(params, g))
    zeros = surgery.removed_channels(params, ctx.groups)
    n_ch = surgery.num_channels(ctx.groups)
    # The zero channels (lowest scores) go first, whatever the target.
    floor = zeros.astype(jnp.float32) / n_ch
    keep = structured.keep_for_target(
        lambda s: surgery.round_keep(surgery.select_channels(
            scores, ctx.groups, jnp.maximum(s, floor), "global"), scores,
                                     ctx.groups, round_to),
        state.hp, ctx, match)
    removed = surgery.num_removed(keep)
    masks = surgery.channel_masks(params, ctx.groups, keep)
    state = state.replace(params=params)
    state = base.start_with_masks(state, masks, tx(state.hp, ctx))
    opt = transforms.set_hyperparams(
        state.opt_state, learning_rate=state.hp["finetune_lr"], l1=0.0)
    ms = {**state.method_state, "phase": jnp.int32(FINETUNE),
          "ft_start": state.step,
          "forced": jnp.maximum(removed - zeros, 0).astype(jnp.int32)}
    return state.replace(opt_state=opt, method_state=ms)

  def update(key, state, metrics, ctx):
    del key, metrics
    ms = state.method_state
    in_prune = ms["phase"] == PRUNE
    lam = state.hp["l1_init"] + state.hp["l1_step"] * (
        state.step.astype(jnp.float32) / ctx.steps_per_epoch)
    sp = transforms.sparse_params(state.opt_state)
    zeros = surgery.removed_channels(sp, ctx.groups)
    alive = {g.name: surgery.alive_channels(sp, g)
             for g in surgery.prunable_groups(ctx.groups)}
    leave = in_prune & (structured.target_met(alive, state.hp, ctx, match) |
                        (state.step >= prune_end(ctx)))
    state = jax.lax.cond(
        in_prune & ~leave,
        lambda s: s.replace(
            opt_state=transforms.set_hyperparams(s.opt_state, l1=lam),
            method_state={**s.method_state, "lam": lam}),
        lambda s: s, state)
    state = jax.lax.cond(leave, lambda s: leave_prune(s, ctx), lambda s: s,
                         state)
    # Fine-tune: cosine from finetune_lr over what is left of the budget.
    ms = state.method_state
    lr = phases.cosine_from(state.hp["finetune_lr"],
                            state.step - ms["ft_start"],
                            ctx.total_steps - ms["ft_start"])
    state = phases.set_lr_where(state, ms["phase"] == FINETUNE, lr)
    return state, {"prune": base.event(
        leave, lam=ms["lam"], zero_channels=zeros,
        removed=surgery.removed_channels(state.params, ctx.groups),
        forced=ms["forced"],
        sparsity=base.sparsity_of(state.params, ctx.prunable))}

  def eval_params(state):
    return base.sparse_iterate_while(state,
                                     state.method_state["phase"] == PRUNE)

  def export(state, model):
    return structured.shrink_export(state, model, eval_params)

  def summary(state):
    ms = state.method_state
    return {"final_l1": float(ms["lam"]), "forced_channels": int(ms["forced"]),
            "prune_steps": int(ms["ft_start"])}

  hparams = {"l1_init": float(l1_init), "l1_step": float(l1_step),
             "prune_lr": float(prune_lr), "finetune_lr": float(finetune_lr)}
  return Method("group_proxnag", init=init, tx=tx, update=update,
                eval_params=eval_params, export=export, summary=summary,
                start="dense", check=check, structured=True, match=match,
                hparams=hparams, reads_lr=False,
                description="group-lasso Prox-NAG: channel group lasso "
                "proximal steps with Nesterov momentum and a rising lambda "
                "until the target count of channels is zero, then "
                "fine-tuning; the export is the smaller network")


__all__ = ["group_proxnag"]
