"""Pure jitted pieces of training, and the host-side helpers of the loop.

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

Host-side helpers used by :mod:`proxnag_jax.loop`: :class:`Checkpointer`
(orbax), :class:`Progress` (images/s and ETA), JSON(L) writers, the workdir
check, data/model setup and saved-model loading.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import math
import os
import shutil
import socket
import sys
import time
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from proxnag_jax import data as data_lib
from proxnag_jax import distributed
from proxnag_jax import masks as masks_lib
from proxnag_jax import models as models_lib
from proxnag_jax import report as report_lib
from proxnag_jax import transforms

PyTree = Any


class TrainingDiverged(FloatingPointError):
  """The loss became NaN/inf; the last good checkpoint is left intact."""


class WorkdirLocked(RuntimeError):
  """Another process is writing to the workdir."""


class CheckpointError(ValueError):
  """No checkpoint of a workdir can be read back intact."""


LOCK_FILE = ".lock"
# Sweep workers (``train.sweep --worker``) serialise their set-up with it.
PREPARE_LOCK_FILE = ".prepare.lock"
LOCK_FILES = (LOCK_FILE, PREPARE_LOCK_FILE)


@contextlib.contextmanager
def workdir_lock(workdir: str, shared: bool = False):
  """Holds an exclusive lock on ``workdir`` (one writer per workdir).

  An ``flock`` on ``workdir/.lock``: the kernel releases it when the process
  dies, however it dies, so a killed run never leaves a stale lock. A second
  writer gets :class:`WorkdirLocked` at once. With several processes only
  process 0 locks (the others write nothing but their checkpoint shards).
  ``shared``: a shared lock, which any number of cooperating processes
  (sweep workers, which claim cells with :func:`try_lock`) hold together and
  which keeps out an exclusive holder, and the other way round.
  """
  if not distributed.is_primary():
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  f = open(os.path.join(workdir, LOCK_FILE), "a+")
  try:
    fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
                | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    who = f.read().strip() or "another process"
    f.close()
    raise WorkdirLocked(
        f"workdir {workdir!r} is in use by {who}: one process writes to a "
        "workdir at a time (or several sweep workers, all started with "
        "--worker). Wait for it to finish (or stop it), or use another "
        "--workdir.") from None
  if not shared:
    f.seek(0)
    f.truncate()
  f.write(f"pid {os.getpid()} on {socket.gethostname()}"
          f"{' (sweep worker)' if shared else ''}\n")
  f.flush()
  try:
    yield
  finally:
    fcntl.flock(f, fcntl.LOCK_UN)
    f.close()


@contextlib.contextmanager
def try_lock(path: str, blocking: bool = False):
  """An exclusive ``flock`` on the file ``path`` (created if missing) for the
  ``with`` block; yields whether it was taken (``blocking``: waits for it, so
  always True). Released when the block ends or the process dies."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  f = open(path, "a+")
  try:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
      yield False
      return
    try:
      yield True
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
  finally:
    f.close()


def tree_checksum(tree: PyTree) -> str:
  """SHA-256 of every leaf's dtype, shape and bytes (host side)."""
  h = hashlib.sha256()
  for x in jax.tree.leaves(jax.device_get(tree)):
    a = np.asarray(x)
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def all_finite(tree: PyTree) -> bool:
  """No NaN or inf in any floating leaf (one reduction on the device)."""
  flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
           if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
  return bool(jnp.all(jnp.stack(flags))) if flags else True


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


def schedule_fn(config, steps_per_epoch: int, num_epochs=None):
  """``peak_lr -> schedule`` of a dense training config (its ``schedule``,
  ``warmup_epochs``, ``lr_steps`` / ``lr_decay``) over ``num_epochs``."""
  num_epochs = config.num_epochs if num_epochs is None else num_epochs
  kind = config.get("schedule", "cosine")
  total = int(round(num_epochs * steps_per_epoch))
  warm = int(config.get("warmup_epochs", 0) * steps_per_epoch)
  bounds = {int(e * steps_per_epoch): config.get("lr_decay", 0.1)
            for e in config.get("lr_steps", ())}
  return lambda lr: make_schedule(lr, kind=kind, total_steps=total,
                                  warmup_steps=warm, boundaries=bounds)


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


