"""Prox-NAG and the masked-optimizer wrapper as Optax transformations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxnag_jax as pj


def _problem(seed=0, n=80, d=30):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(n, d))
  x_true = np.zeros(d)
  x_true[:5] = rng.normal(size=5) * 3
  b = a @ x_true + 0.1 * rng.normal(size=n)
  return a, b


def _mlp_params(seed=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  return {
      "dense1": {"kernel": jax.random.normal(k1, (8, 16)) * 0.5,
                 "bias": jnp.zeros(16)},
      "dense2": {"kernel": jax.random.normal(k2, (16, 1)) * 0.5,
                 "bias": jnp.zeros(1)},
  }, jax.random.normal(k3, (32, 8))


def _mlp_loss(params, x):
  h = jnp.tanh(x @ params["dense1"]["kernel"] + params["dense1"]["bias"])
  y = h @ params["dense2"]["kernel"] + params["dense2"]["bias"]
  return jnp.mean((y - jnp.sin(x[:, :1])) ** 2)


def _run(tx, params, loss, steps, *args):
  state = tx.init(params)

  def step(carry, _):
    p, s = carry
    g = jax.grad(loss)(p, *args)
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  (params, state), _ = jax.lax.scan(step, (params, state), None, length=steps)
  return params, state


def test_l1_zero_equals_optax_nesterov_sgd():
  params, x = _mlp_params()
  ours, _ = _run(pj.proxnag(0.05, 0.0, momentum=0.9), params, _mlp_loss, 100, x)
  ref, _ = _run(optax.sgd(0.05, momentum=0.9, nesterov=True), params,
                _mlp_loss, 100, x)
  # The same maths in a different order: float32 rounding over 100 steps.
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _coordinate_descent_lasso(a, b, lam, iters=3000):
  """Independent solver: cyclic coordinate descent, float64, for
  min 1/(2n)||a x - b||^2 + lam ||x||_1."""
  n, d = a.shape
  x = np.zeros(d)
  col_sq = (a ** 2).sum(0) / n
  r = b - a @ x
  for _ in range(iters):
    for j in range(d):
      r += a[:, j] * x[j]
      rho = a[:, j] @ r / n
      x[j] = np.sign(rho) * max(abs(rho) - lam, 0.0) / col_sq[j]
      r -= a[:, j] * x[j]
  return x


@pytest.mark.parametrize("fista,momentum", [(True, 0.0), (False, 0.5)])
def test_lasso_converges_to_independent_solution(fista, momentum):
  a, b = _problem()
  n = a.shape[0]
  lam = 0.3
  lipschitz = np.linalg.norm(a, 2) ** 2 / n
  aj, bj = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  loss = lambda p: 0.5 * jnp.mean((aj @ p["x"] - bj) ** 2)
  tx = pj.proxnag(1.0 / lipschitz, lam, momentum, fista=fista)
  _, state = jax.jit(functools.partial(_run, tx, loss=loss, steps=3000))(
      {"x": jnp.zeros(a.shape[1])})
  ours = np.asarray(pj.sparse_params(state)["x"])
  ref = _coordinate_descent_lasso(a, b, lam)
  assert np.sum(ref == 0) >= 10  # a genuinely sparse solution
  np.testing.assert_array_equal(ours == 0, ref == 0)  # same support
  np.testing.assert_allclose(ours, ref, atol=2e-4)


def test_sparse_iterate_has_exact_zeros_and_params_do_not_need_to():
  params, x = _mlp_params()
  p, state = _run(pj.proxnag(0.05, 0.05), params, _mlp_loss, 200, x)
  sp = pj.sparse_params(state)
  k = np.asarray(sp["dense1"]["kernel"])
  assert np.sum(k == 0.0) > 0.3 * k.size
  # Same tree and dtypes as params.
  assert jax.tree.structure(sp) == jax.tree.structure(p)
  report = pj.sparsity_report(sp)
  assert report["sparsity"] > 0.3
  assert report["compression_ratio"] > 1.0


def test_mask_false_leaves_get_plain_nesterov_steps():
  params, x = _mlp_params()
  mask = jax.tree.map(lambda v: v.ndim > 1, params)
  _, st_masked = _run(pj.proxnag(0.05, 10.0, mask=mask), params, _mlp_loss, 5,
                      x)
  sp = pj.sparse_params(st_masked)
  # Huge lambda: every kernel entry is zero, biases never shrink to zero.
  assert np.all(np.asarray(sp["dense1"]["kernel"]) == 0)
  assert np.any(np.asarray(sp["dense2"]["bias"]) != 0)
  # The callable form gives the same result.
  _, st_fn = _run(pj.proxnag(0.05, 10.0,
                             mask=lambda p: jax.tree.map(lambda v: v.ndim > 1,
                                                         p)),
                  params, _mlp_loss, 5, x)
  for a, b in zip(jax.tree.leaves(sp), jax.tree.leaves(pj.sparse_params(st_fn))):
    np.testing.assert_array_equal(a, b)


def test_jit_and_vmap_over_lambda():
  params, x = _mlp_params()
  lams = jnp.array([0.0, 0.01, 0.05, 0.2])

  @jax.jit
  def final_sparsity(lam):
    _, st = _run(pj.proxnag(0.05, lam), params, _mlp_loss, 100, x)
    return pj.sparsity(pj.sparse_params(st))

  batched = jax.vmap(final_sparsity)(lams)
  single = jnp.stack([final_sparsity(l) for l in lams])
  np.testing.assert_allclose(batched, single)
  assert batched[0] == 0.0
  assert np.all(np.diff(np.asarray(batched)) >= 0)  # more lambda, sparser
  assert batched[-1] > 0.5


def test_schedules_for_lr_and_l1():
  params, x = _mlp_params()
  lr = optax.cosine_decay_schedule(0.05, 100)
  l1 = optax.linear_schedule(0.0, 0.05, 100)
  _, st = jax.jit(lambda: _run(pj.proxnag(lr, l1), params, _mlp_loss, 100,
                               x))()
  assert pj.sparsity(pj.sparse_params(st)) > 0


def test_inside_chain_with_other_transforms():
  params, x = _mlp_params()
  tx = optax.chain(optax.clip_by_global_norm(1.0), pj.proxnag(0.05, 0.05))
  _, st = _run(tx, params, _mlp_loss, 50, x)
  assert pj.sparsity(pj.sparse_params(st)) > 0


def test_inject_hyperparams_raise_lambda_without_reinit():
  params, x = _mlp_params()
  tx = optax.inject_hyperparams(pj.proxnag)(learning_rate=0.05, l1=0.0)
  state = tx.init(params)

  @jax.jit
  def step(p, s):
    g = jax.grad(_mlp_loss)(p, x)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  p = params
  for _ in range(20):
    p, state = step(p, state)
  assert pj.sparsity(pj.sparse_params(state)) == 0
  state.hyperparams["l1"] = jnp.asarray(0.1)   # raise lambda, keep momentum
  for _ in range(20):
    p, state = step(p, state)
  assert pj.sparsity(pj.sparse_params(state)) > 0.1

  # Equivalent to running the plain optimizer with lambda 0 then 0.1 while
  # carrying its state: the chained state is the same pytree.
  plain0, plain1 = pj.proxnag(0.05, 0.0), pj.proxnag(0.05, 0.1)
  q, s = params, plain0.init(params)
  for i in range(40):
    tx_i = plain0 if i < 20 else plain1
    g = jax.grad(_mlp_loss)(q, x)
    u, s = tx_i.update(g, s, q)
    q = optax.apply_updates(q, u)
  for a, b in zip(jax.tree.leaves(q), jax.tree.leaves(p)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)  # jit vs eager


def test_multisteps_accumulates_then_applies():
  params, x = _mlp_params()
  tx = optax.MultiSteps(pj.proxnag(0.05, 0.05), every_k_schedule=2)
  state = tx.init(params)
  ref_tx = pj.proxnag(0.05, 0.05)
  ref_state = ref_tx.init(params)
  halves = (x[:16], x[16:])
  p, q = params, params
  for _ in range(5):
    grads = [jax.grad(_mlp_loss)(p, h) for h in halves]
    for g in grads:
      u, state = tx.update(g, state, p)
      p = optax.apply_updates(p, u)
    mean_g = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
    u, ref_state = ref_tx.update(mean_g, ref_state, q)
    q = optax.apply_updates(q, u)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q)):
    # Float32 rounding of differently ordered sums (the mean of two
    # gradients vs MultiSteps' running mean), over 5 steps: ~10 ulps.
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(pj.sparse_params(state)),
                  jax.tree.leaves(pj.sparse_params(ref_state))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_dtype_preserved_bf16():
  params, x = _mlp_params()
  params = jax.tree.map(lambda v: v.astype(jnp.bfloat16), params)
  loss = lambda p: _mlp_loss(jax.tree.map(lambda v: v.astype(jnp.float32), p),
                             x)
  tx = pj.proxnag(0.05, 0.05)
  state = tx.init(params)
  g = jax.grad(loss)(params)
  u, state = tx.update(g, state, params)
  new = optax.apply_updates(params, u)
  for leaf in jax.tree.leaves((u, new, pj.sparse_params(state))):
    assert leaf.dtype == jnp.bfloat16


def test_fista_momentum_sequence():
  theta = 1.0
  betas = []
  for _ in range(50):
    beta, theta_next = pj.fista_momentum(theta)
    want_next = (np.sqrt(theta ** 4 + 4 * theta ** 2) - theta ** 2) / 2
    np.testing.assert_allclose(theta_next, want_next, rtol=1e-6)
    np.testing.assert_allclose(beta, want_next * (1 / theta - 1), rtol=1e-5,
                               atol=1e-7)
    betas.append(float(beta))
    theta = float(theta_next)
  assert betas[0] == 0.0
  assert np.all(np.diff(betas) > 0) and betas[-1] < 1


def test_with_masks_keeps_pruned_weights_at_zero():
  params, x = _mlp_params()
  masks = pj.magnitude_masks(params, 0.8)
  inner = optax.chain(optax.add_decayed_weights(1e-2),
                      optax.sgd(0.1, momentum=0.9, nesterov=True))
  tx = pj.with_masks(inner, masks)
  # Start from *unmasked* params: the first step lands pruned weights on 0.
  p, state = _run(tx, params, _mlp_loss, 300, x)
  for w, m in zip(jax.tree.leaves(p), jax.tree.leaves(masks)):
    w, m = np.asarray(w), np.asarray(m)
    assert np.all(w[~m] == 0.0)
    assert np.all(w[m] != 0.0) or w.ndim == 1
  removed = sum(round(0.8 * w.size) for w in jax.tree.leaves(params)
                if w.ndim > 1)   # layer-wise rounding
  assert pj.sparsity_report(p)["prunable_nonzero"] == 144 - removed
  assert _mlp_loss(p, x) < _mlp_loss(pj.apply_masks(params, masks), x)


def test_with_masks_set_and_get_masks_and_nested_states():
  params, _ = _mlp_params()
  tx = optax.MultiSteps(pj.with_masks(pj.proxnag(0.1, 0.0)), 2)
  state = tx.init(params)
  m = pj.get_masks(state)
  assert all(bool(np.all(v)) == bool(np.all(np.asarray(p) != 0))
             for v, p in zip(jax.tree.leaves(m), jax.tree.leaves(params)))
  new = pj.magnitude_masks(params, 0.5)
  state = pj.set_masks(state, new)
  for a, b in zip(jax.tree.leaves(pj.get_masks(state)), jax.tree.leaves(new)):
    np.testing.assert_array_equal(a, b)
  assert jax.tree.structure(pj.sparse_params(state)) == jax.tree.structure(
      params)


# --------------------------------------------------------------------------
# Bad input.
# --------------------------------------------------------------------------


def test_negative_hyperparameters_raise():
  with pytest.raises(ValueError, match="l1 must be non-negative"):
    pj.proxnag(0.1, -1.0)
  with pytest.raises(ValueError, match="learning_rate must be non-negative"):
    pj.proxnag(-0.1, 1.0)
  with pytest.raises(ValueError, match="l1 must be non-negative"):
    pj.proxnag(0.1, optax.constant_schedule(-1.0))
  with pytest.raises(ValueError, match="momentum must be non-negative"):
    pj.proxnag(0.1, 0.1, momentum=-0.5)


def test_mask_tree_mismatch_raises():
  params, x = _mlp_params()
  bad = {"dense1": True}
  tx = pj.proxnag(0.1, 0.1, mask=bad)
  with pytest.raises(ValueError, match="mask tree does not match"):
    tx.init(params)
  with pytest.raises(ValueError, match="does not match"):
    pj.with_masks(optax.sgd(0.1), bad).init(params)
  with pytest.raises(ValueError, match="does not match"):
    pj.apply_masks(params, bad)


def test_sparse_params_without_proxnag_raises():
  params, _ = _mlp_params()
  with pytest.raises(ValueError, match="no Prox-NAG"):
    pj.sparse_params(optax.adam(1e-3).init(params))
  with pytest.raises(ValueError, match="no with_masks state"):
    pj.get_masks(optax.adam(1e-3).init(params))


def test_prox_l1_normalized_leaves_take_the_scale_invariant_step():
  """Leaves marked ``normalized`` get the per-filter relative threshold with
  the filter's norm kept; the others the absolute soft threshold; both
  inside ``inject_hyperparams`` under jit."""
  rng = np.random.default_rng(0)
  params = {"a": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)}
  grads = jax.tree.map(lambda p: 0.3 * jnp.ones_like(p), params)
  lr, lam = 0.1, 2.0
  tx = optax.inject_hyperparams(pj.proxnag, static_args=("normalized",))(
      learning_rate=lr, l1=lam, momentum=0.0,
      normalized={"a": True, "b": False})
  st = tx.init(params)
  _, st = jax.jit(tx.update)(grads, st, params)
  w = pj.sparse_params(st)
  pre = jax.tree.map(lambda p, g: p - lr * g, params, grads)
  np.testing.assert_allclose(
      w["a"], pj.scale_invariant_soft_threshold(pre["a"], lr * lam),
      rtol=1e-6)
  np.testing.assert_allclose(w["b"], pj.soft_threshold(pre["b"], lr * lam),
                             rtol=1e-6)
  np.testing.assert_allclose(jnp.linalg.norm(w["a"], axis=0),
                             jnp.linalg.norm(pre["a"], axis=0), rtol=1e-5)
  # Scaling a normalised leaf's filters scales its step's result alike.
  a = jnp.asarray(rng.uniform(0.1, 10.0, size=(4,)), jnp.float32)
  st2 = tx.init({"a": params["a"] * a, "b": params["b"]})
  _, st2 = tx.update({"a": grads["a"] * 0 + 0.3 * a, "b": grads["b"]}, st2,
                     {"a": params["a"] * a, "b": params["b"]})
  np.testing.assert_allclose(pj.sparse_params(st2)["a"], w["a"] * a,
                             rtol=1e-4, atol=1e-6)


def test_prox_l1_rms_scaled_leaves_use_their_rms_at_init():
  """``rms_scaled`` leaves are thresholded at eta * lambda * rms(w_0), a
  fixed weight set at init (not following the leaf's later scale)."""
  rng = np.random.default_rng(1)
  params = {"a": jnp.asarray(rng.normal(size=(6, 3)) * 0.2, jnp.float32),
            "b": jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)}
  grads = jax.tree.map(jnp.zeros_like, params)
  lr, lam = 0.5, 1.0
  tx = pj.prox_l1(lam, lr, rms_scaled={"a": True, "b": False})
  st = tx.init(params)
  rms_a = float(jnp.sqrt(jnp.mean(params["a"] ** 2)))
  np.testing.assert_allclose(st.scales["a"], rms_a, rtol=1e-6)
  u, st = jax.jit(tx.update)(grads, st, params)
  new = optax.apply_updates(params, u)
  np.testing.assert_allclose(new["a"], pj.soft_threshold(params["a"],
                                                         lr * lam * rms_a),
                             rtol=1e-6)
  np.testing.assert_allclose(new["b"], pj.soft_threshold(params["b"],
                                                         lr * lam), rtol=1e-6)
  # The weight stays the one set at init.
  _, st2 = tx.update(grads, st, new)
  np.testing.assert_allclose(st2.scales["a"], rms_a, rtol=1e-6)


