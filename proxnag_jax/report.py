"""Parameter and multiply-accumulate (MAC) counts per layer, tables, plots.

MACs follow the usual convention of pruning papers (and of ``thop``): a conv
or dense layer costs ``output positions x nonzero kernel weights`` MACs per
example; biases, BatchNorm, activations and pooling are not counted. With a
mask (or zeros in the kernel) the zeros are skipped, so
``dense MACs / sparse MACs`` is the theoretical speed-up.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from proxnag_jax import masks as masks_lib

PyTree = Any


def layer_output_shapes(model: nn.Module, variables: dict,
                        input_shape) -> dict[tuple, tuple]:
  """Maps each Conv/Dense module path to its output shape (no FLOPs run)."""
  shapes = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if (context.method_name == "__call__" and
        isinstance(context.module, (nn.Conv, nn.Dense))):
      shapes[tuple(context.module.path)] = tuple(out.shape)
    return out

  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return shapes


def count_macs(model: nn.Module, variables: dict, input_shape,
               masks: Optional[PyTree] = None) -> dict:
  """Per-layer and total MACs for one example, dense and with zeros skipped.

  Args:
    model: a Flax module.
    variables: its variables (``{'params': ..., ...}``); zeros in the kernels
      count as skipped.
    input_shape: shape of one batch, e.g. ``(1, 32, 32, 3)``.
    masks: optional masks over ``variables['params']``; masked-out weights
      count as zeros.

  Returns:
    ``{'layers': [{'name', 'kernel_shape', 'output_shape', 'params',
    'nonzero', 'macs', 'macs_sparse'}], 'macs', 'macs_sparse',
    'theoretical_speedup'}``.

  Example:
    >>> count_macs(get_model('resnet20'), variables, (1, 32, 32, 3))['macs']
    40551040
  """
  shapes = layer_output_shapes(model, variables, input_shape)
  params = variables["params"]
  layers = []
  for path, out_shape in shapes.items():
    node = params
    for k in path:
      node = node[k]
    kernel = np.asarray(node["kernel"])
    alive = kernel != 0
    if masks is not None:
      m = masks
      for k in path:
        m = m[k]
      alive = alive & np.asarray(m["kernel"]).astype(bool)
    positions = math.prod(out_shape[1:-1])   # spatial output positions
    layers.append({
        "name": "/".join(path),
        "kernel_shape": list(kernel.shape),
        "output_shape": list(out_shape[1:]),
        "params": int(kernel.size),
        "nonzero": int(alive.sum()),
        "macs": int(positions * kernel.size),
        "macs_sparse": int(positions * alive.sum()),
    })
  dense = sum(l["macs"] for l in layers)
  sparse = sum(l["macs_sparse"] for l in layers)
  return {"layers": layers, "macs": dense, "macs_sparse": sparse,
          "theoretical_speedup": dense / sparse if sparse else float("inf")}


def _inference_fn(model: nn.Module, variables: dict, input_shape,
                  batch_size: int):
  """A warmed-up ``() -> seconds`` timing one jitted inference batch."""
  return timed_call(lambda v, x: model.apply(v, x, train=False), variables,
                    input_shape, batch_size)


def timed_call(apply_fn, variables: dict, input_shape, batch_size: int):
  """A warmed-up ``() -> seconds`` timing ``apply_fn(variables, x)``
  (jitted) on one batch of ``(batch_size, *input_shape)``: any network,
  e.g. one loaded with :func:`proxnag_jax.trace_groups.load_portable`."""
  fn = jax.jit(apply_fn)
  x = jax.random.normal(jax.random.PRNGKey(0),
                        (batch_size,) + tuple(input_shape), jnp.float32)
  variables = jax.device_put(variables)
  for _ in range(2):   # compile, then one more so caches are warm
    fn(variables, x).block_until_ready()

  def timed():
    t = time.perf_counter()
    fn(variables, x).block_until_ready()
    return time.perf_counter() - t
  return timed


def inference_time(model: nn.Module, variables: dict, input_shape,
                   batch_size: int = 256, repeats: int = 20) -> float:
  """Median wall time (s) of one jitted inference batch of
  ``(batch_size, *input_shape)`` (after warm-up calls), on the default
  device."""
  timed = _inference_fn(model, variables, input_shape, batch_size)
  return float(np.median([timed() for _ in range(repeats)]))


def measure_speedup(dense_model, dense_vars, small_model, small_vars,
                    input_shape, batch_size: int = 256,
                    repeats: int = 20) -> dict:
  """Inference speed of a dense network and its shrunk version, measured on
  this machine with the same batch.

  The two networks are timed in ``repeats`` interleaved pairs (the order
  alternating between pairs), and ``measured_speedup`` is the median of the
  per-pair ratios dense / shrunk wall time: a machine whose speed drifts
  (a shared or throttled CPU) then slows both sides of a pair alike. On
  this project's 2-core CPUs, medians of separate runs of 20 varied by
  +-20% between calls of the same network; paired ratios are steadier.

  Returns ``{'dense_images_per_s', 'shrunk_images_per_s' (from the median
  times), 'measured_speedup', 'speedup_batch_size', 'speedup_device'}``.
  """
  if repeats < 1:
    raise ValueError("measure_speedup: repeats must be >= 1.")
  dense = _inference_fn(dense_model, dense_vars, input_shape, batch_size)
  small = _inference_fn(small_model, small_vars, input_shape, batch_size)
  return paired_speedup(dense, small, batch_size, repeats)


def paired_speedup(dense, small, batch_size: int, repeats: int = 20) -> dict:
  """:func:`measure_speedup`'s timing of two warmed-up ``() -> seconds``
  callables (:func:`timed_call`)."""
  if repeats < 1:
    raise ValueError("paired_speedup: repeats must be >= 1.")
  t_dense, t_small = [], []
  for i in range(repeats):
    if i % 2:
      t_small.append(small())
      t_dense.append(dense())
    else:
      t_dense.append(dense())
      t_small.append(small())
  ratios = np.asarray(t_dense) / np.asarray(t_small)
  return {"dense_images_per_s": batch_size / float(np.median(t_dense)),
          "shrunk_images_per_s": batch_size / float(np.median(t_small)),
          "measured_speedup": float(np.median(ratios)),
          "speedup_batch_size": batch_size,
          "speedup_device": str(jax.devices()[0].device_kind)}


def num_params(tree: PyTree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def layer_table(params: PyTree, macs: Optional[dict] = None,
                masks: Optional[PyTree] = None, prunable=None) -> str:
  """A Markdown table: per leaf shape, params, nonzeros, sparsity, MACs."""
  rep = masks_lib.sparsity_report(params, masks, prunable)
  by_kernel = {}
  if macs:
    by_kernel = {l["name"] + "/kernel": l for l in macs["layers"]}
  rows = ["| layer | shape | params | nonzero | sparsity | MACs | MACs (sparse) |",
          "|---|---|---:|---:|---:|---:|---:|"]
  for l in rep["layers"]:
    m = by_kernel.get(l["name"])
    rows.append(
        f"| {l['name']} | {'x'.join(map(str, l['shape']))} | {l['params']:,} "
        f"| {l['nonzero']:,} | {l['sparsity']:.2%} | "
        f"{m['macs']:,} | {m['macs_sparse']:,} |" if m else
        f"| {l['name']} | {'x'.join(map(str, l['shape']))} | {l['params']:,} "
        f"| {l['nonzero']:,} | {l['sparsity']:.2%} | | |")
  rows.append(
      f"| **total** | | {rep['num_params']:,} | {rep['num_nonzero']:,} | "
      f"{rep['sparsity']:.2%} (prunable) | "
      + (f"{macs['macs']:,} | {macs['macs_sparse']:,} |" if macs else " | |"))
  return "\n".join(rows)


# ---------------------------------------------------------------------------
# Plots (matplotlib, Agg backend; PNG files).
# ---------------------------------------------------------------------------


def _plt():
  """matplotlib.pyplot (Agg), or None without matplotlib (the ``plots``
  extra): the PNG plots are then skipped, once with a warning."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    import warnings  # pylint: disable=g-import-not-at-top
    warnings.warn("matplotlib is not installed, so no PNG plots are written: "
                  "pip install 'proxnag_jax[plots]'.", stacklevel=3)
    return None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def save_png(fig, path: str) -> None:
  """Writes ``fig`` as a PNG cropped to what it draws: ``bbox_inches='tight'``
  keeps every label without ``tight_layout``'s extra layout pass (a plot in
  about two thirds of the time)."""
  fig.savefig(path, dpi=120, bbox_inches="tight")


