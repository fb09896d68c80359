"""Any pruning method as one Optax transformation, for the user's own loop.

:func:`pruning` turns a method of :mod:`proxnag_jax.methods` (Prox-NAG with
its target-tracking schedule, magnitude, GMP, L2, random, SNIP, sparse
momentum, DSR, ADMM, reweighted ADMM, the structured methods, edge-popup,
SBP) into a ``GradientTransformationExtraArgs``. Its schedule, masks and
state live in the optimizer state (:class:`PruningState`, a NamedTuple);
there is nothing to call after the update. It is the same implementation the
project's loop runs (:mod:`proxnag_jax.engine`): one step is

    u, inner' = method.tx(hp, ctx).update(g, inner, w)    the method's optimizer
    run       = method.update(key_t, RunState(w + u, inner', ...), metrics)
    updates   = run.params - w                              (exact zeros stay zero)

so ``optax.apply_updates(w, updates)`` is the loop's next params up to float
rounding, and weights the method prunes are exactly zero.

Where the weights come from is the method's (``start``): methods that prune a
trained model (``'dense'``: Prox-NAG, magnitude, GMP, ADMM, ...) expect
trained weights; methods from ``'scratch'`` (SNIP, random, sparse momentum,
DSR, edge-popup, SBP) a fresh initialisation.

Example (a Linen model in a plain ``jax.jit`` loop)::

    tx = pj.pruning("proxnag", target_sparsity=0.9, total_steps=10_000,
                    learning_rate=0.01)
    params, opt_state = pj.start(tx, params)        # or opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, x, y):
      def loss_fn(p):
        logits = model.apply({"params": pj.model_params(tx, p, opt_state)}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
      return optax.apply_updates(params, updates), opt_state

    ...
    final = pj.final_params(tx, params, opt_state)    # exactly 90% zeros

* **Composing.** Gradient transformations chained *before* it
  (``optax.chain(optax.clip_by_global_norm(1.0), tx)``) see the raw gradient;
  ``optax.MultiSteps`` around it accumulates. For the masked methods
  (magnitude, GMP, L2, random, SNIP, sparse momentum, DSR, L1-filter, GAT)
  the optimizer they train with may be the user's (``pruning(method,
  optax.adamw(1e-3), ...)``), held at the masks by
  :func:`~proxnag_jax.transforms.with_masks`. Methods whose optimizer *is*
  the method (Prox-NAG's proximal Nesterov step, group Prox-NAG, slimming's
  L1 on BN scales, ADMM's penalised SGD, edge-popup's and SBP's score
  optimizers) refuse a user optimizer and take ``learning_rate`` /
  ``momentum`` / ``weight_decay`` (and their own settings) instead.
* **What the model sees.** :func:`model_params` (the method's ``forward``):
  the params themselves for weight methods; ``W0 * mask`` for edge-popup and
  SBP, whose trained params are scores (start those with :func:`start`,
  which turns the weights into scores).
* **Metrics.** Methods that monitor the training loss (Prox-NAG's loss-rise
  guard and monitors) read it from ``tx.update(..., loss=loss,
  accuracy=acc)``; without them those monitors see NaN and never fire.
* **Structured methods** need the model's channel groups:
  ``pruning(..., **pj.structure(model, variables, input_shape))``, and
  :func:`export` returns the smaller network.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from proxnag_jax import masks as masks_lib
from proxnag_jax import methods as methods_lib
from proxnag_jax import transforms
from proxnag_jax.methods import base

PyTree = Any


class PruningState(NamedTuple):
  """The state of :func:`pruning`: the run's step, the method's optimizer
  state (which holds the masks), the method's own state, the per-run
  hyperparameters and the run's PRNG key (raw ``uint32[2]``)."""

  count: jax.Array
  inner: PyTree
  method_state: PyTree
  hp: dict
  key: jax.Array


