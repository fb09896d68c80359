"""ResNet-20's training speed on an accelerator, in one short call.

  python -m train.gpu_check --out "$OUT"            # a lent GPU (~2-4 min)
  JAX_PLATFORMS=cpu python -m train.gpu_check --tiny --out /tmp/g   # a check

On synthetic CIFAR-sized data put on the device once (no dataset, no
ml_collections or tensorflow-datasets: what a lent GPU machine has), with
the loop's own pieces (``engine.make_step`` / ``make_chunk``, Nesterov SGD
with weight decay, BatchNorm, on-device augmentation), it times

* the bare jitted step and the loop's scanned chunk at batch 128 and 512,
  with the epoch time they imply (45,000 training images, as the configs);
* K = 1, 4, 8 runs vmapped into one program at batch 128 (images/s of all
  runs together),

and prints them and writes ``gpu_check.json`` (with the device) to ``--out``.
The second prepared command, a short real-data run, is in ``../shared``'s
GPU notes and README ("A lent GPU").
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from proxnag_jax import engine
from proxnag_jax import hostio
from proxnag_jax import loop
from proxnag_jax import masks as masks_lib
from proxnag_jax import methods
from proxnag_jax import models

EPOCH_IMAGES = 45_000
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _setup(model, n_images: int, batch: int, seed: int = 0):
  """Synthetic uint8 images and labels on the device, the dense method,
  its context and a fresh run state."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.integers(0, 256, (n_images, 32, 32, 3), np.uint8))
  y = jnp.asarray(rng.integers(0, 10, (n_images,), np.int32))
  v = models.init_model(model, jax.random.PRNGKey(seed), (1, 32, 32, 3))
  params, bs = v["params"], v.get("batch_stats", {})
  method = methods.get_method("dense")
  steps = max(1, n_images // batch)
  ctx = methods.Context(masks_lib.prunable_tree(params), steps, 1000 * steps,
                        lambda lr: optax.cosine_decay_schedule(
                            lr, 1000 * steps))
  hp = loop.make_hp({"target": 0.0, "n_zero": 0, "lr": 0.1,
                     "weight_decay": 5e-4, "momentum": 0.9,
                     **method.hparams})
  state, _ = loop.init_run(method, ctx, params, bs, hp, seed)
  return x, y, method, ctx, state


def _idx(n_images, batch, steps, runs=None, seed=0):
  rng = np.random.default_rng(seed + 1)
  shape = (steps, batch) if runs is None else (steps, runs, batch)
  return rng.integers(0, n_images, shape).astype(np.int32)


def time_batch(model, mesh, batch: int, steps: int, chunk: int,
               repeats: int, n_images: int) -> dict:
  """Bare step and scanned chunk at one batch size: ms/step, images/s,
  compile seconds, and the implied epoch time."""
  x, y, method, ctx, state0 = _setup(model, n_images, batch)
  step = engine.make_step(model, method, ctx, mean=MEAN, std=STD,
                          augment=True, mesh=mesh)
  idx = _idx(n_images, batch, max(steps, chunk))
  bare = jax.jit(step, donate_argnums=(0,))
  holder = {"s": engine.put_replicated(jax.tree.map(jnp.copy, state0), mesh)}
  t0 = time.perf_counter()
  holder["s"], out = bare(holder["s"], x, y, idx[0])
  jax.block_until_ready(out)
  compile_bare = time.perf_counter() - t0

  def run_bare():
    s = holder["s"]
    for i in range(steps):
      s, _ = bare(s, x, y, idx[i])
    jax.block_until_ready(s)
    holder["s"] = s

  run_bare()                                           # warm
  bare_s = hostio.best_time(run_bare, repeats) / steps
  fn = engine.make_chunk(step, method, ctx, mesh=mesh)
  holder["c"] = engine.put_replicated(jax.tree.map(jnp.copy, state0), mesh)
  t0 = time.perf_counter()
  holder["c"], outs, _ = fn(holder["c"], x, y, idx[:chunk])
  jax.device_get(outs["out"][0]["loss"])
  compile_chunk = time.perf_counter() - t0
  n_chunks = max(1, steps // chunk)

  def run_chunks():
    s = holder["c"]
    for _ in range(n_chunks):
      s, o, _ = fn(s, x, y, idx[:chunk])
      jax.device_get(o["out"][0]["loss"])        # the loop's one host sync
    holder["c"] = s

  chunk_s = hostio.best_time(run_chunks, repeats) / (n_chunks * chunk)
  epoch_steps = EPOCH_IMAGES // batch
  return {"batch_size": batch, "bare_step_ms": 1000 * bare_s,
          "bare_compile_s": compile_bare,
          "chunk_step_ms": 1000 * chunk_s, "chunk_compile_s": compile_chunk,
          "images_per_s": batch / chunk_s,
          "epoch_s": epoch_steps * chunk_s}


def time_vmapped(model, mesh, runs: int, batch: int, steps: int,
                 repeats: int, n_images: int) -> dict:
  """K runs as one vmapped scanned chunk: images/s of all runs together."""
  x, y, method, ctx, state0 = _setup(model, n_images, batch)
  step = engine.make_step(model, method, ctx, mean=MEAN, std=STD,
                          augment=True, mesh=mesh)
  fn = engine.make_chunk(step, method, ctx, mesh=mesh, vmapped=runs > 1)
  st = loop.stack([state0] * runs) if runs > 1 else state0
  holder = {"s": engine.put_replicated(jax.tree.map(jnp.copy, st), mesh)}
  idx = _idx(n_images, batch, steps, runs if runs > 1 else None)
  t0 = time.perf_counter()
  holder["s"], o, _ = fn(holder["s"], x, y, idx)
  jax.device_get(o["out"][0]["loss"])
  compile_s = time.perf_counter() - t0

  def run():
    s, o, _ = fn(holder["s"], x, y, idx)
    jax.device_get(o["out"][0]["loss"])
    holder["s"] = s

  dt = hostio.best_time(run, repeats)
  return {"vmap_runs": runs, "batch_size": batch, "compile_s": compile_s,
          "step_ms": 1000 * dt / steps,
          "images_per_s": runs * batch * steps / dt}


def check(tiny: bool = False, out: str = "", model_name: str = "resnet20",
          log=print) -> dict:
  """Runs every timing; ``tiny``: small sizes for a CPU check."""
  mesh = engine.make_mesh()
  model = models.get_model(model_name, 10)
  if tiny:
    batches, steps, chunk, repeats, n_images, ks = (8,), 2, 2, 1, 64, (1, 2)
  else:
    batches, steps, chunk, repeats, n_images, ks = ((128, 512), 50, 25, 3,
                                                    8192, (1, 4, 8))
  res = {**hostio.device_info(), "jax_version": jax.__version__,
         "model": model_name, "data": "synthetic, on the device",
         "tiny": tiny, "batches": [], "vmapped": []}
  log(f"device: {res['device_kind']} x{res['device_count']} "
      f"({res['backend']}), jax {jax.__version__}")
  for b in batches:
    r = time_batch(model, mesh, b, steps, chunk, repeats, n_images)
    res["batches"].append(r)
    log(f"batch {b}: bare {r['bare_step_ms']:.2f} ms/step, chunk "
        f"{r['chunk_step_ms']:.2f} ms/step ({r['images_per_s']:,.0f} img/s), "
        f"epoch of {EPOCH_IMAGES:,} images {r['epoch_s']:.1f} s; compile "
        f"{r['bare_compile_s']:.1f} / {r['chunk_compile_s']:.1f} s")
  for k in ks:
    r = time_vmapped(model, mesh, k, batches[0], steps, repeats, n_images)
    res["vmapped"].append(r)
    log(f"K={k} vmapped runs at batch {batches[0]}: {r['step_ms']:.2f} "
        f"ms/step, {r['images_per_s']:,.0f} img/s in all")
  if out:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
      json.dump(res, f, indent=2)
    log(f"wrote {os.path.join(out, 'gpu_check.json')}")
  return res


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", default=os.environ.get("OUT", ""),
                  help="where gpu_check.json goes (default: $OUT)")
  ap.add_argument("--tiny", action="store_true",
                  help="small sizes: a check of the script on a CPU")
  ap.add_argument("--model", default="resnet20",
                  help="a CIFAR-10 model of proxnag_jax.models")
  args = ap.parse_args()
  check(args.tiny, args.out, args.model)


if __name__ == "__main__":
  main()
