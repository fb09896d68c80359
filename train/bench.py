"""Times the train step of a config: compile time, images/s, loop overhead.

  python -m train.bench --config configs/resnet20_cifar10.py --workdir runs/bench \
      --config.data.dir=../shared/data [--steps 50] [--vmap_runs 1,4,8] [--parts]

Uses the config's model, optimizer, batch size and real data (a subset is
enough). For each K in ``--vmap_runs`` it times

* ``bare``: a jitted single step called from Python once per step (K = 1);
* ``chunk``: the loop's scanned chunk of ``--chunk`` steps (one dispatch and
  one host sync per chunk), K runs vmapped when K > 1;

and reports images/s (all K runs together) and the chunk's overhead against
the bare step. ``--parts`` also times the pieces of one step (data gather +
augmentation, forward, forward + backward) to say where the time goes.
Writes ``bench.json``.
"""

import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from proxnag_jax import data as data_lib
from proxnag_jax import engine
from proxnag_jax import hostio
from proxnag_jax import experiment
from proxnag_jax import loop
from proxnag_jax import masks as masks_lib
from proxnag_jax.methods import base
from train import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
_STEPS = flags.DEFINE_integer("steps", 50, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed steps after compile.")
_CHUNK = flags.DEFINE_integer("chunk", 25, "Steps per scanned chunk.")
_REPEATS = cli.define_once(flags.DEFINE_integer, "repeats", 3,
                           "Timings per variant (best).")
_VMAP = flags.DEFINE_list("vmap_runs", ["1"], "Numbers of vmapped runs.")
_PARTS = flags.DEFINE_bool("parts", False, "Also time the step's pieces.")
flags.mark_flags_as_required(["config", "workdir"])


def bench(config, steps: int, warmup: int, chunk: int, vmap_runs, repeats=3,
          parts=False) -> dict:
  mesh = engine.make_mesh()
  d, t = config.data, config.train
  if not d.train_subset:
    d.train_subset = max(d.batch_size * 8, 10000)
  ds, model, arrays = experiment.setup(config, mesh, log=print)
  params, bs = experiment.init_variables(model, config.seed, ds.input_shape)
  method = experiment.dense_method(t)
  spe = len(ds.train_labels) // d.batch_size
  ctx = base.Context(masks_lib.prunable_tree(params), spe, 100 * spe,
                     experiment.schedule_fn(t, spe, 100))
  hp = experiment.dense_numbers(t, method).as_hp()
  mean, std = ds.mean_std
  step = engine.make_step(model, method, ctx, mean=mean, std=std,
                          augment=ds.augment, mesh=mesh)
  order = data_lib.epoch_permutation(jax.random.PRNGKey(0),
                                     len(ds.train_labels), d.batch_size)
  n_idx = warmup + steps
  # Batches for the bare steps, and at least one chunk's after the warm-up.
  n_all = warmup + max(steps, chunk)
  idx = np.stack([order[i % len(order)] for i in range(n_all)])
  x, y = arrays["train_x"], arrays["train_y"]
  res = {"model": config.model.name, "dataset": d.name,
         "optimizer": t.optimizer, "batch_size": d.batch_size,
         "steps": steps, "chunk": chunk, "repeats": repeats,
         **hostio.device_info(), "jax_version": jax.__version__, "runs": []}
  state0, _ = loop.init_run(method, ctx, params, bs, hp, config.seed)

  # -- bare jitted step, called once per step -------------------------------
  bare = jax.jit(step, donate_argnums=(0,))
  state = engine.put_replicated(jax.tree.map(jnp.copy, state0), mesh)
  t0 = time.perf_counter()
  state, out = bare(state, x, y, idx[0])
  jax.block_until_ready(out)
  compile_bare = time.perf_counter() - t0
  for i in range(1, warmup):
    state, out = bare(state, x, y, idx[i])
  jax.block_until_ready(state)
  holder = {"s": state}

  def run_bare():
    s = holder["s"]
    for i in range(warmup, n_idx):
      s, _ = bare(s, x, y, idx[i])
    jax.block_until_ready(s)
    holder["s"] = s

  dt = hostio.best_time(run_bare, repeats)
  bare_ips = steps * d.batch_size / dt
  res["bare"] = {"compile_s": compile_bare, "step_ms": 1000 * dt / steps,
                 "images_per_s": bare_ips}
  print(f"bare step: {1000 * dt / steps:.1f} ms, {bare_ips:,.0f} img/s")

  # -- the loop's scanned chunk, K runs vmapped -----------------------------
  for k in [int(v) for v in vmap_runs]:
    vm = k > 1
    fn = engine.make_chunk(step, method, ctx, mesh=mesh, vmapped=vm)
    st = loop.stack([state0] * k) if vm else state0
    st = engine.put_replicated(jax.tree.map(jnp.copy, st), mesh)
    cidx = idx if not vm else np.repeat(idx[:, None], k, axis=1)
    t0 = time.perf_counter()
    st, outs, _ = fn(st, x, y, cidx[:chunk])
    jax.block_until_ready(outs)
    compile_chunk = time.perf_counter() - t0
    holder["s"] = st
    n_chunks = max(1, steps // chunk)

    def run_chunks():
      s = holder["s"]
      for c in range(n_chunks):
        lo = warmup + (c * chunk) % (n_all - warmup - chunk + 1)
        s, o, _ = fn(s, x, y, cidx[lo:lo + chunk])
        jax.device_get(o["out"][0]["loss"])       # the loop's one host sync
      holder["s"] = s

    dt = hostio.best_time(run_chunks, repeats)
    ips = k * n_chunks * chunk * d.batch_size / dt
    row = {"vmap_runs": k, "compile_s": compile_chunk,
           "step_ms": 1000 * dt / (n_chunks * chunk), "images_per_s": ips}
    if k == 1:
      row["overhead_vs_bare"] = bare_ips / ips - 1.0
    res["runs"].append(row)
    print(f"chunk K={k}: {row['step_ms']:.1f} ms/step, {ips:,.0f} img/s"
          + (f", overhead vs bare {100 * row['overhead_vs_bare']:+.1f}%"
             if k == 1 else ""))

  if parts:
    res["parts_ms"] = time_parts(model, state0, x, y, idx, ds, mean, std,
                                 repeats)
  return res


def time_parts(model, state, x, y, idx, ds, mean, std, repeats):
  """Milliseconds of the pieces of one step (each jitted on its own)."""
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  key = jax.random.PRNGKey(0)

  @jax.jit
  def batch(i):
    b = x[i]
    if ds.augment:
      b = data_lib.augment(key, b)
    return data_lib.preprocess(b, mean, std)

  def loss(p, xb, yb):
    logits, _ = model.apply({**variables, "params": p}, xb, train=True,
                            mutable=["batch_stats"])
    return jnp.mean(engine.cross_entropy(logits, yb))

  fwd = jax.jit(loss)
  grad = jax.jit(jax.grad(loss))
  xb = batch(idx[0])
  out = {}
  for name, fn in (("gather_augment", lambda: batch(idx[1])),
                   ("forward", lambda: fwd(state.params, xb, y[idx[0]])),
                   ("forward_backward",
                    lambda: grad(state.params, xb, y[idx[0]]))):
    jax.block_until_ready(fn())
    dt = hostio.best_time(lambda fn=fn: [jax.block_until_ready(fn())
                               for _ in range(10)], repeats)
    out[name] = 100 * dt          # ms per call (10 calls)
    print(f"{name}: {out[name]:.1f} ms")
  return out


def check_settings(steps: int, warmup: int, chunk: int, repeats: int,
                   vmap_runs) -> None:
  """Raises ValueError, naming the flag, for settings that cannot be timed."""
  for name, v, low in (("steps", steps, 1), ("warmup", warmup, 0),
                       ("chunk", chunk, 1), ("repeats", repeats, 1)):
    if v < low:
      raise ValueError(f"--{name}={v}: must be at least {low}.")
  for k in vmap_runs:
    if not str(k).isdigit() or int(k) < 1:
      raise ValueError(f"--vmap_runs={','.join(map(str, vmap_runs))}: "
                       "give positive integers, e.g. --vmap_runs=1,4,8.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    _CONFIG.value.get("model")       # a config file that failed to load
  except Exception as e:  # pylint: disable=broad-except
    cli.report_error(e, sys.argv)
  try:
    check_settings(_STEPS.value, _WARMUP.value, _CHUNK.value, _REPEATS.value,
                   _VMAP.value)
  except ValueError as e:
    sys.stderr.write(f"\nerror: {e}\n")
    sys.exit(2)
  res = bench(_CONFIG.value, _STEPS.value, _WARMUP.value, _CHUNK.value,
              _VMAP.value, _REPEATS.value, _PARTS.value)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  path = os.path.join(_WORKDIR.value, "bench.json")
  hostio.write_json(path, res)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("train"))
