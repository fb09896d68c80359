"""Model registry, parameter counts and MAC counts."""

import jax
import numpy as np
import pytest

import proxnag_jax as pj
from proxnag_jax import models
from proxnag_jax import report


def _init(name, shape, classes=10):
  m = models.get_model(name, classes)
  return m, models.init_model(m, jax.random.PRNGKey(0), shape)


@pytest.mark.parametrize("name,shape,count", [
    ("resnet20", (1, 32, 32, 3), 269_722),
    ("resnet20_b", (1, 32, 32, 3), 272_474),
    ("lenet5", (1, 28, 28, 1), 431_080),
    ("lenet300_100", (1, 28, 28, 1), 266_610),
])
def test_parameter_counts(name, shape, count):
  m = models.get_model(name, 10)
  v = jax.eval_shape(lambda k: models.init_model(m, k, shape),
                     jax.random.PRNGKey(0))     # shapes only: quick
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      v["params"])) == count


def test_resnet20_macs_and_masked_macs():
  m, v = _init("resnet20", (1, 32, 32, 3))
  macs = report.count_macs(m, v, (1, 32, 32, 3))
  assert macs["macs"] == 40_551_040          # 40.55M per 32x32 image
  assert macs["theoretical_speedup"] == 1.0
  assert len(macs["layers"]) == 20            # 19 convs + fc
  masks = pj.magnitude_masks(v["params"], 0.9)
  sparse = report.count_macs(m, v, (1, 32, 32, 3), masks=masks)
  # Every layer keeps 10% of its weights -> MACs drop ~10x.
  assert sparse["theoretical_speedup"] == pytest.approx(10.0, rel=0.01)
  first = sparse["layers"][0]
  assert first["macs_sparse"] == 32 * 32 * first["nonzero"]


def test_resnet_forward_shapes_and_train_mode():
  m, v = _init("resnet20", (2, 32, 32, 3))
  x = np.zeros((2, 32, 32, 3), np.float32)
  logits, upd = m.apply(v, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (2, 10) and "batch_stats" in upd
  assert m.apply(v, x, train=False).shape == (2, 10)


@pytest.mark.parametrize("name,count", [
    ("resnet56", 853_018),      # He et al. 2016: 0.85M
    ("vgg16", 14_728_266),      # 13 BN convs and one linear classifier
])
def test_larger_models_build(name, count):
  # Shapes only (jax.eval_shape): nothing is computed, so it is quick.
  m = models.get_model(name, 10)
  v = jax.eval_shape(lambda k: models.init_model(m, k, (1, 32, 32, 3)),
                     jax.random.PRNGKey(0))
  out = jax.eval_shape(lambda v, x: m.apply(v, x, train=False), v,
                       jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
  assert out.shape == (1, 10)
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      v["params"])) == count


def test_unknown_model_lists_valid_names():
  with pytest.raises(ValueError, match="valid models: .*resnet20"):
    models.get_model("resnet21")
