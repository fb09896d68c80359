"""Baseline methods behind one interface, their runner, and the sweep."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import proxnag_jax as pj
from configs import proxnag_lenet5_mnist
from configs import sweep_lenet5_mnist
from proxnag_jax import engine
from proxnag_jax import method_run
from proxnag_jax import methods
from proxnag_jax import sweep
from proxnag_jax.methods import dynamic
from proxnag_jax.methods import simple

QUIET = dict(log=lambda *_: None)


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"l1": {"kernel": jnp.asarray(rng.normal(size=(30, 20)), jnp.float32),
                 "bias": jnp.zeros(20)},
          "l2": {"kernel": jnp.asarray(rng.normal(size=(20, 10)), jnp.float32),
                 "bias": jnp.zeros(10)}}


def _ctx(params, target=0.8, total=100, spe=10, grad_fn=None):
  return methods.Context(target=target, prunable=pj.prunable_tree(params),
                         total_steps=total, steps_per_epoch=spe,
                         grad_fn=grad_fn)


def _zeros(masks, params):
  which = pj.prunable_tree(params)
  return sum(int((~np.asarray(m)).sum()) for m, w in zip(
      jax.tree.leaves(masks), jax.tree.leaves(which)) if w)


CFG = ml_collections.ConfigDict(dict(magnitude_scope="global", gmp_every=10,
                                     gmp_end_fraction=0.5, l2_iterations=3,
                                     sm_prune_rate=0.5, dsr_every=10,
                                     dsr_np=0.05, dsr_delta=0.1,
                                     dsr_threshold=1e-3))


@pytest.mark.parametrize("name", ["random", "magnitude", "snip",
                                  "sparse_momentum", "dsr"])
def test_initial_masks_have_exact_sparsity(name):
  p = _params()
  grad_fn = lambda q: jax.tree.map(lambda x: jnp.ones_like(x) * 0.1, q)
  masks, _ = methods.get_method(name, CFG).init(jax.random.PRNGKey(0), p,
                                                _ctx(p, grad_fn=grad_fn))
  assert _zeros(masks, p) == round(0.8 * 800)   # = 480 + 160 layer-wise too
  assert bool(np.all(masks["l1"]["bias"]))


def test_snip_ranks_connection_sensitivity():
  p = _params()
  g = jax.tree.map(lambda x: jnp.ones_like(x), p)
  g["l2"]["kernel"] = g["l2"]["kernel"] * 100.0   # l2 is far more sensitive
  masks, _ = methods.get_method("snip", CFG).init(
      None, p, _ctx(p, target=0.5, grad_fn=lambda q: g))
  assert np.mean(np.asarray(masks["l2"]["kernel"])) > np.mean(
      np.asarray(masks["l1"]["kernel"]))


def test_allocate_is_exact_and_capped():
  out = dynamic.allocate(100, np.array([1.0, 1.0, 8.0]), np.array([50, 50, 5]))
  assert sum(out) == 100 and out[2] == 5
  assert dynamic.allocate(7, np.array([0.0, 0.0]), np.array([3, 10])) in (
      [3, 4], [0, 7], [1, 6], [2, 5], [3, 4])
  assert sum(dynamic.allocate(7, np.array([0.0, 0.0]), np.array([3, 10]))) == 7


def _momentum_state(p, seed=1):
  """An optax.sgd momentum state with a random momentum buffer."""
  st = optax.sgd(0.1, momentum=0.9).init(p)
  rng = np.random.default_rng(seed)
  trace = jax.tree.map(
      lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), p)
  return (st[0]._replace(trace=trace),) + tuple(st[1:])


def test_sparse_momentum_moves_weights_but_keeps_the_count():
  p = _params()
  m = methods.get_method("sparse_momentum", CFG)
  ctx = _ctx(p)
  masks, ms = m.init(jax.random.PRNGKey(0), p, ctx)
  p = pj.apply_masks(p, masks)
  opt = _momentum_state(p)
  new, ms = m.update(None, 10, p, masks, ms, opt, ctx)
  assert _zeros(new, p) == _zeros(masks, p)
  moved = sum(int((np.asarray(a) & ~np.asarray(b)).sum())
              for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(masks)))
  assert moved > 0
  # Prune rate: cosine decay from 0.5.
  assert float(ms["prune_rate"]) == pytest.approx(
      dynamic.cosine_rate(1, 10, 0.5))
  assert dynamic.cosine_rate(0, 10, 0.5) == pytest.approx(0.5)
  assert dynamic.cosine_rate(10, 10, 0.5) == pytest.approx(0.005)


def test_dsr_keeps_count_and_adapts_threshold():
  p = _params()
  m = methods.get_method("dsr", CFG)
  ctx = _ctx(p)
  masks, ms = m.init(jax.random.PRNGKey(0), p, ctx)
  p = pj.apply_masks(p, masks)
  new, ms2 = m.update(jax.random.PRNGKey(1), 10, p, masks, ms, (), ctx)
  assert _zeros(new, p) == _zeros(masks, p)
  # |w| ~ N(0,1): almost nothing is below 1e-3 -> the threshold doubles.
  assert float(ms2["threshold"]) == pytest.approx(2e-3)
  big = {**ms, "threshold": jnp.float32(10.0)}   # prunes everything: halves
  _, ms3 = m.update(jax.random.PRNGKey(1), 10, p, masks, big, (), ctx)
  assert float(ms3["threshold"]) == pytest.approx(5.0)


def test_gmp_cubic_schedule_and_monotone_masks():
  assert simple.gmp_sparsity(0, 0, 100, 0.0, 0.9) == 0.0
  assert simple.gmp_sparsity(100, 0, 100, 0.0, 0.9) == pytest.approx(0.9)
  assert simple.gmp_sparsity(50, 0, 100, 0.0, 0.9) == pytest.approx(
      0.9 * (1 - 0.5 ** 3))
  p = _params()
  m = methods.get_method("gmp", CFG)
  ctx = _ctx(p, total=100)
  masks, ms = m.init(None, p, ctx)
  zs = []
  for t in (10, 20, 30, 40, 50):
    masks, ms = m.update(None, t, p, masks, ms, (), ctx)
    zs.append(_zeros(masks, p))
  assert zs == sorted(zs) and zs[-1] == round(0.8 * 800)


def test_l2_reaches_target_over_its_iterations():
  p = _params()
  m = methods.get_method("l2", CFG)
  ctx = _ctx(p, total=100, spe=10)
  masks, ms = m.init(None, p, ctx)
  due = [s for s in range(1, 101) if m.due(s, s % 10 == 0, ctx)]
  assert len(due) == 3 and due[-1] <= 50
  for s in due:
    masks, ms = m.update(None, s, p, masks, ms, (), ctx)
  assert _zeros(masks, p) == round(0.8 * 800)


def test_reset_where_zeroes_optimizer_buffers_at_grown_positions():
  p = _params()
  st = optax.chain(optax.add_decayed_weights(1e-4),
                   optax.sgd(0.1, momentum=0.9)).init(p)
  st = jax.tree.map(lambda x: x + 1.0 if x.dtype == jnp.float32 else x, st)
  grown = jax.tree.map(lambda x: jnp.zeros(x.shape, bool).at[0].set(True), p)
  out = methods.reset_where(st, grown)
  trace = methods.momentum_of(out)
  assert float(trace["l1"]["kernel"][0, 0]) == 0.0
  assert float(trace["l1"]["kernel"][1, 0]) == 1.0


def test_unknown_method_lists_valid():
  with pytest.raises(ValueError, match="valid methods: .*sparse_momentum"):
    methods.get_method("obd", CFG)


# ---------------------------------------------------------------------------
# Runner and sweep on real MNIST (tiny).
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sparse_momentum", "gmp"])
def test_method_run_reaches_target_and_resumes(tmp_path, npz_dir, dense_dir,
                                               name):
  c = proxnag_lenet5_mnist.get_config("smoke")
  c.data_dir, c.dense_checkpoint, c.method = npz_dir, dense_dir, name
  full = method_run.run(c, str(tmp_path / "full"), **QUIET)
  assert abs(full["sparsity"] - 0.5) < 1e-3     # to 0.1 point
  part = str(tmp_path / "part")
  assert method_run.run(c, part, stop_after_epochs=1, **QUIET) == {
      "stopped_at_epoch": 1}
  again = method_run.run(c, part, **QUIET)
  assert again["test_accuracy"] == full["test_accuracy"]
  for a, b in zip(jax.tree.leaves(engine.load_final(str(tmp_path / "full"),
                                                    "pruned")),
                  jax.tree.leaves(engine.load_final(part, "pruned"))):
    np.testing.assert_array_equal(a, b)


def test_sweep_cells_skip_and_refuse(tmp_path, npz_dir):
  c = sweep_lenet5_mnist.get_config("smoke")
  c.data_dir = npz_dir
  c.methods = ("proxnag", "magnitude")
  c.sparsities = (0.5,)
  wd = str(tmp_path / "sw")
  rows = sweep.run(c, wd, **QUIET)
  assert [r["method"] for r in rows] == ["proxnag", "magnitude"]
  for f in ("results.csv", "table.md", "accuracy_vs_sparsity.png"):
    assert os.path.getsize(os.path.join(wd, f)) > 0
  table = open(os.path.join(wd, "table.md")).read()
  assert "| proxnag |" in table and "dense baseline" in table
  assert "every method gets" in table
  mtime = os.path.getmtime(os.path.join(wd, "cells", "magnitude_50_seed0",
                                        "summary.json"))
  sweep.run(c, wd, **QUIET)     # finished cells are skipped
  assert os.path.getmtime(os.path.join(
      wd, "cells", "magnitude_50_seed0", "summary.json")) == mtime
  c2 = sweep_lenet5_mnist.get_config("smoke")
  c2.data_dir = npz_dir
  c2.methods = ("random",)
  with pytest.raises(ValueError, match="different config"):
    sweep.run(c2, wd, **QUIET)
  c3 = sweep_lenet5_mnist.get_config("smoke")
  c3.methods = ("obd",)
  with pytest.raises(ValueError, match="valid methods"):
    sweep.run(c3, str(tmp_path / "x"), **QUIET)

