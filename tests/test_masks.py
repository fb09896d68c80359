"""Masks as pytrees: magnitude masks, filters, apply, sparsity report."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import proxnag_jax as pj


def _params():
  rng = np.random.default_rng(0)
  return {
      "Conv_0": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 3, 8)),
                                       jnp.float32),
                 "bias": jnp.asarray(rng.normal(size=8), jnp.float32)},
      "BatchNorm_0": {"scale": jnp.ones(8), "bias": jnp.zeros(8)},
      "Dense_0": {"kernel": jnp.asarray(rng.normal(size=(8, 10)) * 3,
                                        jnp.float32),
                  "bias": jnp.zeros(10)},
  }


def test_default_filter_selects_kernels_only():
  which = pj.prunable_tree(_params())
  assert which["Conv_0"]["kernel"] and which["Dense_0"]["kernel"]
  assert not which["Conv_0"]["bias"]
  assert not which["BatchNorm_0"]["scale"]


@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.9, 0.99])
def test_layerwise_magnitude_masks_exact_counts(s):
  params = _params()
  masks = pj.magnitude_masks(params, s, scope="layer")
  for name in ("Conv_0", "Dense_0"):
    w, m = np.asarray(params[name]["kernel"]), np.asarray(masks[name]["kernel"])
    assert m.dtype == bool and m.shape == w.shape
    assert (~m).sum() == round(s * w.size)
    if 0 < (~m).sum() < w.size:  # kept weights are the largest
      assert np.abs(w[m]).min() >= np.abs(w[~m]).max()
  assert np.all(np.asarray(masks["Conv_0"]["bias"]))
  assert np.all(np.asarray(masks["BatchNorm_0"]["scale"]))


def test_global_magnitude_masks_one_threshold():
  params = _params()
  masks = pj.magnitude_masks(params, 0.7, scope="global")
  kept = np.concatenate([np.abs(np.asarray(params[n]["kernel"]))[
      np.asarray(masks[n]["kernel"])] for n in ("Conv_0", "Dense_0")])
  dropped = np.concatenate([np.abs(np.asarray(params[n]["kernel"]))[
      ~np.asarray(masks[n]["kernel"])] for n in ("Conv_0", "Dense_0")])
  assert dropped.size == round(0.7 * (216 + 80))
  assert kept.min() >= dropped.max()
  # Dense weights are 3x larger: global pruning spares them more.
  dense_s = 1 - np.asarray(masks["Dense_0"]["kernel"]).mean()
  conv_s = 1 - np.asarray(masks["Conv_0"]["kernel"]).mean()
  assert dense_s < conv_s


def test_topk_mask_exact_with_ties_and_jit():
  scores = jnp.zeros(10)
  m = jax.jit(pj.topk_mask)(scores, 3)
  assert int(m.sum()) == 3


@pytest.mark.parametrize("kind", ["normal", "ties", "zeros", "signed_zeros",
                                  "extremes"])
def test_topk_mask_equals_a_stable_descending_sort(kind):
  """The sort-free selection keeps exactly the first ``k`` of a stable
  descending argsort (ties by position), for every ``k``, traced."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal(257).astype(np.float32)
  x = {"normal": x, "ties": np.round(x * 2), "zeros": np.zeros_like(x),
       "signed_zeros": np.where(x > 0, 0.0, -0.0).astype(np.float32),
       "extremes": np.concatenate([
           [np.inf, -np.inf, np.finfo(np.float32).max,
            np.finfo(np.float32).tiny, -np.finfo(np.float32).tiny, 1e-45,
            -1e-45], x[7:]]).astype(np.float32)}[kind]
  order = np.argsort(-x, kind="stable")
  f = jax.jit(pj.topk_mask)
  for k in (0, 1, 2, 128, 255, 256, 257):
    want = np.zeros(x.size, bool)
    want[order[:k]] = True
    np.testing.assert_array_equal(np.asarray(f(jnp.asarray(x), k)), want)
  # a 2-D leaf keeps its shape; vmapped over a batch of k
  m = jax.vmap(pj.topk_mask, in_axes=(None, 0))(jnp.asarray(x[:256]).reshape(
      16, 16), jnp.arange(0, 257, 64))
  assert m.shape == (5, 16, 16)
  np.testing.assert_array_equal(m.sum((1, 2)), np.arange(0, 257, 64))


def test_magnitude_masks_under_jit_with_traced_sparsity():
  params = _params()
  f = jax.jit(lambda p, s: pj.magnitude_masks(p, s, scope="global"))
  m = f(params, 0.5)
  n = sum(int((~np.asarray(v)).sum()) for v in jax.tree.leaves(m))
  assert n == round(0.5 * 296)


def test_apply_masks_and_report():
  params = _params()
  masks = pj.magnitude_masks(params, 0.9)
  pruned = pj.apply_masks(params, masks)
  r = pj.sparsity_report(pruned)
  total = sum(v.size for v in jax.tree.leaves(params))
  assert r["num_params"] == total
  removed = round(0.9 * 216) + round(0.9 * 80)
  assert r["prunable_params"] == 296
  assert r["prunable_nonzero"] == 296 - removed
  assert r["sparsity"] == pytest.approx(removed / 296)
  # BN bias and dense bias are zeros: plain nonzero counts skip them, but
  # compression counts every non-prunable leaf as stored (they are not
  # pruned weights, whatever their values).
  nonzero = 296 - removed + 8 + 8  # conv bias + BN scale
  assert r["num_nonzero"] == nonzero
  assert r["stored_params"] == 296 - removed + (total - 296)
  assert r["compression_ratio"] == pytest.approx(
      total / (296 - removed + total - 296))
  names = [l["name"] for l in r["layers"]]
  assert "Conv_0/kernel" in names
  # The mask argument counts masked-out weights as zeros even if nonzero.
  r2 = pj.sparsity_report(params, masks)
  assert r2["prunable_nonzero"] == 296 - removed
  assert float(pj.sparsity(pruned)) == pytest.approx(removed / 296)


def test_bad_sparsity_and_scope():
  with pytest.raises(ValueError, match="sparsity must be in"):
    pj.magnitude_masks(_params(), 1.0)
  with pytest.raises(ValueError, match="scope"):
    pj.magnitude_masks(_params(), 0.5, scope="row")


def test_normalized_kernels_found_by_probing_the_model():
  """Kernels followed by BatchNorm are found; a classifier, a kernel with no
  normalisation and one followed by LayerNorm (not per-channel invariant)
  are not."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=True):
      x = nn.Conv(4, (3, 3), name="bn_conv")(x)
      x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
      x = nn.relu(nn.Conv(4, (3, 3), name="ln_conv")(x))
      x = nn.LayerNorm(name="ln")(x)
      x = nn.relu(nn.Conv(4, (3, 3), name="plain_conv")(x))
      return nn.Dense(3, name="fc")(x.reshape((x.shape[0], -1)))

  x = jax.random.normal(jax.random.PRNGKey(1), (16, 6, 6, 2))
  net = Net()
  v = net.init(jax.random.PRNGKey(0), x)

  def fn(p):
    return net.apply({"params": p, "batch_stats": v["batch_stats"]}, x,
                     mutable=["batch_stats"])[0]
  found = pj.normalized_kernels(fn, v["params"])
  assert found["bn_conv"]["kernel"] is True
  assert found["ln_conv"]["kernel"] is False
  assert found["plain_conv"]["kernel"] is False
  assert found["fc"]["kernel"] is False
  assert found["bn_conv"]["bias"] is False       # 1-D leaves never
