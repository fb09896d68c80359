"""The one training loop for every method.

:func:`run_loop` runs any :class:`~proxnag_jax.methods.Method` given as a
:class:`Program` (what a step computes) and :class:`Schedule` (when things
happen): steps in chunks of ``chunk_steps`` under ``jax.lax.scan`` (one
dispatch and one host sync per chunk); at each evaluation a trace line, a
checkpoint and a progress line; the method's events as trace lines; extra
checkpoints every ``checkpoint_every_steps``. A run killed anywhere resumes
from its last checkpoint to bitwise the same result: the batch order and
every PRNG key are functions of the seed and the step. K runs that differ
only in numbers (seed, target sparsity, learning rate, lambda) run as one
``jax.vmap``-ped program.

The commands built on it (dense training, pruning, sweeps) are in
:mod:`proxnag_jax.commands`; what a finished run writes in
:mod:`proxnag_jax.summary`.

>>> program = loop.Program(model, method, ctx, mean=(0.5,), std=(0.25,),
...                        augment=False, batch_size=64, mesh=mesh)
>>> state, events = loop.init_run(method, ctx, params, {}, hp, seed=0)
>>> res = loop.run_loop(program, arrays, [loop.RunInit(state, 0, "t.jsonl")],
...                     ckpt_dir="ckpt", schedule=loop.Schedule(chunk_steps=50))
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from proxnag_jax import data as data_lib
from proxnag_jax import distributed
from proxnag_jax import engine
from proxnag_jax import hostio
from proxnag_jax.methods import base

PyTree = Any
Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Program:
  """What one loop step computes: the model, the method and its context,
  the input normalisation, augmentation, the batch size and the mesh."""

  model: Any
  method: base.Method
  ctx: base.Context
  mean: Sequence[float]
  std: Sequence[float]
  augment: bool
  batch_size: int
  mesh: Any


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When the loop does what: steps per scanned chunk, evaluation period
  (default one epoch), extra checkpoints (0: none), progress period, and a
  stop as if killed after ``stop_after_steps`` steps of this call."""

  chunk_steps: int
  eval_batch_size: int = 1000
  log_every_s: float = 30.0
  eval_every_steps: Optional[int] = None
  checkpoint_every_steps: int = 0
  stop_after_steps: Optional[int] = None
  desc: str = ""


@dataclasses.dataclass
class RunInit:
  """One run's starting point and where its files go."""

  state: base.RunState        # after method.init (unbatched)
  seed: int                   # data order
  trace_path: Optional[str]   # None: no trace (e.g. tests, notebooks)
  init_events: dict = dataclasses.field(default_factory=dict)
  metrics_path: Optional[str] = None   # dense runs: per-epoch metrics.jsonl
  tensorboard_dir: Optional[str] = None  # TensorBoard events (tboard.py)


@dataclasses.dataclass
class LoopResult:
  states: list                # final RunState of each run (host arrays)
  evals: list                 # final {'loss', 'accuracy', 'sparsity'} each
  stopped_at_step: Optional[int]
  steps: int                  # loop steps taken in all sessions
  wall_time_s: float          # all sessions
  train_time_s: float         # this session
  images_per_s: float         # this session, all runs together
  chunk_compiles: int = 0     # this session: 1 when every chunk reused one


# ---------------------------------------------------------------------------
# A fresh run.
# ---------------------------------------------------------------------------


def make_state(params, batch_stats, tx, hp: dict, seed: int) -> base.RunState:
  """A fresh run state (before ``method.init``)."""
  return base.RunState(
      step=jnp.int32(0), params=params, batch_stats=batch_stats,
      opt_state=tx.init(params), method_state=(), hp=hp,
      key=jax.random.fold_in(jax.random.PRNGKey(seed), 7))


def make_hp(values: dict) -> dict:
  """Per-run hyperparameters as arrays: ``n_zero`` int32, the rest float32."""
  return {k: (jnp.int32(v) if k == "n_zero" else jnp.float32(v))
          for k, v in values.items()}


