"""Defaults shared by the training configs."""

import ml_collections


def run_config() -> ml_collections.ConfigDict:
  """The fields every run reads, training or pruning: data, model, seed,
  batches, logging. A pruning config starts from this (its dense model's
  training settings live under ``config.dense``)."""
  c = ml_collections.ConfigDict()
  c.model = "lenet5"
  c.dataset = "mnist"
  # A TFDS data dir or a directory of npz shards (see proxnag_jax/data.py);
  # empty: $TFDS_DATA_DIR or ~/tensorflow_datasets.
  c.data_dir = ""
  # No data in data_dir: fetch the dataset by name with TFDS (needs network).
  c.download = True
  c.train_subset = 0        # > 0: use only the first N training examples
  c.test_subset = 0
  # Training examples held out as a validation split (fixed by val_seed, the
  # same for every run seed): every tuning decision is made on it, the test
  # set is only reported. 0: train on all of them (no validation split).
  c.val_size = 5000
  c.val_seed = 0
  c.seed = 0
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.augment = True          # CIFAR: pad-4 crop + flip (ignored for MNIST)
  c.log_every_s = 5.0
  c.chunk_steps = 100       # steps per scanned chunk: one host sync each
  c.checkpoint_every_steps = 0   # > 0: also checkpoint every N steps
  # TensorBoard event files in WORKDIR/tensorboard (needs tensorboardX:
  # pip install 'proxnag_jax[tensorboard]'), beside the JSONL trace.
  c.tensorboard = False
  return c


def base_config() -> ml_collections.ConfigDict:
  """A dense-training config: :func:`run_config` and the optimiser and
  schedule (``experiment.DENSE_TRAINING_FIELDS``)."""
  c = run_config()
  c.num_epochs = 10
  c.optimizer = "sgd"       # 'sgd' (Nesterov) or 'proxnag'
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.nesterov = True
  c.weight_decay = 5e-4
  c.l1 = 0.0                # proxnag only
  c.fista = False           # proxnag only
  c.schedule = "cosine"     # 'cosine', 'step' or 'constant'
  c.lr_steps = ()           # 'step' schedule: epochs at which lr *= lr_decay
  c.lr_decay = 0.1
  c.warmup_epochs = 0.0
  return c


SMOKE_VAL_SIZE = 64   # the smoke variants' validation split (of 256-512)


def check_variant(arg: str, valid=("smoke",)) -> None:
  """Refuses an unknown ``:variant`` of a config (``''`` is the full one)."""
  if arg and arg not in valid:
    raise ValueError(f"unknown config variant {arg!r}; valid: "
                     f"{', '.join(repr(v) for v in ('',) + tuple(valid))}.")
