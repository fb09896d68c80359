"""`train.prune` end to end on real MNIST (tiny): Prox-NAG and the baselines."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
import proxnag_jax as pj
from configs import proxnag_lenet5_mnist
from proxnag_jax import hostio
from proxnag_jax import experiment
from proxnag_jax import loop

QUIET = dict(log=lambda *_: None)


# ---------------------------------------------------------------------------
# The command, end to end, on real MNIST (tiny).
# ---------------------------------------------------------------------------


def _cfg(mnist_dir, dense_dir, **over):
  c = proxnag_lenet5_mnist.get_config("smoke")
  c.data_dir = mnist_dir
  c.dense_checkpoint = dense_dir
  for k, v in over.items():
    if k in c.proxnag:
      c.proxnag[k] = v
    else:
      setattr(c, k, v)
  return c


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, mnist_dir, dense_dir):
  """One uninterrupted Prox-NAG smoke run, shared by the tests below."""
  wd = str(tmp_path_factory.mktemp("proxnag") / "p")
  return wd, loop.prune(_cfg(mnist_dir, dense_dir), wd, **QUIET)


def test_prune_end_to_end(smoke_run):
  wd, s = smoke_run
  for key in ("method", "model", "dataset", "seed", "target_sparsity",
              "sparsity", "compression_ratio", "theoretical_speedup",
              "test_accuracy", "dense_test_accuracy", "num_params",
              "num_nonzero", "epochs", "wall_time_s", "config",
              "pruned_layers"):
    assert key in s
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
  assert s["compression_ratio"] > 1.9 and s["theoretical_speedup"] > 1.0
  for f in ("summary.json", "trace.jsonl", "report.md", "sparsity_loss.png",
            "weight_histograms.png", "layer_sparsity.png"):
    assert os.path.getsize(os.path.join(wd, f)) > 0
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
  out = loop.prune(cfg, part, stop_after_steps=6, **QUIET)
  assert out == {"stopped_at_step": 6}     # inside round 0's prune-train
  out = loop.prune(cfg, part, stop_after_steps=21, **QUIET)
  assert out == {"stopped_at_step": 27}
  b = loop.prune(cfg, part, **QUIET)
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
  s = loop.prune(_cfg(mnist_dir, dense_dir, schedule="paper",
                      l1_init=1e-6, l1_step=1e-6, max_rounds=2,
                      prune_max_epochs=2.0, finetune_epochs=1.0,
                      finetune_growth=0.0, final_finetune_epochs=1.0,
                      target_sparsity=0.95), wd, **QUIET)
  assert not s["reached_target"]
  assert s["rounds"] == 2 and s["outcome"] == "max_rounds"
  assert os.path.isdir(os.path.join(wd, "pruned"))
  assert "TARGET NOT REACHED" in open(os.path.join(wd, "report.md")).read()


def test_bad_input(tmp_path, mnist_dir, dense_dir):
  with pytest.raises(ValueError, match=r"target_sparsity must be in \(0, 1\)"):
    loop.prune(_cfg(mnist_dir, dense_dir, target_sparsity=1.0),
                    str(tmp_path / "a"), **QUIET)
  with pytest.raises(ValueError, match="lambda never grows"):
    loop.prune(_cfg(mnist_dir, dense_dir, schedule="paper", l1_init=0.0,
                    l1_step=0.0), str(tmp_path / "b"), **QUIET)
  with pytest.raises(ValueError, match="needs l1_init > 0"):
    loop.prune(_cfg(mnist_dir, dense_dir, lam_start="l1_init", l1_init=0.0),
               str(tmp_path / "b2"), **QUIET)
  with pytest.raises(ValueError, match="does not match model 'lenet300_100'"):
    c = _cfg(mnist_dir, dense_dir, model="lenet300_100")
    loop.prune(c, str(tmp_path / "c"), **QUIET)
  with pytest.raises(ValueError, match="trained on other data.*val_size"):
    loop.prune(_cfg(mnist_dir, dense_dir, val_size=128),
               str(tmp_path / "e"), **QUIET)
  with pytest.raises(ValueError, match="holds no finished run"):
    loop.prune(_cfg(mnist_dir, str(tmp_path)), str(tmp_path / "d"),
                    **QUIET)


def test_which_layers_are_pruned_is_configurable(tmp_path, mnist_dir, dense_dir):
  flt = pj.prunable_filter(("^conv1/", "^fc2/"))
  p = {"conv1": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.ones(4)},
       "conv2": {"kernel": jnp.ones((3, 3, 4, 4))}}
  which = pj.prunable_tree(p, flt)
  assert not which["conv1"]["kernel"] and which["conv2"]["kernel"]
  assert not which["conv1"]["bias"]
  c = _cfg(mnist_dir, dense_dir, prune_exclude=("^conv1/", "^fc2/"))
  s = loop.prune(c, str(tmp_path / "p"), **QUIET)
  assert s["pruned_layers"] == ["conv2/kernel", "fc1/kernel"]
  assert abs(s["sparsity"] - 0.5) < 1e-3
  saved = hostio.load_final(str(tmp_path / "p"), "pruned")["params"]
  assert np.all(np.asarray(saved["conv1"]["kernel"]) != 0)
  assert np.all(np.asarray(saved["fc2"]["kernel"]) != 0)
  assert "conv2/kernel" in open(str(tmp_path / "p" / "report.md")).read()


# Every method's resume and exact target are in tests/test_methods.py (tiny
# model); here one baseline goes through the command on real data.
@pytest.mark.parametrize("name", ["sparse_momentum"])
def test_baselines_reach_target_and_resume(tmp_path, mnist_dir, dense_dir,
                                           name):
  c = _cfg(mnist_dir, dense_dir, method=name)
  full = loop.prune(c, str(tmp_path / "full"), **QUIET)
  assert abs(full["sparsity"] - 0.5) < 1e-3     # to 0.1 point
  assert full["method"] == name and full["reached_target"]
  part = str(tmp_path / "part")
  assert loop.prune(c, part, stop_after_steps=5, **QUIET) == {
      "stopped_at_step": 5}
  again = loop.prune(c, part, **QUIET)
  assert again["test_accuracy"] == full["test_accuracy"]
  for a, b in zip(jax.tree.leaves(hostio.load_final(str(tmp_path / "full"),
                                                    "pruned")),
                  jax.tree.leaves(hostio.load_final(part, "pruned"))):
    np.testing.assert_array_equal(a, b)


def _with_dense(wd, dense_dir):
  """A sweep workdir whose shared dense model (seed 0) is the session's
  dense smoke run (the sweep trains one only where none is there)."""
  shutil.copytree(dense_dir, os.path.join(wd, "dense_seed0"))
  return wd


def test_sweep_cells_skip_refuse_and_vmap(tmp_path, mnist_dir, dense_dir):
  from configs import sweep_lenet5_mnist  # pylint: disable=g-import-not-at-top
  from proxnag_jax import sweep  # pylint: disable=g-import-not-at-top
  c = sweep_lenet5_mnist.get_config("smoke")
  c.data_dir = mnist_dir
  # A variant: a method under its own name with changed settings.
  c.variants = {"magnitude_layer": {"method": "magnitude", "scope": "layer"}}
  c.methods = ("proxnag", "magnitude", "magnitude_layer")
  c.sparsities = (0.5,)
  c.base.checkpoint_every_steps = 0     # no mid-cell resume tested here
  wd = _with_dense(str(tmp_path / "sw"), dense_dir)
  rows = sweep.run(c, wd, **QUIET)
  assert [r["method"] for r in rows] == ["proxnag", "magnitude",
                                         "magnitude_layer"]
  with open(os.path.join(wd, "cells", "magnitude_layer_50_seed0",
                         "config.json")) as f:
    assert json.load(f)["magnitude"]["scope"] == "layer"
  assert "| magnitude_layer |" in open(os.path.join(wd, "table.md")).read()
  c5 = sweep_lenet5_mnist.get_config("smoke")
  c5.variants = {"v": {"method": "magnitude", "lr": 1.0}}
  c5.methods = ("v",)
  with pytest.raises(ValueError, match="no setting"):
    sweep.run(c5, str(tmp_path / "v"), **QUIET)
  for f in ("results.csv", "table.md", "accuracy_vs_sparsity.png"):
    assert os.path.getsize(os.path.join(wd, f)) > 0
  table = open(os.path.join(wd, "table.md")).read()
  assert "| proxnag |" in table and "dense baseline" in table
  assert "every method gets" in table
  summ = os.path.join(wd, "cells", "magnitude_50_seed0", "summary.json")
  mtime = os.path.getmtime(summ)
  sweep.run(c, wd, **QUIET)     # finished cells are skipped
  assert os.path.getmtime(summ) == mtime
  c2 = sweep_lenet5_mnist.get_config("smoke")
  c2.data_dir = mnist_dir
  c2.methods = ("random",)
  with pytest.raises(ValueError, match="different config"):
    sweep.run(c2, wd, **QUIET)
  c3 = sweep_lenet5_mnist.get_config("smoke")
  c3.methods = ("obd",)
  with pytest.raises(ValueError, match="valid methods"):
    sweep.run(c3, str(tmp_path / "x"), **QUIET)
  # The same cells as one vmapped program per method: the same results (the
  # dense model is shared, so to float32 reassociation of batched ops).
  c4 = sweep_lenet5_mnist.get_config("smoke")
  c4.data_dir = mnist_dir
  c4.methods = ("magnitude",)
  c4.sparsities = (0.5, 0.8)
  c4.vmap_runs = True
  c4.base.checkpoint_every_steps = 0
  v_rows = sweep.run(c4, _with_dense(str(tmp_path / "vm"), dense_dir), **QUIET)
  assert [r["vmapped_runs"] for r in v_rows] == [2, 2]
  one = [r for r in rows if r["method"] == "magnitude"][0]
  assert v_rows[0]["sparsity"] == one["sparsity"]
  assert abs(v_rows[0]["test_accuracy"] - one["test_accuracy"]) <= 0.004
  assert abs(v_rows[1]["sparsity"] - 0.8) < 1e-3


def test_sweep_workers_share_cells(tmp_path, mnist_dir, dense_dir):
  """Sweep workers: a cell another worker holds is skipped, the tables wait
  for the last cell, and workers and a plain sweep keep each other out. (A
  held claim file plays the other worker: flock is per open file.)"""
  from configs import sweep_lenet5_mnist  # pylint: disable=g-import-not-at-top
  from proxnag_jax import sweep  # pylint: disable=g-import-not-at-top
  c = sweep_lenet5_mnist.get_config("smoke")
  c.data_dir = mnist_dir
  c.methods, c.sparsities = ("magnitude", "random"), (0.5,)
  c.base.checkpoint_every_steps = 0
  wd = _with_dense(str(tmp_path / "sw"), dense_dir)
  msgs = []
  held = os.path.join(wd, "claims", "random_50_seed0.lock")
  with hostio.try_lock(held) as got:
    assert got
    rows = sweep.run(c, wd, worker=True, log=msgs.append)
    assert [r["method"] for r in rows] == ["magnitude"]
    assert any("random_50_seed0: another worker runs it" in m for m in msgs)
    assert not os.path.exists(os.path.join(wd, "table.md"))
    # While a worker holds the workdir, a plain sweep is kept out.
    with hostio.workdir_lock(wd, shared=True):
      with pytest.raises(hostio.WorkdirLocked, match="in use"):
        sweep.run(c, wd, **QUIET)
  # Released (the other worker died): the next worker runs the last cell and
  # writes the tables.
  rows = sweep.run(c, wd, worker=True, **QUIET)
  assert [r["method"] for r in rows] == ["magnitude", "random"]
  assert "| random |" in open(os.path.join(wd, "table.md")).read()
  with hostio.workdir_lock(wd):
    with pytest.raises(hostio.WorkdirLocked, match="in use"):
      sweep.run(c, wd, worker=True, **QUIET)
  with pytest.raises(ValueError, match="wipe"):
    sweep.run(c, wd, worker=True, overwrite=True, **QUIET)
  c.vmap_runs = True
  with pytest.raises(ValueError, match="vmap_runs=False"):
    sweep.run(c, wd, worker=True, **QUIET)


def test_worker_trains_scratch_cells_while_another_trains_the_dense(
    tmp_path, mnist_dir, dense_dir):
  """While another worker holds the dense model's claim, a worker runs the
  cells that start from scratch first and only waits for the dense model at
  their end (their summary's reference); the dense-start cells come after.
  (A thread plays the other worker: it puts the dense run in place once the
  scratch cell has trained.)"""
  import threading  # pylint: disable=g-import-not-at-top
  from configs import sweep_lenet5_mnist  # pylint: disable=g-import-not-at-top
  from proxnag_jax import sweep  # pylint: disable=g-import-not-at-top
  c = sweep_lenet5_mnist.get_config("smoke")
  c.data_dir = mnist_dir
  c.methods, c.sparsities = ("magnitude", "snip"), (0.5,)
  c.base.checkpoint_every_steps = 0
  wd = str(tmp_path / "sw")
  msgs, held, waiting = [], threading.Event(), threading.Event()

  def log(m):
    msgs.append(m)
    if m.startswith("waiting for the dense model"):
      waiting.set()

  def other_worker():
    with hostio.try_lock(os.path.join(wd, "claims", "dense_seed0.lock")):
      held.set()
      waiting.wait(timeout=120)
      shutil.copytree(dense_dir, os.path.join(wd, "dense_seed0"),
                      dirs_exist_ok=True)

  t = threading.Thread(target=other_worker)
  t.start()
  held.wait()
  try:
    rows = sweep.run(c, wd, worker=True, log=log)
  finally:
    waiting.set()
    t.join()
  # The worker said why it waited (``waiting`` itself is set in ``finally``).
  assert any(m.startswith("waiting for the dense model") for m in msgs), msgs
  started = [m for m in msgs if m.startswith("[")]
  assert "snip_50_seed0" in started[0] and "magnitude" in started[1], started
  assert [r["method"] for r in rows] == ["magnitude", "snip"]
  with open(os.path.join(dense_dir, "summary.json")) as f:
    dense_acc = json.load(f)["test_accuracy"]
  snip = rows[1]
  assert snip["start"] == "scratch"
  assert snip["dense_test_accuracy"] == pytest.approx(dense_acc, abs=1e-6)
  assert abs(snip["sparsity"] - 0.5) < 1e-3
  assert os.path.exists(os.path.join(wd, "table.md"))


def test_sweep_table_spread_and_missed_targets():
  from configs import sweep_lenet5_mnist  # pylint: disable=g-import-not-at-top
  from proxnag_jax import sweep  # pylint: disable=g-import-not-at-top
  c = sweep_lenet5_mnist.get_config()
  assert tuple(c.seeds) == (0, 1, 2)
  c.methods, c.sparsities = ("proxnag", "magnitude"), (0.9,)

  def row(m, seed, acc, reached=True):
    return {"method": m, "target_sparsity": 0.9, "seed": seed,
            "test_accuracy": acc, "val_accuracy": acc,
            "dense_test_accuracy": 0.99, "sparsity": 0.9,
            "mask_sparsity": 0.9, "epochs": 3.0, "reached_target": reached}

  rows = [row("proxnag", s, a, s != 2) for s, a in
          enumerate((0.981, 0.983, 0.985))]
  rows += [row("magnitude", s, 0.98) for s in range(3)]
  t = sweep.table_md(c, rows, "note")
  assert "| proxnag | 98.30 ± 0.20* |" in t    # sample std; a missed target
  assert "| magnitude | 98.00 ± 0.00 |" in t
  assert "| dense baseline | 99.00 ± 0.00 |" in t
  c.seeds = (0,)
  one = sweep.table_md(c, [r for r in rows if r["seed"] == 0], "note")
  assert "| proxnag | 98.10 |" in one and "±" not in one.split(
      "| method |")[1].split("Validation")[0]
  assert "One seed" in one


def test_sweep_chooses_on_validation_not_test(tmp_path):
  from configs import sweep_lenet5_mnist  # pylint: disable=g-import-not-at-top
  from proxnag_jax import sweep  # pylint: disable=g-import-not-at-top
  c = sweep_lenet5_mnist.get_config()
  c.variants = {"proxnag_a": {"method": "proxnag", "l1_step": 1e-3},
                "proxnag_b": {"method": "proxnag", "l1_step": 1e-2}}
  c.methods, c.sparsities = ("proxnag_a", "proxnag_b", "magnitude"), (0.5, 0.9)
  c.select_on_val = {"proxnag": ("proxnag_a", "proxnag_b")}
  c.paper_table = {"proxnag": (91.0, 90.0)}
  c.paper_sparsities = (0.5, 0.9)
  sweep.validate(c)

  def row(m, s, seed, test, val):
    return {"method": m, "target_sparsity": s, "seed": seed,
            "test_accuracy": test, "val_accuracy": val,
            "dense_test_accuracy": 0.99, "sparsity": s, "mask_sparsity": s,
            "epochs": 3.0, "reached_target": True}

  rows = []
  for seed in range(3):
    # 50%: a has the better validation and the worse test accuracy;
    # 90%: b has the better validation accuracy.
    rows += [row("proxnag_a", 0.5, seed, 0.90, 0.95),
             row("proxnag_b", 0.5, seed, 0.97, 0.94),
             row("proxnag_a", 0.9, seed, 0.80, 0.85),
             row("proxnag_b", 0.9, seed, 0.82, 0.86),
             row("magnitude", 0.5, seed, 0.9, 0.9),
             row("magnitude", 0.9, seed, 0.8, 0.8)]
  chosen = sweep.chosen_on_val(c, rows)
  assert [chosen["proxnag"][s][0] for s in (0.5, 0.9)] == ["proxnag_a",
                                                           "proxnag_b"]
  t = sweep.table_md(c, rows, "note")
  row_line = ("| **proxnag, chosen on validation** | 90.00 ± 0.00 "
              "(proxnag_a) | 82.00 ± 0.00 (proxnag_b) |")
  assert row_line in t
  # The paper's row follows the chosen row, once.
  assert t.count("| proxnag (paper) |") == 1
  assert t.index(row_line) < t.index("| proxnag (paper) |")
  # Over fewer seeds than the sweep's, the count is shown.
  t2 = sweep.table_md(c, [r for r in rows if r["seed"] == 0], "note")
  assert "(n=1) (proxnag_a)" in t2
  # One choice for every column: b's validation mean over both (90.0) beats
  # a's (90.0 too: a tie keeps the first listed); make b better at 50%.
  c.select_scope = "all"
  assert {p[0] for p in sweep.chosen_on_val(c, rows)["proxnag"].values()} == {
      "proxnag_a"}
  rows_b = [dict(r, val_accuracy=0.96) if r["method"] == "proxnag_b" and
            r["target_sparsity"] == 0.5 else r for r in rows]
  all_b = sweep.chosen_on_val(c, rows_b)["proxnag"]
  assert [all_b[s][0] for s in (0.5, 0.9)] == ["proxnag_b", "proxnag_b"]
  assert abs(all_b[0.5][1] - 91.0) < 1e-9     # mean of 96 and 86
  assert "averaged over the columns" in sweep.table_md(c, rows_b, "note")
  # A partial sweep: the chosen entry has no 90% cell yet.
  part = [r for r in rows_b if not (r["method"] == "proxnag_b" and
                                    r["target_sparsity"] == 0.9)]
  assert sweep.chosen_on_val(c, part)["proxnag"][0.9][0] == "proxnag_b"
  os.makedirs(tmp_path / "part")
  sweep.write_outputs(c, str(tmp_path / "part"), part, "note")
  assert (tmp_path / "part" / "accuracy_vs_sparsity.png").exists()
  # A variant that missed its target sparsity (a less sparse network) is
  # not chosen over one that reached it, whatever its validation accuracy;
  # if every variant missed, the best of them is still named (and starred).
  missed = [dict(r, reached_target=False, val_accuracy=0.99)
            if r["method"] == "proxnag_a" else r for r in rows]
  assert all(p[0] == "proxnag_b"
             for p in sweep.chosen_on_val(c, missed)["proxnag"].values())
  c.select_scope = "column"
  assert [sweep.chosen_on_val(c, missed)["proxnag"][s][0]
          for s in (0.5, 0.9)] == ["proxnag_b", "proxnag_b"]
  all_missed = [dict(r, reached_target=False) for r in rows]
  assert sweep.chosen_on_val(c, all_missed)["proxnag"][0.5][0] == "proxnag_a"
  assert "90.00 ± 0.00* (proxnag_a)" in sweep.table_md(c, all_missed, "note")
  sweep.write_outputs(c, str(tmp_path), rows, "note")
  with open(tmp_path / "selection.json") as f:
    sel = json.load(f)
  assert sel["proxnag"]["0.9"]["entry"] == "proxnag_b"
  assert abs(sel["proxnag"]["0.9"]["val_accuracy"] - 86.0) < 1e-9
  assert (tmp_path / "accuracy_vs_sparsity.png").exists()
  c.select_scope = "best"
  with pytest.raises(ValueError, match="select_scope"):
    sweep.validate(c)
  c.select_scope = "column"
  for bad in ({"proxnag": ("proxnag_a", "proxnag_c")},
              {"proxnag_a": ("proxnag_a", "proxnag_b")}, {"proxnag": ()}):
    c.select_on_val = bad
    with pytest.raises(ValueError, match="select_on_val"):
      sweep.validate(c)


def test_sweep_reuses_only_cells_of_the_same_config(tmp_path):
  """``reuse_cells`` copies a finished cell of another sweep that ran this
  cell's config under another name, and nothing whose config (or dense
  config) differs."""
  from configs import sweep_random_nets  # pylint: disable=g-import-not-at-top
  from proxnag_jax import sweep  # pylint: disable=g-import-not-at-top
  search = sweep_random_nets.get_config("smoke")
  search.variants = sweep_random_nets.step_variants((0.1, 0.3), ("sbp",))
  search.methods = ("sbp_lr0p1", "sbp_lr0p3")
  search.base.edge_popup.learning_rate = 0.5     # a method sbp does not run
  src = tmp_path / "search"

  def fake_run(config, method, dense_cfg_change=None):
    cc = sweep.cell_config(config, method, 0.5, 0,
                           str(src / "dense_seed0"))
    d = loop.dense_config(cc)
    if dense_cfg_change:
      d.num_epochs += 1
    os.makedirs(src / "dense_seed0", exist_ok=True)
    hostio.write_json(str(src / "dense_seed0" / "config.json"),
                      json.loads(d.to_json_best_effort()))
    hostio.write_json(str(src / "dense_seed0" / "summary.json"), {})
    cell = src / "cells" / sweep.cell_name(method, 0.5, 0)
    os.makedirs(cell)
    hostio.write_json(str(cell / "config.json"),
                      json.loads(cc.to_json_best_effort()))
    hostio.write_json(str(cell / "summary.json"), {"method": "sbp"})

  fake_run(search, "sbp_lr0p1")
  fake_run(search, "sbp_lr0p3")
  final = sweep_random_nets.get_config("smoke")
  final.methods = ("sbp", "edge_popup")
  final.sparsities = (0.5,)
  final.base.sbp.learning_rate = 0.1
  dst = tmp_path / "final"
  os.makedirs(dst)
  # sbp at step 0.1 is the search's sbp_lr0p1, renamed.
  assert sweep.reuse_cells(final, str(dst), [str(src)], log=lambda m: None) == 1
  assert (dst / "cells" / "sbp_50_seed0" / "summary.json").exists()
  assert (dst / "dense_seed0" / "summary.json").exists()
  assert not (dst / "cells" / "edge_popup_50_seed0").exists()
  with open(dst / "reused.jsonl") as f:
    assert [json.loads(l).get("cell") for l in f] == [None, "sbp_50_seed0"]
  # Another step: no cell to reuse, only the (same) dense run.
  final.base.sbp.learning_rate = 1.0
  assert sweep.reuse_cells(final, str(tmp_path / "b"), [str(src)],
                           log=lambda m: None) == 0
  assert (tmp_path / "b" / "dense_seed0" / "summary.json").exists()
  assert not (tmp_path / "b" / "cells").exists()
  shutil.rmtree(src)
  fake_run(search, "sbp_lr0p1", dense_cfg_change=True)
  final.base.sbp.learning_rate = 0.1
  assert sweep.reuse_cells(final, str(tmp_path / "c"), [str(src)],
                           log=lambda m: None) == 0
  assert not (tmp_path / "c").exists()
  with pytest.raises(ValueError, match="not a sweep workdir"):
    sweep.reuse_cells(final, str(tmp_path / "d"), [str(tmp_path / "none")])


def test_sweep_report_only_tables_the_finished_cells(tmp_path):
  from configs import sweep_random_nets  # pylint: disable=g-import-not-at-top
  from proxnag_jax import sweep  # pylint: disable=g-import-not-at-top
  c = sweep_random_nets.get_config("smoke")
  c.methods, c.sparsities, c.seeds = ("sbp", "edge_popup"), (0.5,), (0, 1)
  wd = str(tmp_path)
  experiment.prepare_workdir(wd, c)
  for (m, seed), acc in {("sbp", 0): 0.90, ("sbp", 1): 0.92,
                         ("edge_popup", 0): 0.95}.items():
    d = os.path.join(wd, "cells", sweep.cell_name(m, 0.5, seed))
    os.makedirs(d)
    hostio.write_json(os.path.join(d, "summary.json"), {
        "method": m, "seed": seed, "target_sparsity": 0.5, "sparsity": 0.5,
        "test_accuracy": acc, "val_accuracy": acc, "dense_test_accuracy": 0.97,
        "epochs": 2.0, "reached_target": True})
  rows = sweep.run(c, wd, report_only=True, log=lambda m: None)
  assert len(rows) == 3
  with open(os.path.join(wd, "partial", "table.md")) as f:
    table = f.read()
  assert "Partial: 3 of 4 cells finished" in table
  assert "| sbp | 91.00 ± 1.41 |" in table
  assert "| edge_popup | 95.00 (n=1) |" in table
  assert not os.path.exists(os.path.join(wd, "table.md"))   # the sweep's own
  c.seeds = (0, 1, 2)
  with pytest.raises(ValueError, match="another config"):
    sweep.run(c, wd, report_only=True)


def test_vmapped_runs_may_differ_only_in_per_run_settings(tmp_path):
  """Runs sharing one vmapped program may differ in seed, target and the
  method's per-run numbers (``Method.hparams``), nothing else: refused
  before any data is read."""
  a = proxnag_lenet5_mnist.get_config("smoke")
  b = proxnag_lenet5_mnist.get_config("smoke")
  b.proxnag.ramp_end, b.proxnag.deadline = 0.1, 0.2
  with pytest.raises(ValueError, match=r"may differ only in .*prune_lr"):
    loop.prune_runs([a, b], [str(tmp_path / "a"), str(tmp_path / "b")],
                    vmap=True)
