"""Training as pure jitted functions over pytrees, plus the host-side loop.

Pure, jitted pieces (no hidden state; explicit PRNG keys):

* :func:`make_train_step` -> ``step(state, images, labels, idx, key) ->
  (state, metrics)``: gathers the batch ``idx`` from the device-resident
  dataset, augments it on the device, takes one optimizer step.
* :func:`make_eval_fn` -> ``evaluate(params, batch_stats, images, labels)``.

Data parallelism uses ``jax.sharding``: a 1-D :func:`make_mesh` over all
local devices, the batch sharded along ``'data'``, params and optimizer
state replicated. The same code runs on 1 GPU, 8 GPUs, a TPU slice or a CPU
with ``--xla_force_host_platform_device_count``.

Host-side helpers: :class:`Checkpointer` (orbax, resumable), :class:`Progress`
(images/s and ETA), :func:`append_jsonl`, and :func:`train`, the dense
training loop behind ``python -m train.train``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
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
from proxnag_jax import masks as masks_lib
from proxnag_jax import models as models_lib
from proxnag_jax import report as report_lib
from proxnag_jax import transforms

PyTree = Any


class TrainingDiverged(FloatingPointError):
  """The loss became NaN/inf; the last good checkpoint is left intact."""


@flax.struct.dataclass
class TrainState:
  """Everything a train step changes: a pytree."""

  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: optax.OptState


def create_state(params, batch_stats, tx) -> TrainState:
  return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                    batch_stats=batch_stats, opt_state=tx.init(params))


def eval_params(state: TrainState) -> PyTree:
  """The params to evaluate: Prox-NAG's sparse iterate if there is one."""
  try:
    return transforms.sparse_params(state.opt_state)
  except ValueError:
    return state.params


# ---------------------------------------------------------------------------
# Optimizers and schedules from a config.
# ---------------------------------------------------------------------------

OPTIMIZERS = ("sgd", "proxnag")
SCHEDULES = ("cosine", "step", "constant")


def make_schedule(config, steps_per_epoch: int, num_epochs=None):
  """Learning-rate schedule in steps: cosine / step / constant + warm-up."""
  num_epochs = num_epochs if num_epochs is not None else config.num_epochs
  total = max(1, int(num_epochs * steps_per_epoch))
  warm = int(config.get("warmup_epochs", 0) * steps_per_epoch)
  lr = config.learning_rate
  kind = config.get("schedule", "cosine")
  if kind == "cosine":
    main = optax.cosine_decay_schedule(lr, max(1, total - warm))
  elif kind == "step":
    bounds = {int(e * steps_per_epoch) - warm: config.get("lr_decay", 0.1)
              for e in config.get("lr_steps", ())}
    main = optax.piecewise_constant_schedule(lr, bounds)
  elif kind == "constant":
    main = optax.constant_schedule(lr)
  else:
    raise ValueError(f"unknown schedule {kind!r}; valid: {SCHEDULES}.")
  if warm:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warm), main], [warm])
  return main


def make_optimizer(config, schedule, prunable_mask=None,
                   l1: Optional[float] = None):
  """``sgd`` (Nesterov) or ``proxnag``, with L2 weight decay.

  Weight decay is added to the gradient (``g + wd * w``), as in PyTorch's
  SGD, before the optimizer. For ``proxnag`` the L1 shrinkage applies to
  ``prunable_mask`` leaves only and ``l1`` is injected as a hyperparameter,
  so a pruning loop can change it between rounds without re-initialising.
  """
  kind = config.get("optimizer", "sgd")
  parts = []
  if config.get("weight_decay", 0.0):
    parts.append(optax.add_decayed_weights(config.weight_decay))
  if kind == "sgd":
    parts.append(optax.sgd(schedule, momentum=config.get("momentum", 0.9),
                           nesterov=config.get("nesterov", True)))
  elif kind == "proxnag":
    inner = optax.inject_hyperparams(transforms.proxnag, static_args=("mask",))
    parts.append(inner(learning_rate=schedule,
                       l1=config.get("l1", 0.0) if l1 is None else l1,
                       momentum=config.get("momentum", 0.9),
                       fista=bool(config.get("fista", False)),
                       mask=prunable_mask))
  else:
    raise ValueError(f"unknown optimizer {kind!r}; valid: {OPTIMIZERS}.")
  return optax.chain(*parts)


# ---------------------------------------------------------------------------
# Sharding.
# ---------------------------------------------------------------------------


def make_mesh(devices=None) -> Mesh:
  devices = devices if devices is not None else jax.devices()
  return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def put_replicated(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))


