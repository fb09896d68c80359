"""Inference speed of a pruned run's exported network against its dense one.

  python -m train.speed --run runs/structured/cells/gat_50_seed0 \
      [--dense runs/structured/dense_seed0] [--batch_size 256] [--repeats 20]
  python -m train.speed --run DIR --widths=8,16,256   # any widths instead

Loads the run's network (``loop.load_pruned``: the smaller network of a
structured method) and the dense model it started from (``--dense``, default
the run's ``dense_checkpoint``), times one jitted inference batch of each on
this machine (median of ``--repeats`` after a warm-up, twice alternately, the
faster kept: ``report.measure_speedup``) and prints the result as JSON.
``--widths`` (or ``--block_widths``) times a freshly initialised network of
the same model with those widths instead of the run's.
"""

import json

from absl import app
from absl import flags

from proxnag_jax import engine
from proxnag_jax import loop
from proxnag_jax import models
from proxnag_jax import report
from proxnag_jax import surgery

_RUN = flags.DEFINE_string("run", None, "A finished train.prune workdir.")
_DENSE = flags.DEFINE_string("dense", None, "The dense train.train workdir "
                             "(default: the run's dense_checkpoint).")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Images per timed batch.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per network.")
_WIDTHS = flags.DEFINE_list("widths", None, "Time these widths instead.")
_BLOCK = flags.DEFINE_list("block_widths", None,
                           "CIFAR ResNets: time these block widths instead.")
flags.mark_flag_as_required("run")


def main(argv):
  del argv
  with open(f"{_RUN.value}/summary.json") as f:
    s = json.load(f)
  model, variables = loop.load_pruned(_RUN.value)
  n_cls = s.get("num_classes", 10)
  dense_model = models.get_model(s["model"], n_cls)
  saved = engine.load_final(_DENSE.value or s["dense_checkpoint"])
  dense_vars = {"params": saved["params"]}
  if saved.get("batch_stats"):
    dense_vars["batch_stats"] = saved["batch_stats"]
  in_shape = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1)}.get(
      s["dataset"], (32, 32, 3))
  over = {}
  if _WIDTHS.value:
    over["widths"] = tuple(int(w) for w in _WIDTHS.value)
  if _BLOCK.value:
    over["block_widths"] = tuple(int(w) for w in _BLOCK.value)
  if over:
    import jax  # pylint: disable=g-import-not-at-top
    model = models.get_model(s["model"], n_cls, **over)
    variables = models.init_model(model, jax.random.PRNGKey(0),
                                  (1,) + in_shape)
  out = report.measure_speedup(dense_model, dense_vars, model, variables,
                               in_shape, batch_size=_BATCH.value,
                               repeats=_REPEATS.value)
  out["theoretical_speedup"] = (
      report.count_macs(dense_model, dense_vars, (1,) + in_shape)["macs"] /
      report.count_macs(model, variables, (1,) + in_shape)["macs_sparse"])
  out["architecture"] = surgery.architecture(model)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  app.run(main)
