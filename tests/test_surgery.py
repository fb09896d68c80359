"""Network surgery: channel groups, exact shrinking, the channel group lasso,
channel selection and the smaller network's save / load. No dataset."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxnag_jax as pj
from proxnag_jax import hostio
from proxnag_jax import models
from proxnag_jax import surgery
from proxnag_jax.methods import gat as gat_lib
from proxnag_jax.models.vgg import VGG

# Small members of every family surgery knows (and their input shapes).
FAMILIES = {
    "lenet5": (models.get_model("lenet5"), (28, 28, 1)),
    "lenet5_bn": (models.get_model("lenet5_bn", widths=(6, 10, 40)),
                  (28, 28, 1)),
    "lenet300_100": (models.get_model("lenet300_100"), (28, 28, 1)),
    "conv4": (models.get_model("conv4", widths=(8, 8, 16, 16), head=(32, 16)),
              (16, 16, 3)),
    "vgg": (VGG(cfg=(8, 8, "M", 16, "M", 16, "M")), (8, 8, 3)),
    "resnet20": (models.get_model("resnet20", widths=(4, 8, 8)),
                 (16, 16, 3)),
    "resnet20_b": (models.get_model("resnet20_b", widths=(4, 8, 8)),
                   (16, 16, 3)),
}


def _shapes(model, shape):
  """The variables' shapes (all channel_groups needs), without running."""
  return jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1,) + shape), train=False))


@functools.lru_cache(maxsize=None)
def _variables_of(name, seed=0):
  model, shape = FAMILIES[name]
  return _variables(model, shape, seed)


def _variables(model, shape, seed=0):
  """Random variables (numpy, no compiling): kernels scaled by their fan-in,
  nonzero biases and BN shifts, random positive BN variances, so nothing
  is exact by accident."""
  rng = np.random.default_rng(seed)
  flat, treedef = jax.tree_util.tree_flatten_with_path(_shapes(model, shape))
  out = []
  for path, leaf in flat:
    name = path[-1].key
    if name == "var":
      x = rng.uniform(0.5, 1.5, leaf.shape)
    elif name == "kernel":
      x = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    else:
      x = rng.normal(size=leaf.shape) * 0.3 + (1.0 if name == "scale" else 0)
    out.append(jnp.asarray(x, jnp.float32))
  return jax.tree.unflatten(treedef, out)


def _apply(model, variables, x):
  """One compiled call (eager Flax dispatches, and compiles, op by op)."""
  return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)


def _random_keep(groups, seed=0, frac=0.6):
  rng = np.random.default_rng(seed)
  keep = {}
  for g in groups:
    if g.prunable:
      k = rng.random(g.size) < frac
      k[rng.integers(g.size)] = True
      keep[g.name] = k
  return keep


def _close(a, b):
  """Equal up to float32 rounding relative to the output's scale (the two
  networks sum the same products in a different order)."""
  scale = float(jnp.max(jnp.abs(a))) + 1e-6
  np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                             atol=1e-5 * scale * 10)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_shrink_is_exact_when_removed_channels_are_zero(name):
  model, shape = FAMILIES[name]
  v = _variables_of(name)
  groups = surgery.channel_groups(model, v)
  keep = _random_keep(groups)
  vz = surgery.zero_channels(v, groups, keep)
  small, sv = surgery.shrink(model, vz, keep)
  x = jax.random.normal(jax.random.PRNGKey(9), (3,) + shape)
  _close(_apply(model, vz, x), _apply(small, sv, x))
  # The smaller network is what its constructor builds (same shapes).
  fresh = _shapes(small, shape)
  assert (jax.tree.map(jnp.shape, fresh) == jax.tree.map(jnp.shape, sv))
  removed = sum(int((~k).sum()) for k in keep.values())
  assert removed > 0
  assert surgery.count_params(sv) < surgery.count_params(v)


