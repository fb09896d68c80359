"""What the phased methods share: the phase codes of a prune -> fine-tune
method (Prox-NAG, group-lasso Prox-NAG), the cosine learning rate of a
fine-tune over what is left of the budget, and ADMM's two cosine phases.
All traceable; a method keeps its phase in its method state.

>>> lr = phases.cosine_from(hp["finetune_lr"], step - ft_start,
...                         total_steps - ft_start)
>>> state = phases.set_lr_where(state, ms["phase"] == phases.FINETUNE, lr)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from proxnag_jax import transforms

PRUNE, FINETUNE, DONE = 0, 1, 2
PHASE_NAMES = {PRUNE: "prune", FINETUNE: "finetune", DONE: "done"}


def cosine_from(lr, step, length):
  """``lr · ½(1 + cos(π · min(step / length, 1)))``: a cosine from ``lr``
  to 0 over ``length`` steps, then 0 (``step``, ``length`` may be traced)."""
  frac = jnp.clip(step / jnp.maximum(length, 1), 0.0, 1.0)
  return lr * 0.5 * (1 + jnp.cos(math.pi * frac))


def set_lr_where(state, active, lr):
  """``state`` with its optimizer's ``learning_rate`` set to ``lr`` where
  ``active`` (an ``inject_hyperparams`` state inside the chain)."""
  return jax.lax.cond(
      active, lambda s: s.replace(opt_state=transforms.set_hyperparams(
          s.opt_state, learning_rate=lr)), lambda s: s, state)


def two_phase_cosine(lr, end: int, total: int):
  """An Optax schedule: cosine from ``lr`` over ``[0, end)``, then again
  over ``[end, total)`` (ADMM's phase and its masked retraining)."""
  def sched(count):
    c = jnp.asarray(count, jnp.float32)
    return jnp.where(c < end, cosine_from(lr, c, end),
                     cosine_from(lr, c - end, total - end))
  return sched


__all__ = ["PRUNE", "FINETUNE", "DONE", "PHASE_NAMES", "cosine_from",
           "set_lr_where", "two_phase_cosine"]
