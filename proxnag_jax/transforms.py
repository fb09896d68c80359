"""Optax transformations for proximal (sparse) optimisation and masked training.

The core paper's optimizer (Prox-NAG, Algorithm 1) solves

    min_w  L(w) + lambda * ||w||_1

with a proximal gradient step followed by Nesterov extrapolation::

    w_hat_{t+1}   = w_t - eta_t * g_t,            g_t = grad L(w_t)          (eq. 6)
    w~_{t+1}      = S_{eta_t lambda}(w_hat_{t+1})                            (eq. 7)
    w_{t+1}       = w~_{t+1} + beta_t * (w~_{t+1} - w~_t),   w~_0 = w_0      (eq. 11)

``w`` (the model's parameters, where gradients are taken) is dense; the sparse
solution is ``w~``, which holds exact zeros and is read with
:func:`sparse_params`. Here it is built from three small Optax transformations
that also compose with other preconditioners:

* ``optax.scale_by_learning_rate(eta)``  turns ``g`` into ``-eta g``;
* :func:`prox_l1` (or :func:`prox_group_l1`) maps ``w + u`` through the
  proximal operator, so ``w + u' = S_{eta lambda}(w + u)``;
* :func:`nesterov_extrapolation` remembers ``w~_t`` and returns the update to
  ``w~_{t+1} + beta_t (w~_{t+1} - w~_t)``.

:func:`proxnag` is their chain. With ``l1=0`` and a constant learning rate the
parameter sequence equals ``optax.sgd(eta, momentum=beta, nesterov=True)``'s.

:func:`with_masks` wraps any Optax optimizer so that pruned weights stay
exactly zero (no post-update hook to forget); masks live in its state and are
read or replaced with :func:`get_masks` / :func:`set_masks`.

ADMM's pieces (:func:`admm_penalty`, :func:`admm_step`) are here too: the
W-step penalty as a transformation whose state holds ``Z`` and ``U``.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from proxnag_jax import masks as masks_lib
from proxnag_jax import prox as prox_lib
from proxnag_jax import surgery

PyTree = Any
ScalarOrSchedule = Union[float, jax.Array, optax.Schedule]
MaskOrFn = Optional[Union[PyTree, Callable[[PyTree], PyTree]]]

__all__ = [
    "ProxState",
    "ExtrapolationState",
    "WithMasksState",
    "prox_l1",
    "prox_group_l1",
    "prox_channel_l1",
    "nesterov_extrapolation",
    "fista_momentum",
    "proxnag",
    "sparse_params",
    "with_masks",
    "get_masks",
    "set_masks",
    "set_sparse_params",
    "set_hyperparams",
    "find_state",
    "find_states",
    "replace_states",
    "AdmmState",
    "admm_penalty",
    "admm_state",
    "set_admm_state",
    "admm_step",
    "reweighted_shrink",
    "LpBoxState",
    "lpbox_admm",
    "lpbox_state",
    "LeafRmsState",
    "scale_by_leaf_rms",
]


# --------------------------------------------------------------------------
# Validation helpers.
# --------------------------------------------------------------------------


def _check_nonnegative(name: str, value: Any) -> None:
  """Raises ValueError for a negative *concrete* hyperparameter.

  Traced values (under jit/vmap) cannot be checked on the host and pass.
  A schedule is checked at step 0.
  """
  if value is None:
    raise ValueError(f"{name} must be given (a float, an array or a schedule).")
  if callable(value):
    try:
      value = value(0)
    except Exception:  # pylint: disable=broad-except
      return
  if isinstance(value, jax.core.Tracer):
    return
  if isinstance(value, (bool, str, bytes)) or not isinstance(
      value, (numbers.Number, np.ndarray, jax.Array)):
    raise TypeError(f"{name} must be a number, an array or a schedule, got "
                    f"{type(value).__name__} {value!r}.")
  if isinstance(value, (numbers.Number, np.ndarray, jax.Array)):
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.number):
      raise TypeError(f"{name} must be numeric, got {value!r}.")
    if np.any(arr < 0):
      raise ValueError(f"{name} must be non-negative, got {value!r}.")
    if np.any(~np.isfinite(arr)):
      raise ValueError(f"{name} must be finite, got {value!r}.")


def _value_at(value: ScalarOrSchedule, count: jax.Array) -> jax.Array:
  return value(count) if callable(value) else jnp.asarray(value)


def _resolve_mask(mask: MaskOrFn, params: PyTree, who: str) -> PyTree:
  """Returns a bool-like pytree with params' structure (or raises)."""
  if mask is None:
    return jax.tree.map(lambda _: True, params)
  tree = mask(params) if callable(mask) else mask
  masks_lib.check_tree_match(tree, params, who, what="mask")
  return tree


def _require_params(params, who):
  if params is None:
    raise ValueError(
        f"{who} needs the current params: call "
        "`tx.update(grads, state, params)`."
    )


# --------------------------------------------------------------------------
# Proximal steps.
# --------------------------------------------------------------------------


def threshold_units(x, normalized, scale, reference, use_reference: bool):
  """``|x|`` in the units of its proximal threshold in :func:`prox_l1`:
  per output filter's rms for a normalised kernel (or, with a
  ``reference`` norm, ``|x| * reference / ||x_c||``), divided by the leaf's
  ``scale`` otherwise (1 for an absolute threshold). Entries with equal
  units are thresholded alike, so this is where the trimmed penalty ranks
  them."""
  a = jnp.abs(jnp.asarray(x, jnp.float32))
  plain = a / scale
  if a.ndim < 2 or (isinstance(normalized, bool) and not normalized):
    return plain
  n = prox_lib.group_norms(a)
  if use_reference:
    ref = jnp.asarray(reference, jnp.float32)
    rel = jnp.where(n > 0, a * ref / jnp.where(n > 0, n, 1.0), 0.0)
  else:
    r = prox_lib.filter_rms(a)
    rel = jnp.where(r > 0, a / jnp.where(r > 0, r, 1.0), 0.0)
  return jnp.where(normalized, rel, plain)


class ProxState(NamedTuple):
  """State of :func:`prox_l1` / :func:`prox_group_l1`: the step count; for
  :func:`prox_l1`'s ``rms_scaled`` leaves their rms at ``init`` (a scalar
  per leaf) and, with ``normalized_reference='init'``, the normalised
  leaves' filter norms at ``init`` (``None`` when unused)."""

  count: jax.Array
  scales: Any = None
  norms: Any = None