def test_resnet_streams_follow_the_shortcut_option():
  for name, prunable in (("resnet20", False), ("resnet20_b", True)):
    model, shape = FAMILIES[name]
    groups = surgery.channel_groups(model, _shapes(model, shape))
    streams = [g for g in groups if g.name.startswith("stage")]
    assert len(streams) == 3 and all(g.prunable == prunable
                                     for g in streams)
    inner = [g for g in groups if g.name.endswith("/inner")]
    assert len(inner) == 9 and all(g.prunable for g in inner)
  # Option B: a stage stream's producers are all the convs adding into it.
  model, shape = FAMILIES["resnet20_b"]
  g = {g.name: g for g in surgery.channel_groups(
      model, _shapes(model, shape))}["stage2"]
  kernels = {"/".join(s.path[:-1]) for s in g.kernels()}
  assert kernels == {"layer2_0/shortcut_conv", "layer2_0/conv2",
                     "layer2_1/conv2", "layer2_2/conv2"}


def test_shrink_refuses_what_cannot_work():
  model, shape = FAMILIES["resnet20"]
  v = _variables_of("resnet20")
  with pytest.raises(ValueError, match="cannot be pruned"):
    surgery.shrink(model, v, {"stage1": np.arange(4) > 0})
  with pytest.raises(ValueError, match="removes every channel"):
    surgery.shrink(model, v, {"layer1_0/inner": np.zeros(4, bool)})
  with pytest.raises(ValueError, match="has 3 entries"):
    surgery.shrink(model, v, {"layer1_0/inner": np.ones(3, bool)})
  with pytest.raises(ValueError, match="no channel group"):
    surgery.shrink(model, v, {"conv9": np.ones(3, bool)})
  with pytest.raises(ValueError, match="does not know"):
    surgery.channel_groups(models.get_model("resnet18_imagenet"), {})


def test_channel_masks_switch_off_all_producers():
  model, shape = FAMILIES["lenet5_bn"]
  v = _variables_of("lenet5_bn")
  groups = surgery.channel_groups(model, v)
  keep = {"conv2": np.arange(10) % 2 == 0}
  m = surgery.channel_masks(v["params"], groups, keep)
  assert not np.asarray(m["conv2"]["kernel"])[..., 1].any()
  assert np.asarray(m["conv2"]["kernel"])[..., 0].all()
  for leaf in ("scale", "bias"):
    np.testing.assert_array_equal(np.asarray(m["bn2"][leaf]), keep["conv2"])
  np.testing.assert_array_equal(np.asarray(m["conv2"]["bias"]),
                                keep["conv2"])
  # Consumers (fc1's rows) and other layers untouched.
  assert np.asarray(m["fc1"]["kernel"]).all()
  assert np.asarray(m["conv1"]["kernel"]).all()
  alive = surgery.alive_channels(
      surgery.zero_channels(v, groups, keep)["params"],
      {g.name: g for g in groups}["conv2"])
  np.testing.assert_array_equal(np.asarray(alive), keep["conv2"])


def test_group_soft_threshold_matches_its_formula():
  model, shape = FAMILIES["lenet5_bn"]
  v = _variables_of("lenet5_bn")
  groups = surgery.channel_groups(model, v)
  g = {g.name: g for g in groups}["conv1"]
  p = v["params"]
  cols = np.concatenate([
      np.asarray(p["conv1"]["kernel"]).reshape(-1, 6).T,
      np.asarray(p["conv1"]["bias"])[:, None],
      np.asarray(p["bn1"]["scale"])[:, None],
      np.asarray(p["bn1"]["bias"])[:, None]], axis=1)      # (6, 25 + 3)
  norms = np.linalg.norm(cols, axis=1)
  assert surgery.channel_param_count(p, g) == 28
  tau = float(np.median(norms)) / np.sqrt(28)   # zeroes about half
  out = surgery.group_soft_threshold(p, groups, tau)
  scale = np.maximum(0.0, 1.0 - tau * np.sqrt(28) / norms)
  np.testing.assert_allclose(
      np.asarray(out["conv1"]["kernel"]),
      np.asarray(p["conv1"]["kernel"]) * scale, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(out["bn1"]["scale"]),
                             np.asarray(p["bn1"]["scale"]) * scale,
                             rtol=1e-5, atol=1e-7)
  dead = ~np.asarray(surgery.alive_channels(out, g))
  np.testing.assert_array_equal(dead, scale == 0)
  assert 0 < dead.sum() < 6
  # The classifier (not a group) passes through.
  np.testing.assert_array_equal(np.asarray(out["fc2"]["kernel"]),
                                np.asarray(p["fc2"]["kernel"]))


