"""Pruning a randomly initialised network that is never trained: edge-popup
(Ramanujan et al. 2020) and sparse binary programming (seed 002).

Both keep the random weights ``W0`` frozen (in the method state) and learn
which of them to keep. The run's trainable ``params`` are a score per weight;
the model sees ``forward(params, state) = W0 * h(params)`` with ``h`` the
binary mask that keeps exactly ``k`` weights (per layer, or over all prunable
weights with ``scope='global'``). The mask's gradient is passed straight
through: ``dL/dS = dL/dW_eff * W0 * dh~/dS`` with ``h~`` the relaxation the
forward pass thresholds. Leaves that are not prunable (biases, BatchNorm
scales) stay at their initial values, so BatchNorm is non-affine, as in
edge-popup's reference.

* ``edge_popup``: scores ``S``, ``h = top-k(|S|)``, straight-through
  ``dh/dS = sign(S)`` (the reference ranks ``|S|``); Kaiming-uniform score
  init, signed Kaiming-constant weights (``W0 = sign(w) sqrt(2 / fan_in)``);
  SGD 0.1 with a cosine schedule, momentum 0.9, weight decay 1e-4 on the
  scores: the defaults of allenai/hidden-networks.
* ``sbp`` (seed 002, from its abstract): ``min_m L(W0 * m)`` s.t.
  ``m in {0,1}^d, ||m||_0 = k``. Two solvers on a relaxed mask ``x`` (the
  scores, kept in the box ``[0, 1]``), both taking the loss at the binary
  iterate ``m = H_k(x)`` (exactly ``k`` ones; straight-through gradient
  ``dL/dx = dL/dW_eff * W0``) and evaluated and exported at it.
  ``solver='lpbox'``: l_p-box ADMM (Wu & Ghanem, TPAMI 2018; CNN-FCF uses
  it for filter masks): :func:`~proxnag_jax.transforms.lpbox_admm` in the
  optimizer pulls ``x`` onto the box-and-count set (exactly ``k`` ones in
  expectation) and onto the sphere ``||x - 1/2||^2 = n/4`` (which meets the
  box only at binary points), with a growing penalty, so ``x`` itself ends
  binary and ``H_k(x) = x``: the exactly-k mask evaluated is the solver's
  own iterate, not a rounding of a fractional one. ``loss_at='relaxed'`` trains the network on ``W0 * x`` itself, as
  CNN-FCF does (where the weights train too); over frozen random weights it
  is measured worse (docs/results.md). ``solver='relaxed'``: projected
  gradient on the relaxation ``r in [0,1]^d`` (the convex hull of the binary
  set): ``r <- clip(r - eta g, 0, 1)`` (the box projection is part of the
  optimizer, so momentum sees it), nothing pushing ``r`` to {0, 1}. ``x``
  starts at the box's centre 0.5 plus the Kaiming-uniform perturbation
  edge-popup's scores start with (a uniform ``x`` in [0, 1] barely moves
  under gradients of that scale, and the mask stays random: measured at
  chance on the smoke run). What differs from edge-popup in both: the
  bounded relaxation and the signed-magnitude ranking; with ``lpbox``, the
  relaxed mask driven to a binary one.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from proxnag_jax import transforms
from proxnag_jax.methods import base
from proxnag_jax.methods.base import Method


def _fan_in(p) -> int:
  return int(math.prod(p.shape[:-1])) if p.ndim > 1 else int(p.shape[0])


def signed_constant(key, w0, prunable):
  """``sign(w) * sqrt(2 / fan_in)`` on prunable leaves (random signs from
  ``key`` where ``w`` is zero); other leaves unchanged."""
  leaves, treedef = jax.tree.flatten(w0)
  keys = jax.random.split(key, len(leaves))
  out = []
  for k, p, w in zip(keys, leaves, jax.tree.leaves(prunable)):
    if not w:
      out.append(p)
      continue
    sign = jnp.where(p != 0, jnp.sign(p),
                     jnp.where(jax.random.bernoulli(k, 0.5, p.shape), 1., -1.))
    out.append((sign * math.sqrt(2.0 / _fan_in(p))).astype(p.dtype))
  return jax.tree.unflatten(treedef, out)


def _box(lo: float, hi: float, prunable) -> optax.GradientTransformation:
  """Updates that keep the prunable params in ``[lo, hi]``:
  ``u <- clip(p + u, lo, hi) - p`` (a projection after the step)."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    new = jax.tree.map(lambda u, p, w: (jnp.clip(p + u, lo, hi) - p).astype(
        u.dtype) if w else u, updates, params, prunable)
    return new, state

  return optax.GradientTransformation(init_fn, update_fn)