def _counts_like(counts, params, who: str):
  """Per-leaf counts laid out as ``params`` (``None`` where a leaf has
  none): a tree of the same structure, or a flat sequence with one entry
  per leaf of ``params`` (``None`` entries allowed)."""
  n = len(jax.tree.leaves(params))
  treedef = jax.tree.structure(params)
  if isinstance(counts, (list, tuple)) and len(counts) == n:
    return jax.tree.unflatten(treedef, list(counts))
  try:
    leaves = treedef.flatten_up_to(counts)
  except (ValueError, TypeError):
    raise ValueError(f"{who}: layer_keep must give one count per leaf of the "
                     "params (a tree of the same structure, None where a leaf "
                     "has none).") from None
  return jax.tree.unflatten(treedef, leaves)


def _prox_transform(
    prox_fn: Callable[[jax.Array, jax.Array], jax.Array],
    l1: ScalarOrSchedule,
    learning_rate: ScalarOrSchedule,
    mask: MaskOrFn,
    who: str,
    normalized: MaskOrFn = None,
    rms_scaled: MaskOrFn = None,
    normalized_reference: str = "rms",
    keep=None,
    layer_keep=None,
) -> optax.GradientTransformationExtraArgs:
  _check_nonnegative(f"{who}: l1", l1)
  if keep is not None and layer_keep is not None:
    raise ValueError(f"{who}: give keep (one count over all masked leaves) "
                     "or layer_keep (a count per leaf), not both.")
  if normalized_reference not in ("rms", "init"):
    raise ValueError(f"{who}: normalized_reference must be 'rms' or 'init', "
                     f"got {normalized_reference!r}.")
  _check_nonnegative(f"{who}: learning_rate", learning_rate)

  def resolve(tree, params):
    if tree is None:
      return jax.tree.map(lambda _: False, params)
    return _resolve_mask(tree, params, who)

  def init_fn(params):
    _resolve_mask(mask, params, who)
    resolve(normalized, params)
    scales = None
    if rms_scaled is not None:
      scales = jax.tree.map(
          lambda p, r: jnp.sqrt(jnp.mean(jnp.square(
              jnp.asarray(p, jnp.float32)))) if r else jnp.ones([],
                                                            jnp.float32),
          params, resolve(rms_scaled, params))
    norms = None
    if normalized is not None and normalized_reference == "init":
      norms = jax.tree.map(
          lambda p, n: prox_lib.group_norms(p) if n and jnp.ndim(p) >= 2
          else jnp.ones([], jnp.float32), params,
          resolve(normalized, params))
    return ProxState(count=jnp.zeros([], jnp.int32), scales=scales,
                     norms=norms)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _require_params(params, who)
    tau = _value_at(learning_rate, state.count) * _value_at(l1, state.count)
    mask_tree = _resolve_mask(mask, params, who)
    norm_tree = resolve(normalized, params)
    ones = lambda: jax.tree.map(lambda _: jnp.ones([], jnp.float32), params)
    scales = state.scales if state.scales is not None else ones()
    refs = state.norms if state.norms is not None else ones()

    use_ref = state.norms is not None
    exempt = None
    units = None
    if keep is not None or layer_keep is not None:
      # The trimmed penalty: the `keep` largest masked entries of w + u (in
      # their thresholds' units) are exempt from the step.
      units = jax.tree.map(
          lambda u, p, nrm, sc, ref: None if u is None else threshold_units(
              p + u, nrm, sc, ref, use_ref),
          updates, params, norm_tree, scales, refs,
          is_leaf=lambda x: x is None)
    if layer_keep is not None:
      # The trimmed penalty inside each leaf: its own `k` largest exempt.
      counts = layer_keep(params) if callable(layer_keep) else layer_keep
      counts = _counts_like(counts, params, who)

      def leaf_exempt(un, k):
        # Exactly the k largest (ties by position), without a sort.
        if un is None or k is None:
          return None
        return masks_lib.topk_mask(un, jnp.clip(jnp.asarray(k, jnp.int32), 0,
                                                un.size))

      exempt_tree = jax.tree.map(leaf_exempt, units, counts,
                                 is_leaf=lambda x: x is None)
    elif keep is not None:
      flat = [a.ravel() for a, m in zip(
          jax.tree.leaves(units, is_leaf=lambda x: x is None),
          jax.tree.leaves(mask_tree, is_leaf=lambda x: x is None))
              if a is not None and not (isinstance(m, bool) and not m)]
      if flat:
        allu = jnp.concatenate(flat)
        k = keep(allu.size) if callable(keep) else keep
        k = jnp.clip(jnp.asarray(k, jnp.int32), 0, allu.size)
        desc = -jnp.sort(-allu)
        exempt = jnp.where(k > 0, desc[jnp.maximum(k - 1, 0)], jnp.inf)
    if units is None:
      units = jax.tree.map(lambda u: None, updates,
                           is_leaf=lambda x: x is None)
    if layer_keep is None:
      exempt_tree = jax.tree.map(
          lambda un: None if un is None or exempt is None else un >= exempt,
          units, is_leaf=lambda x: x is None)

    def leaf(u, p, m, nrm, sc, ref, ex):
      if u is None:
        return None
      target = p + u
      shrunk = prox_fn(target, (tau * sc).astype(target.dtype))
      if ex is not None:
        shrunk = jnp.where(ex, target, shrunk)
      if target.ndim >= 2 and not (isinstance(nrm, bool) and not nrm):
        relative = prox_lib.scale_invariant_soft_threshold(
            target, tau.astype(target.dtype),
            reference=ref if use_ref else None, exempt=ex)
        shrunk = jnp.where(nrm, relative, shrunk)
      new = jnp.where(m, shrunk, target)
      return (new - p).astype(u.dtype)

    new_updates = jax.tree.map(
        leaf, updates, params, mask_tree, norm_tree, scales, refs,
        exempt_tree, is_leaf=lambda x: x is None
    )
    return new_updates, state._replace(count=optax.safe_increment(
        state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def prox_l1(
    l1: ScalarOrSchedule,
    learning_rate: ScalarOrSchedule,
    mask: MaskOrFn = None,
    *,
    normalized: MaskOrFn = None,
    rms_scaled: MaskOrFn = None,
    normalized_reference: str = "rms",
    keep=None,
    layer_keep=None,
) -> optax.GradientTransformationExtraArgs:
  r"""Proximal step of ``l1 * ||w||_1`` applied to the incoming update.

  Given updates ``u`` (already scaled, e.g. ``u = -eta_t g_t``) and params
  ``w``, returns ``u'`` with

  .. math:: w + u' = S_{\eta_t \lambda_t}(w + u),
     \quad S_\tau(x) = \mathrm{sign}(x) \max(|x| - \tau, 0).

  Place it after the transformation that scales by the learning rate; the
  threshold is ``learning_rate(t) * l1(t)``. Entries landing in
  ``[-tau, tau]`` become exactly zero.

  **Normalised kernels.** Leaves marked True in ``normalized`` (kernels whose
  output channels, the last axis, feed a normalisation such as BatchNorm)
  get the scale-invariant step of
  :func:`proxnag_jax.prox.scale_invariant_soft_threshold` instead: per output
  filter ``c``, ``x_c = w_c + u_c`` is soft-thresholded at
  ``eta_t lambda_t rms(x_c)`` and its norm ``||x_c||`` is restored. The loss
  of such a kernel does not depend on a filter's scale, so an absolute
  threshold would shrink whole filters at no loss cost (and raise their
  effective learning rate ``eta / ||w_c||^2``); the relative one sparsifies
  the filter's direction only, and lambda is unitless there.

  Args:
    l1: the L1 coefficient lambda >= 0 (float, array or schedule).
    learning_rate: the step size eta >= 0 used by the preceding scaling
      (float, array or schedule), so the threshold is ``eta * lambda``.
    mask: Optax-style mask (pytree of bools or callable of params). Leaves
      marked False pass through unchanged (no shrinkage).
    normalized: Optax-style mask of the leaves (with at least two axes) that
      take the scale-invariant step (:func:`proxnag_jax.masks.
      normalized_kernels` finds them from a model); default none.
    rms_scaled: Optax-style mask of (unnormalised) leaves whose absolute
      threshold is ``eta * lambda * rms(w at init)``: a fixed per-leaf
      weight of the L1 penalty, so one unitless lambda serves the
      normalised kernels and the others of a network together (e.g. a
      classifier after BatchNorm layers). Default none.
    normalized_reference: the normalised leaves' threshold per filter:
      ``'rms'`` (default) ``eta * lambda * rms(x_c)``, lambda unitless;
      ``'init'`` ``eta * lambda * ||x_c|| / ||w_c at init||``, lambda in the
      units of the weights at ``init`` (the paper's absolute threshold
      while the kept norm is unchanged, so the allocation across layers
      follows the weights' magnitudes as in global magnitude pruning).
    keep: ``None`` (default) for the L1 penalty; an integer ``k`` (may be
      traced, or a callable of the number of masked entries) for the
      **trimmed** L1 penalty ``lambda * sum of all but the k
      largest |w_i|`` (Bertsimas, Copenhaver & Mazumder 2017; Yun et al.
      2019): each step the ``k`` largest masked entries of ``w + u``, ranked
      in their thresholds' units (:func:`threshold_units`), are exempt and
      the rest are soft-thresholded. The weights meant to survive a prune to
      ``k`` are then not shrunk (no L1 bias on them), while the others are
      driven to exact zeros as before.
    layer_keep: the trimmed penalty with a count per leaf instead of one
      over all: a tree laid out as the params (or a flat sequence, one entry
      per leaf) of counts ``k_l`` (may be traced; ``None`` for leaves without
      one), or a callable ``params -> such a tree``. Each leaf's ``k_l``
      largest entries of ``w + u`` are exempt, so a leaf keeps at least
      ``k_l`` nonzeros and a large lambda leaves it exactly ``k_l``: a
      per-layer budget. Not with ``keep``.

  Example:
    >>> tx = optax.chain(optax.scale_by_learning_rate(0.1),
    ...                  prox_l1(l1=1e-3, learning_rate=0.1))
    >>> tx = optax.chain(optax.scale_by_learning_rate(0.1),   # per layer
    ...                  prox_l1(l1=1e-3, learning_rate=0.1,
    ...                          layer_keep={"w": 30, "b": None}))
  """
  return _prox_transform(
      prox_lib.soft_threshold, l1, learning_rate, mask, "prox_l1",
      normalized, rms_scaled, normalized_reference, keep, layer_keep,
  )


def prox_group_l1(
    l1: ScalarOrSchedule,
    learning_rate: ScalarOrSchedule,
    axis: int = -1,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Proximal step of the group lasso ``l1 * sum_g ||w_g||_2``.

  Like :func:`prox_l1` but with the block soft-threshold

  .. math:: \mathrm{prox}(x)_g = x_g \max(1 - \eta_t\lambda_t / \|x_g\|_2, 0),

  where a group is one index along ``axis`` of a leaf (default ``-1``: one
  output filter of a Flax conv kernel ``(kh, kw, in, out)``, one output unit
  of a Dense kernel). Whole filters become exactly zero: structured sparsity.
  Leaves with fewer than two dimensions are usually masked out (biases, norm
  scales); for them every element is its own group.

  Example:
    >>> filters_only = lambda p: jax.tree.map(lambda x: x.ndim == 4, p)
    >>> tx = optax.chain(optax.scale_by_learning_rate(0.1),
    ...                  prox_group_l1(1e-3, 0.1, axis=-1, mask=filters_only),
    ...                  nesterov_extrapolation(0.9))
  """
  fn = lambda x, tau: prox_lib.group_soft_threshold(x, tau, axis=axis)
  return _prox_transform(fn, l1, learning_rate, mask, "prox_group_l1")


# --------------------------------------------------------------------------
# Nesterov extrapolation.
# --------------------------------------------------------------------------


class ExtrapolationState(NamedTuple):
  """State of :func:`nesterov_extrapolation`.

  Attributes:
    count: number of updates applied.
    sparse_params: the last proximal iterate ``w~_t`` (same tree as params).
    theta: the FISTA sequence ``theta_t`` (unused with constant momentum).
  """

  count: jax.Array
  sparse_params: PyTree
  theta: jax.Array


def prox_channel_l1(
    l1: ScalarOrSchedule,
    learning_rate: ScalarOrSchedule,
    groups: Sequence,
    *,
    weighted: bool = True,
    normalized: Optional[PyTree] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Proximal step of the channel group lasso over a network's channels.

  With ``tau = learning_rate * l1`` and the channel groups of
  :func:`proxnag_jax.surgery.channel_groups` (a channel's kernel column,
  bias and BatchNorm scale and shift form one group ``w_c`` of ``p_c``
  params, across leaves)::

      w_c  <-  max(0, 1 - tau * sqrt(p_c) / ||w_c + u_c||_2) * (w_c + u_c)

  so whole channels become exact zeros and :func:`proxnag_jax.surgery.shrink`
  can remove them. ``weighted=False`` drops ``sqrt(p_c)``. Leaves and
  channels outside the prunable groups pass through. ``normalized`` (a
  params-shaped tree of bools, the kernels that feed a normalisation) turns
  on the scale-invariant step for the groups whose kernels feed BatchNorm:
  channels are thresholded at ``tau`` times the group's rms channel norm,
  measured on their BatchNorm scale and shift only, and the group's norm is
  kept (:func:`proxnag_jax.surgery.group_soft_threshold`).

  Example:
    >>> groups = surgery.channel_groups(model, variables)
    >>> tx = optax.chain(optax.scale_by_learning_rate(0.01),
    ...                  prox_channel_l1(1e-3, 0.01, groups))
  """
  _check_nonnegative("prox_channel_l1: l1", l1)
  _check_nonnegative("prox_channel_l1: learning_rate", learning_rate)
  groups = tuple(groups)

  def init_fn(params):
    del params
    return ProxState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _require_params(params, "prox_channel_l1")
    tau = _value_at(learning_rate, state.count) * _value_at(l1, state.count)
    target = jax.tree.map(lambda p, u: p + u, params, updates)
    shrunk = surgery.group_soft_threshold(target, groups, tau,
                                          weighted=weighted,
                                          normalized=normalized)
    new = jax.tree.map(lambda s, p, u: (s - p).astype(u.dtype), shrunk,
                       params, updates)
    return new, ProxState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def fista_momentum(theta: jax.Array) -> tuple[jax.Array, jax.Array]:
  r"""One step of the paper's momentum schedule (eqs. 13-14).

  .. math:: \theta_{t+1} = (\sqrt{\theta_t^4 + 4\theta_t^2} - \theta_t^2)/2,
     \quad \beta_t = \theta_{t+1}(1/\theta_t - 1),  \quad \theta_0 = 1.

  Returns ``(beta_t, theta_{t+1})``. ``beta_0 = 0`` and ``beta_t -> 1``.
  """
  theta = jnp.asarray(theta, jnp.float32)
  t2 = theta * theta
  theta_next = (jnp.sqrt(t2 * t2 + 4.0 * t2) - t2) / 2.0
  beta = theta_next * (1.0 / theta - 1.0)
  return beta, theta_next


def nesterov_extrapolation(
    momentum: ScalarOrSchedule = 0.9, *, fista: bool = False
) -> optax.GradientTransformationExtraArgs:
  r"""Nesterov extrapolation between successive (proximal) iterates.

  With the incoming update ``u`` the new iterate is ``w~_{t+1} = w + u``;
  the transformation returns ``u'`` such that

  .. math:: w + u' = \tilde w_{t+1} + \beta_t (\tilde w_{t+1} - \tilde w_t),
     \quad \tilde w_0 = w_0,

  and keeps ``w~_{t+1}`` in its state (read it with :func:`sparse_params`).
  ``beta_t`` is ``momentum`` (a float, array or schedule of the step) or, with
  ``fista=True``, the schedule of :func:`fista_momentum`.

  Example:
    >>> tx = optax.chain(optax.scale_by_learning_rate(0.1),
    ...                  nesterov_extrapolation(0.9))   # == Nesterov SGD
  """
  if not fista:
    _check_nonnegative("nesterov_extrapolation: momentum", momentum)

  def init_fn(params):
    return ExtrapolationState(
        count=jnp.zeros([], jnp.int32),
        sparse_params=jax.tree.map(jnp.asarray, params),
        theta=jnp.ones([], jnp.float32),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _require_params(params, "nesterov_extrapolation")
    if fista:
      beta, theta = fista_momentum(state.theta)
    else:
      beta, theta = _value_at(momentum, state.count), state.theta

    def leaf(u, p, prev):
      new = p + u
      b = jnp.asarray(beta).astype(new.dtype)
      nxt = new + b * (new - prev)
      return (nxt - p).astype(u.dtype), new.astype(prev.dtype)

    pairs = jax.tree.map(leaf, updates, params, state.sparse_params)
    treedef = jax.tree.structure(updates)
    new_updates, new_sparse = jax.tree.transpose(
        treedef, jax.tree.structure((0, 0)), pairs
    )
    return new_updates, ExtrapolationState(
        count=optax.safe_increment(state.count),
        sparse_params=new_sparse,
        theta=theta,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def proxnag(
    learning_rate: ScalarOrSchedule,
    l1: ScalarOrSchedule,
    momentum: ScalarOrSchedule = 0.9,
    *,
    fista: bool = False,
    mask: MaskOrFn = None,
    groups: Optional[Sequence] = None,
    normalized: MaskOrFn = None,
    rms_scaled: MaskOrFn = None,
    normalized_reference: str = "rms",
    keep=None,
    layer_keep=None,
) -> optax.GradientTransformationExtraArgs:
  r"""Prox-NAG: proximal L1 gradient step with Nesterov momentum.

  Update rule (paper Algorithm 1, eqs. 6, 7, 11), with ``g_t = grad L(w_t)``::

      w~_{t+1} = S_{eta_t * l1}(w_t - eta_t * g_t)
      w_{t+1}  = w~_{t+1} + beta_t * (w~_{t+1} - w~_t),      w~_0 = w_0

  The parameters the optimizer hands back are ``w_{t+1}`` (where the next
  gradient is taken). The sparse solution ``w~_{t+1}``, with exact zeros, is
  ``sparse_params(opt_state)``: evaluate and prune with that.

  Args:
    learning_rate: step size eta_t (float, JAX array or Optax schedule).
    l1: the L1 coefficient lambda (float, JAX array, e.g. under ``vmap``, or
      schedule). ``l1=0`` gives exactly Nesterov SGD.
    momentum: constant beta (or schedule); ignored when ``fista=True``.
    fista: use the momentum schedule of eqs. 13-14 (FISTA).
    mask: Optax-style mask; leaves marked False get plain Nesterov steps with
      no shrinkage (e.g. biases and norm scales). Under
      ``optax.inject_hyperparams`` pass a callable mask as a static arg.
    groups: channel groups (:func:`proxnag_jax.surgery.channel_groups`):
      the proximal step is then the channel group lasso of
      :func:`prox_channel_l1` (whole channels become zero) instead of the
      element-wise soft threshold (``mask`` is ignored).
    normalized: Optax-style mask of kernels whose output channels are
      normalised (BatchNorm): they take the scale-invariant step of
      :func:`prox_l1` (threshold ``eta * l1 * rms`` per output filter, the
      filter's norm kept), so lambda is unitless there and filters do not
      shrink. Default: none (the paper's absolute threshold everywhere).
    rms_scaled: Optax-style mask of leaves whose absolute threshold is
      scaled by their rms at ``init`` (:func:`prox_l1`): with
      ``normalized``, the rest of the kernels, so lambda is unitless for all.
    normalized_reference: ``'rms'`` or ``'init'``: what the normalised
      kernels' threshold is relative to (:func:`prox_l1`).
    keep: ``k`` for the trimmed L1 penalty (the ``k`` largest entries
      exempt, :func:`prox_l1`); default the L1 penalty.
    layer_keep: the trimmed penalty with a count per leaf (:func:`prox_l1`):
      a per-layer budget that a large enough lambda reaches exactly.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> tx = proxnag(learning_rate=0.1, l1=1e-4, momentum=0.9,
    ...              mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
    >>> opt_state = tx.init(params)
    >>> updates, opt_state = tx.update(grads, opt_state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> w_sparse = sparse_params(opt_state)          # exact zeros
  """
  prox = (prox_channel_l1(l1, learning_rate, groups, normalized=normalized)
          if groups is not None
          else prox_l1(l1, learning_rate, mask=mask, normalized=normalized,
                       rms_scaled=rms_scaled,
                       normalized_reference=normalized_reference, keep=keep,
                       layer_keep=layer_keep))
  return optax.chain(
      optax.scale_by_learning_rate(learning_rate),
      prox,
      nesterov_extrapolation(momentum, fista=fista),
  )


# --------------------------------------------------------------------------
# Finding and replacing states inside arbitrary optimizer states.
# --------------------------------------------------------------------------


def find_states(opt_state: Any, cls: type) -> list:
  """Every sub-state of type ``cls`` (a NamedTuple state class) inside
  ``opt_state``, wherever it sits (``optax.chain``, ``inject_hyperparams``,
  ``MultiSteps``, :func:`with_masks`...): ``[(path, state)]``, found by the
  class's name with ``optax.tree_utils.tree_get_all_with_path``."""
  return [(p, v) for p, v in optax.tree_utils.tree_get_all_with_path(
      opt_state, cls.__name__) if isinstance(v, cls)]


def find_state(opt_state: Any, cls: type, what: str, built_by: str):
  """The one sub-state of type ``cls`` in ``opt_state``; a ValueError
  naming ``what`` and the transformation that builds it (``built_by``) if
  there is none or more than one."""
  found = find_states(opt_state, cls)
  if not found:
    raise ValueError(
        f"no {what} found in this optimizer state: it was not built with "
        f"{built_by}. Got a state of type {type(opt_state).__name__}."
    )
  if len(found) > 1:
    raise ValueError(
        f"{len(found)} {what}s found in this optimizer state; it is ambiguous "
        "which one to use. Read the sub-state you want and pass that."
    )
  return found[0][1]


def replace_states(opt_state: Any, cls: type,
                   fn: Callable[[Any], Any]) -> Any:
  """``opt_state`` with every sub-state of type ``cls`` replaced by
  ``fn(sub_state)`` (``optax.tree_utils.tree_set`` at each one's path)."""
  for path, st in find_states(opt_state, cls):
    opt_state = optax.tree_utils.tree_set(
        opt_state, lambda p, _, path=path: p == path,
        **{cls.__name__: fn(st)})
  return opt_state


def sparse_params(opt_state: optax.OptState) -> PyTree:
  """The sparse iterate ``w~`` from a state of :func:`proxnag`.

  Works wherever the Prox-NAG state sits: directly, inside ``optax.chain``,
  under ``optax.inject_hyperparams``, ``optax.MultiSteps`` or
  :func:`with_masks`.

  Raises:
    ValueError: if the state holds no (or more than one)
      :func:`nesterov_extrapolation` state.

  Example:
    >>> w_sparse = sparse_params(opt_state)
    >>> logits = model.apply({'params': w_sparse}, x)
  """
  st = find_state(
      opt_state, ExtrapolationState, "Prox-NAG (nesterov_extrapolation) state",
      "proxnag(...) or nesterov_extrapolation(...)",
  )
  return st.sparse_params


def set_sparse_params(opt_state: optax.OptState, new: PyTree) -> optax.OptState:
  """Returns ``opt_state`` with the stored sparse iterate replaced by ``new``.

  Used by pruning loops that multiply the sparse iterate by a mask.
  """
  find_state(
      opt_state, ExtrapolationState, "Prox-NAG (nesterov_extrapolation) state",
      "proxnag(...) or nesterov_extrapolation(...)",
  )
  return replace_states(
      opt_state, ExtrapolationState, lambda s: s._replace(sparse_params=new)
  )


# --------------------------------------------------------------------------
# Masked optimisation: pruned weights stay exactly zero.
# --------------------------------------------------------------------------


class WithMasksState(NamedTuple):
  """State of :func:`with_masks`: the current masks and the inner state."""

  masks: PyTree
  inner_state: optax.OptState


def _mask_sparse_iterates(inner_state, masks: PyTree):
  """Zeroes the masked entries of every Prox-NAG sparse iterate ``w~`` in
  ``inner_state`` (whose trees match ``masks``), so ``sparse_params`` never
  shows a pruned weight as alive, not even for one step."""
  target = jax.tree.structure(masks)

  def fix(st):
    sp = st.sparse_params
    if jax.tree.structure(sp) != target:
      return st
    return st._replace(sparse_params=jax.tree.map(
        lambda w, k: jnp.where(k, w, jnp.zeros_like(w)), sp, masks))

  return replace_states(inner_state, ExtrapolationState, fix)


def _as_bool_masks(masks: PyTree, params: PyTree, who: str) -> PyTree:
  tree = _resolve_mask(masks, params, who)

  def leaf(m, p):
    m = jnp.asarray(m)
    if m.shape not in ((), p.shape):
      raise ValueError(
          f"{who}: a mask leaf has shape {m.shape}, its param {p.shape}."
      )
    return jnp.broadcast_to(m.astype(bool), p.shape)

  return jax.tree.map(leaf, tree, params)


def with_masks(
    inner: optax.GradientTransformation,
    masks: MaskOrFn = None,
    *,
    dense_grads: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Wraps any optimizer so that pruned weights stay exactly zero.

  With a 0/1 (or bool) mask ``M`` per leaf::

      g'  = M * g                          (pruned grads never reach the inner state)
      u   = inner.update(g', ...)
      u'  = where(M, u, -w)                (so w + u' is exactly 0 where M = 0)

  so momentum, weight decay or Adam cannot move a pruned weight off zero, and
  a weight that is pruned now but was nonzero lands on zero at the next step.
  The masks live in the state: :func:`get_masks` reads them and
  :func:`set_masks` swaps them (e.g. a method that prunes and regrows).

  Args:
    inner: any Optax transformation.
    masks: a pytree of bools / 0-1 arrays matching params, a callable of
      params, or ``None`` for "keep the current zeros" (``params != 0``).
    dense_grads: pass the gradients of pruned weights to the inner
      optimizer too (``g' = g``), so its momentum is dense, as Sparse
      Momentum needs to regrow where the momentum is large; the weights are
      still held at exactly zero.

  Example:
    >>> tx = with_masks(optax.chain(optax.add_decayed_weights(5e-4),
    ...                             optax.sgd(0.1, momentum=0.9)), masks)
    >>> state = tx.init(apply_masks(params, masks))
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    if masks is None:
      m = jax.tree.map(lambda p: p != 0, params)
    else:
      m = _as_bool_masks(masks, params, "with_masks")
    return WithMasksState(masks=m, inner_state=_mask_sparse_iterates(
        inner.init(params), m))

  def update_fn(updates, state, params=None, **extra_args):
    _require_params(params, "with_masks")
    m = state.masks
    grads = updates if dense_grads else jax.tree.map(
        lambda g, k: jnp.where(k, g, jnp.zeros_like(g)), updates, m)
    new_updates, inner_state = inner.update(
        grads, state.inner_state, params, **extra_args
    )
    new_updates = jax.tree.map(
        lambda u, p, k: jnp.where(k, u, -p).astype(u.dtype),
        new_updates, params, m,
    )
    return new_updates, WithMasksState(
        masks=m, inner_state=_mask_sparse_iterates(inner_state, m))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def get_masks(opt_state: optax.OptState) -> PyTree:
  """The masks held by a :func:`with_masks` state, wherever it sits."""
  return find_state(
      opt_state, WithMasksState, "with_masks state", "with_masks(...)"
  ).masks


def set_masks(opt_state: optax.OptState, masks: PyTree) -> optax.OptState:
  """Returns ``opt_state`` with the :func:`with_masks` masks replaced."""
  old = get_masks(opt_state)
  try:
    new = jax.tree.map(
        lambda m, o: jnp.broadcast_to(jnp.asarray(m).astype(bool), o.shape),
        masks, old,
    )
  except (ValueError, TypeError) as e:
    raise ValueError(
        "set_masks: the new mask tree does not match the old one "
        f"({jax.tree.structure(masks)} vs {jax.tree.structure(old)})."
    ) from e
  return replace_states(opt_state, WithMasksState, lambda s: s._replace(
      masks=new, inner_state=_mask_sparse_iterates(s.inner_state, new)))


def set_hyperparams(opt_state: optax.OptState, **values) -> optax.OptState:
  """Sets injected hyperparameters wherever ``optax.inject_hyperparams``
  states sit in ``opt_state`` (traceable; only the named ones change).

  Unlike ``optax.tree_utils.tree_set`` it only looks at ``hyperparams`` dicts,
  so a params tree with a layer named like a hyperparameter is left alone.

  Raises:
    ValueError: if no injected state holds one of the names.

  Example:
    >>> tx = optax.inject_hyperparams(proxnag, static_args=("mask",))(
    ...     learning_rate=0.1, l1=1e-4)
    >>> state = set_hyperparams(tx.init(params), l1=2e-4)
  """
  seen = set()
  # Only the ``hyperparams`` fields of NamedTuple states (inject_hyperparams'
  # states), never a params-tree key of that name.
  found = [(p, v) for p, v in optax.tree_utils.tree_get_all_with_path(
      opt_state, "hyperparams") if p and isinstance(
          p[-1], optax.tree_utils.NamedTupleKey) and isinstance(v, dict)]
  out = opt_state
  for path, hp in found:
    hp = dict(hp)
    for k, v in values.items():
      if k in hp:
        hp[k] = jnp.asarray(v, jnp.asarray(hp[k]).dtype)
        seen.add(k)
    out = optax.tree_utils.tree_set(
        out, lambda p, _, path=path: p == path, hyperparams=hp)
  missing = set(values) - seen
  if missing:
    raise ValueError(f"set_hyperparams: no injected hyperparameter named "
                     f"{sorted(missing)} in this optimizer state (build it "
                     "with optax.inject_hyperparams).")
  return out


# --------------------------------------------------------------------------
# ADMM (Zhang et al. 2018) as Optax pieces.
# --------------------------------------------------------------------------
#
# ADMM weight pruning as Optax pieces: the penalty as a transformation whose
# state holds the auxiliary variables ``Z`` and ``U``, and the Z/U step.
#
# ADMM (Zhang et al. 2018) splits ``min f(W) s.t. W in S`` (``S``: at most
# ``k`` nonzeros) into
#
#     W-step:  W <- argmin f(W) + rho/2 ||W - Z + U||^2     (SGD steps)
#     Z-step:  Z <- proj_S(W + U)                            (or a prox)
#     U-step:  U <- U + W - Z
#
# :func:`admm_penalty` adds ``rho (W - Z + U)`` to the gradient of the leaves
# it covers, so any Optax optimizer after it performs the W-step;
# :func:`admm_step` performs the Z- and U-steps on the state, wherever it sits
# (inside ``optax.chain``, ``with_masks``, ``inject_hyperparams``), with any
# projection or proximal map. Everything is pure and traceable.
#
# Example::
#
#     tx = optax.chain(admm_penalty(rho=1e-3, mask=kernels), optax.sgd(0.01, 0.9))
#     opt_state = tx.init(params)
#     ...                                   # SGD steps: updates, opt_state = ...
#     opt_state = admm_step(opt_state, params, project=lambda v: topk(v, k))


class AdmmState(NamedTuple):
  """``z``, ``u``: params-shaped (zero on leaves the penalty does not cover);
  ``rho``: the penalty weight (a scalar array, so a loop can raise it)."""

  z: PyTree
  u: PyTree
  rho: jax.Array


def admm_penalty(rho: float, mask=None
                 ) -> optax.GradientTransformationExtraArgs:
  """The ADMM W-step penalty as a gradient transformation.

  Update rule, on the leaves selected by ``mask`` (default: all)::

      g <- g + rho * (w - z + u)

  ``z`` starts at ``w`` and ``u`` at zero (so the penalty starts at zero);
  :func:`admm_step` moves them. ``rho = 0`` turns the penalty off.

  Args:
    rho: the initial penalty weight (non-negative).
    mask: a pytree of bools matching params, or a callable of params, or
      None (every leaf).
  """
  _check_nonnegative("admm_penalty: rho", rho)

  def init_fn(params):
    which = _which(mask, params)
    z = jax.tree.map(lambda p, w: p if w else jnp.zeros_like(p), params,
                     which)
    return AdmmState(z=z, u=jax.tree.map(jnp.zeros_like, params),
                     rho=jnp.asarray(rho, jnp.float32))

  def update_fn(updates, state, params=None, **extra):
    del extra
    _require_params(params, "admm_penalty")
    which = _which(mask, params)
    new = jax.tree.map(
        lambda g, p, z, u, w: (g + state.rho * (p - z + u)).astype(g.dtype)
        if w else g, updates, params, state.z, state.u, which)
    return new, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _which(mask, params) -> PyTree:
  """The covered leaves as Python bools (the mask is static)."""
  return jax.tree.map(bool, _resolve_mask(
      mask, params, "admm_penalty"))


def admm_state(opt_state) -> AdmmState:
  """The :func:`admm_penalty` state inside ``opt_state``."""
  return find_state(
      opt_state, AdmmState, "ADMM (admm_penalty) state", "admm_penalty(...)")


def set_admm_state(opt_state, new: AdmmState):
  admm_state(opt_state)     # exactly one, or a clear error
  return replace_states(opt_state, AdmmState, lambda _: new)


def admm_step(opt_state, params: PyTree,
              project: Callable[[PyTree, AdmmState], PyTree],
              rho: Optional[jax.Array] = None):
  """The Z- and U-steps: ``Z <- project(W + U, state)``, ``U <- U + W - Z``.

  ``project`` maps the params-shaped ``W + U`` (and the current state, for
  reweighting) to the new ``Z`` (a projection onto a sparsity set, or a
  proximal map). ``rho`` replaces the penalty weight (e.g. raised between
  steps). Returns the new ``opt_state``.
  """
  st = admm_state(opt_state)
  v = jax.tree.map(jnp.add, params, st.u)
  z = project(v, st)
  u = jax.tree.map(lambda uu, p, zz: uu + p - zz, st.u, params, z)
  new = AdmmState(z=z, u=u, rho=st.rho if rho is None else
                  jnp.asarray(rho, jnp.float32))
  return set_admm_state(opt_state, new)


def reweighted_shrink(v: jax.Array, z_prev: jax.Array, tau, eps: float
                      ) -> jax.Array:
  """The reweighted-L1 proximal map, elementwise::

      z = sign(v) * max(|v| - tau / (|z_prev| + eps), 0)

  i.e. the prox of ``tau * sum_j alpha_j |z_j|`` with importance weights
  ``alpha_j = 1 / (|z_prev_j| + eps)``: a weight that was small is shrunk
  hard, a large one barely.
  """
  thr = tau / (jnp.abs(z_prev) + eps)
  return jnp.sign(v) * jnp.maximum(jnp.abs(v) - thr, 0.0)


# ---------------------------------------------------------------------------
# l_p-box ADMM: a sparse binary program solved on a continuous mask.
# ---------------------------------------------------------------------------


class LpBoxState(NamedTuple):
  """``y1`` (box and count), ``y2`` (sphere), their duals ``z1``, ``z2``
  (params-shaped; zero on uncovered leaves), the penalty ``rho`` and the
  step ``count``."""

  y1: PyTree
  y2: PyTree
  z1: PyTree
  z2: PyTree
  rho: jax.Array
  count: jax.Array


def _sphere_projection(v):
  """Projection onto ``{y : ||y - 1/2||_2^2 = n / 4}`` (``n = v.size``), the
  sphere through every binary point of the leaf."""
  d = v - 0.5
  norm = jnp.sqrt(jnp.sum(jnp.square(d)))
  r = 0.5 * jnp.sqrt(jnp.float32(v.size))
  return jnp.where(norm > 0, 0.5 + r * d / jnp.where(norm > 0, norm, 1.0),
                   0.5 + r / jnp.sqrt(jnp.float32(v.size)))


def lpbox_admm(keep, rho: float = 1e-2, rho_growth: float = 1.05,
               every: int = 50, rho_max: float = 10.0, mask=None,
               global_count: bool = False
               ) -> optax.GradientTransformationExtraArgs:
  """l_p-box ADMM (Wu & Ghanem, TPAMI 2018) for ``min f(x)`` over binary
  masks ``x in {0, 1}^n`` with exactly ``k`` ones, as a gradient
  transformation on the relaxed mask ``x`` (the covered params).

  ``{0,1}^n`` is exactly the box ``[0,1]^n`` intersected with the sphere
  ``||x - 1/2||^2 = n/4``; with the count in the box set, ADMM splits
  ``x = y1`` (``y1`` in box and count: :func:`~proxnag_jax.prox.
  capped_simplex_projection`) and ``x = y2`` (``y2`` on the sphere). Every
  call, on the covered leaves::

      g <- g + z1 + z2 + rho * (2 x - y1 - y2)        # the x-step's gradient

  and first, every ``every`` calls (the first call included)::

      y1 <- P_box&count(x + z1 / rho)
      y2 <- P_sphere(x + z2 / rho)
      z1 <- z1 + rho (x - y1);  z2 <- z2 + rho (x - y2)
      rho <- min(rho * rho_growth, rho_max)

  so the ``every`` SGD steps between are an inexact x-step. As ``rho``
  grows, ``x``, ``y1`` and ``y2`` meet at a binary point with ``k`` ones.
  The reference's own defaults (``rho`` 25, x1.01 every 5 iterations) are
  for an exact x-step (a linear solve); with SGD the x-step needs many
  steps per dual update (measured on a toy program: with y/z updated every
  step, or every 5 steps under momentum 0.9, the iterates diverge or
  oscillate; every 20-50 steps they meet at the optimum), and
  ``eta * 2 rho < 2`` at learning rate ``eta``, hence a small start and a
  cap (``rho_max`` 10 for ``eta`` <= 0.1).

  Args:
    keep: the count ``k``: a pytree of per-leaf counts matching params
      (``None`` on uncovered leaves) or, with ``global_count``, one count
      over all covered leaves; or a function of the params giving it.
      Counts may be traced.
    rho, rho_growth, every, rho_max: the penalty, its growth factor per
      y/z update, the calls between y/z updates, its cap (``rho``,
      ``rho_growth`` and ``rho_max`` may be traced).
    mask: which leaves are masks (pytree of bools, callable, or None: all).

  >>> tx = optax.chain(lpbox_admm(keep={"w": 30}), optax.sgd(0.1, 0.9))
  """
  _check_nonnegative("lpbox_admm: rho", rho)
  if ((isinstance(rho_growth, numbers.Real) and not rho_growth >= 1.0)
      or every < 1):
    raise ValueError("lpbox_admm: need rho_growth >= 1 and every >= 1.")
  if (isinstance(rho, numbers.Real) and isinstance(rho_max, numbers.Real)
      and not rho_max >= rho):
    raise ValueError("lpbox_admm: need rho_max >= rho.")

  def project_box(v, which, keep):
    if global_count:
      leaves, treedef = jax.tree.flatten(v)
      w = jax.tree.leaves(which)
      flat = masks_lib.concat_selected(leaves, w)
      y = prox_lib.capped_simplex_projection(flat, keep)
      return jax.tree.unflatten(treedef, masks_lib.split_selected(
          y, leaves, w, jnp.zeros_like))
    return jax.tree.map(
        lambda x, k, c: prox_lib.capped_simplex_projection(x, k).astype(x.dtype)
        if c else jnp.zeros_like(x), v, keep, which,
        is_leaf=lambda t: t is None)

  def init_fn(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return LpBoxState(y1=params, y2=params, z1=zeros, z2=zeros,
                      rho=jnp.asarray(rho, jnp.float32),
                      count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra):
    del extra
    _require_params(params, "lpbox_admm")
    which = jax.tree.map(bool, _resolve_mask(mask, params, "lpbox_admm"))

    def admm(st):
      r = st.rho
      y1 = project_box(jax.tree.map(lambda x, z: x + z / r, params, st.z1),
                       which, keep(params) if callable(keep) else keep)
      y2 = jax.tree.map(lambda x, z, c: _sphere_projection(x + z / r).astype(
          x.dtype) if c else jnp.zeros_like(x), params, st.z2, which)
      z1 = jax.tree.map(lambda z, x, y, c: z + r * (x - y) if c else z,
                        st.z1, params, y1, which)
      z2 = jax.tree.map(lambda z, x, y, c: z + r * (x - y) if c else z,
                        st.z2, params, y2, which)
      return st._replace(y1=y1, y2=y2, z1=z1, z2=z2,
                         rho=jnp.minimum(r * rho_growth, rho_max))

    state = jax.lax.cond(state.count % every == 0, admm, lambda s: s, state)
    new = jax.tree.map(
        lambda g, x, y1, y2, z1, z2, c: (g + z1 + z2 + state.rho * (
            2 * x - y1 - y2)).astype(g.dtype) if c else g,
        updates, params, state.y1, state.y2, state.z1, state.z2, which)
    return new, state._replace(count=state.count + 1)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class LeafRmsState(NamedTuple):
  """Per covered leaf, the moving average ``nu`` of its gradient's mean
  square (a scalar; 0 on uncovered leaves) and the step ``count``."""

  nu: PyTree
  count: jax.Array


def scale_by_leaf_rms(decay: float = 0.99, eps: float = 1e-30, mask=None
                      ) -> optax.GradientTransformationExtraArgs:
  """Divides each covered leaf's update by the root of a moving average of
  its mean square: one scalar per leaf (per layer), not per entry::

      nu_l <- decay * nu_l + (1 - decay) * mean(g_l ** 2)
      g_l  <- g_l / sqrt(nu_l / (1 - decay ** t) + eps)

  so every layer's gradient has unit root mean square whatever its fan-in,
  and the ranking inside a layer (the direction of its gradient) is kept.
  Placed before a penalty of fixed scale (:func:`lpbox_admm`), it makes the
  penalty's ``rho`` the same unitless number in every layer: without it a
  layer whose loss gradient is 100x smaller (a wide dense layer behind a
  frozen random network) is all penalty and no loss.

  >>> tx = optax.chain(scale_by_leaf_rms(), lpbox_admm(keep={"w": 30}),
  ...                  optax.sgd(0.01, 0.9))
  """
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"scale_by_leaf_rms: decay must be in [0, 1), got "
                     f"{decay}.")

  def init_fn(params):
    return LeafRmsState(nu=jax.tree.map(lambda _: jnp.zeros([], jnp.float32),
                                        params),
                        count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra):
    del extra
    which = jax.tree.map(bool, _resolve_mask(mask, updates,
                                             "scale_by_leaf_rms"))
    count = state.count + 1
    nu = jax.tree.map(lambda n, g, c: decay * n + (1.0 - decay) * jnp.mean(
        jnp.square(g.astype(jnp.float32))) if c else n, state.nu, updates,
                      which)
    correction = 1.0 - decay ** count.astype(jnp.float32)
    new = jax.tree.map(lambda g, n, c: (g / jnp.sqrt(n / correction + eps)
                                        ).astype(g.dtype) if c else g,
                       updates, nu, which)
    del params
    return new, LeafRmsState(nu=nu, count=count)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def lpbox_state(opt_state) -> LpBoxState:
  """The :func:`lpbox_admm` state inside ``opt_state``."""
  return find_state(opt_state, LpBoxState, "l_p-box ADMM state",
                    "lpbox_admm(...)")