def plot_trace(trace: list[dict], path: str, title: str = "") -> None:
  """Sparsity and training loss against steps, rounds marked (paper Fig. 6)."""
  plt = _plt()
  if plt is None:
    return None
  rows = [r for r in trace if r.get("kind") in ("monitor", "epoch")]
  if not rows:
    return
  steps = [r["step"] for r in rows]
  fig, ax1 = plt.subplots(figsize=(9, 4.5))
  ax1.plot(steps, [100 * r["sparsity"] for r in rows], color="tab:blue",
           label="sparsity of w~ (%)")
  ramp = [(r["step"], 100 * r["ramp"]) for r in rows if "ramp" in r]
  if ramp:
    ax1.plot(*zip(*ramp), color="tab:blue", ls="--", lw=0.8,
             label="target ramp (%)")
  ax1.set_xlabel("training step")
  ax1.set_ylabel("sparsity (%)", color="tab:blue")
  ax2 = ax1.twinx()
  ax2.plot(steps, [r["loss"] for r in rows], color="tab:red", alpha=0.7,
           label="train loss")
  ax2.set_ylabel("train loss", color="tab:red")
  ax2.set_yscale("log")
  for r in trace:
    if r.get("kind") == "phase_start":
      ls = "-" if r["phase"] == "prune" else ":"
      ax1.axvline(r["step"], color="gray", ls=ls, lw=0.8)
      if r["phase"] == "prune":
        ax1.text(r["step"], 0.98, f" r{r['round']}", va="top",
                 transform=ax1.get_xaxis_transform(), fontsize=8)
  ax1.set_title(title or "Sparsity and loss (solid: prune-train starts, "
                "dotted: fine-tune starts)", fontsize=10)
  save_png(fig, path)
  plt.close(fig)