def test_scale_invariant_group_soft_threshold():
  """With the kernels that feed BatchNorm marked: channels are measured by
  their scale params only (the kernel's norm is invisible to the loss),
  thresholded relative to the group's rms, the group's norm kept, and a
  removed channel loses its kernel column; the step commutes with scaling
  the kernel and with scaling the group's scale params."""
  v = _variables_of("lenet5_bn")
  groups = surgery.channel_groups(FAMILIES["lenet5_bn"][0], v)
  assert "conv1" in {x.name for x in groups}
  p = v["params"]
  rng = np.random.default_rng(0)
  p = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape),
                                         jnp.float32), p)
  normalized = jax.tree.map(lambda x: x.ndim >= 2, p)
  normalized["fc2"]["kernel"] = False
  sc = np.stack([np.asarray(p["conv1"]["bias"]),
                 np.asarray(p["bn1"]["scale"]),
                 np.asarray(p["bn1"]["bias"])], 1)          # (6, 3)
  n = np.linalg.norm(sc, axis=1)
  tau = float(np.median(n) / np.sqrt(np.mean(n ** 2)))     # about half
  out = surgery.group_soft_threshold(p, groups, tau, normalized=normalized)
  shrink = np.maximum(0.0, 1.0 - tau * np.sqrt(np.mean(n ** 2)) / n)
  ratio = np.linalg.norm(n) / np.linalg.norm(shrink * n)
  np.testing.assert_allclose(np.asarray(out["bn1"]["scale"]),
                             sc[:, 1] * shrink * ratio, rtol=1e-5)
  kept = shrink > 0
  assert 0 < kept.sum() < 6
  k0, k1 = np.asarray(p["conv1"]["kernel"]), np.asarray(out["conv1"]["kernel"])
  np.testing.assert_array_equal(k1[..., kept], k0[..., kept])
  assert np.all(k1[..., ~kept] == 0)
  out_sc = np.stack([np.asarray(out["conv1"]["bias"]),
                     np.asarray(out["bn1"]["scale"]),
                     np.asarray(out["bn1"]["bias"])], 1)
  np.testing.assert_allclose(np.linalg.norm(out_sc), np.linalg.norm(sc),
                             rtol=1e-5)
  # Scaling the kernel's filters changes nothing but the kernel; scaling the
  # group's scale params by a scales the result by a.
  a = rng.uniform(0.1, 10.0, size=6).astype(np.float32)
  q = jax.tree.map(lambda x: x, p)
  q["conv1"] = {"kernel": p["conv1"]["kernel"] * a, "bias": p["conv1"]["bias"]}
  out2 = surgery.group_soft_threshold(q, groups, tau, normalized=normalized)
  np.testing.assert_allclose(out2["bn1"]["scale"], out["bn1"]["scale"],
                             rtol=1e-6)
  q = jax.tree.map(lambda x: x, p)
  q["conv1"] = {"kernel": p["conv1"]["kernel"],
                "bias": p["conv1"]["bias"] * 7.0}
  q["bn1"] = {"scale": p["bn1"]["scale"] * 7.0,
              "bias": p["bn1"]["bias"] * 7.0}
  out3 = surgery.group_soft_threshold(q, groups, tau, normalized=normalized)
  np.testing.assert_allclose(out3["bn1"]["scale"],
                             7.0 * np.asarray(out["bn1"]["scale"]),
                             rtol=1e-5)
  # The measure the step thresholds (and group_proxnag's forced removal
  # ranks by): each channel's share of the group's scale, blind to the
  # kernel; None for a group with an unnormalised kernel.
  g1 = next(x for x in groups if x.name == "conv1")
  rel = surgery.relative_channel_scales(p, g1, normalized)
  np.testing.assert_allclose(rel, n / np.sqrt(np.mean(n ** 2)), rtol=1e-5)
  np.testing.assert_allclose(
      surgery.relative_channel_scales(q, g1, normalized), rel, rtol=1e-5)
  assert surgery.relative_channel_scales(p, g1, None) is None
  # Groups whose kernel is not normalised keep the absolute step.
  plain = surgery.group_soft_threshold(p, groups, tau)
  absolute = surgery.group_soft_threshold(
      p, groups, tau, normalized=jax.tree.map(lambda x: False, p))
  for x, y in zip(jax.tree.leaves(plain), jax.tree.leaves(absolute)):
    np.testing.assert_array_equal(x, y)


