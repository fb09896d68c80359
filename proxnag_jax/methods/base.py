"""The interface every pruning method implements: a value, not a class tree.

A method is a :class:`Method`: a name and a few pure functions over pytrees,
each with a default, so a method file writes only what makes it different::

    init(key, state, ctx, tx)      -> (state, events)   masks, method state
    tx(hp, ctx)                    -> the Optax transformation it trains with
    update(key, state, metrics, ctx) -> (state, events)     every step, in jit
    forward(params, method_state)  -> the params the model sees
    eval_params(state)             -> the params to evaluate and export
    export(state, model)           -> (model, variables) of the final network
    done(state, ctx)               -> bool array: the run may stop

Everything a run carries is one pytree, :class:`RunState` (step, params, BN
statistics, optimizer state, method state, per-run hyperparameters ``hp`` and
the run's PRNG key), so a run can be checkpointed, resumed bitwise, and
``jax.vmap``-ed across seeds, target sparsities, learning rates or lambdas:
anything numeric that may differ between runs lives in ``hp`` (arrays), and
everything static (which leaves are prunable, steps per epoch) in the
:class:`Context`.

Masks live where they act: in the optimizer state, as a
:func:`~proxnag_jax.transforms.with_masks` wrapper, so pruned weights stay
exactly zero without a post-update hook. :func:`change_masks` is the one way a
method changes them (it zeroes newly pruned weights, starts grown weights at
zero and resets their optimizer buffers).

``update`` is pure and runs under ``jit`` (and ``vmap``) every step: schedules
are ``jnp.where`` / ``lax.cond`` on the step, never Python branches on device
values. It returns ``events``: a dict ``{kind: {'emit': bool, field: value}}``
of fixed structure; the loop writes a trace line ``{'kind', 'step', ...}`` for
every event whose ``emit`` is true.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from proxnag_jax import masks as masks_lib
from proxnag_jax import transforms

PyTree = Any


@flax.struct.dataclass
class RunState:
  """The whole state of one run (a pytree; a leading axis for vmapped runs).

  Attributes:
    step: training steps taken (int32).
    params: what the optimizer trains (weights; scores for edge-popup-like
      methods, whose ``forward`` builds the weights the model sees).
    batch_stats: BatchNorm statistics (``{}`` for models without).
    opt_state: the optimizer state (holds the masks of masked methods).
    method_state: the method's own state (a pytree).
    hp: per-run hyperparameters, scalar arrays (see :func:`run_hparams`).
    key: the run's PRNG key (raw ``uint32[2]``); step ``t`` uses
      ``fold_in(key, t)``.
  """

  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  method_state: PyTree
  hp: dict
  key: jax.Array


class Context(NamedTuple):
  """What is static for a run (identical across vmapped runs).

  Attributes:
    prunable: tree of Python bools, which leaves may be pruned (built once
      from ``prune.exclude`` by :func:`proxnag_jax.masks.prunable_tree`).
    steps_per_epoch: training steps per epoch.
    total_steps: the run's step budget (an upper bound for methods that
      decide when they are done).
    schedule: ``peak_lr -> optax schedule`` of the run's training (the peak
      may be traced, so learning rates can be vmapped).
    grad_fn: ``params -> grads`` of the training loss on one fixed
      minibatch (SNIP's connection sensitivity); traceable.
    groups: the model's channel groups
      (:func:`proxnag_jax.surgery.channel_groups`; ``()`` for a model
      surgery does not know): what structured methods prune.
    costs: ``{'params': terms, 'macs': terms}``
      (:func:`proxnag_jax.surgery.cost_terms` of the dense network) for
      structured methods whose target is a fraction of MACs or params.
    normalized: tree of Python bools, the kernels whose output channels
      feed a normalisation (:func:`proxnag_jax.masks.normalized_kernels`;
      ``None``: none known), for scale-invariant proximal steps.
    optimizer: the optimizer a masked method trains with instead of its
      default Nesterov SGD (:func:`masked_sgd`; a user's, from
      :func:`proxnag_jax.pruner.pruning`); ``None``: the default.
  """

  prunable: PyTree
  steps_per_epoch: int
  total_steps: int
  schedule: Callable[[jax.Array], optax.Schedule] = optax.constant_schedule
  grad_fn: Optional[Callable[[PyTree], PyTree]] = None
  groups: tuple = ()
  costs: dict = {}
  normalized: Any = None
  optimizer: Optional[optax.GradientTransformation] = None


# ---------------------------------------------------------------------------
# Defaults.
# ---------------------------------------------------------------------------


def masked_sgd(hp, ctx, dense_grads: bool = False
               ) -> optax.GradientTransformation:
  """The default training optimizer of a masked method.

  ``with_masks(chain(add_decayed_weights(wd), sgd(schedule(lr), momentum,
  nesterov=True)))``: weight decay added to the gradient as in PyTorch's
  SGD, the run's learning-rate schedule, and pruned weights held at zero;
  ``with_masks(ctx.optimizer)`` where the context carries a user's
  optimizer (:func:`proxnag_jax.pruner.pruning`).
  """
  if ctx.optimizer is not None:
    return transforms.with_masks(ctx.optimizer, dense_grads=dense_grads)
  return transforms.with_masks(optax.chain(
      optax.add_decayed_weights(hp["weight_decay"]),
      optax.sgd(ctx.schedule(hp["lr"]), momentum=hp["momentum"],
                nesterov=True)), dense_grads=dense_grads)


def no_init(key, state, ctx, tx):
  del key, ctx, tx
  return state, {}


def no_update(key, state, metrics, ctx):
  del key, metrics, ctx
  return state, {}


def identity_forward(params, method_state):
  del method_state
  return params


def never_done(state, ctx):
  del state, ctx
  return jnp.bool_(False)


def default_eval_params(state: RunState) -> PyTree:
  """The params the model sees; Prox-NAG's optimizers hold a sparse iterate."""
  return state.params


def sparse_iterate_while(state: RunState, active) -> PyTree:
  """The proximal methods' params to evaluate: the optimizer's sparse
  iterate ``w~`` (exact zeros) while ``active`` (their prune-train phase),
  else the params (traceable)."""
  sp = transforms.sparse_params(state.opt_state)
  return jax.tree.map(lambda a, b: jnp.where(active, a, b), sp, state.params)


def default_export(state: RunState, model, eval_params=default_eval_params,
                   forward=identity_forward):
  """The final network: the same model, with the evaluated params."""
  params = forward(eval_params(state), state.method_state)
  variables = {"params": params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return model, variables


class Method(NamedTuple):
  """A pruning method: a name, where it starts, and pure functions.

  Attributes:
    name: registry name.
    init: ``(key, state, ctx, tx) -> (state, events)``: the loop builds a
      :class:`RunState` (params, BN statistics, ``tx.init(params)``, empty
      method state) and passes the run's transformation ``tx`` (this
      method's ``tx(state.hp, ctx)``), so a method that re-initialises the
      optimizer for its first masks (e.g. :func:`start_with_masks`) uses the
      one it trains with, never a copy; ``events`` are traced at step 0.
    tx: ``(hp, ctx) -> optax transformation`` (built inside jit with traced
      ``hp``; masked methods wrap it in ``with_masks``).
    update: ``(key, state, metrics, ctx) -> (state, events)``, every step.
    forward: ``(params, method_state) -> params the model sees``.
    eval_params: ``state -> params`` to evaluate and export.
    export: ``(state, model) -> (model, variables)``.
    done: ``(state, ctx) -> bool`` array; the loop stops when it is true.
    summary: ``state -> dict`` of host values for ``summary.json``.
    start: ``'dense'`` (from the trained dense model) or ``'scratch'``.
    hparams: per-run numeric settings (floats) that go into ``hp`` and so
      may differ between vmapped runs.
    labels: host-side names for integer event fields, e.g.
      ``{'phase': {0: 'prune', 1: 'finetune'}}``.
    description: one line for logs and reports.
    check: ``(params, hp, ctx) -> None``, run on the host with concrete
      values before ``init``: raises ValueError for settings that cannot
      work with this run (e.g. a budget that empties a layer).
    structured: the method removes whole channels (``ctx.groups``): its
      target is a fraction of channels, MACs or params removed (``match``)
      and its export the smaller network.
    match: what a structured method's ``target_sparsity`` is a fraction of:
      ``'channels'`` (removed), or ``'macs'`` / ``'params'`` (removed from
      the dense network's count by the shrunk network), so that methods
      that allocate channels differently are compared at equal cost.
    reads_lr: the run's learning rate (``hp['lr']``: a pruning config's
      ``finetune_lr`` for a method from the dense model, its
      ``dense.learning_rate`` from scratch) reaches this method; False for
      methods with learning rates of their own among their settings.
    ignored: ``{setting: why}``, the method's settings that this
      configuration of it does not read (e.g. the paper schedule's settings
      under Prox-NAG's target schedule): a run refuses a config that sets
      one (``experiment.validate_pruning``).
  """

  name: str
  init: Callable = no_init
  tx: Callable = masked_sgd
  update: Callable = no_update
  forward: Callable = identity_forward
  eval_params: Callable = default_eval_params
  export: Optional[Callable] = None
  done: Callable = never_done
  summary: Optional[Callable] = None
  start: str = "scratch"
  hparams: dict = {}
  labels: dict = {}
  description: str = ""
  check: Optional[Callable] = None
  structured: bool = False
  match: str = "channels"
  reads_lr: bool = True
  ignored: dict = {}

  def export_network(self, state: RunState, model):
    if self.export is not None:
      return self.export(state, model)
    return default_export(state, model, self.eval_params, self.forward)


# ---------------------------------------------------------------------------
# Helpers shared by the methods (all traceable).
# ---------------------------------------------------------------------------


# The mask maths lives in proxnag_jax.masks ("prunable": a tree of Python
# bools); the methods reach it through these names.
prunable_leaves = masks_lib.prunable_leaves
num_prunable = masks_lib.num_prunable
count_zeros = masks_lib.count_zeros
sparsity_of = masks_lib.sparsity_of
masks_from_params = masks_lib.masks_from_params
ones_like_masks = masks_lib.ones_masks
layer_topk_masks = masks_lib.layer_topk_masks
global_topk_masks = masks_lib.global_topk_masks
topk_masks = masks_lib.topk_masks


def n_keep(params: PyTree, hp, ctx) -> jax.Array:
  """How many prunable weights the target keeps (exact, from ``hp['n_zero']``)."""
  return jnp.int32(num_prunable(params, ctx.prunable)) - hp["n_zero"]


def masks_of(opt_state) -> PyTree:
  """The masks held by the optimizer state (a ``with_masks`` state)."""
  return transforms.get_masks(opt_state)


def momentum_of(opt_state) -> PyTree:
  """The momentum buffer (``optax.TraceState.trace``) inside ``opt_state``."""
  found = transforms.find_states(opt_state, optax.TraceState)
  if len(found) != 1:
    raise ValueError("the method needs an optimizer with exactly one momentum "
                     f"trace (optax.sgd with momentum); found {len(found)}.")
  return found[0][1].trace


def reset_where(opt_state, grown: PyTree):
  """Zeroes every params-shaped optimizer buffer at the ``grown`` positions.

  Works for momentum traces and Adam moments alike: any sub-state whose tree
  matches ``grown`` is reset there (the masks themselves are left alone).
  """
  target = jax.tree.structure(grown)
  shapes = [jnp.shape(g) for g in jax.tree.leaves(grown)]

  def params_shaped(node):
    if node is None or jax.tree.structure(node) != target:
      return False
    return [jnp.shape(x) for x in jax.tree.leaves(node)] == shapes

  def fix(node):
    if not params_shaped(node) or any(
        jnp.asarray(x).dtype == bool for x in jax.tree.leaves(node)):
      return node          # not a buffer, or the masks themselves
    return jax.tree.map(lambda v, g: jnp.where(g, jnp.zeros_like(v), v),
                        node, grown)

  return jax.tree.map(fix, opt_state, is_leaf=params_shaped)


def start_with_masks(state: RunState, masks: PyTree, tx) -> RunState:
  """The first masks of a masked method: params are multiplied by them and
  the optimizer state is re-initialised from the masked params (``tx``, the
  method's transformation) with the masks in it."""
  masks = jax.tree.map(lambda m: jnp.asarray(m).astype(bool), masks)
  params = jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)),
                        state.params, masks)
  opt = transforms.set_masks(tx.init(params), masks)
  return state.replace(params=params, opt_state=opt)


