"""Times the train step of a config: compile time and images/s.

  python -m train.bench --config configs/resnet20_cifar10.py --workdir runs/bench \
      --config.data_dir=../shared/data [--steps 50]

Uses the config's model, optimizer, batch size and real data (the first
shard is enough), runs one step to compile (timed separately), then times
``--steps`` steps after ``--warmup`` more, and writes ``bench.json``.
"""

import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from proxnag_jax import data as data_lib
from proxnag_jax import engine
from proxnag_jax import masks as masks_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
_STEPS = flags.DEFINE_integer("steps", 50, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed steps after compile.")
flags.mark_flags_as_required(["config", "workdir"])


def bench(config, steps: int, warmup: int) -> dict:
  mesh = engine.make_mesh()
  if not config.train_subset:
    config.train_subset = max(config.batch_size * 8, 10000)
  ds, model, arrays = engine.setup(config, mesh, log=print)
  params, bs = engine.init_variables(model, config, ds.input_shape)
  tx = engine.make_optimizer(config, engine.make_schedule(config, 100),
                             masks_lib.prunable_tree(params))
  state = engine.put_replicated(engine.create_state(params, bs, tx), mesh)
  step = engine.make_train_step(model, tx, mean=ds.mean_std[0],
                                std=ds.mean_std[1], augment=ds.augment,
                                mesh=mesh)
  key = jax.random.PRNGKey(0)
  order = data_lib.epoch_permutation(key, len(ds.train_labels),
                                     config.batch_size)
  sh = engine.batch_sharded(mesh)
  idx = [jax.device_put(order[i % len(order)], sh)
         for i in range(1 + warmup + steps)]

  def run(i, state):
    return step(state, arrays["train_x"], arrays["train_y"], idx[i],
                jax.random.fold_in(key, i))

  t0 = time.perf_counter()
  state, m = run(0, state)
  jax.block_until_ready(m["loss"])
  compile_s = time.perf_counter() - t0
  for i in range(1, 1 + warmup):
    state, m = run(i, state)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for i in range(1 + warmup, 1 + warmup + steps):
    state, m = run(i, state)
  jax.block_until_ready(state)
  dt = time.perf_counter() - t0
  return {
      "model": config.model, "dataset": config.dataset,
      "optimizer": config.optimizer, "batch_size": config.batch_size,
      "steps": steps, "compile_s": compile_s,
      "step_ms": 1000 * dt / steps,
      "images_per_s": steps * config.batch_size / dt,
      **engine.device_info(), "jax_version": jax.__version__,
  }


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  res = bench(_CONFIG.value, _STEPS.value, _WARMUP.value)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  path = os.path.join(_WORKDIR.value, "bench.json")
  engine.write_json(path, res)
  print(json.dumps(res, indent=2))
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