# ---------------------------------------------------------------------------
# Pure steps.
# ---------------------------------------------------------------------------


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def make_train_step(model, tx, *, mean, std, augment: bool,
                    mesh: Mesh, donate: bool = True) -> Callable:
  """A jitted ``(state, images, labels, idx, key) -> (state, metrics)``.

  ``images``/``labels`` are the whole device-resident training set (uint8,
  replicated); ``idx`` the batch's indices (sharded over ``'data'``).
  """
  batch_sh = batch_sharded(mesh)

  def step(state: TrainState, images, labels, idx, key):
    x = jax.lax.with_sharding_constraint(images[idx], batch_sh)
    y = jax.lax.with_sharding_constraint(labels[idx], batch_sh)
    if augment:
      x = data_lib.augment(key, x)
    x = data_lib.preprocess(x, mean, std)

    def loss_fn(params):
      variables = {"params": params}
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
    new = TrainState(step=state.step + 1, params=params,
                     batch_stats=batch_stats, opt_state=opt_state)
    metrics = {"loss": loss,
               "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}
    return new, metrics

  rep = replicated(mesh)
  return jax.jit(step, donate_argnums=(0,) if donate else (),
                 out_shardings=(rep, rep))


def make_eval_fn(model, *, mean, std, batch_size: int, mesh: Mesh) -> Callable:
  """``evaluate(params, batch_stats, images, labels) -> {'loss','accuracy'}``.

  Runs over the whole (device-resident) split in batches; a last partial
  batch is padded and weighted out, so every example counts once.
  """
  ndev = mesh.devices.size
  batch_size = max(ndev, (batch_size // ndev) * ndev)
  batch_sh = batch_sharded(mesh)

  @jax.jit
  def eval_batch(params, batch_stats, images, labels, idx, weight):
    x = jax.lax.with_sharding_constraint(images[idx], batch_sh)
    y = labels[idx]
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    logits = model.apply(variables, data_lib.preprocess(x, mean, std),
                         train=False)
    loss = cross_entropy(logits, y)
    correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    return jnp.sum(loss * weight), jnp.sum(correct * weight)

  def evaluate(params, batch_stats, images, labels):
    n = int(labels.shape[0])
    steps = math.ceil(n / batch_size)
    tot_loss, tot_correct = 0.0, 0.0
    for s in range(steps):
      idx = np.arange(s * batch_size, (s + 1) * batch_size)
      weight = (idx < n).astype(np.float32)
      idx = np.minimum(idx, n - 1)
      l, c = eval_batch(params, batch_stats, images, labels,
                        jax.device_put(idx, batch_sh),
                        jax.device_put(weight, batch_sh))
      tot_loss += l
      tot_correct += c
    return {"loss": float(tot_loss) / n, "accuracy": float(tot_correct) / n}

  return evaluate


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
    return (f"{self.desc} {self.done}/{self.total} ({pct:.0f}%) | "
            f"{ips:,.0f} img/s | ETA {_fmt_time(left)} | {extra}")

  def close(self):
    if self.tty:
      self.stream.write("\n")
      self.stream.flush()


def append_jsonl(path: str, record: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record, default=_json_default) + "\n")


def _json_default(o):
  if isinstance(o, (np.floating, np.integer)):
    return o.item()
  if isinstance(o, (np.ndarray, jax.Array)):
    return np.asarray(o).tolist()
  return str(o)


def write_json(path: str, obj: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=_json_default)
  os.replace(tmp, path)


class Checkpointer:
  """Orbax checkpoints of a pytree plus JSON metadata, in ``workdir/name``."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.dir = os.path.abspath(directory)
    self.mngr = ocp.CheckpointManager(
        self.dir, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> Optional[int]:
    return self.mngr.latest_step()

  def save(self, step: int, tree: PyTree, meta: dict) -> None:
    """Saves (replacing a checkpoint of the same step) and waits."""
    if step in self.mngr.all_steps():
      self.mngr.delete(step)
    self.mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree),
        meta=ocp.args.JsonSave(json.loads(json.dumps(
            meta, default=_json_default)))), force=True)
    self.mngr.wait_until_finished()

  def restore(self, template: PyTree, step: Optional[int] = None):
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    out = self.mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

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
                     "eval_batch_size", "workdir")


def _comparable(cfg: dict) -> dict:
  return {k: v for k, v in cfg.items() if k not in NON_RESULT_FIELDS}


def prepare_workdir(workdir: str, config, overwrite: bool = False) -> bool:
  """Creates ``workdir`` or checks it holds a run of the same config.

  Returns True if a run of this config is there to resume. A workdir holding
  a different config raises unless ``overwrite`` (which wipes it).
  """
  path = os.path.join(workdir, "config.json")
  cfg = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    if not overwrite:
      with open(path) as f:
        old = json.load(f)
      if _comparable(old) != _comparable(cfg):
        diff = sorted(k for k in set(old) | set(cfg)
                      if k not in NON_RESULT_FIELDS and old.get(k) != cfg.get(k))
        raise ValueError(
            f"workdir {workdir!r} holds a run of a different config (fields "
            f"differ: {', '.join(diff)}). Use another --workdir, or pass "
            "--overwrite to discard it.")
      return True
    shutil.rmtree(workdir)
  os.makedirs(workdir, exist_ok=True)
  write_json(path, cfg)
  return False


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
          "device_kind": devs[0].device_kind}


# ---------------------------------------------------------------------------
# Setup shared by the CLIs: data, model, variables.
# ---------------------------------------------------------------------------


def validate_config(config) -> None:
  """Fails early, with what to do, on a config that cannot run."""
  if config.model not in models_lib.MODEL_NAMES:
    models_lib.get_model(config.model)   # raises, listing the valid names
  data_lib.check_dataset_name(config.dataset)
  for name in ("num_epochs", "batch_size", "learning_rate"):
    if config.get(name, 1) <= 0:
      raise ValueError(f"config.{name} must be positive, got "
                       f"{config.get(name)}.")
  if config.get("optimizer", "sgd") not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: "
                     f"{', '.join(OPTIMIZERS)}.")
  if config.get("schedule", "cosine") not in SCHEDULES:
    raise ValueError(f"unknown schedule {config.schedule!r}; valid: "
                     f"{', '.join(SCHEDULES)}.")


def setup(config, mesh: Mesh, log=print):
  """Loads data to the devices and builds the model: the shared prologue."""
  validate_config(config)
  ds = data_lib.load_dataset(config.dataset, config.get("data_dir", ""),
                             config.get("train_subset", 0),
                             config.get("test_subset", 0))
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
  return ds, model, arrays


def init_variables(model, config, input_shape):
  key = jax.random.PRNGKey(config.seed)
  v = models_lib.init_model(model, jax.random.fold_in(key, 0),
                            (1,) + tuple(input_shape))
  return v["params"], v.get("batch_stats", {})


def epoch_key(config, epoch: int) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(config.seed), 1000 + epoch)


def run_epoch(state, *, step_fn, arrays, config, epoch: int, mesh: Mesh,
              progress: Progress, on_step=None, start: int = 0,
              key: Optional[jax.Array] = None):
  """One pass over the (shuffled) training set. Returns (state, metrics).

  The batch order and augmentation keys derive from ``key`` (default
  :func:`epoch_key` of ``epoch``), so a run resumed at batch ``start`` of an
  epoch sees exactly the batches it would have seen. ``on_step(state,
  metrics, i)`` may return ``(state, stop)`` to end the epoch early.
  """
  key = epoch_key(config, epoch) if key is None else key
  n = int(arrays["train_y"].shape[0])
  order = data_lib.epoch_permutation(jax.random.fold_in(key, 0), n,
                                     config.batch_size)
  bsh = batch_sharded(mesh)
  losses, accs = [], []
  for i in range(start, len(order)):
    state, m = step_fn(state, arrays["train_x"], arrays["train_y"],
                       jax.device_put(order[i], bsh),
                       jax.random.fold_in(key, i + 1))
    losses.append(m["loss"])
    accs.append(m["accuracy"])
    if time.time() - progress.last >= progress.every:
      progress.update(1, loss=float(m["loss"]))
    else:
      progress.update(1)
    if on_step is not None:
      state, stop = on_step(state, m, i)
      if stop:
        break
  if not losses:
    return state, {"train_loss": float("nan"), "train_accuracy": float("nan"),
                   "steps": 0}
  loss = float(jnp.mean(jnp.stack(losses)))
  acc = float(jnp.mean(jnp.stack(accs)))
  return state, {"train_loss": loss, "train_accuracy": acc,
                 "steps": len(losses)}


# ---------------------------------------------------------------------------
# Dense training: the loop behind `python -m train.train`.
# ---------------------------------------------------------------------------


def train(config: ml_collections.ConfigDict, workdir: str, *,
          overwrite: bool = False, stop_after_epochs: Optional[int] = None,
          log: Callable[[str], None] = print) -> dict:
  """Trains ``config.model`` on ``config.dataset``; resumable.

  Writes ``workdir/metrics.jsonl`` (one line per epoch), orbax checkpoints
  in ``workdir/checkpoints`` every epoch, and ``workdir/summary.json`` at the
  end. Re-running with the same config resumes from the last checkpoint.

  Args:
    config: see ``configs/lenet5_mnist.py``.
    workdir: output directory.
    overwrite: discard a workdir holding a run of a different config.
    stop_after_epochs: stop (as if preempted) after this many epochs in this
      invocation; the next invocation resumes.

  Returns:
    The summary dict (also written to ``summary.json``); when stopped early,
    ``{'stopped_at_epoch': e}``.
  """
  t_start = time.time()
  resuming = prepare_workdir(workdir, config, overwrite)
  mesh = make_mesh()
  ds, model, arrays = setup(config, mesh, log)
  params, batch_stats = init_variables(model, config, ds.input_shape)
  steps_per_epoch = len(ds.train_labels) // config.batch_size
  schedule = make_schedule(config, steps_per_epoch)
  prunable = masks_lib.prunable_tree(params)
  tx = make_optimizer(config, schedule, prunable)
  state = put_replicated(create_state(params, batch_stats, tx), mesh)

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  start_epoch, wall_before = 0, 0.0
  if resuming and ckpt.latest_step() is not None:
    state, meta = ckpt.restore(state)
    state = put_replicated(state, mesh)
    start_epoch, wall_before = meta["epoch"], meta["wall_time_s"]
    log(f"resuming from {ckpt.dir} at epoch {start_epoch}")

  mean, std = ds.mean_std
  step_fn = make_train_step(model, tx, mean=mean, std=std,
                            augment=ds.augment and config.get("augment", True),
                            mesh=mesh)
  evaluate = make_eval_fn(model, mean=mean, std=std,
                          batch_size=config.get("eval_batch_size", 1000),
                          mesh=mesh)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  log(f"model {config.model}: {report_lib.num_params(params):,} params; "
      f"{device_info()}; {steps_per_epoch} steps/epoch")

  progress = Progress((config.num_epochs - start_epoch) * steps_per_epoch,
                      config.batch_size, desc="train",
                      every_s=config.get("log_every_s", 5.0))
  t_run = time.time()
  last = {}
  for epoch in range(start_epoch, config.num_epochs):
    state, m = run_epoch(state, step_fn=step_fn, arrays=arrays, config=config,
                         epoch=epoch, mesh=mesh, progress=progress)
    check_finite(m["train_loss"], f"in epoch {epoch + 1}", ckpt.dir,
                 ckpt.latest_step())
    p_eval = eval_params(state)
    ev = evaluate(p_eval, state.batch_stats, arrays["test_x"],
                  arrays["test_y"])
    last = {"epoch": epoch + 1, "step": int(state.step), **m,
            "test_loss": ev["loss"], "test_accuracy": ev["accuracy"],
            "learning_rate": float(schedule(int(state.step) - 1)),
            "sparsity": float(masks_lib.sparsity(p_eval)),
            "images_per_s": progress.images_per_s(),
            "wall_time_s": wall_before + time.time() - t_start}
    append_jsonl(metrics_path, last)
    log(f"epoch {epoch + 1}/{config.num_epochs}: train loss "
        f"{m['train_loss']:.4f} acc {m['train_accuracy']:.4f} | test loss "
        f"{ev['loss']:.4f} acc {ev['accuracy']:.4f}")
    ckpt.save(epoch + 1, state, {"epoch": epoch + 1,
                                 "wall_time_s": last["wall_time_s"]})
    if stop_after_epochs and epoch + 1 - start_epoch >= stop_after_epochs \
        and epoch + 1 < config.num_epochs:
      ckpt.close()
      progress.close()
      return {"stopped_at_epoch": epoch + 1}
  progress.close()
  ckpt.close()
  ips = progress.images_per_s()
  if not last:   # already finished earlier: re-evaluate the final state.
    p_eval = eval_params(state)
    ev = evaluate(p_eval, state.batch_stats, arrays["test_x"],
                  arrays["test_y"])
    with open(metrics_path) as f:
      last = json.loads(f.readlines()[-1])
  summary = {
      "model": config.model, "dataset": config.dataset, "seed": config.seed,
      "test_accuracy": last["test_accuracy"],
      "test_loss": last["test_loss"],
      "train_loss": last["train_loss"], "epochs": config.num_epochs,
      "num_params": report_lib.num_params(state.params),
      "sparsity": last["sparsity"],
      "wall_time_s": wall_before + time.time() - t_start,
      "train_time_s": time.time() - t_run,
      "images_per_s": ips or last.get("images_per_s", 0.0),
      **device_info(),
      "data": {"source": ds.source, "path": ds.path,
               "train_examples": int(len(ds.train_labels)),
               "test_examples": int(len(ds.test_labels))},
      "config": json.loads(config.to_json_best_effort()),
  }
  write_json(os.path.join(workdir, "summary.json"), summary)
  save_final(workdir, state)
  log(f"done: test accuracy {summary['test_accuracy']:.4f}; "
      f"summary in {workdir}/summary.json")
  return summary


def save_final(workdir: str, state: TrainState) -> None:
  """Saves the final eval params + batch stats to ``workdir/final``."""
  save_tree(os.path.join(workdir, "final"),
            {"params": eval_params(state), "batch_stats": state.batch_stats})


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