def init_run(method, ctx, params, batch_stats, hp: dict, seed: int):
  """``method.check`` on the host, then ``method.init`` on a fresh state,
  jitted. Returns (state, events)."""
  if method.check is not None:
    method.check(params, jax.device_get(hp), ctx)
  state = make_state(params, batch_stats, method.tx(hp, ctx), hp, seed)
  key = jax.random.fold_in(jax.random.PRNGKey(seed), 8)
  return _jitted_init(method, ctx)(key, state)


_INITS: collections.OrderedDict = collections.OrderedDict()


def _jitted_init(method, ctx) -> Callable:
  """``jit(method.init)`` for this method and context, one per pair in use
  (the last 8): the runs of one method and context (seeds, targets) share
  its trace and compiled program instead of tracing it again each."""
  k = (id(method), id(ctx))
  hit = _INITS.get(k)
  if hit is not None and hit[0] is method and hit[1] is ctx:
    _INITS.move_to_end(k)
    return hit[2]
  fn = jax.jit(lambda key, s: method.init(key, s, ctx, method.tx(s.hp, ctx)))
  _INITS[k] = (method, ctx, fn)     # (kept alive: their ids stay theirs)
  if len(_INITS) > 8:
    _INITS.popitem(last=False)
  return fn


def stack(trees):
  """K pytrees of one structure as one with a leading axis of K."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, n):
  tree = jax.device_get(tree)
  return [jax.tree.map(lambda x, k=k: x[k], tree) for k in range(n)]



# ---------------------------------------------------------------------------
# The loop's host side: traces, batch order, evaluation.
# ---------------------------------------------------------------------------


class _Records:
  """Each run's trace (and dense runs' metrics) file: the one writer of
  their lines, which it counts so that a resume cuts them back to the
  checkpoint."""

  def __init__(self, runs: Sequence[RunInit], labels: dict):
    self.runs, self.labels = runs, labels
    self.lines = [0] * len(runs)
    self.metrics_lines = [0] * len(runs)
    self.boards = [None] * len(runs)

  def _open_boards(self, purge_step):
    if not distributed.is_primary():
      return
    for k, r in enumerate(self.runs):
      if r.tensorboard_dir:
        from proxnag_jax import tboard  # pylint: disable=g-import-not-at-top
        self.boards[k] = tboard.EventWriter(r.tensorboard_dir, purge_step)

  def start(self):
    self._open_boards(None)
    for k, r in enumerate(self.runs):
      for p in (r.trace_path, r.metrics_path):
        if p and os.path.exists(p) and distributed.is_primary():
          os.remove(p)
      self.events(k, r.init_events, 0)

  def resume(self, meta: dict):
    n = len(self.runs)
    self.lines = list(meta["trace_lines"])
    self.metrics_lines = list(meta.get("metrics_lines", [0] * n))
    for r, a, b in zip(self.runs, self.lines, self.metrics_lines):
      _truncate(r.trace_path, a)
      if r.metrics_path:
        _truncate(r.metrics_path, b)
    self._open_boards(int(meta["step"]) + 1)

  def params(self, k: int, step: int, params, prunable):
    if self.boards[k] is not None:
      self.boards[k].params(step, params, prunable)

  def close(self):
    for b in self.boards:
      if b is not None:
        b.close()

  def events(self, k: int, events: dict, step: int, select=None):
    """Trace records of the events whose ``emit`` flag is set."""
    if not self.runs[k].trace_path:
      return
    for kind, ev in events.items():
      emit = ev["emit"] if select is None else ev["emit"][select]
      if not bool(emit):
        continue
      rec = {"kind": kind, "step": step}
      for name, v in ev.items():
        if name == "emit":
          continue
        v = np.asarray(v if select is None else v[select]).item()
        if name in self.labels:
          v = self.labels[name].get(int(v), v)
        rec[name] = v
      self.trace(k, rec)

  def trace(self, k: int, rec: dict):
    if self.runs[k].trace_path:
      hostio.append_jsonl(self.runs[k].trace_path, rec)
      self.lines[k] += 1
    if self.boards[k] is not None:
      self.boards[k].record(rec)

  def metrics(self, k: int, rec: dict):
    if self.runs[k].metrics_path:
      hostio.append_jsonl(self.runs[k].metrics_path, rec)
      self.metrics_lines[k] += 1


class _NoCheckpoints:
  """The checkpointer of a loop run without ``ckpt_dir`` (in memory)."""

  dir = None

  def latest_step(self):
    return None

  def save(self, *args, **kwargs):
    del args, kwargs

  def close(self):
    pass


def _truncate(path: Optional[str], lines: int) -> None:
  if (not path or not distributed.is_primary()
      or not os.path.exists(path)):
    return
  with open(path) as f:
    keep = f.readlines()[:lines]
  with open(path, "w") as f:
    f.writelines(keep)


class _Batches:
  """Batch indices of loop steps: epoch ``e`` of a run of seed ``s`` is a
  permutation keyed by (s, e), so the order survives any resume."""

  def __init__(self, seeds, n_train: int, batch_size: int, spe: int):
    self.seeds, self.n, self.bs, self.spe = list(seeds), n_train, batch_size, spe
    self.orders = {}

  def order(self, seed, epoch):
    if (seed, epoch) not in self.orders:
      if len(self.orders) > 4 * len(self.seeds):
        self.orders.clear()
      key = jax.random.fold_in(jax.random.PRNGKey(seed), 1000 + epoch)
      self.orders[(seed, epoch)] = data_lib.epoch_permutation(
          jax.random.fold_in(key, 0), self.n, self.bs)
    return self.orders[(seed, epoch)]

  def __call__(self, t0: int, n: int, pad_to: int) -> np.ndarray:
    """``(pad_to, runs, batch)`` indices of steps [t0, t0 + n), zero-padded."""
    out = np.zeros((max(n, pad_to), len(self.seeds), self.bs), np.int32)
    for k, seed in enumerate(self.seeds):
      for j in range(n):
        epoch, i = divmod(t0 + j, self.spe)
        out[j, k] = self.order(seed, epoch)[i]
    return out


def _make_evaluate(program: Program, arrays: dict, n_runs: int,
                   vmapped: bool, batch_size: int):
  """``state -> [{'loss', 'accuracy', 'sparsity', 'val_*'}] per run``."""
  method, ctx = program.method, program.ctx
  evaluate = engine.make_eval(program.model, method, mean=program.mean,
                              std=program.std, batch_size=batch_size,
                              mesh=program.mesh, vmapped=vmapped)
  vm = jax.vmap if vmapped else (lambda f: f)
  sparsity = jax.jit(vm(lambda s: base.sparsity_of(
      method.forward(method.eval_params(s), s.method_state), ctx.prunable)))
  has_val = "val_x" in arrays

  def evaluate_all(state):
    ev, val, sp = jax.device_get((
        evaluate(state, arrays["test_x"], arrays["test_y"]),
        evaluate(state, arrays["val_x"], arrays["val_y"]) if has_val else {},
        sparsity(state)))
    col = lambda v: np.asarray(v).reshape(n_runs)
    out = [{"loss": float(col(ev["loss"])[k]),
            "accuracy": float(col(ev["accuracy"])[k]),
            "sparsity": float(col(sp)[k])} for k in range(n_runs)]
    for k, o in enumerate(out):
      if has_val:
        o["val_loss"] = float(col(val["loss"])[k])
        o["val_accuracy"] = float(col(val["accuracy"])[k])
    return out
  return evaluate_all


def _epoch_record(t, spe, window, e, images_per_s, wall_time_s) -> dict:
  w = np.asarray(window, np.float64)
  return {"kind": "epoch", "step": t, "epoch": t / spe,
          "loss": float(w[:, 0].mean()), "accuracy": float(w[:, 1].mean()),
          "test_loss": e["loss"], "test_accuracy": e["accuracy"],
          **{k: e[k] for k in ("val_loss", "val_accuracy") if k in e},
          "sparsity": e["sparsity"], "images_per_s": images_per_s,
          "wall_time_s": wall_time_s}


def _metrics_record(rec: dict, spe: int) -> dict:
  """The per-epoch line of a dense run's ``metrics.jsonl``."""
  return {"epoch": round(rec["step"] / spe, 4), "step": rec["step"],
          "train_loss": rec["loss"], "train_accuracy": rec["accuracy"],
          **{k: rec[k] for k in ("test_loss", "test_accuracy", "val_loss",
                                 "val_accuracy", "sparsity", "images_per_s",
                                 "wall_time_s") if k in rec}}


