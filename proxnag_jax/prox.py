"""Proximal operators: array maths only, no Optax, no pytrees.

These are the closed-form minimisers behind the proximal optimizers in
:mod:`proxnag_jax.transforms`.

* ``soft_threshold(x, tau)`` is the proximal operator of ``tau * ||x||_1``
  (paper eq. 7)::

      S_tau(x) = sign(x) * max(|x| - tau, 0)

* ``group_soft_threshold(x, tau, axis)`` is the proximal operator of the group
  lasso ``tau * sum_g ||x_g||_2``, where a group ``g`` is one index along
  ``axis`` (e.g. one output filter of a conv kernel) and ``x_g`` is the slice
  over all other axes::

      prox(x)_g = x_g * max(1 - tau / ||x_g||_2, 0)

Both return exact zeros (not just small numbers), keep the dtype of ``x`` and
work under ``jit``/``vmap`` with a traced ``tau``.

* ``capped_simplex_projection(s, k)`` is the Euclidean projection onto
  ``{x : 0 <= x <= 1, sum(x) = k}`` (mask probabilities with ``k`` expected
  ones)::

      P(s) = clip(s - v, 0, 1),  v such that sum(P(s)) = k
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def soft_threshold(x, tau):
  """Element-wise soft-threshold ``sign(x) * max(|x| - tau, 0)``.

  Args:
    x: array.
    tau: non-negative threshold, scalar or broadcastable to ``x``.

  Returns:
    An array of ``x``'s shape and dtype; entries with ``|x| <= tau`` are
    exactly zero.

  Example:
    >>> soft_threshold(jnp.array([-2.0, -0.5, 0.3, 1.5]), 1.0)
    Array([-1., -0.,  0.,  0.5], dtype=float32)
  """
  x = jnp.asarray(x)
  tau = jnp.asarray(tau, dtype=x.dtype)
  shrunk = jnp.maximum(jnp.abs(x) - tau, jnp.zeros((), x.dtype))
  return (jnp.sign(x) * shrunk).astype(x.dtype)


def _other_axes(ndim: int, axis: int | Sequence[int]) -> tuple[int, ...]:
  keep = {a % ndim for a in ((axis,) if isinstance(axis, int) else axis)}
  return tuple(a for a in range(ndim) if a not in keep)


def group_norms(x, axis: int | Sequence[int] = -1):
  """L2 norm of each group; a group is one index along ``axis``.

  The result keeps the reduced axes (size 1) so that it broadcasts against
  ``x``. For a 1-D ``x`` with ``axis=-1`` every element is its own group.
  """
  x = jnp.asarray(x)
  if x.ndim == 0:
    return jnp.abs(x)
  red = _other_axes(x.ndim, axis)
  sq = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=red, keepdims=True)
  return jnp.sqrt(sq)


def group_soft_threshold(x, tau, axis: int | Sequence[int] = -1):
  """Block soft-threshold (proximal operator of the group lasso).

  ``prox(x)_g = x_g * max(1 - tau / ||x_g||_2, 0)`` for every group ``g``,
  where ``g`` runs over the indices of ``axis`` and ``x_g`` is the slice over
  the remaining axes. Whole groups become exactly zero when their norm is at
  most ``tau``.

  Args:
    x: array.
    tau: non-negative threshold (scalar).
    axis: the axis (or axes) that index groups. For a Flax conv kernel of
      shape ``(kh, kw, in, out)`` the default ``-1`` makes each output filter
      a group; for a Dense kernel ``(in, out)`` each output neuron.

  Example:
    >>> w = jnp.array([[3.0, 0.1], [4.0, 0.1]])   # column norms 5 and ~0.14
    >>> group_soft_threshold(w, 1.0, axis=-1)
    Array([[2.4, 0. ],
           [3.2, 0. ]], dtype=float32)
  """
  x = jnp.asarray(x)
  norms = group_norms(x, axis)
  tau = jnp.asarray(tau, jnp.float32)
  safe = jnp.where(norms > 0, norms, 1.0)
  factor = jnp.where(norms > tau, 1.0 - tau / safe, 0.0)
  return (x.astype(jnp.float32) * factor).astype(x.dtype)


def filter_rms(x, axis: int | Sequence[int] = -1):
  """Root mean square of each group (one index along ``axis``), with the
  reduced axes kept (size 1) so it broadcasts against ``x``."""
  x = jnp.asarray(x)
  if x.ndim == 0:
    return jnp.abs(x)
  red = _other_axes(x.ndim, axis)
  n = 1
  for a in red:
    n *= x.shape[a]
  return group_norms(x, axis) / jnp.sqrt(jnp.float32(max(n, 1)))


def scale_invariant_soft_threshold(x, tau, axis: int | Sequence[int] = -1,
                                   reference=None, exempt=None):
  """Soft-threshold relative to each filter's scale, the filter's norm kept.

  For every group ``g`` (one index along ``axis``: an output filter of a
  Flax kernel)::

      y_g = S_{tau * rms(x_g)}(x_g)
      out_g = y_g * ||x_g||_2 / ||y_g||_2            (0 where y_g = 0)

  The threshold is a fraction ``tau`` of the filter's rms, so the result is
  equivariant to the filter's scale: ``f(a x) = a f(x)`` for ``a > 0``. It
  is the step to use on a kernel whose output channels are normalised
  (BatchNorm): there the loss does not see the filter's scale, an absolute
  threshold shrinks whole filters at no loss cost, and the norm it removes
  is put back here, so only the filter's direction is sparsified. With
  ``tau < 1`` a filter never becomes all zero (its largest entry exceeds its
  rms).

  With ``reference`` (each filter's norm at some earlier point, e.g. the
  start of pruning, shaped like :func:`group_norms`' result) the threshold
  is ``tau * ||x_g|| / reference_g`` instead: ``tau`` is then in the units of
  the weights at that point (the paper's absolute threshold while the norm
  is unchanged, as the restoration keeps it), following the filter's scale
  if it changes: ``f(a x, ref) = a f(x, ref)``, so a filter scaled after
  the reference point is thresholded as before. Filters whose reference is 0
  pass through.

  Entries marked True in ``exempt`` (shaped like ``x``) are not thresholded
  (the trimmed penalty's kept entries, :func:`proxnag_jax.transforms.
  prox_l1`); the filter's norm is still restored over all its entries.

  Example:
    >>> w = jnp.array([[3.0, 0.3], [0.1, 0.01]])   # filters: columns
    >>> scale_invariant_soft_threshold(w, 0.5)      # zeroes 0.1 and 0.01
    Array([[3.0016663 , 0.30016664],
           [0.        , 0.        ]], dtype=float32)
  """
  x = jnp.asarray(x)
  xf = x.astype(jnp.float32)
  tau = jnp.asarray(tau, jnp.float32)
  n_x = group_norms(xf, axis)
  if reference is None:
    thr = tau * filter_rms(xf, axis)
  else:
    ref = jnp.asarray(reference, jnp.float32)
    thr = jnp.where(ref > 0, tau * n_x / jnp.where(ref > 0, ref, 1.0), 0.0)
  y = soft_threshold(xf, thr)
  if exempt is not None:
    y = jnp.where(exempt, xf, y)
  n_y = group_norms(y, axis)
  factor = jnp.where(n_y > 0, n_x / jnp.where(n_y > 0, n_y, 1.0), 0.0)
  return (y * factor).astype(x.dtype)


def capped_simplex_projection(s, k, iters: int = 50):
  """Euclidean projection onto the capped simplex ``{x : 0 <= x <= 1,
  sum(x) = k}``: ``x = clip(s - v, 0, 1)`` with the scalar ``v`` found by
  bisection (``sum(clip(s - v, 0, 1))`` falls monotonically in ``v``).

  The constraint set of mask probabilities with ``k`` expected ones
  (ProbMask, Zhou et al. 2021; the box-and-count set of the l_p-box ADMM
  formulation of a sparse binary program). ``k`` may be traced; ``0 <= k <=
  s.size`` (clipped there). ``iters`` halvings of the bracket ``[min(s) - 1,
  max(s)]`` find which entries are at 0, at 1 or free; one exact step on
  that piece then gives ``v``, so the sum is ``k`` to float32 rounding.

  >>> capped_simplex_projection(jnp.array([0.9, 0.5, 0.1]), 1.0)
  """
  x = jnp.asarray(s, jnp.float32)
  k = jnp.clip(jnp.asarray(k, jnp.float32), 0.0, float(x.size))
  total = lambda v: jnp.sum(jnp.clip(x - v, 0.0, 1.0))

  def body(_, lohi):
    lo, hi = lohi
    mid = 0.5 * (lo + hi)
    big = total(mid) > k          # too much mass: raise v
    return jnp.where(big, mid, lo), jnp.where(big, hi, mid)

  lo, hi = jax.lax.fori_loop(0, iters, body, (jnp.min(x) - 1.0, jnp.max(x)))
  v = 0.5 * (lo + hi)
  # One exact step on the piece the bisection found: with the entries at 1
  # and the free ones (strictly inside) fixed, sum = k is linear in v. (The
  # float32 sum's own rounding would otherwise leave v off by its error over
  # the number of free entries, large when few are free.)
  ones = x - v >= 1.0
  free = (x - v > 0.0) & ~ones
  n_free = jnp.sum(free)
  v_exact = (jnp.sum(ones) + jnp.sum(jnp.where(free, x, 0.0)) - k) / (
      jnp.maximum(n_free, 1))
  v = jnp.where(n_free > 0, v_exact, v)
  return jnp.clip(x - v, 0.0, 1.0).astype(jnp.asarray(s).dtype)
