"""Prox-NAG pruning (core paper, section 3, Fig. 5), as a Method.

Two schedules for lambda, chosen with ``schedule``:

``'target'`` (default): **a lambda that tracks the target.** One prune-train
phase from the trained dense model, then one fine-tune:

1. **prune-train** with Prox-NAG. The target sparsity follows a linear ramp,
   ``s*(k) = target * min(1, k / K)``, ``K = ramp_end * budget``. lambda
   starts where the weights alone would follow the ramp
   (``lam_start='auto'``): with momentum ``beta`` an unresisted weight drifts
   to zero by ``eta * lambda / (1 - beta)`` per step, so the weights below the
   target quantile ``q`` of ``|w|`` (in the threshold's units) reach zero by
   step ``K`` at ``lambda_0 = (1 - beta) q / (eta K)`` (the loss gradient
   resists, so the controller raises it from there; ``lam_start='l1_init'``
   starts at ``l1_init`` instead). Every ``monitor_every`` steps a
   controller compares the sparsity ``s`` of the sparse iterate ``w~`` (its
   mean over the monitor interval: weights at the threshold flicker between
   zero and not) with the ramp and changes lambda multiplicatively,
   ``lambda <- lambda * exp(clip(lam_gain * (s* - s), -lam_max_change,
   lam_max_change))`` (a bounded integral controller on log lambda; from
   ``lambda_0`` it does not have to wind up). A controller on the rate
   ``ds/dk`` was tried and dropped: the mean sparsity of LeNet-5-BN moves by
   up to 10x the ramp's step between monitors, so its rate is mostly noise.
   Zeros are counted every step; the
   phase ends on the step the count reaches ``round(target * n)``, and the
   weights that step zeroed beyond the count get their previous values back
   (the largest first), so the mask holds **exactly** the target count. The
   phase also ends at ``deadline * budget`` steps, or when a guard sees a
   collapse (the loss EMA above ``loss_rise`` times, and ``loss_rise_min``
   above, its value at the phase's first monitor; or the training accuracy
   EMA ``acc_drop`` below it); then the smallest remaining weights of ``w~``
   are pruned (magnitude) up to the count, and the summary says so
   (``topped_up``, ``stop``).
2. **fine-tune** with the mask fixed for the rest of the budget, Nesterov SGD
   with a cosine learning rate from ``finetune_lr``, starting from the
   weights (and BN statistics) of the phase's start on the support found
   (``finetune_from='phase_start'``, this schedule's default: the prune phase
   chooses the weights that stay, as the relaxed lasso's L1 path chooses a
   support for an unpenalised refit; its shrunk weights recover more slowly,
   docs/methods.md), or from the sparse iterate (``'iterate'``).

``'paper'``: **the paper's procedure** (open-loop lambda, local-maximum
stop): rounds ``r = 0, 1, ...`` of

1. **prune-train** at ``lambda_r = l1_init + r * l1_step`` under the mask of
   the weights alive at the round's start (pruned weights stay exactly zero,
   so sparsity never goes down between rounds). The sparse iterate ``w~`` is
   monitored every ``monitor_every`` steps; prune-training stops at

   * the target sparsity (an exact count of zeros), or
   * a local maximum of the sparsity of ``w~`` (it fell ``drop_tol`` below
     its best value, or made no new maximum for ``patience`` monitors), or
   * a collapse (the guards above, with their reference at the round's
     first monitor), or
   * ``prune_max_epochs``, or
   * the budget: only the final fine-tune's reserve
     (``final_finetune_epochs``, at least one step) is left of the run's
     ``ctx.total_steps``;

   and keeps ``w~`` (and the BN statistics) from the sparsest monitor: the
   paper found the best model at the local maximum.
2. **overshoot repair**: if that is sparser than the target, the weights
   zeroed *in this round* with the largest magnitude at the round's start get
   their round-start values back until exactly ``round(target * n)`` prunable
   weights are zero.
3. **fine-tune** with the mask fixed (from the kept ``w~``: ``finetune_from``
   is ``'iterate'`` by default here), ``finetune_epochs + r *
   finetune_growth`` epochs (the last round at least
   ``final_finetune_epochs``; with ``fill_budget`` the last fine-tune takes
   what is left of the run's budget), with a cosine learning rate from
   ``finetune_lr``;
4. if the target is not reached, ``lambda_{r+1} = l1_init + (r + 1) l1_step``
   and go to 1; stop after ``max_rounds``.

**Scale-invariant step** (``scale_invariant=True``, both schedules): kernels
whose output channels feed a normalisation (``ctx.normalized``, found from
the model by :func:`proxnag_jax.masks.normalized_kernels`) take the
per-filter relative threshold ``eta * lambda * rms(w_c)`` with the filter's
norm kept (:func:`proxnag_jax.transforms.prox_l1`); in such a network the
other kernels (the classifier) take the fixed threshold ``eta * lambda *
rms(w at the phase start)``, so one unitless lambda serves all. A network
without normalisation keeps the paper's absolute threshold ``eta * lambda``
everywhere. docs/methods.md gives the reasoning.

**Trimmed penalty** (``penalty='trimmed'``, both schedules): the proximal
step of ``lambda * (sum of all but the k largest |w_i|)`` with ``k = n -
round(target * n)`` (:func:`proxnag_jax.transforms.prox_l1`'s ``keep``):
the weights that would survive the prune (ranked in their thresholds'
units) are not shrunk, so the network keeps its accuracy while lambda
drives the others to exact zeros; ``'l1'`` (default) is the paper's L1.

**Budget.** The run never takes more than ``ctx.total_steps`` steps (the
config's ``budget_epochs``). A paper-mode run whose rounds reach the reserve
before the target goes straight to its final fine-tune and ends with outcome
``'budget exhausted'`` and ``reached_target = False``.

**Trace.** Every monitor records the loss, accuracy, sparsity, lambda and,
per prunable kernel, the mean ratio of its filters' norms to their norms at
the phase start (``fnorm/<layer>``): a shrinking network is visible in any
run.

All of it is method state plus a pure ``update`` run every step under jit:
phase changes are ``lax.cond`` on device values. The optimizer is one
transformation for both phases, ``with_masks(inject_hyperparams(chain(
add_decayed_weights(wd), proxnag(lr, l1, momentum))))``: fine-tuning is
Prox-NAG with ``l1 = 0``, which is exactly Nesterov SGD, and each phase starts
from a fresh optimizer state (``w~_0 = w``), as a re-initialised optimizer
would.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import optax

from proxnag_jax import masks as masks_lib
from proxnag_jax import prox as prox_lib
from proxnag_jax import transforms
from proxnag_jax.methods import base
from proxnag_jax.methods import phases
from proxnag_jax.methods.base import Method

PRUNE, FINETUNE, DONE = phases.PRUNE, phases.FINETUNE, phases.DONE
PHASE_NAMES = phases.PHASE_NAMES
STOP_NAMES = {0: "", 1: "target", 2: "local_max", 3: "loss_rise",
              4: "max_epochs", 5: "budget", 6: "acc_drop", 7: "deadline"}
# The stop reasons of the collapse guards (collapse_guards): a summary's
# ``collapse_stops`` counts the prune phases they ended.
COLLAPSE_STOPS = (3, 6)
OUTCOME_NAMES = {0: "running", 1: "target reached", 2: "max_rounds",
                 3: "budget exhausted"}
SCHEDULES = ("target", "paper")
RAMPS = ("linear", "cubic")
FINETUNE_FROM = ("auto", "iterate", "phase_start")


def ramp_fraction(x, shape: str = "linear"):
  """The fraction of the target sparsity the ramp asks for at ``x`` (the
  phase step over the ramp's length, clipped to [0, 1]): ``'linear'``
  ``x``; ``'cubic'`` ``1 - (1 - x)^3`` (Zhu & Gupta 2017: fast while the
  weights being removed are small, slow near the target)."""
  x = jnp.clip(jnp.asarray(x, jnp.float32), 0.0, 1.0)
  if shape == "linear":
    return x
  if shape == "cubic":
    return 1.0 - (1.0 - x) ** 3
  raise ValueError(f"unknown ramp shape {shape!r}; use one of {RAMPS}.")


def layer_names(prunable) -> list:
  """Names (``'conv1/kernel'``) of the prunable leaves, in tree order."""
  flat = jax.tree_util.tree_flatten_with_path(prunable)[0]
  return [masks_lib.path_name(path) for path, w in flat if w]


def filter_norm_ratios(params, start, prunable) -> dict:
  """``{'fnorm/<layer>': mean over the layer's output filters of
  ||w_c|| / ||w_c at start||}`` for every prunable kernel (traceable);
  filters that were all zero at the start are left out of the mean."""
  out = {}
  names = layer_names(prunable)
  for name, p, s0 in zip(names, base.prunable_leaves(params, prunable),
                         base.prunable_leaves(start, prunable)):
    if p.ndim < 2:
      continue
    n = prox_lib.group_norms(p)
    n0 = prox_lib.group_norms(s0)
    ok = n0 > 0
    ratio = jnp.where(ok, n / jnp.where(ok, n0, 1.0), 0.0)
    out[f"fnorm/{name}"] = ratio.sum() / jnp.maximum(ok.sum(), 1)
  return out


def magnitude_top_up(params, n_zero, prunable):
  """Zeroes the smallest nonzero prunable weights of ``params`` until
  exactly ``n_zero`` are zero (nothing if there are already as many):
  keeps the global top ``n - n_zero`` of ``|w|``, zeros ranking last;
  traceable. Returns ``(params, number_zeroed)``."""
  before = base.count_zeros(params, prunable)
  keep = base.global_topk_masks(
      jax.tree.map(jnp.abs, params), prunable,
      base.num_prunable(params, prunable) - n_zero)
  out = masks_lib.apply_masks(params, keep)
  return out, base.count_zeros(out, prunable) - before


def repair_overshoot(params, round_start, n_zero, prunable):
  """Restores the largest weights zeroed this round until exactly ``n_zero``
  prunable weights are zero (traceable).

  Among prunable weights that are zero in ``params`` but were nonzero in
  ``round_start``, the ones with the largest ``|round_start|`` get their
  round-start values back. Returns ``(params, number_restored)``.
  """
  excess = jnp.maximum(base.count_zeros(params, prunable) - n_zero, 0)
  treedef = jax.tree.structure(prunable)
  leaves = treedef.flatten_up_to(params)
  start = treedef.flatten_up_to(round_start)
  which = jax.tree.leaves(prunable)
  cand = masks_lib.concat_selected(
      [jnp.where((p == 0) & (s != 0), jnp.abs(s), -1.0)
       for p, s in zip(leaves, start)], which)
  restore = masks_lib.topk_mask(cand, excess) & (cand >= 0)
  back = masks_lib.split_selected(restore, leaves, which,
                                  lambda x: jnp.zeros(x.shape, bool))
  out = [jnp.where(r, s, p) for r, s, p in zip(back, start, leaves)]
  return jax.tree.unflatten(treedef, out), restore.sum(dtype=jnp.int32)


def collapse_guards(ms: dict, loss, acc, first, *, decay: float,
                    loss_rise: float, loss_rise_min: float,
                    acc_drop: float):
  """One monitor of Prox-NAG's collapse guards: ``(ms, reason)``.

  ``loss``, ``acc``: the training loss and accuracy averaged over the
  monitor's window of steps; ``first``: whether this is the prune phase's
  first monitor, whose window means become the references. With EMAs
  ``e_k = decay * e_(k-1) + (1 - decay) * x_k`` (``e_1 = x_1``), reason 3
  (``loss_rise``) when ``e_loss > loss_rise * ref_loss`` and
  ``e_loss - ref_loss > loss_rise_min``, reason 6 (``acc_drop``) when
  ``e_acc < ref_acc - acc_drop``, else 0; a factor of 0 switches its guard
  off. ``ms`` carries ``loss_ema``, ``acc_ema``, ``loss_ref``, ``acc_ref``
  (NaN before the first monitor). Pure and jittable.

  >>> nan = float("nan")
  >>> ms = dict(loss_ema=nan, acc_ema=nan, loss_ref=nan, acc_ref=nan)
  >>> for k, (l, a) in enumerate([(1.05, 0.64), (1.92, 0.30), (2.11, 0.22)]):
  ...   ms, why = collapse_guards(ms, l, a, k == 0, decay=0.5, loss_rise=4.0,
  ...                             loss_rise_min=0.3, acc_drop=0.25)
  >>> int(why)    # the accuracy EMA fell 0.25 below the first window's
  6
  """
  ema = jnp.where(jnp.isnan(ms["loss_ema"]), loss,
                  decay * ms["loss_ema"] + (1 - decay) * loss)
  aema = jnp.where(jnp.isnan(ms["acc_ema"]), acc,
                   decay * ms["acc_ema"] + (1 - decay) * acc)
  ref = jnp.where(first, loss, ms["loss_ref"])
  aref = jnp.where(first, acc, ms["acc_ref"])
  rise = ((loss_rise > 0) & (ema > loss_rise * ref) &
          (ema - ref > loss_rise_min))
  drop = (acc_drop > 0) & (aema < aref - acc_drop)
  reason = jnp.select([rise, drop], [3, 6], 0)
  return {**ms, "loss_ema": ema, "acc_ema": aema, "loss_ref": ref,
          "acc_ref": aref}, reason


def proxnag(schedule: str = "target", scale_invariant: bool = True,
            threshold: str = "start", penalty: str = "l1",
            l1_init: float = 1e-3, l1_step: float = 5e-4,
            max_rounds: int = 10, prune_lr: float = 0.01,
            prune_weight_decay: float = 0.0, fista: bool = False,
            ramp_end: float = 0.2, deadline: float = 0.3,
            ramp: str = "linear", finetune_from: str = "auto",
            lam_start: str = "auto",
            lam_gain: float = 10.0, lam_max_change: float = 0.15,
            prune_max_epochs: float = 2.0, monitor_every: int = 10,
            drop_tol: float = 0.002, patience: int = 15,
            loss_ema: float = 0.5, loss_rise: float = 4.0,
            loss_rise_min: float = 0.3, acc_drop: float = 0.25,
            finetune_lr: float = 0.01, finetune_weight_decay: float = 5e-4,
            finetune_epochs: float = 1.0, finetune_growth: float = 1.0,
            final_finetune_epochs: float = 4.0,
            fill_budget: bool = False, layer_keep=None) -> Method:
  """Prox-NAG pruning; see the module docstring for both schedules.

  ``penalty``: ``'l1'`` or ``'trimmed'`` (see the module docstring).
  ``finetune_from``: ``'phase_start'``, ``'iterate'`` or ``'auto'`` (the
  first under ``schedule='target'``, the second, the paper's, under
  ``'paper'``). ``ramp``: ``'linear'`` or ``'cubic'``.
  Settings of ``schedule='target'``: ``lam_start`` (``'auto'`` or
  ``'l1_init'``: lambda's start, which the controller moves), ``ramp_end``
  and ``deadline`` (fractions of the budget), ``lam_gain``,
  ``lam_max_change``. Of ``'paper'``: ``l1_init``,
  ``l1_step``, ``max_rounds``, ``prune_max_epochs``, ``drop_tol``,
  ``patience``, ``finetune_epochs``, ``finetune_growth``,
  ``final_finetune_epochs``, ``fill_budget``. Both: ``scale_invariant``,
  ``prune_lr``, ``monitor_every``, the guards (``loss_ema``, ``loss_rise``,
  ``loss_rise_min``, ``acc_drop``; 0 switches one off), ``finetune_lr`` and
  the weight decays.

  ``layer_keep`` (``schedule='target'`` only): a per-layer budget,
  ``{layer: kept fraction or count}`` naming every prunable layer, taken to
  the run's target count by one exponent
  (:func:`proxnag_jax.masks.power_allocation`, as ADMM's budgets). The
  penalty is then trimmed inside each layer (each layer's ``k_l`` largest
  weights exempt, :func:`proxnag_jax.transforms.prox_l1`'s ``layer_keep``),
  so a layer never falls below its count and the controller's lambda drives
  the rest to zero: the phase ends with every layer at exactly ``k_l``
  (``penalty`` is not read; a deadline top-up is per layer).

  Per-run (vmappable) settings: ``l1_init``, ``l1_step``, ``prune_lr``,
  ``finetune_lr``, ``prune_weight_decay``, ``finetune_weight_decay``.
  """
  if penalty not in ("l1", "trimmed"):
    raise ValueError(f"proxnag: penalty must be 'l1' or 'trimmed', got "
                     f"{penalty!r}.")
  if threshold not in ("rms", "start"):
    raise ValueError(f"proxnag: threshold must be 'rms' or 'start', got "
                     f"{threshold!r}.")
  if finetune_from not in FINETUNE_FROM:
    raise ValueError(f"proxnag: finetune_from must be one of "
                     f"{FINETUNE_FROM}, got {finetune_from!r}.")
  if finetune_from == "auto":
    finetune_from = "phase_start" if schedule == "target" else "iterate"
  rewind = finetune_from == "phase_start"
  if ramp not in RAMPS:
    raise ValueError(f"proxnag: ramp must be one of {RAMPS}, got {ramp!r}.")
  if lam_start not in ("auto", "l1_init"):
    raise ValueError(f"proxnag: lam_start must be 'auto' or 'l1_init', got "
                     f"{lam_start!r}.")
  if schedule not in SCHEDULES:
    raise ValueError(f"proxnag: schedule must be one of {SCHEDULES}, got "
                     f"{schedule!r}.")
  target_mode = schedule == "target"
  layer_keep = dict(layer_keep or {})
  if layer_keep and not target_mode:
    raise ValueError("proxnag: layer_keep (a per-layer budget) needs "
                     "schedule='target'.")
  if l1_init < 0 or l1_step < 0:
    raise ValueError("proxnag: l1_init and l1_step must be non-negative.")
  if target_mode and lam_start == "l1_init" and l1_init <= 0:
    raise ValueError("proxnag: schedule='target' needs l1_init > 0 (the "
                     "controller scales lambda multiplicatively).")
  if not target_mode and l1_init == 0 and l1_step == 0:
    raise ValueError("proxnag: l1_init = l1_step = 0: lambda never grows, so "
                     "Prox-NAG cannot prune; set l1_init > 0 or l1_step > 0.")
  if max_rounds < 1:
    raise ValueError("proxnag: max_rounds must be >= 1.")
  if monitor_every < 1:
    raise ValueError("proxnag: monitor_every must be >= 1.")
  if prune_max_epochs <= 0:
    raise ValueError("proxnag: prune_max_epochs must be positive.")
  if not 0 < ramp_end <= deadline < 1:
    raise ValueError(f"proxnag: need 0 < ramp_end ({ramp_end}) <= deadline "
                     f"({deadline}) < 1 (fractions of the budget: the "
                     "sparsity ramp ends at ramp_end, pruning at deadline, "
                     "and the rest is fine-tuning).")
  if lam_max_change <= 0:
    raise ValueError("proxnag: lam_max_change must be positive.")
  if acc_drop >= 1:
    raise ValueError("proxnag: acc_drop is a drop of training accuracy "
                     "(a fraction in [0, 1); 0 switches the guard off).")
  if not 0 <= loss_ema < 1:
    raise ValueError(f"proxnag: loss_ema is the guards' EMA decay per "
                     f"monitor, in [0, 1); got {loss_ema}.")

  def normalized(ctx):
    if not scale_invariant or ctx.normalized is None:
      return None
    return jax.tree.map(lambda w, n: bool(w and n), ctx.prunable,
                        ctx.normalized)

  def rms_scaled(ctx):
    """In a network with normalised kernels and ``threshold='rms'``, the
    other prunable kernels' thresholds in units of their rms at the phase
    start (one unitless lambda for all); None in a network without
    normalisation, or with ``threshold='start'`` (lambda in weight units
    everywhere)."""
    norm = normalized(ctx)
    if (threshold != "rms" or norm is None or
        not any(jax.tree.leaves(norm))):
      return None
    return jax.tree.map(lambda w, n: bool(w and not n), ctx.prunable, norm)

  def threshold_units(params, ctx):
    """``|w|`` of every prunable weight in the units its threshold is in at
    the phase start (flat, concatenated; :func:`transforms.threshold_units`:
    per filter rms for normalised kernels under ``threshold='rms'``, the
    kernel's rms for ``rms_scaled`` ones, weight units otherwise; under
    ``'start'`` a filter is at its reference norm at the start)."""
    norm, rmss = normalized(ctx), rms_scaled(ctx)
    out = []
    leaves = base.prunable_leaves(params, ctx.prunable)
    norms = (base.prunable_leaves(norm, ctx.prunable) if norm is not None
             else [False] * len(leaves))
    rms = (base.prunable_leaves(rmss, ctx.prunable) if rmss is not None
           else [False] * len(leaves))
    for p, n, r in zip(leaves, norms, rms):
      a = jnp.abs(p).astype(jnp.float32)
      scale = jnp.sqrt(jnp.mean(jnp.square(a))) if r else jnp.float32(1.0)
      n = bool(n) and threshold == "rms"
      out.append(transforms.threshold_units(
          p, n, jnp.where(scale > 0, scale, 1.0), None, False).ravel())
    return jnp.concatenate(out)

  def start_lambda(params, hp, ctx):
    """lambda at the start of the target schedule's prune phase."""
    if not target_mode or lam_start == "l1_init":
      return jnp.asarray(hp["l1_init"], jnp.float32)
    q = jnp.quantile(threshold_units(params, ctx),
                     jnp.asarray(hp["target"], jnp.float32))
    beta, k = jnp.asarray(hp["momentum"], jnp.float32), ramp_steps(ctx)
    # Distance an unresisted weight drifts in k steps, per unit eta*lambda:
    # sum_j (1 - beta^j) / (1 - beta) (the momentum builds up).
    drift = (k - beta * (1 - beta ** k) / (1 - beta)) / (1 - beta)
    lam = q / (hp["prune_lr"] * jnp.maximum(drift, 1.0))
    return jnp.maximum(lam, 1e-12).astype(jnp.float32)

  def layer_counts(params, hp, ctx):
    """The per-layer budget's kept counts at the run's target (traceable
    in ``hp``), one per prunable leaf in tree order."""
    fracs, sizes = masks_lib.layer_budget_fractions(layer_keep, params,
                                                   ctx.prunable, "proxnag")
    return masks_lib.power_allocation(fracs, sizes,
                                      sum(sizes) - hp["n_zero"])

  def keep_tree(params, hp, ctx):
    """The counts laid out as ``params`` (None off the prunable leaves)."""
    counts = iter(list(layer_counts(params, hp, ctx)))
    return jax.tree.map(lambda p, w: next(counts) if w else None, params,
                        ctx.prunable)

  def check(params, hp, ctx):
    """A per-layer budget that empties a layer is refused."""
    if not layer_keep:
      return
    masks_lib.check_layer_budget(layer_counts(params, hp, ctx), params,
                                 ctx.prunable, hp["target"], "proxnag")

  def tx(hp, ctx):
    trimmed = None
    if penalty == "trimmed" and not layer_keep:
      trimmed = lambda n: n - hp["n_zero"]

    def chain(learning_rate, l1, weight_decay):
      return optax.chain(
          optax.add_decayed_weights(weight_decay),
          transforms.proxnag(learning_rate, l1, hp["momentum"], fista=fista,
                             mask=ctx.prunable, normalized=normalized(ctx),
                             rms_scaled=rms_scaled(ctx),
                             normalized_reference=(
                                 "rms" if threshold == "rms" else "init"),
                             keep=trimmed,
                             layer_keep=((lambda p: keep_tree(p, hp, ctx))
                                         if layer_keep else None)))
    return transforms.with_masks(optax.inject_hyperparams(chain)(
        learning_rate=hp["prune_lr"], l1=hp["l1_init"],
        weight_decay=hp["prune_weight_decay"]))

  def fresh_opt(hp, ctx, params, lr, l1, wd):
    masks = base.masks_from_params(params, ctx.prunable)
    opt = transforms.set_masks(tx(hp, ctx).init(params), masks)
    return transforms.set_hyperparams(opt, learning_rate=lr, l1=l1,
                                      weight_decay=wd)

  def max_prune_steps(ctx):
    if target_mode:
      return max(1, int(round(deadline * ctx.total_steps)))
    return max(1, int(round(prune_max_epochs * ctx.steps_per_epoch)))

  def ramp_steps(ctx):
    return max(1, int(round(ramp_end * ctx.total_steps)))

  def reserve_steps(ctx):
    """Steps kept back for the final fine-tune (at least one)."""
    if target_mode:
      return ctx.total_steps - max_prune_steps(ctx)
    return max(1, int(round(final_finetune_epochs * ctx.steps_per_epoch)))

  def check_budget(ctx):
    if target_mode:
      if max_prune_steps(ctx) >= ctx.total_steps:
        raise ValueError(
            f"proxnag: the budget ({ctx.total_steps} steps) leaves no step "
            f"for fine-tuning after the deadline ({deadline} of it): raise "
            "budget_epochs or lower proxnag.deadline.")
      return
    if reserve_steps(ctx) >= ctx.total_steps:
      raise ValueError(
          f"proxnag: final_finetune_epochs={final_finetune_epochs} "
          f"({reserve_steps(ctx)} steps) leaves nothing of the budget "
          f"({ctx.total_steps} steps, {ctx.total_steps / ctx.steps_per_epoch:g}"
          " epochs) for pruning: raise budget_epochs or lower "
          "proxnag.final_finetune_epochs.")

  def over_budget(state, ctx):
    return state.step >= ctx.total_steps - reserve_steps(ctx)

  def finetune_len(ctx, round_, final, steps_done):
    left = ctx.total_steps - steps_done
    if target_mode:
      return jnp.maximum(left, 1).astype(jnp.int32)
    spe = ctx.steps_per_epoch
    e = finetune_epochs + round_.astype(jnp.float32) * finetune_growth
    e = jnp.where(final, jnp.maximum(e, final_finetune_epochs), e)
    n = jnp.maximum(1, jnp.round(e * spe).astype(jnp.int32))
    if fill_budget:
      n = jnp.where(final, left, n)
    # The final fine-tune takes at most what is left; an intermediate one
    # leaves the reserve plus a step for the next prune-train.
    return jnp.where(final, jnp.minimum(n, left),
                     jnp.clip(left - reserve_steps(ctx) - 1, 1, n))

  def prune_phase_state(state, round_, lam):
    """Method state at the start of a prune-train phase."""
    ms = state.method_state
    f32 = jnp.float32
    nan = f32(jnp.nan)
    if rewind:
      ms = {**ms, "start_batch_stats": state.batch_stats}
    return {**ms, "phase": jnp.int32(PRUNE), "round": round_,
            "phase_step": jnp.int32(0), "lam": f32(lam),
            "round_start": state.params, "best_params": state.params,
            "best_batch_stats": state.batch_stats,
            "prev_sparse": state.params,
            "best_sparsity": f32(-1.0), "monitors_since_best": jnp.int32(0),
            "s_sum": f32(0.0),
            "n_monitor": jnp.int32(0), "loss_sum": f32(0.0),
            "acc_sum": f32(0.0), "loss_count": jnp.int32(0),
            "loss_ema": nan, "acc_ema": nan, "loss_ref": nan, "acc_ref": nan}

  def phase_start_event(emit, state, ctx, epochs=0.0, final=False):
    ms = state.method_state
    return base.event(emit, phase=ms["phase"], round=ms["round"],
                      lam=ms["lam"],
                      sparsity=base.sparsity_of(state.params, ctx.prunable),
                      epochs=jnp.float32(epochs), final=final)

  def init(key, state, ctx, tx):
    # Each phase starts its own optimizer state (fresh_opt: this method's
    # transformation with the phase's learning rate, lambda, weight decay).
    del key, tx
    check_budget(ctx)
    hp = state.hp
    lam0 = start_lambda(state.params, hp, ctx)
    opt = fresh_opt(hp, ctx, state.params, hp["prune_lr"], lam0,
                    hp["prune_weight_decay"])
    ms = {"phase": jnp.int32(PRUNE), "round": jnp.int32(0),
          "phase_step": jnp.int32(0), "phase_len": jnp.int32(0),
          "lam": lam0, "final": jnp.bool_(False),
          "reached": jnp.bool_(False), "outcome": jnp.int32(0),
          "restored": jnp.int32(0), "topped_up": jnp.int32(0),
          "stop": jnp.int32(0), "prune_steps": jnp.int32(0),
          "collapse_stops": jnp.int32(0)}
    state = state.replace(opt_state=opt, method_state=ms)
    state = state.replace(method_state=prune_phase_state(
        state, jnp.int32(0), lam0))
    return state, {"phase_start": phase_start_event(True, state, ctx)}

  # -- the pieces of update ---------------------------------------------------

  def guards(ms, loss, acc, n_mon):
    return collapse_guards(ms, loss, acc, n_mon == 1, decay=loss_ema,
                           loss_rise=loss_rise, loss_rise_min=loss_rise_min,
                           acc_drop=acc_drop)

  def monitor(state, ctx):
    ms = state.method_state
    loss = ms["loss_sum"] / jnp.maximum(ms["loss_count"], 1)
    acc = ms["acc_sum"] / jnp.maximum(ms["loss_count"], 1)
    n_steps = ms["loss_count"]
    n_mon = ms["n_monitor"] + 1
    sp_params = transforms.sparse_params(state.opt_state)
    zeros = base.count_zeros(sp_params, ctx.prunable)
    s = zeros.astype(jnp.float32) / base.num_prunable(sp_params, ctx.prunable)
    ms, collapse = guards(ms, loss, acc, n_mon)
    ms = {**ms, "n_monitor": n_mon, "loss_sum": jnp.float32(0.0),
          "acc_sum": jnp.float32(0.0), "loss_count": jnp.int32(0)}
    out_of_time = ms["phase_step"] >= max_prune_steps(ctx)
    fnorm = filter_norm_ratios(sp_params, ms["round_start"], ctx.prunable)
    if target_mode:
      # The ramp and the controller on log lambda, on the interval's mean
      # sparsity at the interval's middle step.
      k = ms["phase_step"]
      n_ramp = ramp_steps(ctx)
      target = jnp.asarray(state.hp["target"], jnp.float32)
      ramp_now = target * ramp_fraction(k.astype(jnp.float32) / n_ramp, ramp)
      s_avg = ms["s_sum"] / jnp.maximum(n_steps, 1)
      k_mid = k.astype(jnp.float32) - 0.5 * (n_steps - 1).astype(jnp.float32)
      behind = target * ramp_fraction(k_mid / n_ramp, ramp) - s_avg
      change = jnp.clip(lam_gain * behind, -lam_max_change, lam_max_change)
      lam = ms["lam"] * jnp.exp(change)
      state = state.replace(opt_state=transforms.set_hyperparams(
          state.opt_state, l1=lam))
      ms = {**ms, "lam": lam, "s_sum": jnp.float32(0.0)}
      reason = jnp.select([zeros >= state.hp["n_zero"], collapse > 0,
                           out_of_time], [1, collapse, 7], 0)
      extra = {"ramp": ramp_now, "mean_sparsity": s_avg}
    else:
      better = s > ms["best_sparsity"]
      pick = lambda new, old: jax.tree.map(
          lambda a, b: jnp.where(better, a, b), new, old)
      best = jnp.where(better, s, ms["best_sparsity"])
      since = jnp.where(better, 0, ms["monitors_since_best"] + 1)
      ms = {**ms, "best_params": pick(sp_params, ms["best_params"]),
            "best_batch_stats": pick(state.batch_stats,
                                     ms["best_batch_stats"]),
            "best_sparsity": best, "monitors_since_best": since}
      local_max = (best > 0) & ((s < best - drop_tol) |
                                ((patience > 0) & (since >= patience)))
      reason = jnp.select(
          [zeros >= state.hp["n_zero"], local_max, collapse > 0,
           out_of_time, over_budget(state, ctx)],
          [1, 2, collapse, 4, 5], 0)
      extra = {"best_sparsity": best}
    ev = base.event(True, phase=jnp.int32(PRUNE), round=ms["round"],
                    lam=ms["lam"], loss=loss, accuracy=acc, sparsity=s,
                    loss_ema=ms["loss_ema"], loss_ref=ms["loss_ref"],
                    acc_ema=ms["acc_ema"], acc_ref=ms["acc_ref"],
                    stop=reason.astype(jnp.int32), **extra, **fnorm)
    return state.replace(method_state=ms), reason.astype(jnp.int32), ev

  def exact_count(state, ctx):
    """The params the fine-tune starts from, with exactly the target count
    of zeros where the schedule can give it; ``(params, batch_stats,
    restored, topped_up)``. With ``finetune_from='phase_start'`` the
    nonzero weights get their values (and the BN statistics theirs) from
    the phase's start: the prune phase chose the support only."""
    ms, n_zero = state.method_state, state.hp["n_zero"]
    if target_mode:
      sp = transforms.sparse_params(state.opt_state)
      # Overshoot within the last step: give back the weights it zeroed
      # beyond the count (their values before the step, largest first).
      params, restored = repair_overshoot(sp, ms["prev_sparse"], n_zero,
                                          ctx.prunable)
      if layer_keep:
        # Each layer down to its own count (the smallest |w| go).
        before = base.count_zeros(params, ctx.prunable)
        params = masks_lib.apply_masks(params, masks_lib.layer_counts_topk_masks(
            jax.tree.map(jnp.abs, params), ctx.prunable,
            layer_counts(params, state.hp, ctx)))
        topped = base.count_zeros(params, ctx.prunable) - before
      else:
        params, topped = magnitude_top_up(params, n_zero, ctx.prunable)
      bstats = state.batch_stats
    else:
      params, restored = repair_overshoot(ms["best_params"],
                                          ms["round_start"], n_zero,
                                          ctx.prunable)
      bstats, topped = ms["best_batch_stats"], jnp.int32(0)
    if rewind:
      params = jax.tree.map(
          lambda p, s, w: jnp.where(p != 0, jnp.where(s != 0, s, p),
                                    jnp.zeros_like(p)) if w else p,
          params, ms["round_start"], ctx.prunable)
      bstats = ms["start_batch_stats"]
    return params, bstats, restored, topped

  def leave_prune(state, ctx, reason):
    ms, hp = state.method_state, state.hp
    params, bstats, restored, topped = exact_count(state, ctx)
    zeros = base.count_zeros(params, ctx.prunable)
    reached = zeros >= hp["n_zero"]
    final = reached | over_budget(state, ctx) | target_mode
    n_steps = finetune_len(ctx, ms["round"], final, state.step)
    opt = fresh_opt(hp, ctx, params, hp["finetune_lr"], 0.0,
                    hp["finetune_weight_decay"])
    end = base.event(True, phase=jnp.int32(PRUNE), round=ms["round"],
                     lam=ms["lam"], reason=reason,
                     sparsity=base.sparsity_of(params, ctx.prunable),
                     best_sparsity=ms["best_sparsity"], restored=restored,
                     topped_up=topped)
    ms = {**ms, "phase": jnp.int32(FINETUNE), "phase_step": jnp.int32(0),
          "phase_len": n_steps, "final": final, "reached": reached,
          "restored": restored, "topped_up": ms["topped_up"] + topped,
          "stop": reason, "prune_steps": ms["prune_steps"] + ms["phase_step"],
          "collapse_stops": ms["collapse_stops"] + jnp.isin(
              reason, jnp.array(COLLAPSE_STOPS)).astype(jnp.int32)}
    state = state.replace(params=params, batch_stats=bstats,
                          opt_state=opt, method_state=ms)
    start = phase_start_event(True, state, ctx,
                              n_steps.astype(jnp.float32) /
                              ctx.steps_per_epoch, final)
    return state, end, start

  def leave_finetune(state, ctx):
    ms, hp = state.method_state, state.hp
    last_round = ms["round"] + 1 >= max_rounds
    stop = ms["final"] | last_round
    outcome = jnp.select([ms["reached"], ms["final"]], [1, 3], 2).astype(
        jnp.int32)

    def finish(state):
      return state.replace(method_state={**state.method_state,
                                         "phase": jnp.int32(DONE),
                                         "outcome": outcome})

    def next_round(state):
      r = ms["round"] + 1
      lam = hp["l1_init"] + r.astype(jnp.float32) * hp["l1_step"]
      opt = fresh_opt(hp, ctx, state.params, hp["prune_lr"], lam,
                      hp["prune_weight_decay"])
      state = state.replace(opt_state=opt)
      return state.replace(method_state=prune_phase_state(state, r, lam))

    end = base.event(True, phase=jnp.int32(FINETUNE), round=ms["round"],
                     lam=ms["lam"], reason=jnp.int32(0),
                     sparsity=base.sparsity_of(state.params, ctx.prunable),
                     best_sparsity=ms["best_sparsity"],
                     restored=jnp.int32(0), topped_up=jnp.int32(0))
    state = jax.lax.cond(stop, finish, next_round, state)
    start = phase_start_event(~stop, state, ctx)
    return state, end, start

  def update(key, state, metrics, ctx):
    del key
    ms = state.method_state
    active = ms["phase"] != DONE
    in_prune = ms["phase"] == PRUNE
    ms = {**ms, "phase_step": ms["phase_step"] + active.astype(jnp.int32),
          "loss_sum": ms["loss_sum"] + jnp.where(in_prune, metrics["loss"],
                                                 0.0),
          "acc_sum": ms["acc_sum"] + jnp.where(in_prune, metrics["accuracy"],
                                               0.0),
          "loss_count": ms["loss_count"] + in_prune.astype(jnp.int32)}
    state = state.replace(method_state=ms)
    k = ms["phase_step"]
    monitor_now = in_prune & ((k % monitor_every == 0) |
                              (k >= max_prune_steps(ctx)) |
                              over_budget(state, ctx))
    if target_mode:
      # Zeros are counted every step, so the phase ends on the step that
      # reaches the target (a monitor then records it).
      # The controller reads the sparsity averaged over the steps since the
      # last monitor: weights at the threshold flicker between zero and
      # not, which makes one step's count jump by a few points.
      sp = transforms.sparse_params(state.opt_state)
      zeros = base.count_zeros(sp, ctx.prunable)
      monitor_now = monitor_now | (in_prune & (zeros >= state.hp["n_zero"]))
      ms = state.method_state
      state = state.replace(method_state={
          **ms, "s_sum": ms["s_sum"] + jnp.where(
              in_prune, zeros.astype(jnp.float32) / base.num_prunable(
                  sp, ctx.prunable), 0.0)})

    # Prune-train: monitor, and maybe end the phase.
    ev_shape = jax.eval_shape(lambda s: monitor(s, ctx)[2], state)
    no_ev = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), ev_shape)
    state, reason, mon_ev = jax.lax.cond(
        monitor_now, lambda s: monitor(s, ctx),
        lambda s: (s, jnp.int32(0), no_ev), state)
    end_shape, start_shape = jax.eval_shape(
        lambda s: leave_prune(s, ctx, reason)[1:], state)
    zeros_like = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                        t)
    state, end1, start1 = jax.lax.cond(
        reason > 0, lambda s: leave_prune(s, ctx, reason),
        lambda s: (s, zeros_like(end_shape), zeros_like(start_shape)), state)
    if target_mode:
      # The sparse iterate before the next step (overshoot repair's source).
      ms = state.method_state
      keep = ms["phase"] == PRUNE
      state = state.replace(method_state={**ms, "prev_sparse": jax.tree.map(
          lambda a, b: jnp.where(keep, a, b),
          transforms.sparse_params(state.opt_state), ms["prev_sparse"])})

    # Fine-tune: the cosine learning rate of the next step; maybe end.
    ms = state.method_state
    in_ft = ms["phase"] == FINETUNE
    lr = phases.cosine_from(state.hp["finetune_lr"], ms["phase_step"],
                            ms["phase_len"])
    state = phases.set_lr_where(state, in_ft, lr)
    ft_end = in_ft & (ms["phase_step"] >= ms["phase_len"])
    state, end2, start2 = jax.lax.cond(
        ft_end, lambda s: leave_finetune(s, ctx),
        lambda s: (s, zeros_like(end_shape), zeros_like(start_shape)), state)

    # The budget is spent: stop here whatever the phase (a final fine-tune
    # ends exactly here; nothing else should, but nothing may overrun).
    ms = state.method_state
    spent = (state.step >= ctx.total_steps) & (ms["phase"] != DONE)
    state = state.replace(method_state={
        **ms, "phase": jnp.where(spent, DONE, ms["phase"]).astype(jnp.int32),
        "outcome": jnp.where(spent, jnp.where(ms["reached"], 1, 3),
                             ms["outcome"]).astype(jnp.int32)})

    pick = lambda c, a, b: jax.tree.map(lambda x, y: jnp.where(c, x, y), a, b)
    events = {"monitor": mon_ev,
              "phase_end": pick(reason > 0, end1, end2),
              "phase_start": pick(reason > 0, start1, start2)}
    return state, events

  def eval_params(state):
    return base.sparse_iterate_while(state,
                                     state.method_state["phase"] == PRUNE)

  def done(state, ctx):
    del ctx
    return state.method_state["phase"] == DONE

  def summary(state):
    ms = state.method_state
    return {"outcome": OUTCOME_NAMES[int(ms["outcome"])],
            "budget_exhausted": int(ms["outcome"]) == 3,
            "schedule": schedule, "scale_invariant": scale_invariant,
            "finetune_from": finetune_from,
            "rounds": int(ms["round"]) + 1, "final_l1": float(ms["lam"]),
            "prune_stop": STOP_NAMES[int(ms["stop"])],
            "collapse_stops": int(ms["collapse_stops"]),
            "prune_steps": int(ms["prune_steps"]),
            "restored": int(ms["restored"]),
            "topped_up_by_magnitude": int(ms["topped_up"])}

  paper_only = ("l1_step", "max_rounds", "prune_max_epochs", "drop_tol",
                "patience", "finetune_epochs", "finetune_growth",
                "final_finetune_epochs", "fill_budget")
  target_only = ("ramp_end", "deadline", "ramp", "lam_start", "lam_gain",
                 "lam_max_change")
  if target_mode:
    ignored = {k: "read only with schedule='paper'" for k in paper_only}
    if lam_start == "auto":
      ignored["l1_init"] = ("lam_start='auto' computes lambda's start from "
                            "the weights; set lam_start='l1_init' to give it")
  else:
    ignored = {k: "read only with schedule='target'" for k in target_only}
  if not scale_invariant:
    ignored["threshold"] = "read only with scale_invariant=True"
  if layer_keep:
    ignored["penalty"] = ("layer_keep trims the penalty inside each layer "
                          "(penalty='l1' and 'trimmed' act alike)")
  hparams = {"l1_init": float(l1_init), "l1_step": float(l1_step),
             "prune_lr": float(prune_lr), "finetune_lr": float(finetune_lr),
             "prune_weight_decay": float(prune_weight_decay),
             "finetune_weight_decay": float(finetune_weight_decay)}
  if target_mode:
    description = (
        f"Prox-NAG, lambda tracking a {ramp} sparsity ramp to the target by "
        f"{ramp_end:.0%} of the budget (exact count, magnitude top-up at "
        f"{deadline:.0%}), then fine-tuning from "
        + ("the phase start's weights on the support found" if rewind
           else "the sparse iterate")
        + ("; scale-invariant step on normalised kernels"
           if scale_invariant else "")
        + ("; a per-layer budget (the penalty trimmed inside each layer)"
           if layer_keep else ""))
  else:
    description = (
        "iterative Prox-NAG (the paper's schedule): prune-train rounds with "
        "raised lambda, each stopped at the target, a local maximum of "
        "sparsity or a collapse, then fine-tuning"
        + ("; scale-invariant step on normalised kernels"
           if scale_invariant else ""))
  return Method("proxnag", init=init, tx=tx, update=update,
                eval_params=eval_params, done=done,
                summary=summary, start="dense", hparams=hparams,
                check=check,
                reads_lr=False, ignored=ignored,
                labels={"phase": PHASE_NAMES, "stop": STOP_NAMES,
                        "reason": STOP_NAMES},
                description=description)


__all__ = ["proxnag", "repair_overshoot", "magnitude_top_up",
           "filter_norm_ratios", "layer_names", "SCHEDULES", "PRUNE", "FINETUNE", "DONE",
           "PHASE_NAMES", "STOP_NAMES"]
