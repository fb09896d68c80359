"""One process of a multi-process run on this machine (used by
tests/test_distributed.py): ``python tests/multiprocess_worker.py PORT N ID
WORKDIR DATA_DIR [STOP_AFTER_EPOCHS]`` trains the LeNet-5 smoke config with
``jax.distributed`` over N CPU processes talking through gloo on localhost."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from proxnag_jax import distributed  # pylint: disable=g-import-not-at-top


def main():
  port, n, pid, workdir, data_dir = sys.argv[1:6]
  stop = int(sys.argv[6]) if len(sys.argv) > 6 else None
  distributed.initialize(f"localhost:{port}", int(n), int(pid))
  from configs import lenet5_mnist  # pylint: disable=g-import-not-at-top
  from proxnag_jax import loop  # pylint: disable=g-import-not-at-top
  c = lenet5_mnist.get_config("smoke")
  c.data_dir = data_dir
  out = loop.train(c, workdir, stop_after_epochs=stop,
                   log=print if distributed.is_primary() else (lambda *_: None))
  print("RESULT " + json.dumps({k: out.get(k) for k in (
      "test_accuracy", "stopped_at_epoch", "process_index")}), flush=True)


if __name__ == "__main__":
  main()