class _Marker(NamedTuple):
  """A state no method builds: finds out whether a method trains with the
  optimizer in ``Context.optimizer``."""

  tag: jax.Array


def _marker_optimizer() -> optax.GradientTransformation:
  return optax.GradientTransformation(lambda p: _Marker(jnp.zeros(())),
                                      lambda u, s, p=None: (u, s))


def takes_optimizer(method: base.Method, ctx: base.Context, hp: dict,
                    params: PyTree) -> bool:
  """Whether ``method`` trains with a user optimizer (``ctx.optimizer``)."""
  ctx = ctx._replace(optimizer=_marker_optimizer())
  state = jax.eval_shape(lambda p: method.tx(hp, ctx).init(p), params)
  return bool(transforms.find_states(state, _Marker))


def _schedule(kind: Union[str, Callable], total_steps: int) -> Callable:
  if callable(kind):
    return kind
  if kind == "cosine":
    return lambda lr: optax.cosine_decay_schedule(lr, max(1, total_steps))
  if kind == "constant":
    return optax.constant_schedule
  raise ValueError(f"schedule must be 'cosine', 'constant' or a function "
                   f"peak_lr -> optax schedule, got {kind!r}.")


class PruningTransformation(optax.GradientTransformationExtraArgs):
  """What :func:`pruning` returns: an Optax ``GradientTransformationExtraArgs``
  (so ``optax.chain`` passes it ``loss=``) that also carries, as attributes,
  the method (``.method``), its static context (``.context(params)``) and
  its initial run state (``.init_run(params)``), which
  :func:`model_params`, :func:`final_params`, :func:`export` and
  :func:`start` read."""

  method: base.Method
  context: Callable     # params -> base.Context
  init_run: Callable    # params -> the method's initial RunState


