"""Closed forms of the proximal operators (paper eqs. 5 and 7)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxnag_jax as pj
from proxnag_jax import prox


def eq5(w, g, alpha, lam):
  """Paper eq. 5, case by case, element by element (plain Python)."""
  out = []
  for wi, gi in zip(w, g):
    z = wi - gi * alpha
    if z > alpha * lam:
      out.append(wi - gi * alpha - alpha * lam)
    elif z < -alpha * lam:
      out.append(wi - gi * alpha + alpha * lam)
    else:
      out.append(0.0)
  return np.array(out)


def test_soft_threshold_matches_eq5_elementwise():
  rng = np.random.default_rng(0)
  w = rng.normal(size=500).astype(np.float64)
  g = rng.normal(size=500)
  alpha, lam = 0.1, 2.0
  expected = eq5(w, g, alpha, lam)
  got = np.asarray(pj.soft_threshold(jnp.asarray(w - alpha * g), alpha * lam))
  np.testing.assert_allclose(got, expected, atol=1e-6)
  assert np.all((got == 0) == (expected == 0))


def test_prox_l1_transform_is_eq5():
  rng = np.random.default_rng(1)
  w = rng.normal(size=(20, 10)).astype(np.float32)
  g = rng.normal(size=(20, 10)).astype(np.float32)
  alpha, lam = 0.05, 3.0
  tx = optax.chain(optax.scale_by_learning_rate(alpha),
                   pj.prox_l1(lam, alpha))
  params = {"w": jnp.asarray(w)}
  u, _ = tx.update({"w": jnp.asarray(g)}, tx.init(params), params)
  new = np.asarray(optax.apply_updates(params, u)["w"])
  expected = eq5(w.ravel(), g.ravel(), alpha, lam).reshape(w.shape)
  np.testing.assert_allclose(new, expected, atol=1e-6)
  assert np.sum(new == 0) == np.sum(expected == 0) > 0


def test_soft_threshold_values_and_dtype():
  x = jnp.array([-2.0, -0.5, 0.0, 0.3, 1.5], jnp.bfloat16)
  y = pj.soft_threshold(x, 1.0)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y, np.float32), [-1, 0, 0, 0, 0.5])


def test_group_soft_threshold_closed_form():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(3, 3, 4, 8)).astype(np.float32)
  x[..., 2] *= 0.01   # a weak filter
  tau = 1.0
  got = np.asarray(pj.group_soft_threshold(jnp.asarray(x), tau, axis=-1))
  for j in range(8):
    norm = np.linalg.norm(x[..., j])
    want = x[..., j] * max(1 - tau / norm, 0.0)
    np.testing.assert_allclose(got[..., j], want, rtol=1e-5, atol=1e-6)
  assert np.all(got[..., 2] == 0)
  # Group zeros are whole filters.
  zero_filters = np.all(got == 0, axis=(0, 1, 2))
  assert zero_filters[2]


def test_group_soft_threshold_is_prox_of_group_lasso():
  """The output minimises 1/2||y-x||^2 + tau * sum_g ||y_g|| (random probes)."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(5, 6)).astype(np.float64)
  tau = 0.8

  def objective(y):
    return 0.5 * np.sum((y - x) ** 2) + tau * np.sum(np.linalg.norm(y, axis=0))

  y = np.asarray(pj.group_soft_threshold(jnp.asarray(x, jnp.float32), tau,
                                         axis=-1), np.float64)
  best = objective(y)
  for _ in range(200):
    assert objective(y + 1e-2 * rng.normal(size=y.shape)) >= best - 1e-6


def test_group_prox_transform_zeros_filters():
  params = {"conv": jnp.asarray(np.random.default_rng(4).normal(
      size=(3, 3, 2, 6)), jnp.float32)}
  params["conv"] = params["conv"].at[..., :3].multiply(0.01)
  tx = optax.chain(optax.scale_by_learning_rate(1.0),
                   pj.prox_group_l1(0.5, 1.0, axis=-1))
  g = jax.tree.map(jnp.zeros_like, params)
  u, _ = tx.update(g, tx.init(params), params)
  new = optax.apply_updates(params, u)["conv"]
  zero = np.all(np.asarray(new) == 0, axis=(0, 1, 2))
  np.testing.assert_array_equal(zero, [True] * 3 + [False] * 3)


@pytest.mark.parametrize("tau", [0.0, 0.5])
def test_soft_threshold_jit_and_traced_tau(tau):
  f = jax.jit(pj.soft_threshold)
  x = jnp.linspace(-1, 1, 11)
  np.testing.assert_allclose(f(x, tau), pj.soft_threshold(x, tau))


