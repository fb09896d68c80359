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
writes the choices to ``selection.json``.

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
import csv
import hashlib
import json
import os
import shutil
import time
from typing import Callable

import numpy as np

from proxnag_jax import distributed
from proxnag_jax import hostio
from proxnag_jax import experiment
from proxnag_jax import loop
from proxnag_jax import methods as methods_lib

CSV_FIELDS = ("method", "target_sparsity", "seed", "sparsity",
              "mask_sparsity", "kept_but_zero", "val_accuracy",
              "test_accuracy", "dense_val_accuracy", "dense_test_accuracy",
              "compression_ratio", "theoretical_speedup", "num_params",
              "stored_params", "num_nonzero", "epochs", "budget_epochs",
              "total_epochs_with_dense", "wall_time_s", "reached_target",
              "channel_sparsity", "params_shrunk", "measured_speedup",
              "model", "dataset", "workdir")


def cell_name(method: str, sparsity: float, seed: int) -> str:
  return f"{method}_{round(100 * sparsity, 2):g}_seed{seed}"


def method_of(config, name: str) -> tuple[str, dict]:
  """``(method, setting overrides)`` of a sweep entry: a method's own name,
  or a name in ``config.variants``."""
  variants = config.get("variants", None) or {}
  if name in variants:
    v = dict(variants[name])
    return v.pop("method", None), v
  return name, {}


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
  for name, members in (config.get("select_on_val", None) or {}).items():
    missing = [m for m in members if m not in config.methods]
    if not members or missing or name in config.methods:
      raise ValueError(
          f"select_on_val[{name!r}] must name a group of entries of "
          f"config.methods (missing: {missing or 'none'}) under a name that "
          "is not itself one of them, e.g. {'proxnag': ('proxnag_lam1e-2', "
          "'proxnag_lam2e-2')}.")
  if config.get("select_scope", "column") not in ("column", "all"):
    raise ValueError(f"select_scope={config.select_scope!r}: 'column' (a "
                     "choice per sparsity) or 'all' (one for every column).")
  # Every cell's config, before anything is written.
  for m in config.methods:
    loop.validate(cell_config(config, m, config.sparsities[0],
                              config.seeds[0], ""))


def cell_config(config, method: str, sparsity: float, seed: int, dense_dir):
  c = copy.deepcopy(config.base)
  method, over = method_of(config, method)
  with c.unlocked():
    c.method = method
    for k, v in over.items():
      c[method][k] = v
    c.target_sparsity = float(sparsity)
    c.seed = int(seed)
    c.data_dir = config.data_dir
    c.dense_checkpoint = dense_dir
  return c


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
  return (f"every method gets {b.dense.num_epochs + b.budget_epochs} epochs "
          f"in all: methods that start from the dense model "
          f"({', '.join(dense) or 'none'}) reuse the shared "
          f"{b.dense.num_epochs}-epoch dense run and then train "
          f"{b.budget_epochs} epochs (Prox-NAG: its final fine-tune fills "
          "what its rounds left of that budget); methods that start from "
          f"scratch ({', '.join(scratch) or 'none'}) train "
          f"{b.dense.num_epochs + b.budget_epochs} epochs.")


def _dense_dir(workdir, seed) -> str:
  """The seed's shared dense model in a sweep's workdir."""
  return os.path.join(workdir, f"dense_seed{seed}")


