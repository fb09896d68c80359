"""Inference speed of a pruned run's exported network against its dense one.

  python -m train.speed --run runs/structured/cells/gat_50_seed0 \
      [--dense runs/structured/dense_seed0] [--batch_size 256] [--repeats 20]
  python -m train.speed --run DIR --widths=8,16,256   # any widths instead
  python -m train.speed --sweep runs/structured      # every structured cell

Loads the run's network (``summary_lib.load_pruned``: the smaller network of a
structured method) and the dense model it started from (``--dense``, default
the run's ``dense_checkpoint``), times one jitted inference batch of each on
this machine in ``--repeats`` interleaved pairs after a warm-up (the median
of the per-pair ratios: ``report.measure_speedup``) and prints the result as
JSON.
``--widths`` (or ``--block_widths``) times a freshly initialised network of
the same model with those widths instead of the run's. ``--portable`` also
exports the run's network portably (``RUN/portable/net.*``, StableHLO and
npz: :func:`proxnag_jax.trace_groups.export_portable`) and the dense model
the same way (``RUN/portable/dense.*``), loads them back with ``jax`` and
``numpy`` only and times the pruned export against the dense Flax model and
against the dense export (``portable_speedup``: like for like), under
``portable`` in the JSON with the largest difference of the exports'
outputs to the Flax networks'.

The result is also written to ``RUN/speed.json`` (not with ``--widths``)
with ``other_processes_cores``: how many cores other processes kept busy
while it timed (from /proc/stat; ~0 on an idle machine; timings taken
beside other jobs are not speed results). ``--sweep DIR`` times every
finished structured cell of a sweep in one process and writes
``DIR/speed.md`` (a table: MACs ratio, measured speed-up, images/s) and
``DIR/speed.json``; the cells' ``summary.json`` keep the timing taken at the
end of each run.
"""

import datetime
import glob
import json
import os
import time

from absl import app
from absl import flags

from proxnag_jax import data as data_lib
from proxnag_jax import hostio
from proxnag_jax import models
from proxnag_jax import report
from proxnag_jax import summary as summary_lib
from proxnag_jax import surgery
from train import cli

_RUN = cli.run_flag("A finished train.prune workdir.")
_SWEEP = flags.DEFINE_string("sweep", None, "A train.sweep workdir: time "
                             "every finished structured cell.")
_DENSE = flags.DEFINE_string("dense", None, "The dense train.train workdir "
                             "(default: the run's dense_checkpoint).")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Images per timed batch.")
_REPEATS = cli.define_once(flags.DEFINE_integer, "repeats", 20,
                           "Timed calls per network.")
_WIDTHS = flags.DEFINE_list("widths", None, "Time these widths instead.")
_BLOCK = flags.DEFINE_list("block_widths", None,
                           "CIFAR ResNets: time these block widths instead.")
_PORTABLE = flags.DEFINE_bool(
    "portable", False, "Also export the run's network portably "
    "(RUN/portable/net.*: StableHLO + npz, trace_groups.export_portable), "
    "load it back without the model's code and time it against the dense "
    "model.")


def machine() -> dict:
  """Where and when a timing was taken."""
  return {"cpu_count": os.cpu_count(),
          "time": datetime.datetime.now().isoformat(timespec="seconds")}


