"""The commands on several processes: 2 CPU processes on localhost talking
through jax.distributed (gloo), against 1 process with 2 CPU devices (the
same mesh). Real MNIST (the LeNet-5 smoke config)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multiprocess_worker.py")


def _port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={devices}")
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  return env


def _run_processes(n, workdir, data_dir, *extra, mode="train", timeout=600):
  port = _port()
  procs = [subprocess.Popen(
      [sys.executable, WORKER, str(port), str(n), str(i), mode, workdir,
       data_dir, *map(str, extra)], env=_env(1 if n > 1 else 2), cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(n)]
  outs = []
  for p in procs:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-3000:]
    outs.append(json.loads([l for l in out.splitlines()
                            if l.startswith("RESULT ")][-1][7:]))
  return outs


def _epochs(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


@pytest.fixture
def two_processes(shared_run, mnist_dir):
  """One 2-process run (conftest.shared_run: once per test session)."""
  return shared_run("two_processes",
                    lambda wd: (wd, _run_processes(2, wd, mnist_dir)))


def test_two_processes_run_as_one(two_processes):
  """A 2-process run writes one run's files and trains; the processes agree.
  (Against 1 process the numbers are compared one step deep, below: a whole
  run's trajectory differs across process counts by float order alone.)"""
  wd2, r2 = two_processes
  # Only process 0 writes the run's files.
  assert [r["process_index"] for r in r2] == [0, 1]
  with open(os.path.join(wd2, "summary.json")) as f:
    s2 = json.load(f)
  assert len(os.listdir(os.path.join(wd2, "final"))) > 0
  assert s2["process_count"] == 2 and s2["device_count"] == 2
  # Both processes evaluate the same model, and the run trains (the loss
  # of the last epoch below the first's): what holds on any CPU.
  e2 = _epochs(wd2)
  assert len(e2) == 2
  assert np.isfinite(e2[-1]["train_loss"])
  assert e2[-1]["train_loss"] < e2[0]["train_loss"]
  assert r2[0]["test_accuracy"] == r2[1]["test_accuracy"]


def test_two_processes_take_the_same_step_as_one(tmp_path, mnist_dir,
                                                two_processes):
  """One step from the same params on the same global batch, on 2
  processes (1 CPU device each) and on 1 process (2 devices): the same
  computation up to the float32 order of the cross-process gradient and
  BatchNorm sums (LeNet-5 smoke batch: a gradient entry sums ~10^4 terms,
  relative error ~ sqrt(n) * 6e-8 ~ 1e-5). So the loss agrees to 1e-5 and
  each leaf's update (its norm, and its projection on a fixed random
  direction) to 1e-3 of its norm; a wrong reduction (gradients not summed
  across processes, a per-process batch) misses by orders of magnitude."""
  one = _run_processes(1, str(tmp_path / "a"), mnist_dir, mode="step")[0]
  two = [r["step"] for r in two_processes[1]]   # taken before the run
  assert one["device_count"] == two[0]["device_count"] == 2
  for r in two:
    np.testing.assert_allclose(r["loss"], one["loss"], rtol=1e-5)
    for n1, n2, p1, p2 in zip(one["update_norms"], r["update_norms"],
                              one["update_projections"],
                              r["update_projections"]):
      np.testing.assert_allclose(n2, n1, rtol=1e-3)
      assert abs(p2 - p1) <= 1e-3 * n1 + 1e-12


def test_killed_two_process_run_resumes(mnist_dir, two_processes):
  full, ref = two_processes
  wd = full + "_resume"        # the fixture's processes stopped it
  assert [r["stopped"]["stopped_at_epoch"] for r in ref] == [1, 1]
  assert not os.path.exists(os.path.join(wd, "summary.json"))
  again = _run_processes(2, wd, mnist_dir, "end")   # resumes collectively
  assert again[0]["test_accuracy"] == ref[0]["test_accuracy"]
  a, b = _epochs(wd), _epochs(full)
  assert [x["train_loss"] for x in a] == [x["train_loss"] for x in b]


def test_prune_on_two_processes(two_processes):
  """Prox-NAG from the dense model on 2 processes: the same decisions on
  both processes (identical sparsity and accuracy) and the exact target
  count of zeros. (Against 1 process only one step is compared, above: a
  whole run's accuracy across process counts is a trajectory, which float
  order alone makes differ.)"""
  dense, r = two_processes      # the fixture's processes pruned it
  r2 = [x["prune"] for x in r]
  assert [x["process_index"] for x in r2] == [0, 1]
  assert r2[0]["sparsity"] == r2[1]["sparsity"]
  assert r2[0]["test_accuracy"] == r2[1]["test_accuracy"]
  assert r2[0]["sparsity"] == pytest.approx(0.5, abs=1e-4)
  with open(dense + "_prune/summary.json") as f:
    s = json.load(f)
  assert s["process_count"] == 2 and s["reached_target"]
  assert os.path.exists(dense + "_prune/report.md")
