"""proxnag_jax.pruner: every method as one Optax transformation.

The transformation must be the loop's method, step for step (one step
compared up to float rounding, from the start and from the middle of a run),
reach the target exactly in a plain jitted loop, compose with Optax, and
refuse what cannot work with a message.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxnag_jax as pj
import tiny
from proxnag_jax import data as data_lib
from proxnag_jax import engine
from proxnag_jax import masks as masks_lib

MEAN, STD = (0.5,), (0.25,)
X = data_lib.preprocess(tiny.DATA["train_x"], MEAN, STD)
Y = tiny.DATA["train_y"]
TOTAL = 4 * tiny.SPE


def tiny_tx(name, target=0.75, **over):
  """``pj.pruning`` of ``name`` with the tiny task's numbers, as
  :func:`tiny.tiny_inits` gives them to the loop."""
  ctx, _ = tiny.tiny_inits(pj.methods.get_method(
      name, **tiny.SETTINGS.get(name, {})), (), ())
  kw = dict(target_sparsity=target, total_steps=TOTAL,
            steps_per_epoch=tiny.SPE, learning_rate=0.05, weight_decay=1e-4,
            momentum=0.9, grad_fn=ctx.grad_fn, **tiny.SETTINGS.get(name, {}))
  kw.update(over)
  return pj.pruning(name, **kw)


def user_step(tx):
  """A hand-written jitted train step around ``tx``."""
  @jax.jit
  def step(params, opt_state, idx):
    def loss_fn(p):
      logits = tiny.MODEL.apply(
          {"params": pj.model_params(tx, p, opt_state)}, X[idx])
      return jnp.mean(engine.cross_entropy(logits, Y[idx]))
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
    return optax.apply_updates(params, updates), opt_state
  return step


def loop_step(method, ctx, jit=True):
  step = engine.make_step(tiny.MODEL, method, ctx, mean=MEAN, std=STD,
                          augment=False, mesh=engine.make_mesh())
  return jax.jit(step) if jit else step


def assert_same_step(tx, state, ctx, idx):
  """One step of the loop from ``state`` and one of ``tx`` from the same
  point give the same params (up to rounding) and the same zeros."""
  # The loop's step function, evaluated op by op: its compiled program
  # (sharding constraints on the batch) may round differently (edge-popup's
  # straight-through scores by up to 1e-4 after one step).
  want, _ = loop_step(tx.method, ctx, jit=False)(
      state, tiny.DATA["train_x"], tiny.DATA["train_y"], idx)
  opt_state = pj.PruningState(count=state.step, inner=state.opt_state,
                              method_state=state.method_state, hp=state.hp,
                              key=state.key)
  got_params, got_state = user_step(tx)(state.params, opt_state, idx)
  for a, b in zip(jax.tree.leaves(got_params), jax.tree.leaves(want.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(a) == 0, np.asarray(b) == 0)
  for a, b in zip(jax.tree.leaves(pj.final_params(tx, got_params, got_state)),
                  jax.tree.leaves(tx.method.forward(
                      tx.method.eval_params(want), want.method_state))):
    np.testing.assert_array_equal(np.asarray(a) == 0, np.asarray(b) == 0)
  assert int(got_state.count) == int(want.step)


@pytest.mark.parametrize("name", ["magnitude", "proxnag", "snip", "admm",
                                  "sparse_momentum", "edge_popup"])
def test_first_step_is_the_loops_step(name):
  tx = tiny_tx(name)
  method = tx.method
  ctx, [(_, _, state, _)] = tiny.tiny_inits(method, (0,), (0.75,))
  params0 = tiny.MODEL.init(jax.random.PRNGKey(0),
                            jnp.zeros((1, 8, 8, 1)))["params"]
  start_params, start_state = pj.start(tx, params0)
  # The method's start: the loop's initial params and state, exactly.
  for a, b in zip(jax.tree.leaves((start_params, start_state.inner,
                                   start_state.method_state)),
                  jax.tree.leaves((state.params, state.opt_state,
                                   state.method_state))):
    np.testing.assert_array_equal(a, b)
  assert_same_step(tx, state, ctx._replace(grad_fn=None), jnp.arange(32))


@pytest.mark.parametrize("name,at", [("proxnag", 6), ("gmp", 3),
                                     ("rw_admm", 11)])
def test_a_mid_run_step_is_the_loops_step(name, at):
  """From the loop's state in the middle of a run (Prox-NAG's prune phase,
  just before a GMP pruning step, before an ADMM Z/U step)."""
  tx = tiny_tx(name)
  ctx, [(_, _, state, _)] = tiny.tiny_inits(tx.method, (0,), (0.75,))
  ctx = ctx._replace(grad_fn=None)
  step = loop_step(tx.method, ctx)
  for t in range(at):
    state, _ = step(state, tiny.DATA["train_x"], tiny.DATA["train_y"],
                    jnp.arange(32) + 32 * (t % tiny.SPE))
  assert int(state.step) == at
  assert_same_step(tx, state, ctx, jnp.arange(32, 64))


@pytest.mark.parametrize("name", ["proxnag", "magnitude", "snip",
                                  "edge_popup"])
def test_a_user_loop_reaches_the_target_exactly(name):
  tx = tiny_tx(name)
  params = tiny.MODEL.init(jax.random.PRNGKey(0),
                           jnp.zeros((1, 8, 8, 1)))["params"]
  params, opt_state = pj.start(tx, params)
  step = user_step(tx)
  for t in range(TOTAL):
    params, opt_state = step(params, opt_state,
                             jnp.arange(32) + 32 * (t % tiny.SPE))
  final = pj.final_params(tx, params, opt_state)
  prunable = pj.prunable_tree(final)
  n = masks_lib.num_prunable(final, prunable)
  assert int(masks_lib.count_zeros(final, prunable)) == round(0.75 * n)


def test_composes_with_optax():
  """Gradient transforms chained before it, MultiSteps around it, a user
  optimizer (with injected hyperparameters) inside a masked method."""
  params = tiny.MODEL.init(jax.random.PRNGKey(0),
                           jnp.zeros((1, 8, 8, 1)))["params"]
  adamw = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-2)
  inner = tiny_tx("gmp", optimizer=adamw)
  tx = optax.MultiSteps(optax.chain(optax.clip_by_global_norm(1.0), inner),
                        every_k_schedule=2)
  opt_state = tx.init(params)
  # init under jit (the method's host checks are skipped on tracers).
  assert jax.tree.structure(jax.jit(tx.init)(params)) == jax.tree.structure(
      opt_state)

  @jax.jit
  def step(params, opt_state, idx):
    def loss_fn(p):
      return jnp.mean(engine.cross_entropy(
          tiny.MODEL.apply({"params": p}, X[idx]), Y[idx]))
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
    return optax.apply_updates(params, updates), opt_state

  for t in range(2 * TOTAL):
    params, opt_state = step(params, opt_state,
                             jnp.arange(32) + 32 * (t % tiny.SPE))
  st = pj.run_state(params, opt_state)
  assert int(st.step) == TOTAL           # MultiSteps: one inner step per 2
  final = pj.final_params(inner, params, opt_state)
  prunable = pj.prunable_tree(final)
  n = masks_lib.num_prunable(final, prunable)
  assert int(masks_lib.count_zeros(final, prunable)) == round(0.75 * n)
  # The user's optimizer is the one that trained: its state is in there.
  assert pj.transforms.find_states(opt_state, optax.ScaleByAdamState)


def test_refuses_what_cannot_work():
  params = tiny.MODEL.init(jax.random.PRNGKey(0),
                           jnp.zeros((1, 8, 8, 1)))["params"]
  with pytest.raises(ValueError, match="optimizer of its own"):
    tiny_tx("proxnag", optimizer=optax.adam(1e-3)).init(params)
  with pytest.raises(ValueError, match="grad_fn"):
    tiny_tx("snip", grad_fn=None).init(params)
  with pytest.raises(ValueError, match="structure"):
    pj.pruning("l1_filter", target_sparsity=0.5, total_steps=10)
  with pytest.raises(ValueError, match="no setting"):
    pj.pruning("magnitude", target_sparsity=0.5, total_steps=10, l1=1.0)
  with pytest.raises(ValueError, match="target_sparsity"):
    pj.pruning("magnitude", target_sparsity=1.5, total_steps=10)
  with pytest.raises(ValueError, match="which method"):
    pj.pruning(optax.sgd(0.1), target_sparsity=0.5, total_steps=10)
  # The optimizer first and the method by keyword is the same call.
  a = pj.pruning(optax.sgd(0.1), method="gmp", target_sparsity=0.5,
                 total_steps=10)
  b = pj.pruning("gmp", optax.sgd(0.1), target_sparsity=0.5, total_steps=10)
  assert jax.tree.structure(a.init(params)) == jax.tree.structure(
      b.init(params))
  assert a.method.name == b.method.name == "gmp"


EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "examples")


# (Linen with an unstructured method is test_a_user_loop_reaches_the_target.)
@pytest.mark.parametrize("script,method,target", [
    ("linen_jit_loop.py", "l1_filter", 0.5),
    ("nnx_optimizer.py", "proxnag", 0.9)])
def test_examples_run_and_reach_the_target(mnist_dir, script, method,
                                           target):
  out = subprocess.run(
      [sys.executable, os.path.join(EXAMPLES, script), "--data_dir",
       mnist_dir, "--method", method, "--target", str(target),
       "--train_subset", "512", "--test_subset", "256", "--dense_steps",
       "10", "--steps", "16", "--batch_size", "32"],
      capture_output=True, text=True, check=False, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  res = eval(out.stdout.strip().splitlines()[-1])  # pylint: disable=eval-used
  if method == "l1_filter":
    # Channels removed for real: the exported network is smaller and
    # computes what the masked one does.
    assert res["exported_params"] < 0.6 * res["dense_params"]
    assert abs(res["exported_accuracy"] - res["accuracy"]) < 1e-6
  else:
    assert abs(res["sparsity"] - target) < 1e-4