def pruning(*method_and_optimizer,
            method: Union[str, base.Method, None] = None,
            optimizer: Optional[optax.GradientTransformation] = None,
            target_sparsity: float,
            total_steps: int,
            learning_rate: float = 0.01,
            momentum: float = 0.9,
            weight_decay: float = 0.0,
            schedule: Union[str, Callable] = "cosine",
            steps_per_epoch: Optional[int] = None,
            seed: int = 0,
            prunable: Optional[Callable] = None,
            grad_fn: Optional[Callable[[PyTree], PyTree]] = None,
            groups: tuple = (),
            costs: Optional[dict] = None,
            normalized: Any = None,
            **settings) -> PruningTransformation:
  """A pruning method as an Optax transformation (see the module docstring).

  The method and the optimizer may be given in either order, positionally
  or by keyword: ``pruning("gmp", optax.adamw(1e-3), ...)`` or
  ``pruning(optax.adamw(1e-3), method="gmp", ...)``.

  Args:
    method: a registry name (``'proxnag'``, ``'magnitude'``, ``'gmp'``,
      ``'snip'``, ``'sparse_momentum'``, ``'dsr'``, ``'admm'``,
      ``'rw_admm'``, ``'group_proxnag'``, ``'edge_popup'``, ``'sbp'``, ...;
      :data:`proxnag_jax.methods.METHOD_NAMES`) or a built
      :class:`~proxnag_jax.methods.Method`.
    optimizer: the optimizer a masked method trains with (default: Nesterov
      SGD with ``learning_rate``, ``momentum``, ``weight_decay`` and
      ``schedule``, as the project's runs). A method with an optimizer of
      its own refuses one.
    target_sparsity: the fraction of prunable weights removed at the end
      (structured methods: of channels, MACs or params, their ``match``).
    total_steps: the run's steps; the method's schedule (Prox-NAG's ramp
      and deadline, GMP's cubic ramp, ADMM's phases, ...) is laid out in it.
    learning_rate, momentum, weight_decay: the method's training numbers
      (``hp['lr']``, ...); methods with learning rates of their own (e.g.
      Prox-NAG's ``prune_lr``) take those as ``settings``.
    schedule: ``'cosine'`` (decay to 0 over ``total_steps``), ``'constant'``
      or ``peak_lr -> optax schedule``.
    steps_per_epoch: what an "epoch" in a method's settings means (e.g.
      Prox-NAG's paper schedule counts epochs); default ``total_steps //
      10``.
    seed: the run's PRNG seed (random masks, edge-popup's scores).
    prunable: ``(path, leaf) -> bool``, the leaves that may be pruned
      (default: every conv and dense kernel, :func:`~proxnag_jax.masks.
      default_prunable`).
    grad_fn: ``params -> grads`` of the loss on one batch, for methods that
      score weights by gradients at the start (SNIP).
    groups, costs: the model's channel groups and cost terms, for the
      structured methods (:func:`structure`).
    normalized: which kernels feed a normalisation
      (:func:`~proxnag_jax.masks.normalized_kernels`), for Prox-NAG's
      scale-invariant step on BatchNorm networks.
    **settings: the method's own settings (its factory's arguments, e.g.
      ``l1_step=1e-3`` for the paper schedule, ``every=50`` for GMP).
  """
  for a in method_and_optimizer:       # pruning("gmp", adamw) or (adamw,
    if isinstance(a, optax.GradientTransformation):  # method="gmp")
      if optimizer is not None:
        raise ValueError("pruning: two optimizers given.")
      optimizer = a
    elif isinstance(a, (str, base.Method)):
      if method is not None:
        raise ValueError("pruning: two methods given.")
      method = a
    else:
      raise ValueError(f"pruning: {a!r} is neither a method (a name or a "
                       "Method) nor an Optax optimizer.")
  if method is None:
    raise ValueError("pruning: which method? e.g. pruning('proxnag', ...), "
                     f"one of {', '.join(methods_lib.METHOD_NAMES)}.")
  if isinstance(method, str):
    method = methods_lib.get_method(method, **settings)
  elif settings:
    raise ValueError("settings go with a method name, not a built Method: "
                     f"got {sorted(settings)}.")
  if not 0.0 <= target_sparsity < 1.0:
    raise ValueError(f"target_sparsity must be in [0, 1), got "
                     f"{target_sparsity}.")
  if int(total_steps) < 1:
    raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
  total_steps = int(total_steps)
  spe = int(steps_per_epoch or max(1, total_steps // 10))
  sched = _schedule(schedule, total_steps)
  if method.structured and not groups:
    raise ValueError(f"{method.name} prunes channels: pass the model's "
                     "groups and costs, pruning(..., **pj.structure(model, "
                     "variables, input_shape)).")

  def context(params) -> base.Context:
    return base.Context(
        prunable=masks_lib.prunable_tree(params, prunable),
        steps_per_epoch=spe, total_steps=total_steps, schedule=sched,
        grad_fn=grad_fn, groups=tuple(groups), costs=dict(costs or {}),
        normalized=normalized, optimizer=optimizer)

  def hparams(params) -> dict:
    n = masks_lib.num_prunable(params, masks_lib.prunable_tree(params,
                                                                prunable))
    values = {"target": target_sparsity,
              "n_zero": int(round(target_sparsity * n)),
              "lr": learning_rate, "weight_decay": weight_decay,
              "momentum": momentum, **method.hparams}
    return {k: (jnp.int32(v) if k == "n_zero" else jnp.float32(v))
            for k, v in values.items()}

  def init_run(params) -> base.RunState:
    ctx, hp = context(params), hparams(params)
    if optimizer is not None and not takes_optimizer(method, ctx, hp,
                                                     params):
      raise ValueError(
          f"{method.name} trains with an optimizer of its own; pass "
          "learning_rate / momentum / weight_decay (and its settings) "
          "instead of an optimizer, or chain gradient transforms before "
          "it: optax.chain(optax.clip_by_global_norm(1.0), pruning(...)).")
    concrete = not any(isinstance(x, jax.core.Tracer)
                       for x in jax.tree.leaves(params))
    if method.check is not None and concrete:   # host checks on values
      method.check(params, jax.device_get(hp), ctx)
    if method.name in ("snip",) and grad_fn is None:
      raise ValueError("snip scores weights by the loss gradient at the "
                       "start: pass grad_fn=lambda params: grads on a batch.")
    tx = method.tx(hp, ctx)
    state = base.RunState(
        step=jnp.int32(0), params=params, batch_stats={},
        opt_state=tx.init(params), method_state=(), hp=hp,
        key=jax.random.fold_in(jax.random.PRNGKey(seed), 7))
    # Jitted as the loop's (loop.init_run), so both start bitwise alike.
    state, _ = jax.jit(lambda k, s: method.init(k, s, ctx, tx))(
        jax.random.fold_in(jax.random.PRNGKey(seed), 8), state)
    return state

  def init_fn(params):
    return _state_of(init_run(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("pruning needs params: tx.update(grads, state, "
                       "params).")
    ctx = context(params)
    tx = method.tx(state.hp, ctx)
    key = jax.random.fold_in(state.key, state.count)
    _, k_upd = jax.random.split(key)
    inner_updates, inner = tx.update(updates, state.inner, params)
    run = base.RunState(
        step=state.count + 1, params=optax.apply_updates(params,
                                                         inner_updates),
        batch_stats={}, opt_state=inner, method_state=state.method_state,
        hp=state.hp, key=state.key)
    nan = jnp.float32(jnp.nan)
    metrics = {"loss": jnp.asarray(extra_args.get("loss", nan), jnp.float32),
               "accuracy": jnp.asarray(extra_args.get("accuracy", nan),
                                       jnp.float32)}
    run, _ = method.update(k_upd, run, metrics, ctx)
    new_updates = jax.tree.map(lambda n, p: (n - p).astype(p.dtype),
                               run.params, params)
    return new_updates, PruningState(
        count=run.step, inner=run.opt_state, method_state=run.method_state,
        hp=run.hp, key=run.key)

  out = PruningTransformation(init_fn, update_fn)
  out.method, out.context, out.init_run = method, context, init_run
  return out


def _state_of(run: base.RunState) -> PruningState:
  return PruningState(count=run.step, inner=run.opt_state,
                      method_state=run.method_state, hp=run.hp, key=run.key)


def _find(opt_state) -> PruningState:
  if isinstance(opt_state, PruningState):
    return opt_state
  found = transforms.find_states(opt_state, PruningState)
  if len(found) != 1:
    raise ValueError("expected the state of one pj.pruning(...) transform "
                     f"in opt_state; found {len(found)}.")
  return found[0][1]


def run_state(params: PyTree, opt_state) -> base.RunState:
  """The method's :class:`~proxnag_jax.methods.RunState` at ``params``
  (``opt_state`` may hold the pruning state inside a chain, MultiSteps or
  inject_hyperparams)."""
  st = _find(opt_state)
  return base.RunState(step=st.count, params=params, batch_stats={},
                       opt_state=st.inner, method_state=st.method_state,
                       hp=st.hp, key=st.key)


def start(tx: PruningTransformation, params: PyTree):
  """``(params, opt_state)`` of a run about to start: the params the method
  starts from (pruned weights at zero; edge-popup's and SBP's scores) and
  the state ``tx.init(params)`` would give. ``tx.init`` alone is enough for
  the weight methods (their first update zeroes what the masks remove);
  edge-popup and SBP need this (their params become scores)."""
  run = tx.init_run(params)
  return run.params, _state_of(run)


def model_params(tx: PruningTransformation, params: PyTree,
                 opt_state) -> PyTree:
  """The params the model sees (the method's ``forward``): ``params`` for
  weight methods, ``W0 * mask`` for edge-popup and SBP. Traceable."""
  return tx.method.forward(params, _find(opt_state).method_state)


def final_params(tx: PruningTransformation, params: PyTree,
                 opt_state) -> PyTree:
  """The pruned params to evaluate and export (Prox-NAG's sparse iterate
  while it prunes; the masked weights; ``W0 * mask``). Traceable."""
  run = run_state(params, opt_state)
  return tx.method.forward(tx.method.eval_params(run), run.method_state)


def done(tx: PruningTransformation, params: PyTree, opt_state) -> jax.Array:
  """Whether the method is finished (a bool array; e.g. a structured
  method that reached its target). Traceable."""
  run = run_state(params, opt_state)
  return tx.method.done(run, tx.context(params))


def export(tx: PruningTransformation, model, params: PyTree, opt_state,
           batch_stats: Optional[PyTree] = None, *, example_input=None,
           apply_fn: Optional[Callable] = None):
  """The final network. A structured method on a model the library's
  surgery knows: ``(smaller model, variables)``; on any other model (pass
  ``example_input``, and ``apply_fn(variables, x)`` where ``model.apply(v,
  x)`` is not how it runs): ``(small_apply, variables)``, a pure function
  that runs the model's own computation at the smaller shapes
  (:func:`proxnag_jax.trace_groups.shrink_traced`). An unstructured method:
  the same model with the pruned params."""
  from proxnag_jax import surgery  # pylint: disable=g-import-not-at-top
  run = run_state(params, opt_state).replace(batch_stats=batch_stats or {})
  if not tx.method.structured or surgery.supports(model):
    return tx.method.export_network(run, model)
  from proxnag_jax import trace_groups  # pylint: disable=g-import-not-at-top
  if example_input is None:
    raise ValueError(f"{type(model).__name__} is not a model the surgery "
                     "knows: pass example_input (and apply_fn) to export the "
                     "smaller network as a function.")
  fn = apply_fn or _default_apply(model)
  variables = {"params": final_params(tx, params, opt_state)}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  groups = trace_groups.traced_groups(fn, variables, example_input).groups
  keep = surgery.kept_by_masks(transforms.get_masks(run.opt_state), groups)
  return trace_groups.shrink_traced(fn, variables, example_input, keep)


def _default_apply(model) -> Callable:
  """``model.apply(v, x)``, with ``train=False`` where the model takes it."""
  import inspect  # pylint: disable=g-import-not-at-top
  takes_train = "train" in inspect.signature(model.__call__).parameters
  if takes_train:
    return lambda v, x: model.apply(v, x, train=False)
  return lambda v, x: model.apply(v, x)


def structure(model, variables: dict, input_shape,
              apply_fn: Optional[Callable] = None) -> dict:
  """``{'groups', 'costs'}`` for :func:`pruning` with a structured method
  (``input_shape``: one example's shape, e.g. ``(28, 28, 1)``). The groups
  of a model family the surgery knows are its hand-written ones; of any
  other model, the ones found by tracing ``apply_fn(variables, x)``
  (default ``model.apply``; :func:`proxnag_jax.trace_groups.traced_groups`,
  whose refusals leave a group not prunable)."""
  from proxnag_jax import report  # pylint: disable=g-import-not-at-top
  from proxnag_jax import surgery  # pylint: disable=g-import-not-at-top
  if surgery.supports(model):
    groups = surgery.channel_groups(model, variables)
  else:
    from proxnag_jax import trace_groups  # pylint: disable=g-import-not-at-top
    x = jax.numpy.zeros((2,) + tuple(input_shape))
    groups = trace_groups.traced_groups(apply_fn or _default_apply(model),
                                        variables, x).groups
  layers = report.count_macs(model, variables,
                             (1,) + tuple(input_shape))["layers"]
  return {"groups": groups,
          "costs": {"params": surgery.cost_terms(variables, groups, "params"),
                    "macs": surgery.cost_terms(variables, groups, "macs",
                                               layers)}}