def test_prox_l1_trimmed_penalty_exempts_the_k_largest():
  """``keep=k``: the proximal step of lambda * (sum of all but the k
  largest |w_i|), written independently in numpy: the k largest entries of
  w + u over all masked leaves pass unchanged, the rest are soft-thresholded
  (unmasked leaves untouched); on a normalised leaf the ranking is in units
  of each filter's rms and the filter's norm is kept."""
  rng = np.random.default_rng(2)
  params = {"a": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(10,)) * 3, jnp.float32),
            "c": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}
  mask = {"a": True, "b": True, "c": False}
  grads = jax.tree.map(jnp.zeros_like, params)
  lr, lam, k = 0.5, 1.0, 9
  tx = pj.prox_l1(lam, lr, mask=mask, keep=k)
  u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  new = optax.apply_updates(params, u)
  x = np.concatenate([np.asarray(params["a"]).ravel(),
                      np.asarray(params["b"])])
  kept = np.zeros(x.size, bool)
  kept[np.argsort(-np.abs(x))[:k]] = True
  want = np.where(kept, x, np.sign(x) * np.maximum(np.abs(x) - lr * lam, 0))
  got = np.concatenate([np.asarray(new["a"]).ravel(), np.asarray(new["b"])])
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_array_equal(new["c"], params["c"])
  # keep as a callable of the masked count (here: prune all but 9) agrees.
  tx2 = pj.prox_l1(lam, lr, mask=mask, keep=lambda n: n - (x.size - k))
  u2, _ = tx2.update(grads, tx2.init(params), params)
  for p, q in zip(jax.tree.leaves(u), jax.tree.leaves(u2)):
    np.testing.assert_array_equal(p, q)
  # A normalised leaf: ranked by |w| / rms(w_c), norm kept per filter.
  only_a = {"a": params["a"]}
  tx3 = pj.prox_l1(0.4, 1.0, normalized={"a": True}, keep=6)
  u3, _ = tx3.update({"a": jnp.zeros((6, 4))}, tx3.init(only_a), only_a)
  w = np.asarray(params["a"])
  rel = np.abs(w) / np.sqrt(np.mean(w ** 2, axis=0, keepdims=True))
  ex = np.zeros(w.size, bool)
  ex[np.argsort(-rel.ravel())[:6]] = True
  ex = ex.reshape(w.shape)
  thr = 0.4 * np.sqrt(np.mean(w ** 2, axis=0, keepdims=True))
  y = np.where(ex, w, np.sign(w) * np.maximum(np.abs(w) - thr, 0))
  y = y * np.linalg.norm(w, axis=0) / np.linalg.norm(y, axis=0)
  np.testing.assert_allclose(w + np.asarray(u3["a"]), y, rtol=1e-5,
                             atol=1e-7)