def _score_method(name: str, *, scope: str, learning_rate: float,
                  weight_decay: float, weight_init: str,
                  description: str, solver: str = "relaxed",
                  **settings) -> Method:
  """Edge-popup (``name='edge_popup'``) or SBP (``'sbp'``); ``settings``:
  the l_p-box settings :func:`sbp` passes (its defaults)."""
  (rho, rho_growth, admm_every, rho_max, rho_end, clip_box, loss_at,
   normalize, lr_schedule, init_spread) = (settings.get(k) for k in (
       "rho", "rho_growth", "admm_every", "rho_max", "rho_end", "clip_box",
       "loss_at", "normalize", "lr_schedule", "init_spread"))
  if scope not in ("layer", "global"):
    raise ValueError(f"{name}: scope must be 'layer' or 'global', got "
                     f"{scope!r}.")
  if weight_init not in ("signed_constant", "model"):
    raise ValueError(f"{name}: weight_init must be 'signed_constant' or "
                     f"'model', got {weight_init!r}.")
  if not learning_rate > 0 or weight_decay < 0:
    raise ValueError(f"{name}: learning_rate must be positive and "
                     "weight_decay >= 0.")
  relaxed = name == "sbp"
  lpbox = relaxed and solver == "lpbox"
  if relaxed and solver not in ("lpbox", "relaxed"):
    raise ValueError(f"{name}: solver must be 'lpbox' or 'relaxed', got "
                     f"{solver!r}.")
  if lpbox and rho_end is not None and not rho_end >= rho > 0:
    raise ValueError(f"{name}: rho_end must be >= rho > 0, got rho={rho:g}, "
                     f"rho_end={rho_end:g}.")
  if lpbox and not 0.0 <= init_spread <= 0.5:
    raise ValueError(f"{name}: init_spread must be in [0, 0.5] (0: the "
                     f"Kaiming bound), got {init_spread}.")
  if lpbox and lr_schedule not in ("cosine", "constant"):
    raise ValueError(f"{name}: lr_schedule must be 'cosine' or 'constant', "
                     f"got {lr_schedule!r}.")
  if lpbox and normalize not in ("none", "layer"):
    raise ValueError(f"{name}: normalize must be 'none' or 'layer' (each "
                     f"layer's loss gradient scaled to unit rms before the "
                     f"penalty), got {normalize!r}.")
  if relaxed and loss_at not in ("binary", "relaxed"):
    raise ValueError(f"{name}: loss_at must be 'binary' (the loss at the "
                     f"exactly-k mask) or 'relaxed' (at W0 * x), got "
                     f"{loss_at!r}.")

  def relax(s):
    return s if relaxed else jnp.abs(s)

  def forward(params, method_state):
    """``W0 * h`` with the straight-through mask ``h`` on prunable leaves
    (l_p-box SBP with ``loss_at='relaxed'``: ``W0 * x``, the continuous mask
    itself); the others are ``W0`` (frozen)."""
    def leaf(s, w, m, p):
      if lpbox and loss_at == "relaxed":
        return jnp.where(p, w * s, w)
      r = relax(s)
      h = m.astype(r.dtype) + r - jax.lax.stop_gradient(r)
      return jnp.where(p, w * h, w)
    ms = method_state
    return jax.tree.map(leaf, params, ms["w0"], ms["mask"], ms["prunable"])

  def eval_params(state):
    """l_p-box SBP is evaluated at its binary mask (exactly ``k`` ones)."""
    if not lpbox:
      return state.params
    ms = state.method_state
    return jax.tree.map(lambda s, m, p: jnp.where(p, m.astype(s.dtype), s),
                        state.params, ms["mask"], ms["prunable"])

  def keep_counts(hp, ctx):
    """The count(s) the l_p-box set holds: per prunable leaf, or one."""
    def fn(params):
      if scope == "global":
        return base.n_keep(params, hp, ctx)
      return jax.tree.map(
          lambda x, w: (x.size - jnp.round(hp["target"] * x.size)).astype(
              jnp.int32) if w else None, params, ctx.prunable)
    return fn

  def tx(hp, ctx):
    sched = optax.cosine_decay_schedule(hp["score_lr"], max(1,
                                                            ctx.total_steps))
    if lpbox and lr_schedule == "constant":
      # The x-step keeps its step while rho grows: what moves x onto y late
      # in the run is step x rho, which a cosine takes to zero.
      sched = hp["score_lr"]
    chain = [optax.add_decayed_weights(hp["score_weight_decay"]),
             optax.sgd(sched, momentum=hp["momentum"])]
    if lpbox:
      # The x-step under SGD at step eta is stable while eta * 2 rho < 2:
      # the cap is at most 0.9 / eta.
      growth = rho_growth
      if rho_end is not None:      # from rho to rho_end over the run
        growth = (hp["rho_end"] / hp["rho"]) ** (
            admm_every / max(1, ctx.total_steps))
      chain.insert(0, transforms.lpbox_admm(
          keep_counts(hp, ctx), rho=hp["rho"], rho_growth=growth,
          every=admm_every, rho_max=jnp.minimum(rho_max,
                                                0.9 / hp["score_lr"]),
          mask=ctx.prunable, global_count=scope == "global"))
      if normalize == "layer":
        # Each layer's loss gradient at unit rms, so rho is one unitless
        # number for every layer (before the penalty is added).
        chain.insert(0, transforms.scale_by_leaf_rms(mask=ctx.prunable))
    if relaxed and (not lpbox or clip_box):
      chain.append(_box(0.0, 1.0, ctx.prunable))
    return optax.chain(*chain)

  def new_mask(params, hp, ctx):
    scores = jax.tree.map(lambda s: relax(s).astype(jnp.float32), params)
    return base.topk_masks(scores, ctx.prunable, base.n_keep(params, hp, ctx),
                           hp["target"], scope)

  def init(key, state, ctx, tx):
    k_w, k_s = jax.random.split(key)
    w0 = state.params
    if weight_init == "signed_constant":
      w0 = signed_constant(k_w, w0, ctx.prunable)
    leaves, treedef = jax.tree.flatten(w0)
    keys = jax.random.split(k_s, len(leaves))
    scores = []
    for k, p, w in zip(keys, leaves, jax.tree.leaves(ctx.prunable)):
      if not w:
        scores.append(jnp.zeros_like(p))
      else:    # Kaiming uniform with a = sqrt(5): bound sqrt(1 / fan_in)
        b = math.sqrt(1.0 / _fan_in(p))
        if lpbox and init_spread:
          b = init_spread   # the same unitless spread in every layer
        u = jax.random.uniform(k, p.shape, p.dtype, -b, b)
        # SBP: the same perturbation around the centre of the box, so that
        # gradient steps of the scores' scale reorder the mask.
        scores.append(0.5 + u if relaxed else u)
    scores = jax.tree.unflatten(treedef, scores)
    mask = new_mask(scores, state.hp, ctx)
    opt = tx.init(scores)
    flags = jax.tree.map(jnp.bool_, ctx.prunable)
    return state.replace(params=scores, opt_state=opt, method_state={
        "w0": w0, "mask": mask, "prunable": flags}), {}

  def update(key, state, metrics, ctx):
    del key, metrics
    # The binary iterate for the next step: exactly k ones.
    mask = new_mask(state.params, state.hp, ctx)
    old = state.method_state["mask"]
    flips = sum((jnp.sum(a != b, dtype=jnp.int32) for a, b, w in zip(
        jax.tree.leaves(mask), jax.tree.leaves(old),
        jax.tree.leaves(ctx.prunable)) if w), jnp.int32(0))
    state = state.replace(method_state={**state.method_state, "mask": mask})
    spe = ctx.steps_per_epoch
    fields = {"flips": flips}
    if relaxed:
      fields.update(binariness(state.params, ctx.prunable))
      if lpbox:
        fields["rho"] = transforms.lpbox_state(state.opt_state).rho
    return state, {"mask": base.event(base.every(state.step, spe), **fields)}

  def summary(state):
    """How binary the final relaxed mask is (``binary_gap``,
    ``near_binary``)."""
    return {k: float(v) for k, v in binariness(
        state.params, state.method_state["prunable"]).items()}

  def export(state, model):
    """The pruned random network as plain params: ``W0 * mask``."""
    ms = state.method_state
    params = jax.tree.map(lambda w, m, p: jnp.where(p, w * m.astype(w.dtype),
                                                    w),
                          ms["w0"], ms["mask"], ms["prunable"])
    variables = {"params": jax.device_get(params)}
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats
    return model, variables

  hparams = {"score_lr": float(learning_rate),
             "score_weight_decay": float(weight_decay)}
  ignored = {}
  if lpbox:
    hparams["rho"] = float(rho)
    if rho_end is not None:
      hparams["rho_end"] = float(rho_end)
      ignored["rho_growth"] = "set by rho_end"
  elif relaxed:
    ignored = {k: "read only with solver='lpbox'" for k in
               ("rho", "rho_growth", "admm_every", "rho_max", "rho_end",
                "clip_box", "loss_at", "normalize", "lr_schedule",
                "init_spread")}
  return Method(name, init=init, tx=tx, update=update, forward=forward,
                eval_params=eval_params, export=export, start="scratch",
                summary=summary if relaxed else None,
                hparams=hparams, ignored=ignored, description=description)


