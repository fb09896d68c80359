"""Small helpers shared by the test modules (tests/ is on sys.path)."""

from configs import lenet5_mnist


def lenet5_smoke(data_dir, **over):
  """The dense LeNet-5 smoke config on ``data_dir``, fields overridden."""
  c = lenet5_mnist.get_config("smoke")
  c.data_dir = data_dir
  for k, v in over.items():
    setattr(c, k, v)
  return c


def trace_records(workdir):
  """A run's ``trace.jsonl`` without its timing fields (what a resumed run
  must reproduce exactly)."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "trace.jsonl")) as f:
    return [{k: v for k, v in json.loads(l).items()
             if k not in ("images_per_s", "wall_time_s")} for l in f]


def vmapped_update_events(method, ctx, params, batch_stats, hps, steps=4):
  """Runs ``method.update`` jitted and vmapped over one run per ``hps``
  entry (``steps`` times, 4 steps apart) and returns the last events."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from proxnag_jax import loop  # pylint: disable=g-import-not-at-top
  states = [loop.init_run(method, ctx, params, batch_stats,
                          loop.make_hp({**hp, **method.hparams}), 0)[0]
            for hp in hps]
  stacked = loop._stack(states)  # pylint: disable=protected-access
  n = len(hps)
  metrics = {"loss": jnp.ones(n), "accuracy": jnp.ones(n)}
  upd = jax.jit(jax.vmap(lambda k, s, m: method.update(k, s, m, ctx)))
  keys = jnp.stack([jax.random.PRNGKey(i) for i in range(n)])
  events = {}
  for _ in range(steps):
    stacked = stacked.replace(step=stacked.step + 4)
    stacked, events = upd(keys, stacked, metrics)
  return events
