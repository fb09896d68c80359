"""Methods x target sparsities x seeds, with one budget, as in paper Table 1.

``python -m train.sweep --config configs/<sweep>.py --workdir DIR`` runs every
cell in ``DIR/cells/<method>_<sparsity>_seed<seed>`` (finished cells, those
with a ``summary.json``, are skipped; an unfinished one resumes), sharing one
dense model per seed (``DIR/dense_seed<seed>``) among the methods that start
from it, and writes ``results.csv``, ``table.md`` (paper Table 1 layout, mean
± std over seeds, with the paper's numbers beside ours when the config gives
them) and ``accuracy_vs_sparsity.png`` (paper Fig. 9).
"""

from __future__ import annotations

import copy
import csv
import json
import os
import time
from typing import Callable

import numpy as np

from proxnag_jax import engine
from proxnag_jax import method_run
from proxnag_jax import methods as methods_lib
from proxnag_jax import prune_run

CSV_FIELDS = ("method", "target_sparsity", "seed", "sparsity", "test_accuracy",
              "dense_test_accuracy", "compression_ratio",
              "theoretical_speedup", "num_params", "num_nonzero", "epochs",
              "total_epochs_with_dense", "wall_time_s", "reached_target",
              "model", "dataset", "workdir")


def cell_name(method: str, sparsity: float, seed: int) -> str:
  return f"{method}_{round(100 * sparsity, 2):g}_seed{seed}"


def validate(config) -> None:
  for m in config.methods:
    if m not in methods_lib.METHOD_NAMES:
      raise ValueError(f"unknown method {m!r}; valid methods: "
                       f"{', '.join(methods_lib.METHOD_NAMES)}.")
  for s in config.sparsities:
    if not 0.0 < s < 1.0:
      raise ValueError(f"sparsity {s} is not in (0, 1): a method cannot "
                       "produce it.")
  if not config.seeds:
    raise ValueError("config.seeds is empty.")


def cell_config(config, method: str, sparsity: float, seed: int, dense_dir):
  c = copy.deepcopy(config.base)
  with c.unlocked():
    c.method = method
    c.target_sparsity = float(sparsity)
    c.seed = int(seed)
    c.data_dir = config.data_dir
    c.dense_checkpoint = dense_dir
  return c


def budget_note(config) -> str:
  b = config.base
  return (f"every method gets {b.dense.num_epochs + b.budget_epochs} epochs "
          f"in all: methods that start from the dense model (proxnag, "
          f"magnitude, gmp, l2) reuse the shared {b.dense.num_epochs}-epoch "
          f"dense run and then train {b.budget_epochs} epochs (Prox-NAG: its "
          "final fine-tune fills what its rounds left of that budget); "
          "methods that start from scratch (snip, sparse_momentum, dsr, "
          f"random) train {b.dense.num_epochs + b.budget_epochs} epochs.")


def run(config, workdir: str, *, overwrite: bool = False,
        log: Callable[[str], None] = print) -> list[dict]:
  validate(config)
  engine.prepare_workdir(workdir, config, overwrite)
  cells = [(m, s, seed) for seed in config.seeds for s in config.sparsities
           for m in config.methods]
  note = budget_note(config)
  log(f"sweep: {len(cells)} cells; {note}")
  t0 = time.time()
  rows, ran = [], 0
  for i, (m, s, seed) in enumerate(cells):
    name = cell_name(m, s, seed)
    wd = os.path.join(workdir, "cells", name)
    done_path = os.path.join(wd, "summary.json")
    if not os.path.exists(done_path):
      dense_dir = os.path.join(workdir, f"dense_seed{seed}")
      if not os.path.exists(os.path.join(dense_dir, "summary.json")):
        d = prune_run.dense_config(cell_config(config, m, s, seed, ""))
        log(f"[dense seed {seed}] training the shared dense model")
        engine.train(d, dense_dir, log=log)
      c = cell_config(config, m, s, seed, dense_dir)
      elapsed = time.time() - t0
      eta = (f", ETA {elapsed / ran * (len(cells) - i) / 60:.0f} min"
             if ran else "")
      log(f"[{i + 1}/{len(cells)}] {name} (sweep time {elapsed / 60:.1f} min"
          f"{eta})")
      ran += 1
      quiet = lambda msg: log(f"  {msg}") if msg.startswith("done") else None
      if m == "proxnag":
        prune_run.prune(c, wd, log=quiet)
      else:
        method_run.run(c, wd, log=quiet)
    with open(done_path) as f:
      summ = json.load(f)
    summ["workdir"] = wd
    summ.setdefault("total_epochs_with_dense", summ["epochs"] + (
        config.base.dense.num_epochs))
    rows.append(summ)
  write_outputs(config, workdir, rows, note)
  return rows


def write_outputs(config, workdir, rows, note) -> None:
  with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow(r)
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(table_md(config, rows, note))
  plot_accuracy(rows, os.path.join(workdir, "accuracy_vs_sparsity.png"),
                title=f"{config.base.model} on {config.base.dataset}")


def _stats(rows, method, s, key="test_accuracy"):
  v = [100 * r[key] for r in rows if r["method"] == method and
       abs(r["target_sparsity"] - s) < 1e-9]
  return (float(np.mean(v)), float(np.std(v)), len(v)) if v else None


def table_md(config, rows, note) -> str:
  sps = list(config.sparsities)
  head = "| method | " + " | ".join(f"{100 * s:g}%" for s in sps) + " |"
  sep = "|---|" + "---:|" * len(sps)
  dense = [100 * r["dense_test_accuracy"] for r in rows]
  lines = [f"# {config.base.model} on {config.base.dataset}: test accuracy "
           "(%) after pruning", "",
           f"Mean ± std over seeds {list(config.seeds)}. {note}", "",
           head, sep,
           f"| dense baseline | {np.mean(dense):.2f} ± {np.std(dense):.2f} |"
           + " |" * (len(sps) - 1)]
  if config.get("paper_dense", None):
    lines.append(f"| dense baseline (paper) | {config.paper_dense:.2f} |"
                 + " |" * (len(sps) - 1))
  paper = config.get("paper_table", None) or {}
  paper_sps = list(config.get("paper_sparsities", ()))
  for m in config.methods:
    cells = []
    for s in sps:
      st = _stats(rows, m, s)
      cells.append("" if st is None else f"{st[0]:.2f} ± {st[1]:.2f}")
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if m in paper:
      vals = dict(zip([round(x, 6) for x in paper_sps], paper[m]))
      lines.append(f"| {m} (paper) | " + " | ".join(
          f"{vals[round(s, 6)]:.2f}" if round(s, 6) in vals else ""
          for s in sps) + " |")
  lines += ["", "Achieved sparsity of the prunable weights (mean):", "",
            head, sep]
  for m in config.methods:
    cells = []
    for s in sps:
      st = _stats(rows, m, s, "sparsity")
      cells.append("" if st is None else f"{st[0]:.2f}")
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot_accuracy(rows, path, title="") -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for m in sorted({r["method"] for r in rows}):
    sps = sorted({r["target_sparsity"] for r in rows if r["method"] == m})
    st = [_stats(rows, m, s) for s in sps]
    ax.errorbar([100 * s for s in sps], [x[0] for x in st],
                yerr=[x[1] for x in st], marker="o", capsize=3, label=m,
                lw=2.5 if m == "proxnag" else 1.2)
  dense = np.mean([100 * r["dense_test_accuracy"] for r in rows])
  ax.axhline(dense, color="k", ls="--", lw=0.8, label="dense")
  ax.set_xlabel("pruning rate (%)")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(f"Accuracy after pruning: {title}")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
