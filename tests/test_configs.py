"""Every config loads, validates, and has a smoke variant; the ResNet-20
pruning smoke variant runs end to end on real CIFAR-10."""

import glob
import importlib
import json
import os

import numpy as np
import pytest


from proxnag_jax import commands
from proxnag_jax import experiment
from proxnag_jax import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(
    os.path.join(ROOT, "configs", "*.py")) if not os.path.basename(
        p).startswith(("_", "common")))


@pytest.mark.parametrize("name", NAMES)
def test_config_and_smoke_variant_validate(name):
  mod = importlib.import_module(f"configs.{name}")
  for arg in dict.fromkeys(("", "smoke") + tuple(getattr(mod, "VARIANTS",
                                                         ()))):
    c = mod.get_config(arg)
    if "methods" in c:
      sweep.validate(c)
      experiment.validate_pruning(c.base)
    elif "prune" in c:
      experiment.validate_pruning(c)
    else:
      experiment.validate_config(c)
  with pytest.raises(ValueError, match="unknown config variant"):
    mod.get_config("smok")
  full, smoke = mod.get_config(""), mod.get_config("smoke")
  if "methods" in full:
    full, smoke = full.base, smoke.base
  assert smoke.data.train_subset and not full.data.train_subset


def test_resnet20_prune_smoke(tmp_path, cifar_dir):
  from configs import proxnag_resnet20_cifar10  # pylint: disable=g-import-not-at-top
  c = proxnag_resnet20_cifar10.get_config("smoke")
  c.data.dir = cifar_dir
  c.dense.num_epochs = 1
  s = commands.prune(c, str(tmp_path / "r20"), log=lambda *_: None)
  # The dense ResNet-20 it trained first (commands.train, the dense config).
  with open(tmp_path / "r20" / "dense" / "summary.json") as f:
    dense = json.load(f)
  assert dense["num_params"] == 269_722 and np.isfinite(dense["train_loss"])
  assert s["num_params"] == 269_722
  assert abs(s["sparsity"] - 0.3) < 1e-3
  assert len(s["pruned_layers"]) == 20     # 19 convs + fc


def test_dense_run_numbers_come_from_the_config():
  """The dense commands and train.bench read momentum, learning rate and
  weight decay from the config (bench once hard-coded momentum 0.9)."""
  from configs import lenet5_mnist  # pylint: disable=g-import-not-at-top
  c = lenet5_mnist.get_config("smoke")
  t = c.train
  t.momentum, t.learning_rate, t.weight_decay = 0.5, 0.03, 2e-4
  hp = experiment.dense_numbers(t, experiment.dense_method(t)).as_hp()
  assert float(hp["momentum"]) == 0.5
  assert abs(float(hp["lr"]) - 0.03) < 1e-9
  assert abs(float(hp["weight_decay"]) - 2e-4) < 1e-9


def test_bench_times_a_chunk_longer_than_its_steps(mnist_dir):
  """train.bench with fewer timed steps than a chunk (once a division by
  zero): the chunk is timed on its own batches after the warm-up."""
  from configs import lenet5_mnist  # pylint: disable=g-import-not-at-top
  from train import bench  # pylint: disable=g-import-not-at-top
  c = lenet5_mnist.get_config("smoke")
  c.data.dir = mnist_dir
  res = bench.bench(c, 3, 1, 4, ["1"], 1, False)   # 3 + 1 steps = a chunk
  assert res["bare"]["step_ms"] > 0 and res["runs"][0]["step_ms"] > 0
