"""The structured methods (gat, l1_filter, slimming, group_proxnag) end to end
on real MNIST (tiny): exact channel counts, a smaller exported network that
computes what the masked network computed, resume, and user errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from configs import structured_lenet5_mnist
from proxnag_jax import commands
from proxnag_jax import hostio
from proxnag_jax import loop
from proxnag_jax import methods
from proxnag_jax import models
from proxnag_jax import summary as summary_lib
from proxnag_jax import surgery
from proxnag_jax.methods import base

QUIET = dict(log=lambda *_: None)
CHANNELS = 20 + 50 + 500        # LeNet-5's prunable channel groups


@pytest.fixture
def dense_bn_dir(shared_run, mnist_dir):
  """A dense LeNet-5 with BatchNorm (smoke), shared by the runs below
  (conftest.shared_run: once per test session)."""
  from configs import lenet5_mnist  # pylint: disable=g-import-not-at-top

  def build(wd):
    c = lenet5_mnist.get_config("smoke")
    c.model.name = "lenet5_bn"
    c.data.dir = mnist_dir
    commands.train(c, wd, **QUIET)
    return wd
  return shared_run("dense_lenet5_bn", build)


def _cfg(mnist_dir, dense_dir, method, **over):
  c = structured_lenet5_mnist.get_config("smoke")
  c.data.dir = mnist_dir
  c.prune.dense_checkpoint = dense_dir
  c.prune.method = method
  c.prune.budget_epochs = 1.0
  return helpers.configure(c, **over)


def _run(method, shared_run, mnist_dir, dense_dir):
  """``method``'s smoke run, once per test session (conftest.shared_run)."""
  return shared_run(f"structured_{method}", lambda wd: (wd, commands.prune(
      _cfg(mnist_dir, dense_dir, method), wd, **QUIET)))


@pytest.mark.parametrize("method", methods.STRUCTURED_METHODS)
def test_structured_run_exports_a_smaller_network(method, shared_run,
                                                  mnist_dir, dense_bn_dir):
  wd, s = _run(method, shared_run, mnist_dir, dense_bn_dir)
  assert s["method"] == method
  want = round(0.75 * CHANNELS)
  assert s["channels"] == CHANNELS
  if method == "group_proxnag":
    assert s["channels_removed"] >= want    # the zero channels, at least
  else:
    assert s["channels_removed"] == want
  assert s["reached_target"]
  widths = s["architecture"]["widths"]
  assert sum(widths) == CHANNELS - s["channels_removed"]
  assert all(w >= 1 for w in widths)
  assert s["params_shrunk"] < s["params_dense"] == s["num_params"]
  assert s["compression_ratio"] == pytest.approx(
      s["params_dense"] / s["stored_params"])
  assert s["theoretical_speedup"] > 1.0
  for k in ("measured_speedup", "dense_images_per_s", "shrunk_images_per_s"):
    assert s[k] > 0
  # The saved smaller network loads and is what the summary says.
  model, variables = summary_lib.load_pruned(wd)
  assert tuple(model.widths) == tuple(widths)
  assert surgery.count_params(variables) == s["params_shrunk"]
  x = jnp.zeros((2, 28, 28, 1))
  assert model.apply(variables, x, train=False).shape == (2, 10)
  # A smoke run draws no PNG plots (config.run.plots), and its report
  # links none.
  with open(os.path.join(wd, "report.md")) as f:
    text = f.read()
  assert "## Per layer" in text and "## Plots" not in text
  assert not [f for f in os.listdir(wd) if f.endswith(".png")]


def _tiny_ctx():
  from proxnag_jax import masks as masks_lib  # pylint: disable=g-import-not-at-top
  model = models.get_model("lenet5_bn", widths=(4, 6, 8))
  v = models.init_model(model, jax.random.PRNGKey(0), (1, 28, 28, 1))
  # Nonzero BN statistics and shifts: nothing exact by accident.
  v = jax.tree.map(lambda x: x + 0.1, v)
  ctx = base.Context(prunable=masks_lib.prunable_tree(v["params"]),
                     steps_per_epoch=4, total_steps=16,
                     groups=surgery.channel_groups(model, v),
                     grad_fn=lambda p: jax.tree.map(jnp.ones_like, p))
  return model, v, ctx