def test_prox_channel_l1_composes_with_optax():
  model, shape = FAMILIES["lenet5_bn"]
  v = _variables_of("lenet5_bn")
  groups = surgery.channel_groups(model, v)
  params = v["params"]
  tx = optax.inject_hyperparams(
      lambda learning_rate, l1: pj.proxnag(learning_rate, l1, 0.9,
                                           groups=groups))(
                                               learning_rate=0.1, l1=0.0)
  state = tx.init(params)
  grads = jax.tree.map(jnp.zeros_like, params)
  state = pj.set_hyperparams(state, l1=50.0)
  step = jax.jit(tx.update)
  for _ in range(3):
    upd, state = step(grads, state, params)
    params = optax.apply_updates(params, upd)
  sp = pj.sparse_params(state)
  # A large lambda empties every prunable channel of the sparse iterate.
  assert int(surgery.removed_channels(sp, groups)) == surgery.num_channels(
      groups)
  np.testing.assert_array_equal(np.asarray(sp["fc2"]["kernel"]),
                                np.asarray(v["params"]["fc2"]["kernel"]))
  with pytest.raises(ValueError, match="l1"):
    pj.prox_channel_l1(-1.0, 0.1, groups)


def _resnet_b_scores(seed):
  """ResNet-20-B's channel groups and random scores for each channel."""
  model, shape = FAMILIES["resnet20_b"]
  groups = surgery.channel_groups(model, _shapes(model, shape))
  rng = np.random.default_rng(seed)
  return groups, {g.name: jnp.asarray(rng.random(g.size))
                  for g in surgery.prunable_groups(groups)}


def test_select_channels_counts():
  groups, scores = _resnet_b_scores(0)
  n = surgery.num_channels(groups)
  for s in (0.0, 0.3, 0.9, 0.99):
    keep = jax.jit(functools.partial(surgery.select_channels, groups=groups,
                                     scope="global"))(scores, sparsity=s)
    kept = sum(int(k.sum()) for k in keep.values())
    assert kept == n - min(round(s * n), n - len(keep))
    assert all(int(k.sum()) >= 1 for k in keep.values())
    keep = surgery.select_channels(scores, groups, s, "layer")
    for g in surgery.prunable_groups(groups):
      assert int(keep[g.name].sum()) == g.size - min(round(s * g.size),
                                                     g.size - 1)
      # The highest scores stay.
      k = np.asarray(keep[g.name])
      sc = np.asarray(scores[g.name])
      if 0 < k.sum() < g.size:
        assert sc[k].min() > sc[~k].max()


def test_knee_finds_the_bend():
  # 10% large scores over a flat floor of tiny ones: r(t) falls from 1 to
  # 0.1 at the floor's top, then stays flat until the large ones.
  s = np.concatenate([np.full(900, 1e-3) * np.linspace(0.5, 1, 900),
                      np.linspace(1.0, 2.0, 100)])
  t, rho = gat_lib.knee(jnp.asarray(s))
  assert 1e-3 <= float(t) < 1.0
  assert abs(float(rho) - 0.1) < 1e-6


def _shrunk(name, seed, frac=0.6):
  """A random channel selection of a FAMILIES member and the network surgery
  builds from it: ``(keep, small, small_variables)``."""
  model, _ = FAMILIES[name]
  v = _variables_of(name)
  groups = surgery.channel_groups(model, v)
  keep = _random_keep(groups, seed=seed, frac=frac)
  small, sv = surgery.shrink(model, surgery.zero_channels(v, groups, keep),
                             keep)
  return keep, small, sv


def test_shrunk_network_saves_and_loads(tmp_path):
  _, shape = FAMILIES["lenet5_bn"]
  _, small, sv = _shrunk("lenet5_bn", seed=3)
  hostio.save_tree(str(tmp_path / "small"), sv)
  loaded = hostio.load_final(str(tmp_path / "small"))
  rebuilt = models.get_model("lenet5_bn", **{
      k: tuple(x) for k, x in surgery.architecture(small).items()})
  x = jax.random.normal(jax.random.PRNGKey(0), (2,) + shape)
  np.testing.assert_array_equal(
      np.asarray(small.apply(sv, x, train=False)),
      np.asarray(rebuilt.apply(loaded, x, train=False)))


