"""The one training loop for every method, and the commands built on it.

:func:`run_loop` runs any :class:`~proxnag_jax.methods.Method`: steps in
chunks of ``chunk_steps`` under ``jax.lax.scan`` (one dispatch and one host
sync per chunk), evaluation and a trace line at epoch ends, the method's
events as trace lines, progress (images/s, ETA), orbax checkpoints of the
whole :class:`~proxnag_jax.methods.RunState` pytree at epoch ends and every
``checkpoint_every_steps``. A run killed anywhere resumes from its last
checkpoint to bitwise the same result: the batch order and every PRNG key
are functions of the seed and the step. K runs that differ only in numbers
(seed, target sparsity, learning rate, lambda) run as one ``jax.vmap``-ped
program.

Built on it:

* :func:`train` — dense training (``python -m train.train``): writes
  ``metrics.jsonl``, ``trace.jsonl``, ``summary.json``, ``final/``;
* :func:`prune` / :func:`prune_runs` — any pruning method
  (``python -m train.prune``, ``train.sweep``): writes ``summary.json``,
  ``trace.jsonl``, ``report.md``, ``pruned/`` and PNG plots.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import re
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from proxnag_jax import data as data_lib
from proxnag_jax import distributed
from proxnag_jax import engine
from proxnag_jax import hostio
from proxnag_jax import experiment
from proxnag_jax import masks as masks_lib
from proxnag_jax import methods as methods_lib
from proxnag_jax import models as models_lib
from proxnag_jax import report as report_lib
from proxnag_jax import surgery
from proxnag_jax.methods import base

PyTree = Any
Log = Callable[[str], None]


# ---------------------------------------------------------------------------
# The runner.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class RunInit:
  """One run's starting point and where its files go."""

  state: base.RunState        # after method.init (unbatched)
  seed: int                   # data order
  trace_path: str
  init_events: dict = dataclasses.field(default_factory=dict)
  metrics_path: Optional[str] = None   # dense runs: per-epoch metrics.jsonl


@dataclasses.dataclass
class LoopResult:
  states: list                # final RunState of each run (host arrays)
  evals: list                 # final {'loss', 'accuracy', 'sparsity'} each
  stopped_at_step: Optional[int]
  steps: int                  # loop steps taken in all sessions
  wall_time_s: float          # all sessions
  train_time_s: float         # this session
  images_per_s: float         # this session, all runs together


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree, n):
  tree = jax.device_get(tree)
  return [jax.tree.map(lambda x, k=k: x[k], tree) for k in range(n)]


def _truncate(path: str, lines: int) -> None:
  if not distributed.is_primary() or not os.path.exists(path):
    return
  with open(path) as f:
    keep = f.readlines()[:lines]
  with open(path, "w") as f:
    f.writelines(keep)


def _event_lines(events: dict, labels: dict, step: int, select=None) -> list:
  """Trace records of the events whose ``emit`` flag is set."""
  lines = []
  for kind, ev in events.items():
    emit = ev["emit"] if select is None else ev["emit"][select]
    if not bool(emit):
      continue
    ev = ev if select is None else {k: v[select] for k, v in ev.items()}
    rec = {"kind": kind, "step": step}
    for k, v in ev.items():
      if k == "emit":
        continue
      v = np.asarray(v).item()
      if k in labels:
        v = labels[k].get(int(v), v)
      rec[k] = v
    lines.append(rec)
  return lines