def test_prox_l1_layer_keep_trims_the_penalty_inside_each_leaf():
  """``layer_keep``: each leaf's own ``k_l`` largest |w + u| pass unchanged
  and the rest are soft-thresholded (numpy reference); a leaf without a
  count is untouched; a flat sequence and a callable of the params give
  the same step; with a large lambda every leaf ends at exactly ``k_l``."""
  rng = np.random.default_rng(3)
  params = {"a": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(10,)) * 0.01, jnp.float32),
            "c": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}
  mask = {"a": True, "b": True, "c": False}
  counts = {"a": 5, "b": 3, "c": None}
  grads = jax.tree.map(jnp.zeros_like, params)
  lr, lam = 0.5, 0.3
  tx = pj.prox_l1(lam, lr, mask=mask, layer_keep=counts)
  u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  new = optax.apply_updates(params, u)
  for name in ("a", "b"):
    x = np.asarray(params[name]).ravel()
    kept = np.zeros(x.size, bool)
    kept[np.argsort(-np.abs(x))[:counts[name]]] = True
    want = np.where(kept, x, np.sign(x) * np.maximum(np.abs(x) - lr * lam, 0))
    np.testing.assert_allclose(np.asarray(new[name]).ravel(), want,
                               rtol=1e-6)
  np.testing.assert_array_equal(new["c"], params["c"])
  # The same counts as a flat sequence (tree order a, b, c) or a callable.
  for given in ([5, 3, None], lambda p: counts):
    tx2 = pj.prox_l1(lam, lr, mask=mask, layer_keep=given)
    u2, _ = tx2.update(grads, tx2.init(params), params)
    for p, q in zip(jax.tree.leaves(u), jax.tree.leaves(u2)):
      np.testing.assert_array_equal(p, q)
  # A large lambda: exactly k_l nonzeros in each leaf (b is the smaller
  # leaf in scale, so one global count would empty it first).
  big = pj.prox_l1(100.0, 1.0, mask=mask, layer_keep=counts)
  u3, _ = big.update(grads, big.init(params), params)
  out = optax.apply_updates(params, u3)
  assert [int(np.sum(np.asarray(out[k]) != 0)) for k in ("a", "b")] == [5, 3]
  with pytest.raises(ValueError, match="not both"):
    pj.prox_l1(lam, lr, keep=3, layer_keep=counts)
  with pytest.raises(ValueError, match="one count per leaf"):
    bad = pj.prox_l1(lam, lr, mask=mask, layer_keep={"a": 5})
    bad.update(grads, bad.init(params), params)


