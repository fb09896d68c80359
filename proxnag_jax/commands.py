"""The commands built on the loop: dense training and pruning.

* :func:`train` — dense training (``python -m train.train``): writes
  ``metrics.jsonl``, ``trace.jsonl``, ``summary.json``, ``final/``;
* :func:`prune` / :func:`prune_runs` — any pruning method
  (``python -m train.prune``, ``train.sweep``): writes ``summary.json``,
  ``trace.jsonl``, ``report.md``, ``pruned/`` and PNG plots.

Each reads its config once, through :mod:`proxnag_jax.experiment`, into a
:class:`~proxnag_jax.loop.Program` and the runs' states, runs
:func:`~proxnag_jax.loop.run_loop`, and hands the result to
:mod:`proxnag_jax.summary`. :func:`build_prune` gives a pruning run's
pieces without running it (probes and notebooks).

>>> summary = commands.prune(config, "runs/prune90")
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from proxnag_jax import data as data_lib
from proxnag_jax import distributed
from proxnag_jax import engine
from proxnag_jax import experiment
from proxnag_jax import hostio
from proxnag_jax import loop
from proxnag_jax import masks as masks_lib
from proxnag_jax import methods as methods_lib
from proxnag_jax import report as report_lib
from proxnag_jax import summary as summary_lib
from proxnag_jax import surgery
from proxnag_jax.methods import base

Log = Callable[[str], None]


def evaluate_params(model, params, batch_stats, arrays, mean, std, mesh,
                    batch_size=1000) -> dict:
  """Test (and validation) loss/accuracy of plain params (e.g. the dense
  model)."""
  ev = engine.make_eval(model, methods_lib.get_method("dense"), mean=mean,
                        std=std, batch_size=batch_size, mesh=mesh)
  st = base.RunState(step=jnp.int32(0), params=params,
                     batch_stats=batch_stats, opt_state=(), method_state=(),
                     hp={}, key=jax.random.PRNGKey(0))
  out = {k: float(v) for k, v in jax.device_get(
      ev(st, arrays["test_x"], arrays["test_y"])).items()}
  if "val_x" in arrays:
    val = jax.device_get(ev(st, arrays["val_x"], arrays["val_y"]))
    out.update(val_loss=float(val["loss"]), val_accuracy=float(val["accuracy"]))
  return out


# ---------------------------------------------------------------------------
# Dense training: `python -m train.train`.
# ---------------------------------------------------------------------------


def train(config, workdir: str, *, overwrite: bool = False,
          allow_changes: bool = False,
          stop_after_epochs: Optional[int] = None, log: Log = print) -> dict:
  """Trains ``config.model.name`` on ``config.data``; resumable.

  Writes ``workdir/metrics.jsonl`` (one line per epoch), ``trace.jsonl``,
  orbax checkpoints in ``workdir/checkpoints``, ``summary.json`` and the
  final params + BN statistics in ``workdir/final``
  (:func:`proxnag_jax.hostio.load_final`). Re-running with the same config
  resumes from the last checkpoint.

  Returns:
    The summary dict; when stopped early, ``{'stopped_at_epoch': e}``.
  """
  experiment.validate_config(config)
  method = experiment.dense_method(config.train)
  with hostio.workdir_lock(workdir):
    return _train(config, workdir, method, overwrite, allow_changes,
                  stop_after_epochs, log)


def _train(config, workdir, method, overwrite, allow_changes,
           stop_after_epochs, log):
  t0 = time.time()
  mesh = engine.make_mesh()
  ds, model, arrays = experiment.setup(config, mesh, log)   # data errors first
  resuming = bool(distributed.on_primary(
      lambda: experiment.prepare_workdir(workdir, config, overwrite,
                                         allow_changes), "prepare_workdir"))
  spe = len(ds.train_labels) // config.data.batch_size
  params, batch_stats = experiment.init_variables(model, config.seed,
                                                  ds.input_shape)
  ctx = base.Context(prunable=masks_lib.prunable_tree(params),
                     steps_per_epoch=spe,
                     total_steps=int(config.train.num_epochs * spe),
                     schedule=experiment.schedule_fn(config.train, spe))
  hp = experiment.dense_numbers(config.train, method).as_hp()
  state, events = loop.init_run(method, ctx, params, batch_stats, hp,
                                config.seed)
  log(f"model {config.model.name}: {report_lib.num_params(params):,} params; "
      f"{hostio.device_info()}; {spe} steps/epoch")
  program = loop.Program(model, method, ctx, *ds.mean_std,
                         augment=ds.augment and config.data.augment,
                         batch_size=config.data.batch_size, mesh=mesh)
  res = loop.run_loop(
      program, arrays,
      [loop.RunInit(state, config.seed, os.path.join(workdir, "trace.jsonl"),
                    events, os.path.join(workdir, "metrics.jsonl"),
                    tensorboard_dir(config.run, workdir))],
      ckpt_dir=os.path.join(workdir, "checkpoints"), resuming=resuming,
      schedule=experiment.loop_schedule(
          config.run, "train",
          stop_after_epochs * spe if stop_after_epochs else None), log=log)
  if res.stopped_at_step is not None:
    return {"stopped_at_epoch": res.stopped_at_step // spe}
  state, ev = res.states[0], res.evals[0]
  _, variables = method.export_network(state, model)
  # Saved by every process together (orbax); the rest is process 0's.
  hostio.save_tree(os.path.join(workdir, "final"),
                   {"params": variables["params"],
                    "batch_stats": variables.get("batch_stats", {})})
  if not distributed.is_primary():
    distributed.sync("summary")
    return {"process_index": jax.process_index(),
            "test_accuracy": ev["accuracy"], "test_loss": ev["loss"]}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    last = json.loads(f.readlines()[-1])
  summary = summary_lib.write(workdir, summary_lib.dense_summary(
      config, ev=ev, state=state, steps=res.steps,
      final_lr=float(ctx.schedule(config.train.learning_rate)(max(res.steps - 1,
                                                            0))),
      train_loss=last["train_loss"], wall_time_s=res.wall_time_s,
      train_time_s=res.train_time_s,
      images_per_s=res.images_per_s or last.get("images_per_s", 0.0),
      ds=ds), config)
  log(f"done: test accuracy {summary['test_accuracy']:.4f}; "
      f"summary in {workdir}/summary.json ({time.time() - t0:.0f} s)")
  return summary


# ---------------------------------------------------------------------------
# Pruning: `python -m train.prune` and the sweep's cells.
# ---------------------------------------------------------------------------


def load_dense(config, workdir, model, input_shape, log):
  """Params + BN stats of the dense model: from
  ``config.prune.dense_checkpoint`` or by training one in ``workdir/dense``
  (resumable)."""
  path = config.prune.dense_checkpoint
  if not path:
    log("no dense_checkpoint given: training the dense model first "
        f"in {workdir}/dense")
    train(experiment.dense_config(config), os.path.join(workdir, "dense"),
          log=log)
    path = os.path.join(workdir, "dense")
  experiment.check_dense_split(config, path)
  want_p, want_bs = experiment.init_variables(model, config.seed,
                                              input_shape)
  try:
    loaded = hostio.load_final(path)
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
        f"dense checkpoint {path!r} does not match model "
        f"{config.model.name!r} on {config.data.name!r}: its parameter tree "
        "or shapes differ. Train "
        "it with the same model (python -m train.train) or leave "
        "dense_checkpoint empty to train one here.")
  cast = lambda t, ref: jax.tree.map(
      lambda a, r: jnp.asarray(a, r.dtype), t, ref)
  return cast(got["params"], want_p), cast(got["batch_stats"], want_bs), path


def epoch_first_batch(seed: int, n: int, batch_size: int) -> np.ndarray:
  """The indices of the first training batch of a run (SNIP's minibatch)."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), 1000)
  return data_lib.epoch_permutation(jax.random.fold_in(key, 0), n,
                                    batch_size)[0]


def _loss_grad_fn(model, x, y, batch_stats, mean, std):
  def loss(params):
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    logits, _ = model.apply(variables, data_lib.preprocess(x, mean, std),
                            train=True, mutable=["batch_stats"])
    return jnp.mean(engine.cross_entropy(logits, y))
  return jax.grad(loss)


def tensorboard_dir(run, workdir: str):
  """``WORKDIR/tensorboard`` when the run settings ask for TensorBoard
  events."""
  if not run.tensorboard:
    return None
  return os.path.join(workdir, "tensorboard")


def _normalized(model, params, batch_stats, arrays, mean, std, first):
  """The kernels whose output channels feed a normalisation, probed on one
  training batch at ``params`` (None for a model without BatchNorm)."""
  if not batch_stats:
    return None
  x = data_lib.preprocess(arrays["train_x"][first], mean, std)

  def fn(p):
    return model.apply({"params": p, "batch_stats": batch_stats}, x,
                       train=True, mutable=["batch_stats"])[0]
  return masks_lib.normalized_kernels(fn, params)


@dataclasses.dataclass
class PruneSetup:
  """A pruning run (or a vmapped group of them) ready to run."""

  program: loop.Program
  arrays: dict
  runs: list                  # loop.RunInit per run
  ds: data_lib.Dataset
  dense: Optional[list]       # (params, batch_stats, eval, path) per run
  resuming: bool
  dense_of: Callable          # (config, workdir) -> one entry of ``dense``


def build_prune(configs, workdirs, method, *, overwrite=False,
                allow_changes=False, load_dense_first=True,
                log: Log = print) -> PruneSetup:
  """Reads the pruning configs once: data, model, context, the dense
  model, each run's first state. (Vmapped configs share all but
  :data:`~proxnag_jax.experiment.VMAP_PATHS` and the method's numbers.)"""
  configs = [experiment.pruning_config(c) for c in configs]
  c0 = configs[0]
  mesh = engine.make_mesh()
  dcfg = experiment.dense_config(c0)
  ds, model, arrays = experiment.setup(dcfg, mesh, log)     # data errors first
  resuming = all([bool(distributed.on_primary(
      lambda c=c, w=w: experiment.prepare_workdir(w, c, overwrite,
                                                  allow_changes),
      "prepare_workdir")) for c, w in zip(configs, workdirs)])
  mean, std = ds.mean_std
  batch_size = c0.data.batch_size
  spe = len(ds.train_labels) // batch_size
  flt = masks_lib.prunable_filter(c0.prune.exclude)
  template, template_bs = experiment.init_variables(model, c0.seed,
                                                    ds.input_shape)
  prunable = masks_lib.prunable_tree(template, flt)
  if not any(jax.tree.leaves(prunable)):
    raise ValueError("prune.exclude leaves no prunable weights.")
  tvars = {"params": template, "batch_stats": template_bs}
  groups = (surgery.channel_groups(model, tvars)
            if surgery.supports(model) else ())
  n_prunable = base.num_prunable(template, prunable)
  total = experiment.budget_steps(c0, method, spe)
  if method.start == "dense":
    sched = lambda lr: optax.cosine_decay_schedule(lr, max(1, total))
  else:
    sched = experiment.schedule_fn(c0.dense, spe, total / spe)
  costs = {}
  if method.structured and groups:
    layers = report_lib.count_macs(model, tvars, (1,) + tuple(
        ds.input_shape))["layers"]
    costs = {"params": surgery.cost_terms(tvars, groups, "params"),
             "macs": surgery.cost_terms(tvars, groups, "macs", layers)}
  ctx = base.Context(prunable=prunable, steps_per_epoch=spe,
                     total_steps=total, schedule=sched, groups=groups,
                     costs=costs, normalized=_normalized(
                         model, template, template_bs, arrays, mean, std,
                         epoch_first_batch(c0.seed, len(ds.train_labels),
                                           batch_size)))

  def dense_of(c, wd):
    params, bs, path = load_dense(c, wd, model, ds.input_shape, log)
    ev = evaluate_params(model, params, bs, arrays, mean, std, mesh,
                         c.run.eval_batch_size)
    return params, bs, ev, path

  dense = [] if load_dense_first else None
  runs = []
  for c, wd in zip(configs, workdirs):
    if dense is not None:
      dense.append(dense_of(c, wd))
    if method.start == "dense":
      params, bs = dense[-1][:2]
    else:
      params, bs = experiment.init_variables(model, c.seed, ds.input_shape)
    first = epoch_first_batch(c.seed, len(ds.train_labels), batch_size)
    grad_fn = _loss_grad_fn(model, arrays["train_x"][first],
                            arrays["train_y"][first], bs, mean, std)
    hp = experiment.run_numbers(c, method, n_prunable).as_hp()
    state, events = loop.init_run(method, ctx._replace(grad_fn=grad_fn),
                                  params, bs, hp, c.seed)
    runs.append(loop.RunInit(state, c.seed, os.path.join(wd, "trace.jsonl"),
                             events, tensorboard_dir=tensorboard_dir(c.run,
                                                                     wd)))
  program = loop.Program(model, method, ctx, mean, std,
                         augment=ds.augment and c0.data.augment,
                         batch_size=batch_size, mesh=mesh)
  return PruneSetup(program, arrays, runs, ds, dense, resuming, dense_of)


def prune(config, workdir: str, *, overwrite: bool = False,
          allow_changes: bool = False,
          stop_after_steps: Optional[int] = None,
          wait_for_dense: Optional[Callable[[], None]] = None,
          log: Log = print) -> dict:
  """Prunes with ``config.prune.method`` to ``config.prune.target_sparsity``;
  resumable.

  Returns the summary, or ``{'stopped_at_step': s}`` when stopped early.
  ``wait_for_dense``: see :func:`prune_runs`.
  """
  out = prune_runs([config], [workdir], overwrite=overwrite,
                   allow_changes=allow_changes,
                   stop_after_steps=stop_after_steps,
                   wait_for_dense=wait_for_dense, log=log)
  return out[0]


def prune_runs(configs: Sequence, workdirs: Sequence[str], *,
               group_dir: Optional[str] = None, vmap: bool = False,
               overwrite: bool = False, allow_changes: bool = False,
               stop_after_steps: Optional[int] = None,
               wait_for_dense: Optional[Callable[[], None]] = None,
               log: Log = print) -> list[dict]:
  """Runs one or several pruning runs; several as one vmapped program.

  Vmapped runs must share the method and every setting but
  :data:`~proxnag_jax.experiment.VMAP_PATHS` (seed, target sparsity,
  learning rates, lambdas, dense checkpoint); their checkpoints go to
  ``group_dir``.

  ``wait_for_dense``: for a method that starts from scratch, whose dense
  model serves only as the reference of its summary (accuracy, parameter
  and MAC counts), a call that returns once ``prune.dense_checkpoint`` holds a
  finished run: the run trains first and calls it before it loads the dense
  model (a sweep worker trains such a cell while another trains the shared
  dense model). Ignored for methods that start from the dense model.
  """
  configs = [experiment.pruning_config(c) for c in configs]
  methods = [experiment.validate_pruning(c) for c in configs]
  method = methods[0]
  if len(configs) > 1:
    if not vmap:
      raise ValueError("several configs run together only with vmap=True.")
    ref = experiment.static_view(configs[0], method)
    for c in configs[1:]:
      if (c.prune.method != method.name or
          experiment.static_view(c, method) != ref):
        raise ValueError("vmapped runs may differ only in "
                         f"{', '.join(experiment.VMAP_PATHS)} and the "
                         "method's per-run settings "
                         f"({', '.join(method.hparams)}).")
  with contextlib.ExitStack() as stack:
    for d in list(workdirs) + ([group_dir] if group_dir else []):
      stack.enter_context(hostio.workdir_lock(d))
    t0 = time.time()
    later = method.start != "dense" and wait_for_dense is not None
    setup = build_prune(configs, workdirs, method, overwrite=overwrite,
                        allow_changes=allow_changes,
                        load_dense_first=not later, log=log)
    ctx = setup.program.ctx
    spe = ctx.steps_per_epoch
    log(f"{method.name}: {method.description}; up to {ctx.total_steps} "
        f"steps ({ctx.total_steps / spe:.1f} epochs) from {method.start}"
        + (f"; {len(setup.runs)} runs vmapped" if len(setup.runs) > 1
           else ""))
    res = loop.run_loop(
        setup.program, setup.arrays, setup.runs,
        ckpt_dir=os.path.join(group_dir or workdirs[0], "checkpoints"),
        resuming=setup.resuming, vmapped=len(setup.runs) > 1 or vmap,
        schedule=experiment.loop_schedule(configs[0].run, method.name,
                                          stop_after_steps), log=log)
    if res.stopped_at_step is not None:
      return [{"stopped_at_step": res.stopped_at_step}] * len(setup.runs)
    dense = setup.dense
    if later:
      log("waiting for the dense model (the reference of the summary)")
      wait_for_dense()
      dense = [setup.dense_of(c, wd) for c, wd in zip(configs, workdirs)]
    out = []
    for c, wd, state, ev, (dense_params, _, dense_ev, dense_path) in zip(
        configs, workdirs, res.states, res.evals, dense):
      steps = int(state.step)
      extra = {"start": method.start, "description": method.description,
               "dense_checkpoint": dense_path,
               "budget_epochs": c.prune.budget_epochs,
               "total_epochs_with_dense": steps / spe + (
                   c.dense.num_epochs if method.start == "dense" else 0),
               "vmapped_runs": len(setup.runs),
               "images_per_s": res.images_per_s}
      if method.summary:
        extra.update(method.summary(state))
      out.append(summary_lib.prune_summary(
          wd, c, method=method, model=setup.program.model, ds=setup.ds,
          state=state, ev=ev, prunable=ctx.prunable,
          dense_params=dense_params, dense_eval=dense_ev, epochs=steps / spe,
          wall_time_s=(res.wall_time_s if len(setup.runs) == 1
                       else time.time() - t0), log=log, extra=extra))
    return out


__all__ = ["train", "prune", "prune_runs", "build_prune", "PruneSetup",
           "load_dense", "evaluate_params", "epoch_first_batch"]