# ---------------------------------------------------------------------------
# Host-side helpers: progress, JSONL, checkpoints, config checks.
# ---------------------------------------------------------------------------


def _fmt_time(s: float) -> str:
  s = int(max(0, s))
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (
      f"{s // 60}m{s % 60:02d}s")


class Progress:
  """A one-line progress report: step, images/s, ETA, metrics.

  Prints to stderr at most every ``every_s`` seconds (in place on a TTY,
  as lines otherwise).
  """

  def __init__(self, total_steps: int, batch_size: int, desc: str = "",
               every_s: float = 5.0, stream=None):
    self.total, self.batch, self.desc = total_steps, batch_size, desc
    if stream is None and not distributed.is_primary():
      stream = open(os.devnull, "w")  # pylint: disable=consider-using-with
    self.every, self.stream = every_s, stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.done, self.t0, self.last = 0, time.time(), 0.0
    self.t_first = None

  def update(self, steps: int = 1, force: bool = False, **metrics):
    self.done += steps
    now = time.time()
    if self.t_first is None:      # exclude compilation from the rate
      self.t_first, self.n_first = now, self.done
    if not force and now - self.last < self.every:
      return
    self.last = now
    self.stream.write(("\r" if self.tty else "") + self.line(**metrics)
                      + ("" if self.tty else "\n"))
    self.stream.flush()

  def images_per_s(self) -> float:
    if self.t_first is None:
      return 0.0
    dt = time.time() - self.t_first
    return (self.done - self.n_first) * self.batch / dt if dt > 0 else 0.0

  def line(self, **metrics) -> str:
    ips = self.images_per_s()
    left = (self.total - self.done) * self.batch / ips if ips else 0.0
    pct = 100.0 * self.done / max(1, self.total)
    extra = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in metrics.items())
    rate = (f"{ips:,.0f} img/s | ETA {_fmt_time(left)}" if ips else
            "img/s and ETA after the first (compiling) chunk")
    return f"{self.desc} {self.done}/{self.total} ({pct:.0f}%) | {rate} | {extra}"

  def close(self):
    if self.tty:
      self.stream.write("\n")
      self.stream.flush()


def append_jsonl(path: str, record: dict) -> None:
  """Appends one JSON line (process 0 only)."""
  if not distributed.is_primary():
    return
  with open(path, "a") as f:
    f.write(json.dumps(record, default=_json_default) + "\n")


def _json_default(o):
  if isinstance(o, (np.floating, np.integer)):
    return o.item()
  if isinstance(o, (np.ndarray, jax.Array)):
    return np.asarray(o).tolist()
  return str(o)


def write_json(path: str, obj: dict) -> None:
  """Writes ``obj`` atomically (process 0 only)."""
  if not distributed.is_primary():
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=_json_default)
  os.replace(tmp, path)


