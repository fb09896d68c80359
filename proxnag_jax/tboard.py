"""TensorBoard event files beside a run's JSONL trace (optional).

Written through ``tensorboardX`` (``pip install 'proxnag_jax[tensorboard]'``)
when a run's config sets ``tensorboard = True`` (off by default): every
numeric field of every trace record as a scalar ``<kind>/<field>`` (the
epoch records' loss, accuracy, validation and test accuracy, sparsity,
images/s; the methods' events, e.g. Prox-NAG's ``monitor/lambda``), and at
each evaluation the sparsity of every prunable layer (``sparsity/<layer>``)
and a histogram of its nonzero weights (``weights/<layer>``).

    tensorboard --logdir runs/prune90/tensorboard

A resumed run discards the events after its checkpoint (``purge_step``), so
the curves show each step once, as the JSONL trace does.
"""

from __future__ import annotations

import numbers
import time
from typing import Any, Optional

import numpy as np

from proxnag_jax import masks as masks_lib


def _summary_writer():
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(
        "config.run.tensorboard needs tensorboardX: pip install "
        "'proxnag_jax[tensorboard]' (or pip install tensorboardX), or set "
        "--config.run.tensorboard=false.") from e
  return SummaryWriter


def check_available() -> None:
  """Raises the ValueError that says what to install, before a run starts."""
  _summary_writer()


def read_scalars(logdir: str) -> dict:
  """``{tag: [(step, value)]}`` of the scalars in ``logdir``'s event files
  (a reader without TensorFlow or TensorBoard, for tests and scripts)."""
  import glob  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import struct  # pylint: disable=g-import-not-at-top
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = {}
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    i = 0
    while i + 12 <= len(data):     # TFRecord: len, crc, payload, crc
      n = struct.unpack("<Q", data[i:i + 8])[0]
      ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      for v in ev.summary.value:
        if v.HasField("simple_value"):
          out.setdefault(v.tag, []).append((ev.step, v.simple_value))
  return out


class EventWriter:
  """One run's TensorBoard event file in ``logdir``."""

  def __init__(self, logdir: str, purge_step: Optional[int] = None):
    # tensorboardX names the file by the second it opens it (and the host):
    # a run resumed within the same second (in one process) would reopen,
    # and truncate, its earlier file. A nanosecond suffix keeps them apart,
    # in order.
    self.writer = _summary_writer()(
        logdir=logdir, purge_step=purge_step,
        filename_suffix=f".{time.time_ns()}")

  def record(self, rec: dict) -> None:
    """The numeric fields of a trace record as scalars ``kind/field``."""
    step, kind = int(rec.get("step", 0)), rec.get("kind", "trace")
    for name, v in rec.items():
      if name in ("step", "kind") or isinstance(v, bool):
        continue
      if isinstance(v, numbers.Number) and np.isfinite(v):
        self.writer.add_scalar(f"{kind}/{name}", float(v), step)

  def params(self, step: int, params: Any, prunable: Any) -> None:
    """Per-layer sparsity and a histogram of each layer's nonzero weights."""
    import jax  # pylint: disable=g-import-not-at-top
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    which = jax.tree.leaves(prunable)
    for (path, leaf), w in zip(flat, which):
      if not w:
        continue
      name = masks_lib.path_name(path)
      x = np.asarray(leaf).ravel()
      self.writer.add_scalar(f"sparsity/{name}", float(np.mean(x == 0)), step)
      nz = x[x != 0]
      if nz.size:
        self.writer.add_histogram(f"weights/{name}", nz, step)

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()
