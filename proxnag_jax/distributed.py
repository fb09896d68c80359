"""Several processes, one run: ``jax.distributed`` for every command.

One process per host (a multi-GPU node, a TPU VM of a pod slice, or, for
tests, a CPU process on localhost) runs the same command; together they see
one global device mesh, and every jitted step is one SPMD program over it.

>>> # on each of N hosts (process ids 0..N-1; the coordinator is process 0):
>>> #   python -m train.train --config ... --workdir gs://bucket/run \\
>>> #       --coordinator_address=10.0.0.1:1234 --num_processes=N --process_id=i
>>> initialize("10.0.0.1:1234", num_processes=2, process_id=0)

What the loop does with several processes (``docs`` in the README):

* **Data.** Every process loads the (in-memory) dataset and puts it on the
  global mesh, replicated; each step gathers its batch by index inside the
  jitted step, sharded over the ``'data'`` axis, so every device computes
  only its share of each global batch. The batch order and augmentation keys
  come from the run's PRNG key, the same on every process: the global batch
  of a step is the one a single process would use.
* **State.** Params, optimizer and method state (masks included) are
  replicated on every device; a method's decisions (mask updates, Prox-NAG's
  round ends) are computed inside the jitted step from replicated values, so
  they are the same on every process.
* **Files.** Only process 0 writes summaries, traces, metrics, reports,
  plots and ``config.json``, and holds the workdir lock; checkpoints (orbax)
  are saved and restored by all processes together. The workdir must be on a
  filesystem every process sees (NFS, GCS), as orbax needs for multi-host
  checkpoints.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, TypeVar

import jax
import numpy as np

T = TypeVar("T")

# Environment variables read when no flag is given (jax.distributed's own
# auto-detection covers SLURM, Open MPI and Cloud TPU).
ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS",
       "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}


def settings_from_env(coordinator_address: Optional[str] = None,
                      num_processes: Optional[int] = None,
                      process_id: Optional[int] = None) -> dict:
  """The explicit arguments, completed from :data:`ENV`."""
  out = {"coordinator_address": coordinator_address or os.environ.get(
      ENV["coordinator_address"]) or None}
  for k, v in (("num_processes", num_processes), ("process_id", process_id)):
    if v is None and os.environ.get(ENV[k]):
      v = int(os.environ[ENV[k]])
    out[k] = v
  return out


def initialize(coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *,
               auto: bool = False) -> bool:
  """Starts ``jax.distributed`` when asked; returns True if it did.

  Asked means: a coordinator address (argument or ``JAX_COORDINATOR_ADDRESS``,
  with the process count and id), or ``auto=True`` (jax's detection of
  SLURM, Open MPI, Cloud TPU). Nothing is needed for one process. Call it
  before anything touches a JAX device. On CPU the collectives go through
  gloo.

  Raises:
    ValueError: an address without the process count and id, or bad values.
  """
  s = settings_from_env(coordinator_address, num_processes, process_id)
  if s["coordinator_address"] is None and not auto:
    if s["num_processes"] not in (None, 1):
      raise ValueError(
          f"num_processes={s['num_processes']} needs a coordinator address "
          f"(--coordinator_address or {ENV['coordinator_address']}).")
    return False
  if s["coordinator_address"] is not None:
    if s["num_processes"] is None or s["process_id"] is None:
      raise ValueError(
          "a coordinator address needs --num_processes and --process_id (or "
          f"{ENV['num_processes']} and {ENV['process_id']}).")
    if not 0 <= s["process_id"] < s["num_processes"]:
      raise ValueError(f"process_id {s['process_id']} is not in [0, "
                       f"{s['num_processes']}).")
  # CPU collectives (tests on one machine): gloo. Harmless on GPU / TPU.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if s["coordinator_address"] is None:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(s["coordinator_address"], s["num_processes"],
                               s["process_id"])
  return True


def process_count() -> int:
  return jax.process_count()


def is_primary() -> bool:
  """Whether this process writes the run's files (process 0)."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier across processes (nothing with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def broadcast_int(value: int) -> int:
  """Process 0's ``value`` on every process."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(multihost_utils.broadcast_one_to_all(
      np.int32(value), is_source=is_primary()))


class PrimaryFailed(RuntimeError):
  """Process 0 stopped on an error (its own log says which)."""


def on_primary(fn: Callable[[], T], name: str) -> T:
  """Runs ``fn`` (returning a bool or int) on process 0 only and hands its
  result to every process; an error there stops every process (process 0
  re-raises it, the others raise :class:`PrimaryFailed`)."""
  if jax.process_count() == 1:
    return fn()
  err, out = None, 0
  if is_primary():
    try:
      out = int(fn())
    except Exception as e:  # pylint: disable=broad-except
      err = e
  code = broadcast_int(-1 if err is not None else out)
  if err is not None:
    raise err
  if code == -1:
    raise PrimaryFailed(f"process 0 stopped at {name!r}; its log says why.")
  return code


__all__ = ["initialize", "settings_from_env", "process_count", "is_primary",
           "sync", "broadcast_int", "on_primary", "PrimaryFailed", "ENV"]