def edge_popup(scope: str = "layer", learning_rate: float = 0.1,
               weight_decay: float = 1e-4,
               weight_init: str = "signed_constant") -> Method:
  """Edge-popup (Ramanujan et al. 2020); see the module docstring."""
  return _score_method(
      "edge_popup", scope=scope, learning_rate=learning_rate,
      weight_decay=weight_decay, weight_init=weight_init,
      description=f"edge-popup: scores trained by SGD {learning_rate:g} "
      f"(cosine, wd {weight_decay:g}) through a straight-through top-k "
      f"({scope}) of |S| over frozen {weight_init} weights")


def sbp(scope: str = "layer", learning_rate: float = 0.1,
        weight_decay: float = 0.0,
        weight_init: str = "signed_constant", solver: str = "relaxed",
        rho: float = 1e-5, rho_growth: float = 1.05, admm_every: int = 50,
        rho_max: float = 10.0, rho_end: Optional[float] = 0.1,
        clip_box: bool = True,
        loss_at: str = "binary", normalize: str = "none",
        lr_schedule: str = "cosine", init_spread: float = 0.0) -> Method:
  """Sparse binary programming (seed 002, as read from its abstract); see
  the module docstring.

  ``solver='lpbox'``: l_p-box ADMM on the relaxed mask ``x``, the penalty
  growing geometrically from ``rho`` to ``rho_end`` over the run, updated
  with the y/z steps every ``admm_every`` steps (``rho_end=None``: x
  ``rho_growth`` per update instead), capped at ``rho_max`` and at ``0.9 /
  learning_rate`` (where SGD's x-step stays stable); the defaults 1e-5 ->
  0.1 are the LeNet-300-100 search's choice (docs/results.md);
  ``clip_box`` keeps ``x`` in [0, 1] after each step (the box is part of
  both ADMM sets, so the projection loses nothing);
  ``loss_at`` 'binary' (the loss at ``H_k(x)``, straight through) or
  'relaxed' (at ``W0 * x``). The penalty must start small against the
  loss's gradient on ``x`` (``|dL/dW| |W0|``, ~1e-4 here): started at 1e-2
  the duals binarise ``x`` within two epochs, at the random ranking it
  started from (measured, docs/results.md). ``solver='relaxed'``: the
  projected-gradient reading (the l_p-box settings then unread).
  ``normalize='layer'`` (l_p-box only): each layer's loss gradient on ``x``
  is divided by its running rms (:func:`~proxnag_jax.transforms.
  scale_by_leaf_rms`) before the penalty is added, so the x-step is a
  unit-scale problem in every layer, as the reference's solver assumes, and
  ``learning_rate``, ``rho`` and ``rho_end`` are unitless (the same in a
  layer of fan-in 27 and one of 16,384); ``'none'``: the raw gradient.
  ``lr_schedule`` (l_p-box only): the step's ``'cosine'`` decay over the
  run, or ``'constant'`` (the x-step keeps moving x onto y while rho grows).
  ``init_spread`` (l_p-box only): ``x`` starts at ``0.5 + U(-c, c)`` with
  this ``c`` in every layer (0: edge-popup's Kaiming bound per layer, the
  raw gradient's scale); with ``normalize='layer'`` the step is unitless,
  so the start's spread should be too (a step of 0.01 reorders a layer of
  spread 0.0078 entirely every step).

  >>> m = sbp(solver="lpbox", learning_rate=3.0, rho=1e-5, rho_end=0.1)
  """
  if solver == "lpbox":
    grows = (f"{rho:g} -> {rho_end:g} over the run" if rho_end is not None
             else f"{rho:g} x{rho_growth:g}")
    how = (f"l_p-box ADMM on the relaxed mask (rho {grows}, y/z "
           f"every {admm_every} steps, cap {rho_max:g}; "
           f"{'layer-normalised gradient, ' if normalize == 'layer' else ''}"
           f"SGD {learning_rate:g}, {lr_schedule}; loss at the {loss_at} "
           f"mask), evaluated at its exactly-k binary mask ({scope})")
  else:
    how = (f"projected gradient (SGD {learning_rate:g}, cosine) on a [0,1] "
           f"relaxation, the loss taken at its exactly-k binary projection "
           f"({scope})")
  return _score_method(
      "sbp", scope=scope, learning_rate=learning_rate,
      weight_decay=weight_decay, weight_init=weight_init, solver=solver,
      rho=rho, rho_growth=rho_growth, admm_every=admm_every, rho_max=rho_max,
      rho_end=rho_end, clip_box=clip_box, loss_at=loss_at,
      normalize=normalize, lr_schedule=lr_schedule, init_spread=init_spread,
      description=f"sparse binary programming: {how}, over frozen "
      f"{weight_init} weights")


