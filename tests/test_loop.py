"""proxnag_jax.loop: resume to the same result, the trace and checkpoint
schedule, in-memory runs. On the tiny task (tests/tiny.py), no dataset."""

import json
import os

import jax
import numpy as np
import pytest

import tiny
from proxnag_jax import hostio
from proxnag_jax import loop

# Representative methods for resume: the most method state (Prox-NAG's
# phases and controller), PRNG-driven regrowth (sparse momentum), masks
# from a gradient at init (SNIP), scores over frozen weights (edge-popup).
RESUME_METHODS = ("proxnag", "sparse_momentum", "snip", "edge_popup")


def _trace(path):
  """The trace's records without their timing fields."""
  out = []
  with open(path) as f:
    for line in f:
      r = json.loads(line)
      for k in ("images_per_s", "wall_time_s"):
        r.pop(k, None)
      out.append(r)
  return out


@pytest.mark.parametrize("name", RESUME_METHODS)
def test_killed_mid_chunk_and_resumed_equals_uninterrupted(tmp_path, name):
  """A run stopped (as if killed) after 12 steps, in the middle of an
  epoch and of a chunk, and resumed from its checkpoint ends bitwise where
  the uninterrupted run ends, with the same trace."""
  full_dir, part_dir = str(tmp_path / "full"), str(tmp_path / "part")
  _, ctx, full = tiny.run_tiny(name, full_dir)
  _, _, r1 = tiny.run_tiny(name, part_dir, stop_after=12)
  assert r1.stopped_at_step == 12 and not r1.states
  assert hostio.Checkpointer(os.path.join(part_dir, "ckpt")).latest_step() \
      == 12
  _, _, r2 = tiny.run_tiny(name, part_dir)
  assert r2.steps == full.steps <= ctx.total_steps
  for a, b in zip(jax.tree.leaves(full.states[0]),
                  jax.tree.leaves(r2.states[0])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  name_ = "trace_0_0.75.jsonl"
  assert _trace(os.path.join(full_dir, name_)) == _trace(
      os.path.join(part_dir, name_))


def test_in_memory_run_equals_the_run_on_disk(tmp_path):
  """Without a workdir the loop writes nothing and ends where the run with
  checkpoints and traces ends."""
  _, _, disk = tiny.run_tiny("magnitude", str(tmp_path / "d"))
  before = set(os.listdir(tmp_path))
  _, _, mem = tiny.run_tiny("magnitude")
  assert set(os.listdir(tmp_path)) == before
  for a, b in zip(jax.tree.leaves(disk.states[0]),
                  jax.tree.leaves(mem.states[0])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert disk.evals == mem.evals


def test_evaluations_at_epoch_ends_and_checkpoints_between(tmp_path):
  """One 'epoch' trace line per epoch (at steps SPE, 2 SPE, ...) whatever
  the chunk length; extra checkpoints every ``checkpoint_every_steps``."""
  method = tiny.methods.get_method("magnitude")
  ctx, inits = tiny.tiny_inits(method, (0,), (0.75,))
  wd = str(tmp_path)
  run = loop.RunInit(inits[0][2], 0, os.path.join(wd, "t.jsonl"),
                     inits[0][3])
  program = loop.Program(tiny.MODEL, method, ctx, (0.5,), (0.25,), False,
                         tiny.BATCH, tiny.engine.make_mesh())
  res = loop.run_loop(program, tiny.DATA, [run],
                      ckpt_dir=os.path.join(wd, "ckpt"),
                      schedule=loop.Schedule(chunk_steps=5,
                                             checkpoint_every_steps=3,
                                             eval_batch_size=64,
                                             log_every_s=1e9),
                      log=tiny.QUIET)
  assert res.steps == ctx.total_steps == 4 * tiny.SPE
  epochs = [r for r in _trace(run.trace_path) if r["kind"] == "epoch"]
  assert [r["step"] for r in epochs] == [tiny.SPE * k for k in (1, 2, 3, 4)]
  assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in epochs)
  assert res.chunk_compiles == 1     # chunks of 5, 3, 1, ... share one
  steps = sorted(int(d) for d in os.listdir(os.path.join(wd, "ckpt"))
                 if d.isdigit())
  assert steps[-1] == ctx.total_steps and len(steps) == 2   # max_to_keep


def test_several_runs_need_vmapped(tmp_path):
  method = tiny.methods.get_method("magnitude")
  ctx, inits = tiny.tiny_inits(method, (0, 1), (0.75,))
  runs = [loop.RunInit(s, seed, None, ev) for seed, _, s, ev in inits]
  program = loop.Program(tiny.MODEL, method, ctx, (0.5,), (0.25,), False,
                         tiny.BATCH, tiny.engine.make_mesh())
  with pytest.raises(ValueError, match="several runs need vmapped=True"):
    loop.run_loop(program, tiny.DATA, runs,
                  schedule=loop.Schedule(chunk_steps=8), log=tiny.QUIET)


def test_tensorboard_writers_opened_in_one_second_keep_their_events(
    tmp_path):
  """A run stopped and resumed within one second (one process) writes two
  event files: the second must not reopen and truncate the first
  (tensorboardX names a file by the second it opens it)."""
  pytest.importorskip("tensorboardX")
  from proxnag_jax import tboard  # pylint: disable=g-import-not-at-top
  for step in (8, 16):
    w = tboard.EventWriter(str(tmp_path), purge_step=step if step > 8 else
                           None)
    w.record({"kind": "epoch", "step": step, "loss": float(step)})
    w.close()
  assert sorted(tboard.read_scalars(str(tmp_path))["epoch/loss"]) == [
      (8, 8.0), (16, 16.0)]


def test_tensorboard_events_beside_the_trace_and_once_per_step_on_resume(
    tmp_path):
  """With a TensorBoard dir the loop writes every trace record's numbers as
  scalars and per-layer sparsity at each evaluation; a run killed and
  resumed has each epoch's scalar once, equal to the trace's."""
  pytest.importorskip("tensorboardX")
  from proxnag_jax import tboard  # pylint: disable=g-import-not-at-top
  method = tiny.methods.get_method("gmp", every=2)
  wd = str(tmp_path)
  for stop in (12, None):        # killed after 12 steps, then resumed
    ctx, inits = tiny.tiny_inits(method, (0,), (0.75,))
    run = loop.RunInit(inits[0][2], 0, os.path.join(wd, "t.jsonl"),
                       inits[0][3], tensorboard_dir=os.path.join(wd, "tb"))
    program = loop.Program(tiny.MODEL, method, ctx, (0.5,), (0.25,), False,
                           tiny.BATCH, tiny.engine.make_mesh())
    loop.run_loop(program, tiny.DATA, [run], ckpt_dir=os.path.join(
        wd, "ckpt"), resuming=stop is None, schedule=loop.Schedule(
            chunk_steps=4, eval_batch_size=64, log_every_s=1e9,
            stop_after_steps=stop), log=tiny.QUIET)
  sc = tboard.read_scalars(os.path.join(wd, "tb"))
  epochs = [r for r in _trace(run.trace_path) if r["kind"] == "epoch"]
  steps = [r["step"] for r in epochs]
  got = sorted(sc["epoch/test_accuracy"])
  assert [s for s, _ in got] == steps
  np.testing.assert_allclose([v for _, v in got],
                             [r["test_accuracy"] for r in epochs], rtol=1e-6)
  assert [s for s, _ in sorted(sc["sparsity/conv/kernel"])] == steps
  assert sorted(sc["sparsity/fc/kernel"])[-1][1] > 0.5     # pruned by then
  # The method's events: GMP's pruning steps, every 2 steps to its end.
  assert [s for s, _ in sorted(sc["prune/sparsity"])][:3] == [2, 4, 6]