def _epoch_line(rec: dict, total_epochs: float) -> str:
  return (f"epoch {rec['epoch']:.4g}/{total_epochs:.4g}: loss "
          f"{rec['loss']:.4f} acc {rec['accuracy']:.4f} | "
          + (f"val acc {rec['val_accuracy']:.4f} | " if "val_accuracy" in rec
             else "")
          + f"test loss {rec['test_loss']:.4f} acc {rec['test_accuracy']:.4f}"
          f" | sparsity {rec['sparsity']:.4f}")


# ---------------------------------------------------------------------------
# The runner.
# ---------------------------------------------------------------------------


def run_loop(program: Program, arrays: dict, runs: Sequence[RunInit], *,
             schedule: Schedule, ckpt_dir: Optional[str] = None,
             resuming: bool = False,
             vmapped: bool = False, log: Log = print) -> LoopResult:
  """Runs ``program.method`` for ``ctx.total_steps`` steps or until done.

  Args:
    program: what a step computes (:class:`Program`).
    arrays: ``train_x``/``train_y``/``test_x``/``test_y`` (and, with a
      validation split, ``val_x``/``val_y``) on the devices; every
      evaluation reports both splits.
    runs: one :class:`RunInit` per run; with ``vmapped`` all of them run as
      one vmapped program (their states must have the same structure),
      otherwise there must be exactly one.
    ckpt_dir / resuming: orbax checkpoints; resume from the latest one.
      Without ``ckpt_dir`` the loop runs in memory (no checkpoints; with
      ``trace_path=None`` nothing is written at all).
    schedule: chunk length and the periods of evaluation, checkpoints and
      progress (:class:`Schedule`).
  """
  t_start, n_runs, sc = time.time(), len(runs), schedule
  if not vmapped and n_runs != 1:
    raise ValueError("several runs need vmapped=True.")
  method, ctx, spe = program.method, program.ctx, program.ctx.steps_per_epoch
  max_steps, eval_every = ctx.total_steps, sc.eval_every_steps or spe
  # One compiled chunk for the whole loop: shorter chunks (an epoch's or a
  # checkpoint's end) run in it padded, with their length traced.
  chunk_len = max(1, min(int(sc.chunk_steps), int(max_steps)))
  chunk_fn = engine.make_chunk(
      engine.make_step(program.model, method, ctx, mean=program.mean,
                       std=program.std, augment=program.augment,
                       mesh=program.mesh),
      method, ctx, mesh=program.mesh, vmapped=vmapped)
  evaluate_all = _make_evaluate(program, arrays, n_runs, vmapped,
                                sc.eval_batch_size)
  done_fn = jax.jit((jax.vmap if vmapped else (lambda f: f))(
      lambda s: method.done(s, ctx)))
  seen_fn = jax.jit((jax.vmap if vmapped else (lambda f: f))(
      lambda s: method.forward(method.eval_params(s), s.method_state)))
  batches = _Batches([r.seed for r in runs], int(arrays["train_y"].shape[0]),
                     program.batch_size, spe)
  records = _Records(runs, method.labels)
  ckpt = (hostio.Checkpointer(ckpt_dir, log=log) if ckpt_dir
          else _NoCheckpoints())
  state = engine.put_replicated(
      stack([r.state for r in runs]) if vmapped else runs[0].state,
      program.mesh)
  t, wall_before, window = 0, 0.0, [[] for _ in range(n_runs)]
  if resuming and ckpt.latest_step() is not None:
    # The per-run numbers come from the config, so a run resumed with
    # changed settings (README: resuming with changed settings) uses them.
    fresh_hp = state.hp
    state, meta = ckpt.restore(state)
    state = engine.put_replicated(state.replace(hp=fresh_hp), program.mesh)
    t, wall_before = meta["step"], meta["wall_time_s"]
    window = [[tuple(x) for x in w] for w in meta["window"]]
    records.resume(meta)
    log(f"resuming {sc.desc} at step {t} ({t / spe:.2f} epochs)")
  else:
    records.start()
  wall = lambda: wall_before + time.time() - t_start

  def save(step):
    ckpt.save(step, state, {
        "step": step, "trace_lines": records.lines,
        "metrics_lines": records.metrics_lines, "wall_time_s": wall(),
        "window": [[[float(a), float(b)] for a, b in w] for w in window]},
              must_be_finite=(state.params, state.batch_stats,
                              state.opt_state))

  done = bool(np.all(jax.device_get(done_fn(state))))
  progress = hostio.Progress(max_steps - t, program.batch_size * n_runs,
                             desc=sc.desc, every_s=sc.log_every_s)
  stop_at = t + sc.stop_after_steps if sc.stop_after_steps else None
  last_evals, t_run = None, time.time()
  rep = engine.replicated(program.mesh)
  while t < max_steps and not done:
    ends = [max_steps, (t // eval_every + 1) * eval_every, t + sc.chunk_steps]
    if sc.checkpoint_every_steps:
      ends.append((t // sc.checkpoint_every_steps + 1)
                  * sc.checkpoint_every_steps)
    n = min(ends + ([stop_at] if stop_at else [])) - t
    idx = batches(t, n, chunk_len)
    idx = jax.device_put(idx if vmapped else idx[:, 0], rep)
    state, outs, done_arr = chunk_fn(state, arrays["train_x"],
                                     arrays["train_y"], idx, np.int32(n))
    outs, done_arr = jax.device_get((outs, done_arr))
    metrics, events = jax.tree.map(lambda a: a[:n], outs["out"])
    active = np.asarray(outs["active"])[:n].reshape(n, n_runs)
    loss = np.asarray(metrics["loss"]).reshape(n, n_runs)
    acc = np.asarray(metrics["accuracy"]).reshape(n, n_runs)
    bad = active & ~np.isfinite(loss)
    if bad.any():      # stops with the checkpoints intact
      j, k = np.argwhere(bad)[0]
      progress.close()
      records.close()
      last = ckpt.latest_step()
      ckpt.close()
      hostio.check_finite(float(loss[j, k]), f"at step {t + j + 1}" + (
          f" of run {k}" if vmapped else ""), ckpt.dir, last)
    for k in range(n_runs):
      for j in map(int, np.flatnonzero(active[:, k])):
        window[k].append((float(loss[j, k]), float(acc[j, k])))
        records.events(k, events, t + j + 1, (j, k) if vmapped else j)
    t += n
    done = bool(np.all(done_arr))
    progress.update(n, **({"loss": float(np.mean(loss[active]))}
                          if active.any() else {}))
    if t % eval_every == 0 or done or t >= max_steps:
      last_evals = evaluate_all(state)
      if any(b is not None for b in records.boards):
        seen = jax.device_get(seen_fn(state))
        for k in range(n_runs):
          records.params(k, t, jax.tree.map(lambda x, k=k: x[k], seen)
                         if vmapped else seen, ctx.prunable)
      for k in range(n_runs):
        if window[k]:
          rec = _epoch_record(t, spe, window[k], last_evals[k],
                              progress.images_per_s(), wall())
          records.trace(k, rec)
          records.metrics(k, _metrics_record(rec, spe))
          log(f"{sc.desc}{f' [{k}]' if vmapped else ''} "
              + _epoch_line(rec, max_steps / spe))
          window[k] = []
      save(t)
    elif sc.checkpoint_every_steps and t % sc.checkpoint_every_steps == 0:
      save(t)
    if stop_at and t >= stop_at and t < max_steps and not done:
      break
  progress.close()
  if ckpt.latest_step() != t:
    save(t)
  ckpt.close()
  records.close()
  compiles = chunk_fn._cache_size()  # pylint: disable=protected-access
  if t < max_steps and not done:        # stopped as if killed
    return LoopResult([], [], t, t, wall(), time.time() - t_run,
                      progress.images_per_s(), compiles)
  states = unstack(state, n_runs) if vmapped else [jax.device_get(state)]
  return LoopResult(states, last_evals or evaluate_all(state), None, t,
                    wall(), time.time() - t_run, progress.images_per_s(),
                    compiles)


__all__ = ["Program", "Schedule", "RunInit", "LoopResult", "run_loop",
           "make_state", "make_hp", "init_run", "stack", "unstack"]
