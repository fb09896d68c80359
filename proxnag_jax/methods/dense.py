"""Dense training (no pruning): the reference every method is measured against.

Nesterov SGD on the run's learning-rate schedule with L2 weight decay; with
``optimizer='proxnag'`` it trains with Prox-NAG at a fixed ``l1`` instead
(L1-regularised training, no pruning loop), and evaluates the sparse iterate.
"""

from __future__ import annotations

import optax

from proxnag_jax import transforms
from proxnag_jax.methods.base import Method

OPTIMIZERS = ("sgd", "proxnag")


def dense(optimizer: str = "sgd", l1: float = 0.0, fista: bool = False,
          nesterov: bool = True) -> Method:
  """Dense training with ``sgd`` (Nesterov) or ``proxnag`` at a fixed ``l1``.

  Update rule (``sgd``): ``g' = g + wd w``; Nesterov momentum SGD with the
  run's schedule. (``proxnag``): ``w~ = S_{eta l1}(w - eta g')`` then
  Nesterov extrapolation; the evaluated params are ``w~`` (exact zeros).
  """
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {optimizer!r}; valid: "
                     f"{', '.join(OPTIMIZERS)}.")

  def tx(hp, ctx):
    sched = ctx.schedule(hp["lr"])
    if optimizer == "sgd":
      inner = optax.sgd(sched, momentum=hp["momentum"], nesterov=nesterov)
    else:
      inner = transforms.proxnag(sched, hp["l1"], hp["momentum"], fista=fista,
                                 mask=ctx.prunable)
    return optax.chain(optax.add_decayed_weights(hp["weight_decay"]), inner)

  def eval_params(state):
    if optimizer == "proxnag":
      return transforms.sparse_params(state.opt_state)
    return state.params

  return Method("dense", tx=tx, eval_params=eval_params, start="scratch",
                hparams={"l1": float(l1)},
                description=f"dense training ({optimizer})")
