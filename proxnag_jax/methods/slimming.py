"""Network slimming (Liu et al. 2017, "Learning efficient convolutional
networks through network slimming"), as a structured Method.

1. **Sparsity training** (the first ``sparsity_fraction`` of the budget, from
   the trained dense model): the training loss plus ``l1 * sum |gamma|`` over
   the BatchNorm scales of the prunable channel groups, applied as the
   reference does, a subgradient ``l1 * sign(gamma)`` added to the gradient
   (``add_l1_subgradient``; the reference's ``updateBN``, ``s = 1e-4`` for VGG
   and ResNet on CIFAR-10, 1e-5 for DenseNet).
2. **Prune**: one global threshold over the ``|gamma|`` of all prunable
   channels removes ``target_sparsity`` of them (the reference's percentile;
   every group keeps at least one channel).
3. **Fine-tune** the rest of the budget with those channels held at zero
   (kernel columns, biases, BatchNorm scales and shifts), without the
   penalty; the export is the smaller dense network.

The reference trains from scratch with the penalty for the whole schedule;
here sparsity training continues from the same dense model every method
starts from, within the same budget (stated in the results). A channel group
with several BatchNorm layers (a residual stream) is scored by the sum of its
``|gamma|``. Models without BatchNorm are refused (use ``lenet5_bn``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from proxnag_jax import surgery
from proxnag_jax import transforms
from proxnag_jax.methods import base
from proxnag_jax.methods import structured
from proxnag_jax.methods.base import Method


class L1SubgradientState(NamedTuple):
  count: jax.Array


def add_l1_subgradient(l1, mask) -> optax.GradientTransformationExtraArgs:
  r"""Adds the subgradient of ``l1 * sum |w|`` over the leaves ``mask``
  marks: ``g <- g + l1_t * sign(w)``.

  Args:
    l1: a float, array or schedule of the step count.
    mask: a tree of bools (one per leaf) or a callable of params.

  Example:
    >>> tx = optax.chain(add_l1_subgradient(1e-4, is_bn_scale),
    ...                  optax.sgd(0.1, momentum=0.9))
  """

  def init_fn(params):
    del params
    return L1SubgradientState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    lam = l1(state.count) if callable(l1) else l1
    m = mask(params) if callable(mask) else mask
    new = jax.tree.map(
        lambda g, p, w: (g + lam * jnp.sign(p)).astype(g.dtype) if w else g,
        updates, params, m)
    return new, L1SubgradientState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_mask(params, groups):
  """A tree of Python bools: True on the BatchNorm scale leaves of the
  prunable channel groups."""
  scales = {s.path for g in surgery.prunable_groups(groups)
            for s in g.scales()}
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  return jax.tree.unflatten(treedef, [
      tuple(k.key for k in path) in scales for path, _ in flat])


def slimming(l1: float = 1e-4, sparsity_fraction: float = 0.5,
             round_to: int = 1, match: str = "channels") -> Method:
  """Network slimming; see the module docstring (``match``: what the target
  is a fraction of, :func:`proxnag_jax.methods.structured.keep_for_target`)."""
  structured.check_match("slimming", match)
  if l1 < 0:
    raise ValueError("slimming: l1 must be non-negative.")
  if not 0 < sparsity_fraction < 1:
    raise ValueError("slimming: sparsity_fraction must be in (0, 1).")

  def check(params, hp, ctx):
    del params, hp
    structured.check_groups("slimming", ctx, needs_scales=True)

  def prune_step(ctx):
    return max(1, int(round(sparsity_fraction * ctx.total_steps)))

  def tx(hp, ctx):
    t_prune = prune_step(ctx)
    return transforms.with_masks(optax.chain(
        add_l1_subgradient(
            lambda count: jnp.where(count < t_prune, hp["l1"], 0.0),
            lambda params: scale_mask(params, ctx.groups)),
        optax.add_decayed_weights(hp["weight_decay"]),
        optax.sgd(ctx.schedule(hp["lr"]), momentum=hp["momentum"],
                  nesterov=True)))

  def init(key, state, ctx, tx):
    del key
    state = base.start_with_masks(state, base.ones_like_masks(state.params),
                                  tx)
    return state, {}

  def update(key, state, metrics, ctx):
    del key, metrics
    due = state.step == prune_step(ctx)

    def prune(state):
      scores = {}
      for g in surgery.prunable_groups(ctx.groups):
        scores[g.name] = surgery.channel_sums(
            jax.tree.map(jnp.abs, state.params), g, g.scales())
      keep = structured.keep_for_target(
          lambda s: surgery.round_keep(surgery.select_channels(
              scores, ctx.groups, s, "global"), scores, ctx.groups,
                                       round_to), state.hp, ctx, match)
      return structured.prune_channels(state, keep, ctx)

    state = jax.lax.cond(due, prune, lambda s: s, state)
    return state, {"prune": base.event(
        due, removed=surgery.removed_channels(state.params, ctx.groups),
        sparsity=base.sparsity_of(state.params, ctx.prunable))}

  return Method("slimming", init=init, tx=tx, update=update,
                export=structured.shrink_export, start="dense", check=check,
                structured=True, match=match, hparams={"l1": float(l1)},
                description=f"network slimming: L1 ({l1:g}) on BatchNorm "
                f"scales for {sparsity_fraction:.0%} of the budget, one "
                "global threshold, fine-tuning; the export is the smaller "
                "network")


__all__ = ["slimming", "add_l1_subgradient", "scale_mask",
           "L1SubgradientState"]
