"""The tiny task every method runs on in the tests: a small conv net on
8x8x1 synthetic inputs (labels from a fixed random linear map), the
settings that make each method do its thing within 4 tiny epochs, and
:func:`run_tiny`, which runs a method through the loop on it (in memory, or
with checkpoints and traces in a workdir)."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import proxnag_jax as pj
from proxnag_jax import engine
from proxnag_jax import loop
from proxnag_jax import methods
from proxnag_jax.methods import base

QUIET = lambda *_: None


class Tiny(nn.Module):
  """A small conv net on 8x8x1 inputs: two prunable kernels, one bias."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3), use_bias=False, name="conv")(x)
    x = nn.relu(x).reshape((x.shape[0], -1))
    return nn.Dense(4, name="fc")(x)


N, BATCH, SPE = 256, 32, 8
SCORE_METHODS = ("edge_popup", "sbp")    # params are scores over frozen W0
# Structured methods need a model surgery knows: tests/test_structured.py.
WEIGHT_METHODS = tuple(n for n in methods.METHOD_NAMES
                       if n not in methods.STRUCTURED_METHODS)
# Settings that make every method do its thing within 4 tiny epochs.
SETTINGS = {
    "proxnag": dict(prune_lr=0.05, monitor_every=2),
    "gmp": dict(every=2),
    "admm": dict(every_epochs=0.5, rho=1e-2),
    "rw_admm": dict(every_epochs=0.5, rho=1e-2),
    "dsr": dict(periods=(4, 8), period_starts=(0.0, 0.5)),
    "dense": {},
}
# Prox-NAG's paper schedule (open-loop lambda rounds) on the tiny task.
PAPER_PROXNAG = dict(schedule="paper", scale_invariant=False, l1_init=0.05,
                     l1_step=0.05, prune_lr=0.05, max_rounds=6,
                     prune_max_epochs=1.0, monitor_every=2, patience=3,
                     finetune_epochs=0.25, finetune_growth=0.0,
                     final_finetune_epochs=0.5, fill_budget=True)


def make_data(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 255, size=(N, 8, 8, 1), dtype=np.uint8)
  # Labels from a fixed random linear map, so there is something to learn.
  w = rng.normal(size=(64, 4))
  y = np.argmax(x.reshape(N, -1).astype(np.float32) @ w, -1).astype(np.int32)
  return {"train_x": jnp.asarray(x), "train_y": jnp.asarray(y),
          "test_x": jnp.asarray(x[:64]), "test_y": jnp.asarray(y[:64])}


DATA = make_data()
MODEL = Tiny()


def tiny_inits(method, seeds, targets):
  """The tiny task's context and the initial states of one run per (seed,
  target), as the loop builds them: ``(ctx, [(seed, target, state,
  events)])``."""
  params = MODEL.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))[
      "params"]
  prunable = pj.prunable_tree(params)
  total = 4 * SPE
  x = DATA["train_x"][:BATCH].astype(jnp.float32) / 255.0
  y = DATA["train_y"][:BATCH]
  ctx = base.Context(prunable=prunable, steps_per_epoch=SPE,
                     total_steps=total,
                     schedule=lambda lr: optax.cosine_decay_schedule(lr,
                                                                     total),
                     grad_fn=jax.grad(lambda q: jnp.mean(engine.cross_entropy(
                         MODEL.apply({"params": q}, x), y))))
  n = base.num_prunable(params, prunable)
  out = []
  for seed in seeds:
    for target in targets:
      p = MODEL.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8, 8, 1)))[
          "params"]
      hp = loop.make_hp({"target": target, "n_zero": round(target * n),
                         "lr": 0.05, "weight_decay": 1e-4, "momentum": 0.9,
                         **method.hparams})
      state, ev = loop.init_run(method, ctx, p, {}, hp, seed)
      out.append((seed, target, state, ev))
  return ctx, out


def run_tiny(name, workdir=None, *, targets=(0.75,), seeds=(0,),
             stop_after=None, vmapped=False, chunk_steps=8, settings=None):
  """Runs ``name`` on the tiny task: in memory without ``workdir``, else
  with checkpoints (resuming from them) and traces there."""
  method = methods.get_method(name, **(settings if settings is not None
                                       else SETTINGS.get(name, {})))
  mesh = engine.make_mesh()
  ctx, inits = tiny_inits(method, seeds, targets)
  ctx = ctx._replace(grad_fn=None)    # as the loop: only init sees grad_fn
  runs = [loop.RunInit(state, seed, workdir and os.path.join(
      workdir, f"trace_{seed}_{target}.jsonl"), ev)
          for seed, target, state, ev in inits]
  if workdir:
    os.makedirs(workdir, exist_ok=True)
  resuming = bool(workdir) and os.path.isdir(os.path.join(workdir, "ckpt"))
  program = loop.Program(MODEL, method, ctx, mean=(0.5,), std=(0.25,),
                         augment=False, batch_size=BATCH, mesh=mesh)
  return method, ctx, loop.run_loop(
      program, DATA, runs, vmapped=vmapped,
      ckpt_dir=workdir and os.path.join(workdir, "ckpt"), resuming=resuming,
      schedule=loop.Schedule(chunk_steps=chunk_steps, eval_batch_size=64,
                             log_every_s=1e9, desc=name,
                             stop_after_steps=stop_after), log=QUIET)


def final_params(method, state):
  _, variables = method.export_network(state, MODEL)
  return variables["params"]


def zeros(params):
  which = pj.prunable_tree(params)
  return sum(int(np.sum(np.asarray(p) == 0)) for p, w in zip(
      jax.tree.leaves(params), jax.tree.leaves(which)) if w)


def n_prunable(params):
  return base.num_prunable(params, pj.prunable_tree(params))
