"""ADMM weight pruning (Zhang et al. 2018) and reweighted ADMM (seed 004).

Both start from the trained dense model and split the run's budget in two:

1. **ADMM phase** (the first ``admm_fraction`` of the budget): SGD on
   ``f(W) + rho/2 ||W - Z + U||^2`` over the prunable weights (the penalty is
   :func:`proxnag_jax.transforms.admm_penalty` in the optimizer chain), and every
   ``every_epochs`` a Z-step and a U-step (:func:`proxnag_jax.transforms.admm_step`),
   after which ``rho`` is multiplied by ``rho_growth`` (the progressive
   variant; 1 keeps it fixed).
2. **Hard prune and retrain**: a last Z-step, then the masks keep the
   target count (ADMM: the largest ``|W|``, as the reference implementation;
   reweighted ADMM: the support of ``Z``), the penalty is switched off and
   the masked network is retrained for the rest of the budget.

Each phase has its own cosine learning rate from the run's ``lr``. The two
methods differ in the Z-step:

* ``admm``: ``Z = proj(W + U)``, the projection onto "at most ``k``
  nonzeros": the ``k`` largest ``|W + U|`` over all prunable weights (one
  budget, so the per-layer budgets follow from the weights; Zhang et al. set
  them per layer by hand), or per layer (``scope='layer'``).
* ``rw_admm``: a reweighted soft threshold instead of the hard projection,
  ``Z = sign(v) max(|v| - tau / (|Z_prev| + eps), 0)`` with ``v = W + U``:
  the proximal map of ``tau sum_j alpha_j |z_j|`` with importance weights
  ``alpha_j = 1 / (|Z_prev_j| + eps)`` refreshed from the previous ``Z``
  each round (Candes et al.'s reweighted L1, the reading of seed 004's
  "reweighting mechanism to assign importance to the weights"). ``tau`` is
  not a hyperparameter: each round it is the value that leaves exactly the
  round's number of nonzeros, which follows the cubic schedule of Zhu &
  Gupta from dense to the target over the ADMM rounds, so small weights are
  driven to zero progressively instead of by one abrupt projection. One
  global ``tau``: the per-layer budgets follow from the method.

**Per-layer budgets** (``layer_keep``, or ``allocation_from`` a finished
run): each prunable layer keeps its own count, ``k_l = n_l f_l^gamma`` with
one exponent chosen so the counts sum to the run's target exactly
(:func:`proxnag_jax.masks.power_allocation`: fractions that already meet the
target are used as they are). Then every Z-step, the hard prune and, for
reweighted ADMM, each layer's threshold ``tau_l`` act inside the layer, and
a layer's count follows its own cubic schedule to its own ``k_l``.

**Convergence**: ``rho_growth`` raises rho per Z/U step; ``lr_restart``
restarts the learning rate's cosine in every Z/U period; ``residual_tol``
ends the ADMM phase (and hard-prunes) at the first Z/U step whose residual
``||W - Z|| / ||W||`` is below it, so the retraining gets the rest.

**Staged targets** (``stages``, e.g. ``(0.9873, 0.993)`` before a 0.995
target: progressive ADMM, Ye et al. 2019): the budget is split into
``len(stages) + 1`` equal stages, each an ADMM phase and a hard prune to the
stage's sparsity followed by masked retraining, as above; the next stage
starts from the retrained network under its masks (pruned weights stay zero,
so each stage's masks lie inside the previous ones), with ``U = 0``, ``Z``
projected from ``W`` and ``rho`` back at its first value. Reweighted ADMM's
cubic schedule runs from the previous stage's count to the stage's.

Only the abstract of seed 004 is available; the choices above are ours and
are documented in ``docs/methods.md``.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import optax

from proxnag_jax import hostio
from proxnag_jax import masks as masks_lib
from proxnag_jax import transforms
from proxnag_jax.methods import base
from proxnag_jax.methods import phases
from proxnag_jax.methods.base import Method


def _schedule_points(ctx, admm_fraction: float, every_epochs: float,
                     n_stages: int = 1):
  """``(every, starts, ends)``: the Z/U period in steps and, per stage, its
  first step and the last step of its ADMM phase (static ints; one stage is
  the whole budget)."""
  every = max(1, int(round(every_epochs * ctx.steps_per_epoch)))
  starts = [s * ctx.total_steps // n_stages for s in range(n_stages)]
  bounds = starts[1:] + [ctx.total_steps]
  ends = []
  for a, b in zip(starts, bounds):
    end = a + int(round(admm_fraction * (b - a) / every)) * every
    ends.append(min(max(a + every, end), b - 1))
  return every, starts, ends


def _project_topk(v, prunable, n_keep, scope, target):
  """The ``n_keep`` largest ``|v|`` (global) or the top per layer; zero on
  leaves that are not prunable."""
  scores = jax.tree.map(lambda x: jnp.abs(x).astype(jnp.float32), v)
  keep = base.topk_masks(scores, prunable, n_keep, target, scope)
  return jax.tree.map(lambda x, k, w: jnp.where(k, x, 0.0) if w else
                      jnp.zeros_like(x), v, keep, prunable)


def _layer_rms(tree, prunable):
  """Per prunable leaf, its root mean square (1 elsewhere), as a tree."""
  return jax.tree.map(lambda x, w: jnp.sqrt(jnp.mean(jnp.square(
      x.astype(jnp.float32))) + 1e-30) if w else jnp.float32(1.0),
                      tree, prunable)


def _reweighted(v, z_prev, prunable, n_keep, eps, relative=False):
  """Reweighted soft threshold leaving exactly ``n_keep`` nonzeros (the
  largest ``|v| (|z_prev| + eps)``); returns ``(z, keep_masks)``.

  With ``relative`` every leaf is measured in units of its own RMS (of
  ``v`` and of ``z_prev``) before the one global threshold, so a layer of
  small weights (a wide fc layer) is not emptied for being small; the
  shrunk values are scaled back.
  """
  if relative:
    sv, sz = _layer_rms(v, prunable), _layer_rms(z_prev, prunable)
  else:
    ones = jax.tree.map(lambda _: jnp.float32(1.0), v)
    sv, sz = ones, ones
  vr = jax.tree.map(lambda x, a: x / a, v, sv)
  zr = jax.tree.map(lambda x, a: x / a, z_prev, sz)
  scores = jax.tree.map(lambda x, z: (jnp.abs(x) * (jnp.abs(z) + eps)).astype(
      jnp.float32), vr, zr)
  keep = base.global_topk_masks(scores, prunable, n_keep)
  which = jax.tree.leaves(prunable)
  flat = masks_lib.concat_selected(jax.tree.leaves(scores), which)
  kflat = masks_lib.concat_selected(jax.tree.leaves(keep), which)
  # tau: the largest score that is not kept (0 when all are kept).
  tau = jnp.max(jnp.where(kflat, -jnp.inf, flat), initial=0.0)
  tau = jnp.maximum(tau, 0.0)
  z = jax.tree.map(
      lambda x, zp, a, k, w: jnp.where(k, a * transforms.reweighted_shrink(
          x, zp, tau, eps), 0.0) if w else jnp.zeros_like(x),
      vr, zr, sv, keep, prunable)
  return z, keep


def kept_fractions_of_run(workdir: str) -> dict:
  """``{leaf name: kept fraction}`` of a finished pruning run: the
  allocation a less extreme run arrived at, for ``allocation_from``. Read
  from its ``summary.json`` (``layer_kept`` / ``layer_params``, so a
  committed run's summary is enough) or else its exported masks
  (``workdir/pruned``)."""
  path = os.path.join(workdir, "summary.json")
  if os.path.exists(path):
    with open(path) as f:
      s = json.load(f)
    if s.get("layer_kept") and s.get("layer_params"):
      return {k: v / s["layer_params"][k] for k, v in s["layer_kept"].items()}
  try:
    saved = hostio.load_final(workdir, "pruned")
  except FileNotFoundError:
    raise ValueError(f"allocation_from={workdir!r} holds no finished pruning "
                     "run (expected DIR/summary.json with layer_kept, or "
                     "DIR/pruned, from train.prune).") from None
  masks = saved["masks"]
  which = masks_lib.prunable_tree(saved["params"])
  names = masks_lib.prunable_names(saved["params"], which)
  leaves = base.prunable_leaves(masks, which)
  return {k: float(jnp.mean(jnp.asarray(m, jnp.float32)))
          for k, m in zip(names, leaves)}


def _layer_cubic(counts, start, frac):
  """Per layer, the kept count at schedule point ``frac`` of a cubic from
  ``start`` counts (``frac = 0``; the layer sizes: dense) to ``counts``
  (``frac = 1``)."""
  n = jnp.asarray(start, jnp.float32)
  z = n - counts.astype(jnp.float32)
  return (n - jnp.floor(z * (1.0 - (1.0 - frac) ** 3) + 0.5)).astype(
      jnp.int32)


def _reweighted_layers(v, z_prev, prunable, counts, eps):
  """The reweighted soft threshold inside each layer: layer ``i`` keeps
  exactly ``counts[i]`` nonzeros (its largest ``|v| (|z_prev| + eps)``) with
  its own ``tau_i``; returns ``(z, keep_masks)``."""
  scores = jax.tree.map(lambda x, z: (jnp.abs(x) * (jnp.abs(z) + eps)).astype(
      jnp.float32), v, z_prev)
  keep = masks_lib.layer_counts_topk_masks(scores, prunable, counts)

  def shrink(x, zp, sc, k, w):
    if not w:
      return jnp.zeros_like(x)
    tau = jnp.maximum(jnp.max(jnp.where(k, -jnp.inf, sc), initial=0.0), 0.0)
    return jnp.where(k, transforms.reweighted_shrink(x, zp, tau, eps), 0.0)

  z = jax.tree.map(shrink, v, z_prev, scores, keep, prunable)
  return z, keep


def _admm_method(name: str, *, rho: float, rho_growth: float,
                 admm_fraction: float, every_epochs: float, scope: str,
                 eps: float, description: str, relative: bool = False,
                 layer_keep=(), allocation_from: str = "",
                 lr_restart: bool = False,
                 residual_tol: float = 0.0, stages=()) -> Method:
  if not rho > 0:
    raise ValueError(f"{name}: rho must be positive, got {rho}.")
  if not rho_growth >= 1.0:
    raise ValueError(f"{name}: rho_growth must be >= 1, got {rho_growth}.")
  if not 0.0 < admm_fraction < 1.0:
    raise ValueError(f"{name}: admm_fraction must be in (0, 1) (the rest of "
                     f"the budget retrains), got {admm_fraction}.")
  if not every_epochs > 0:
    raise ValueError(f"{name}: every_epochs must be positive.")
  if scope not in ("global", "layer"):
    raise ValueError(f"{name}: scope must be 'global' or 'layer', got "
                     f"{scope!r}.")
  if not eps > 0:
    raise ValueError(f"{name}: eps must be positive, got {eps}.")
  if not residual_tol >= 0:
    raise ValueError(f"{name}: residual_tol must be >= 0, got "
                     f"{residual_tol}.")
  stages = tuple(float(x) for x in (stages or ()))
  if any(not 0 < x < 1 for x in stages) or list(stages) != sorted(
      set(stages)):
    raise ValueError(f"{name}: stages must be increasing sparsities in "
                     f"(0, 1) below the run's target, got {stages}.")
  n_stages = len(stages) + 1
  layer_keep = dict(layer_keep or {})
  if layer_keep and allocation_from:
    raise ValueError(f"{name}: give layer_keep or allocation_from, not both.")
  if allocation_from:
    layer_keep = kept_fractions_of_run(allocation_from)
  budgeted = bool(layer_keep)
  reweighted = name == "rw_admm"

  def tx(hp, ctx):
    # The learning rate is injected: update sets it step by step (the ADMM
    # phase may end early, see residual_tol).
    return transforms.with_masks(optax.chain(
        transforms.admm_penalty(hp["rho"], mask=ctx.prunable),
        optax.add_decayed_weights(hp["weight_decay"]),
        optax.inject_hyperparams(optax.sgd, static_args=("nesterov",))(
            learning_rate=hp["lr"], momentum=hp["momentum"], nesterov=True)))

  def points(ctx):
    return _schedule_points(ctx, admm_fraction, every_epochs, n_stages)

  def n_rounds(ctx):
    """Z/U rounds of each stage's ADMM phase (the fewest of the stages)."""
    every, starts, ends = points(ctx)
    return min((e - a) // every for a, e in zip(starts, ends))

  def stage_of(ctx, t):
    """The stage step ``t`` belongs to (a stage's first step: the new one)."""
    _, starts, _ = points(ctx)
    return sum((t >= a).astype(jnp.int32) for a in starts[1:])

  def stage_keep(params, hp, ctx, stage):
    """Prunable weights kept at the end of ``stage`` (-1: all of them)."""
    n = base.num_prunable(params, ctx.prunable)
    fixed = jnp.asarray([n] + [n - int(round(x * n)) for x in stages],
                        jnp.int32)
    return jnp.where(stage >= n_stages - 1, base.n_keep(params, hp, ctx),
                     fixed[jnp.clip(stage + 1, 0, n_stages - 1)])

  def stage_target(hp, stage):
    fixed = jnp.asarray(stages + (0.0,), jnp.float32)
    return jnp.where(stage >= n_stages - 1, hp["target"], fixed[stage])

  def budget(params, ctx, n_keep):
    """Per-layer kept counts of the budget (traceable in ``n_keep``)."""
    fracs, sizes = masks_lib.layer_budget_fractions(layer_keep, params,
                                                   ctx.prunable, name)
    return masks_lib.power_allocation(fracs, sizes, n_keep), sizes

  def round_frac(ctx, stage, r):
    every, starts, ends = points(ctx)
    rounds = jnp.asarray([(e - a) // every for a, e in zip(starts, ends)],
                         jnp.float32)
    return jnp.clip(r.astype(jnp.float32) / rounds[stage], 0.0, 1.0)

  def z_step(state, ctx, r):
    """The Z projection of round ``r`` (1..R; 0: a stage's start) of the
    current stage: ADMM onto the stage's count; reweighted ADMM onto the
    cubic schedule from the previous stage's count to this one's."""
    stage = state.method_state["stage"]
    hp = state.hp
    keep_end = stage_keep(state.params, hp, ctx, stage)
    keep_start = stage_keep(state.params, hp, ctx, stage - 1)
    frac = round_frac(ctx, stage, r)
    if budgeted:
      counts, sizes = budget(state.params, ctx, keep_end)
      if reweighted:
        start = jnp.where(stage > 0, budget(state.params, ctx, keep_start)[0],
                          jnp.asarray(sizes, jnp.int32))
        counts = _layer_cubic(counts, start, frac)

      def project_budget(v, st):
        if reweighted:
          return _reweighted_layers(v, st.z, ctx.prunable, counts, eps)[0]
        keep = masks_lib.layer_counts_topk_masks(jax.tree.map(
            lambda x: jnp.abs(x).astype(jnp.float32), v), ctx.prunable,
                                                 counts)
        return jax.tree.map(lambda x, k, w: jnp.where(k, x, 0.0) if w else
                            jnp.zeros_like(x), v, keep, ctx.prunable)
      return project_budget
    if reweighted:
      drop = (keep_start - keep_end).astype(jnp.float32)
      n_keep = keep_start - jnp.floor(
          drop * (1.0 - (1.0 - frac) ** 3) + 0.5).astype(jnp.int32)
    else:
      n_keep = keep_end
    target = stage_target(hp, stage)

    def project(v, st):
      if reweighted:
        return _reweighted(v, st.z, ctx.prunable, n_keep, eps, relative)[0]
      return _project_topk(v, ctx.prunable, n_keep, scope, target)

    return project

  def stats(state, ctx):
    st = transforms.admm_state(state.opt_state)
    which = jax.tree.leaves(ctx.prunable)
    w = masks_lib.concat_selected(jax.tree.leaves(state.params), which)
    z = masks_lib.concat_selected(jax.tree.leaves(st.z), which)
    res = jnp.linalg.norm(w - z) / jnp.maximum(jnp.linalg.norm(w), 1e-12)
    z_sp = jnp.mean((z == 0).astype(jnp.float32))
    return st.rho, res, z_sp

  def check(params, hp, ctx):
    """A budget that empties a layer is refused."""
    if n_rounds(ctx) < 1:
      raise ValueError(f"{name}: the ADMM phase ({admm_fraction:.0%} of the "
                       f"budget{' of a stage' if stages else ''}) is shorter "
                       f"than one Z/U period ({every_epochs} epochs); raise "
                       "budget_epochs or lower every_epochs.")
    if stages and not stages[-1] < float(hp["target"]):
      raise ValueError(f"{name}: stages {stages} must end below the run's "
                       f"target sparsity {float(hp['target'])}.")
    if budgeted:
      n = base.num_prunable(params, ctx.prunable)
      counts, _ = budget(params, ctx, n - int(hp["n_zero"]))
      masks_lib.check_layer_budget(counts, params, ctx.prunable,
                                   hp["target"], name)
      return
    if scope != "layer":
      return
    target = float(hp["target"])
    for (path, p), w in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                            jax.tree.leaves(ctx.prunable)):
      if w and p.size - round(target * p.size) < 1:
        raise ValueError(
            f"{name}: scope='layer' at sparsity {target} keeps no weight of "
            f"{masks_lib.path_name(path)} ({p.size} weights); use "
            "scope='global' or a lower target.")

  def lr_at(state, ctx, step, end):
    """The learning rate of the update after ``step`` steps, in the current
    stage: a cosine over its ADMM phase (restarted every Z/U period with
    ``lr_restart``), then again over its retraining."""
    every, starts, ends = points(ctx)
    stage = state.method_state["stage"]
    start = jnp.asarray(starts, jnp.int32)[stage]
    end0 = jnp.asarray(ends, jnp.int32)[stage]
    stop = jnp.asarray(starts[1:] + [ctx.total_steps], jnp.int32)[stage]
    lr = state.hp["lr"]
    admm_lr = (phases.cosine_from(lr, (step - start) % every, every)
               if lr_restart else
               phases.cosine_from(lr, step - start, end0 - start))
    return jnp.where(step < end, admm_lr,
                     phases.cosine_from(lr, step - end, stop - end))

  def begin_stage(state, ctx, stage):
    """A stage's start: Z projected from W (the masks of the previous stage
    hold), U = 0, rho back to its first value, the round counter at 0."""
    _, _, ends = points(ctx)
    st = transforms.admm_state(state.opt_state)
    st = st._replace(u=jax.tree.map(jnp.zeros_like, st.u),
                     rho=jnp.asarray(state.hp["rho"], st.rho.dtype))
    state = state.replace(method_state={
        **state.method_state, "stage": jnp.int32(stage), "round": jnp.int32(0),
        "pruned": jnp.bool_(False),
        "end": jnp.asarray(ends, jnp.int32)[stage]})
    z0 = z_step(state, ctx, jnp.int32(0))(state.params, st)
    return state.replace(opt_state=transforms.set_admm_state(
        state.opt_state, st._replace(z=z0)))

  def init(key, state, ctx, tx):
    del key
    state = base.start_with_masks(state, base.ones_like_masks(state.params),
                                  tx)
    # Z_0 = proj(W_0) (reweighted: the first round of the schedule keeps
    # everything, so Z_0 = W_0), U_0 = 0.
    state = state.replace(method_state={
        "round": jnp.int32(0), "pruned": jnp.bool_(False),
        "end": jnp.int32(0), "stage": jnp.int32(0)})
    state = begin_stage(state, ctx, jnp.int32(0))
    rho_, res, z_sp = stats(state, ctx)
    return state, {"admm": base.event(
        True, round=jnp.int32(0), rho=rho_, residual=res, z_sparsity=z_sp,
        stage=jnp.int32(0))}

  def update(key, state, metrics, ctx):
    del key, metrics
    every, starts, _ = points(ctx)
    t = state.step
    stage = stage_of(ctx, t)
    if stages:
      state = jax.lax.cond(stage != state.method_state["stage"],
                           lambda s: begin_stage(s, ctx, stage),
                           lambda s: s, state)
    start = jnp.asarray(starts, jnp.int32)[stage]
    due = base.every(t, every, offset=start) & (
        t <= state.method_state["end"])

    def zu(state):
      r = state.method_state["round"] + 1
      st = transforms.admm_state(state.opt_state)
      opt = transforms.admm_step(state.opt_state, state.params,
                                 z_step(state, ctx, r),
                                 rho=st.rho * rho_growth)
      state = state.replace(opt_state=opt, method_state={
          **state.method_state, "round": r})
      return state

    state = jax.lax.cond(due, zu, lambda s: s, state)
    rho_, res, z_sp = stats(state, ctx)
    if residual_tol > 0:
      # Converged: the hard prune now, the retraining gets the rest.
      stop = due & (res < residual_tol) & ~state.method_state["pruned"]
      ms = state.method_state
      state = state.replace(method_state={
          **ms, "end": jnp.where(stop, t, ms["end"]).astype(jnp.int32)})
    last = (t == state.method_state["end"]) & ~state.method_state["pruned"]

    def hard_prune(state):
      # ADMM: the magnitude of W, as the reference (KaiqiZhang/admm-pruning
      # prunes W by magnitude after the ADMM phase). Reweighted ADMM: the
      # support of the last Z (exactly the target count of nonzeros but
      # for exact-zero ties, hence top-k masks of |Z|). Inside the previous
      # stage's masks: the pruned weights are zero in W and Z.
      st = transforms.admm_state(state.opt_state)
      scores = jax.tree.map(lambda w, z: jnp.abs(z if reweighted else w)
                            .astype(jnp.float32), state.params, st.z)
      n_keep = stage_keep(state.params, state.hp, ctx, stage)
      if budgeted:
        counts, _ = budget(state.params, ctx, n_keep)
        keep = masks_lib.layer_counts_topk_masks(scores, ctx.prunable,
                                                 counts)
      else:
        keep = base.topk_masks(scores, ctx.prunable, n_keep,
                               stage_target(state.hp, stage), scope)
      keep = jax.tree.map(jnp.logical_and, keep,
                          base.masks_of(state.opt_state))
      state, _ = base.change_masks(state, keep)
      opt = transforms.set_admm_state(state.opt_state, st._replace(
          rho=jnp.float32(0.0)))
      return state.replace(opt_state=opt, method_state={
          **state.method_state, "pruned": jnp.bool_(True)})

    state = jax.lax.cond(last, hard_prune, lambda s: s, state)
    ms = state.method_state
    state = phases.set_lr_where(state, jnp.bool_(True),
                                lr_at(state, ctx, t, ms["end"]))
    return state, {
        "admm": base.event(due, round=ms["round"], rho=rho_, residual=res,
                           z_sparsity=z_sp, stage=ms["stage"]),
        "hard_prune": base.event(last, sparsity=base.sparsity_of(
            state.params, ctx.prunable), residual=res, stage=ms["stage"])}

  def summary(state):
    return {"admm_rounds": int(state.method_state["round"]),
            "admm_end_step": int(state.method_state["end"]),
            "layer_budget": budgeted, "admm_stages": list(stages)}

  return Method(name, init=init, tx=tx, update=update, summary=summary,
                check=check, start="dense", hparams={"rho": float(rho)},
                description=description)


def admm(rho: float = 7e-3, rho_growth: float = 1.0,
         admm_fraction: float = 0.5, every_epochs: float = 1.0,
         scope: str = "global", layer_keep=None, allocation_from: str = "",
         lr_restart: bool = False, residual_tol: float = 0.0,
         stages=()) -> Method:
  """ADMM pruning (Zhang et al. 2018): hard projection onto the target's
  top-k each Z-step; see the module docstring.

  Defaults from the reference (KaiqiZhang/admm-pruning, its Caffe LeNet-5
  solver, SGD with momentum as here): ``rho = 0.007`` on every layer, fixed
  (``rho_growth = 1.3`` is Ye et al.'s progressive variant). The reference
  updates Z/U every 8,000 iterations (about 8.5 epochs) for 20 rounds;
  ``every_epochs`` scales that to short budgets. It sets per-layer ratios by
  hand (LeNet-5: 80 / 92 / 99.1 / 93% for 71x); ``scope='global'`` lets them
  follow from the weights instead, ``layer_keep`` gives them
  (``{'conv1': 0.2, 'conv2': 0.08, 'fc1': 0.009, 'fc2': 0.07}``: kept
  fractions, or counts, per layer, taken to the run's target by
  :func:`proxnag_jax.masks.power_allocation`), ``allocation_from`` takes them
  from a finished run's masks. ``lr_restart``, ``residual_tol``,
  ``stages``: see the module docstring.

  >>> m = admm(layer_keep={"conv1": 100, "conv2": 2000, "fc1": 3600,
  ...                      "fc2": 350}, residual_tol=0.05)
  >>> staged = admm(rho_growth=1.3, stages=(0.9873, 0.993))  # then the target
  """
  if layer_keep and scope != "global":
    raise ValueError("admm: layer_keep sets every layer's count; drop "
                     "scope='layer'.")
  return _admm_method(
      "admm", rho=rho, rho_growth=rho_growth, admm_fraction=admm_fraction,
      every_epochs=every_epochs, scope=scope, eps=1.0,
      layer_keep=layer_keep, allocation_from=allocation_from,
      lr_restart=lr_restart, residual_tol=residual_tol, stages=stages,
      description=f"ADMM (Zhang et al. 2018){_stages_note(stages)}: rho "
      f"{rho:g} (x{rho_growth:g} "
      f"per Z/U step every {every_epochs:g} epochs), "
      f"{'per-layer' if layer_keep or allocation_from else scope} top-k "
      f"projection{_budget_note(layer_keep, allocation_from)}, "
      f"{admm_fraction:.0%} of the budget, then hard prune and "
      "masked retraining")


def rw_admm(rho: float = 7e-3, rho_growth: float = 1.0,
            admm_fraction: float = 0.5, every_epochs: float = 1.0,
            eps: float = 1e-3, relative: bool = False, layer_keep=None,
            allocation_from: str = "", lr_restart: bool = False,
            residual_tol: float = 0.0, stages=()) -> Method:
  """Reweighted ADMM (seed 004, as read from its abstract): a reweighted
  soft threshold with importance ``1 / (|Z_prev| + eps)`` each Z-step, the
  kept count following a cubic schedule to the target; see the module
  docstring. ``relative``: weights compared to their layer's RMS before the
  one global threshold (one global threshold on raw magnitudes emptied
  LeNet-5's fc1 at 356x: docs/results.md). ``layer_keep`` /
  ``allocation_from``: per-layer budgets, each layer with its own threshold
  and schedule (see :func:`admm`; ``relative`` is then moot). ``stages``:
  see the module docstring."""
  if relative and (layer_keep or allocation_from):
    raise ValueError("rw_admm: relative=True scales layers for one global "
                     "threshold; with a per-layer budget every layer has "
                     "its own threshold, so drop relative.")
  return _admm_method(
      "rw_admm", rho=rho, rho_growth=rho_growth, admm_fraction=admm_fraction,
      every_epochs=every_epochs, scope="global", eps=eps, relative=relative,
      layer_keep=layer_keep, allocation_from=allocation_from,
      lr_restart=lr_restart, residual_tol=residual_tol, stages=stages,
      description=f"reweighted ADMM{' (layer-relative)' if relative else ''}"
      f"{_stages_note(stages)}: rho {rho:g} (x{rho_growth:g} per Z/U "
      f"step every {every_epochs:g} epochs), reweighted soft threshold "
      f"(eps {eps:g}) to a cubic nonzero schedule"
      f"{_budget_note(layer_keep, allocation_from)} over "
      f"{admm_fraction:.0%} of the budget, then hard prune and masked "
      "retraining")


def _stages_note(stages) -> str:
  if not stages:
    return ""
  return (" in " + str(len(stages) + 1) + " stages (sparsity "
          + " -> ".join(f"{x:g}" for x in stages) + " -> the target)")


def _budget_note(layer_keep, allocation_from) -> str:
  if allocation_from:
    return f" with per-layer budgets from {allocation_from}"
  if layer_keep:
    return " with per-layer budgets " + ", ".join(
        f"{k} {v:g}" for k, v in dict(layer_keep).items())
  return ""


__all__ = ["admm", "rw_admm"]