@pytest.mark.parametrize("global_count", [False, True])
def test_lpbox_admm_drives_a_relaxed_mask_to_the_best_binary_one(
    global_count):
  """A sparse binary program with a known answer: maximise s^T x over x in
  {0,1}^n with k ones (the top-k of s). SGD on the relaxed x through
  lpbox_admm ends at a binary x (every entry within 1e-2 of 0 or 1) whose
  ones are the top-k of s, per leaf or over all leaves; the l_p-box
  residuals shrink; one jitted step serves every call."""
  rng = np.random.default_rng(0)
  s = {"a": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32),
       "b": jnp.asarray(rng.normal(size=(40,)), jnp.float32)}
  x0 = jax.tree.map(lambda v: 0.5 + 0.01 * jnp.asarray(
      rng.normal(size=v.shape), jnp.float32), s)
  if global_count:
    keep, k_total = 21, 21
  else:
    keep, k_total = {"a": 9, "b": 12}, None
  tx = optax.chain(pj.transforms.lpbox_admm(
      keep, rho=0.05, rho_growth=1.1, every=20, rho_max=5.0,
      global_count=global_count), optax.sgd(0.05, momentum=0.9))
  loss = lambda x: -sum(jnp.sum(a * b) for a, b in zip(
      jax.tree.leaves(s), jax.tree.leaves(x))) * 0.1

  @jax.jit
  def step(x, st):
    g = jax.grad(loss)(x)
    u, st = tx.update(g, st, x)
    return optax.apply_updates(x, u), st

  x, st = x0, tx.init(x0)
  res0 = None
  for i in range(3000):
    x, st = step(x, st)
    if i == 50:
      lp = pj.transforms.lpbox_state(st)
      res0 = float(sum(jnp.sum(jnp.abs(a - b)) for a, b in zip(
          jax.tree.leaves(x), jax.tree.leaves(lp.y2))))
  assert step._cache_size() == 1
  lp = pj.transforms.lpbox_state(st)
  res = float(sum(jnp.sum(jnp.abs(a - b)) for a, b in zip(
      jax.tree.leaves(x), jax.tree.leaves(lp.y2))))
  assert res < 0.1 * res0
  for v in jax.tree.leaves(x):
    d = np.minimum(np.abs(np.asarray(v)), np.abs(1 - np.asarray(v)))
    assert d.max() < 1e-2
  ones = jax.tree.map(lambda v: np.asarray(v) > 0.5, x)
  if global_count:
    flat_s = np.concatenate([np.ravel(v) for v in jax.tree.leaves(s)])
    flat_x = np.concatenate([np.ravel(v) for v in jax.tree.leaves(ones)])
    assert flat_x.sum() == k_total
    np.testing.assert_array_equal(
        flat_x, flat_s >= np.sort(flat_s)[-k_total])
  else:
    for name, k in keep.items():
      v = np.ravel(np.asarray(s[name]))
      assert np.ravel(ones[name]).sum() == k
      np.testing.assert_array_equal(np.ravel(ones[name]),
                                    v >= np.sort(v)[-k])


