"""Datasets as in-memory arrays, and on-device augmentation.

Two sources, chosen by what ``data_dir`` holds:

* **TFDS** (``tensorflow-datasets``, no TensorFlow needed): a prepared TFDS
  data dir, ``DATA_DIR/<name>/<version>/dataset_info.json``, read with
  ``tfds.data_source`` (ArrayRecord files). ``data_dir`` defaults to
  ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.
* **npz shards**: ``DATA_DIR/<name>/`` (or ``DATA_DIR/`` itself) holding
  ``train*.npz`` and ``test.npz`` with uint8 arrays ``image`` (N, H, W, C) and
  ``label`` (N,), the layout of ``shared/data/README.md``. This path needs
  nothing beyond NumPy (e.g. on a GPU machine without tensorflow-datasets).

Images stay uint8 until they reach the accelerator; :func:`preprocess` and
:func:`augment` run inside the jitted step.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import socket
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

# name -> (input shape, classes, per-channel mean, std of pixels/255, augment)
DATASETS = {
    "mnist": ((28, 28, 1), 10, (0.1307,), (0.3081,), False),
    "fashion_mnist": ((28, 28, 1), 10, (0.2860,), (0.3530,), False),
    "cifar10": ((32, 32, 3), 10, (0.4914, 0.4822, 0.4465),
                (0.2470, 0.2435, 0.2616), True),
    "cifar100": ((32, 32, 3), 100, (0.5071, 0.4865, 0.4409),
                 (0.2673, 0.2564, 0.2762), True),
    "imagenet2012": ((224, 224, 3), 1000, (0.485, 0.456, 0.406),
                     (0.229, 0.224, 0.225), True),
}
DATASET_NAMES = tuple(sorted(DATASETS))

HOW_TO_GET_DATA = """\
How to get the data:
  * TFDS: `pip install tensorflow-datasets array_record pillow
    importlib_resources`, then
    `python -c "import tensorflow_datasets as tfds; tfds.builder('{name}', \
data_dir='DIR', file_format='array_record').download_and_prepare()"`
    and pass --config.data.dir=DIR (or set TFDS_DATA_DIR).
  * npz: a directory DIR/{name}/ with train*.npz shards and test.npz, each
    holding uint8 `image` (N,H,W,C) and `label` (N,); pass --config.data.dir=DIR.
