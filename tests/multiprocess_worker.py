"""One process of a multi-process run on this machine (used by
tests/test_distributed.py), with ``jax.distributed`` over N CPU processes
talking through gloo on localhost:

  python tests/multiprocess_worker.py PORT N ID train WORKDIR DATA_DIR [STOP]
  python tests/multiprocess_worker.py PORT N ID prune WORKDIR DATA_DIR DENSE

``train``: the LeNet-5 smoke config (stopped after STOP epochs if given);
``prune``: Prox-NAG's LeNet-5 smoke config from the dense run DENSE.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from proxnag_jax import distributed  # pylint: disable=g-import-not-at-top


def main():
  port, n, pid, mode, workdir, data_dir = sys.argv[1:7]
  extra = sys.argv[7] if len(sys.argv) > 7 else None
  distributed.initialize(f"localhost:{port}", int(n), int(pid))
  from configs import lenet5_mnist  # pylint: disable=g-import-not-at-top
  from configs import proxnag_lenet5_mnist  # pylint: disable=g-import-not-at-top
  from proxnag_jax import loop  # pylint: disable=g-import-not-at-top
  log = print if distributed.is_primary() else (lambda *_: None)
  if mode == "train":
    c = lenet5_mnist.get_config("smoke")
    c.data_dir = data_dir
    out = loop.train(c, workdir, stop_after_epochs=int(extra) if extra
                     else None, log=log)
  else:
    c = proxnag_lenet5_mnist.get_config("smoke")
    c.data_dir = data_dir
    c.dense_checkpoint = extra
    c.checkpoint_every_steps = 0     # resume is tested on the train mode
    out = loop.prune(c, workdir, log=log)
  import jax  # pylint: disable=g-import-not-at-top
  print("RESULT " + json.dumps({
      "process_index": jax.process_index(),
      **{k: out.get(k) for k in ("test_accuracy", "stopped_at_epoch",
                                 "sparsity")}}), flush=True)


if __name__ == "__main__":
  main()