def test_scale_by_leaf_rms_matches_its_formula():
  """One scalar per covered leaf: g / sqrt(bias-corrected EMA of mean(g^2)),
  against numpy over three steps; an uncovered leaf passes unchanged."""
  rng = np.random.default_rng(1)
  params = {"a": jnp.zeros((4, 3)), "b": jnp.zeros((7,)), "c": jnp.zeros(2)}
  tx = pj.transforms.scale_by_leaf_rms(decay=0.9,
                                       mask={"a": True, "b": True, "c": False})
  st = tx.init(params)
  nu = {"a": 0.0, "b": 0.0}
  for t in range(1, 4):
    g = {k: jnp.asarray(rng.normal(size=v.shape) * (10.0 ** i), jnp.float32)
         for i, (k, v) in enumerate(params.items())}
    u, st = tx.update(g, st, params)
    for k in ("a", "b"):
      gk = np.asarray(g[k], np.float64)
      nu[k] = 0.9 * nu[k] + 0.1 * np.mean(gk ** 2)
      want = gk / np.sqrt(nu[k] / (1 - 0.9 ** t))
      np.testing.assert_allclose(u[k], want, rtol=1e-5)
    np.testing.assert_array_equal(u["c"], g["c"])
  with pytest.raises(ValueError, match="decay"):
    pj.transforms.scale_by_leaf_rms(decay=1.0)


