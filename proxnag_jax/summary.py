"""What a finished run leaves behind: ``summary.json`` in one schema for
every run, and for pruning runs the exported network (``pruned/``),
``report.md`` and the PNG plots.

Every summary has the fields of :func:`common` (``kind`` 'train' or
'prune', method, model, dataset, seed, target and reached sparsity, test
and validation accuracy and loss, steps, epochs, wall time, images/s, the
device, the config); a pruning run adds its counts (compression, MACs,
masks, the structured export's channels and speed) and the method's own
fields. Whether a run reached its target is decided in one place,
:func:`target_reached`.

>>> model, variables = summary.load_pruned("runs/gat_lenet5")
"""

from __future__ import annotations

import json
import os
from typing import Callable, Optional

import jax
import numpy as np

from proxnag_jax import distributed
from proxnag_jax import hostio
from proxnag_jax import masks as masks_lib
from proxnag_jax import models as models_lib
from proxnag_jax import report as report_lib
from proxnag_jax import surgery
from proxnag_jax.methods import base

Log = Callable[[str], None]

# What a structured method's target counts (``Method.match``) and an
# unstructured one's ('weights').
MATCHES = ("weights", "channels", "macs", "params")


def target_reached(target: float, match: str, kept: float,
                   dense: float) -> bool:
  """Whether a run removed the ``target`` fraction of what ``match``
  counts. ``kept`` / ``dense``: the count after pruning and before.
  Weights and channels are whole units (at least ``round(target · dense)``
  removed: the exact count a method aims at); MACs and parameters are
  budgets (``kept ≤ (1 − target) · dense``, up to float rounding)."""
  if match not in MATCHES:
    raise ValueError(f"unknown match {match!r}; valid: {', '.join(MATCHES)}.")
  if match in ("weights", "channels"):
    return dense - kept >= round(target * dense)
  return kept <= (1 - target) * dense * (1 + 1e-6)


def common(*, kind: str, method: str, config, test: dict, sparsity: float,
           target: float, reached: bool, num_params: int, steps: int,
           epochs: float, wall_time_s: float, images_per_s: float) -> dict:
  """The fields every ``summary.json`` has (``test``: an evaluation with
  ``accuracy``, ``loss`` and, with a validation split, ``val_*``)."""
  return {
      "kind": kind, "method": method, "model": config.model.name,
      "dataset": config.data.name, "seed": config.seed,
      "target_sparsity": target, "sparsity": sparsity,
      "reached_target": bool(reached),
      "test_accuracy": test["accuracy"], "test_loss": test["loss"],
      "val_accuracy": test.get("val_accuracy"),
      "val_loss": test.get("val_loss"),
      "num_params": int(num_params), "steps": int(steps), "epochs": epochs,
      "wall_time_s": wall_time_s, "images_per_s": images_per_s,
      **hostio.device_info(),
  }


def write(workdir: str, summary: dict, config) -> dict:
  """Writes ``summary.json`` (with the config): the completion marker,
  last and atomically, so a run killed before it is resumed, never taken
  as finished; every process waits for it (a sweep's next cell)."""
  summary = {**summary, "config": json.loads(config.to_json_best_effort())}
  hostio.write_json(os.path.join(workdir, "summary.json"), summary)
  distributed.sync("summary")
  return summary


def dense_summary(config, *, ev: dict, state, steps: int, final_lr: float,
                  train_loss: float, wall_time_s: float, train_time_s: float,
                  images_per_s: float, ds) -> dict:
  """The summary of a dense training run."""
  n_val = 0 if ds.val_labels is None else int(len(ds.val_labels))
  return {
      **common(kind="train", method="dense", config=config, test=ev,
               sparsity=ev["sparsity"], target=0.0, reached=True,
               num_params=report_lib.num_params(state.params), steps=steps,
               epochs=config.train.num_epochs, wall_time_s=wall_time_s,
               images_per_s=images_per_s),
      "train_loss": train_loss, "final_learning_rate": final_lr,
      "train_time_s": train_time_s,
      "data": {"source": ds.source, "path": ds.path,
               "train_examples": int(len(ds.train_labels)),
               "val_examples": n_val,
               "test_examples": int(len(ds.test_labels))},
  }


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


def _structured(model, dense_vars, export_model, variables, in_shape,
                batch_size, repeats) -> dict:
  """Channels removed per group, the smaller architecture, its speed."""
  speed = report_lib.measure_speedup(model, dense_vars, export_model,
                                     variables, in_shape[1:],
                                     batch_size=batch_size, repeats=repeats)
  sizes = lambda m, v: {g.name: g.size for g in surgery.prunable_groups(
      surgery.channel_groups(m, v))}
  before, after = sizes(model, dense_vars), sizes(export_model, variables)
  n_ch = sum(before.values())
  removed = n_ch - sum(after.values())
  return {"architecture": surgery.architecture(export_model),
          "channels": n_ch, "channels_removed": removed,
          "channel_sparsity": removed / max(n_ch, 1),
          "layer_channels": {k: [after[k], before[k]] for k in before},
          **speed}


