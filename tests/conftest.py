import fcntl
import os
import sys

import pytest

# Tests run on the CPU; keep JAX quiet and deterministic.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))   # tests/helpers.py

import atexit  # pylint: disable=g-import-not-at-top,wrong-import-position
import shutil  # pylint: disable=g-import-not-at-top,wrong-import-position
import tempfile  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

# Many tests build the same programs again (a killed run and its resume, the
# same smoke config in a CLI subprocess, on two processes, in each xdist
# worker): one compilation cache for the whole test session turns those
# recompilations into lookups. The first process of the session (pytest
# itself, or the xdist controller) makes a fresh directory and removes it at
# exit; the workers and every subprocess a test starts inherit it through the
# environment, so nothing from another session is ever read.
_CACHE_ENV = "PROXNAG_TEST_JAX_CACHE"
if _CACHE_ENV not in os.environ:
  os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="proxnag_jax_cache_")
  atexit.register(shutil.rmtree, os.environ[_CACHE_ENV], ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[_CACHE_ENV]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# The tests' programs are small and run for a few steps, so XLA's optimising
# passes cost more than they save (the method contract's vmapped-step case:
# 77 s with them, 46 s without, on one core), and so does the CPU backend's
# MLIR fusion emitter: the older elemental emitter compiles the same fusions
# in about half the time (three contract cases: 20.7 -> 11.4 s of CPU). Nothing
# a test asserts depends on either (tolerances cover float reassociation).
# Set through the environment, so the CLI subprocesses and the multi-process
# workers inherit them (XLA_FLAGS is read when the CPU backend starts, after
# this); PROXNAG_TEST_OPTIMIZE=1 keeps XLA's defaults.
_FAST_COMPILE_FLAG = "--xla_cpu_use_fusion_emitters=false"
if os.environ.get("PROXNAG_TEST_OPTIMIZE", "") != "1":
  os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
  jax.config.update("jax_disable_most_optimizations", True)
  if _FAST_COMPILE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        f for f in (os.environ.get("XLA_FLAGS", ""), _FAST_COMPILE_FLAG) if f)


def _missing(what: str):
  """Skips (or, in CI, fails) a test whose real data is not here."""
  msg = (f"{what} not found: put shared/ (with data/) beside the repo or set "
         "PROXNAG_SHARED; MNIST tests also run from the TFDS data dir "
         "($TFDS_DATA_DIR or ~/tensorflow_datasets), fetched when online.")
  if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    pytest.fail(msg + " (CI=true: missing data is an error here)")
  pytest.skip(msg)


def _shared_path():
  path = os.environ.get("PROXNAG_SHARED",
                        os.path.join(os.path.dirname(ROOT), "shared"))
  return path if os.path.isdir(os.path.join(path, "data")) else None


@pytest.fixture(scope="session")
def shared_data():
  """The offline npz data (`shared/data` beside the repo, or
  $PROXNAG_SHARED/data): CIFAR-10 and MNIST."""
  path = _shared_path()
  if path is None:
    _missing("shared/data")
  return os.path.join(path, "data")


@pytest.fixture(scope="session")
def cifar_dir(shared_data):
  return shared_data


@pytest.fixture(scope="session")
def tfds_dir():
  path = _shared_path()
  if path is None or not os.path.isdir(os.path.join(path,
                                                    "tensorflow_datasets")):
    _missing("shared/tensorflow_datasets")
  return os.path.join(path, "tensorflow_datasets")


@pytest.fixture(scope="session")
def mnist_dir():
  """A data dir with MNIST: shared/data when present, else the TFDS data dir
  (MNIST fetched by name when the machine is online), else skip (CI: fail)."""
  path = _shared_path()
  if path is not None:
    return os.path.join(path, "data")
  from proxnag_jax import data  # pylint: disable=g-import-not-at-top
  try:
    ds = data.load_dataset("mnist", "", test_subset=1)
  except data.DataError:
    _missing("MNIST")
  if ds.source == "npz" and os.path.basename(ds.path) == "mnist":
    return os.path.dirname(ds.path)
  return ds.path


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory, worker_id):
  """``shared_run(name, build)``: ``build(workdir)`` run once per test
  session, its result (JSON) shared by every test that asks for ``name``.

  Under pytest-xdist (``-n 2``) the workers share it too: the first to ask
  builds it under a lock in the session's common temp dir, the others wait
  and reuse it (worksteal may hand the tests of one module to both workers;
  a module-scoped fixture would then run twice)."""
  import json  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  results = {}
  # Every worker reads the result back from JSON (the same types for all).
  as_json = lambda out: json.dumps(out, default=lambda o: (
      o.tolist() if isinstance(o, np.ndarray) else
      o.item() if isinstance(o, np.generic) else str(o)))

  def get(name, build):
    if name in results:
      return results[name]
    if worker_id == "master":
      results[name] = json.loads(as_json(build(str(
          tmp_path_factory.mktemp(name) / "run"))))
      return results[name]
    root = tmp_path_factory.getbasetemp().parent
    done = root / f"{name}.result.json"
    with open(root / f"{name}.lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      try:
        if not done.exists():
          out = as_json(build(str(root / name / "run")))
          tmp = root / f"{name}.result.tmp"
          tmp.write_text(out)
          tmp.replace(done)
      finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
    results[name] = json.loads(done.read_text())
    return results[name]
  return get


@pytest.fixture(scope="session")
def dense_dir(shared_run, mnist_dir):
  """A finished dense LeNet-5 smoke run (real MNIST), shared by the pruning
  and method tests as their dense checkpoint."""
  from configs import lenet5_mnist  # pylint: disable=g-import-not-at-top
  from proxnag_jax import commands  # pylint: disable=g-import-not-at-top

  def build(wd):
    c = lenet5_mnist.get_config("smoke")
    c.data.dir = mnist_dir
    c.data.batch_size = 64
    commands.train(c, wd, log=lambda *_: None)
    return wd
  return shared_run("dense_lenet5", build)


@pytest.fixture(scope="session")
def worker_id(request):
  """The pytest-xdist worker (``'master'`` when xdist is not running)."""
  wi = getattr(request.config, "workerinput", None)
  return wi["workerid"] if wi else "master"
