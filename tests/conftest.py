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