class Checkpointer:
  """Orbax checkpoints of a pytree plus JSON metadata, in ``workdir/name``.

  Every saved step carries a SHA-256 of its arrays in its metadata; a
  restore verifies it and falls back, with a warning, to the newest earlier
  step that reads back intact. A non-finite state is never saved.
  """

  def __init__(self, directory: str, max_to_keep: int = 2,
               log: Callable[[str], None] = print):
    self.dir = os.path.abspath(directory)
    self.log = log
    self.mngr = ocp.CheckpointManager(
        self.dir, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> Optional[int]:
    return self.mngr.latest_step()

  def save(self, step: int, tree: PyTree, meta: dict,
           must_be_finite: Optional[PyTree] = None) -> None:
    """Saves (replacing a checkpoint of the same step) and waits.

    Raises :class:`TrainingDiverged` instead of saving when
    ``must_be_finite`` (default: ``tree``; e.g. the params and BN
    statistics, where other parts may hold NaN on purpose as "unset") holds
    a NaN or inf.
    """
    if not all_finite(tree if must_be_finite is None else must_be_finite):
      good = self.latest_step()
      raise TrainingDiverged(
          f"the state at step {step} holds NaN/inf values; it was not "
          "saved. " + (f"The last good checkpoint is step {good} in "
                       f"{self.dir}." if good is not None else
                       "No checkpoint had been written yet.") +
          " Lower the learning rate (or l1) and resume (README, 'Resuming "
          "with changed settings').")
    if step in self.mngr.all_steps():
      self.mngr.delete(step)
    meta = dict(meta, checksum=tree_checksum(tree))
    self.mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree),
        meta=ocp.args.JsonSave(json.loads(json.dumps(
            meta, default=_json_default)))), force=True)
    self.mngr.wait_until_finished()

  def _restore_step(self, template: PyTree, step: int):
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    out = self.mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        meta=ocp.args.JsonRestore()))
    state, meta = out["state"], out["meta"]
    if not isinstance(meta, dict):
      raise ValueError("its metadata is unreadable")
    want = meta.get("checksum")
    got = tree_checksum(state)
    if want is not None and got != want:
      raise ValueError("its arrays do not match their checksum (corrupted)")
    return state, meta

  def restore(self, template: PyTree, step: Optional[int] = None):
    """The newest intact checkpoint at or before ``step`` (default: the
    latest): ``(state, meta)``. Raises :class:`CheckpointError` if none."""
    steps = sorted((s for s in self.mngr.all_steps()
                    if step is None or s <= step), reverse=True)
    problems = []
    for s in steps:
      try:
        out = self._restore_step(template, s)
      except Exception as e:  # pylint: disable=broad-except
        problems.append(f"step {s}: {str(e).splitlines()[0][:200]}")
        self.log(f"warning: checkpoint step {s} in {self.dir} cannot be "
                 f"used ({problems[-1]}); trying an earlier one.")
        continue
      return out
    raise CheckpointError(
        f"no checkpoint in {self.dir} reads back intact ("
        + ("; ".join(problems) or "there are none") + "). Start the run "
        "over with --overwrite (or another --workdir).")

  def read_meta(self, step: Optional[int] = None) -> dict:
    """The JSON metadata of a checkpoint, without reading its arrays."""
    step = self.latest_step() if step is None else step
    return self.mngr.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]

  def close(self):
    self.mngr.wait_until_finished()
    self.mngr.close()


# Config fields that do not change results; a resumed run may change them.
NON_RESULT_FIELDS = ("log_every_s", "checkpoint_every_steps", "data_dir",
                     "download",
                     "eval_batch_size", "workdir", "chunk_steps",
                     # A sweep's reporting: what its table shows.
                     "select_on_val", "select_scope", "paper_table", "paper_sparsities",
                     "paper_dense", "target_note")


# A dense-training config's optimiser and schedule. A pruning config has
# them only under ``dense`` (pruning never reads them at its top level: it
# refuses a config that carries them there, and older runs' configs that
# did carry them compare without them).
DENSE_TRAINING_FIELDS = ("num_epochs", "optimizer", "learning_rate",
                         "nesterov", "weight_decay", "l1", "fista",
                         "schedule", "lr_steps", "lr_decay", "warmup_epochs")


def is_pruning_config(cfg) -> bool:
  return "method" in cfg and "target_sparsity" in cfg and "dense" in cfg


def comparable_config(cfg: dict) -> dict:
  """The config without the fields that do not change results, at any
  depth (a sweep's base config holds them too)."""
  drop = DENSE_TRAINING_FIELDS if is_pruning_config(cfg) else ()
  return {k: comparable_config(v) if isinstance(v, dict) else v
          for k, v in cfg.items()
          if k not in NON_RESULT_FIELDS and k not in drop}


def config_diff(old: dict, new: dict, prefix: str = "") -> dict:
  """``{'a.b.c': [old, new]}`` for every leaf that differs (nested dicts are
  descended, so a sweep's ``base.proxnag.l1_step`` is named, not ``base``)."""
  out = {}
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k), new.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out.update(config_diff(a, b, f"{prefix}{k}."))
    elif a != b:
      out[f"{prefix}{k}"] = [a, b]
  return out