def test_scale_invariant_soft_threshold_against_numpy():
  """Per output filter: soft threshold at tau * rms(x_c), then the filter's
  norm restored; equivariant to positive per-filter scales; never empties a
  filter for tau < 1."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)
  tau = 0.7
  got = np.asarray(prox.scale_invariant_soft_threshold(x, tau))
  for c in range(x.shape[-1]):
    f = x[..., c].astype(np.float64)
    rms = np.sqrt(np.mean(f ** 2))
    y = np.sign(f) * np.maximum(np.abs(f) - tau * rms, 0)
    want = y * np.linalg.norm(f) / np.linalg.norm(y)
    np.testing.assert_allclose(got[..., c], want, rtol=1e-5, atol=1e-6)
    assert np.any(got[..., c] != 0)
    np.testing.assert_allclose(np.linalg.norm(got[..., c]),
                               np.linalg.norm(f), rtol=1e-5)
  a = rng.uniform(0.01, 100.0, size=(6,)).astype(np.float32)
  scaled = np.asarray(prox.scale_invariant_soft_threshold(x * a, tau))
  np.testing.assert_allclose(scaled, got * a, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(scaled == 0, got == 0)
  # All-zero filters stay zero (no division by zero).
  z = np.zeros((4, 2), np.float32)
  np.testing.assert_array_equal(prox.scale_invariant_soft_threshold(z, 0.5),
                                z)


def test_scale_invariant_soft_threshold_with_a_reference_norm():
  """With each filter's reference norm: threshold tau * ||x_c|| / ref_c
  (the absolute threshold while ||x_c|| = ref_c), the norm kept; scaling x
  after the reference point scales the result."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(5, 4)).astype(np.float32)
  ref = np.linalg.norm(x, axis=0, keepdims=True)
  tau = 0.4
  got = np.asarray(prox.scale_invariant_soft_threshold(x, tau,
                                                       reference=ref))
  y = np.sign(x) * np.maximum(np.abs(x) - tau, 0)
  want = y * np.linalg.norm(x, axis=0) / np.linalg.norm(y, axis=0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  a = rng.uniform(0.1, 10, size=(1, 4)).astype(np.float32)
  np.testing.assert_allclose(
      prox.scale_invariant_soft_threshold(x * a, tau, reference=ref),
      got * a, rtol=1e-4, atol=1e-6)


def test_capped_simplex_projection_against_an_exact_solver():
  """The bisection's projection equals the exact one (a breakpoint search
  in float64, numpy), sums to k and is in [0, 1]; traced k under jit."""
  from proxnag_jax import prox  # pylint: disable=g-import-not-at-top

  def exact(s, k):
    s = np.asarray(s, np.float64)
    # sum(clip(s - v, 0, 1)) is piecewise linear in v with breakpoints at
    # s and s - 1: find the piece holding k, then solve on it.
    bps = np.sort(np.concatenate([s, s - 1.0]))
    f = lambda v: np.clip(s - v, 0, 1).sum()
    vals = np.array([f(b) for b in bps])       # falling in v
    i = np.searchsorted(-vals, -k)             # first breakpoint with f <= k
    lo, hi = bps[max(i - 1, 0)], bps[i]
    flo, fhi = f(lo), f(hi)
    v = lo if flo == fhi else lo + (flo - k) * (hi - lo) / (flo - fhi)
    return np.clip(s - v, 0, 1)

  rng = np.random.default_rng(0)
  for n, k in ((10, 3.0), (1000, 250.0), (1000, 999.0), (7, 0.5)):
    s = rng.normal(size=n).astype(np.float32) * 2
    got = np.asarray(prox.capped_simplex_projection(jnp.asarray(s), k))
    np.testing.assert_allclose(got, exact(s, k), atol=1e-5)
    assert abs(got.sum() - k) < 1e-3 * max(1.0, k / 100)
    assert got.min() >= 0 and got.max() <= 1
  f = jax.jit(prox.capped_simplex_projection)
  s = jnp.asarray(rng.normal(size=100).astype(np.float32))
  for k in (10.0, 50.0):
    assert abs(float(f(s, k).sum()) - k) < 1e-3
  # Already feasible: unchanged.
  x = jnp.asarray([1.0, 0.0, 0.5, 0.5])
  np.testing.assert_allclose(np.asarray(prox.capped_simplex_projection(
      x, 2.0)), np.asarray(x), atol=1e-6)
