"""Reading a config: the one layer that does.

The checks that refuse a bad config before anything is written
(:func:`validate_config`, :func:`validate_pruning`), the workdir check
(resume or refuse), the method a config names (:func:`method_of`), the
dense-training config a pruning config implies (:func:`dense_config`), the
step budget, the typed per-run numbers (:class:`RunNumbers`), and the shared
setup of a run (data on the devices, the model, its first variables, the
learning-rate schedule). The layers below (:mod:`.loop`, :mod:`.engine`,
the methods) take explicit arguments."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import shutil
import time
from typing import Any, Mapping

import jax
import ml_collections
from jax.sharding import Mesh

from proxnag_jax import data as data_lib
from proxnag_jax import engine
from proxnag_jax import hostio
from proxnag_jax import loop
from proxnag_jax import methods as methods_lib
from proxnag_jax import models as models_lib
from proxnag_jax.methods import base

PyTree = Any


def schedule_fn(config, steps_per_epoch: int, num_epochs=None):
  """``peak_lr -> schedule`` of a dense training config (its ``schedule``,
  ``warmup_epochs``, ``lr_steps`` / ``lr_decay``) over ``num_epochs``."""
  num_epochs = config.num_epochs if num_epochs is None else num_epochs
  kind = config.get("schedule", "cosine")
  total = int(round(num_epochs * steps_per_epoch))
  warm = int(config.get("warmup_epochs", 0) * steps_per_epoch)
  bounds = {int(e * steps_per_epoch): config.get("lr_decay", 0.1)
            for e in config.get("lr_steps", ())}
  return lambda lr: engine.make_schedule(lr, kind=kind, total_steps=total,
                                  warmup_steps=warm, boundaries=bounds)


# Config fields that do not change results; a resumed run may change them.
NON_RESULT_FIELDS = ("log_every_s", "checkpoint_every_steps", "data_dir",
                     "download", "tensorboard",
                     "eval_batch_size", "workdir", "chunk_steps",
                     # A sweep's reporting: what its table shows.
                     "select_on_val", "select_scope", "select_require", "paper_table", "paper_sparsities",
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


def _sweep_methods(cfg: dict) -> set:
  """The methods a sweep config runs: its entries' own names, or the
  method of an entry that names a variant."""
  variants = cfg.get("variants") or {}
  return {variants[m].get("method") if isinstance(variants.get(m), dict)
          else m for m in cfg.get("methods") or ()}


def comparable_config(cfg: dict, methods=None) -> dict:
  """The config without the fields that do not change results, at any
  depth (a sweep's base config holds them too), and without the
  sub-configs of the methods the run does not use (a pruning config's
  ``method``; a sweep's methods and variants; ``methods`` names them
  explicitly). So a new setting of another method, or a changed default
  of one, leaves a run's config comparable to the one it started with."""
  drop = set(DENSE_TRAINING_FIELDS) if is_pruning_config(cfg) else set()
  keep = set()
  if is_pruning_config(cfg):
    keep = set(methods) if methods is not None else {cfg["method"]}
    drop |= set(methods_lib.PRUNING_METHODS) - keep
  sweep = "base" in cfg and "methods" in cfg
  out = {k: (comparable_config(v, _sweep_methods(cfg)) if sweep and k == "base"
             else comparable_config(v)) if isinstance(v, dict) else v
         for k, v in cfg.items()
         if k not in NON_RESULT_FIELDS and k not in drop}
  for name in keep & set(out) & set(methods_lib.PRUNING_METHODS):
    if isinstance(out[name], dict):
      out[name] = _without_defaults(name, out[name])
  return out


def _without_defaults(name: str, settings: dict) -> dict:
  """A method's settings without those at the factory's current default: a
  setting added to a method later (absent from an older run's config) then
  compares equal to the same run made today, while a changed value, or an
  old run's value of a setting whose default has changed, still differs."""
  defaults = json.loads(json.dumps(
      methods_lib.method_config(name).to_dict(), default=list))
  return {k: v for k, v in settings.items()
          if k not in defaults or json.loads(json.dumps(v, default=list))
          != defaults[k]}


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
    ran = bool(set(os.listdir(workdir)) - {"config.json", *hostio.LOCK_FILES})
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
          hostio.append_jsonl(os.path.join(workdir, "config_changes.jsonl"), {
              "time": time.strftime("%Y-%m-%d %H:%M:%S"),
              "changed": changed})
          hostio.write_json(path, cfg)
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
      hostio.write_json(path, cfg)
      return False
    # A different run to discard, or a config that never got to run (e.g. a
    # bad value that failed before the first checkpoint): start afresh.
    _clear_dir(workdir)
  os.makedirs(workdir, exist_ok=True)
  hostio.write_json(path, cfg)
  return False


def _clear_dir(workdir: str) -> None:
  """Removes everything in ``workdir`` but its lock file."""
  for name in os.listdir(workdir):
    if name in hostio.LOCK_FILES:
      continue
    p = os.path.join(workdir, name)
    if os.path.isdir(p) and not os.path.islink(p):
      shutil.rmtree(p)
    else:
      os.remove(p)


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
  if config.get("tensorboard", False):
    from proxnag_jax import tboard  # pylint: disable=g-import-not-at-top
    tboard.check_available()
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
  if config.get("schedule", "cosine") not in engine.SCHEDULES:
    raise ValueError(f"unknown schedule {config.schedule!r}; valid: "
                     f"{', '.join(engine.SCHEDULES)}.")
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
  rep = engine.replicated(mesh)
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


# ---------------------------------------------------------------------------
# Pruning configs.
# ---------------------------------------------------------------------------


def dense_method(config) -> base.Method:
  return methods_lib.get_method(
      "dense", optimizer=config.get("optimizer", "sgd"),
      l1=config.get("l1", 0.0), fista=bool(config.get("fista", False)),
      nesterov=bool(config.get("nesterov", True)))


# Fields that may differ between runs that share one vmapped program.
# (and the method's own per-run numbers, ``Method.hparams``).
VMAP_FIELDS = ("seed", "target_sparsity", "finetune_lr", "dense_checkpoint")


def pruning_config(config):
  """The config a pruning run keeps: a copy holding only its own method's
  settings (``config[config.method]``, the factory's defaults where the
  config has none). A config file carries every method's sub-config, so that
  ``--config.method=snip --config.snip.batches=4`` can pick and set any
  method on the command line; what a run writes (``config.json``, its
  summary) and what the layers below read is the chosen method's alone."""
  name = config.method
  if name not in methods_lib.METHOD_NAMES:
    methods_lib.get_method(name)      # raises, listing the valid names
  c = copy.deepcopy(config)
  with c.unlocked():
    for other in methods_lib.PRUNING_METHODS:
      if other != name and other in c:
        del c[other]
    if name in methods_lib.PRUNING_METHODS and name not in c:
      c[name] = methods_lib.method_config(name)
  return c


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


def validate_pruning(config) -> base.Method:
  """Fails early, before anything is written, on a config that cannot run
  or that sets a field the run would ignore."""
  check_numbers(config)     # budget_epochs > 0, no NaN, ...
  stray = [k for k in DENSE_TRAINING_FIELDS if k in config]
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
  validate_config(dense_config(config))
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


def budget_steps(config, method, spe: int) -> int:
  """The run's step budget: ``budget_epochs`` for methods that start from
  the dense model, ``dense.num_epochs + budget_epochs`` from scratch."""
  epochs = config.budget_epochs
  if method.start != "dense":
    epochs += config.dense.num_epochs
  return int(round(epochs * spe))


@dataclasses.dataclass(frozen=True)
class RunNumbers:
  """The numbers of one run that may differ between runs of one vmapped
  program (they travel in ``RunState.hp`` as arrays, :meth:`as_hp`).

  ``target``: target sparsity; ``n_zero``: the prunable weights it
  removes; ``lr``: the learning rate the method trains at (a pruning
  method from the dense model: ``finetune_lr``; from scratch and dense
  training: the dense learning rate); ``weight_decay``, ``momentum``; and
  ``method``: the method's own per-run settings (``Method.hparams``, e.g.
  Prox-NAG's ``l1_init``, ``prune_lr``).
  """

  target: float
  n_zero: int
  lr: float
  weight_decay: float
  momentum: float
  method: Mapping[str, float] = dataclasses.field(default_factory=dict)

  def as_hp(self) -> dict:
    """``RunState.hp``: ``n_zero`` int32, the rest float32."""
    values = {"target": self.target, "n_zero": self.n_zero, "lr": self.lr,
              "weight_decay": self.weight_decay, "momentum": self.momentum,
              **self.method}
    return loop.make_hp(values)


def dense_numbers(config, method) -> RunNumbers:
  """The per-run numbers of a dense-training config."""
  return RunNumbers(target=0.0, n_zero=0, lr=config.learning_rate,
                    weight_decay=config.weight_decay,
                    momentum=config.momentum, method=dict(method.hparams))


def run_numbers(config, method, n_prunable: int) -> RunNumbers:
  """The per-run numbers of a pruning config: read here and nowhere else."""
  sub = config.get(method.name, None) or {}
  return RunNumbers(
      target=config.target_sparsity,
      n_zero=int(round(config.target_sparsity * n_prunable)),
      lr=(config.finetune_lr if method.start == "dense"
          else config.dense.learning_rate),
      weight_decay=config.dense.weight_decay, momentum=config.momentum,
      method={k: sub.get(k, v) for k, v in method.hparams.items()})


def static_view(config, method):
  """The config without the fields vmapped runs may differ in."""
  d = json.loads(config.to_json_best_effort())
  for k in VMAP_FIELDS + NON_RESULT_FIELDS:
    d.pop(k, None)
  if isinstance(d.get(method.name), dict):
    for k in method.hparams:
      d[method.name].pop(k, None)
  return d


def loop_schedule(config, desc: str, stop_after_steps=None):
  """The loop's :class:`~proxnag_jax.loop.Schedule` from a config's run
  settings (``chunk_steps``, ``checkpoint_every_steps``,
  ``eval_batch_size``, ``log_every_s``; configs/common.run_config)."""
  return loop.Schedule(
      chunk_steps=config.chunk_steps,
      eval_batch_size=config.eval_batch_size,
      log_every_s=config.log_every_s,
      checkpoint_every_steps=config.checkpoint_every_steps,
      stop_after_steps=stop_after_steps, desc=desc)