def prepare_workdir(workdir: str, config, overwrite: bool = False,
                    allow_changes: bool = False) -> bool:
  """Creates ``workdir`` or checks it holds a run of the same config.

  Returns True if a run of this config is there to resume. A workdir holding
  a different config raises unless ``overwrite`` (which wipes it) or
  ``allow_changes`` (which resumes it under the new config and records the
  changed fields in ``config_changes.jsonl``, e.g. a lower learning rate
  after a NaN).
  """
  path = os.path.join(workdir, "config.json")
  cfg = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, ValueError):
      old = None
    # Anything besides the config (and the lock) means a run got going.
    ran = bool(set(os.listdir(workdir)) - {"config.json", *LOCK_FILES})
    if not overwrite and ran:
      if old is None:
        raise ValueError(
            f"{path} is unreadable, so the run in {workdir!r} cannot be "
            "checked against this config. Pass --overwrite to start over, or "
            "use another --workdir.")
      if comparable_config(old) != comparable_config(cfg):
        changed = config_diff(comparable_config(old), comparable_config(cfg))
        diff = sorted(changed)
        if allow_changes:
          append_jsonl(os.path.join(workdir, "config_changes.jsonl"), {
              "time": time.strftime("%Y-%m-%d %H:%M:%S"),
              "changed": changed})
          write_json(path, cfg)
          return True
        raise ValueError(
            f"workdir {workdir!r} holds a run of a different config (fields "
            f"differ: {', '.join(diff)}). Use another --workdir, pass "
            "--overwrite to discard it, or --allow_changes to resume it with "
            "the new values.")
      return True
    if (not overwrite and old is not None
        and comparable_config(old) == comparable_config(cfg)):
      # This config, set up but not yet run: nothing to discard (and a sweep
      # worker starting beside another may be creating files right now).
      write_json(path, cfg)
      return False
    # A different run to discard, or a config that never got to run (e.g. a
    # bad value that failed before the first checkpoint): start afresh.
    _clear_dir(workdir)
  os.makedirs(workdir, exist_ok=True)
  write_json(path, cfg)
  return False


def _clear_dir(workdir: str) -> None:
  """Removes everything in ``workdir`` but its lock file."""
  for name in os.listdir(workdir):
    if name in LOCK_FILES:
      continue
    p = os.path.join(workdir, name)
    if os.path.isdir(p) and not os.path.islink(p):
      shutil.rmtree(p)
    else:
      os.remove(p)


def check_finite(value: float, where: str, ckpt_dir: str,
                 last_good: Optional[int]) -> None:
  if not math.isfinite(value):
    where_ckpt = (f"the last good checkpoint (step {last_good}) in {ckpt_dir} "
                  "is intact" if last_good is not None else
                  "no checkpoint had been written yet")
    raise TrainingDiverged(
        f"loss is {value} {where}; stopping. {where_ckpt}. Lower the "
        "learning rate (or l1), add warm-up, or check the data.")


def device_info() -> dict:
  devs = jax.devices()
  return {"backend": jax.default_backend(), "device_count": len(devs),
          "device_kind": devs[0].device_kind,
          "process_count": jax.process_count()}


# ---------------------------------------------------------------------------
# Setup shared by the CLIs: data, model, variables.
# ---------------------------------------------------------------------------


# Numeric fields of the training configs and what they must be.
POSITIVE_FIELDS = ("num_epochs", "batch_size", "learning_rate",
                   "eval_batch_size", "chunk_steps", "budget_epochs",
                   "finetune_lr", "log_every_s")
NON_NEGATIVE_FIELDS = ("weight_decay", "warmup_epochs", "train_subset",
                       "test_subset", "val_size", "val_seed", "seed",
                       "checkpoint_every_steps", "l1", "lr_decay")
UNIT_FIELDS = ("momentum",)      # in [0, 1)


def check_numbers(config, where: str = "config") -> None:
  """Every number of ``config`` (nested) is finite; the fields named in
  :data:`POSITIVE_FIELDS` / :data:`NON_NEGATIVE_FIELDS` / :data:`UNIT_FIELDS`
  are in range. Raises ValueError naming the field."""
  for k, v in config.items():
    name = f"{where}.{k}"
    if isinstance(v, ml_collections.ConfigDict):
      check_numbers(v, name)
      continue
    vals = v if isinstance(v, (tuple, list)) else (v,)
    for x in vals:
      if isinstance(x, bool) or not isinstance(x, (int, float)):
        continue
      if not math.isfinite(x):
        raise ValueError(f"{name} is {x}: it must be a finite number.")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      continue
    if k in POSITIVE_FIELDS and not v > 0:
      raise ValueError(f"{name} must be positive, got {v}.")
    if k in NON_NEGATIVE_FIELDS and v < 0:
      raise ValueError(f"{name} must be >= 0, got {v}.")
    if k in UNIT_FIELDS and not 0 <= v < 1:
      raise ValueError(f"{name} must be in [0, 1), got {v}.")


