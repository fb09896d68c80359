"""The config layout, and each default written once.

A dense-training config (``train.train``) has one sub-config per component:

  seed                 the run's seed (initialisation, batch order)
  model.name           a name in proxnag_jax.models
  data.*               the dataset, where it is, the split, batches,
                       augmentation
  run.*                how the run is carried out, not what it computes:
                       logging, chunking, checkpoints, TensorBoard,
                       evaluation batches
  train.*              the dense model's optimiser and schedule

A pruning config (``train.prune``) starts from its dense model's config
(:func:`pruning_config`): the same seed, model, data and run settings (the dense
run is built from them, so they are written once and shared), that config's
``train`` as ``dense`` (how the dense model is trained when no
``prune.dense_checkpoint`` is given), ``prune.*`` (method, target, budget) and
one sub-config per method (``proxnag.*``, ``snip.*``, ... with the factory's
defaults, so ``--config.prune.method=snip --config.snip.batches=4`` works on
the command line; a run keeps its own method's only).
"""

import ml_collections


def data_config() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.name = "mnist"          # a name in proxnag_jax.data.DATASETS
  # A TFDS data dir or a directory of npz shards (see proxnag_jax/data.py);
  # empty: $TFDS_DATA_DIR or ~/tensorflow_datasets.
  d.dir = ""
  # No data in dir: fetch the dataset by name with TFDS (needs network).
  d.download = True
  d.train_subset = 0        # > 0: use only the first N training examples
  d.test_subset = 0
  # Training examples held out as a validation split (fixed by val_seed, the
  # same for every run seed): every tuning decision is made on it, the test
  # set is only reported. 0: train on all of them (no validation split).
  d.val_size = 5000
  d.val_seed = 0
  d.batch_size = 128
  d.augment = True          # CIFAR: pad-4 crop + flip (ignored for MNIST)
  return d


def run_settings() -> ml_collections.ConfigDict:
  """What does not change a run's result (a resumed run may change it)."""
  r = ml_collections.ConfigDict()
  r.eval_batch_size = 1000
  r.log_every_s = 5.0
  r.chunk_steps = 100       # steps per scanned chunk: one host sync each
  r.checkpoint_every_steps = 0   # > 0: also checkpoint every N steps
  # A structured run's measured_speedup: the median of this many timed pairs
  # of dense / shrunk inference batches (report.measure_speedup).
  r.speed_repeats = 20
  # The PNG plots of a pruning run (sparsity and loss, weight histograms,
  # layer sparsity, filter norms); report.md, summary.json and the JSONL
  # traces are written either way.
  r.plots = True
  # TensorBoard event files in WORKDIR/tensorboard (needs tensorboardX:
  # pip install 'proxnag_jax[tensorboard]'), beside the JSONL trace.
  r.tensorboard = False
  return r


def train_config() -> ml_collections.ConfigDict:
  """The dense model's optimiser and schedule."""
  t = ml_collections.ConfigDict()
  t.num_epochs = 10
  t.optimizer = "sgd"       # 'sgd' (Nesterov) or 'proxnag'
  t.learning_rate = 0.1
  t.momentum = 0.9
  t.nesterov = True
  t.weight_decay = 5e-4
  t.l1 = 0.0                # proxnag only
  t.fista = False           # proxnag only
  t.schedule = "cosine"     # 'cosine', 'step' or 'constant'
  t.lr_steps = ()           # 'step' schedule: epochs at which lr *= lr_decay
  t.lr_decay = 0.1
  t.warmup_epochs = 0.0
  return t


def base_config() -> ml_collections.ConfigDict:
  """A dense-training config with every default."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict({"name": "lenet5"})
  c.data = data_config()
  c.run = run_settings()
  c.train = train_config()
  return c


def prune_settings() -> ml_collections.ConfigDict:
  p = ml_collections.ConfigDict()
  p.method = "proxnag"
  p.target_sparsity = 0.9
  # A finished train.train workdir; empty: train the dense model (config.dense)
  # in WORKDIR/dense first.
  p.dense_checkpoint = ""
  # Leaves NOT to prune, as regexes on names like 'conv1/kernel' (default:
  # every conv and dense kernel is pruned; biases and norm scales never).
  p.exclude = ()
  # One budget for every method: methods that start from the dense model
  # train budget_epochs; methods from scratch dense.num_epochs + budget_epochs.
  p.budget_epochs = 10.0
  # Masked training from the dense model (magnitude, GMP, L2): cosine from
  # finetune_lr; from scratch: the dense config's schedule. Both Nesterov SGD
  # with `momentum` and the dense config's weight decay.
  p.finetune_lr = 0.01
  p.momentum = 0.9
  return p


def pruning_config(dense: ml_collections.ConfigDict
                   ) -> ml_collections.ConfigDict:
  """A pruning config from its dense model's config: that config's seed,
  model, data and run settings, its ``train`` as ``dense``, ``prune.*``
  and every method's settings at the factory's defaults."""
  from proxnag_jax import methods  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict()
  c.seed = dense.seed
  c.model = dense.model
  c.data = dense.data
  c.run = dense.run
  # A pruning run also checkpoints every 200 steps (a dense run: each epoch):
  # its phases are shorter than an epoch on the CPU configs.
  c.run.checkpoint_every_steps = 200
  c.dense = dense.train
  c.prune = prune_settings()
  for name in methods.PRUNING_METHODS:
    c[name] = methods.method_config(name)
  return c


def sweep_data() -> ml_collections.ConfigDict:
  """A sweep's ``data``: where every cell reads its data (``dir``; the
  rest of the data settings are its base config's)."""
  return ml_collections.ConfigDict({"dir": ""})


SMOKE_VAL_SIZE = 64   # the smoke variants' validation split (of 256-512)


def smoke_run(r: ml_collections.ConfigDict, chunk_steps: int = 0) -> None:
  """Run settings of a seconds-long smoke run: no progress lines, and with
  ``chunk_steps`` a chunk of that many steps (so a smoke epoch is several
  chunks). Checkpoints at every evaluation (epoch end) only: a save of a
  small model costs about as much as a few of its steps. A structured smoke
  run times its speedup on 3 pairs of batches, not 20. No PNG plots: a
  pruning run's four cost ~1 s of CPU, about what a LeNet-5 smoke run's
  training does (``--config.run.plots=true`` draws them)."""
  r.log_every_s = 30.0
  r.speed_repeats = 3
  r.plots = False
  if chunk_steps:
    r.chunk_steps = chunk_steps


def check_variant(arg: str, valid=("smoke",)) -> None:
  """Refuses an unknown ``:variant`` of a config (``''`` is the full one)."""
  if arg and arg not in valid:
    raise ValueError(f"unknown config variant {arg!r}; valid: "
                     f"{', '.join(repr(v) for v in ('',) + tuple(valid))}.")