def change_masks(state: RunState, new_masks: PyTree, *,
                 reset_grown: bool = True) -> tuple[RunState, jax.Array]:
  """Swaps the masks of a masked method's optimizer state (traceable).

  Newly pruned weights become zero now; grown weights (off before, on now)
  start at zero, and with ``reset_grown`` their optimizer buffers (momentum,
  Adam moments) are reset; without it they keep what the buffers hold (as
  Sparse Momentum's reference does). A weight on in both masks keeps its
  value. Returns the new state and the number of grown weights.
  """
  old = masks_of(state.opt_state)
  new_masks = jax.tree.map(lambda m: m.astype(bool), new_masks)
  grown = jax.tree.map(lambda n, o: n & ~o, new_masks, old)
  params = jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)),
                        state.params, new_masks)
  opt = transforms.set_masks(state.opt_state, new_masks)
  if reset_grown:
    opt = reset_where(opt, grown)
  n_grown = sum((jnp.sum(g, dtype=jnp.int32) for g in jax.tree.leaves(grown)),
                jnp.int32(0))
  return state.replace(params=params, opt_state=opt), n_grown


def allocate(total, weights, capacity):
  """Splits ``total`` into integers proportional to ``weights``, each at most
  ``capacity``; what a full layer cannot take goes to the others. Exact:
  the parts sum to ``min(total, sum(capacity))``. Traceable (a
  ``lax.while_loop``), so it runs inside the jitted step.
  """
  weights = jnp.maximum(jnp.asarray(weights, jnp.float32), 0.0)
  capacity = jnp.asarray(capacity, jnp.int32)
  total = jnp.minimum(jnp.asarray(total, jnp.int32), capacity.sum())

  def cond(out):
    return (out.sum() < total) & jnp.any(capacity - out > 0)

  def body(out):
    left = total - out.sum()
    room = capacity - out
    w = jnp.where(room > 0, weights, 0.0)
    w = jnp.where(w.sum() > 0, w, (room > 0).astype(jnp.float32))
    # Floors of the cumulative shares: the parts never sum past `left`.
    cum = jnp.floor(left.astype(jnp.float32) * jnp.cumsum(w) / w.sum())
    cum = jnp.minimum(cum.astype(jnp.int32), left)
    share = jnp.minimum(jnp.diff(cum, prepend=0), room)
    # Nothing handed out (remainders): one to the heaviest layer with room.
    one = jax.nn.one_hot(jnp.argmax(w), w.shape[0], dtype=jnp.int32)
    return out + jnp.where(share.sum() > 0, share, one)

  return jax.lax.while_loop(cond, body, jnp.zeros_like(capacity))


def every(step, period: int, *, offset: int = 0) -> jax.Array:
  """True on steps ``offset + k * period`` (k >= 1); traceable."""
  return (step > offset) & ((step - offset) % period == 0)


def event(emit, **fields) -> dict:
  """One event record for the trace: ``{'emit': emit, **fields}``."""
  return {"emit": jnp.asarray(emit, bool),
          **{k: jnp.asarray(v) for k, v in fields.items()}}


__all__ = [
    "RunState", "Context", "Method", "masked_sgd", "no_init", "no_update",
    "identity_forward", "never_done", "default_eval_params",
    "default_export", "prunable_leaves", "num_prunable", "count_zeros",
    "sparsity_of", "masks_from_params", "ones_like_masks",
    "layer_topk_masks", "global_topk_masks", "topk_masks", "n_keep", "masks_of",
    "momentum_of", "reset_where", "start_with_masks", "change_masks", "allocate", "every",
    "event",
    "sparse_iterate_while",
    
]
