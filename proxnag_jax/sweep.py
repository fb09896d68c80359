"""Methods x target sparsities x seeds, with one budget, as in paper Table 1.

``python -m train.sweep --config configs/<sweep>.py --workdir DIR`` runs every
cell in ``DIR/cells/<method>_<sparsity>_seed<seed>`` (finished cells, those
with a ``summary.json``, are skipped; an unfinished one resumes), sharing one
dense model per seed (``DIR/dense_seed<seed>``) among the methods that start
from it, and writes ``results.csv``, ``table.md`` (paper Table 1 layout, mean
± std over seeds, with the paper's numbers beside ours when the config gives
them) and ``accuracy_vs_sparsity.png`` (paper Fig. 9).

``variants`` (optional) names methods with changed settings, so a
hyperparameter search is one resumable sweep whose table shows each setting's
validation accuracy: ``c.variants = {'proxnag_l1x10': {'method': 'proxnag',
'l1_step': 2e-3}}`` and ``c.methods = ('proxnag', 'proxnag_l1x10')``; a
variant's cells, rows and plot lines carry its name (``summary.json`` keeps
the method's own name). ``select_on_val`` (optional) makes the choice among
them part of the sweep: ``c.select_on_val = {'proxnag': ('proxnag',
'proxnag_l1x10')}`` adds a row (and a bold plot line) holding, per column,
the test accuracy of the entry with the best mean validation accuracy, and
writes the choices to ``selection.json``; a group none of whose entries is
in ``methods`` is left out (a config can hold a search a command does not
run).

``reuse_from`` (``--reuse_from=DIR,...``) copies finished cells from other
sweep workdirs instead of running them again, when a cell there ran exactly
this cell's config (whatever its name: a search's ``sbp_lr0p1_50_seed0`` can
serve as ``sbp_50_seed0``) from an identical dense config; what was copied
is listed in ``DIR/reused.jsonl``.

With ``vmap_runs=True`` the unfinished cells of each method (differing only
in seed and target sparsity) run as one ``jax.vmap``-ped program, checkpointed
in ``DIR/groups/<method>_<n>cells_<hash>``; each cell still gets its own
workdir, summary and report.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import time
from typing import Callable


from proxnag_jax import commands
from proxnag_jax import distributed
from proxnag_jax import hostio
from proxnag_jax import experiment
from proxnag_jax import methods as methods_lib
from proxnag_jax import sweep_report
from proxnag_jax.sweep_report import method_of

def cell_name(method: str, sparsity: float, seed: int) -> str:
  return f"{method}_{round(100 * sparsity, 2):g}_seed{seed}"


def validate(config) -> None:
  for m in config.methods:
    base, over = method_of(config, m)
    if base not in methods_lib.PRUNING_METHODS:
      raise ValueError(
          f"unknown method {m!r}" + (f" (variant of {base!r})" if over or
                                     base != m else "")
          + f"; valid methods: {', '.join(methods_lib.PRUNING_METHODS)}, "
          "or a name in config.variants ({'method': ..., settings}).")
    methods_lib.method_config(base, **over)    # unknown settings fail here
  for s in config.sparsities:
    if not 0.0 < s < 1.0:
      raise ValueError(f"sparsity {s} is not in (0, 1): a method cannot "
                       "produce it.")
  if not config.seeds:
    raise ValueError("config.seeds is empty.")
  known = set(config.methods) | set(config.get("variants", None) or {})
  for name, members in (config.get("select_on_val", None) or {}).items():
    unknown = [m for m in members if m not in known and m not in
               methods_lib.PRUNING_METHODS]
    if members and not unknown and not any(m in config.methods
                                           for m in members):
      continue       # none of the group runs in this sweep: nothing to pick
    missing = [m for m in members if m not in config.methods]
    if not members or missing or name in config.methods:
      raise ValueError(
          f"select_on_val[{name!r}] must name a group of entries of "
          f"config.methods (missing: {missing or 'none'}) under a name that "
          "is not itself one of them, e.g. {'proxnag': ('proxnag_lam1e-2', "
          "'proxnag_lam2e-2')}.")
  for field, least in (config.get("select_require", None) or {}).items():
    if not isinstance(least, (int, float)) or isinstance(least, bool):
      raise ValueError(f"select_require[{field!r}] = {least!r}: a minimum "
                       "(a number) for that summary field, e.g. "
                       "{'near_binary': 0.99}.")
  if config.get("select_scope", "column") not in ("column", "all"):
    raise ValueError(f"select_scope={config.select_scope!r}: 'column' (a "
                     "choice per sparsity) or 'all' (one for every column).")
  # Every cell's config, before anything is written.
  for m in config.methods:
    experiment.validate_pruning(cell_config(config, m, config.sparsities[0],
                              config.seeds[0], ""))


def cell_config(config, method: str, sparsity: float, seed: int, dense_dir):
  c = copy.deepcopy(config.base)
  method, over = method_of(config, method)
  with c.unlocked():
    c.prune.method = method
    for k, v in over.items():
      c[method][k] = v
    c.prune.target_sparsity = float(sparsity)
    c.seed = int(seed)
    c.data.dir = config.data.dir
    c.prune.dense_checkpoint = dense_dir
  return experiment.pruning_config(c)


def start_of(config, name: str) -> str:
  """Where a sweep entry's runs start: ``'dense'`` or ``'scratch'``."""
  base, over = method_of(config, name)
  sub = dict(config.base.get(base, None) or {})
  return methods_lib.get_method(base, **{**sub, **over}).start


