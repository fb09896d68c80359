"""proxnag_jax.report: the per-layer table, MAC counts with zeros skipped,
report.md and the plots, on a small network (no dataset)."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from proxnag_jax import masks as masks_lib
from proxnag_jax import models
from proxnag_jax import report


def _lenet5_half_zero():
  """LeNet-5's variables with every other weight of conv1 and fc1 zero."""
  model = models.get_model("lenet5", 10)
  v = models.init_model(model, jax.random.PRNGKey(0), (1, 28, 28, 1))
  p = dict(v["params"])
  for name in ("conv1", "fc1"):
    k = np.asarray(p[name]["kernel"]).copy()
    k.reshape(-1)[::2] = 0.0
    p[name] = {**p[name], "kernel": jnp.asarray(k)}
  return model, {"params": p}


def test_layer_table_and_macs_count_the_zeros():
  model, v = _lenet5_half_zero()
  macs = report.count_macs(model, v, (1, 28, 28, 1))
  by = {l["name"]: l for l in macs["layers"]}
  # conv1: 24x24 outputs x 20 channels x 25 taps, half of them skipped.
  assert by["conv1"]["macs"] == 24 * 24 * 20 * 25
  assert by["conv1"]["macs_sparse"] == by["conv1"]["macs"] // 2
  assert by["fc1"]["macs_sparse"] == 800 * 500 // 2
  assert by["conv2"]["macs_sparse"] == by["conv2"]["macs"]
  assert macs["macs_sparse"] < macs["macs"]
  table = report.layer_table(v["params"], macs)
  assert "| conv1/kernel | 5x5x1x20 | 500 | 250 | 50.00% |" in table
  assert table.splitlines()[-1].startswith("| **total** | | 431,080 |")
  assert report.num_params(v["params"]) == 431_080


def test_report_and_plots_are_written(tmp_path):
  model, v = _lenet5_half_zero()
  params = v["params"]
  masks = masks_lib.nonzero_masks(params)
  macs = report.count_macs(model, v, (1, 28, 28, 1))
  summary = {
      "method": "magnitude", "model": "lenet5", "dataset": "mnist",
      "target_sparsity": 0.5, "sparsity": 0.49, "reached_target": False,
      "test_accuracy": 0.98, "dense_test_accuracy": 0.99,
      "val_accuracy": 0.97, "dense_val_accuracy": 0.985,
      "mask_sparsity": 0.49, "kept_but_zero": 0, "num_params": 431_080,
      "num_nonzero": 200_000, "compression_ratio": 2.1,
      "prunable_compression_ratio": 2.2, "macs_dense": macs["macs"],
      "macs_sparse": macs["macs_sparse"], "theoretical_speedup": 1.3,
      "epochs": 3.0, "budget_epochs": 3.0, "wall_time_s": 12.0,
      "backend": "cpu", "device_count": 1, "device_kind": "cpu",
      "pruned_layers": ["conv1/kernel", "fc1/kernel"]}
  report.write_report(str(tmp_path), summary, params, masks, macs)
  text = open(tmp_path / "report.md").read()
  assert "TARGET NOT REACHED" in text and "| fc1/kernel |" in text
  assert "98.00%" in text and "validation 97.00%" in text
  assert "collapse guards" not in text
  # A Prox-NAG run whose collapse guards ended prune phases says so.
  report.write_report(str(tmp_path), {
      **summary, "schedule": "paper", "prune_stop": "target",
      "prune_steps": 564, "restored": 0, "topped_up_by_magnitude": 0,
      "rounds": 3, "final_l1": 0.03, "collapse_stops": 1}, params, masks,
                      macs)
  assert "the collapse guards stopped 1 prune phase(s)" in open(
      tmp_path / "report.md").read()
  trace = [{"kind": "monitor", "step": s, "sparsity": s / 10, "loss": 1 / s,
            "round": 0} for s in range(1, 6)]
  trace += [{"kind": "epoch", "step": 5, "loss": 0.2, "sparsity": 0.5}]
  report.plot_trace(trace, str(tmp_path / "t.png"))
  report.plot_layer_sparsity(params, str(tmp_path / "l.png"))
  report.plot_weight_histograms(params, params, str(tmp_path / "h.png"))
  for f in ("t.png", "l.png", "h.png"):
    with open(tmp_path / f, "rb") as fh:
      assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
  # Without filter norms in the trace there is no filter-norm plot.
  assert not report.plot_filter_norms(trace, str(tmp_path / "f.png"))
  assert not os.path.exists(tmp_path / "f.png")
