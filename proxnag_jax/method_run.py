"""Masked training driven by a :class:`~proxnag_jax.methods.Method`.

One loop for every baseline (random, magnitude, GMP, L2, SNIP, Sparse
Momentum, DSR): start from the dense checkpoint or from initialisation,
``method.init`` gives the first masks, the optimizer is wrapped with
:func:`~proxnag_jax.transforms.with_masks` (pruned weights stay exactly zero),
and whenever ``method.due(step, epoch_end, ctx)`` says so ``method.update``
returns new masks; the loop then zeroes newly pruned weights, starts grown
ones at zero and resets their optimizer state. The loop never looks inside a
method.

Budget: a method that starts from the dense model trains ``budget_epochs``;
one that starts from scratch trains ``dense.num_epochs + budget_epochs``, the
same total as dense pretraining plus pruning. Checkpoints every epoch;
re-running resumes. Outputs as ``train.prune`` (see ``prune_run.finalize``).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from proxnag_jax import data as data_lib
from proxnag_jax import engine
from proxnag_jax import masks as masks_lib
from proxnag_jax import methods as methods_lib
from proxnag_jax import prune_run
from proxnag_jax import transforms


def epochs_for(method, config) -> int:
  if method.start == "dense":
    return int(config.budget_epochs)
  return int(config.dense.num_epochs + config.budget_epochs)


def validate(config) -> None:
  t = config.target_sparsity
  if not 0.0 < t < 1.0:
    raise ValueError(f"target_sparsity must be in (0, 1), got {t}.")
  if config.budget_epochs < 1:
    raise ValueError("budget_epochs must be >= 1.")
  methods_lib.get_method(config.method, config)
  engine.validate_config(config.dense)


def run(config, workdir: str, *, overwrite: bool = False,
        stop_after_epochs: Optional[int] = None,
        log: Callable[[str], None] = print) -> dict:
  """Trains ``config.method`` to ``config.target_sparsity``; resumable."""
  t0 = time.time()
  validate(config)
  method = methods_lib.get_method(config.method, config)
  resuming = engine.prepare_workdir(workdir, config, overwrite)
  mesh = engine.make_mesh()
  dcfg = prune_run.dense_config(config)
  ds, model, arrays = engine.setup(dcfg, mesh, log)
  mean, std = ds.mean_std
  spe = len(ds.train_labels) // config.batch_size
  num_epochs = epochs_for(method, config)
  total_steps = num_epochs * spe
  evaluate = engine.make_eval_fn(model, mean=mean, std=std,
                                 batch_size=config.eval_batch_size, mesh=mesh)
  test = lambda p, b: evaluate(p, b, arrays["test_x"], arrays["test_y"])

  # ---- starting point ------------------------------------------------------
  init_params, init_bs = engine.init_variables(model, config, ds.input_shape)
  dense_params, dense_bs, dense_path = prune_run.load_dense(
      config, workdir, model, ds.input_shape, log)
  dense_acc = test(dense_params, dense_bs)["accuracy"]
  if method.start == "dense":
    params, bs = dense_params, dense_bs
    lr = config.finetune_lr
    sched = optax.cosine_decay_schedule(lr, total_steps)
  else:
    params, bs = init_params, init_bs
    sched = engine.make_schedule(dcfg, spe, num_epochs)
  flt = masks_lib.prunable_filter(config.get("prune_exclude", ()))
  prunable = masks_lib.prunable_tree(params, flt)

  def loss_on(p, x, y, b):
    variables = {"params": p, **({"batch_stats": b} if b else {})}
    logits, _ = model.apply(variables, data_lib.preprocess(x, mean, std),
                            train=True, mutable=["batch_stats"])
    return jnp.mean(engine.cross_entropy(logits, y))

  first = data_lib.epoch_permutation(engine.epoch_key(config, 0), len(
      ds.train_labels), config.batch_size)[0]
  grad_fn = jax.jit(lambda p: jax.grad(loss_on)(
      p, arrays["train_x"][first], arrays["train_y"][first], bs))
  ctx = methods_lib.Context(target=config.target_sparsity, prunable=prunable,
                            total_steps=total_steps, steps_per_epoch=spe,
                            grad_fn=grad_fn)
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 7)
  masks, mstate = method.init(jax.random.fold_in(key, 0), params, ctx)
  params = masks_lib.apply_masks(params, masks)

  parts = []
  if config.dense.weight_decay:
    parts.append(optax.add_decayed_weights(config.dense.weight_decay))
  parts.append(optax.sgd(sched, momentum=config.momentum, nesterov=True))
  tx = transforms.with_masks(optax.chain(*parts), masks)
  state = engine.put_replicated(engine.create_state(params, bs, tx), mesh)
  step_fn = engine.make_train_step(
      model, tx, mean=mean, std=std, augment=ds.augment and config.augment,
      mesh=mesh, donate=False)

  trace_path = os.path.join(workdir, "trace.jsonl")
  ckpt = engine.Checkpointer(os.path.join(workdir, "checkpoints"))
  start_epoch, wall_before, lines = 0, 0.0, 0
  if resuming and ckpt.latest_step() is not None:
    (state, mstate), meta = ckpt.restore((state, mstate))
    state = engine.put_replicated(state, mesh)
    start_epoch, wall_before, lines = (meta["epoch"], meta["wall_time_s"],
                                       meta["trace_lines"])
    prune_run._truncate(trace_path, lines)  # pylint: disable=protected-access
    log(f"resuming {config.method} at epoch {start_epoch}")
  else:
    if os.path.exists(trace_path):
      os.remove(trace_path)
    engine.append_jsonl(trace_path, {"kind": "phase_start", "phase": "train",
                                     "round": 0, "step": 0,
                                     "sparsity": float(masks_lib.sparsity(
                                         params, flt))})
    lines = 1
  log(f"{method.name}: {method.description}; {num_epochs} epochs from "
      f"{method.start}")

  def apply_update(state, mstate, step):
    nonlocal lines
    old = transforms.get_masks(state.opt_state)
    inner = state.opt_state.inner_state
    new, mstate = method.update(jax.random.fold_in(key, step), step,
                                state.params, old, mstate, inner, ctx)
    grown = jax.tree.map(lambda n, o: n & ~o, new, old)
    params = masks_lib.apply_masks(state.params, new)
    opt = transforms.set_masks(state.opt_state, new)
    opt = opt._replace(inner_state=methods_lib.reset_where(
        opt.inner_state, grown))
    n_grown = int(sum(int(g.sum()) for g in jax.tree.leaves(grown)))
    engine.append_jsonl(trace_path, {
        "kind": "update", "step": step, "grown": n_grown,
        "sparsity": float(masks_lib.sparsity(params, flt)),
        **{k: float(v) for k, v in mstate.items()}})
    lines += 1
    return state.replace(params=params, opt_state=opt), mstate

  progress = engine.Progress((num_epochs - start_epoch) * spe,
                             config.batch_size, desc=method.name,
                             every_s=config.log_every_s)
  for epoch in range(start_epoch, num_epochs):

    def on_step(st, m, i):
      nonlocal mstate
      step = int(st.step)
      # No update after the last step: grown weights would never train.
      if (method.update is not None and step < total_steps and
          method.due(step, i == spe - 1, ctx)):
        st, mstate = apply_update(st, mstate, step)
      return st, False

    state, m = engine.run_epoch(state, step_fn=step_fn, arrays=arrays,
                                config=config, epoch=epoch, mesh=mesh,
                                progress=progress, on_step=on_step)
    engine.check_finite(m["train_loss"], f"in epoch {epoch + 1}", ckpt.dir,
                        ckpt.latest_step())
    ev = test(state.params, state.batch_stats)
    engine.append_jsonl(trace_path, {
        "kind": "epoch", "phase": "train", "round": 0,
        "step": int(state.step), "epoch": epoch + 1,
        "loss": m["train_loss"], "accuracy": m["train_accuracy"],
        "test_accuracy": ev["accuracy"], "test_loss": ev["loss"],
        "sparsity": float(masks_lib.sparsity(state.params, flt))})
    lines += 1
    log(f"{method.name} epoch {epoch + 1}/{num_epochs}: loss "
        f"{m['train_loss']:.4f} test acc {ev['accuracy']:.4f} sparsity "
        f"{float(masks_lib.sparsity(state.params, flt)):.4f}")
    ckpt.save(epoch + 1, (state, mstate), {
        "epoch": epoch + 1, "trace_lines": lines,
        "wall_time_s": wall_before + time.time() - t0})
    if stop_after_epochs and epoch + 1 - start_epoch >= stop_after_epochs \
        and epoch + 1 < num_epochs:
      ckpt.close()
      return {"stopped_at_epoch": epoch + 1}
  progress.close()
  ckpt.close()
  return prune_run.finalize(
      workdir, config, method=method.name, model=model, ds=ds,
      params=state.params, batch_stats=state.batch_stats,
      dense_params=dense_params, dense_accuracy=dense_acc, evaluate=test,
      trace_path=trace_path, epochs=float(num_epochs),
      wall_time_s=wall_before + time.time() - t0, log=log, prunable=flt,
      extra={"start": method.start, "description": method.description,
             "dense_checkpoint": dense_path,
             "total_epochs_with_dense": num_epochs + (
                 config.dense.num_epochs if method.start == "dense" else 0)})

