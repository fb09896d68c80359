"""The host-side driver of the Prox-NAG pruning loop (``python -m train.prune``).

It owns only control flow and I/O: the loop state is a
:class:`~proxnag_jax.pruning.PruneState` pytree, every change to it is a pure
function (jitted train steps, :func:`pruning.monitor`, phase transitions), and
it is checkpointed with orbax at every phase boundary and every
``checkpoint_every_steps`` steps, so a run killed anywhere resumes mid-round
to the same result.

Outputs in ``workdir``: ``summary.json``, ``trace.jsonl``, ``report.md``,
``pruned/`` (params, batch_stats, masks; ``engine.load_final(DIR, 'pruned')``),
``dense/`` (the dense run, when trained here) and PNG plots.
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from proxnag_jax import engine
from proxnag_jax import masks as masks_lib
from proxnag_jax import pruning
from proxnag_jax import report as report_lib
from proxnag_jax import transforms
from proxnag_jax.pruning import DONE, FINETUNE, PRUNE, PHASE_NAMES


def validate(config) -> None:
  """Fails early on a pruning config that cannot work."""
  t = config.target_sparsity
  if not 0.0 < t < 1.0:
    raise ValueError(f"target_sparsity must be in (0, 1), got {t}.")
  if config.l1_init < 0 or config.l1_step < 0:
    raise ValueError("l1_init and l1_step must be non-negative.")
  if config.l1_init == 0 and config.l1_step == 0:
    raise ValueError("l1_init = l1_step = 0: lambda never grows, so Prox-NAG "
                     "cannot prune; set l1_init > 0 or l1_step > 0.")
  if config.max_rounds < 1:
    raise ValueError("max_rounds must be >= 1.")
  engine.validate_config(config.dense)


def dense_config(config):
  """The dense-training config, sharing data, model and seed with pruning."""
  d = copy.deepcopy(config.dense)
  with d.unlocked():
    for k in ("model", "dataset", "data_dir", "seed", "train_subset",
              "test_subset", "batch_size", "eval_batch_size"):
      d[k] = config[k]
  return d


def load_dense(config, workdir, model, input_shape, log):
  """Params + BN stats of the dense model: from config.dense_checkpoint or
  by training one in ``workdir/dense`` (resumable)."""
  path = config.get("dense_checkpoint", "")
  if not path:
    log("no dense_checkpoint given: training the dense model first "
        f"in {workdir}/dense")
    engine.train(dense_config(config), os.path.join(workdir, "dense"),
                 log=log)
    path = os.path.join(workdir, "dense")
  want_p, want_bs = engine.init_variables(model, config, input_shape)
  try:
    loaded = engine.load_final(path)
  except FileNotFoundError as e:
    raise ValueError(f"dense_checkpoint {path!r} holds no finished run "
                     "(expected DIR/final from train.train).") from e
  got = {"params": loaded["params"], "batch_stats": loaded.get(
      "batch_stats", {}) or {}}
  want = {"params": want_p, "batch_stats": want_bs}
  shapes = lambda t: jax.tree.map(lambda x: tuple(np.shape(x)), t)
  if (jax.tree.structure(got) != jax.tree.structure(want) or
      shapes(got) != shapes(want)):
    raise ValueError(
        f"dense checkpoint {path!r} does not match model {config.model!r} "
        f"on {config.dataset!r}: its parameter tree or shapes differ. Train "
        "it with the same model (python -m train.train) or leave "
        "dense_checkpoint empty to train one here.")
  cast = lambda t, ref: jax.tree.map(
      lambda a, r: jnp.asarray(a, r.dtype), t, ref)
  return cast(got["params"], want_p), cast(got["batch_stats"], want_bs), path


# ---------------------------------------------------------------------------
# Optimizers of the two phases.
# ---------------------------------------------------------------------------


def prune_tx(config, lam, prunable, masks=None):
  parts = []
  if config.prune_weight_decay:
    parts.append(optax.add_decayed_weights(config.prune_weight_decay))
  parts.append(optax.inject_hyperparams(
      transforms.proxnag, static_args=("mask",))(
          learning_rate=config.prune_lr, l1=lam, momentum=config.momentum,
          fista=bool(config.fista), mask=prunable))
  return transforms.with_masks(optax.chain(*parts), masks)


def finetune_tx(config, steps, masks=None):
  sched = optax.cosine_decay_schedule(config.finetune_lr, max(1, steps))
  parts = []
  if config.finetune_weight_decay:
    parts.append(optax.add_decayed_weights(config.finetune_weight_decay))
  parts.append(optax.sgd(sched, momentum=config.momentum, nesterov=True))
  return transforms.with_masks(optax.chain(*parts), masks)


# ---------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------


class _Preempted(Exception):
  """Raised to stop a run right after a checkpoint (``stop_after_steps``)."""


class _Run:
  """Bundles what the phases share (not state: the state is a pytree)."""

  def __init__(self, config, workdir, log):
    self.config, self.workdir, self.log = config, workdir, log
    self.mesh = engine.make_mesh()
    self.ds, self.model, self.arrays = engine.setup(dense_config(config),
                                                    self.mesh, log)
    self.mean, self.std = self.ds.mean_std
    self.spe = len(self.ds.train_labels) // config.batch_size
    self.evaluate = engine.make_eval_fn(
        self.model, mean=self.mean, std=self.std,
        batch_size=config.eval_batch_size, mesh=self.mesh)
    self.trace_path = os.path.join(workdir, "trace.jsonl")
    self.trace_lines = 0
    self.ckpt = engine.Checkpointer(os.path.join(workdir, "checkpoints"))
    self.prunable = None      # tree of bools: which leaves are pruned
    self.flt = None           # the filter that made it
    self.steps = {}
    self.total_steps = 0
    self.progress = None
    self.stop_at = None       # total step at which to stop (preemption)
    self.t0, self.wall_before = time.time(), 0.0
    self.target = None        # round(target * n) / n

  # -- bookkeeping ---------------------------------------------------------

  def trace(self, **rec):
    engine.append_jsonl(self.trace_path, rec)
    self.trace_lines += 1

  def step_fn(self, tx, key):
    if key not in self.steps:
      # No buffer donation: the loop state keeps other references to params.
      self.steps[key] = engine.make_train_step(
          self.model, tx, mean=self.mean, std=self.std,
          augment=self.ds.augment and self.config.augment, mesh=self.mesh,
          donate=False)
    return self.steps[key]

  def test(self, params, batch_stats):
    return self.evaluate(params, batch_stats, self.arrays["test_x"],
                         self.arrays["test_y"])

  def save(self, state, outcome: str = ""):
    meta = {"round": int(state.round), "phase": int(state.phase),
            "phase_step": int(state.phase_step),
            "trace_lines": self.trace_lines, "total_steps": self.total_steps,
            "outcome": outcome,
            "wall_time_s": self.wall_before + time.time() - self.t0}
    self.ckpt.save(self.total_steps, state, meta)

  def maybe_checkpoint(self, state, due: bool):
    """Periodic checkpoint; also where a preempted run stops."""
    if due or (self.stop_at is not None and self.total_steps >= self.stop_at):
      self.save(state)
    if self.stop_at is not None and self.total_steps >= self.stop_at:
      raise _Preempted()

  def epoch_key(self, state, epoch_in_phase):
    uid = 100_000 + int(state.round) * 1_000 + int(state.phase) * 500 + (
        epoch_in_phase)
    return engine.epoch_key(self.config, uid)

  # -- phases --------------------------------------------------------------

  def enter_prune(self, state, lam):
    params = state.train.params
    masks = pruning.masks_from_params(params, self.flt)
    tx = prune_tx(self.config, lam, self.prunable, masks)
    train = engine.TrainState(step=state.train.step, params=params,
                              batch_stats=state.train.batch_stats,
                              opt_state=tx.init(params))
    state = pruning.start_prune(state.replace(
        train=engine.put_replicated(train, self.mesh),
        lam=jnp.float32(lam)))
    self.trace(kind="phase_start", phase="prune", round=int(state.round),
               step=self.total_steps, lam=lam,
               sparsity=float(masks_lib.sparsity(params, self.flt)))
    return state

  def run_prune(self, state):
    c = self.config
    tx = prune_tx(c, float(state.lam), self.prunable)
    step = self.step_fn(tx, "prune")
    mon = jax.jit(lambda s, l, n: pruning.monitor(
        s, l, n, ema=c.loss_ema, warmup_monitors=c.loss_warmup_monitors,
        prunable=self.flt))
    every_ckpt = max(1, c.checkpoint_every_steps // c.monitor_every)
    max_steps = int(c.prune_max_epochs * self.spe)
    window, reason = [], ""

    def on_step(train, m, i):
      nonlocal state, window, reason
      state = state.replace(train=train, phase_step=state.phase_step + 1)
      self.total_steps += 1
      window.append(m["loss"])
      k = int(state.phase_step)
      if k % c.monitor_every == 0 or k >= max_steps:
        loss = jnp.mean(jnp.stack(window))
        window = []
        n_mon = -(-k // c.monitor_every)
        state, s = mon(state, loss, jnp.int32(n_mon))
        s = float(s)
        self.check_loss(float(loss), state)
        reason = pruning.stop_reason(
            state, s, target=self.target - self.half_weight,
            drop_tol=c.drop_tol,
            patience=c.patience, loss_rise=c.loss_rise,
            loss_rise_min=c.loss_rise_min)
        if not reason and k >= max_steps:
          reason = "max_epochs"
        self.trace(kind="monitor", phase="prune", round=int(state.round),
                   step=self.total_steps, lam=float(state.lam),
                   loss=float(loss), accuracy=float(m["accuracy"]),
                   sparsity=s, best_sparsity=float(state.best_sparsity),
                   loss_ema=float(state.loss_ema),
                   loss_ref=float(state.loss_ref), stop=reason)
        self.progress.update(0, round=int(state.round),
                             lam=float(state.lam), sparsity=s,
                             loss=float(loss))
        # Checkpoints only at monitors: the loss window is then empty, so a
        # resumed run makes exactly the same decisions.
        if not reason:
          self.maybe_checkpoint(state, c.checkpoint_every_steps and (
              n_mon % every_ckpt == 0))
      return state.train, bool(reason)

    while not reason:
      k = int(state.phase_step)
      epoch, start = divmod(k, self.spe)
      engine.run_epoch(state.train, step_fn=step, arrays=self.arrays,
                       config=c, epoch=epoch, mesh=self.mesh,
                       progress=self.progress, on_step=on_step, start=start,
                       key=self.epoch_key(state, epoch))
    return self.leave_prune(state, reason)

  def leave_prune(self, state, reason):
    c = self.config
    params = state.best_params
    params, restored = pruning.repair_overshoot(
        params, state.round_start, c.target_sparsity, self.flt)
    bs = state.best_batch_stats
    sp = float(masks_lib.sparsity(params, self.flt))
    ev = self.test(params, bs)
    self.trace(kind="phase_end", phase="prune", round=int(state.round),
               step=self.total_steps, lam=float(state.lam), reason=reason,
               sparsity=sp, best_sparsity=float(state.best_sparsity),
               restored=restored, test_accuracy=ev["accuracy"],
               test_loss=ev["loss"])
    self.log(f"round {int(state.round)}: prune-train stopped ({reason}) at "
             f"sparsity {sp:.4f} (lambda {float(state.lam):.3g}"
             + (f", {restored} weights restored for the exact target"
                if restored else "") + f"); test acc {ev['accuracy']:.4f}")
    masks = pruning.masks_from_params(params, self.flt)
    final = pruning.reached(params, c.target_sparsity, self.flt)
    n_steps = pruning.finetune_steps(c, int(state.round), final, self.spe,
                                     self.total_steps)
    tx = finetune_tx(c, n_steps, masks)
    train = engine.TrainState(step=state.train.step, params=params,
                              batch_stats=bs, opt_state=tx.init(params))
    state = state.replace(train=engine.put_replicated(train, self.mesh),
                          phase=jnp.int32(FINETUNE), phase_step=jnp.int32(0))
    self.trace(kind="phase_start", phase="finetune", round=int(state.round),
               step=self.total_steps, lam=float(state.lam), sparsity=sp,
               epochs=n_steps / self.spe, final=final)
    return state

  def run_finetune(self, state):
    c = self.config
    sp = float(masks_lib.sparsity(state.train.params, self.flt))
    final = pruning.reached(state.train.params, c.target_sparsity, self.flt)
    n_steps = pruning.finetune_steps(
        c, int(state.round), final, self.spe,
        self.total_steps - int(state.phase_step))
    epochs = n_steps / self.spe
    tx = finetune_tx(c, n_steps)
    step = self.step_fn(tx, ("finetune", n_steps))

    def on_step(train, m, i):
      nonlocal state
      state = state.replace(train=train, phase_step=state.phase_step + 1)
      self.total_steps += 1
      k = int(state.phase_step)
      if k % self.spe and k < n_steps:   # else: checkpoint after the eval
        self.maybe_checkpoint(state, c.checkpoint_every_steps and (
            k % c.checkpoint_every_steps == 0))
      return state.train, k >= n_steps

    while int(state.phase_step) < n_steps:
      epoch, start = divmod(int(state.phase_step), self.spe)
      _, m = engine.run_epoch(state.train, step_fn=step, arrays=self.arrays,
                              config=c, epoch=epoch, mesh=self.mesh,
                              progress=self.progress, on_step=on_step,
                              start=start, key=self.epoch_key(state, epoch))
      self.check_loss(m["train_loss"], state)
      ev = self.test(state.train.params, state.train.batch_stats)
      spn = float(masks_lib.sparsity(state.train.params, self.flt))
      self.trace(kind="epoch", phase="finetune", round=int(state.round),
                 step=self.total_steps, epoch=epoch + 1, lam=float(state.lam),
                 loss=m["train_loss"], accuracy=m["train_accuracy"],
                 test_loss=ev["loss"], test_accuracy=ev["accuracy"],
                 sparsity=spn)
      self.log(f"round {int(state.round)} fine-tune epoch {epoch + 1}/"
               f"{epochs:g}: loss {m['train_loss']:.4f} test acc "
               f"{ev['accuracy']:.4f} sparsity {spn:.4f}")
      self.maybe_checkpoint(state, True)
    # Phase end.
    if final:
      return state.replace(phase=jnp.int32(DONE)), "target reached"
    if int(state.round) + 1 >= c.max_rounds:
      self.log(f"target sparsity {c.target_sparsity} not reached in "
               f"{c.max_rounds} rounds (sparsity {sp:.4f}, lambda "
               f"{float(state.lam):.3g}); stopping with this model saved. "
               "Raise l1_init / l1_step or max_rounds.")
      return state.replace(phase=jnp.int32(DONE)), "max_rounds"
    new_round = int(state.round) + 1
    state = state.replace(round=jnp.int32(new_round))
    return self.enter_prune(state, pruning.lam_for_round(c, new_round)), ""

  def check_loss(self, loss, state):
    engine.check_finite(loss, f"in round {int(state.round)} "
                        f"({PHASE_NAMES[int(state.phase)]})", self.ckpt.dir,
                        self.ckpt.latest_step())


def prune(config, workdir: str, *, overwrite: bool = False,
          stop_after_steps: Optional[int] = None,
          log: Callable[[str], None] = print) -> dict:
  """Runs the iterative Prox-NAG pruning loop; resumable. See module doc.

  Args:
    config: see ``configs/proxnag_lenet5_mnist.py``.
    workdir: output directory (re-running the same command resumes).
    overwrite: discard a workdir holding a different config.
    stop_after_steps: stop (as if killed) after this many pruning steps in
      this invocation, right after a checkpoint; for tests.
  """
  t0 = time.time()
  validate(config)
  resuming = engine.prepare_workdir(workdir, config, overwrite)
  run = _Run(config, workdir, log)
  dense_params, dense_bs, dense_path = load_dense(
      config, workdir, run.model, run.ds.input_shape, log)
  run.flt = masks_lib.prunable_filter(config.get("prune_exclude", ()))
  run.prunable = masks_lib.prunable_tree(dense_params, run.flt)
  if not any(jax.tree.leaves(run.prunable)):
    raise ValueError("prune_exclude leaves no prunable weights.")
  run.target = pruning.target_fraction(dense_params, config.target_sparsity,
                                       run.flt)
  run.half_weight = 0.5 / pruning.prunable_count(dense_params, run.flt)
  dense_eval = run.test(dense_params, dense_bs)
  log(f"dense model from {dense_path}: test accuracy "
      f"{dense_eval['accuracy']:.4f}")

  # ---- the loop state: fresh, or restored from the last checkpoint -------
  lam0 = pruning.lam_for_round(config, 0)
  base = engine.TrainState(step=jnp.int32(0), params=dense_params,
                           batch_stats=dense_bs, opt_state=())
  state = pruning.init_state(base, lam0)
  meta = {"wall_time_s": 0.0}
  if resuming and run.ckpt.latest_step() is not None:
    meta = run.ckpt.read_meta()
    template = pruning.init_state(base, lam0)
    if meta["phase"] == PRUNE:
      tx = prune_tx(config, lam0, run.prunable,
                    pruning.masks_from_params(dense_params, run.flt))
    else:
      tx = finetune_tx(config, 1, pruning.masks_from_params(dense_params,
                                                            run.flt))
    template = template.replace(train=template.train.replace(
        opt_state=tx.init(dense_params)))
    state, meta = run.ckpt.restore(template)
    state = engine.put_replicated(state, run.mesh)
    run.total_steps = meta["total_steps"]
    run.trace_lines = meta["trace_lines"]
    _truncate(run.trace_path, run.trace_lines)
    log(f"resuming round {meta['round']} ({PHASE_NAMES[meta['phase']]}) at "
        f"step {meta['phase_step']} of the phase")
  else:
    if os.path.exists(run.trace_path):
      os.remove(run.trace_path)
    run.trace(kind="dense", step=0, sparsity=float(masks_lib.sparsity(
        dense_params, run.flt)), test_accuracy=dense_eval["accuracy"])
    state = run.enter_prune(state, lam0)
    run.save(state)

  wall_before = run.wall_before = meta.get("wall_time_s", 0.0)
  run.t0 = t0
  budget = int(config.max_rounds * (config.prune_max_epochs +
                                 config.finetune_epochs) * run.spe)
  run.progress = engine.Progress(budget, config.batch_size, desc="prune",
                                 every_s=config.log_every_s)
  outcome = meta.get("outcome", "")
  if stop_after_steps:
    run.stop_at = run.total_steps + stop_after_steps
  try:
    while int(state.phase) != DONE:
      if int(state.phase) == PRUNE:
        state = run.run_prune(state)
        run.save(state)
      else:
        state, outcome = run.run_finetune(state)
        run.save(state, outcome)
  except _Preempted:
    run.progress.close()
    run.ckpt.close()
    return {"stopped_at_step": run.total_steps}
  run.progress.close()
  run.ckpt.close()

  # ---- results ------------------------------------------------------------
  return finalize(
      workdir, config, method="proxnag", model=run.model, ds=run.ds,
      params=state.train.params, batch_stats=state.train.batch_stats,
      dense_params=dense_params, dense_accuracy=dense_eval["accuracy"],
      evaluate=run.test, trace_path=run.trace_path,
      epochs=run.total_steps / run.spe,
      wall_time_s=wall_before + time.time() - t0, log=log, prunable=run.flt,
      extra={"reached_target": outcome != "max_rounds",
             "rounds": int(state.round) + 1, "final_l1": float(state.lam),
             "dense_checkpoint": dense_path})


def finalize(workdir, config, *, method, model, ds, params, batch_stats,
             dense_params, dense_accuracy, evaluate, trace_path, epochs,
             wall_time_s, log, extra, prunable=None) -> dict:
  """Writes what every pruning run leaves behind and returns the summary:
  ``summary.json``, ``pruned/`` (params, BN stats, masks), ``report.md`` and
  the PNG plots. Shared by Prox-NAG and the masked-training methods."""
  masks = pruning.masks_from_params(params, prunable)
  ev = evaluate(params, batch_stats)
  rep = masks_lib.sparsity_report(params, prunable=prunable)
  in_shape = (1,) + tuple(ds.input_shape)
  macs = report_lib.count_macs(model, {"params": params, **(
      {"batch_stats": batch_stats} if batch_stats else {})}, in_shape)
  trace = [json.loads(l) for l in open(trace_path)]
  summary = {
      "method": method, "model": config.model, "dataset": config.dataset,
      "seed": config.seed, "target_sparsity": config.target_sparsity,
      "sparsity": rep["sparsity"], "reached_target": True,
      "compression_ratio": rep["compression_ratio"],
      "theoretical_speedup": macs["theoretical_speedup"],
      "test_accuracy": ev["accuracy"], "test_loss": ev["loss"],
      "dense_test_accuracy": dense_accuracy,
      "num_params": rep["num_params"], "num_nonzero": rep["num_nonzero"],
      "prunable_params": rep["prunable_params"],
      "prunable_nonzero": rep["prunable_nonzero"],
      "macs_dense": macs["macs"], "macs_sparse": macs["macs_sparse"],
      "epochs": epochs,
      "pruned_layers": [l["name"] for l in rep["layers"] if l["prunable"]],
      "wall_time_s": wall_time_s,
      **engine.device_info(),
      **extra,
      "config": json.loads(config.to_json_best_effort()),
  }
  engine.write_json(os.path.join(workdir, "summary.json"), summary)
  engine.save_tree(os.path.join(workdir, "pruned"),
                   {"params": params, "batch_stats": batch_stats,
                    "masks": masks})
  write_report(workdir, summary, params, masks, macs, prunable)
  report_lib.plot_trace(trace, os.path.join(workdir, "sparsity_loss.png"))
  report_lib.plot_weight_histograms(dense_params, params, os.path.join(
      workdir, "weight_histograms.png"), prunable)
  report_lib.plot_layer_sparsity(params, os.path.join(
      workdir, "layer_sparsity.png"), prunable=prunable)
  log(f"done: sparsity {summary['sparsity']:.4f}, test accuracy "
      f"{summary['test_accuracy']:.4f} (dense {dense_accuracy:.4f}), "
      f"{summary['compression_ratio']:.1f}x fewer params, "
      f"{summary['theoretical_speedup']:.1f}x fewer MACs; {workdir}/report.md")
  return summary


def _truncate(path, lines):
  if not os.path.exists(path):
    return
  with open(path) as f:
    keep = f.readlines()[:lines]
  with open(path, "w") as f:
    f.writelines(keep)


def write_report(workdir, summary, params, masks, macs, prunable=None):
  s = summary
  lines = [
      f"# {s['method']} pruning: {s['model']} on {s['dataset']}", "",
      f"- target sparsity {s['target_sparsity']:.2%}, reached "
      f"**{s['sparsity']:.2%}** of prunable weights "
      f"({'target reached' if s['reached_target'] else 'TARGET NOT REACHED'})",
      f"- test accuracy **{s['test_accuracy']:.2%}** (dense "
      f"{s['dense_test_accuracy']:.2%})",
      f"- parameters {s['num_params']:,} -> {s['num_nonzero']:,} nonzero: "
      f"compression {s['compression_ratio']:.2f}x",
      f"- MACs per example {s['macs_dense']:,} -> {s['macs_sparse']:,}: "
      f"theoretical speed-up {s['theoretical_speedup']:.2f}x",
      (f"- {s['rounds']} rounds, final lambda {s['final_l1']:.4g}, "
       if "rounds" in s else "- ") +
      f"{s['epochs']:.1f} epochs of pruning, wall time "
      f"{s['wall_time_s']:.0f} s on {s['backend']} "
      f"({s['device_count']} x {s['device_kind']})",
      f"- pruned layers: {', '.join(s['pruned_layers'])}", "",
      "## Per layer", "",
      report_lib.layer_table(params, macs, masks, prunable), "",
      "## Plots", "",
      "![sparsity and loss](sparsity_loss.png)", "",
      "![weight histograms](weight_histograms.png)", "",
      "![layer sparsity](layer_sparsity.png)", ""]
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(lines))