def budget_note(config) -> str:
  b = config.base
  starts = {m: start_of(config, m) for m in config.methods}
  dense = [m for m in config.methods if starts[m] == "dense"]
  scratch = [m for m in config.methods if starts[m] != "dense"]
  budget = b.prune.budget_epochs
  return (f"every method gets {b.dense.num_epochs + budget} epochs "
          f"in all: methods that start from the dense model "
          f"({', '.join(dense) or 'none'}) reuse the shared "
          f"{b.dense.num_epochs}-epoch dense run and then train "
          f"{budget} epochs (Prox-NAG: its final fine-tune fills "
          "what its rounds left of that budget); methods that start from "
          f"scratch ({', '.join(scratch) or 'none'}) train "
          f"{b.dense.num_epochs + budget} epochs.")


def _dense_dir(workdir, seed) -> str:
  """The seed's shared dense model in a sweep's workdir."""
  return os.path.join(workdir, f"dense_seed{seed}")


def _dense_for(config, workdir, seed, log) -> str:
  """The seed's dense run, trained if it is missing, or if it is a reused
  artifact without its model (a committed result folder keeps the summary
  and config but not ``final/``, which a cell that trains starts from)."""
  dense_dir = _dense_dir(workdir, seed)
  if (os.path.exists(os.path.join(dense_dir, "summary.json")) and
      not os.path.isdir(os.path.join(dense_dir, "final"))):
    log(f"[dense seed {seed}] {dense_dir} holds no model (final/): training "
        "it again")
    shutil.rmtree(dense_dir)
  if not os.path.exists(os.path.join(dense_dir, "summary.json")):
    d = experiment.dense_config(cell_config(config, config.methods[0],
                                      config.sparsities[0], seed, ""))
    log(f"[dense seed {seed}] training the shared dense model")
    commands.train(d, dense_dir, log=log)
  return dense_dir


def cells_of(config) -> list[tuple]:
  """The sweep's cells ``(method, sparsity, seed)``, seed by seed."""
  return [(m, s, seed) for seed in config.seeds for s in config.sparsities
          for m in config.methods]


def _rows(workdir, cells, finished_only=False) -> list[dict]:
  """The cells' summaries (``method``: the sweep's name for it, a
  variant's or the method's; ``finished_only``: skip unfinished cells)."""
  rows = []
  for c in cells:
    wd = os.path.join(workdir, "cells", cell_name(*c))
    path = os.path.join(wd, "summary.json")
    if finished_only and not os.path.exists(path):
      continue
    with open(path) as f:
      summ = json.load(f)
    summ.update(workdir=wd, method=c[0])
    rows.append(summ)
  return rows


