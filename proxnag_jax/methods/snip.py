"""SNIP (Lee et al. 2019): single-shot pruning at initialisation by
connection sensitivity."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from proxnag_jax.methods import base
from proxnag_jax.methods.base import Method


def snip() -> Method:
  """Keep the global top-k of the connection sensitivity ``|g * w|`` on one
  training minibatch at initialisation (``ctx.grad_fn``), then train the
  sparse network. (Normalising the scores by their sum, as in the paper, does
  not change a top-k.)"""

  def init(key, state, ctx, tx):
    del key
    if ctx.grad_fn is None:
      raise ValueError("snip needs ctx.grad_fn (the loss gradient on one "
                       "minibatch); the loop provides it.")
    grads = ctx.grad_fn(state.params)
    scores = jax.tree.map(lambda g, w: jnp.abs(g * w).astype(jnp.float32),
                          grads, state.params)
    masks = base.global_topk_masks(scores, ctx.prunable, base.n_keep(
        state.params, state.hp, ctx))
    return base.start_with_masks(state, masks,
                                 tx), {}

  return Method("snip", init=init, start="scratch",
                description="SNIP: global top-k of |g*w| on one minibatch at "
                "initialisation; then sparse training")


__all__ = ["snip"]
