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
  """``peak_lr -> schedule`` of a dense model's training settings (a
  dense config's ``train``, a pruning config's ``dense``: ``schedule``,
  ``warmup_epochs``, ``lr_steps`` / ``lr_decay``) over ``num_epochs``."""
  num_epochs = config.num_epochs if num_epochs is None else num_epochs
  kind = config.get("schedule", "cosine")
  total = int(round(num_epochs * steps_per_epoch))
  warm = int(config.get("warmup_epochs", 0) * steps_per_epoch)
  bounds = {int(e * steps_per_epoch): config.get("lr_decay", 0.1)
            for e in config.get("lr_steps", ())}
  return lambda lr: engine.make_schedule(lr, kind=kind, total_steps=total,
                                  warmup_steps=warm, boundaries=bounds)


# Config paths that do not change results; a resumed run may change them:
# the run settings, where the data is, and a sweep's reporting (what its
# table shows).
NON_RESULT_PATHS = ("run", "data.dir", "data.download", "workdir",
                    "select_on_val", "select_scope", "select_require",
                    "paper_table", "paper_sparsities", "paper_dense",
                    "target_note")


# The dense model's optimiser and schedule (``train`` of a dense-training
# config, ``dense`` of a pruning config; configs/common.train_config).
DENSE_TRAINING_FIELDS = ("num_epochs", "optimizer", "learning_rate",
                         "momentum", "nesterov", "weight_decay", "l1",
                         "fista", "schedule", "lr_steps", "lr_decay",
                         "warmup_epochs")


# The flat layout of configs written before the per-component one: field ->
# its path today (a pruning config's own ``momentum`` is ``prune.momentum``,
# a dense config's ``train.momentum``).
LEGACY_PATHS = {
    "model": "model.name", "dataset": "data.name", "data_dir": "data.dir",
    **{k: f"data.{k}" for k in ("download", "train_subset", "test_subset",
                                "val_size", "val_seed", "batch_size",
                                "augment")},
    **{k: f"run.{k}" for k in ("eval_batch_size", "log_every_s",
                               "chunk_steps", "checkpoint_every_steps",
                               "tensorboard")},
}
LEGACY_DENSE_PATHS = {**LEGACY_PATHS, **{k: f"train.{k}"
                                         for k in DENSE_TRAINING_FIELDS}}
LEGACY_PRUNING_PATHS = {**LEGACY_PATHS, "prune_exclude": "prune.exclude", **{
    k: f"prune.{k}" for k in ("method", "target_sparsity", "dense_checkpoint",
                              "budget_epochs", "finetune_lr", "momentum")}}


def _is_legacy(cfg: dict) -> bool:
  return isinstance(cfg, dict) and isinstance(cfg.get("model"), str)


def upgrade_config(cfg: dict) -> dict:
  """A config dict of the flat layout (a run's ``config.json`` or summary
  written before the per-component layout) in today's layout; a config
  already in it is returned as it is. Fields of the old layout that a run
  never read (a pruning config's dense sub-config's data and run settings,
  which the pruning config's own replaced) are dropped."""
  if not isinstance(cfg, dict):
    return cfg
  if "base" in cfg and "methods" in cfg:          # a sweep
    if "data" in cfg or not ("data_dir" in cfg or _is_legacy(cfg["base"])):
      return cfg
    out = {k: v for k, v in cfg.items() if k != "data_dir"}
    out["base"] = upgrade_config(cfg["base"])
    out["data"] = {"dir": cfg.get("data_dir", "")}
    return out
  if not _is_legacy(cfg):
    return cfg
  pruning = "method" in cfg and "target_sparsity" in cfg
  paths = LEGACY_PRUNING_PATHS if pruning else LEGACY_DENSE_PATHS
  out: dict = {}
  for k, v in cfg.items():
    if pruning and k in DENSE_TRAINING_FIELDS and k != "momentum":
      continue          # carried by older configs, never read by pruning
    if pruning and k == "dense" and isinstance(v, dict):
      out["dense"] = {f: x for f, x in v.items()
                      if f in DENSE_TRAINING_FIELDS}
      continue
    path = paths.get(k, k).split(".")
    node = out
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = v
  return out


def legacy_flag(arg: str, kind: str):
  """``--config.<old path>=...`` of the flat layout as today's flag (None
  if ``arg`` is not one). ``kind``: 'train', 'prune' or 'sweep'."""
  if not arg.startswith("--config.") or "=" not in arg:
    return None
  path, value = arg[len("--config."):].split("=", 1)
  head, rest = path, ""
  if kind == "sweep":
    if path == "data_dir":
      return f"--config.data.dir={value}"
    if not path.startswith("base."):
      return None
    head, kind, rest = path[len("base."):], "prune", "base."
  paths = LEGACY_PRUNING_PATHS if kind == "prune" else LEGACY_DENSE_PATHS
  if head in paths:
    return f"--config.{rest}{paths[head]}={value}"
  return None


