"""proxnag_jax.commands: dense training (`train.train`) and pruning
(`train.prune`) end to end on real MNIST (tiny): outputs, resume, refusals,
NaN, Prox-NAG and the baselines."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
import proxnag_jax as pj
from configs import proxnag_lenet5_mnist
from proxnag_jax import commands
from proxnag_jax import engine
from proxnag_jax import hostio
from proxnag_jax import methods

QUIET = dict(log=lambda *_: None)


# ---------------------------------------------------------------------------
# The command, end to end, on real MNIST (tiny).
# ---------------------------------------------------------------------------


def _cfg(mnist_dir, dense_dir, **over):
  c = proxnag_lenet5_mnist.get_config("smoke")
  c.data.dir = mnist_dir
  c.prune.dense_checkpoint = dense_dir
  for k, v in over.items():
    if k in c.proxnag:
      c.proxnag[k] = v
    else:
      helpers.configure(c, **{k: v})
  return c


@pytest.fixture
def smoke_run(shared_run, mnist_dir, dense_dir):
  """One uninterrupted Prox-NAG smoke run, shared by the tests below
  (conftest.shared_run: once per test session)."""
  return shared_run("proxnag_smoke", lambda wd: (wd, commands.prune(
      _cfg(mnist_dir, dense_dir, run__plots=True), wd, **QUIET)))


def test_prune_end_to_end(smoke_run):
  wd, s = smoke_run
  for key in helpers.COMMON_SUMMARY_FIELDS + ("compression_ratio", "theoretical_speedup",
                       "dense_test_accuracy", "num_nonzero",
                       "pruned_layers"):
    assert key in s
  assert s["kind"] == "prune" and s["method"] == "proxnag"
  # The run keeps its own method's settings only (the config file carries
  # every method's, for the command line).
  with open(os.path.join(wd, "config.json")) as f:
    kept = json.load(f)
  assert "proxnag" in kept and not set(kept) & (
      set(methods.PRUNING_METHODS) - {"proxnag"})
  assert abs(s["sparsity"] - 0.5) < 1e-3
  assert s["reached_target"] and s["outcome"] == "target reached"
  # Inside the budget; validation accuracy on the held-out split.
  assert s["epochs"] <= s["budget_epochs"]
  assert 0.0 < s["val_accuracy"] <= 1.0 and 0.0 < s["dense_val_accuracy"]
  # Masks and exact zeros agree; biases count as stored, not pruned.
  assert s["kept_but_zero"] == 0
  assert abs(s["mask_sparsity"] - s["sparsity"]) < 1e-6
  assert s["stored_params"] == s["prunable_nonzero"] + (
      s["num_params"] - s["prunable_params"])
  assert s["pruned_layers"] == ["conv1/kernel", "conv2/kernel", "fc1/kernel",
                                "fc2/kernel"]
  # The allocation it arrived at, per layer, sums to the prunable nonzeros.
  assert list(s["layer_kept"]) == s["pruned_layers"]
  assert sum(s["layer_kept"].values()) == s["prunable_nonzero"]
  assert s["layer_params"]["fc1/kernel"] == 400_000
  assert s["compression_ratio"] > 1.9 and s["theoretical_speedup"] > 1.0
  for f in ("summary.json", "trace.jsonl", "report.md", "sparsity_loss.png",
            "weight_histograms.png", "layer_sparsity.png"):
    assert os.path.getsize(os.path.join(wd, f)) > 0
  with open(os.path.join(wd, "report.md")) as f:   # (config.run.plots)
    assert "![layer sparsity](layer_sparsity.png)" in f.read()
  saved = hostio.load_final(wd, "pruned")
  for p, m in zip(jax.tree.leaves(saved["params"]),
                  jax.tree.leaves(saved["masks"])):
    # masks are exactly the nonzero pattern of the saved params
    np.testing.assert_array_equal(np.asarray(p) != 0, np.asarray(m))
  trace = [json.loads(l) for l in open(os.path.join(wd, "trace.jsonl"))]
  kinds = {r["kind"] for r in trace}
  assert {"phase_start", "monitor", "phase_end", "epoch"} <= kinds
  for r in trace:
    if r["kind"] == "monitor":
      assert {"round", "phase", "lam", "loss", "accuracy", "sparsity"} <= set(r)
  # Sparsity never goes down from one round to the next.
  ends = [r["sparsity"] for r in trace if r["kind"] == "phase_end"]
  assert ends == sorted(ends)
  # The target schedule: one prune phase, from lambda_0 > 0 (computed from
  # the weights), which the controller then moves.
  lams = [r["lam"] for r in trace if r["kind"] == "phase_start"
          and r["phase"] == "prune"]
  assert len(lams) == 1 and lams[0] > 0
  assert "| conv1/kernel |" in open(os.path.join(wd, "report.md")).read()


def test_killed_mid_round_resumes_to_the_same_result(tmp_path, smoke_run,
                                                     mnist_dir,
                                                     dense_dir):
  cfg = _cfg(mnist_dir, dense_dir)
  full, a = smoke_run
  part = str(tmp_path / "part")
  # The prune phase ends at step 6 of 21; 7 steps an epoch, 4 a chunk.
  out = commands.prune(cfg, part, stop_after_steps=3, **QUIET)
  assert out == {"stopped_at_step": 3}     # inside the prune phase, mid-chunk
  out = commands.prune(cfg, part, stop_after_steps=8, **QUIET)
  assert out == {"stopped_at_step": 11}    # inside the fine-tune, mid-epoch
  b = commands.prune(cfg, part, **QUIET)
  assert a["test_accuracy"] == b["test_accuracy"]
  assert a["sparsity"] == b["sparsity"]
  for x, y in zip(jax.tree.leaves(hostio.load_final(full, "pruned")),
                  jax.tree.leaves(hostio.load_final(part, "pruned"))):
    np.testing.assert_array_equal(x, y)
  assert helpers.trace_records(full) == helpers.trace_records(part)


def test_unreachable_target_stops_with_model_saved(tmp_path, mnist_dir,
                                                   dense_dir):
  wd = str(tmp_path / "p")
  # The paper's schedule gives up after max_rounds and says so.
  s = commands.prune(_cfg(mnist_dir, dense_dir, schedule="paper",
                      l1_init=1e-6, l1_step=1e-6, max_rounds=2,
                      prune_max_epochs=1.0, finetune_epochs=0.5,
                      finetune_growth=0.0, final_finetune_epochs=0.5,
                      target_sparsity=0.95, prune__budget_epochs=4.0), wd,
                      **QUIET)
  assert not s["reached_target"]
  assert s["rounds"] == 2 and s["outcome"] == "max_rounds"
  assert os.path.isdir(os.path.join(wd, "pruned"))
  assert "TARGET NOT REACHED" in open(os.path.join(wd, "report.md")).read()


def test_bad_input(tmp_path, mnist_dir, dense_dir):
  with pytest.raises(ValueError, match=r"target_sparsity must be in \(0, 1\)"):
    commands.prune(_cfg(mnist_dir, dense_dir, target_sparsity=1.0),
                    str(tmp_path / "a"), **QUIET)
  with pytest.raises(ValueError, match="lambda never grows"):
    commands.prune(_cfg(mnist_dir, dense_dir, schedule="paper", l1_init=0.0,
                    l1_step=0.0), str(tmp_path / "b"), **QUIET)
  with pytest.raises(ValueError, match="needs l1_init > 0"):
    commands.prune(_cfg(mnist_dir, dense_dir, lam_start="l1_init", l1_init=0.0),
               str(tmp_path / "b2"), **QUIET)
  with pytest.raises(ValueError, match="does not match model 'lenet300_100'"):
    c = _cfg(mnist_dir, dense_dir, model="lenet300_100")
    commands.prune(c, str(tmp_path / "c"), **QUIET)
  with pytest.raises(ValueError, match="trained on other data.*val_size"):
    commands.prune(_cfg(mnist_dir, dense_dir, val_size=128),
               str(tmp_path / "e"), **QUIET)
  with pytest.raises(ValueError, match="holds no finished run"):
    commands.prune(_cfg(mnist_dir, str(tmp_path)), str(tmp_path / "d"),
                    **QUIET)


def test_prunable_filter_picks_kernels_by_path():
  flt = pj.prunable_filter(("^conv1/", "^fc2/"))
  p = {"conv1": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.ones(4)},
       "conv2": {"kernel": jnp.ones((3, 3, 4, 4))}}
  which = pj.prunable_tree(p, flt)
  assert not which["conv1"]["kernel"] and which["conv2"]["kernel"]
  assert not which["conv1"]["bias"]


# Every method's exact target is in tests/test_methods.py, resume in
# tests/test_loop.py (tiny model); here one baseline goes through the command
# on real data, with the layers it may prune chosen in the config (Prox-NAG's
# own run, above, prunes the default set).
def test_a_baseline_through_the_command_prunes_only_the_chosen_layers(
    tmp_path, mnist_dir, dense_dir):
  """(Its resume is tested at the loop, tests/test_loop.py; the command's
  resume with Prox-NAG above.)"""
  wd = str(tmp_path / "p")
  c = _cfg(mnist_dir, dense_dir, method="sparse_momentum",
           prune__exclude=("^conv1/", "^fc2/"))
  s = commands.prune(c, wd, **QUIET)
  assert s["method"] == "sparse_momentum" and s["reached_target"]
  assert s["pruned_layers"] == ["conv2/kernel", "fc1/kernel"]
  assert abs(s["sparsity"] - 0.5) < 1e-3     # to 0.1 point
  saved = hostio.load_final(wd, "pruned")
  params = saved["params"]
  assert np.all(np.asarray(params["conv1"]["kernel"]) != 0)
  assert np.all(np.asarray(params["fc2"]["kernel"]) != 0)
  assert s["num_nonzero"] == sum(
      int(np.sum(np.asarray(p) != 0)) for p in jax.tree.leaves(params))
  assert "conv2/kernel" in open(os.path.join(wd, "report.md")).read()


def test_vmapped_runs_may_differ_only_in_per_run_settings(tmp_path):
  """Runs sharing one vmapped program may differ in seed, target and the
  method's per-run numbers (``Method.hparams``), nothing else: refused
  before any data is read."""
  a = proxnag_lenet5_mnist.get_config("smoke")
  b = proxnag_lenet5_mnist.get_config("smoke")
  b.proxnag.ramp_end, b.proxnag.deadline = 0.1, 0.2
  with pytest.raises(ValueError, match=r"may differ only in .*prune_lr"):
    commands.prune_runs([a, b], [str(tmp_path / "a"), str(tmp_path / "b")],
                    vmap=True)


# ---------------------------------------------------------------------------
# Dense training.
# ---------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_smoke = helpers.lenet5_smoke


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_smoke_run_writes_outputs(tmp_path, mnist_dir):
  wd = str(tmp_path / "run")
  commands.train(_smoke(mnist_dir), wd, log=lambda *_: None)
  for f in ("summary.json", "metrics.jsonl", "config.json"):
    assert os.path.exists(os.path.join(wd, f))
  with open(os.path.join(wd, "summary.json")) as f:
    summary = json.load(f)
  for key in ("model", "dataset", "seed", "test_accuracy", "train_loss",
              "epochs", "num_params", "wall_time_s", "images_per_s", "config"):
    assert key in summary
  assert summary["num_params"] == 431_080
  assert summary["test_accuracy"] > 0.5      # 2 tiny epochs, well above 0.1
  lines = open(os.path.join(wd, "metrics.jsonl")).read().splitlines()
  assert len(lines) == 2 and json.loads(lines[-1])["epoch"] == 2
  v = hostio.load_final(wd)
  assert set(v) == {"params", "batch_stats"}


def test_killed_and_resumed_equals_uninterrupted(tmp_path, mnist_dir):
  cfg = _smoke(mnist_dir, num_epochs=3)
  full = str(tmp_path / "full")
  commands.train(cfg, full, log=lambda *_: None)
  part = str(tmp_path / "part")
  out = commands.train(cfg, part, stop_after_epochs=1, log=lambda *_: None)
  assert out == {"stopped_at_epoch": 1}
  assert not os.path.exists(os.path.join(part, "summary.json"))
  # Resumed and stopped again, then the same command to the end: one
  # metrics line per epoch whatever the resumes.
  out = commands.train(cfg, part, stop_after_epochs=1, log=lambda *_: None)
  assert out == {"stopped_at_epoch": 2}
  commands.train(cfg, part, log=lambda *_: None)   # same command: resumes
  for a, b in zip(_leaves(hostio.load_final(full)),
                  _leaves(hostio.load_final(part))):
    np.testing.assert_array_equal(a, b)
  lines = open(os.path.join(part, "metrics.jsonl")).read().splitlines()
  assert [json.loads(l)["epoch"] for l in lines] == [1, 2, 3]


def test_workdir_with_other_config_is_refused(tmp_path, mnist_dir):
  wd = str(tmp_path / "run")
  commands.train(_smoke(mnist_dir, num_epochs=1), wd, log=lambda *_: None)
  with pytest.raises(ValueError, match="different config.*learning_rate"):
    commands.train(_smoke(mnist_dir, num_epochs=1, learning_rate=0.5), wd,
                 log=lambda *_: None)
  s = commands.train(_smoke(mnist_dir, num_epochs=1, learning_rate=0.001), wd,
                   overwrite=True, log=lambda *_: None)
  assert s["config"]["train"]["learning_rate"] == 0.001


def test_nan_loss_stops_with_checkpoint_intact(tmp_path, mnist_dir, monkeypatch):
  wd = str(tmp_path / "run")
  cfg = _smoke(mnist_dir)
  commands.train(cfg, wd, stop_after_epochs=1, log=lambda *_: None)
  good = hostio.Checkpointer(os.path.join(wd, "checkpoints"))
  # The end of epoch 1: (512 - 64 held out) / 64 = 7 steps.
  assert good.latest_step() == 7
  good.close()

  real = engine.make_step

  def poisoned(*a, **k):
    step = real(*a, **k)

    def nan_step(*args):
      state, (m, ev) = step(*args)
      return state, ({**m, "loss": m["loss"] * np.nan}, ev)
    return nan_step

  monkeypatch.setattr(engine, "make_step", poisoned)
  with pytest.raises(hostio.TrainingDiverged,
                     match="loss is nan at step 8.*step 7.*intact"):
    commands.train(cfg, wd, log=lambda *_: None)
  ck = hostio.Checkpointer(os.path.join(wd, "checkpoints"))
  assert ck.latest_step() == 7
  ck.close()


def test_bad_config_fails_early(tmp_path, mnist_dir):
  with pytest.raises(ValueError, match="valid models"):
    commands.train(_smoke(mnist_dir, model="lenet6"), str(tmp_path / "a"))
  with pytest.raises(ValueError, match="valid datasets"):
    commands.train(_smoke(mnist_dir, dataset="mnist2"), str(tmp_path / "b"))
  with pytest.raises(ValueError, match="How to get the data"):
    commands.train(_smoke(str(tmp_path)), str(tmp_path / "c"))


def test_cli_smoke_with_overrides(tmp_path, mnist_dir):
  wd = str(tmp_path / "cli")
  r = subprocess.run(
      [sys.executable, "-m", "train.train", "--config",
       "configs/lenet5_mnist.py:smoke", "--workdir", wd,
       f"--config.data.dir={mnist_dir}", "--config.train.num_epochs=1"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0, r.stderr[-3000:]
  assert "data: mnist from npz" in r.stdout
  assert json.load(open(os.path.join(wd, "summary.json")))["epochs"] == 1
