"""The fast-gradient convolution equals lax.conv_general_dilated and its
gradients, to float32 rounding, for the configurations the models use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from proxnag_jax.models import conv

DN = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("k,stride,padding", [
    (3, 1, "SAME"), (3, 1, ((1, 1), (1, 1))), (3, 2, ((1, 1), (1, 1))),
    (1, 2, "VALID"), (1, 1, "SAME"), (5, 1, "VALID"), (3, 2, "SAME"),
    (7, 2, ((3, 3), (3, 3))), (3, 1, ((0, 2), (2, 0)))])
def test_values_and_gradients_match_lax(k, stride, padding):
  kx, kw, kd = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (4, 9, 10, 3))
  w = jax.random.normal(kw, (k, k, 3, 5))
  dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)
  ref = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), padding,
                                              dimension_numbers=dn)
  new = lambda x, w: conv.conv_general_dilated(x, w, (stride, stride),
                                               padding, dimension_numbers=dn)
  y = ref(x, w)
  np.testing.assert_array_equal(np.asarray(new(x, w)), np.asarray(y))
  dy = jax.random.normal(kd, y.shape)
  gr = jax.vjp(ref, x, w)[1](dy)
  gn = jax.jit(lambda x, w, dy: jax.vjp(new, x, w)[1](dy))(x, w, dy)
  for a, b in zip(gn, gr):
    # Sums of up to 4*9*10 products of unit normals: float32 rounding of
    # differently ordered sums, relative to the gradient's scale.
    scale = float(jnp.max(jnp.abs(b)))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                               atol=1e-5 * scale)


def test_unsupported_configurations_fall_back():
  x = jnp.ones((2, 8, 8, 4))
  w = jnp.ones((3, 3, 2, 4))
  dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)
  got = conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn,
                                  feature_group_count=2)
  want = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn,
                                  feature_group_count=2)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