def _dense_for(config, workdir, seed, log) -> str:
  dense_dir = _dense_dir(workdir, seed)
  if not os.path.exists(os.path.join(dense_dir, "summary.json")):
    d = loop.dense_config(cell_config(config, config.methods[0],
                                      config.sparsities[0], seed, ""))
    log(f"[dense seed {seed}] training the shared dense model")
    loop.train(d, dense_dir, log=log)
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
  out.pop("dense_checkpoint", None)
  return {k: v for k, v in out.items() if k == out.get("method")
          or k not in methods_lib.PRUNING_METHODS}


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
      cfg = _read_json(os.path.join(d, "config.json"))
      if cfg is not None and os.path.exists(os.path.join(d, "summary.json")):
        dense = os.path.join(src, f"dense_seed{cfg.get('seed')}")
        candidates.append((_result_fields(cfg), d, dense if os.path.isdir(
            dense) else cfg.get("dense_checkpoint") or ""))

  def dense_fields(cc):
    return experiment.comparable_config(json.loads(
        loop.dense_config(cc).to_json_best_effort()))

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
  write_outputs(config, out, rows, f"**Partial: {len(rows)} of {len(cells)} "
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
      write_outputs(config, workdir, rows, note)
    return rows
  rows = _rows(workdir, cells)
  write_outputs(config, workdir, rows, note)
  return rows


def _run_group(config, workdir, group, i, n, t0, allow_changes, quiet, log,
               worker):
  """Runs one cell (or one vmapped group of cells) of the sweep."""
  dense, wait = {}, None
  seeds = sorted({c[2] for c in group})
  if (worker and start_of(config, group[0][0]) != "dense" and
      any(_dense_busy(workdir, seed) for seed in seeds)):
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
    loop.prune_runs(cfgs, wds, group_dir=gdir, vmap=True,
                    allow_changes=allow_changes, wait_for_dense=wait,
                    log=quiet)
  else:
    loop.prune(cfgs[0], wds[0], allow_changes=allow_changes,
               wait_for_dense=wait, log=quiet)


def write_outputs(config, workdir, rows, note) -> None:
  with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow(r)
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(table_md(config, rows, note))
  chosen = chosen_on_val(config, rows)
  if chosen:
    hostio.write_json(os.path.join(workdir, "selection.json"), {
        name: {f"{s:g}": (None if p is None else {
            "entry": p[0], "val_accuracy": p[1], "seeds": p[2]})
               for s, p in by_s.items()} for name, by_s in chosen.items()})
  plot_accuracy(rows, os.path.join(workdir, "accuracy_vs_sparsity.png"),
                title=f"{config.base.model} on {config.base.dataset}",
                chosen=chosen)


def _stats(rows, method, s, key="test_accuracy", scale=100.0):
  v = [scale * r[key] for r in rows if r["method"] == method and
       abs(r["target_sparsity"] - s) < 1e-9 and r.get(key) is not None]
  # Sample std (ddof=1) over seeds: the spread a reader would estimate.
  return ((float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1
           else None, len(v)) if v else None)


def fmt_stat(st, digits=2) -> str:
  """``mean ± std`` over seeds; a single seed shows its value alone."""
  if st is None:
    return ""
  mean, std, _ = st
  return f"{mean:.{digits}f}" if std is None else (
      f"{mean:.{digits}f} ± {std:.{digits}f}")


def _missed(rows, method, s) -> int:
  return sum(1 for r in rows if r["method"] == method and
             abs(r["target_sparsity"] - s) < 1e-9 and
             not r.get("reached_target", True))


def chosen_on_val(config, rows) -> dict:
  """``{name: {sparsity: (entry, mean val accuracy %, seeds) or None}}`` for
  each group of ``config.select_on_val`` (``{name: (entry, ...)}``, entries
  of ``config.methods``, e.g. one method's hyperparameter variants): the
  entry with the highest mean validation accuracy over its seeds (the first
  listed on a tie), per column, or with ``config.select_scope = 'all'`` one
  entry for every column, by its validation accuracy averaged over the
  columns where every entry of the group has finished (the val accuracy
  given is then that average). An entry with a run that missed its target
  sparsity (``reached_target`` false) is not chosen while another entry
  reached it: a less sparse network would otherwise win on accuracy. The
  test set plays no part; the table reports the chosen entry's test
  accuracy."""
  scope = config.get("select_scope", "column")
  out = {}
  for name, members in (config.get("select_on_val", None) or {}).items():
    val = {(m, s): _stats(rows, m, s, "val_accuracy") for m in members
           for s in config.sparsities}
    if scope == "all":
      cols = [s for s in config.sparsities
              if all(val[m, s] is not None for m in members)]
      ok = [m for m in members
            if not any(_missed(rows, m, s) for s in cols)] or members
      best = None
      for m in ok:
        if cols:
          v = float(np.mean([val[m, s][0] for s in cols]))
          n = min(val[m, s][2] for s in cols)
          if best is None or v > best[1]:
            best = (m, v, n)
      out[name] = {s: best for s in config.sparsities}
      continue
    out[name] = {}
    for s in config.sparsities:
      best = None
      ok = [m for m in members if val[m, s] is not None and
            not _missed(rows, m, s)] or members
      for m in ok:
        st = val[m, s]
        if st is not None and (best is None or st[0] > best[1]):
          best = (m, st[0], st[2])
      out[name][s] = best
  return out


def table_md(config, rows, note) -> str:
  sps = list(config.sparsities)
  head = "| method | " + " | ".join(f"{100 * s:g}%" for s in sps) + " |"
  sep = "|---|" + "---:|" * len(sps)
  # One dense model per seed: its accuracy once per seed.
  by_seed = {r["seed"]: r for r in rows}
  dense = [100 * r["dense_test_accuracy"] for r in by_seed.values()]
  dense_st = (float(np.mean(dense)), float(np.std(dense, ddof=1))
              if len(dense) > 1 else None, len(dense))
  seeds = list(config.seeds)
  spread = (f"Mean ± sample std over {len(seeds)} seeds {seeds}"
            if len(seeds) > 1 else
            f"One seed ({seeds[0]}): no spread, so differences of a few "
            "tenths are not resolved")
  lines = [f"# {config.base.model} on {config.base.dataset}: test accuracy "
           "(%) after pruning", "",
           f"{spread}. Final (not best) accuracies; hyperparameters are "
           f"the config's, not chosen on the test set. {note}"
           + (f" {config.target_note}" if config.get("target_note", "")
              else ""), "",
           "A `*` marks a cell where a run did not reach its target "
           "sparsity (see the sparsity table).", "",
           head, sep,
           f"| dense baseline | {fmt_stat(dense_st)} |"
           + " |" * (len(sps) - 1)]
  if config.get("paper_dense", None):
    lines.append(f"| dense baseline (paper) | {config.paper_dense:.2f} |"
                 + " |" * (len(sps) - 1))
  paper = config.get("paper_table", None) or {}
  paper_sps = list(config.get("paper_sparsities", ()))
  shown = set()
  selections = config.get("select_on_val", None) or {}

  def paper_row(pm):
    if pm in paper and pm not in shown:
      shown.add(pm)
      vals = dict(zip([round(x, 6) for x in paper_sps], paper[pm]))
      if not any(round(s, 6) in vals for s in sps):
        return                       # none of the paper's columns here
      lines.append(f"| {pm} (paper) | " + " | ".join(
          f"{vals[round(s, 6)]:.2f}" if round(s, 6) in vals else ""
          for s in sps) + " |")

  for m in config.methods:
    cells = []
    for s in sps:
      st = _stats(rows, m, s)
      few = st is not None and st[2] < len(config.seeds)
      cells.append(fmt_stat(st) + ("*" if _missed(rows, m, s) else "")
                   + (f" (n={st[2]})" if few else ""))
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
    pm = method_of(config, m)[0]     # a variant shows its method's numbers
    if pm not in selections:         # (else after the chosen row)
      paper_row(pm)
  chosen = chosen_on_val(config, rows)
  for name, by_s in chosen.items():
    cells = []
    for s in sps:
      pick = by_s[s]
      st = _stats(rows, pick[0], s) if pick else None
      few = st is not None and st[2] < len(config.seeds)
      cells.append("" if st is None else fmt_stat(st) + (
          "*" if _missed(rows, pick[0], s) else "") + (
              f" (n={st[2]})" if few else "") + f" ({pick[0]})")
    lines.append(f"| **{name}, chosen on validation** | " + " | ".join(cells)
                 + " |")
    paper_row(name)
  if chosen:
    how = ("per column, the entry of each group with the highest mean "
           "validation accuracy" if config.get("select_scope", "column")
           == "column" else "one entry of each group for every column, the "
           "one with the highest validation accuracy averaged over the "
           "columns")
    lines += ["", f"Chosen on validation: {how}, among the entries "
              "whose runs reached their target sparsity where any did (named "
              "in brackets; the test set plays no part in the choice): "
              + "; ".join(f"{n} among {', '.join(config.select_on_val[n])}"
                          for n in chosen) + "."]
  def table(title, key, digits=2, scale=100.0, fmt=None):
    out = ["", title, "", head, sep]
    for m in config.methods:
      cells = []
      for s in sps:
        st = _stats(rows, m, s, key, scale)
        cells.append(fmt(st) if fmt and st else fmt_stat(st, digits))
      out.append(f"| {m} | " + " | ".join(cells) + " |")
    return out

  if any(r.get("val_accuracy") is not None for r in rows):
    lines += table("Validation accuracy (%), the split held out of the "
                   "training set (what tuning may look at):", "val_accuracy")
  mean_only = lambda st, d=2: f"{st[0]:.{d}f}"
  lines += table("Achieved sparsity of the prunable weights, exact zeros "
                 "(mean):", "sparsity", fmt=mean_only)
  if any(r.get("mask_sparsity") is not None for r in rows):
    lines += table("Sparsity by the methods' masks (mean; differs from the "
                   "exact zeros where kept weights are exactly zero):",
                   "mask_sparsity", fmt=mean_only)
  if any(r.get("channel_sparsity") is not None for r in rows):
    # Structured methods: the target is a fraction of channels, and the
    # result a smaller network.
    x = lambda st, d=1: f"{st[0]:.{d}f}x"
    lines += table("Channels removed (% of the prunable channels, mean):",
                   "channel_sparsity", fmt=mean_only)
    lines += table("Parameters: dense / smaller network (mean):",
                   "compression_ratio", scale=1.0, fmt=x)
    lines += table("MACs: dense / smaller network (mean):",
                   "theoretical_speedup", scale=1.0, fmt=x)
    lines += table("Measured inference speed-up of the smaller network on "
                   "this machine (dense / shrunk wall time, same batch; "
                   "mean):", "measured_speedup", scale=1.0,
                   fmt=lambda st: x(st, 2))
  budget = config.base.budget_epochs
  lines += table(f"Epochs trained (mean) against the budget ({budget:g} "
                 "epochs after the dense run for dense-start methods, "
                 f"{budget + config.base.dense.num_epochs:g} from scratch):",
                 "epochs", scale=1.0, fmt=mean_only)
  return "\n".join(lines) + "\n"


def plot_accuracy(rows, path, title="", chosen=None) -> None:
  """Test accuracy vs pruning rate, one line per sweep entry (mean and
  sample std over seeds); ``chosen`` (:func:`chosen_on_val`) adds a bold
  line per group through the entries chosen on validation."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5))
  entries = list(dict.fromkeys(r["method"] for r in rows))  # sweep order
  colors = plt.get_cmap("tab20" if len(entries) > 10 else "tab10").colors
  for i, m in enumerate(entries):
    sps = sorted({r["target_sparsity"] for r in rows if r["method"] == m})
    st = [_stats(rows, m, s) for s in sps]
    ax.errorbar([100 * s for s in sps], [x[0] for x in st],
                yerr=[x[1] or 0.0 for x in st], marker="o", capsize=3,
                label=m, color=colors[i % len(colors)],
                alpha=0.6 if chosen else 1.0,
                lw=2.5 if m == "proxnag" else 1.2)
  styles = (("-", "s"), ("--", "D"), ("-.", "^"), (":", "v"))
  for i, (name, by_s) in enumerate((chosen or {}).items()):
    pts = [(s, _stats(rows, p[0], s)) for s, p in sorted(by_s.items()) if p]
    pts = [(s, st) for s, st in pts if st is not None]   # (a partial sweep)
    if pts:
      ls, marker = styles[i % len(styles)]
      ax.errorbar([100 * s for s, _ in pts], [st[0] for _, st in pts],
                  yerr=[st[1] or 0.0 for _, st in pts], marker=marker,
                  ls=ls, capsize=3, color="k", lw=2.2,
                  label=f"{name} (chosen on validation)")
  dense = np.mean([100 * r["dense_test_accuracy"]
                   for r in {r["seed"]: r for r in rows}.values()])
  ax.axhline(dense, color="k", ls="--", lw=0.8, label="dense")
  ax.set_xlabel("pruning rate (%)")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(f"Accuracy after pruning: {title}")
  ax.legend(fontsize=7 if len(entries) > 8 else 8,
            ncol=2 if len(entries) > 8 else 1)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