def _result_fields(cfg: dict) -> dict:
  """A run's config as compared for reuse: the fields that change results,
  without the dense checkpoint's path (its config is compared instead) and
  the sub-configs of the methods it does not run."""
  out = experiment.comparable_config(cfg)
  out.get("prune", {}).pop("dense_checkpoint", None)
  return out


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _finished_with(run_dir, fields) -> bool:
  """Whether ``run_dir`` holds a finished run whose config compares equal
  to ``fields``."""
  cfg = _read_json(os.path.join(run_dir, "config.json"))
  return (cfg is not None and experiment.comparable_config(cfg) == fields and
          os.path.exists(os.path.join(run_dir, "summary.json")))


def _copy_run(src, dst, workdir, what, log) -> None:
  if os.path.exists(dst):
    shutil.rmtree(dst)          # an unfinished run of the same config
  shutil.copytree(src, dst)
  hostio.append_jsonl(os.path.join(workdir, "reused.jsonl"),
                      {what: os.path.basename(dst), "from": src})
  log(f"reused {src} as {os.path.basename(dst)}")


def reuse_cells(config, workdir: str, sources, log=print) -> int:
  """Copies into ``workdir`` the finished cells of the sweep workdirs
  ``sources`` that ran exactly the config of one of this sweep's unfinished
  cells, with the same dense config, and their finished dense runs of this
  sweep's dense config; returns how many cells were copied."""
  for src in sources:
    if not os.path.isdir(os.path.join(src, "cells")):
      raise ValueError(f"--reuse_from {src!r} is not a sweep workdir (it "
                       "has no cells/ folder).")
  # Each finished source cell with its sweep's dense run of its seed (the
  # path in its config may name the sweep's folder before a rename).
  candidates = []
  for src in sources:
    for name in sorted(os.listdir(os.path.join(src, "cells"))):
      d = os.path.join(src, "cells", name)
      cfg = experiment.upgrade_config(
          _read_json(os.path.join(d, "config.json")))
      if cfg is not None and os.path.exists(os.path.join(d, "summary.json")):
        dense = os.path.join(src, f"dense_seed{cfg.get('seed')}")
        candidates.append((_result_fields(cfg), d, dense if os.path.isdir(
            dense) else cfg["prune"].get("dense_checkpoint") or ""))

  def dense_fields(cc):
    return experiment.comparable_config(json.loads(
        experiment.dense_config(cc).to_json_best_effort()))

  def get_dense(seed, want, src_dense=None) -> bool:
    """This sweep's dense run of ``seed`` is (or is now, copied) one of
    config ``want``."""
    own = _dense_dir(workdir, seed)
    if os.path.exists(os.path.join(own, "summary.json")):
      return _finished_with(own, want)
    for d in ([src_dense] if src_dense else
              [_dense_dir(src, seed) for src in sources]):
      if _finished_with(d, want):
        _copy_run(d, own, workdir, "dense", log)
        return True
    return False

  for seed in config.seeds:      # a dense run alone (the table's dense row)
    get_dense(seed, dense_fields(cell_config(
        config, config.methods[0], config.sparsities[0], seed, "")))
  copied = 0
  for c in cells_of(config):
    dst = os.path.join(workdir, "cells", cell_name(*c))
    if os.path.exists(os.path.join(dst, "summary.json")):
      continue
    cc = cell_config(config, *c, "")
    want = _result_fields(json.loads(cc.to_json_best_effort()))
    for fields, src, src_dense in candidates:
      if (fields == want and src_dense and
          get_dense(c[2], dense_fields(cc), src_dense)):
        _copy_run(src, dst, workdir, "cell", log)
        copied += 1
        break
  return copied