def is_pruning_config(cfg) -> bool:
  return "prune" in cfg and "dense" in cfg


def _sweep_methods(cfg: dict) -> set:
  """The methods a sweep config runs: its entries' own names, or the
  method of an entry that names a variant."""
  variants = cfg.get("variants") or {}
  return {variants[m].get("method") if isinstance(variants.get(m), dict)
          else m for m in cfg.get("methods") or ()}


def comparable_config(cfg: dict, methods=None) -> dict:
  """The config (of either layout, :func:`upgrade_config`) without the
  fields that do not change results (:data:`NON_RESULT_PATHS`, in a sweep
  and in its base config) and without the sub-configs of the methods the
  run does not use (a pruning config's ``prune.method``; a sweep's methods
  and variants; ``methods`` names them explicitly). So a new setting of
  another method, or a changed default of one, leaves a run's config
  comparable to the one it started with."""
  cfg = upgrade_config(cfg)
  if "base" in cfg and "methods" in cfg:
    out = _drop_paths(cfg, NON_RESULT_PATHS)
    out["base"] = comparable_config(cfg["base"], _sweep_methods(cfg))
    return out
  out = _drop_paths(cfg, NON_RESULT_PATHS)
  if is_pruning_config(cfg):
    keep = (set(methods) if methods is not None
            else {cfg["prune"].get("method")})
    for name in set(methods_lib.PRUNING_METHODS) & set(out):
      if name not in keep:
        del out[name]
      elif isinstance(out[name], dict):
        out[name] = _without_defaults(name, out[name])
  return out


def _drop_paths(cfg: dict, paths) -> dict:
  """A copy of ``cfg`` without the dotted ``paths``."""
  out = copy.deepcopy(cfg)
  for path in paths:
    *head, last = path.split(".")
    node = out
    for part in head:
      node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
      node.pop(last, None)
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
                   "finetune_lr", "log_every_s", "speed_repeats")


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


COMPONENTS = ("seed", "model", "data", "run", "train")


def validate_config(config) -> None:
  """Fails early, with what to do, on a dense-training config that cannot
  run (before anything is written)."""
  missing = [k for k in COMPONENTS if k not in config]
  if missing:
    raise ValueError(
        f"the config has no {', '.join(missing)}: a dense-training config "
        "has seed, model, data, run and train (configs/common.py); a config "
        "of the flat layout from before must be rewritten (README, configs).")
  if config.run.get("tensorboard", False):
    from proxnag_jax import tboard  # pylint: disable=g-import-not-at-top
    tboard.check_available()
  if config.model.name not in models_lib.MODEL_NAMES:
    models_lib.get_model(config.model.name)   # raises, listing the names
  data_lib.check_dataset_name(config.data.name)
  check_numbers(config)   # num_epochs, batch_size, learning_rate > 0, ...
  d, t = config.data, config.train
  if d.train_subset and d.val_size >= d.train_subset:
    raise ValueError(f"config.data.val_size ({d.val_size}) must be smaller "
                     f"than config.data.train_subset ({d.train_subset}).")
  if t.optimizer not in ("sgd", "proxnag"):
    raise ValueError(f"unknown optimizer {t.optimizer!r}; valid: "
                     "sgd, proxnag.")
  if t.schedule not in engine.SCHEDULES:
    raise ValueError(f"unknown schedule {t.schedule!r}; valid: "
                     f"{', '.join(engine.SCHEDULES)}.")
  # Every field takes effect or is refused.
  ignored = []
  if t.optimizer != "proxnag":
    ignored += [f for f, off in (("l1", 0.0), ("fista", False))
                if t[f] != off]
  elif not t.nesterov:
    ignored.append("nesterov")
  if t.schedule != "step" and t.lr_steps:
    ignored.append("lr_steps")
  if ignored:
    raise ValueError(
        f"config.train.{', config.train.'.join(ignored)} would be ignored: "
        "l1 and fista are read only with optimizer='proxnag' (which is "
        "always Nesterov, so nesterov=False is not), lr_steps only with "
        "schedule='step'; drop them or change the optimizer / schedule.")


