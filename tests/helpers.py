"""Small helpers shared by the test modules (tests/ is on sys.path)."""

from configs import lenet5_mnist
from proxnag_jax import experiment


def configure(c, **over):
  """Sets fields of config ``c`` given by name: a dotted path written with
  ``__`` (``data__val_size=128``) or a field's name alone, at the path
  the command line reads it from (``val_size`` is ``data.val_size``,
  ``target_sparsity`` ``prune.target_sparsity``: experiment.legacy_flag)."""
  kind = "prune" if experiment.is_pruning_config(c) else "train"
  for k, v in over.items():
    path = k.replace("__", ".")
    new = experiment.legacy_flag(f"--config.{path}=", kind)
    if new:
      path = new[len("--config."):-1]
    *head, last = path.split(".")
    node = c
    for part in head:
      node = node[part]
    node[last] = v
  return c


def lenet5_smoke(data_dir, **over):
  """The dense LeNet-5 smoke config on ``data_dir``, fields overridden
  (:func:`configure`)."""
  c = lenet5_mnist.get_config("smoke")
  c.data.dir = data_dir
  return configure(c, **over)


def stepping_env(env, xla_flags=""):
  """``env`` for a subprocess that runs many steps of a convolutional net:
  XLA's backend optimisation level 1 instead of the tests' level 0
  (conftest.py). Level 0 compiles fastest, but its unoptimised elementwise
  loops run a ResNet step ~35x slower than the default; level 1 compiles
  about as fast as 0 and runs as fast as the default."""
  flags = " ".join(f for f in (env.get("XLA_FLAGS", ""), xla_flags,
                               "--xla_backend_optimization_level=1") if f)
  return {**env, "JAX_DISABLE_MOST_OPTIMIZATIONS": "0", "XLA_FLAGS": flags}


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
  stacked = loop.stack(states)
  n = len(hps)
  metrics = {"loss": jnp.ones(n), "accuracy": jnp.ones(n)}
  upd = jax.jit(jax.vmap(lambda k, s, m: method.update(k, s, m, ctx)))
  keys = jnp.stack([jax.random.PRNGKey(i) for i in range(n)])
  events = {}
  for _ in range(steps):
    stacked = stacked.replace(step=stacked.step + 4)
    stacked, events = upd(keys, stacked, metrics)
  return events


class DenseStep:
  """One dense training run of config ``c`` on ``mesh`` set up as the loop
  does, for tests that compare single steps: ``state()`` is a fresh
  initial state on the mesh, ``chunk(state, idx, n=None)`` runs steps,
  ``idx`` is epoch 0's batch order, ``params`` the initial params."""

  def __init__(self, c, mesh):
    import jax  # pylint: disable=g-import-not-at-top
    from proxnag_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    from proxnag_jax import engine  # pylint: disable=g-import-not-at-top
    from proxnag_jax import experiment  # pylint: disable=g-import-not-at-top
    from proxnag_jax import loop  # pylint: disable=g-import-not-at-top
    from proxnag_jax import masks  # pylint: disable=g-import-not-at-top
    from proxnag_jax.methods import base  # pylint: disable=g-import-not-at-top
    self._engine, self._loop, self._mesh = engine, loop, mesh
    ds, model, self.arrays = experiment.setup(c, mesh, log=lambda *_: None)
    self.params, self._bs = experiment.init_variables(model, c.seed,
                                                      ds.input_shape)
    self._method = experiment.dense_method(c.train)
    self._ctx = base.Context(masks.prunable_tree(self.params), 8, 8,
                             experiment.schedule_fn(c.train, 8))
    self._hp = loop.make_hp(dict(target=0.0, n_zero=0,
                                 lr=c.train.learning_rate,
                                 weight_decay=c.train.weight_decay,
                                 momentum=0.9))
    step = engine.make_step(model, self._method, self._ctx,
                            mean=ds.mean_std[0], std=ds.mean_std[1],
                            augment=True, mesh=mesh)
    self._chunk = engine.make_chunk(step, self._method, self._ctx, mesh=mesh)
    self.idx = data_lib.epoch_permutation(jax.random.PRNGKey(0),
                                          len(ds.train_labels),
                                          c.data.batch_size)

  def state(self):
    s = self._loop.init_run(self._method, self._ctx, self.params, self._bs,
                            self._hp, 0)[0]
    return self._engine.put_replicated(s, self._mesh)

  def chunk(self, state, idx, n=None):
    """(A chunk donates its input state.)"""
    return self._chunk(state, self.arrays["train_x"], self.arrays["train_y"],
                       idx, n)


# The fields every summary.json has (proxnag_jax.summary.common).
COMMON_SUMMARY_FIELDS = (
    "kind", "method", "model", "dataset", "seed", "target_sparsity",
    "sparsity", "reached_target", "test_accuracy", "test_loss",
    "val_accuracy", "val_loss", "num_params", "steps", "epochs",
    "wall_time_s", "images_per_s", "backend", "config")
