"""One process of a multi-process run on this machine (used by
tests/test_distributed.py), with ``jax.distributed`` over N CPU processes
talking through gloo on localhost:

  python tests/multiprocess_worker.py PORT N ID train WORKDIR DATA_DIR [STOP]
  python tests/multiprocess_worker.py PORT N ID step WORKDIR DATA_DIR

``train``: the LeNet-5 smoke config (stopped after STOP epochs if STOP is a
number; STOP ``end``: trained to its end and nothing else, as a resumed run
is; without STOP it first takes the ``step`` below, its result under
``"step"``, then trains the same config into WORKDIR_resume and stops it
after epoch 1 (a killed run for the next processes to resume), its result
under ``"stopped"``, then trains WORKDIR to the end and prunes the trained
model with Prox-NAG's LeNet-5 smoke config into WORKDIR_prune, its result
under ``"prune"``);
``step``: one training step of the LeNet-5 smoke config from its initial
params on the first batch: prints its loss and, per parameter leaf, the
update's norm and its projection on a fixed random direction.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from proxnag_jax import commands
from proxnag_jax import distributed  # pylint: disable=g-import-not-at-top


def main():
  port, n, pid, mode, workdir, data_dir = sys.argv[1:7]
  extra = sys.argv[7] if len(sys.argv) > 7 else None
  distributed.initialize(f"localhost:{port}", int(n), int(pid))
  from configs import lenet5_mnist  # pylint: disable=g-import-not-at-top
  from configs import proxnag_lenet5_mnist  # pylint: disable=g-import-not-at-top
  log = print if distributed.is_primary() else (lambda *_: None)
  if mode == "step":
    print("RESULT " + json.dumps(one_step(data_dir)), flush=True)
    return
  import jax  # pylint: disable=g-import-not-at-top

  def prune(wd, dense):
    c = proxnag_lenet5_mnist.get_config("smoke")
    c.data.dir = data_dir
    c.prune.dense_checkpoint = dense
    c.run.checkpoint_every_steps = 0   # resume is tested on the train mode
    return result(commands.prune(c, wd, log=log))

  def result(out):
    return {"process_index": jax.process_index(),
            **{k: out.get(k) for k in ("test_accuracy", "stopped_at_epoch",
                                       "sparsity")}}

  # The one-step comparison, the killed run and the pruning ride on the
  # run's processes (process starts and compilations fewer per test session).
  whole = extra is None
  step = one_step(data_dir) if whole else None
  c = lenet5_mnist.get_config("smoke")
  c.data.dir = data_dir
  stopped = result(commands.train(c, workdir + "_resume", stop_after_epochs=1,
                                  log=log)) if whole else None
  out = commands.train(c, workdir, stop_after_epochs=None if extra in (
      None, "end") else int(extra), log=log)
  print("RESULT " + json.dumps({
      **result(out), "step": step, "stopped": stopped,
      "prune": prune(workdir + "_prune", workdir) if whole else None}),
        flush=True)


def one_step(data_dir) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import helpers  # pylint: disable=g-import-not-at-top
  from proxnag_jax import engine  # pylint: disable=g-import-not-at-top
  run = helpers.DenseStep(helpers.lenet5_smoke(data_dir), engine.make_mesh())
  before = jax.device_get(run.params)
  new, outs, _ = run.chunk(run.state(), run.idx[:1])
  after = jax.device_get(new.params)
  norms, projs = [], []
  for k, (a, b) in enumerate(zip(jax.tree.leaves(after),
                                 jax.tree.leaves(before))):
    u = (np.asarray(a) - np.asarray(b)).ravel().astype(np.float64)
    d = np.random.default_rng(k).normal(size=u.shape)
    norms.append(float(np.linalg.norm(u)))
    projs.append(float(u @ d / np.sqrt(u.size)))
  return {"process_index": jax.process_index(),
          "device_count": jax.device_count(),
          "loss": float(np.asarray(outs["out"][0]["loss"])[0]),
          "update_norms": norms, "update_projections": projs}


if __name__ == "__main__":
  main()
