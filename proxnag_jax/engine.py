"""Pure jitted pieces of training: schedules, sharding, step, chunk, eval.

Pure (no hidden state; explicit PRNG keys; jit- and vmap-compatible):

* :func:`make_step` -> ``step(state, images, labels, idx) -> (state,
  (metrics, events))``: gathers the batch from the device-resident dataset,
  augments it on the device, takes one optimizer step of the run's method
  and calls the method's ``update``;
* :func:`make_chunk` -> ``chunk(state, images, labels, idx)``: many steps
  under ``jax.lax.scan``, one dispatch and one host sync, optionally vmapped
  over runs;
* :func:`make_eval` -> ``evaluate(state, images, labels)``.

Data parallelism uses ``jax.sharding``: a 1-D :func:`make_mesh` over all
local devices, the batch sharded along ``'data'``, the run state replicated.
The same code runs on 1 GPU, 8 GPUs, a TPU slice or a CPU with
``--xla_force_host_platform_device_count``.

Host I/O (checkpoints, locks, JSON, progress) is in :mod:`proxnag_jax.hostio`;
reading a config (validation, the workdir check, data and model setup) in
:mod:`proxnag_jax.experiment`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from proxnag_jax import data as data_lib

PyTree = Any


# ---------------------------------------------------------------------------
# Learning-rate schedules.
# ---------------------------------------------------------------------------

SCHEDULES = ("cosine", "step", "constant")


def make_schedule(peak_lr, *, kind: str = "cosine", total_steps: int,
                  warmup_steps: int = 0, boundaries: dict | None = None):
  """Learning-rate schedule in steps: cosine / step / constant + warm-up.

  ``peak_lr`` may be traced (vmapped runs with different learning rates).
  ``boundaries`` (``step``): ``{step: factor}`` multiplied in after warm-up.
  """
  total = max(1, int(total_steps))
  warm = int(warmup_steps)
  if kind == "cosine":
    main = optax.cosine_decay_schedule(peak_lr, max(1, total - warm))
  elif kind == "step":
    main = optax.piecewise_constant_schedule(
        peak_lr, {int(k) - warm: v for k, v in (boundaries or {}).items()})
  elif kind == "constant":
    main = optax.constant_schedule(peak_lr)
  else:
    raise ValueError(f"unknown schedule {kind!r}; valid: {SCHEDULES}.")
  if warm:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak_lr, warm), main], [warm])
  return main


# ---------------------------------------------------------------------------
# Sharding.
# ---------------------------------------------------------------------------


def make_mesh(devices=None) -> Mesh:
  devices = devices if devices is not None else jax.devices()
  return Mesh(np.asarray(devices), ("data",))


def constrain_batch(x, mesh: Mesh):
  """Shards ``x`` along its first axis over ``'data'`` (multi-device only).

  On one device the constraint is skipped: it changes nothing there, and
  inside a ``lax.scan`` on XLA:CPU it made the ResNet-20 step 4x slower
  (measured: 3.5 s vs 0.8 s per step).
  """
  if mesh.devices.size == 1:
    return x
  return jax.lax.with_sharding_constraint(x, batch_sharded(mesh))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def put_replicated(tree, mesh: Mesh):
  """``tree`` replicated on every device of ``mesh``.

  With several processes each builds the global array from its own host
  copy (they hold the same values: same config, seed and checkpoint);
  ``jax.device_put`` would compare the copies across processes, and states
  that hold NaN on purpose (Prox-NAG's "unset" loss average) never compare
  equal."""
  if jax.process_count() == 1:
    return jax.device_put(tree, replicated(mesh))
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding,
                                        lambda idx: x[idx])
  return jax.tree.map(put, tree)


# ---------------------------------------------------------------------------
# Pure steps: one train step, a scanned chunk of steps, evaluation.
# ---------------------------------------------------------------------------


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def make_step(model, method, ctx, *, mean, std, augment: bool,
              mesh: Mesh) -> Callable:
  """A pure ``(state, images, labels, idx) -> (state, (metrics, events))``.

  ``images``/``labels`` are the whole device-resident training set (uint8);
  ``idx`` the batch's indices. The step gathers and augments the batch on
  the device (key ``fold_in(state.key, state.step)``), runs the model on
  ``method.forward(params, method_state)``, applies ``method.tx`` (built from
  the run's ``hp``) and then ``method.update``.
  """
  def step(state, images, labels, idx):
    tx = method.tx(state.hp, ctx)
    key = jax.random.fold_in(state.key, state.step)
    k_aug, k_upd = jax.random.split(key)
    x = constrain_batch(images[idx], mesh)
    y = constrain_batch(labels[idx], mesh)
    if augment:
      x = data_lib.augment(k_aug, x)
    x = data_lib.preprocess(x, mean, std)

    def loss_fn(params):
      variables = {"params": method.forward(params, state.method_state)}
      if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
      logits, new_vars = model.apply(variables, x, train=True,
                                     mutable=["batch_stats"])
      loss = jnp.mean(cross_entropy(logits, y))
      return loss, (logits, new_vars.get("batch_stats", state.batch_stats))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    state = state.replace(step=state.step + 1, params=params,
                          batch_stats=batch_stats, opt_state=opt_state)
    metrics = {"loss": loss,
               "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}
    state, events = method.update(k_upd, state, metrics, ctx)
    return state, (metrics, events)

  return step


def make_chunk(step: Callable, method, ctx, *, mesh: Mesh,
               vmapped: bool = False) -> Callable:
  """Jitted ``chunk(state, images, labels, idx, n=None) -> (state, outs,
  done)``.

  Runs the first ``n`` (default: all) of ``idx.shape[0]`` steps under
  ``jax.lax.scan`` (one dispatch and one host sync per chunk). ``n`` is a
  traced count, so chunks of every length up to ``idx.shape[0]`` share one
  compiled program (the loop pads ``idx``: an epoch's or a checkpoint's
  last, shorter chunk costs no recompilation); the padded steps are skipped
  by a ``lax.cond`` and marked ``active = False``. With ``vmapped`` the
  state has a leading run axis and ``idx`` is ``(steps, runs, batch)``. A
  run whose ``method.done`` is true takes no more steps (its outputs are
  marked inactive too). ``done`` is returned for the host to stop the loop.
  """
  if vmapped:
    one = jax.vmap(step, in_axes=(0, None, None, 0))
    done_fn = jax.vmap(lambda s: method.done(s, ctx))
  else:
    one = step
    done_fn = lambda s: method.done(s, ctx)
  # Jitted, so the step is traced once: the scan body's call reuses the
  # trace ``eval_shape`` made for the skipped steps' zero outputs (a plain
  # call would trace the model, its gradient and the method again).
  one = jax.jit(one)

  def chunk(state, images, labels, idx, n=None):
    length = idx.shape[0]
    n = jnp.int32(length) if n is None else jnp.asarray(n, jnp.int32)
    out_shape = jax.eval_shape(one, state, images, labels, idx[0])[1]
    zeros = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                 out_shape)

    def body(state, xs):
      i, j = xs
      done = done_fn(state)
      valid = j < n
      if vmapped:
        def run(s):
          new, out = one(s, images, labels, i)
          keep = lambda a, b: jnp.where(
              done.reshape(done.shape + (1,) * (a.ndim - 1)), b, a)
          return jax.tree.map(keep, new, s), out
        new, out = jax.lax.cond(valid, run, lambda s: (s, zeros()), state)
      else:
        new, out = jax.lax.cond(
            done | ~valid, lambda s: (s, zeros()),
            lambda s: one(s, images, labels, i), state)
      return new, {"out": out, "active": ~done & valid}

    state, outs = jax.lax.scan(body, state,
                               (idx, jnp.arange(length, dtype=jnp.int32)))
    return state, outs, done_fn(state)

  rep = replicated(mesh)
  return jax.jit(chunk, donate_argnums=(0,), out_shardings=(rep, rep, rep))


def make_eval(model, method, *, mean, std, batch_size: int, mesh: Mesh,
              vmapped: bool = False) -> Callable:
  """``evaluate(state, images, labels) -> {'loss', 'accuracy'}``.

  Evaluates ``method.forward(method.eval_params(state))`` with the running
  BN statistics over the whole (device-resident) split, in batches under
  ``lax.scan``; a last partial batch is padded and weighted out, so every
  example counts once. ``vmapped``: one result per run.

  Two jitted parts: the method's eval variables from the state (cheap), and
  the evaluation of those variables, which is one compiled program per
  model, split size and mesh for the whole process (cached here), so a
  pruning run's phases, its dense model's check and every run of a sweep
  share it instead of compiling it again for each optimizer-state layout.
  """
  prog = _eval_program(model, _floats(mean), _floats(std), int(batch_size),
                       mesh, bool(vmapped))

  def variables_of(state):
    v = {"params": method.forward(method.eval_params(state),
                                  state.method_state)}
    if state.batch_stats:
      v["batch_stats"] = state.batch_stats
    return v

  vars_fn = jax.jit(jax.vmap(variables_of) if vmapped else variables_of)

  def evaluate(state, images, labels):
    return prog(vars_fn(state), images, labels)

  return evaluate


def _floats(x) -> tuple:
  return tuple(float(v) for v in np.ravel(np.asarray(x, np.float64)))


@functools.lru_cache(maxsize=32)
def _eval_program(model, mean: tuple, std: tuple, batch_size: int,
                  mesh: Mesh, vmapped: bool) -> Callable:
  """Jitted ``(variables, images, labels) -> {'loss', 'accuracy'}``."""
  ndev = mesh.devices.size
  batch_size = max(ndev, (batch_size // ndev) * ndev)
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)

  def evaluate(variables, images, labels):
    n = labels.shape[0]
    steps = -(-n // batch_size)
    idx = jnp.arange(steps * batch_size).reshape(steps, batch_size)
    weight = (idx < n).astype(jnp.float32)
    idx = jnp.minimum(idx, n - 1)

    def body(carry, iw):
      i, w = iw
      x = constrain_batch(images[i], mesh)
      logits = model.apply(variables, data_lib.preprocess(x, mean, std),
                           train=False)
      y = labels[i]
      loss = jnp.sum(cross_entropy(logits, y) * w)
      correct = jnp.sum((jnp.argmax(logits, -1) == y) * w)
      return (carry[0] + loss, carry[1] + correct), None

    (loss, correct), _ = jax.lax.scan(
        body, (jnp.float32(0), jnp.float32(0)), (idx, weight))
    return {"loss": loss / n, "accuracy": correct / n}

  if vmapped:
    evaluate = jax.vmap(evaluate, in_axes=(0, None, None))
  return jax.jit(evaluate)
