"""Structured pruning of LeNet-5 (with BatchNorm) on MNIST: whole channels
removed and a physically smaller network exported (issue 13).

  python -m train.prune --config configs/structured_lenet5_mnist.py \
      --workdir runs/gat_lenet5 --config.data.dir=../shared/data \
      --config.prune.method=gat --config.prune.target_sparsity=0.75
  # methods: gat (seed 003), l1_filter, slimming, group_proxnag

``target_sparsity`` is the fraction of the prunable channels removed
(conv1 20 + conv2 50 + fc1 500 = 570); ``summary.json`` reports the
parameters and MACs left, the smaller network's ``architecture`` and the
``measured_speedup`` of its inference on this machine. The model is
``lenet5_bn`` (BatchNorm after conv1, conv2, fc1; network slimming needs
the scales), the same for every method. Budget: 10 epochs after a 10-epoch
dense model (``WORKDIR/dense`` unless ``dense_checkpoint`` is given).
"""

from configs import common
from configs import lenet5_mnist
from configs import proxnag_lenet5_mnist


def get_config(arg: str = ""):
  common.check_variant(arg)
  smoke = arg == "smoke"
  c = proxnag_lenet5_mnist.get_config("smoke" if smoke else "")
  c.model.name = "lenet5_bn"
  c.prune.method = "gat"
  c.prune.target_sparsity = 0.75
  if not smoke:
    c.dense.num_epochs = 10
    c.prune.budget_epochs = 10.0
  else:
    c.prune.budget_epochs = 2.0
    c.group_proxnag.l1_step = 0.05
  return c
