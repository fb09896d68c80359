"""proxnag_jax.engine: the step and the scanned chunk (data parallelism across
devices, chunk length)."""

import os
import subprocess
import sys

import jax
import numpy as np

import helpers
from proxnag_jax import engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_smoke = helpers.lenet5_smoke


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


_SHARDED = r"""
import sys
import jax, numpy as np
sys.path.insert(0, {root!r})
sys.path.insert(0, {root!r} + "/tests")
import helpers
from configs import resnet20_cifar10
from proxnag_jax import engine
assert jax.device_count() == 4, jax.devices()
c = resnet20_cifar10.get_config("smoke")
c.data.dir = {npz!r}
# ResNet-8: the same BatchNorm and residual computation as ResNet-20 (one
# block a stage instead of three), a third of the compiling.
c.model.name = "resnet8"
out = {{}}
for name, devs in (("one", jax.devices()[:1]), ("four", jax.devices())):
  run = helpers.DenseStep(c, engine.make_mesh(devs))
  state = run.state()
  before = jax.device_get(state.params)
  # One compiled chunk (its length: the epoch's) for both calls: the first
  # step alone, then the rest of the epoch (``n`` of the padded steps run).
  idx = np.asarray(run.idx)
  one, outs1, _ = run.chunk(state, idx, 1)
  update = jax.tree.map(lambda a, b: np.asarray(a) - b,
                        jax.device_get(one.params), before)
  # (The chunk donates its input state: train on from the one-step state.)
  state, outs, _ = run.chunk(one, np.roll(idx, -1, axis=0), len(idx) - 1)
  losses = np.asarray(outs["out"][0]["loss"])[:len(idx) - 1]
  out[name] = (float(np.asarray(outs1["out"][0]["loss"])[0]), update, losses)
  sh = state.params["fc"]["kernel"].sharding
  print(name, list(losses), len(sh.device_set))
# One step from the same params on the same batch and keys is the same
# computation up to float32 reassociation: the cross-device BatchNorm and
# loss means sum the 32 x 32 x 32 activations of a batch in another order
# (relative error ~ sqrt(n) * 6e-8 ~ 2e-5 per sum for n ~ 10^5), through 20
# layers. So the first loss agrees to 1e-4 relative and the first update
# to 1e-3 of its largest entry, ~10x those bounds; a wrong reduction (a
# per-device BatchNorm, a loss summed instead of averaged) misses them by
# orders of magnitude. Later steps are NOT compared: training amplifies
# last-bit differences exponentially, so a trajectory is no test.
(l1, u1, t1), (l4, u4, t4) = out["one"], out["four"]
np.testing.assert_allclose(l1, l4, rtol=1e-4)
for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u4)):
  scale = float(np.max(np.abs(a))) + 1e-12
  np.testing.assert_allclose(a, b, atol=1e-3 * scale, rtol=0)
# Both runs train (finite losses throughout).
assert np.all(np.isfinite(t1)) and np.all(np.isfinite(t4))
print("OK")
"""


def test_four_cpu_devices_give_the_same_loss(cifar_dir):
  # It runs ResNet steps: XLA's level 1 (helpers.stepping_env), 72 -> 20 s.
  env = helpers.stepping_env({**os.environ, "JAX_PLATFORMS": "cpu"},
                             "--xla_force_host_platform_device_count=4")
  r = subprocess.run([sys.executable, "-c",
                      _SHARDED.format(root=ROOT, npz=cifar_dir)],
                     capture_output=True, text=True, timeout=600, env=env)
  assert r.returncode == 0, r.stdout + r.stderr[-3000:]
  assert "OK" in r.stdout
  assert r.stdout.split("four")[1].split("]")[1].split()[0] == "4"


def test_chunk_length_does_not_change_a_step(mnist_dir):
  """chunk_steps changes only how often the host syncs: the first step
  run as a chunk of 1 and as the first of a padded chunk of 100 (the loop's
  one compiled program for every chunk length) gives the same params, up to
  float32 rounding (XLA may fuse the scan's body differently; one step of
  LeNet-5 moves a weight by ~lr * |g|, compared at 1e-4 of the update's
  largest entry). Whole runs are not compared: training amplifies
  last-bit differences."""
  c = helpers.lenet5_smoke(mnist_dir)
  run = helpers.DenseStep(c, engine.make_mesh())
  idx = run.idx
  padded = np.concatenate([np.asarray(idx)] * (100 // len(idx) + 1))[:100]
  out = []
  for ids, n in ((idx[:1], None), (padded, 1)):
    new = run.chunk(run.state(), ids, n)[0]
    assert int(new.step) == 1
    out.append(jax.device_get(new.params))
  params = run.params
  before = jax.device_get(params)
  for b, x, y in zip(_leaves(before), _leaves(out[0]), _leaves(out[1])):
    upd = float(np.max(np.abs(x - np.asarray(b))))
    np.testing.assert_allclose(y, x, atol=1e-4 * upd + 1e-12, rtol=0)




_GPU_CHECK = r"""
import sys
# What a lent GPU machine lacks: the check must not need them.
sys.modules["ml_collections"] = None
sys.modules["tensorflow_datasets"] = None
sys.path.insert(0, {root!r})
from train import gpu_check
res = gpu_check.check(tiny=True, out={out!r}, model_name="lenet5",
                      log=lambda *_: None)
print("OK", len(res["batches"]), len(res["vmapped"]))
"""


def test_gpu_check_runs_without_ml_collections_or_tfds(tmp_path):
  """The prepared accelerator check (train/gpu_check.py) runs on the CPU at
  tiny sizes with neither ml_collections nor tensorflow-datasets importable,
  and writes every figure it prints."""
  out = str(tmp_path / "g")
  r = subprocess.run([sys.executable, "-c", _GPU_CHECK.format(
      root=ROOT, out=out)], cwd=ROOT, capture_output=True, text=True,
                     timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0, r.stderr[-3000:]
  assert "OK 1 2" in r.stdout
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(out, "gpu_check.json")) as f:
    res = json.load(f)
  assert res["backend"] == "cpu" and res["model"] == "lenet5"
  for row in res["batches"]:
    assert row["chunk_step_ms"] > 0 and row["epoch_s"] > 0
  assert [r["vmap_runs"] for r in res["vmapped"]] == [1, 2]
  assert all(r["images_per_s"] > 0 for r in res["vmapped"])