def _busy_cpu_s() -> float | None:
  """CPU seconds all processes have spent busy since boot (Linux)."""
  try:
    with open("/proc/stat") as f:
      v = [int(x) for x in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
  return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def others_load(fn):
  """Runs ``fn()``; returns its result and the mean number of cores other
  processes kept busy meanwhile (``None`` where /proc/stat is missing): 0
  on an idle machine, ~1 beside one single-core job."""
  b0, t0, w0 = _busy_cpu_s(), os.times(), time.perf_counter()
  out = fn()
  b1, t1, w1 = _busy_cpu_s(), os.times(), time.perf_counter()
  if b0 is None or b1 is None:
    return out, None
  own = (t1.user + t1.system) - (t0.user + t0.system)
  return out, max(0.0, (b1 - b0) - own) / max(w1 - w0, 1e-9)


def time_portable(run, model, variables, dense_model, dense_vars, in_shape,
                  batch_size, repeats) -> dict:
  """Exports ``model`` portably to ``RUN/portable/net.*`` and the dense model
  the same way to ``RUN/portable/dense.*``, loads both back (``jax`` and
  ``numpy`` only) and times the pruned export against the dense Flax model
  (``measured_speedup``, as :func:`time_run` times the Flax network) and
  against the dense export (``portable_speedup``: like for like, the same
  convolution lowering on both sides)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from proxnag_jax import trace_groups  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.join(run, "portable"), exist_ok=True)
  x = jax.random.normal(jax.random.PRNGKey(1), (2,) + tuple(in_shape))

  def export(name, net, net_vars):
    path = os.path.join(run, "portable", name)
    apply = lambda v, y: net.apply(v, y, train=False)
    trace_groups.export_portable(path, apply, net_vars, x)
    fn, loaded = trace_groups.load_portable(path)
    gap = float(np.max(np.abs(np.asarray(fn(loaded, x)) -
                              np.asarray(apply(net_vars, x)))))
    return [path + e for e in (".stablehlo", ".npz", ".tree")], fn, loaded, gap

  files, fn, loaded, gap = export("net", model, variables)
  dense_files, dense_fn, dense_loaded, dense_gap = export(
      "dense", dense_model, dense_vars)
  shrunk_call = report.timed_call(fn, loaded, in_shape, batch_size)
  timing, others = others_load(lambda: report.paired_speedup(
      report.timed_call(lambda v, y: dense_model.apply(v, y, train=False),
                        dense_vars, in_shape, batch_size),
      shrunk_call, batch_size, repeats))
  like, _ = others_load(lambda: report.paired_speedup(
      report.timed_call(dense_fn, dense_loaded, in_shape, batch_size),
      shrunk_call, batch_size, repeats))
  return {"files": files, "bytes": sum(os.path.getsize(f) for f in files),
          "dense_files": dense_files,
          "max_abs_diff_to_flax": max(gap, dense_gap),
          "dense_images_per_s": timing["dense_images_per_s"],
          "portable_images_per_s": timing["shrunk_images_per_s"],
          "measured_speedup": timing["measured_speedup"],
          "portable_dense_images_per_s": like["dense_images_per_s"],
          "portable_speedup": like["measured_speedup"],
          "other_processes_cores": None if others is None else round(
              others, 2)}


def time_run(run: str, dense: str | None = None, batch_size: int = 256,
             repeats: int = 20, widths=None, block_widths=None,
             portable: bool = False) -> dict:
  """Times ``run``'s exported network against its dense model (see the
  module docstring); returns the dict written to ``RUN/speed.json``."""
  with open(f"{run}/summary.json") as f:
    s = json.load(f)
  model, variables = summary_lib.load_pruned(run)
  n_cls = s.get("num_classes", 10)
  dense_model = models.get_model(s["model"], n_cls)
  saved = hostio.load_final(dense or s["dense_checkpoint"])
  dense_vars = {"params": saved["params"]}
  if saved.get("batch_stats"):
    dense_vars["batch_stats"] = saved["batch_stats"]
  in_shape = tuple(data_lib.DATASETS[s["dataset"]][0])
  over = {}
  if widths:
    over["widths"] = tuple(int(w) for w in widths)
  if block_widths:
    over["block_widths"] = tuple(int(w) for w in block_widths)
  if over:
    import jax  # pylint: disable=g-import-not-at-top
    model = models.get_model(s["model"], n_cls, **over)
    variables = models.init_model(model, jax.random.PRNGKey(0),
                                  (1,) + in_shape)
  out = {"run": run, **machine()}
  timing, others = others_load(lambda: report.measure_speedup(
      dense_model, dense_vars, model, variables, in_shape,
      batch_size=batch_size, repeats=repeats))
  out.update(timing)
  out["other_processes_cores"] = None if others is None else round(others, 2)
  out["theoretical_speedup"] = (
      report.count_macs(dense_model, dense_vars, (1,) + in_shape)["macs"] /
      report.count_macs(model, variables, (1,) + in_shape)["macs_sparse"])
  out["architecture"] = surgery.architecture(model)
  if portable:
    out["portable"] = time_portable(run, model, variables, dense_model,
                                    dense_vars, in_shape, batch_size,
                                    repeats)
  if over:
    out["timed_widths_instead"] = {k: list(v) for k, v in over.items()}
  return out


def structured_cells(sweep_dir: str) -> list[str]:
  """The finished cells of a sweep that exported a smaller network."""
  cells = []
  for f in sorted(glob.glob(os.path.join(sweep_dir, "cells", "*",
                                         "summary.json"))):
    with open(f) as fh:
      if json.load(fh).get("architecture"):
        cells.append(os.path.dirname(f))
  return cells


def _fmt(x) -> str:
  return "n/a" if x is None else f"{x:.2f}"


def sweep_table(rows: list[dict]) -> str:
  lines = ["| cell | MACs ÷ | measured speed-up | dense img/s | "
           "shrunk img/s | cores busy with other jobs |",
           "|---|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(
        f"| {os.path.basename(r['run'])} | {r['theoretical_speedup']:.1f}x | "
        f"{r['measured_speedup']:.2f}x | {r['dense_images_per_s']:,.0f} | "
        f"{r['shrunk_images_per_s']:,.0f} | "
        f"{_fmt(r['other_processes_cores'])} |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  if bool(_RUN.value) == bool(_SWEEP.value):
    raise app.UsageError("give exactly one of --run and --sweep.")
  if _SWEEP.value:
    if _WIDTHS.value or _BLOCK.value:
      raise app.UsageError("--widths/--block_widths go with --run.")
    cells = structured_cells(_SWEEP.value)
    if not cells:
      raise app.UsageError(f"{_SWEEP.value}/cells holds no finished "
                           "structured run (summary.json with an "
                           "architecture).")
    rows = []
    for c in cells:
      rows.append(time_run(c, _DENSE.value, _BATCH.value, _REPEATS.value))
      print(f"{os.path.basename(c)}: {rows[-1]['measured_speedup']:.2f}x "
            f"(MACs {rows[-1]['theoretical_speedup']:.1f}x fewer)",
            flush=True)
    table = sweep_table(rows)
    with open(os.path.join(_SWEEP.value, "speed.md"), "w") as f:
      f.write(f"Inference timing, batch {_BATCH.value}, median ratio of "
              f"{_REPEATS.value} interleaved dense/shrunk pairs "
              f"(`python -m train.speed --sweep "
              f"{_SWEEP.value}`), {rows[0]['time']}; cpu_count "
              f"{rows[0]['cpu_count']}.\n\n" + table)
    hostio.write_json(os.path.join(_SWEEP.value, "speed.json"),
                      {"cells": rows})
    print(table)
    return
  if not os.path.exists(f"{_RUN.value}/summary.json"):
    raise app.UsageError(f"{_RUN.value}/summary.json does not exist: --run "
                         "must be a finished pruning run.")
  if _PORTABLE.value and (_WIDTHS.value or _BLOCK.value):
    raise app.UsageError("--portable exports the run's own network: drop "
                         "--widths/--block_widths.")
  out = time_run(_RUN.value, _DENSE.value, _BATCH.value, _REPEATS.value,
                 _WIDTHS.value, _BLOCK.value, _PORTABLE.value)
  if not (_WIDTHS.value or _BLOCK.value):  # not the run's network otherwise
    hostio.write_json(os.path.join(_RUN.value, "speed.json"), out)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  app.run(main)
