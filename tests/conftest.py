import os
import sys

import pytest

# Tests run on the CPU; keep JAX quiet and deterministic.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import tempfile  # pylint: disable=g-import-not-at-top,wrong-import-position

# Many tests build the same programs again (a killed run and its resume, the
# same method at two targets): a compilation cache shared by the session
# turns those recompilations into lookups. A fresh directory per session, so
# nothing stale is read.
jax.config.update("jax_compilation_cache_dir",
                  tempfile.mkdtemp(prefix="proxnag_jax_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


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
  from proxnag_jax import loop  # pylint: disable=g-import-not-at-top
  wd = str(tmp_path_factory.mktemp("dense"))
  c = lenet5_mnist.get_config("smoke")
  c.data_dir = npz_dir
  c.batch_size = 64
  loop.train(c, wd, log=lambda *_: None)
  return wd