def prune_summary(workdir, config, *, method, model, ds, state, ev, prunable,
                  dense_params, dense_eval, epochs, wall_time_s, log: Log,
                  extra: Optional[dict] = None) -> dict:
  """Writes what every pruning run leaves behind and returns its summary:
  ``pruned/`` (params, BN statistics, masks), ``report.md``, the PNG plots,
  and last ``summary.json``."""
  export_model, variables = method.export_network(state, model)
  params = variables["params"]
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
  n_prunable = dense_rep["prunable_params"]
  n_pruned = n_prunable - rep["prunable_nonzero"]
  target = config.prune.target_sparsity
  structured = {}
  if shrunk or method.structured:
    structured = {**_structured(model, dense_vars, export_model, variables,
                                in_shape, config.run.eval_batch_size,
                                config.run.speed_repeats),
                  "params_dense": dense_rep["num_params"],
                  "params_shrunk": rep["num_params"]}
  if method.structured:
    structured.update(match=method.match, macs_dense=int(dense_macs),
                      macs_shrunk=int(macs["macs"]))
    kept, dense = {
        "channels": (structured["channels"] - structured["channels_removed"],
                     structured["channels"]),
        "macs": (macs["macs"], dense_macs),
        "params": (rep["num_params"], dense_rep["num_params"])}[method.match]
    reached = target_reached(target, method.match, kept, dense)
  else:
    reached = target_reached(target, "weights", rep["prunable_nonzero"],
                             n_prunable)
  counts = mask_counts(state, prunable)
  if counts.get("kept_but_zero"):
    log(f"note: {counts['kept_but_zero']} prunable weights are kept by the "
        "masks but exactly zero (e.g. regrown at zero and not moved since); "
        f"mask sparsity {counts['mask_sparsity']:.4%}, exact-zero sparsity "
        f"{rep['sparsity']:.4%}.")
  extra = dict(extra or {})
  summary = {
      **common(kind="prune", method=method.name, config=config, test=ev,
               sparsity=n_pruned / max(n_prunable, 1), target=target,
               reached=reached, num_params=dense_rep["num_params"],
               steps=int(state.step), epochs=epochs, wall_time_s=wall_time_s,
               images_per_s=extra.pop("images_per_s", 0.0)),
      "num_classes": ds.num_classes, **counts,
      "compression_ratio": dense_rep["num_params"] / max(
          rep["stored_params"], 1),
      "prunable_compression_ratio": (
          n_prunable / max(rep["prunable_nonzero"], 1)),
      "stored_params": rep["stored_params"],
      "theoretical_speedup": dense_macs / max(macs["macs_sparse"], 1),
      **structured,
      "dense_test_accuracy": dense_eval["accuracy"],
      "dense_val_accuracy": dense_eval.get("val_accuracy"),
      "num_nonzero": rep["num_nonzero"], "prunable_params": n_prunable,
      "prunable_nonzero": rep["prunable_nonzero"],
      "macs_dense": dense_macs, "macs_sparse": macs["macs_sparse"],
      "pruned_layers": [l["name"] for l in rep["layers"] if l["prunable"]],
      # Per prunable layer, its nonzero weights and its dense size: the
      # allocation the run arrived at (ADMM's allocation_from reads it).
      "layer_kept": {l["name"]: l["nonzero"] for l in rep["layers"]
                     if l["prunable"]},
      "layer_params": {l["name"]: l["params"] for l in dense_rep["layers"]
                       if l["prunable"]},
      **extra,
  }
  hostio.save_tree(os.path.join(workdir, "pruned"),
                   {"params": params,
                    "batch_stats": variables.get("batch_stats", {}),
                    "masks": masks})
  if distributed.is_primary():
    if config.run.get("plots", True):
      with open(os.path.join(workdir, "trace.jsonl")) as f:
        trace = [json.loads(l) for l in f]
      report_lib.plot_filter_norms(trace, os.path.join(workdir,
                                                       "filter_norms.png"))
      report_lib.plot_trace(trace, os.path.join(workdir,
                                                "sparsity_loss.png"))
      report_lib.plot_weight_histograms(dense_params, params, os.path.join(
          workdir, "weight_histograms.png"), flt)
      report_lib.plot_layer_sparsity(params, os.path.join(
          workdir, "layer_sparsity.png"), prunable=flt)
    report_lib.write_report(workdir, summary, params, masks, macs, flt)
  summary = write(workdir, summary, config)
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


__all__ = ["target_reached", "common", "write", "dense_summary",
           "prune_summary", "mask_counts", "load_pruned", "MATCHES"]