def test_lpbox_admm_with_leaf_rms_solves_a_layer_of_tiny_gradients():
  """The sparse binary program above with one leaf's objective 1,000x
  smaller (a wide layer's loss gradient behind frozen random weights):
  with each leaf's gradient brought to unit rms before the penalty, the
  same unitless settings end binary at the top-k of both leaves."""
  rng = np.random.default_rng(0)
  s = {"a": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32),
       "b": 1e-3 * jnp.asarray(rng.normal(size=(40,)), jnp.float32)}
  x0 = jax.tree.map(lambda v: 0.5 + 0.01 * jnp.asarray(
      rng.normal(size=v.shape), jnp.float32), s)
  keep = {"a": 9, "b": 12}
  tx = optax.chain(pj.transforms.scale_by_leaf_rms(),
                   pj.transforms.lpbox_admm(keep, rho=0.5, rho_growth=1.1,
                                            every=20, rho_max=50.0),
                   optax.sgd(0.005, momentum=0.9))
  loss = lambda x: -sum(jnp.sum(a * b) for a, b in zip(
      jax.tree.leaves(s), jax.tree.leaves(x)))

  @jax.jit
  def step(x, st):
    u, st = tx.update(jax.grad(loss)(x), st, x)
    return optax.apply_updates(x, u), st

  x, st = x0, tx.init(x0)
  for _ in range(3000):
    x, st = step(x, st)
  for name, k in keep.items():
    v = np.asarray(x[name]).ravel()
    assert np.minimum(np.abs(v), np.abs(1 - v)).max() < 1e-2, name
    sv = np.asarray(s[name]).ravel()
    np.testing.assert_array_equal(v > 0.5, sv >= np.sort(sv)[-k])