def validate_config(config) -> None:
  """Fails early, with what to do, on a config that cannot run (before
  anything is written)."""
  if config.model not in models_lib.MODEL_NAMES:
    models_lib.get_model(config.model)   # raises, listing the valid names
  data_lib.check_dataset_name(config.dataset)
  check_numbers(config)   # num_epochs, batch_size, learning_rate > 0, ...
  sub = config.get("train_subset", 0)
  if sub and config.get("val_size", 0) >= sub:
    raise ValueError(f"config.val_size ({config.val_size}) must be smaller "
                     f"than config.train_subset ({sub}).")
  if config.get("optimizer", "sgd") not in ("sgd", "proxnag"):
    raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: "
                     "sgd, proxnag.")
  if config.get("schedule", "cosine") not in SCHEDULES:
    raise ValueError(f"unknown schedule {config.schedule!r}; valid: "
                     f"{', '.join(SCHEDULES)}.")
  # Every field takes effect or is refused.
  opt = config.get("optimizer", "sgd")
  ignored = []
  if opt != "proxnag":
    ignored += [f for f, off in (("l1", 0.0), ("fista", False))
                if config.get(f, off) != off]
  elif not config.get("nesterov", True):
    ignored.append("nesterov")
  if config.get("schedule", "cosine") != "step" and config.get("lr_steps",
                                                               ()):
    ignored.append("lr_steps")
  if ignored:
    raise ValueError(
        f"config.{', config.'.join(ignored)} would be ignored: l1 and fista "
        "are read only with optimizer='proxnag' (which is always Nesterov, "
        "so nesterov=False is not), lr_steps only with schedule='step'; "
        "drop them or change the optimizer / schedule.")


def setup(config, mesh: Mesh, log=print):
  """Loads data to the devices and builds the model: the shared prologue."""
  validate_config(config)
  ds = data_lib.load_dataset(config.dataset, config.get("data_dir", ""),
                             config.get("train_subset", 0),
                             config.get("test_subset", 0),
                             download=config.get("download", True))
  ds = data_lib.split_validation(ds, config.get("val_size", 0),
                                 config.get("val_seed", 0))
  log(f"data: {data_lib.describe(ds)}")
  if len(ds.train_labels) < config.batch_size:
    raise ValueError(f"batch_size {config.batch_size} exceeds the "
                     f"{len(ds.train_labels)} training examples.")
  if config.batch_size % mesh.devices.size:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by "
                     f"the {mesh.devices.size} devices.")
  model = models_lib.get_model(config.model, ds.num_classes)
  rep = replicated(mesh)
  arrays = {
      "train_x": jax.device_put(ds.train_images, rep),
      "train_y": jax.device_put(ds.train_labels, rep),
      "test_x": jax.device_put(ds.test_images, rep),
      "test_y": jax.device_put(ds.test_labels, rep),
  }
  if ds.val_labels is not None:
    arrays["val_x"] = jax.device_put(ds.val_images, rep)
    arrays["val_y"] = jax.device_put(ds.val_labels, rep)
  return ds, model, arrays


def init_variables(model, config, input_shape):
  key = jax.random.PRNGKey(config.seed)
  v = models_lib.init_model(model, jax.random.fold_in(key, 0),
                            (1,) + tuple(input_shape))
  return v["params"], v.get("batch_stats", {})


def save_tree(path: str, tree: PyTree) -> None:
  """Saves a pytree of arrays with orbax (overwriting)."""
  path = os.path.abspath(path)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path, jax.device_get(tree), force=True)
  ckptr.wait_until_finished()


def load_final(workdir_or_path: str, name: str = "final") -> dict:
  """Loads the arrays saved by a finished run (as numpy-backed jax arrays).

  ``train.train`` saves ``{'params', 'batch_stats'}`` in ``DIR/final``;
  ``train.prune`` saves ``{'params', 'batch_stats', 'masks'}`` in
  ``DIR/pruned`` (``load_final(DIR, 'pruned')``).

  >>> variables = load_final("runs/lenet5")   # then model.apply(variables, x)
  """
  path = os.path.abspath(workdir_or_path)
  if os.path.isdir(os.path.join(path, name)):
    path = os.path.join(path, name)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no saved model at {path}.")
  return ocp.StandardCheckpointer().restore(path)