def setup(config, mesh: Mesh, log=print):
  """Loads data to the devices and builds the model: the shared prologue
  (of a dense-training config; a pruning config's :func:`dense_config`)."""
  validate_config(config)
  d = config.data
  ds = data_lib.load_dataset(d.name, d.dir, d.train_subset, d.test_subset,
                             download=d.download)
  ds = data_lib.split_validation(ds, d.val_size, d.val_seed)
  log(f"data: {data_lib.describe(ds)}")
  if len(ds.train_labels) < d.batch_size:
    raise ValueError(f"batch_size {d.batch_size} exceeds the "
                     f"{len(ds.train_labels)} training examples.")
  if d.batch_size % mesh.devices.size:
    raise ValueError(f"batch_size {d.batch_size} is not divisible by "
                     f"the {mesh.devices.size} devices.")
  model = models_lib.get_model(config.model.name, ds.num_classes)
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


def init_variables(model, seed: int, input_shape):
  key = jax.random.PRNGKey(seed)
  v = models_lib.init_model(model, jax.random.fold_in(key, 0),
                            (1,) + tuple(input_shape))
  return v["params"], v.get("batch_stats", {})


# ---------------------------------------------------------------------------
# Pruning configs.
# ---------------------------------------------------------------------------


def dense_method(train) -> base.Method:
  """The dense-training method of training settings ``train``."""
  return methods_lib.get_method(
      "dense", optimizer=train.optimizer, l1=train.l1,
      fista=bool(train.fista), nesterov=bool(train.nesterov))


# Paths that may differ between runs that share one vmapped program
# (and the method's own per-run numbers, ``Method.hparams``).
VMAP_PATHS = ("seed", "prune.target_sparsity", "prune.finetune_lr",
              "prune.dense_checkpoint")


def _require_pruning(config) -> None:
  if not is_pruning_config(config):
    raise ValueError(
        "not a pruning config: it has no prune and dense sub-configs "
        "(configs/common.pruning_config builds one from a dense config).")