@pytest.mark.parametrize("method,match", [("l1_filter", "macs"),
                                          ("group_proxnag", "params")])
def test_structured_target_as_a_fraction_of_macs_or_params(
    method, match, tmp_path, mnist_dir, dense_bn_dir):
  """``match='macs'`` / ``'params'``: the shrunk network keeps at most
  ``1 - target`` of the dense MACs / params, and not much less (it is the
  fewest channels that do)."""
  c = _cfg(mnist_dir, dense_bn_dir, method, target_sparsity=0.6)
  c[method].match = match
  s = commands.prune(c, str(tmp_path / "r"), **QUIET)
  assert s["match"] == match and s["reached_target"]
  dense, small = ((s["macs_dense"], s["macs_shrunk"]) if match == "macs"
                  else (s["params_dense"], s["params_shrunk"]))
  assert 0.3 * dense < small <= 0.4 * dense * (1 + 1e-6)


@pytest.mark.parametrize("method", ["l1_filter", "gat"])
def test_export_computes_what_the_masked_network_computes(method):
  """A pruned state through the full model (its masks applied) == the
  shrunk network, to float32 rounding."""
  model, v, ctx = _tiny_ctx()
  m = methods.get_method(method)
  hp = loop.make_hp({"target": 0.5, "n_zero": 0, "lr": 0.1,
                     "weight_decay": 0.0, "momentum": 0.9, **m.hparams})
  state, _ = loop.init_run(m, ctx, v["params"], v["batch_stats"], hp, 0)
  _, full_vars = base.default_export(state, model)
  small, small_vars = m.export_network(state, model)
  removed = surgery.num_channels(ctx.groups) - sum(small.widths)
  assert removed == round(0.5 * surgery.num_channels(ctx.groups))
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1))
  a = model.apply(full_vars, x, train=False)
  b = small.apply(small_vars, x, train=False)
  scale = float(jnp.max(jnp.abs(a)))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                             atol=1e-5 * scale)


def test_export_keeps_the_widths_the_masks_chose():
  """A channel the masks keep stays in the export even when its weights are
  all zero (group-lasso Prox-NAG rounding a group's 15 live channels up to
  16: the width the cost was matched at); channels the masks remove go."""
  model, v, ctx = _tiny_ctx()
  m = methods.get_method("l1_filter")
  hp = loop.make_hp({"target": 0.5, "n_zero": 0, "lr": 0.1,
                     "weight_decay": 0.0, "momentum": 0.9, **m.hparams})
  state, _ = loop.init_run(m, ctx, v["params"], v["batch_stats"], hp, 0)
  keep = surgery.kept_by_masks(base.masks_of(state.opt_state), ctx.groups)
  g = next(g for g in surgery.prunable_groups(ctx.groups)
           if keep[g.name].sum() >= 2)
  c = int(np.flatnonzero(keep[g.name])[0])
  dead = {n: k.copy() for n, k in keep.items()}
  dead[g.name][c] = False
  params = surgery.zero_channels({"params": state.params}, ctx.groups,
                                 dead)["params"]
  state = state.replace(params=params)
  small, _ = m.export_network(state, model)
  assert sum(small.widths) == sum(int(k.sum()) for k in keep.values())
  alive, _, _ = surgery.shrink_to_alive(model, base.default_export(
      state, model)[1])
  assert sum(alive.widths) == sum(small.widths) - 1


def test_structured_run_resumes_to_the_same_result(tmp_path, shared_run,
                                                   mnist_dir, dense_bn_dir):
  full, a = _run("group_proxnag", shared_run, mnist_dir, dense_bn_dir)
  cfg = _cfg(mnist_dir, dense_bn_dir, "group_proxnag")
  part = str(tmp_path / "part")
  assert commands.prune(cfg, part, stop_after_steps=3, **QUIET) == {
      "stopped_at_step": 3}
  b = commands.prune(cfg, part, **QUIET)
  assert a["test_accuracy"] == b["test_accuracy"]
  assert a["architecture"] == b["architecture"]
  for x, y in zip(jax.tree.leaves(hostio.load_final(full, "pruned")),
                  jax.tree.leaves(hostio.load_final(part, "pruned"))):
    np.testing.assert_array_equal(x, y)
  assert helpers.trace_records(full) == helpers.trace_records(part)


