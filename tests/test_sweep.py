"""proxnag_jax.sweep: cells run, skipped, refused, shared between workers,
vmapped and reused, on real MNIST (tiny)."""

import json
import os
import shutil

import pytest

from proxnag_jax import experiment
from proxnag_jax import hostio
from proxnag_jax import sweep

QUIET = dict(log=lambda *_: None)


def _with_dense(wd, dense_dir):
  """A sweep workdir whose shared dense model (seed 0) is the session's
  dense smoke run (the sweep trains one only where none is there)."""
  shutil.copytree(dense_dir, os.path.join(wd, "dense_seed0"))
  return wd


def test_sweep_cells_skip_refuse_and_vmap(tmp_path, mnist_dir, dense_dir):
  from configs import sweep_lenet5_mnist  # pylint: disable=g-import-not-at-top
  c = sweep_lenet5_mnist.get_config("smoke")
  c.data.dir = mnist_dir
  # A variant: a method under its own name with changed settings.
  c.variants = {"magnitude_layer": {"method": "magnitude", "scope": "layer"}}
  c.methods = ("magnitude", "magnitude_layer")
  c.sparsities = (0.5,)
  c.base.prune.budget_epochs = 2.0      # the sweep's mechanics, not accuracy
  wd = _with_dense(str(tmp_path / "sw"), dense_dir)
  rows = sweep.run(c, wd, **QUIET)
  assert [r["method"] for r in rows] == ["magnitude", "magnitude_layer"]
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
  assert "| magnitude |" in table and "dense baseline" in table
  assert "every method gets" in table
  summ = os.path.join(wd, "cells", "magnitude_50_seed0", "summary.json")
  mtime = os.path.getmtime(summ)
  sweep.run(c, wd, **QUIET)     # finished cells are skipped
  assert os.path.getmtime(summ) == mtime
  c2 = sweep_lenet5_mnist.get_config("smoke")
  c2.data.dir = mnist_dir
  c2.methods = ("random",)
  with pytest.raises(ValueError, match="different config"):
    sweep.run(c2, wd, **QUIET)
  c3 = sweep_lenet5_mnist.get_config("smoke")
  c3.methods = ("obd",)
  with pytest.raises(ValueError, match="valid methods"):
    sweep.run(c3, str(tmp_path / "x"), **QUIET)
  # The cells of a method as one vmapped program: each cell its own summary
  # at its own exact target. (That a vmapped step equals the steps one by one,
  # to float32 reassociation, is tested one step deep in test_methods.py: a
  # whole run's accuracy is a trajectory, which float order alone changes.)
  c4 = sweep_lenet5_mnist.get_config("smoke")
  c4.data.dir = mnist_dir
  c4.methods = ("magnitude",)
  c4.sparsities = (0.5, 0.8)
  c4.vmap_runs = True
  c4.base.prune.budget_epochs = 2.0
  v_rows = sweep.run(c4, _with_dense(str(tmp_path / "vm"), dense_dir), **QUIET)
  assert [r["vmapped_runs"] for r in v_rows] == [2, 2]
  one = [r for r in rows if r["method"] == "magnitude"][0]
  assert v_rows[0]["sparsity"] == one["sparsity"]
  assert abs(v_rows[1]["sparsity"] - 0.8) < 1e-3
  assert all(r["reached_target"] and r["test_accuracy"] > 0.5
             for r in v_rows)


def test_sweep_workers_share_cells(tmp_path, mnist_dir, dense_dir):
  """Sweep workers: a cell another worker holds is skipped, the tables wait
  for the last cell, and workers and a plain sweep keep each other out. (A
  held claim file plays the other worker: flock is per open file.)"""
  from configs import sweep_lenet5_mnist  # pylint: disable=g-import-not-at-top
  c = sweep_lenet5_mnist.get_config("smoke")
  c.data.dir = mnist_dir
  c.methods, c.sparsities = ("magnitude", "random"), (0.5,)
  c.base.prune.budget_epochs = 2.0      # the sweep's mechanics, not accuracy
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
  c = sweep_lenet5_mnist.get_config("smoke")
  c.data.dir = mnist_dir
  c.methods, c.sparsities = ("magnitude", "snip"), (0.5,)
  c.base.prune.budget_epochs = 2.0      # the sweep's mechanics, not accuracy
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


