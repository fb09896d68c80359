"""Host-side I/O of a run: workdir locks, checksummed orbax checkpoints,
JSON(L) records, progress lines (images/s and ETA), saved models, and the
errors a run reports to its user. Nothing here is traced."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import socket
import sys
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from proxnag_jax import distributed

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
  """No NaN or inf in any floating leaf (checked on the host, as the
  checkpoint's checksum is: no program compiled per leaf shape)."""
  return all(bool(np.isfinite(a).all()) for a in map(
      np.asarray, jax.tree.leaves(jax.device_get(tree)))
             if jnp.issubdtype(a.dtype, jnp.inexact))


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


def check_finite(value: float, where: str, ckpt_dir: str,
                 last_good: Optional[int]) -> None:
  if not math.isfinite(value):
    where_ckpt = (f"the last good checkpoint (step {last_good}) in {ckpt_dir} "
                  "is intact" if last_good is not None else
                  "no checkpoint had been written yet")
    raise TrainingDiverged(
        f"loss is {value} {where}; stopping. {where_ckpt}. Lower the "
        "learning rate (or l1), add warm-up, or check the data.")


def best_time(fn, repeats: int) -> float:
  """The shortest wall time, in seconds, of ``repeats`` calls of ``fn()``
  (the timing of the bench scripts: the least disturbed run)."""
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def device_info() -> dict:
  """The devices, and which convolutions a program traced now runs
  (``conv``: ``'onednn'`` or ``'xla'``, see ``models/conv.py``)."""
  from proxnag_jax.models import conv  # pylint: disable=g-import-not-at-top
  devs = jax.devices()
  return {"backend": jax.default_backend(), "device_count": len(devs),
          "device_kind": devs[0].device_kind,
          "process_count": jax.process_count(), "conv": conv.backend()}


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