def test_structured_user_errors(tmp_path, mnist_dir, dense_dir):
  # Network slimming needs BatchNorm scales: plain LeNet-5 is refused
  # before anything is written.
  c = _cfg(mnist_dir, dense_dir, "slimming", model="lenet5")
  with pytest.raises(ValueError, match="lenet5_bn"):
    commands.prune(c, str(tmp_path / "s"), **QUIET)
  # A model surgery does not know has no channel groups.
  ctx = base.Context(prunable={}, steps_per_epoch=1, total_steps=1)
  with pytest.raises(ValueError, match="no prunable channel groups"):
    methods.get_method("l1_filter").check({}, {}, ctx)
  with pytest.raises(ValueError, match="scope"):
    methods.get_method("l1_filter", scope="kernel")
  with pytest.raises(ValueError, match="budget"):
    methods.get_method("gat", budget="half")
  with pytest.raises(ValueError, match="prune_fraction"):
    methods.get_method("group_proxnag", prune_fraction=1.5)


def test_structured_update_is_pure_under_jit_and_vmap():
  _, v, ctx = _tiny_ctx()
  for name in methods.STRUCTURED_METHODS:
    method = methods.get_method(name)
    hps = [{"target": t, "n_zero": 0, "lr": 0.1, "weight_decay": 0.0,
            "momentum": 0.9} for t in (0.5, 0.8)]
    events = helpers.vmapped_update_events(method, ctx, v["params"],
                                           v["batch_stats"], hps, steps=3)
    for kind, ev in events.items():
      assert ev["emit"].shape == (2,), (name, kind)


def test_speed_cli_times_the_exported_network(tmp_path, shared_run, mnist_dir,
                                              dense_bn_dir):
  import shutil  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  shared, s = _run("l1_filter", shared_run, mnist_dir, dense_bn_dir)
  wd = str(tmp_path / "run")        # speed.json is written beside the run
  shutil.copytree(shared, wd)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
      [sys.executable, "-m", "train.speed", "--run", wd, "--batch_size", "8",
       "--repeats", "2", "--portable"], cwd=root, capture_output=True,
      text=True, check=True).stdout
  r = json.loads(out[out.index("{"):])
  assert r["measured_speedup"] > 0 and r["speedup_batch_size"] == 8
  # The portable export: written, loaded back without the model's code,
  # the same outputs, timed.
  p = r["portable"]
  assert all(os.path.exists(f) for f in p["files"]) and p["bytes"] > 0
  assert p["max_abs_diff_to_flax"] < 1e-4
  assert p["measured_speedup"] > 0 and p["portable_images_per_s"] > 0
  # ... and against the dense model exported the same way (like for like).
  assert all(os.path.exists(f) for f in p["dense_files"])
  assert p["portable_speedup"] > 0 and p["portable_dense_images_per_s"] > 0
  assert r["architecture"]["widths"] == s["architecture"]["widths"]
  assert r["theoretical_speedup"] == pytest.approx(s["theoretical_speedup"])
  with open(os.path.join(wd, "speed.json")) as f:
    saved = json.load(f)
  assert saved["measured_speedup"] == r["measured_speedup"]
  assert saved["cpu_count"] >= 1
  busy = saved["other_processes_cores"]
  # (clock-tick granularity: /proc/stat counts in 10 ms ticks)
  assert busy is None or 0 <= busy <= saved["cpu_count"] + 0.5


def test_speed_of_a_sweep_times_only_structured_cells(tmp_path_factory,
                                                      shared_run, mnist_dir,
                                                      dense_bn_dir):
  import shutil  # pylint: disable=g-import-not-at-top
  from train import speed  # pylint: disable=g-import-not-at-top
  wd, s = _run("l1_filter", shared_run, mnist_dir, dense_bn_dir)
  sweep = tmp_path_factory.mktemp("sweep")
  shutil.copytree(wd, sweep / "cells" / "l1_filter_50_seed0")
  # An unstructured cell (no smaller network) and an unfinished one.
  (sweep / "cells" / "magnitude_50_seed0").mkdir()
  with open(sweep / "cells" / "magnitude_50_seed0" / "summary.json",
            "w") as f:
    json.dump({"method": "magnitude", "architecture": None}, f)
  (sweep / "cells" / "gat_50_seed0").mkdir()
  cells = speed.structured_cells(str(sweep))
  assert [os.path.basename(c) for c in cells] == ["l1_filter_50_seed0"]
  row = speed.time_run(cells[0], batch_size=8, repeats=2)
  assert row["theoretical_speedup"] == pytest.approx(s["theoretical_speedup"])
  table = speed.sweep_table([row])
  assert "| l1_filter_50_seed0 |" in table and table.count("\n") == 3


