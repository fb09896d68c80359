"""The iterative Prox-NAG pruning loop: pure pieces and the whole command."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import proxnag_jax as pj
from configs import proxnag_lenet5_mnist
from proxnag_jax import engine
from proxnag_jax import prune_run
from proxnag_jax import pruning

QUIET = dict(log=lambda *_: None)


# ---------------------------------------------------------------------------
# Pure pieces.
# ---------------------------------------------------------------------------


def _params():
  rng = np.random.default_rng(0)
  return {"a": {"kernel": jnp.asarray(rng.normal(size=(20, 10)), jnp.float32),
                "bias": jnp.ones(10)},
          "b": {"kernel": jnp.asarray(rng.normal(size=(10, 5)), jnp.float32)}}


def test_repair_overshoot_restores_exactly_to_target():
  start = _params()
  over = pj.apply_masks(start, pj.magnitude_masks(start, 0.8, scope="global"))
  fixed, restored = pruning.repair_overshoot(over, start, 0.6)
  assert restored == round(0.8 * 250) - round(0.6 * 250)
  assert pj.sparsity_report(fixed)["prunable_nonzero"] == 250 - 150
  # Restored weights take their round-start values, and are the largest.
  for f, o, s in zip(jax.tree.leaves(fixed), jax.tree.leaves(over),
                     jax.tree.leaves(start)):
    back = (np.asarray(f) != 0) & (np.asarray(o) == 0)
    np.testing.assert_array_equal(np.asarray(f)[back], np.asarray(s)[back])
  # No overshoot: unchanged.
  _, n = pruning.repair_overshoot(over, start, 0.9)
  assert n == 0


def test_reached_is_an_exact_count_not_a_float_compare():
  # 0.9 is not representable; a float32 sparsity can land just below it.
  p = {"k": jnp.ones((431, 1000))}
  n = 431_000
  pruned = pj.apply_masks(p, pj.magnitude_masks(p, 0.9))
  assert pruning.reached(pruned, 0.9)
  one_short = pruned["k"].reshape(-1).at[jnp.argmin(pruned["k"])].set(1.0)
  assert not pruning.reached({"k": one_short.reshape(431, 1000)}, 0.9)
  assert pruning.target_fraction(p, 0.9) == round(0.9 * n) / n


def test_masks_from_params_only_prunable():
  p = _params()
  p["a"]["bias"] = p["a"]["bias"].at[0].set(0.0)
  m = pruning.masks_from_params(p)
  assert bool(np.all(m["a"]["bias"]))     # biases are never pruned
  k = np.asarray(p["a"]["kernel"]).copy()
  k[0, 0] = 0
  m = pruning.masks_from_params({**p, "a": {**p["a"], "kernel": jnp.asarray(k)}})
  assert not bool(m["a"]["kernel"][0, 0])


def test_monitor_keeps_the_sparsest_iterate_and_stop_reasons():
  p = _params()
  tx = pj.proxnag(0.1, 0.0)
  train = engine.TrainState(step=jnp.int32(0), params=p, batch_stats={},
                            opt_state=tx.init(p))
  st = pruning.init_state(train, 0.1)
  st, s = pruning.monitor(st, jnp.float32(1.0), 1, ema=0.5, warmup_monitors=1)
  assert float(s) == 0.0 and float(st.loss_ref) == 1.0
  # A sparser iterate becomes the best.
  sp = pj.apply_masks(p, pj.magnitude_masks(p, 0.5))
  st2 = st.replace(train=train.replace(
      opt_state=pj.set_sparse_params(train.opt_state, sp)))
  st2, s2 = pruning.monitor(st2, jnp.float32(1.0), 2, ema=0.5,
                            warmup_monitors=1)
  assert float(st2.best_sparsity) == pytest.approx(float(s2))
  assert float(s2) > 0.49
  kw = dict(target=0.9, drop_tol=0.01, patience=3, loss_rise=2.0,
            loss_rise_min=0.1)
  assert pruning.stop_reason(st2, 0.95, **kw) == "target"
  assert pruning.stop_reason(st2, float(s2) - 0.05, **kw) == "local_max"
  assert pruning.stop_reason(st2, float(s2), **kw) == ""
  assert pruning.stop_reason(st2.replace(loss_ema=jnp.float32(3.0)),
                             float(s2), **kw) == "loss_rise"
  assert pruning.stop_reason(st2.replace(monitors_since_best=jnp.int32(3)),
                             float(s2), **kw) == "local_max"


# ---------------------------------------------------------------------------
# The command, end to end, on real MNIST (tiny).
# ---------------------------------------------------------------------------


def _cfg(npz_dir, dense_dir, **over):
  c = proxnag_lenet5_mnist.get_config("smoke")
  c.data_dir = npz_dir
  c.dense_checkpoint = dense_dir
  for k, v in over.items():
    setattr(c, k, v)
  return c


def test_prune_end_to_end(tmp_path, npz_dir, dense_dir):
  wd = str(tmp_path / "p")
  s = prune_run.prune(_cfg(npz_dir, dense_dir), wd, **QUIET)
  for key in ("method", "model", "dataset", "seed", "target_sparsity",
              "sparsity", "compression_ratio", "theoretical_speedup",
              "test_accuracy", "dense_test_accuracy", "num_params",
              "num_nonzero", "epochs", "wall_time_s", "config",
              "pruned_layers"):
    assert key in s
  assert abs(s["sparsity"] - 0.5) < 1e-3
  assert s["reached_target"]
  assert s["pruned_layers"] == ["conv1/kernel", "conv2/kernel", "fc1/kernel",
                                "fc2/kernel"]
  assert s["compression_ratio"] > 1.9 and s["theoretical_speedup"] > 1.0
  for f in ("summary.json", "trace.jsonl", "report.md", "sparsity_loss.png",
            "weight_histograms.png", "layer_sparsity.png"):
    assert os.path.getsize(os.path.join(wd, f)) > 0
  saved = engine.load_final(wd, "pruned")
  for p, m in zip(jax.tree.leaves(saved["params"]),
                  jax.tree.leaves(saved["masks"])):
    # masks are exactly the nonzero pattern of the saved params
    np.testing.assert_array_equal(np.asarray(p) != 0, np.asarray(m))
  trace = [json.loads(l) for l in open(os.path.join(wd, "trace.jsonl"))]
  kinds = {r["kind"] for r in trace}
  assert {"dense", "phase_start", "monitor", "phase_end", "epoch"} <= kinds
  for r in trace:
    if r["kind"] == "monitor":
      assert {"round", "phase", "lam", "loss", "accuracy", "sparsity"} <= set(r)
  # Sparsity never goes down from one round to the next.
  ends = [r["sparsity"] for r in trace if r["kind"] == "phase_end"]
  assert ends == sorted(ends)
  # lambda rises linearly between rounds.
  lams = [r["lam"] for r in trace if r["kind"] == "phase_start"
          and r["phase"] == "prune"]
  np.testing.assert_allclose(lams, [0.02 * (i + 1) for i in range(len(lams))])
  assert "| conv1/kernel |" in open(os.path.join(wd, "report.md")).read()


def test_killed_mid_round_resumes_to_the_same_result(tmp_path, npz_dir,
                                                     dense_dir):
  cfg = _cfg(npz_dir, dense_dir)
  full = str(tmp_path / "full")
  a = prune_run.prune(cfg, full, **QUIET)
  part = str(tmp_path / "part")
  out = prune_run.prune(cfg, part, stop_after_steps=6, **QUIET)
  assert out == {"stopped_at_step": 6}     # inside round 0's prune-train
  out = prune_run.prune(cfg, part, stop_after_steps=20, **QUIET)
  assert "stopped_at_step" in out
  b = prune_run.prune(cfg, part, **QUIET)
  assert a["test_accuracy"] == b["test_accuracy"]
  assert a["sparsity"] == b["sparsity"]
  for x, y in zip(jax.tree.leaves(engine.load_final(full, "pruned")),
                  jax.tree.leaves(engine.load_final(part, "pruned"))):
    np.testing.assert_array_equal(x, y)
  ta = [json.loads(l) for l in open(os.path.join(full, "trace.jsonl"))]
  tb = [json.loads(l) for l in open(os.path.join(part, "trace.jsonl"))]
  assert [(r["kind"], r["step"]) for r in ta] == [(r["kind"], r["step"])
                                                   for r in tb]


def test_unreachable_target_stops_with_model_saved(tmp_path, npz_dir,
                                                   dense_dir):
  wd = str(tmp_path / "p")
  s = prune_run.prune(_cfg(npz_dir, dense_dir, l1_init=1e-6, l1_step=1e-6,
                           max_rounds=2, target_sparsity=0.95), wd, **QUIET)
  assert not s["reached_target"]
  assert s["rounds"] == 2
  assert os.path.isdir(os.path.join(wd, "pruned"))
  assert "TARGET NOT REACHED" in open(os.path.join(wd, "report.md")).read()


def test_bad_input(tmp_path, npz_dir, dense_dir):
  with pytest.raises(ValueError, match=r"target_sparsity must be in \(0, 1\)"):
    prune_run.prune(_cfg(npz_dir, dense_dir, target_sparsity=1.0),
                    str(tmp_path / "a"), **QUIET)
  with pytest.raises(ValueError, match="lambda never grows"):
    prune_run.prune(_cfg(npz_dir, dense_dir, l1_init=0.0, l1_step=0.0),
                    str(tmp_path / "b"), **QUIET)
  with pytest.raises(ValueError, match="does not match model 'lenet300_100'"):
    c = _cfg(npz_dir, dense_dir, model="lenet300_100")
    prune_run.prune(c, str(tmp_path / "c"), **QUIET)
  with pytest.raises(ValueError, match="holds no finished run"):
    prune_run.prune(_cfg(npz_dir, str(tmp_path)), str(tmp_path / "d"),
                    **QUIET)


def test_which_layers_are_pruned_is_configurable(tmp_path, npz_dir, dense_dir):
  flt = pj.prunable_filter(("^conv1/", "^fc2/"))
  which = pj.prunable_tree(_params(), flt)
  assert which["a"]["kernel"] and not which["a"]["bias"]
  c = _cfg(npz_dir, dense_dir, prune_exclude=("^conv1/", "^fc2/"))
  s = prune_run.prune(c, str(tmp_path / "p"), **QUIET)
  assert s["pruned_layers"] == ["conv2/kernel", "fc1/kernel"]
  assert abs(s["sparsity"] - 0.5) < 1e-3
  saved = engine.load_final(str(tmp_path / "p"), "pruned")["params"]
  assert np.all(np.asarray(saved["conv1"]["kernel"]) != 0)
  assert np.all(np.asarray(saved["fc2"]["kernel"]) != 0)
  assert "conv2/kernel" in open(str(tmp_path / "p" / "report.md")).read()