def test_sweep_reuses_only_cells_of_the_same_config(tmp_path):
  """``reuse_cells`` copies a finished cell of another sweep that ran this
  cell's config under another name, and nothing whose config (or dense
  config) differs."""
  from configs import sweep_random_nets  # pylint: disable=g-import-not-at-top
  search = sweep_random_nets.get_config("smoke")
  search.variants = sweep_random_nets.step_variants((0.1, 0.3), ("sbp",))
  search.methods = ("sbp_lr0p1", "sbp_lr0p3")
  search.base.edge_popup.learning_rate = 0.5     # a method sbp does not run
  src = tmp_path / "search"

  def fake_run(config, method, dense_cfg_change=None):
    cc = sweep.cell_config(config, method, 0.5, 0,
                           str(src / "dense_seed0"))
    d = experiment.dense_config(cc)
    if dense_cfg_change:
      d.train.num_epochs += 1
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


def test_committed_runs_of_the_flat_config_layout_are_reused(tmp_path):
  """Runs written before the per-component config layout (their
  config.json is flat) are the runs today's configs describe: the committed
  Conv-2 cells of the layer-normalised SBP and their dense models, and the
  committed dense ResNet-20s, are reused, not run again."""
  from configs import sweep_random_nets  # pylint: disable=g-import-not-at-top
  from configs import sweep_resnet20_cpu  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  src = os.path.join(root, "docs", "results", "random_conv2_lpbox_norm")
  with open(os.path.join(src, "cells", "sbp_lpbox_norm_50_seed0",
                         "config.json")) as f:
    assert isinstance(json.load(f)["model"], str)         # the flat layout
  c = sweep_random_nets.get_config("conv2")
  c.methods = ("sbp_lpbox_norm",)
  assert sweep.reuse_cells(c, str(tmp_path / "a"), [src],
                           log=lambda m: None) == 6
  for seed in (0, 1, 2):
    assert (tmp_path / "a" / f"dense_seed{seed}" / "summary.json").exists()
  c.base.prune.budget_epochs = 6.0           # another budget: nothing
  assert sweep.reuse_cells(c, str(tmp_path / "b"), [src],
                           log=lambda m: None) == 0
  r20 = sweep_resnet20_cpu.get_config("session_rates")
  r20.methods, r20.seeds = ("snip",), (0, 1, 2)
  sweep.reuse_cells(r20, str(tmp_path / "c"), [os.path.join(
      root, "checkpoints", "resnet20_cifar10_dense10")], log=lambda m: None)
  for seed in (0, 1, 2):
    assert (tmp_path / "c" / f"dense_seed{seed}" / "final").is_dir()


def test_a_reused_dense_run_without_its_model_is_trained_again(
    tmp_path, monkeypatch):
  """A dense run copied from a committed artifact (summary, no ``final/``)
  serves the table, but a cell that trains needs the model: the sweep
  trains the dense run again instead of failing in the cell."""
  from configs import sweep_random_nets  # pylint: disable=g-import-not-at-top
  c = sweep_random_nets.get_config("smoke")
  trained = []

  def fake_train(cfg, wd, log):
    del cfg, log
    trained.append(wd)
    os.makedirs(os.path.join(wd, "final"))
    hostio.write_json(os.path.join(wd, "summary.json"), {})

  monkeypatch.setattr(sweep.commands, "train", fake_train)
  wd = str(tmp_path)
  art = os.path.join(wd, "dense_seed0")
  os.makedirs(art)
  hostio.write_json(os.path.join(art, "summary.json"), {"from": "artifact"})
  msgs = []
  assert sweep._dense_for(c, wd, 0, msgs.append) == art  # pylint: disable=protected-access
  assert trained == [art] and os.path.isdir(os.path.join(art, "final"))
  assert "holds no model" in msgs[0]
  # A dense run with its model is used as it is.
  assert sweep._dense_for(c, wd, 0, msgs.append) == art  # pylint: disable=protected-access
  assert trained == [art]


def test_sweep_report_only_tables_the_finished_cells(tmp_path):
  from configs import sweep_random_nets  # pylint: disable=g-import-not-at-top
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