def _synthetic_mnist(n=128, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 255, size=(n, 28, 28, 1), dtype=np.uint8)
  w = rng.normal(size=(28 * 28, 10))
  y = np.argmax(x.reshape(n, -1).astype(np.float32) @ w, -1).astype(np.int32)
  return {"train_x": jnp.asarray(x), "train_y": jnp.asarray(y),
          "test_x": jnp.asarray(x[:64]), "test_y": jnp.asarray(y[:64])}


@pytest.mark.parametrize("name", methods.STRUCTURED_METHODS)
def test_structured_contract_in_memory(name):
  """Every structured method through the loop in memory (no workdir) on a
  small LeNet-5-BN (widths 4 / 6 / 8) and synthetic data: the exact count of
  channels removed (group-lasso Prox-NAG: at least it, the zero channels),
  whole channels switched off, an export of that width, one compiled chunk."""
  import optax  # pylint: disable=g-import-not-at-top
  from proxnag_jax import engine  # pylint: disable=g-import-not-at-top
  from proxnag_jax import masks as masks_lib  # pylint: disable=g-import-not-at-top
  model = models.get_model("lenet5_bn", widths=(4, 6, 8))
  v = models.init_model(model, jax.random.PRNGKey(0), (1, 28, 28, 1))
  data = _synthetic_mnist()
  prunable = masks_lib.prunable_tree(v["params"])
  total = 16
  ctx = base.Context(prunable=prunable, steps_per_epoch=4, total_steps=total,
                     schedule=lambda lr: optax.cosine_decay_schedule(lr,
                                                                     total),
                     groups=surgery.channel_groups(model, v))
  method = methods.get_method(name)
  n = base.num_prunable(v["params"], prunable)
  hp = loop.make_hp({"target": 0.5, "n_zero": round(0.5 * n), "lr": 0.05,
                     "weight_decay": 1e-4, "momentum": 0.9, **method.hparams})
  xb = data["train_x"][:32].astype(jnp.float32) / 255.0

  def loss(p):   # the gradient minibatch GAT's init scores channels on
    logits, _ = model.apply({"params": p, "batch_stats": v["batch_stats"]},
                            xb, train=True, mutable=["batch_stats"])
    return jnp.mean(engine.cross_entropy(logits, data["train_y"][:32]))
  state, ev = loop.init_run(method, ctx._replace(grad_fn=jax.grad(loss)),
                            v["params"], v["batch_stats"], hp, 0)
  program = loop.Program(model, method, ctx, (0.5,), (0.25,), False, 32,
                         engine.make_mesh())
  res = loop.run_loop(program, data, [loop.RunInit(state, 0, None, ev)],
                      schedule=loop.Schedule(chunk_steps=8, eval_batch_size=64,
                                             log_every_s=1e9),
                      log=lambda *_: None)
  assert res.chunk_compiles == 1 and res.steps <= total
  final = res.states[0]
  channels = surgery.num_channels(ctx.groups)
  want = round(0.5 * channels)
  small, small_vars = method.export_network(final, model)
  removed = channels - sum(small.widths)
  assert removed >= want if name == "group_proxnag" else removed == want
  assert all(w >= 1 for w in small.widths)
  # The masks switch off whole channels: what they keep is the export.
  keep = surgery.kept_by_masks(base.masks_of(final.opt_state), ctx.groups)
  assert sum(int(k.sum()) for k in keep.values()) == sum(small.widths)
  assert small.apply(small_vars, jnp.zeros((2, 28, 28, 1)),
                     train=False).shape == (2, 10)