def report_partial(config, workdir: str, log=print) -> list[dict]:
  """Tables and plot of the cells finished so far, in ``workdir/partial/``,
  without running anything (safe beside the sweep that writes
  ``workdir``). The workdir must hold a sweep of this config."""
  path = os.path.join(workdir, "config.json")
  old = _read_json(path)
  if old is None:
    raise ValueError(f"{path} is missing or unreadable: {workdir!r} holds no "
                     "sweep to report on.")
  want = json.loads(config.to_json_best_effort())
  if experiment.comparable_config(old) != experiment.comparable_config(want):
    raise ValueError(f"{workdir!r} holds a sweep of another config; pass the "
                     "config it was run with.")
  cells = cells_of(config)
  rows = _rows(workdir, cells, finished_only=True)
  if not rows:
    raise ValueError(f"no cell of {workdir!r} has finished yet.")
  out = os.path.join(workdir, "partial")
  os.makedirs(out, exist_ok=True)
  sweep_report.write_outputs(config, out, rows, f"**Partial: {len(rows)} of {len(cells)} "
                "cells finished; (n=k) marks a value over fewer seeds than "
                f"the sweep's.** {budget_note(config)}")
  log(f"{len(rows)} of {len(cells)} cells finished; wrote {out}/table.md")
  return rows


def run(config, workdir: str, *, overwrite: bool = False,
        allow_changes: bool = False, reuse_from=(), report_only=False,
        worker: bool = False,
        log: Callable[[str], None] = print) -> list[dict]:
  """Runs the sweep's unfinished cells and writes its outputs (see the
  module docstring); returns the cells' summaries.

  ``worker``: one of several processes running the same sweep in the same
  ``workdir`` together (one per core, device or host sharing the disk):
  each claims the next unfinished cell no other worker holds (an ``flock``
  per cell in ``workdir/claims/``, released however the process ends),
  the dense model of a seed is trained by the first worker that needs it
  while the others run the cells that start from scratch (they need the
  dense model only as their summary's reference, at their end) and then
  wait for it, and the last worker to finish writes the
  tables (a worker that ends while others still run cells returns the
  finished cells' summaries and writes nothing). Workers keep out a
  non-worker run of the workdir and the other way round.
  """
  validate(config)
  if report_only:
    return report_partial(config, workdir, log)
  if worker:
    if distributed.process_count() > 1:
      raise ValueError("--worker runs one process per worker; it does not "
                       "combine with a multi-process (jax.distributed) run.")
    if config.get("vmap_runs", False):
      raise ValueError("--worker claims cells one by one: set "
                       "--config.vmap_runs=False.")
    if overwrite:
      raise ValueError("--overwrite with --worker would let every worker "
                       "wipe the cells of the others: clear the workdir once "
                       "(delete it, or one run with --overwrite and no "
                       "--worker), then start the workers.")
  with hostio.workdir_lock(workdir, shared=worker):
    return _run(config, workdir, overwrite, allow_changes, log,
                tuple(reuse_from or ()), worker)


def _setup_lock(workdir):
  """Workers set the workdir up, and write its tables, one at a time."""
  return hostio.try_lock(os.path.join(workdir, hostio.PREPARE_LOCK_FILE),
                         blocking=True)


def _dense_busy(workdir, seed) -> bool:
  """Whether another worker is training the seed's (unfinished) dense model."""
  if os.path.exists(os.path.join(_dense_dir(workdir, seed),
                                 "summary.json")):
    return False
  with _claim(workdir, f"dense_seed{seed}") as got:
    return not got


def _shared_dense(config, workdir, seed, log) -> str:
  """A worker's way to the seed's dense model: trains it, or, while another
  worker trains it, says so and waits for that run."""
  if _dense_busy(workdir, seed):
    log(f"waiting for the dense model of seed {seed} (another worker "
        "trains it)")
  with _claim(workdir, f"dense_seed{seed}", blocking=True):
    return _dense_for(config, workdir, seed, log)


def _claim(workdir, name, blocking=False):
  return hostio.try_lock(os.path.join(workdir, "claims", f"{name}.lock"),
                         blocking=blocking)