def test_shrunk_network_trains():
  """The smaller network is an ordinary Flax model: a few SGD steps on a
  fixed batch lower its loss."""
  _, shape = FAMILIES["lenet5_bn"]
  _, small, sv = _shrunk("lenet5_bn", seed=5)
  x = jax.random.normal(jax.random.PRNGKey(0), (16,) + shape)
  y = jnp.arange(16) % 10

  def loss(params, stats):
    logits, upd = small.apply({"params": params, "batch_stats": stats}, x,
                              train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, y).mean(), upd["batch_stats"]

  tx = optax.sgd(0.05, momentum=0.9)
  params, stats = sv["params"], sv["batch_stats"]
  opt = tx.init(params)

  @jax.jit
  def step(params, stats, opt):
    (l, stats), g = jax.value_and_grad(loss, has_aux=True)(params, stats)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), stats, opt, l

  losses = []
  for _ in range(10):
    params, stats, opt, l = step(params, stats, opt)
    losses.append(float(l))
  assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_round_keep_gives_multiples_and_keeps_the_best():
  groups, scores = _resnet_b_scores(1)
  keep = surgery.select_channels(scores, groups, 0.4, "layer")
  out = jax.jit(lambda k, s: surgery.round_keep(k, s, groups, 4))(keep,
                                                                  scores)
  for g in surgery.prunable_groups(groups):
    k = int(out[g.name].sum())
    if g.size > 4:
      assert k % 4 == 0 and 4 <= k <= g.size
      assert abs(k - int(keep[g.name].sum())) <= 2
    sc, m = np.asarray(scores[g.name]), np.asarray(out[g.name])
    if 0 < m.sum() < g.size:
      assert sc[m].min() > sc[~m].max()
  assert surgery.round_keep(keep, scores, groups, 1) is keep


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_cost_terms_count_the_shrunk_network_exactly(name):
  """The traced params / MACs of a channel selection equal the counts of the
  network surgery actually builds (the cost model is exact)."""
  from proxnag_jax import report  # pylint: disable=g-import-not-at-top
  model, shape = FAMILIES[name]
  v = _variables_of(name)
  groups = surgery.channel_groups(model, v)
  layer_macs = report.count_macs(model, v, (1,) + shape)["layers"]
  p_terms = surgery.cost_terms(v, groups, "params")
  m_terms = surgery.cost_terms(v, groups, "macs", layer_macs)
  assert float(surgery.shrunk_cost(p_terms, groups, {})) == (
      surgery.count_params({"params": v["params"]}))
  for seed in (0, 1):
    keep, small, sv = _shrunk(name, seed, frac=0.5)
    want_p = surgery.count_params({"params": sv["params"]})
    want_m = report.count_macs(small, sv, (1,) + shape)["macs"]
    # float32 sums of integers below 2**24: exact to rounding of the sum
    assert float(surgery.shrunk_cost(p_terms, groups, keep)) == (
        pytest.approx(want_p, rel=1e-6))
    assert float(surgery.shrunk_cost(m_terms, groups, keep)) == (
        pytest.approx(want_m, rel=1e-6))


def test_select_for_cost_meets_the_target_with_the_fewest_channels():
  model, shape = FAMILIES["conv4"]
  from proxnag_jax import report  # pylint: disable=g-import-not-at-top
  v = _variables_of("conv4")
  groups = surgery.channel_groups(model, v)
  terms = surgery.cost_terms(v, groups, "macs", report.count_macs(
      model, v, (1,) + shape)["layers"])
  dense = sum(t.cost for t in terms)
  rng = np.random.default_rng(0)
  scores = {g.name: jnp.asarray(rng.random(g.size), jnp.float32)
            for g in surgery.prunable_groups(groups)}
  n = surgery.num_channels(groups)
  pick = lambda s: surgery.select_channels(scores, groups, s, "global")
  removed = lambda k: sum(int((~np.asarray(x)).sum()) for x in k.values())
  for target in (0.3, 0.6, 0.9):
    keep = jax.jit(lambda t: surgery.select_for_cost(pick, terms, groups, t))(
        target)
    cost = float(surgery.shrunk_cost(terms, groups, keep))
    assert cost <= (1 - target) * dense * (1 + 1e-6)
    # one channel fewer removed (the previous global count) misses it
    fewer = pick((removed(keep) - 1) / n)
    assert float(surgery.shrunk_cost(terms, groups, fewer)) > (
        1 - target) * dense
