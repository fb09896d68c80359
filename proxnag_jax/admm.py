"""ADMM weight pruning as Optax pieces: the penalty as a transformation whose
state holds the auxiliary variables ``Z`` and ``U``, and the Z/U step.

ADMM (Zhang et al. 2018) splits ``min f(W) s.t. W in S`` (``S``: at most
``k`` nonzeros) into

    W-step:  W <- argmin f(W) + rho/2 ||W - Z + U||^2     (SGD steps)
    Z-step:  Z <- proj_S(W + U)                            (or a prox)
    U-step:  U <- U + W - Z

:func:`admm_penalty` adds ``rho (W - Z + U)`` to the gradient of the leaves
it covers, so any Optax optimizer after it performs the W-step;
:func:`admm_step` performs the Z- and U-steps on the state, wherever it sits
(inside ``optax.chain``, ``with_masks``, ``inject_hyperparams``), with any
projection or proximal map. Everything is pure and traceable.

Example::

    tx = optax.chain(admm_penalty(rho=1e-3, mask=kernels), optax.sgd(0.01, 0.9))
    opt_state = tx.init(params)
    ...                                   # SGD steps: updates, opt_state = ...
    opt_state = admm_step(opt_state, params, project=lambda v: topk(v, k))
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from proxnag_jax import transforms

PyTree = Any


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
  transforms._check_nonnegative("admm_penalty: rho", rho)  # pylint: disable=protected-access

  def init_fn(params):
    which = _which(mask, params)
    z = jax.tree.map(lambda p, w: p if w else jnp.zeros_like(p), params,
                     which)
    return AdmmState(z=z, u=jax.tree.map(jnp.zeros_like, params),
                     rho=jnp.asarray(rho, jnp.float32))

  def update_fn(updates, state, params=None, **extra):
    del extra
    transforms._require_params(params, "admm_penalty")  # pylint: disable=protected-access
    which = _which(mask, params)
    new = jax.tree.map(
        lambda g, p, z, u, w: (g + state.rho * (p - z + u)).astype(g.dtype)
        if w else g, updates, params, state.z, state.u, which)
    return new, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _which(mask, params) -> PyTree:
  """The covered leaves as Python bools (the mask is static)."""
  return jax.tree.map(bool, transforms._resolve_mask(  # pylint: disable=protected-access
      mask, params, "admm_penalty"))


def admm_state(opt_state) -> AdmmState:
  """The :func:`admm_penalty` state inside ``opt_state``."""
  return transforms._find_one(  # pylint: disable=protected-access
      opt_state, AdmmState, "ADMM (admm_penalty) state", "admm_penalty(...)")


def set_admm_state(opt_state, new: AdmmState):
  admm_state(opt_state)     # exactly one, or a clear error
  return transforms._replace(opt_state, AdmmState, lambda _: new)  # pylint: disable=protected-access


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


__all__ = ["AdmmState", "admm_penalty", "admm_state", "set_admm_state",
           "admm_step", "reweighted_shrink"]