def _run(config, workdir, overwrite, allow_changes, log, reuse_from=(),
         worker=False):
  # Workers set the workdir up one at a time (the first creates it).
  with _setup_lock(workdir) if worker else contextlib.nullcontext():
    distributed.on_primary(lambda: experiment.prepare_workdir(
        workdir, config, overwrite, allow_changes), "prepare_workdir")
    if reuse_from:
      distributed.on_primary(lambda: reuse_cells(config, workdir, reuse_from,
                                                 log), "reuse_cells")
  cells = cells_of(config)
  note = budget_note(config)
  vmap = bool(config.get("vmap_runs", False))
  log(f"sweep: {len(cells)} cells{' (vmapped per method)' if vmap else ''}; "
      f"{note}")
  t0 = time.time()
  quiet = lambda msg: log(f"  {msg}") if msg.startswith("done") else None
  todo = [c for c in cells if not os.path.exists(os.path.join(
      workdir, "cells", cell_name(*c), "summary.json"))]
  groups = ([[c for c in todo if c[0] == m] for m in config.methods] if vmap
            else [[c] for c in todo])
  groups = [g for g in groups if g]
  order = list(enumerate(groups))
  if worker:
    # While another worker trains a seed's dense model, run the cells that
    # do not start from it first.
    busy = {seed for seed in config.seeds if _dense_busy(workdir, seed)}
    waits = lambda g: (start_of(config, g[0][0]) == "dense" and
                       g[0][2] in busy)
    order = ([x for x in order if not waits(x[1])] +
             [x for x in order if waits(x[1])])
    if busy and any(waits(g) for _, g in order):
      log(f"another worker trains the dense model of seed(s) "
          f"{sorted(busy)}: cells that start from scratch go first")
  for i, group in order:
    with contextlib.ExitStack() as claims:
      if worker:
        name = cell_name(*group[0])
        if not claims.enter_context(_claim(workdir, name)):
          log(f"[{i + 1}/{len(groups)}] {name}: another worker runs it")
          continue
        if os.path.exists(os.path.join(workdir, "cells", name,
                                       "summary.json")):
          continue                     # finished by another worker
      _run_group(config, workdir, group, i, len(groups), t0, allow_changes,
                 quiet, log, worker)
  if not distributed.is_primary():     # process 0 writes the tables
    return []
  if worker:
    rows = _rows(workdir, cells, finished_only=True)
    if len(rows) < len(cells):
      log(f"this worker is done; {len(cells) - len(rows)} cells are still "
          "running in other workers (the last to finish writes the tables)")
      return rows
    with _setup_lock(workdir):
      sweep_report.write_outputs(config, workdir, rows, note)
    return rows
  rows = _rows(workdir, cells)
  sweep_report.write_outputs(config, workdir, rows, note)
  return rows


def _run_group(config, workdir, group, i, n, t0, allow_changes, quiet, log,
               worker):
  """Runs one cell (or one vmapped group of cells) of the sweep."""
  dense = {}
  seeds = sorted({c[2] for c in group})
  later = (worker and start_of(config, group[0][0]) != "dense" and
           any(_dense_busy(workdir, seed) for seed in seeds))
  if later:
    # From scratch, the dense model is only the summary's reference: train
    # now, wait for the worker that trains it at the end.
    for seed in seeds:
      dense[seed] = _dense_dir(workdir, seed)
      os.makedirs(dense[seed], exist_ok=True)


  def wait():
    for seed in seeds:
      _shared_dense(config, workdir, seed, log)
  for seed in ([] if dense else seeds):
    dense[seed] = (_shared_dense if worker else _dense_for)(config, workdir,
                                                          seed, log)
  cfgs = [cell_config(config, m, s, seed, dense[seed])
          for m, s, seed in group]
  wds = [os.path.join(workdir, "cells", cell_name(*c)) for c in group]
  elapsed = time.time() - t0
  eta = (f", ETA {elapsed / i * (n - i) / 60:.0f} min" if i and not worker
         else "")
  names = ", ".join(cell_name(*c) for c in group)
  log(f"[{i + 1}/{n}] {names} (sweep time {elapsed / 60:.1f} "
      f"min{eta})")
  if len(group) > 1:
    tag = hashlib.sha1(names.encode()).hexdigest()[:8]
    gdir = os.path.join(workdir, "groups",
                        f"{group[0][0]}_{len(group)}cells_{tag}")
    os.makedirs(gdir, exist_ok=True)
    commands.prune_runs(cfgs, wds, group_dir=gdir, vmap=True,
                    allow_changes=allow_changes, wait_for_dense=wait if later else None,
                    log=quiet)
  else:
    commands.prune(cfgs[0], wds[0], allow_changes=allow_changes,
               wait_for_dense=wait if later else None, log=quiet)