"""


class DataError(ValueError):
  """Missing or malformed data, with a message that says what to do."""


@dataclasses.dataclass
class Dataset:
  """A dataset held as uint8 arrays on the host (moved to device once)."""

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  source: str   # 'tfds' or 'npz'
  path: str
  # A validation split held out of the training set (split_validation);
  # empty when none.
  val_images: Optional[np.ndarray] = None
  val_labels: Optional[np.ndarray] = None

  @property
  def input_shape(self):
    return DATASETS[self.name][0]

  @property
  def num_classes(self):
    return DATASETS[self.name][1]

  @property
  def mean_std(self):
    return DATASETS[self.name][2], DATASETS[self.name][3]

  @property
  def augment(self):
    return DATASETS[self.name][4]


def check_dataset_name(name: str) -> None:
  if name not in DATASETS:
    raise DataError(
        f"unknown dataset {name!r}; valid datasets: {', '.join(DATASET_NAMES)}.")


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR",
                        os.path.expanduser("~/tensorflow_datasets"))


def detect_source(name: str, data_dir: str) -> tuple[str, str]:
  """Returns ``('tfds' | 'npz', path)`` for ``data_dir`` or raises DataError."""
  check_dataset_name(name)
  data_dir = os.path.expanduser(data_dir or default_data_dir())
  if not os.path.isdir(data_dir):
    raise DataError(f"data dir {data_dir!r} does not exist.\n"
                    + HOW_TO_GET_DATA.format(name=name))
  if glob.glob(os.path.join(data_dir, name, "*", "dataset_info.json")):
    return "tfds", data_dir
  for cand in (os.path.join(data_dir, name), data_dir):
    if (glob.glob(os.path.join(cand, "train*.npz")) and
        os.path.exists(os.path.join(cand, "test.npz"))):
      return "npz", cand
  raise DataError(
      f"no {name!r} data in {data_dir!r}: expected a TFDS data dir "
      f"({data_dir}/{name}/<version>/dataset_info.json) or npz shards "
      f"({data_dir}/{name}/train*.npz and test.npz).\n"
      + HOW_TO_GET_DATA.format(name=name))


def _read_npz(f: str):
  """``(image, label)`` of one npz shard (read-only arrays), or a DataError
  naming the file.

  A shard read before in this process, unchanged on disk since (same size
  and modification time), is not decompressed again: the runs of a sweep,
  a pruning run's dense phase and the tests' many runs load a dataset
  once per process."""
  try:
    st = os.stat(f)
  except OSError:
    return _read_npz_file(f)
  return _read_npz_cached(f, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_npz_cached(f: str, size: int, mtime_ns: int):
  del size, mtime_ns     # (the cache key: a rewritten file is read again)
  x, y = _read_npz_file(f)
  x.flags.writeable = False
  y.flags.writeable = False
  return x, y


def _read_npz_file(f: str):
  try:
    with np.load(f) as z:
      missing = {"image", "label"} - set(z.files)
      if missing:
        raise DataError(f"{f} has no {', '.join(sorted(missing))} array "
                        f"(it holds {', '.join(z.files) or 'nothing'}); each "
                        "shard needs uint8 `image` (N,H,W,C) and `label` (N,).")
      x, y = z["image"], z["label"]
  except DataError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"cannot read {f} ({type(e).__name__}: {e}); the file is "
                    "truncated or not an npz. Re-create or re-copy it.") from None
  if len(x) != len(y):
    raise DataError(f"{f} holds {len(x)} images but {len(y)} labels; every "
                    "image needs exactly one label.")
  return x, y


def _load_npz(path: str, train_subset: int):
  shards = sorted(glob.glob(os.path.join(path, "train*.npz")))
  xs, ys, have = [], [], 0
  for f in shards:
    x, y = _read_npz(f)
    xs.append(x)
    ys.append(y)
    have += len(ys[-1])
    if train_subset and have >= train_subset:
      break
  x, y = np.concatenate(xs), np.concatenate(ys)
  tx, ty = _read_npz(os.path.join(path, "test.npz"))
  return x, y, tx, ty


def _load_tfds(name: str, data_dir: str, train_subset: int, test_subset: int):
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(
        f"{data_dir!r} is a TFDS data dir but tensorflow-datasets is not "
        "installed: `pip install tensorflow-datasets array_record pillow` "
        "(or `pip install -e .[tfds]`), or use npz shards.") from e
  src = tfds.data_source(name, data_dir=data_dir)

  def read(split, n):
    ds = src[split]
    n = min(n, len(ds)) if n else len(ds)
    images, labels = np.empty((n,) + DATASETS[name][0], np.uint8), np.empty(
        n, np.int32)
    step = 4096
    for start in range(0, n, step):
      exs = ds.__getitems__(list(range(start, min(n, start + step))))
      for i, ex in enumerate(exs):
        images[start + i] = ex["image"]
        labels[start + i] = ex["label"]
    return images, labels

  x, y = read("train", train_subset)
  tx, ty = read("test", 0)     # sampled below (test splits may be sorted)
  return x, y, tx, ty


DOWNLOAD_HOST = "storage.googleapis.com"   # where TFDS fetches MNIST/CIFAR


def _online(timeout: float = 3.0) -> bool:
  """Can TFDS's download host be reached? (Offline, TFDS would retry for
  minutes before failing; this answers in at most ``timeout`` seconds.)"""
  try:
    socket.create_connection((DOWNLOAD_HOST, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


def fetch_tfds(name: str, data_dir: str) -> None:
  """Downloads and prepares ``name`` into the TFDS data dir ``data_dir``
  (ArrayRecord files, read later without TensorFlow). Raises a DataError
  that says where to put the data when that is not possible (offline, or
  tensorflow-datasets' download extras missing)."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    tfds = None
  why = "tensorflow-datasets is not installed"
  if tfds is not None and not _online():
    why = f"offline: cannot reach {DOWNLOAD_HOST}"
  elif tfds is not None:
    try:
      tfds.builder(name, data_dir=data_dir,
                   file_format="array_record").download_and_prepare()
      return
    except Exception as e:  # pylint: disable=broad-except
      why = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
  raise DataError(
      f"no {name!r} data in {data_dir!r}, and fetching it by name failed "
      f"({why}). Offline, put the data there yourself, or point "
      "--config.data.dir at a directory that has it.\n"
      + HOW_TO_GET_DATA.format(name=name))


def load_dataset(name: str, data_dir: Optional[str] = None,
                 train_subset: int = 0, test_subset: int = 0,
                 download: bool = True) -> Dataset:
  """Loads ``name`` into host memory from a TFDS data dir or npz shards.

  Args:
    name: one of :data:`DATASET_NAMES`.
    data_dir: a TFDS data dir or a directory of npz shards (detected);
      default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.
    train_subset / test_subset: if > 0, keep only N examples, for smoke
      runs: the first N training examples (npz: only the shards needed are
      read; the shards of ``shared/data`` are shuffled) and a fixed random
      sample of N test examples (test splits may be sorted by class).
    download: when ``data_dir`` holds no ``name``, fetch it by name into it
      with TFDS (as ``tfds.load`` would); offline this fails with a message
      that says where to put the data.
  """
  if train_subset < 0 or test_subset < 0:
    raise DataError(f"train_subset/test_subset must be >= 0 (0: all), got "
                    f"{train_subset}/{test_subset}.")
  check_dataset_name(name)
  try:
    source, path = detect_source(name, data_dir)
  except DataError:
    if not download or name == "imagenet2012":
      raise
    target = os.path.expanduser(data_dir or default_data_dir())
    fetch_tfds(name, target)
    source, path = detect_source(name, target)
  if name == "imagenet2012":
    raise DataError(
        "imagenet2012 does not fit the in-memory pipeline of this release; "
        "the models (resnet18_imagenet, resnet50_imagenet) are available for "
        "your own input pipeline.")
  if source == "npz":
    x, y, tx, ty = _load_npz(path, train_subset)
  else:
    x, y, tx, ty = _load_tfds(name, path, train_subset, test_subset)
  if train_subset:
    x, y = x[:train_subset], y[:train_subset]
  if test_subset and test_subset < len(ty):
    # A fixed random sample, not the first N: a test split may be sorted by
    # class (CIFAR-10's is), and its first N would hold one class.
    pick = np.sort(np.random.default_rng(0).permutation(len(ty))[:test_subset])
    tx, ty = tx[pick], ty[pick]
  shape, classes = DATASETS[name][0], DATASETS[name][1]
  for arr, lab, split in ((x, y, "train"), (tx, ty, "test")):
    if len(arr) == 0:
      raise DataError(f"the {name} {split} split in {path} is empty.")
    if len(arr) != len(lab):
      raise DataError(f"the {name} {split} split in {path} has {len(arr)} "
                      f"images but {len(lab)} labels.")
    if arr.shape[1:] != shape or arr.dtype != np.uint8:
      raise DataError(f"{name} {split} images in {path} have shape "
                      f"{arr.shape[1:]} {arr.dtype}; expected {shape} uint8.")
    lo, hi = int(np.min(lab)), int(np.max(lab))
    if lo < 0 or hi >= classes:
      raise DataError(f"{name} {split} labels in {path} run from {lo} to "
                      f"{hi}; {name} has {classes} classes (0..{classes - 1}).")
  return Dataset(name, x, y.astype(np.int32), tx, ty.astype(np.int32),
                 source, path)


def split_validation(ds: Dataset, val_size: int, seed: int = 0) -> Dataset:
  """Holds ``val_size`` training examples out as a validation split.

  The held-out examples are a random subset fixed by ``seed`` alone (not by
  the run's seed), so every run with the same ``(val_size, seed)`` trains on
  the same images and tunes on the same validation set; the test set is not
  touched. ``val_size = 0`` returns ``ds`` unchanged.

  >>> ds = split_validation(load_dataset("mnist", "../shared/data"), 5000)
  >>> len(ds.train_labels), len(ds.val_labels)
  (55000, 5000)
  """
  if not val_size:
    return ds
  n = len(ds.train_labels)
  if not 0 < val_size < n:
    raise DataError(f"val_size {val_size} must be in [0, {n}) (the "
                    f"{n} training examples of {ds.name}).")
  perm = np.asarray(jax.random.permutation(
      jax.random.fold_in(jax.random.PRNGKey(seed), 77), n))
  val, train = np.sort(perm[:val_size]), np.sort(perm[val_size:])
  return dataclasses.replace(
      ds, train_images=ds.train_images[train],
      train_labels=ds.train_labels[train], val_images=ds.train_images[val],
      val_labels=ds.train_labels[val])


def describe(ds: Dataset) -> str:
  val = (f", validation {len(ds.val_labels)} (held out of train)"
         if ds.val_labels is not None else "")
  return (f"{ds.name} from {ds.source} at {ds.path}: train "
          f"{len(ds.train_labels)}{val}, test {len(ds.test_labels)} examples")


# ---------------------------------------------------------------------------
# On-device preprocessing (inside jit).
# ---------------------------------------------------------------------------


def preprocess(images: jax.Array, mean, std) -> jax.Array:
  """uint8 NHWC -> float32, per-channel normalised."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def augment(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
  """Standard CIFAR augmentation: zero-pad ``pad``, random crop, random flip.

  Deterministic given ``key``; works on any NHWC batch (uint8 or float).
  """
  n, h, w, c = images.shape
  k_crop, k_flip = jax.random.split(key)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
  out = jax.vmap(crop)(padded, offsets)
  flip = jax.random.bernoulli(k_flip, 0.5, (n,))
  return jnp.where(flip[:, None, None, None], out[:, :, ::-1, :], out)


def epoch_permutation(key: jax.Array, n: int, batch_size: int) -> np.ndarray:
  """Shuffled indices for one epoch, as (steps, batch) (last partial dropped)."""
  perm = np.asarray(jax.random.permutation(key, n))
  steps = n // batch_size
  return perm[: steps * batch_size].reshape(steps, batch_size)