def run_loop(*, model, method: base.Method, ctx: base.Context, arrays: dict,
             mesh, mean, std, augment: bool, batch_size: int,
             runs: Sequence[RunInit], vmapped: bool, ckpt_dir: str,
             resuming: bool, chunk_steps: int, eval_batch_size: int,
             log_every_s: float,
             eval_every_steps: Optional[int] = None,
             checkpoint_every_steps: int = 0, desc: str = "",
             stop_after_steps: Optional[int] = None,
             log: Log = print) -> LoopResult:
  """Runs ``method`` for ``ctx.total_steps`` steps or until it is done.

  Args:
    model, method, ctx: what to train and how (see :mod:`.methods.base`).
    arrays: ``train_x``/``train_y``/``test_x``/``test_y`` (and, with a
      validation split, ``val_x``/``val_y``) on the devices; every
      evaluation reports both splits.
    runs: one :class:`RunInit` per run; with ``vmapped`` all of them run as
      one vmapped program (their states must have the same structure),
      otherwise there must be exactly one.
    ckpt_dir / resuming: orbax checkpoints; resume from the latest one.
    chunk_steps: steps per scanned chunk (one host sync each).
    eval_every_steps: evaluation period (default one epoch).
    checkpoint_every_steps: extra checkpoints between evaluations (0: none).
    stop_after_steps: stop (as if killed) after this many steps in this
      call, right after a checkpoint; the next call resumes.
  """
  t_start = time.time()
  n_runs = len(runs)
  if not vmapped and n_runs != 1:
    raise ValueError("several runs need vmapped=True.")
  spe = ctx.steps_per_epoch
  max_steps = ctx.total_steps
  eval_every = eval_every_steps or spe
  step_fn = engine.make_step(model, method, ctx, mean=mean, std=std,
                             augment=augment, mesh=mesh)
  # One compiled chunk for the whole loop: shorter chunks (an epoch's or a
  # checkpoint's end) run in it padded, with their length traced.
  chunk_len = max(1, min(int(chunk_steps), int(max_steps)))
  chunk_fn = engine.make_chunk(step_fn, method, ctx, mesh=mesh,
                               vmapped=vmapped)
  evaluate = engine.make_eval(model, method, mean=mean, std=std,
                              batch_size=eval_batch_size, mesh=mesh,
                              vmapped=vmapped)
  sparsity_fn = jax.jit((jax.vmap if vmapped else (lambda f: f))(
      lambda s: base.sparsity_of(method.forward(method.eval_params(s),
                                                s.method_state),
                                 ctx.prunable)))
  done_fn = jax.jit((jax.vmap if vmapped else (lambda f: f))(
      lambda s: method.done(s, ctx)))

  state = _stack([r.state for r in runs]) if vmapped else runs[0].state
  state = engine.put_replicated(state, mesh)
  ckpt = hostio.Checkpointer(ckpt_dir, log=log)
  lines = [0] * n_runs
  t, wall_before = 0, 0.0
  restored_window = [[] for _ in range(n_runs)]
  if resuming and ckpt.latest_step() is not None:
    fresh_hp = state.hp
    state, meta = ckpt.restore(state)
    # The per-run numbers come from the config, so a run resumed with
    # changed settings (README: resuming with changed settings) uses them.
    state = engine.put_replicated(state.replace(hp=fresh_hp), mesh)
    t, wall_before, lines = meta["step"], meta["wall_time_s"], meta[
        "trace_lines"]
    restored_window = [[tuple(x) for x in w] for w in meta["window"]]
    for r, n in zip(runs, lines):
      _truncate(r.trace_path, n)
    for r, n in zip(runs, meta.get("metrics_lines", [0] * n_runs)):
      if r.metrics_path:
        _truncate(r.metrics_path, n)
    log(f"resuming {desc} at step {t} ({t / spe:.2f} epochs)")
  else:
    for k, r in enumerate(runs):
      for p in (r.trace_path, r.metrics_path):
        if p and os.path.exists(p) and distributed.is_primary():
          os.remove(p)
      for rec in _event_lines(r.init_events, method.labels, 0):
        hostio.append_jsonl(r.trace_path, rec)
        lines[k] += 1

  def metrics_lines():
    out = []
    for r in runs:
      if r.metrics_path and os.path.exists(r.metrics_path):
        with open(r.metrics_path) as f:
          out.append(len(f.readlines()))
      else:
        out.append(0)
    return out

  def save(step):
    ckpt.save(step, state, {"step": step, "trace_lines": lines,
                            "window": [[[float(a), float(b)] for a, b in w]
                                       for w in window],
                            "metrics_lines": metrics_lines(),
                            "wall_time_s": wall_before + time.time()
                            - t_start},
              must_be_finite=(state.params, state.batch_stats,
                              state.opt_state))

  def evaluate_all():
    """Test (and validation) loss/accuracy and sparsity of every run's eval
    params."""
    has_val = "val_x" in arrays
    ev, val, sp = jax.device_get((
        evaluate(state, arrays["test_x"], arrays["test_y"]),
        evaluate(state, arrays["val_x"], arrays["val_y"]) if has_val else {},
        sparsity_fn(state)))
    col = lambda v: np.asarray(v).reshape(n_runs)
    out = [{"loss": float(col(ev["loss"])[k]),
            "accuracy": float(col(ev["accuracy"])[k]),
            "sparsity": float(col(sp)[k])} for k in range(n_runs)]
    if has_val:
      for k, o in enumerate(out):
        o["val_loss"] = float(col(val["loss"])[k])
        o["val_accuracy"] = float(col(val["accuracy"])[k])
    return out

  def index_batches(t0, n):
    """Batch indices of loop steps [t0, t0 + n): (n, [runs,] batch)."""
    out = np.empty((n, n_runs, batch_size), np.int32)
    for k, r in enumerate(runs):
      for j in range(n):
        epoch, i = divmod(t0 + j, spe)
        out[j, k] = epoch_order(r.seed, epoch)[i]
    return out if vmapped else out[:, 0]

  orders = {}

  def epoch_order(seed, epoch):
    if (seed, epoch) not in orders:
      if len(orders) > 4 * n_runs:
        orders.clear()
      key = jax.random.fold_in(jax.random.PRNGKey(seed), 1000 + epoch)
      orders[(seed, epoch)] = data_lib.epoch_permutation(
          jax.random.fold_in(key, 0), int(arrays["train_y"].shape[0]),
          batch_size)
    return orders[(seed, epoch)]

  done = bool(np.all(jax.device_get(done_fn(state))))
  progress = hostio.Progress(max_steps - t, batch_size * n_runs, desc=desc,
                             every_s=log_every_s)
  stop_at = t + stop_after_steps if stop_after_steps else None
  window = restored_window   # (loss, accuracy) of steps since the last eval
  last_evals = [None] * n_runs
  t_run = time.time()
  rep = engine.replicated(mesh)
  while t < max_steps and not done:
    bounds = [max_steps, (t // eval_every + 1) * eval_every, t + chunk_steps]
    if checkpoint_every_steps:
      bounds.append((t // checkpoint_every_steps + 1) * checkpoint_every_steps)
    if stop_at:
      bounds.append(stop_at)
    n = min(bounds) - t
    idx = index_batches(t, n)
    if n < chunk_len:
      idx = np.concatenate([idx, np.zeros((chunk_len - n,) + idx.shape[1:],
                                          idx.dtype)])
    idx = jax.device_put(idx, rep)
    state, outs, done_arr = chunk_fn(state, arrays["train_x"],
                                     arrays["train_y"], idx, np.int32(n))
    outs, done_arr = jax.device_get((outs, done_arr))
    outs = jax.tree.map(lambda a: a[:n], outs)
    metrics, events = outs["out"]
    active = np.asarray(outs["active"]).reshape(n, n_runs)
    loss = np.asarray(metrics["loss"]).reshape(n, n_runs)
    acc = np.asarray(metrics["accuracy"]).reshape(n, n_runs)
    bad = active & ~np.isfinite(loss)
    if bad.any():
      j, k = np.argwhere(bad)[0]
      progress.close()
      last = ckpt.latest_step()
      ckpt.close()
      hostio.check_finite(float(loss[j, k]), f"at step {t + j + 1}"
                          + (f" of run {k}" if vmapped else ""), ckpt.dir,
                          last)
    for k in range(n_runs):
      for j in range(n):
        if not active[j, k]:
          continue
        window[k].append((float(loss[j, k]), float(acc[j, k])))
        sel = (j, k) if vmapped else j
        for rec in _event_lines(events, method.labels, t + j + 1, sel):
          hostio.append_jsonl(runs[k].trace_path, rec)
          lines[k] += 1
    t += n
    done = bool(np.all(done_arr))
    progress.update(n, **({"loss": float(np.mean(loss[active]))}
                          if active.any() else {}))
    if t % eval_every == 0 or done or t >= max_steps:
      last_evals = evaluate_all()
      for k, r in enumerate(runs):
        e = last_evals[k]
        if not window[k]:
          continue
        w = np.asarray(window[k], np.float64)
        rec = {"kind": "epoch", "step": t, "epoch": t / spe,
               "loss": float(w[:, 0].mean()),
               "accuracy": float(w[:, 1].mean()),
               "test_loss": e["loss"], "test_accuracy": e["accuracy"],
               **{k: e[k] for k in ("val_loss", "val_accuracy") if k in e},
               "sparsity": e["sparsity"],
               "images_per_s": progress.images_per_s(),
               "wall_time_s": wall_before + time.time() - t_start}
        hostio.append_jsonl(r.trace_path, rec)
        lines[k] += 1
        if r.metrics_path:
          hostio.append_jsonl(r.metrics_path, {
              "epoch": round(t / spe, 4), "step": t,
              "train_loss": rec["loss"], "train_accuracy": rec["accuracy"],
              "test_loss": e["loss"], "test_accuracy": e["accuracy"],
              **{k: e[k] for k in ("val_loss", "val_accuracy") if k in e},
              "sparsity": e["sparsity"],
              "images_per_s": rec["images_per_s"],
              "wall_time_s": rec["wall_time_s"]})
        log(f"{desc}{f' [{k}]' if vmapped else ''} epoch {t / spe:.4g}/"
            f"{max_steps / spe:.4g}: loss {rec['loss']:.4f} acc "
            f"{rec['accuracy']:.4f} | "
            + (f"val acc {e['val_accuracy']:.4f} | " if "val_accuracy" in e
               else "")
            + f"test loss {e['loss']:.4f} acc "
            f"{e['accuracy']:.4f} | sparsity {e['sparsity']:.4f}")
        window[k] = []
      save(t)
    elif checkpoint_every_steps and t % checkpoint_every_steps == 0:
      save(t)
    if stop_at and t >= stop_at and t < max_steps and not done:
      if ckpt.latest_step() != t:
        save(t)
      progress.close()
      ckpt.close()
      return LoopResult([], [], t, t, wall_before + time.time() - t_start,
                        time.time() - t_run, progress.images_per_s())
  progress.close()
  if any(e is None for e in last_evals):   # finished in an earlier session
    last_evals = evaluate_all()
  if ckpt.latest_step() != t:
    save(t)
  ckpt.close()
  states = _unstack(state, n_runs) if vmapped else [jax.device_get(state)]
  return LoopResult(states, last_evals, None, t,
                    wall_before + time.time() - t_start, time.time() - t_run,
                    progress.images_per_s())


# ---------------------------------------------------------------------------
# Shared setup.
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
  return jax.jit(lambda k, s: method.init(k, s, ctx, method.tx(s.hp, ctx)))(
      key, state)


def _loss_grad_fn(model, x, y, batch_stats, mean, std):
  def loss(params):
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    logits, _ = model.apply(variables, data_lib.preprocess(x, mean, std),
                            train=True, mutable=["batch_stats"])
    return jnp.mean(engine.cross_entropy(logits, y))
  return jax.grad(loss)


def _normalized(model, params, batch_stats, arrays, mean, std, first):
  """The kernels whose output channels feed a normalisation, probed on one
  training batch at ``params`` (None for a model without BatchNorm)."""
  if not batch_stats:
    return None
  x = data_lib.preprocess(arrays["train_x"][first], mean, std)

  def fn(p):
    return model.apply({"params": p, "batch_stats": batch_stats}, x,
                       train=True, mutable=["batch_stats"])[0]
  return masks_lib.normalized_kernels(fn, params)


def evaluate_params(model, params, batch_stats, arrays, mean, std, mesh,
                    batch_size=1000) -> dict:
  """Test loss/accuracy of plain params (e.g. the dense model)."""
  ev = engine.make_eval(model, methods_lib.get_method("dense"), mean=mean,
                        std=std, batch_size=batch_size, mesh=mesh)
  st = base.RunState(step=jnp.int32(0), params=params,
                     batch_stats=batch_stats, opt_state=(), method_state=(),
                     hp={}, key=jax.random.PRNGKey(0))
  out = {k: float(v) for k, v in jax.device_get(
      ev(st, arrays["test_x"], arrays["test_y"])).items()}
  if "val_x" in arrays:
    val = jax.device_get(ev(st, arrays["val_x"], arrays["val_y"]))
    out.update(val_loss=float(val["loss"]), val_accuracy=float(val["accuracy"]))
  return out


# ---------------------------------------------------------------------------
# Dense training: `python -m train.train`.
# ---------------------------------------------------------------------------


def _val_fields(ev: dict) -> dict:
  """``val_accuracy``/``val_loss`` of an evaluation (None without a split)."""
  return {"val_accuracy": ev.get("val_accuracy"),
          "val_loss": ev.get("val_loss")}


def _n_val(ds) -> int:
  return 0 if ds.val_labels is None else int(len(ds.val_labels))


def dense_method(config) -> base.Method:
  return methods_lib.get_method(
      "dense", optimizer=config.get("optimizer", "sgd"),
      l1=config.get("l1", 0.0), fista=bool(config.get("fista", False)),
      nesterov=bool(config.get("nesterov", True)))


def train(config, workdir: str, *, overwrite: bool = False,
          allow_changes: bool = False,
          stop_after_epochs: Optional[int] = None, log: Log = print) -> dict:
  """Trains ``config.model`` on ``config.dataset``; resumable.

  Writes ``workdir/metrics.jsonl`` (one line per epoch), ``trace.jsonl``,
  orbax checkpoints in ``workdir/checkpoints``, ``summary.json`` and the
  final params + BN statistics in ``workdir/final`` (:func:`load_final`).
  Re-running with the same config resumes from the last checkpoint.

  Returns:
    The summary dict; when stopped early, ``{'stopped_at_epoch': e}``.
  """
  experiment.validate_config(config)
  method = dense_method(config)
  with hostio.workdir_lock(workdir):
    return _train(config, workdir, method, overwrite, allow_changes,
                  stop_after_epochs, log)


def _train(config, workdir, method, overwrite, allow_changes,
           stop_after_epochs, log):
  t0 = time.time()
  mesh = engine.make_mesh()
  ds, model, arrays = experiment.setup(config, mesh, log)   # data errors first
  resuming = bool(distributed.on_primary(
      lambda: experiment.prepare_workdir(workdir, config, overwrite,
                                     allow_changes), "prepare_workdir"))
  mean, std = ds.mean_std
  spe = len(ds.train_labels) // config.batch_size
  params, batch_stats = experiment.init_variables(model, config, ds.input_shape)
  prunable = masks_lib.prunable_tree(params)
  ctx = base.Context(prunable=prunable, steps_per_epoch=spe,
                     total_steps=int(config.num_epochs * spe),
                     schedule=experiment.schedule_fn(config, spe))
  hp = dense_hparams(config, method)
  state, events = init_run(method, ctx, params, batch_stats, hp, config.seed)
  log(f"model {config.model}: {report_lib.num_params(params):,} params; "
      f"{hostio.device_info()}; {spe} steps/epoch")
  res = run_loop(
      model=model, method=method, ctx=ctx, arrays=arrays, mesh=mesh,
      mean=mean, std=std, augment=ds.augment and config.augment,
      batch_size=config.batch_size,
      runs=[RunInit(state, config.seed, os.path.join(workdir, "trace.jsonl"),
                    events, os.path.join(workdir, "metrics.jsonl"))],
      vmapped=False, ckpt_dir=os.path.join(workdir, "checkpoints"),
      resuming=resuming, chunk_steps=config.chunk_steps,
      checkpoint_every_steps=config.checkpoint_every_steps,
      eval_batch_size=config.eval_batch_size,
      log_every_s=config.log_every_s, desc="train",
      stop_after_steps=(stop_after_epochs * spe if stop_after_epochs
                        else None), log=log)
  if res.stopped_at_step is not None:
    return {"stopped_at_epoch": res.stopped_at_step // spe}
  state, ev = res.states[0], res.evals[0]
  _, variables = method.export_network(state, model)
  # Saved by every process together (orbax); the rest is process 0's.
  hostio.save_tree(os.path.join(workdir, "final"),
                   {"params": variables["params"],
                    "batch_stats": variables.get("batch_stats", {})})
  if not distributed.is_primary():
    distributed.sync("train_summary")
    return {"process_index": jax.process_index(),
            "test_accuracy": ev["accuracy"], "test_loss": ev["loss"]}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    last = json.loads(f.readlines()[-1])
  sched = ctx.schedule(config.learning_rate)
  summary = {
      "model": config.model, "dataset": config.dataset, "seed": config.seed,
      "test_accuracy": ev["accuracy"], "test_loss": ev["loss"],
      **_val_fields(ev),
      "train_loss": last["train_loss"], "epochs": config.num_epochs,
      "steps": res.steps,
      "final_learning_rate": float(sched(max(res.steps - 1, 0))),
      "num_params": report_lib.num_params(state.params),
      "sparsity": ev["sparsity"],
      "wall_time_s": res.wall_time_s, "train_time_s": res.train_time_s,
      "images_per_s": res.images_per_s or last.get("images_per_s", 0.0),
      **hostio.device_info(),
      "data": {"source": ds.source, "path": ds.path,
               "train_examples": int(len(ds.train_labels)),
               "val_examples": _n_val(ds),
               "test_examples": int(len(ds.test_labels))},
      "config": json.loads(config.to_json_best_effort()),
  }
  # The completion marker, written last and atomically: a run killed before
  # this line is resumed, never taken as finished.
  hostio.write_json(os.path.join(workdir, "summary.json"), summary)
  distributed.sync("train_summary")
  log(f"done: test accuracy {summary['test_accuracy']:.4f}; "
      f"summary in {workdir}/summary.json ({time.time() - t0:.0f} s)")
  return summary


# ---------------------------------------------------------------------------
# Pruning: `python -m train.prune` and the sweep's cells.
# ---------------------------------------------------------------------------

# Fields that may differ between runs that share one vmapped program.
# (and the method's own per-run numbers, ``Method.hparams``).
VMAP_FIELDS = ("seed", "target_sparsity", "finetune_lr", "dense_checkpoint")


def method_of(config) -> base.Method:
  """The method of a pruning config, built from its own sub-config."""
  name = config.method
  if name not in methods_lib.METHOD_NAMES:
    methods_lib.get_method(name)      # raises, listing the valid names
  kwargs = dict(config.get(name, None) or {})
  return methods_lib.get_method(name, **kwargs)


# The dense sub-config's fields a pruning run reads when it starts from a
# dense checkpoint (so does not train it): the masked fine-tune's weight
# decay, and for a method from scratch its training schedule.
DENSE_READ_WITH_CHECKPOINT = {
    "dense": ("weight_decay",),
    "scratch": ("weight_decay", "num_epochs", "learning_rate", "schedule",
                "lr_steps", "lr_decay", "warmup_epochs")}


def ignored_fields(config, method) -> dict:
  """``{'field.path': why}``: the fields of a pruning config that this run
  does not read (besides other methods' sub-configs): the top-level
  ``finetune_lr`` where the method does not train at it, the dense
  model's training settings when it comes from ``dense_checkpoint``, and
  the method's own settings its configuration ignores
  (``Method.ignored``). A command refuses an override of any of them, and
  :func:`validate` a method setting among them that is not its default."""
  out = {}
  if method.start != "dense":
    out["finetune_lr"] = ("a method from scratch trains at "
                          "config.dense.learning_rate")
  elif not method.reads_lr:
    out["finetune_lr"] = (f"{method.name} has learning rates of its own "
                          f"(config.{method.name}.*_lr)")
  if config.get("dense_checkpoint", ""):
    read = DENSE_READ_WITH_CHECKPOINT[method.start]
    for k in config.dense.keys():
      if k not in read and k not in SHARED_WITH_DENSE:
        out[f"dense.{k}"] = ("the dense model comes from "
                             "config.dense_checkpoint, so is not trained here")
  for k, why in method.ignored.items():
    out[f"{method.name}.{k}"] = why
  return out


def validate(config) -> base.Method:
  """Fails early, before anything is written, on a config that cannot run
  or that sets a field the run would ignore."""
  experiment.check_numbers(config)     # budget_epochs > 0, no NaN, ...
  stray = [k for k in experiment.DENSE_TRAINING_FIELDS if k in config]
  if stray:
    raise ValueError(
        f"config.{', config.'.join(stray)}: a pruning run does not read "
        "these at the config's top level (its dense model trains with "
        "config.dense.*, each method with its own settings); remove them, "
        "or set them under config.dense.")
  t = config.target_sparsity
  if not 0.0 < t < 1.0:
    raise ValueError(f"target_sparsity must be in (0, 1), got {t}.")
  method = method_of(config)
  if method.name == "dense":
    raise ValueError("method 'dense' does not prune: use python -m "
                     "train.train.")
  experiment.validate_config(dense_config(config))
  for pat in config.get("prune_exclude", ()):
    try:
      re.compile(pat)
    except re.error as e:
      raise ValueError(f"config.prune_exclude: {pat!r} is not a valid "
                       f"regular expression ({e}).") from None
  sub = config.get(method.name, None) or {}
  defaults = methods_lib.method_config(method.name)
  for k, why in method.ignored.items():
    if k in sub and k in defaults and sub[k] != defaults[k]:
      raise ValueError(
          f"config.{method.name}.{k} = {sub[k]!r} would be ignored: {why} "
          f"(its default is {defaults[k]!r}); drop it or change the mode.")
  for k, v in sub.items():
    vals = v if isinstance(v, (tuple, list)) else (v,)
    if any(isinstance(x, (int, float)) and not isinstance(x, bool) and x < 0
           for x in vals):
      raise ValueError(f"config.{method.name}.{k} must be >= 0, got {v}.")
  path = config.get("dense_checkpoint", "")
  if path and not os.path.isdir(path):
    raise ValueError(f"config.dense_checkpoint {path!r} does not exist: give "
                     "the workdir of a finished `python -m train.train` run, "
                     "or leave it empty to train the dense model here.")
  return method


# Fields a pruning run shares with its dense run (the same data, model, seed
# and validation split).
SHARED_WITH_DENSE = ("model", "dataset", "data_dir", "download", "seed",
                     "train_subset",
                     "test_subset", "val_size", "val_seed", "batch_size",
                     "eval_batch_size")


def dense_config(config):
  """The dense-training config, sharing data, model and seed with pruning."""
  d = copy.deepcopy(config.dense)
  with d.unlocked():
    for k in SHARED_WITH_DENSE:
      d[k] = config[k]
  return d


def check_dense_split(config, path: str) -> None:
  """Refuses a dense checkpoint trained on other data than the pruning run
  (e.g. on the images this run holds out for validation)."""
  f = os.path.join(path, "summary.json")
  if not os.path.exists(f):
    return
  try:
    with open(f) as fh:
      got = json.load(fh).get("config", {})
  except (OSError, ValueError) as e:
    raise ValueError(f"{f} is unreadable ({e}); re-run the dense training "
                     "(python -m train.train) into that workdir.") from None
  keys = ("dataset", "train_subset", "val_size", "val_seed")
  old = {k: got.get(k, 0) for k in keys}
  new = {k: config.get(k, 0) for k in keys}
  if old != new:
    diff = ", ".join(f"{k}: {old[k]!r} there, {new[k]!r} here" for k in keys
                     if old[k] != new[k])
    raise ValueError(
        f"dense_checkpoint {path!r} was trained on other data than this run "
        f"({diff}); with a different validation split its training images "
        "include this run's validation images. Train the dense model with "
        "the same data settings (or pass them here, e.g. "
        f"--config.val_size={old['val_size']}), or leave dense_checkpoint "
        "empty to train one here.")


def load_dense(config, workdir, model, input_shape, log):
  """Params + BN stats of the dense model: from config.dense_checkpoint or
  by training one in ``workdir/dense`` (resumable)."""
  path = config.get("dense_checkpoint", "")
  if not path:
    log("no dense_checkpoint given: training the dense model first "
        f"in {workdir}/dense")
    train(dense_config(config), os.path.join(workdir, "dense"), log=log)
    path = os.path.join(workdir, "dense")
  check_dense_split(config, path)
  want_p, want_bs = experiment.init_variables(model, config, input_shape)
  try:
    loaded = hostio.load_final(path)
  except FileNotFoundError as e:
    raise ValueError(f"dense_checkpoint {path!r} holds no finished run "
                     "(expected DIR/final from train.train).") from e
  got = {"params": loaded["params"], "batch_stats": loaded.get(
      "batch_stats", {}) or {}}
  want = {"params": want_p, "batch_stats": want_bs}
  shapes = lambda t: jax.tree.map(lambda x: tuple(np.shape(x)), t)
  if (jax.tree.structure(got) != jax.tree.structure(want) or
      shapes(got) != shapes(want)):
    raise ValueError(
        f"dense checkpoint {path!r} does not match model {config.model!r} "
        f"on {config.dataset!r}: its parameter tree or shapes differ. Train "
        "it with the same model (python -m train.train) or leave "
        "dense_checkpoint empty to train one here.")
  cast = lambda t, ref: jax.tree.map(
      lambda a, r: jnp.asarray(a, r.dtype), t, ref)
  return cast(got["params"], want_p), cast(got["batch_stats"], want_bs), path


def budget_steps(config, method, spe: int) -> int:
  """The run's step budget: ``budget_epochs`` for methods that start from
  the dense model, ``dense.num_epochs + budget_epochs`` from scratch."""
  epochs = config.budget_epochs
  if method.start != "dense":
    epochs += config.dense.num_epochs
  return int(round(epochs * spe))


def dense_hparams(config, method) -> dict:
  """The per-run numbers of a dense-training config (see ``RunState.hp``)."""
  return make_hp({"target": 0.0, "n_zero": 0, "lr": config.learning_rate,
                  "weight_decay": config.weight_decay,
                  "momentum": config.momentum,
                  **method.hparams})


def run_hparams(config, method, n_prunable: int) -> dict:
  """The per-run numbers of a pruning config (see ``RunState.hp``)."""
  if method.start == "dense":
    lr = config.finetune_lr
  else:
    lr = config.dense.learning_rate
  hp = {"target": config.target_sparsity,
        "n_zero": int(round(config.target_sparsity * n_prunable)),
        "lr": lr, "weight_decay": config.dense.weight_decay,
        "momentum": config.momentum}
  sub = config.get(method.name, None) or {}
  for k, v in method.hparams.items():
    hp[k] = sub.get(k, v)
  return make_hp(hp)


def _static_view(config, method):
  """The config without the fields vmapped runs may differ in."""
  d = json.loads(config.to_json_best_effort())
  for k in VMAP_FIELDS + experiment.NON_RESULT_FIELDS:
    d.pop(k, None)
  if isinstance(d.get(method.name), dict):
    for k in method.hparams:
      d[method.name].pop(k, None)
  return d


def prune(config, workdir: str, *, overwrite: bool = False,
          allow_changes: bool = False,
          stop_after_steps: Optional[int] = None,
          wait_for_dense: Optional[Callable[[], None]] = None,
          log: Log = print) -> dict:
  """Prunes with ``config.method`` to ``config.target_sparsity``; resumable.

  Returns the summary, or ``{'stopped_at_step': s}`` when stopped early.
  ``wait_for_dense``: see :func:`prune_runs`.
  """
  out = prune_runs([config], [workdir], overwrite=overwrite,
                   allow_changes=allow_changes,
                   stop_after_steps=stop_after_steps,
                   wait_for_dense=wait_for_dense, log=log)
  return out[0]


def prune_runs(configs: Sequence, workdirs: Sequence[str], *,
               group_dir: Optional[str] = None, vmap: bool = False,
               overwrite: bool = False, allow_changes: bool = False,
               stop_after_steps: Optional[int] = None,
               wait_for_dense: Optional[Callable[[], None]] = None,
               log: Log = print) -> list[dict]:
  """Runs one or several pruning runs; several as one vmapped program.

  Vmapped runs must share the method and every setting but
  :data:`VMAP_FIELDS` (seed, target sparsity, learning rates, lambdas,
  dense checkpoint); their checkpoints go to ``group_dir``.

  ``wait_for_dense``: for a method that starts from scratch, whose dense
  model serves only as the reference of its summary (accuracy, parameter
  and MAC counts), a call that returns once ``dense_checkpoint`` holds a
  finished run: the run trains first and calls it before it loads the dense
  model (a sweep worker trains such a cell while another trains the shared
  dense model). Ignored for methods that start from the dense model.
  """
  methods = [validate(c) for c in configs]
  with contextlib.ExitStack() as stack:
    for d in list(workdirs) + ([group_dir] if group_dir else []):
      stack.enter_context(hostio.workdir_lock(d))
    return _prune_runs(configs, workdirs, methods, group_dir=group_dir,
                       vmap=vmap, overwrite=overwrite,
                       allow_changes=allow_changes,
                       stop_after_steps=stop_after_steps,
                       wait_for_dense=wait_for_dense, log=log)


def _prune_runs(configs, workdirs, methods, *, group_dir, vmap, overwrite,
                allow_changes, stop_after_steps, wait_for_dense, log):
  t0 = time.time()
  method = methods[0]
  if len(configs) > 1:
    if not vmap:
      raise ValueError("several configs run together only with vmap=True.")
    ref = _static_view(configs[0], method)
    for c in configs[1:]:
      if c.method != method.name or _static_view(c, method) != ref:
        raise ValueError("vmapped runs may differ only in "
                         f"{', '.join(VMAP_FIELDS)} and the method's "
                         f"per-run settings ({', '.join(method.hparams)}).")
  ckpt_dir = os.path.join(group_dir or workdirs[0], "checkpoints")
  c0 = configs[0]
  mesh = engine.make_mesh()
  dcfg = dense_config(c0)
  ds, model, arrays = experiment.setup(dcfg, mesh, log)     # data errors first
  resuming = [bool(distributed.on_primary(
      lambda c=c, w=w: experiment.prepare_workdir(w, c, overwrite, allow_changes),
      "prepare_workdir")) for c, w in zip(configs, workdirs)]
  mean, std = ds.mean_std
  spe = len(ds.train_labels) // c0.batch_size
  flt = masks_lib.prunable_filter(c0.get("prune_exclude", ()))
  template, template_bs = experiment.init_variables(model, c0, ds.input_shape)
  prunable = masks_lib.prunable_tree(template, flt)
  groups = (surgery.channel_groups(
      model, {"params": template, "batch_stats": template_bs})
            if surgery.supports(model) else ())
  if not any(jax.tree.leaves(prunable)):
    raise ValueError("prune_exclude leaves no prunable weights.")
  n_prunable = base.num_prunable(template, prunable)
  total = budget_steps(c0, method, spe)
  if method.start == "dense":
    sched = lambda lr: optax.cosine_decay_schedule(lr, max(1, total))
  else:
    sched = experiment.schedule_fn(dcfg, spe, total / spe)
  costs = {}
  if method.structured and groups:
    tvars = {"params": template, "batch_stats": template_bs}
    costs = {"params": surgery.cost_terms(tvars, groups, "params"),
             "macs": surgery.cost_terms(tvars, groups, "macs", report_lib.
                                        count_macs(model, tvars, (1,) + tuple(
                                            ds.input_shape))["layers"])}
  ctx = base.Context(prunable=prunable, steps_per_epoch=spe,
                     total_steps=total, schedule=sched, groups=groups,
                     costs=costs, normalized=_normalized(
                         model, template, template_bs, arrays, mean, std,
                         epoch_first_batch(c0.seed, len(ds.train_labels),
                                           c0.batch_size)))

  def dense_of(c, wd):
    dense_params, dense_bs, dense_path = load_dense(c, wd, model,
                                                    ds.input_shape, log)
    dense_acc = evaluate_params(model, dense_params, dense_bs, arrays, mean,
                                std, mesh, c.eval_batch_size)
    return dense_params, dense_bs, dense_acc, dense_path

  later = method.start != "dense" and wait_for_dense is not None
  runs, dense_info = [], []
  for c, wd in zip(configs, workdirs):
    if not later:
      dense_info.append(dense_of(c, wd))
    if method.start == "dense":
      params, bs = dense_info[-1][:2]
    else:
      params, bs = experiment.init_variables(model, c, ds.input_shape)
    first = epoch_first_batch(c.seed, len(ds.train_labels), c.batch_size)
    grad_fn = _loss_grad_fn(model, arrays["train_x"][first],
                            arrays["train_y"][first], bs, mean, std)
    hp = run_hparams(c, method, n_prunable)
    state, events = init_run(method, ctx._replace(grad_fn=grad_fn), params,
                             bs, hp, c.seed)
    runs.append(RunInit(state, c.seed, os.path.join(wd, "trace.jsonl"),
                        events))
  log(f"{method.name}: {method.description}; up to {ctx.total_steps} "
      f"steps ({ctx.total_steps / spe:.1f} epochs) from {method.start}"
      + (f"; {len(runs)} runs vmapped" if len(runs) > 1 else ""))
  res = run_loop(
      model=model, method=method, ctx=ctx, arrays=arrays, mesh=mesh,
      mean=mean, std=std, augment=ds.augment and c0.augment,
      batch_size=c0.batch_size, runs=runs, vmapped=len(runs) > 1 or vmap,
      ckpt_dir=ckpt_dir, resuming=all(resuming),
      chunk_steps=c0.chunk_steps,
      checkpoint_every_steps=c0.checkpoint_every_steps,
      eval_batch_size=c0.eval_batch_size, log_every_s=c0.log_every_s,
      desc=method.name, stop_after_steps=stop_after_steps, log=log)
  if res.stopped_at_step is not None:
    return [{"stopped_at_step": res.stopped_at_step}] * len(runs)
  if later:
    log("waiting for the dense model (the reference of the summary)")
    wait_for_dense()
    dense_info = [dense_of(c, wd) for c, wd in zip(configs, workdirs)]
  out = []
  for c, wd, state, ev, (dense_params, _, dense_acc, dense_path) in zip(
      configs, workdirs, res.states, res.evals, dense_info):
    extra = {"start": method.start, "description": method.description,
             "dense_checkpoint": dense_path, "steps": int(state.step),
             "budget_epochs": c.budget_epochs,
             "total_epochs_with_dense": int(state.step) / spe + (
                 c.dense.num_epochs if method.start == "dense" else 0),
             "vmapped_runs": len(runs),
             "images_per_s": res.images_per_s}
    if method.summary:
      extra.update(method.summary(state))
    out.append(finalize(
        wd, c, method=method, model=model, ds=ds, state=state, ev=ev,
        prunable=prunable, dense_params=dense_params,
        dense_eval=dense_acc, epochs=int(state.step) / spe,
        wall_time_s=res.wall_time_s if len(runs) == 1 else
        (time.time() - t0), log=log, extra=extra))
  return out


def epoch_first_batch(seed: int, n: int, batch_size: int) -> np.ndarray:
  """The indices of the first training batch of a run (SNIP's minibatch)."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), 1000)
  return data_lib.epoch_permutation(jax.random.fold_in(key, 0), n,
                                    batch_size)[0]


def mask_counts(state: base.RunState, prunable) -> dict:
  """Sparsity by the method's masks next to the exact zeros of its weights.

  ``mask_sparsity``: the fraction of prunable positions the masks switch
  off; ``kept_but_zero``: prunable weights the masks keep that are exactly
  zero (they count as pruned in ``sparsity``, which counts exact zeros). Both
  None for a method without masks in its optimizer state.
  """
  try:
    masks = base.masks_of(state.opt_state)
  except ValueError:
    return {"mask_sparsity": None, "kept_but_zero": None}
  treedef = jax.tree.structure(prunable)
  which = jax.tree.leaves(prunable)
  m_l = treedef.flatten_up_to(jax.device_get(masks))
  w_l = treedef.flatten_up_to(jax.device_get(state.params))
  n = off = kept_zero = 0
  for w, m, p in zip(which, m_l, w_l):
    if not w:
      continue
    m = np.broadcast_to(np.asarray(m, bool), np.shape(p))
    n += m.size
    off += int((~m).sum())
    kept_zero += int((m & (np.asarray(p) == 0)).sum())
  return {"mask_sparsity": off / n if n else 0.0,
          "kept_but_zero": kept_zero}


def finalize(workdir, config, *, method, model, ds, state, ev, prunable,
             dense_params, dense_eval, epochs, wall_time_s, log,
             extra) -> dict:
  """Writes what every pruning run leaves behind and returns the summary:
  ``summary.json``, ``pruned/`` (params, BN stats, masks), ``report.md`` and
  the PNG plots."""
  export_model, variables = method.export_network(state, model)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  masks = base.masks_from_params(params, prunable)
  flt = masks_lib.filter_from_tree(prunable)
  rep = masks_lib.sparsity_report(params, prunable=flt)
  # Counts against the dense network: a structured method's export is a
  # smaller network (its removed weights count as pruned).
  dense_rep = masks_lib.sparsity_report(dense_params, prunable=flt)
  shrunk = rep["num_params"] != dense_rep["num_params"]
  in_shape = (1,) + tuple(ds.input_shape)
  macs = report_lib.count_macs(export_model, variables, in_shape)
  # The dense network's shapes (the run's own BN statistics have them).
  dense_vars = {"params": dense_params}
  if state.batch_stats:
    dense_vars["batch_stats"] = state.batch_stats
  dense_macs = (report_lib.count_macs(model, dense_vars, in_shape)["macs"]
                if shrunk else macs["macs"])
  trace_path = os.path.join(workdir, "trace.jsonl")
  trace = ([json.loads(l) for l in open(trace_path)]
           if distributed.is_primary() else [])
  n_prunable = dense_rep["prunable_params"]
  n_zero = round(config.target_sparsity * n_prunable)
  n_pruned = n_prunable - rep["prunable_nonzero"]
  structured = {}
  if shrunk or method.structured:
    speed = report_lib.measure_speedup(
        model, dense_vars, export_model, variables, in_shape[1:],
        batch_size=config.eval_batch_size)
    sizes = lambda m, v: {g.name: g.size for g in surgery.prunable_groups(
        surgery.channel_groups(m, v))}
    before = sizes(model, dense_vars)
    after = sizes(export_model, variables)
    n_ch = sum(before.values())
    removed = n_ch - sum(after.values())
    structured = {"architecture": surgery.architecture(export_model),
                  "channels": n_ch, "channels_removed": removed,
                  "channel_sparsity": removed / max(n_ch, 1),
                  "layer_channels": {k: [after[k], before[k]]
                                     for k in before},
                  "params_dense": dense_rep["num_params"],
                  "params_shrunk": rep["num_params"], **speed}
  counts = mask_counts(state, prunable)
  if counts.get("kept_but_zero"):
    log(f"note: {counts['kept_but_zero']} prunable weights are kept by the "
        "masks but exactly zero (e.g. regrown at zero and not moved since); "
        f"mask sparsity {counts['mask_sparsity']:.4%}, exact-zero sparsity "
        f"{rep['sparsity']:.4%}.")
  if method.structured:
    structured["match"] = method.match
    structured["macs_dense"] = int(dense_macs)
    structured["macs_shrunk"] = int(macs["macs"])
    done = {"channels": structured.get("channels_removed", 0) >= round(
                config.target_sparsity * structured.get("channels", 0)),
            "macs": macs["macs"] <= (1 - config.target_sparsity) * dense_macs
                    * (1 + 1e-6),
            "params": rep["num_params"] <= (1 - config.target_sparsity)
                      * dense_rep["num_params"] * (1 + 1e-6)}[method.match]
  summary = {
      "method": method.name, "model": config.model,
      "dataset": config.dataset, "num_classes": ds.num_classes,
      "seed": config.seed,
      "target_sparsity": config.target_sparsity,
      "sparsity": n_pruned / max(n_prunable, 1),
      **counts,
      "reached_target": done if method.structured else n_pruned >= n_zero,
      "compression_ratio": dense_rep["num_params"] / max(
          rep["stored_params"], 1),
      "prunable_compression_ratio": (
          n_prunable / max(rep["prunable_nonzero"], 1)),
      "stored_params": rep["stored_params"],
      "theoretical_speedup": dense_macs / max(macs["macs_sparse"], 1),
      **structured,
      "test_accuracy": ev["accuracy"], "test_loss": ev["loss"],
      **_val_fields(ev),
      "dense_test_accuracy": dense_eval["accuracy"],
      "dense_val_accuracy": dense_eval.get("val_accuracy"),
      "num_params": dense_rep["num_params"],
      "num_nonzero": rep["num_nonzero"],
      "prunable_params": n_prunable,
      "prunable_nonzero": rep["prunable_nonzero"],
      "macs_dense": dense_macs, "macs_sparse": macs["macs_sparse"],
      "epochs": epochs,
      "pruned_layers": [l["name"] for l in rep["layers"] if l["prunable"]],
      "wall_time_s": wall_time_s,
      **hostio.device_info(),
      **extra,
      "config": json.loads(config.to_json_best_effort()),
  }
  hostio.save_tree(os.path.join(workdir, "pruned"),
                   {"params": params, "batch_stats": batch_stats,
                    "masks": masks})
  if distributed.is_primary():
    report_lib.plot_filter_norms(trace, os.path.join(workdir,
                                                     "filter_norms.png"))
    report_lib.write_report(workdir, summary, params, masks, macs, flt)
    report_lib.plot_trace(trace, os.path.join(workdir, "sparsity_loss.png"))
    report_lib.plot_weight_histograms(dense_params, params, os.path.join(
        workdir, "weight_histograms.png"), flt)
    report_lib.plot_layer_sparsity(params, os.path.join(
        workdir, "layer_sparsity.png"), prunable=flt)
  # The completion marker (a sweep takes a cell with it as finished):
  # written last and atomically, so a kill before it leaves a resumable run.
  hostio.write_json(os.path.join(workdir, "summary.json"), summary)
  # Every process sees the marker before any goes on (a sweep's next cell).
  distributed.sync("prune_summary")
  log(f"done: sparsity {summary['sparsity']:.4f}, test accuracy "
      f"{summary['test_accuracy']:.4f} (dense "
      f"{summary['dense_test_accuracy']:.4f}), "
      f"{summary['compression_ratio']:.1f}x fewer params, "
      f"{summary['theoretical_speedup']:.1f}x fewer MACs; {workdir}/report.md")
  return summary


def load_pruned(workdir: str):
  """The network a finished pruning run exported: ``(model, variables)``.

  For a structured method the model is the smaller network (built from the
  ``architecture`` in ``summary.json``); for the others the original model
  with its sparse params. ``model.apply(variables, x, train=False)``.

  >>> model, variables = load_pruned("runs/gat_lenet5")
  """
  path = os.path.join(workdir, "summary.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: {workdir} is not a "
                            "finished pruning run.")
  with open(path) as f:
    s = json.load(f)
  arch = {k: tuple(v) if isinstance(v, list) else v
          for k, v in (s.get("architecture") or {}).items()}
  model = models_lib.get_model(s["model"], s.get("num_classes", 10), **arch)
  saved = hostio.load_final(workdir, "pruned")
  variables = {"params": saved["params"]}
  if saved.get("batch_stats"):
    variables["batch_stats"] = saved["batch_stats"]
  return model, variables


__all__ = ["RunInit", "load_pruned", "LoopResult", "run_loop", "train", "prune",
           "prune_runs", "method_of", "validate", "dense_config",
           "load_dense", "budget_steps", "run_hparams", "finalize",
           "make_state", "make_hp", "init_run", "evaluate_params", "VMAP_FIELDS"]
