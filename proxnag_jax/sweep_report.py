"""A sweep's outputs: ``results.csv``, ``table.md`` (paper Table 1 layout,
mean ± std over seeds, the paper's numbers beside ours when the config gives
them, the rows chosen on validation), ``selection.json`` and
``accuracy_vs_sparsity.png`` (paper Fig. 9), from the cells' summaries.
Running the cells is :mod:`proxnag_jax.sweep`.

>>> sweep_report.write_outputs(config, "runs/sweep", rows, note="")
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from proxnag_jax import hostio
from proxnag_jax import report


CSV_FIELDS = ("method", "target_sparsity", "seed", "sparsity",
              "mask_sparsity", "kept_but_zero", "val_accuracy",
              "test_accuracy", "dense_val_accuracy", "dense_test_accuracy",
              "compression_ratio", "theoretical_speedup", "num_params",
              "stored_params", "num_nonzero", "epochs", "budget_epochs",
              "total_epochs_with_dense", "wall_time_s", "reached_target",
              "channel_sparsity", "params_shrunk", "measured_speedup",
              "model", "dataset", "workdir")


def method_of(config, name: str) -> tuple[str, dict]:
  """``(method, setting overrides)`` of a sweep entry: a method's own name,
  or a name in ``config.variants``."""
  variants = config.get("variants", None) or {}
  if name in variants:
    v = dict(variants[name])
    return v.pop("method", None), v
  return name, {}


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
                title=f"{config.base.model.name} on {config.base.data.name}",
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


def _last_traced(row: dict, field: str):
  """A run's ``field``: its summary's, else the last value its
  ``trace.jsonl`` recorded (runs finished before the summary had it)."""
  if row.get(field) is not None:
    return row[field]
  value = None
  try:
    with open(os.path.join(row.get("workdir", ""), "trace.jsonl")) as f:
      for line in f:
        rec = json.loads(line)
        if rec.get(field) is not None:
          value = rec[field]
  except OSError:
    pass
  return value


def _missed(rows, method, s, require=None) -> int:
  """Runs of ``method`` at sparsity ``s`` that missed their target, or a
  requirement ``{field: minimum}`` (``config.select_require``)."""
  def fails(r):
    if not r.get("reached_target", True):
      return True
    for field, least in (require or {}).items():
      v = _last_traced(r, field)
      if v is None or v < least:
        return True
    return False
  return sum(1 for r in rows if r["method"] == method and
             abs(r["target_sparsity"] - s) < 1e-9 and fails(r))


def active_selections(config) -> dict:
  """``config.select_on_val`` without the groups none of whose entries is
  in ``config.methods`` (the sweep does not run them)."""
  return {name: members for name, members in
          (config.get("select_on_val", None) or {}).items()
          if any(m in config.methods for m in members)}


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
  reached it: a less sparse network would otherwise win on accuracy; the
  same for a run below ``config.select_require`` (``{field: minimum}`` of
  its summary or, failing that, its trace's last value: e.g.
  ``{'near_binary': 0.99}``, a relaxed mask that ended binary). The test
  set plays no part; the table reports the chosen entry's test
  accuracy."""
  scope = config.get("select_scope", "column")
  require = dict(config.get("select_require", None) or {})
  out = {}
  for name, members in active_selections(config).items():
    val = {(m, s): _stats(rows, m, s, "val_accuracy") for m in members
           for s in config.sparsities}
    if scope == "all":
      cols = [s for s in config.sparsities
              if all(val[m, s] is not None for m in members)]
      ok = [m for m in members
            if not any(_missed(rows, m, s, require) for s in cols)] or members
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
            not _missed(rows, m, s, require)] or members
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
  title = f"{config.base.model.name} on {config.base.data.name}"
  lines = [f"# {title}: test accuracy "
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
  selections = active_selections(config)

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
    req = config.get("select_require", None) or {}
    if req:
      how += (" (only entries whose runs have "
              + ", ".join(f"{k} >= {v:g}" for k, v in req.items())
              + " where any does)")
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
  budget = config.base.prune.budget_epochs
  lines += table(f"Epochs trained (mean) against the budget ({budget:g} "
                 "epochs after the dense run for dense-start methods, "
                 f"{budget + config.base.dense.num_epochs:g} from scratch):",
                 "epochs", scale=1.0, fmt=mean_only)
  return "\n".join(lines) + "\n"


def plot_accuracy(rows, path, title="", chosen=None) -> None:
  """Test accuracy vs pruning rate, one line per sweep entry (mean and
  sample std over seeds); ``chosen`` (:func:`chosen_on_val`) adds a bold
  line per group through the entries chosen on validation."""
  plt = report._plt()  # pylint: disable=protected-access
  if plt is None:
    return
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
  report.save_png(fig, path)
  plt.close(fig)