def plot_filter_norms(trace: list[dict], path: str) -> bool:
  """Per kernel, the mean ratio of its filters' norms to their norms at the
  prune phase's start (the monitors' ``fnorm/<layer>``): a network that
  shrinks under the proximal step shows here. Returns whether it wrote."""
  rows = [r for r in trace if r.get("kind") == "monitor"]
  names = sorted({k for r in rows for k in r if k.startswith("fnorm/")})
  if not names:
    return False
  plt = _plt()
  if plt is None:
    return False
  fig, ax = plt.subplots(figsize=(9, 4.5))
  cmap = plt.get_cmap("viridis")
  for i, k in enumerate(names):
    pts = [(r["step"], r[k]) for r in rows if k in r]
    ax.plot(*zip(*pts), color=cmap(i / max(len(names) - 1, 1)), lw=1,
            label=k[len("fnorm/"):].replace("/kernel", ""))
  ax.set_yscale("log")
  ax.axhline(1.0, color="gray", lw=0.8)
  ax.set_xlabel("training step")
  ax.set_ylabel("filter norm / norm at phase start")
  ax.set_title("Filter norms during prune-training (mean per kernel)",
               fontsize=10)
  if len(names) <= 24:
    ax.legend(fontsize=6, ncol=3)
  save_png(fig, path)
  plt.close(fig)
  return True


def plot_weight_histograms(before: PyTree, after: PyTree, path: str,
                           prunable=None) -> None:
  """log10|w| of prunable weights before and after pruning (paper Fig. 7)."""
  plt = _plt()
  if plt is None:
    return None

  def mags(tree):
    which = masks_lib.prunable_tree(tree, prunable)
    vals = [np.abs(np.asarray(p)).ravel()
            for p, w in zip(jax.tree.leaves(tree), jax.tree.leaves(which))
            if w]
    v = np.concatenate(vals)
    return np.log10(v[v > 0]), int((v == 0).sum()), v.size

  (b, bz, n), (a, az, _) = mags(before), mags(after)
  fig, ax = plt.subplots(figsize=(8, 4))
  lo = min(b.min(), a.min() if a.size else b.min())
  hi = max(b.max(), a.max() if a.size else b.max())
  bins = np.linspace(lo, hi, 80)
  ax.hist(b, bins=bins, alpha=0.6, label=f"dense ({n - bz:,} nonzero)")
  ax.hist(a, bins=bins, alpha=0.6,
          label=f"pruned ({n - az:,} nonzero, {az / n:.1%} zero)")
  ax.set_xlabel("log10 |w| (nonzero prunable weights)")
  ax.set_ylabel("count")
  # A fixed place: matplotlib's "best" searches the 80 bars of both
  # histograms, slowly for a large network.
  ax.legend(loc="upper left")
  ax.set_title("Weight magnitudes before and after pruning")
  save_png(fig, path)
  plt.close(fig)