def binariness(relaxed_mask, prunable) -> dict:
  """How binary a relaxed mask ``x in [0, 1]`` is over its prunable
  leaves: ``binary_gap``, the mean distance of its entries to {0, 1}, and
  ``near_binary``, the fraction within 0.01 of it (traceable)."""
  flat = jnp.concatenate([jnp.ravel(x) for x, w in zip(
      jax.tree.leaves(relaxed_mask), jax.tree.leaves(prunable))
                          if bool(w)]).astype(jnp.float32)
  d = jnp.minimum(jnp.abs(flat), jnp.abs(1.0 - flat))
  return {"binary_gap": jnp.mean(d),
          "near_binary": jnp.mean((d < 0.01).astype(jnp.float32))}


def score_stats(scores, prunable, mask, relaxed: bool) -> list[dict]:
  """Where learned scores sit, per prunable leaf (host-side, for reports).

  ``relaxed``: SBP's relaxation ``r in [0, 1]`` (centre 0.5), else
  edge-popup's signed scores (centre 0). Per leaf: ``init_halfwidth``
  ``b = sqrt(1 / fan_in)`` (the scores start uniform within ``b`` of the
  centre, so at a mean distance ``b / 2``), ``mean_dist`` / ``max_dist`` of
  ``|s - centre|`` now and, for SBP only (else ``None``), ``at_lower`` /
  ``at_upper`` (fraction with ``r <= 0`` / ``r >= 1``: where the box
  projection binds) and ``kept_at_upper`` (fraction of the kept weights
  with ``r >= 1``).
  """
  out = []
  flat = jax.tree_util.tree_leaves_with_path(scores)
  for (path, s), p, m in zip(flat, jax.tree.leaves(prunable),
                             jax.tree.leaves(mask)):
    if not bool(jnp.all(p)):
      continue
    s = jnp.asarray(s, jnp.float32)
    m = jnp.asarray(m).astype(bool)
    d = jnp.abs(s - (0.5 if relaxed else 0.0))
    row = {"leaf": jax.tree_util.keystr(path), "shape": tuple(s.shape),
           "init_halfwidth": math.sqrt(1.0 / _fan_in(s)),
           "mean_dist": float(d.mean()), "max_dist": float(d.max()),
           "at_lower": None, "at_upper": None, "kept_at_upper": None}
    if relaxed:
      row.update(at_lower=float(jnp.mean(s <= 0.0)),
                 at_upper=float(jnp.mean(s >= 1.0)),
                 kept_at_upper=int(jnp.sum(m & (s >= 1.0))) /
                 max(1, int(jnp.sum(m))))
    out.append(row)
  return out


__all__ = ["binariness", "edge_popup", "sbp", "score_stats",
           "signed_constant"]