def pruning_config(config):
  """The config a pruning run keeps: a copy holding only its own method's
  settings (``config[config.prune.method]``, the factory's defaults where
  the config has none). A config file carries every method's sub-config,
  so that ``--config.prune.method=snip --config.snip.batches=4`` can pick
  and set any method on the command line; what a run writes
  (``config.json``, its summary) and what the layers below read is the
  chosen method's alone."""
  _require_pruning(config)
  name = config.prune.method
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
  name = config.prune.method
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
  does not read (besides other methods' sub-configs): ``prune.finetune_lr``
  where the method does not train at it, the dense model's training
  settings when it comes from ``prune.dense_checkpoint``, and the method's
  own settings its configuration ignores (``Method.ignored``). A command
  refuses an override of any of them, and :func:`validate_pruning` a method
  setting among them that is not its default."""
  out = {}
  if method.start != "dense":
    out["prune.finetune_lr"] = ("a method from scratch trains at "
                                "config.dense.learning_rate")
  elif not method.reads_lr:
    out["prune.finetune_lr"] = (f"{method.name} has learning rates of its "
                                f"own (config.{method.name}.*_lr)")
  if config.prune.dense_checkpoint:
    read = DENSE_READ_WITH_CHECKPOINT[method.start]
    for k in config.dense.keys():
      if k not in read:
        out[f"dense.{k}"] = ("the dense model comes from "
                             "config.prune.dense_checkpoint, so is not "
                             "trained here")
  for k, why in method.ignored.items():
    out[f"{method.name}.{k}"] = why
  return out


def validate_pruning(config) -> base.Method:
  """Fails early, before anything is written, on a config that cannot run
  or that sets a field the run would ignore."""
  _require_pruning(config)
  check_numbers(config)     # budget_epochs > 0, no NaN, ...
  stray = [k for k in config.dense if k not in DENSE_TRAINING_FIELDS]
  if stray:
    raise ValueError(
        f"config.dense.{', config.dense.'.join(stray)}: config.dense holds "
        "the dense model's training settings only (its seed, model, data and "
        "run settings are the pruning config's); remove them.")
  t = config.prune.target_sparsity
  if not 0.0 < t < 1.0:
    raise ValueError(f"prune.target_sparsity must be in (0, 1), got {t}.")
  method = method_of(config)
  if method.name == "dense":
    raise ValueError("method 'dense' does not prune: use python -m "
                     "train.train.")
  validate_config(dense_config(config))
  for pat in config.prune.exclude:
    try:
      re.compile(pat)
    except re.error as e:
      raise ValueError(f"config.prune.exclude: {pat!r} is not a valid "
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
  path = config.prune.dense_checkpoint
  if path and not os.path.isdir(path):
    raise ValueError(f"config.prune.dense_checkpoint {path!r} does not "
                     "exist: give the workdir of a finished `python -m "
                     "train.train` run, or leave it empty to train the "
                     "dense model here.")
  return method


def dense_config(config):
  """The dense-training config of a pruning config: its seed, model, data
  and run settings (shared, written once) with ``dense`` as ``train``."""
  d = ml_collections.ConfigDict()
  for k in ("seed", "model", "data", "run"):
    d[k] = copy.deepcopy(config[k])
  d.train = copy.deepcopy(config.dense)
  return d


SPLIT_FIELDS = ("name", "train_subset", "val_size", "val_seed")


def check_dense_split(config, path: str) -> None:
  """Refuses a dense checkpoint trained on other data than the pruning run
  (e.g. on the images this run holds out for validation)."""
  f = os.path.join(path, "summary.json")
  if not os.path.exists(f):
    return
  try:
    with open(f) as fh:
      got = upgrade_config(json.load(fh).get("config", {}))
  except (OSError, ValueError) as e:
    raise ValueError(f"{f} is unreadable ({e}); re-run the dense training "
                     "(python -m train.train) into that workdir.") from None
  old = {k: got.get("data", {}).get(k, 0) for k in SPLIT_FIELDS}
  new = {k: config.data.get(k, 0) for k in SPLIT_FIELDS}
  if old != new:
    diff = ", ".join(f"data.{k}: {old[k]!r} there, {new[k]!r} here"
                     for k in SPLIT_FIELDS if old[k] != new[k])
    raise ValueError(
        f"dense_checkpoint {path!r} was trained on other data than this run "
        f"({diff}); with a different validation split its training images "
        "include this run's validation images. Train the dense model with "
        "the same data settings (or pass them here, e.g. "
        f"--config.data.val_size={old['val_size']}), or leave "
        "prune.dense_checkpoint empty to train one here.")


def budget_steps(config, method, spe: int) -> int:
  """The run's step budget: ``prune.budget_epochs`` for methods that start
  from the dense model, ``dense.num_epochs + budget_epochs`` from
  scratch."""
  epochs = config.prune.budget_epochs
  if method.start != "dense":
    epochs += config.dense.num_epochs
  return int(round(epochs * spe))


@dataclasses.dataclass(frozen=True)
class RunNumbers:
  """The numbers of one run that may differ between runs of one vmapped
  program (they travel in ``RunState.hp`` as arrays, :meth:`as_hp`).

  ``target``: target sparsity; ``n_zero``: the prunable weights it
  removes; ``lr``: the learning rate the method trains at (a pruning
  method from the dense model: ``prune.finetune_lr``; from scratch and
  dense training: the dense learning rate); ``weight_decay``,
  ``momentum``; and ``method``: the method's own per-run settings
  (``Method.hparams``, e.g. Prox-NAG's ``l1_init``, ``prune_lr``).
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


def dense_numbers(train, method) -> RunNumbers:
  """The per-run numbers of dense training with settings ``train``."""
  return RunNumbers(target=0.0, n_zero=0, lr=train.learning_rate,
                    weight_decay=train.weight_decay,
                    momentum=train.momentum, method=dict(method.hparams))


def run_numbers(config, method, n_prunable: int) -> RunNumbers:
  """The per-run numbers of a pruning config: read here and nowhere else."""
  sub = config.get(method.name, None) or {}
  p = config.prune
  return RunNumbers(
      target=p.target_sparsity,
      n_zero=int(round(p.target_sparsity * n_prunable)),
      lr=(p.finetune_lr if method.start == "dense"
          else config.dense.learning_rate),
      weight_decay=config.dense.weight_decay, momentum=p.momentum,
      method={k: sub.get(k, v) for k, v in method.hparams.items()})


def static_view(config, method):
  """The config without the fields vmapped runs may differ in."""
  d = _drop_paths(json.loads(config.to_json_best_effort()),
                  VMAP_PATHS + NON_RESULT_PATHS)
  if isinstance(d.get(method.name), dict):
    for k in method.hparams:
      d[method.name].pop(k, None)
  return d


def loop_schedule(run, desc: str, stop_after_steps=None):
  """The loop's :class:`~proxnag_jax.loop.Schedule` from a config's run
  settings ``run`` (configs/common.run_settings)."""
  return loop.Schedule(
      chunk_steps=run.chunk_steps,
      eval_batch_size=run.eval_batch_size,
      log_every_s=run.log_every_s,
      checkpoint_every_steps=run.checkpoint_every_steps,
      stop_after_steps=stop_after_steps, desc=desc)