def plot_layer_sparsity(params: PyTree, path: str, masks=None,
                        prunable=None) -> None:
  """Bars of per-layer sparsity for the prunable leaves."""
  plt = _plt()
  if plt is None:
    return None
  rep = masks_lib.sparsity_report(params, masks, prunable)
  layers = [l for l in rep["layers"] if l["prunable"]]
  fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers) + 2), 4))
  ax.bar(range(len(layers)), [100 * l["sparsity"] for l in layers])
  ax.set_xticks(range(len(layers)))
  ax.set_xticklabels([l["name"].replace("/kernel", "") for l in layers],
                     rotation=75, fontsize=7)
  ax.set_ylabel("sparsity (%)")
  ax.axhline(100 * rep["sparsity"], color="k", ls="--", lw=0.8,
             label=f"overall {rep['sparsity']:.2%}")
  ax.legend()
  ax.set_title("Per-layer sparsity")
  save_png(fig, path)
  plt.close(fig)


def write_report(workdir, summary, params, masks, macs, prunable=None):
  s = summary
  lines = [
      f"# {s['method']} pruning: {s['model']} on {s['dataset']}", "",
      f"- target sparsity {s['target_sparsity']:.2%}, reached "
      f"**{s['sparsity']:.2%}** of prunable weights "
      f"({'target reached' if s['reached_target'] else 'TARGET NOT REACHED'})",
      f"- test accuracy **{s['test_accuracy']:.2%}** (dense "
      f"{s['dense_test_accuracy']:.2%})"
      + (f"; validation {s['val_accuracy']:.2%} (dense "
         f"{s['dense_val_accuracy']:.2%})" if s.get("val_accuracy")
         is not None and s.get("dense_val_accuracy") is not None else ""),
      f"- outcome: {s['outcome']}" if "outcome" in s else None,
      (f"- masks switch off {s['mask_sparsity']:.2%}; {s['kept_but_zero']:,} "
       "kept weights are exactly zero" if s.get("mask_sparsity") is not None
       else None),
      f"- parameters {s['num_params']:,} -> {s['num_nonzero']:,} nonzero: "
      f"compression {s['compression_ratio']:.2f}x (non-prunable leaves "
      f"counted as stored; over the prunable weights "
      f"{s.get('prunable_compression_ratio', float('nan')):.2f}x)",
      f"- MACs per example {s['macs_dense']:,} -> {s['macs_sparse']:,}: "
      f"theoretical speed-up {s['theoretical_speedup']:.2f}x",
      (f"- Prox-NAG schedule '{s['schedule']}'"
       f"{', scale-invariant step' if s.get('scale_invariant') else ''}: "
       f"prune-training stopped at step {s['prune_steps']} "
       f"({s['prune_stop'] or 'end'}); {s['restored']:,} weights given back "
       f"to the exact count, {s['topped_up_by_magnitude']:,} pruned by "
       "magnitude to it" if "prune_stop" in s else None),
      (f"- **the collapse guards stopped {s['collapse_stops']} prune "
       "phase(s)** (training loss or accuracy; each phase's `reason` in "
       "trace.jsonl)" if s.get("collapse_stops") else None),
      (f"- {s['rounds']} rounds, final lambda {s['final_l1']:.4g}, "
       if "rounds" in s else "- ") +
      f"{s['epochs']:.1f} epochs of pruning (budget "
      f"{s.get('budget_epochs', float('nan')):g}), wall time "
      f"{s['wall_time_s']:.0f} s on {s['backend']} "
      f"({s['device_count']} x {s['device_kind']})",
      f"- pruned layers: {', '.join(s['pruned_layers'])}", "",
      "## Per layer", "",
      layer_table(params, macs, masks, prunable), ""]
  plots = [f"![{title}]({f})\n" for title, f in (
      ("sparsity and loss", "sparsity_loss.png"),
      ("filter norms", "filter_norms.png"),
      ("weight histograms", "weight_histograms.png"),
      ("layer sparsity", "layer_sparsity.png"))
           if os.path.exists(os.path.join(workdir, f))]
  if plots:      # (config.run.plots = False draws none)
    lines += ["## Plots", ""] + plots
  lines = [l for l in lines if l is not None]
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(lines))
