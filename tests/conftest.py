import os
import sys

import pytest

# Tests run on the CPU; keep JAX quiet and deterministic.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def shared_dir():
  """The real offline data (`shared/` beside the repo, or $PROXNAG_SHARED)."""
  path = os.environ.get("PROXNAG_SHARED",
                        os.path.join(os.path.dirname(ROOT), "shared"))
  if not os.path.isdir(os.path.join(path, "data")):
    pytest.fail(f"real data not found at {path}/data: put shared/ beside the "
                "repo or set PROXNAG_SHARED.")
  return path


@pytest.fixture(scope="session")
def npz_dir(shared_dir):
  return os.path.join(shared_dir, "data")


@pytest.fixture(scope="session")
def tfds_dir(shared_dir):
  return os.path.join(shared_dir, "tensorflow_datasets")


@pytest.fixture(scope="session")
def dense_dir(tmp_path_factory, npz_dir):
  """A finished dense LeNet-5 smoke run (real MNIST), shared by the pruning
  and method tests as their dense checkpoint."""
  from configs import lenet5_mnist  # pylint: disable=g-import-not-at-top
  from proxnag_jax import engine  # pylint: disable=g-import-not-at-top
  wd = str(tmp_path_factory.mktemp("dense"))
  c = lenet5_mnist.get_config("smoke")
  c.data_dir = npz_dir
  c.batch_size = 64
  engine.train(c, wd, log=lambda *_: None)
  return wd
