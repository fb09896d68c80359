"""The interface every pruning method implements: a value, not a class tree.

A method is a :class:`Method` of small pure functions over pytrees::

    init(key, params, ctx)                      -> (masks, method_state)
    update(key, t, params, masks, mstate, opt)  -> (masks, method_state)
    due(step, epoch_end, ctx)                   -> bool   (host side: call update now?)

``ctx`` is a :class:`Context` with what a method may need at the start: the
target sparsity, the prunable-leaf tree, the total number of steps and a
``grad_fn(params) -> grads`` on one training minibatch (SNIP). ``opt`` is the
inner optimizer state, from which momentum-based methods read the momentum
(:func:`momentum_of`). The runner applies the new masks, zeroes newly pruned
weights, starts grown weights at zero and resets their optimizer state
(:func:`reset_where`), so a method never touches the loop.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from proxnag_jax import transforms

PyTree = Any


class Context(NamedTuple):
  target: float                 # final sparsity of the prunable weights
  prunable: PyTree              # tree of Python bools
  total_steps: int              # training steps the method's run will take
  steps_per_epoch: int
  grad_fn: Optional[Callable[[PyTree], PyTree]] = None


class Method(NamedTuple):
  """A pruning method: a name, where it starts, and pure functions."""

  name: str
  start: str                    # 'dense' (pretrained checkpoint) or 'scratch'
  init: Callable                # (key, params, ctx) -> (masks, mstate)
  update: Optional[Callable] = None
  due: Callable[..., bool] = lambda step, epoch_end, ctx: False
  description: str = ""


def no_update(key, t, params, masks, mstate, opt_state, ctx):
  del key, t, params, opt_state, ctx
  return masks, mstate


def momentum_of(opt_state) -> PyTree:
  """The momentum buffer (``optax.TraceState.trace``) inside ``opt_state``."""
  found = transforms._find(opt_state, optax.TraceState)  # pylint: disable=protected-access
  if len(found) != 1:
    raise ValueError("the method needs an optimizer with exactly one momentum "
                     f"trace (optax.sgd with momentum); found {len(found)}.")
  return found[0].trace


def reset_where(opt_state, grown: PyTree):
  """Zeroes every params-shaped optimizer buffer at the ``grown`` positions.

  Works for momentum traces and Adam moments alike: any sub-state whose tree
  matches ``grown`` is reset there.
  """
  target = jax.tree.structure(grown)

  def fix(node):
    if transforms._is_namedtuple(node):  # pylint: disable=protected-access
      fields = []
      for f in node:
        try:
          same = jax.tree.structure(f) == target
        except Exception:  # pylint: disable=broad-except
          same = False
        if same:
          f = jax.tree.map(lambda v, g: jnp.where(g, jnp.zeros_like(v), v),
                           f, grown)
        else:
          f = fix(f)
        fields.append(f)
      return type(node)(*fields)
    if isinstance(node, (tuple, list)):
      return type(node)(fix(c) for c in node)
    if isinstance(node, dict):
      return type(node)({k: fix(v) for k, v in node.items()})
    return node

  return fix(opt_state)
