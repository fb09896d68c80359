"""Where a pruning run's accuracy goes at the end of its prune phase.

  python -m train.probe_prune_phase --workdir DIR [--method proxnag]
      [--sparsity 0.9] [--seed 0] [--steps 300,320] [--data_dir ../shared/data]
      [--dense checkpoints/resnet20_cifar10_dense10/dense_seed0]
      [--set proxnag.ramp_end=0.1 ...]

Runs one cell of ``configs/sweep_resnet20_cpu.py:session_rates`` (ResNet-20 /
CIFAR-10, the ``:session`` budget) up to each step in ``--steps`` (resuming
from its own checkpoints), and at each evaluates on 5,000 training images
(no augmentation) and the validation split:

* ``w``: the params the optimizer hands back (where gradients are taken);
* ``w~``: the sparse iterate (what is evaluated and pruned);
* either with the running BatchNorm statistics, and with statistics
  recomputed at those weights (``recal``: 50 training batches);
* the dense model pruned by global magnitude to the run's sparsity, and the
  dense weights under the run's mask (``dense|mask``), both recalibrated.

Prints one table and writes ``DIR/probe.json``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from configs import sweep_resnet20_cpu
from proxnag_jax import commands
from proxnag_jax import data as data_lib
from proxnag_jax import engine
from proxnag_jax import experiment
from proxnag_jax import hostio
from proxnag_jax import sweep
from proxnag_jax import transforms
from proxnag_jax.methods import base


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--method", default="proxnag")
  ap.add_argument("--sparsity", type=float, default=0.9)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--steps", default="300,320")
  ap.add_argument("--data_dir", default="../shared/data")
  ap.add_argument("--dense",
                  default="checkpoints/resnet20_cifar10_dense10/dense_seed0")
  ap.add_argument("--set", nargs="*", default=[])
  ap.add_argument("--finetune", type=int, default=0,
                  help="also fine-tune each start point this many steps")
  args = ap.parse_args()

  cfg = sweep_resnet20_cpu.get_config("session_rates")
  cfg.data.dir = args.data_dir
  c = sweep.cell_config(cfg, args.method, args.sparsity, args.seed,
                        args.dense)
  for kv in args.set:
    k, v = kv.split("=", 1)
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = type(node[last])(ast.literal_eval(v))
  steps = [int(s) for s in args.steps.split(",")]
  os.makedirs(args.workdir, exist_ok=True)

  done = 0
  for s in steps:
    if s > done:
      commands.prune(c, args.workdir, allow_changes=True,
                 stop_after_steps=s - done)
      done = s
  setup = commands.build_prune([c], [args.workdir],
                                experiment.validate_pruning(c),
                                allow_changes=True)
  prog, arrays = setup.program, setup.arrays
  model, mesh, mean, std = prog.model, prog.mesh, prog.mean, prog.std
  template = setup.runs[0].state
  prunable = prog.ctx.prunable
  ckpt = hostio.Checkpointer(os.path.join(args.workdir, "checkpoints"))

  n_sub = 5000
  rng = np.random.default_rng(0)
  sub = np.sort(rng.choice(arrays["train_y"].shape[0], n_sub, replace=False))
  train_sub = {"test_x": arrays["train_x"][sub],
               "test_y": arrays["train_y"][sub]}

  def ev(params, bs):
    tr = commands.evaluate_params(model, params, bs, train_sub, mean, std, mesh)
    va = commands.evaluate_params(model, params, bs,
                              {"test_x": arrays["val_x"],
                               "test_y": arrays["val_y"]}, mean, std, mesh)
    return {"train_loss": tr["loss"], "train_acc": tr["accuracy"],
            "val_loss": va["loss"], "val_acc": va["accuracy"]}

  @jax.jit
  def bn_step(params, bs, x):
    _, upd = model.apply({"params": params, "batch_stats": bs},
                         data_lib.preprocess(x, mean, std), train=True,
                         mutable=["batch_stats"])
    return upd["batch_stats"]

  def recal(params, bs, n=50, bsz=128):
    order = np.random.default_rng(1).permutation(arrays["train_y"].shape[0])
    for i in range(n):
      bs = bn_step(params, bs, arrays["train_x"][order[i * bsz:(i + 1) * bsz]])
    return bs

  def finetune(params, bs, mask, steps):
    """``steps`` of masked Nesterov SGD (lr 0.01, wd 5e-4, augmented
    batches of 128, the same batches for every start point)."""
    import optax  # pylint: disable=g-import-not-at-top
    tx = transforms.with_masks(optax.chain(
        optax.add_decayed_weights(5e-4), optax.sgd(0.01, 0.9, nesterov=True)))
    opt = transforms.set_masks(tx.init(params), jax.tree.map(
        lambda k, pr: k if pr else jnp.ones(k.shape, bool), mask, prunable))

    @jax.jit
    def step(params, bs, opt, x, y, key):
      x = data_lib.augment(key, data_lib.preprocess(x, mean, std))

      def loss(p):
        logits, upd = model.apply({"params": p, "batch_stats": bs}, x,
                                  train=True, mutable=["batch_stats"])
        return jnp.mean(engine.cross_entropy(logits, y)), upd["batch_stats"]
      (l, nbs), g = jax.value_and_grad(loss, has_aux=True)(params)
      u, opt = tx.update(g, opt, params)
      return jax.tree.map(jnp.add, params, u), nbs, opt, l

    order = np.random.default_rng(2).permutation(arrays["train_y"].shape[0])
    losses = []
    for i in range(steps):
      b = order[i * 128:(i + 1) * 128]
      params, bs, opt, l = step(params, bs, opt, arrays["train_x"][b],
                                arrays["train_y"][b], jax.random.PRNGKey(i))
      losses.append(float(l))
    return params, bs, losses

  def zeros(p):
    return float(base.count_zeros(p, prunable)) / base.num_prunable(
        p, prunable)

  rows = {}
  for s in steps:
    st, _ = ckpt.restore(template, step=s)
    w, bs = st.params, st.batch_stats
    try:
      ws = transforms.sparse_params(st.opt_state)
    except ValueError:       # a method without a Prox-NAG state
      ws = w
    phase = st.method_state.get("phase") if isinstance(
        st.method_state, dict) else None
    r = {"phase": None if phase is None else int(phase),
         "zeros_w": zeros(w), "zeros_w~": zeros(ws)}
    r["w"] = ev(w, bs)
    r["w~"] = ev(ws, bs)
    r["w recal"] = ev(w, recal(w, bs))
    r["w~ recal"] = ev(ws, recal(ws, bs))
    m = base.masks_from_params(ws, prunable)
    rows[s] = r
    rows[s]["_mask"] = m
    rows[s]["_ws"], rows[s]["_bs"] = ws, bs
  # The dense model it started from.
  d0 = template.params
  bs0 = template.batch_stats
  out = {"dense": ev(d0, bs0)}
  target = args.sparsity
  flat = jnp.concatenate([jnp.abs(x).ravel() for x in
                          base.prunable_leaves(d0, prunable)])
  thr = jnp.sort(flat)[int(round(target * flat.size)) - 1]
  mag = jax.tree.map(lambda p, pr: jnp.where(jnp.abs(p) > thr, p, 0.0)
                     if pr else p, d0, prunable)
  out["magnitude"] = ev(mag, bs0)
  out["magnitude recal"] = ev(mag, recal(mag, bs0))
  if args.finetune:
    mmask = base.masks_from_params(mag, prunable)
    p1, b1, ls = finetune(mag, recal(mag, bs0), mmask, args.finetune)
    out["ft magnitude"] = {**ev(p1, b1),
                           "loss_first10": float(np.mean(ls[:10])),
                           "loss_last10": float(np.mean(ls[-10:]))}
  for s, r in rows.items():
    m = r.pop("_mask")
    if not args.finetune:
      r.pop("_ws"), r.pop("_bs")
    dm = jax.tree.map(lambda p, k, pr: p * k if pr else p, d0, m, prunable)
    r["dense|mask recal"] = ev(dm, recal(dm, bs0))
    if args.finetune:
      for name, (p0, b0) in {"ft w~": (r.pop("_ws"), r.pop("_bs")),
                             "ft dense|mask": (dm, recal(dm, bs0))}.items():
        p1, b1, ls = finetune(p0, b0, m, args.finetune)
        r[name] = {**ev(p1, b1), "loss_first10": float(np.mean(ls[:10])),
                   "loss_last10": float(np.mean(ls[-10:]))}
    r["mask overlap with magnitude"] = float(
        sum(jnp.sum((k != 0) & (jnp.abs(p) > thr)) for k, p, pr in zip(
            jax.tree.leaves(m), jax.tree.leaves(d0),
            jax.tree.leaves(prunable)) if pr) /
        max(1, sum(jnp.sum(k != 0) for k, pr in zip(
            jax.tree.leaves(m), jax.tree.leaves(prunable)) if pr)))
    out[f"step {s}"] = r
  print(json.dumps(out, indent=1))
  with open(os.path.join(args.workdir, "probe.json"), "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
