"""A drop-in ``lax.conv_general_dilated`` with a faster backward pass on CPU.

Measured on the 2-core CPUs here (see ``docs/results.md``): for a 3x3, 16->16 conv on a 128x32x32 batch, XLA:CPU
computes the forward pass in ~9 ms but the kernel gradient in ~60 ms, and
inside a ``lax.scan`` (the loop's scanned chunks) the kernel gradient takes
~620 ms and the input gradient ~45 ms. Written as

* kernel gradient: for every tap ``(i, j)`` of the kernel, one matmul
  ``x_shifted^T @ dy`` over the (strided) shifted input;
* input gradient (stride 1): a plain forward convolution of ``dy`` with the
  flipped, transposed kernel;

the same gradients (to float32 rounding) take ~21 ms and ~4 ms inside a scan.
Other configurations (dilations, groups, other layouts) fall back to
``lax.conv_general_dilated`` and JAX's own gradient. Pass it to Flax as
``nn.Conv(..., conv_general_dilated=conv_general_dilated)``.

**oneDNN on the CPU.** Where :mod:`proxnag_jax.models.onednn` is available
(the ``[cpu]`` extra), float32 convolutions on the CPU run their forward pass
and both gradients as oneDNN custom calls instead: 2-3x faster per layer than
XLA:CPU on these CPUs, the same values to float32 rounding (tested). The
choice is made when a function is traced: ``PROXNAG_CONV=auto`` (default:
oneDNN when the run has one CPU device in all and it is available, else
XLA), ``onednn`` (required; fails if unavailable) or ``xla``;
:func:`use_backend` overrides it inside a ``with`` block (tracing for channel
groups and the portable export use ``'xla'``, so their programs hold plain
convolutions). :func:`backend` says what a trace made now would use.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os

import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")
BACKENDS = ("auto", "onednn", "xla")
_override = contextvars.ContextVar("proxnag_conv_backend", default=None)


def _setting() -> str:
  name = _override.get() or os.environ.get("PROXNAG_CONV") or "auto"
  if name not in BACKENDS:
    raise ValueError(f"PROXNAG_CONV={name!r}: use one of {BACKENDS}")
  return name


@contextlib.contextmanager
def use_backend(name: str):
  """Traces inside the block use convolution backend ``name`` (one of
  :data:`BACKENDS`). A function already jitted keeps what it was traced
  with."""
  if name not in BACKENDS:
    raise ValueError(f"conv backend {name!r}: use one of {BACKENDS}")
  token = _override.set(name)
  try:
    yield
  finally:
    _override.reset(token)


def backend() -> str:
  """``'onednn'`` or ``'xla'``: what a float32 convolution traced now runs
  on."""
  name = _setting()
  if name == "xla":
    return "xla"
  # One CPU device in all: the custom calls have no sharding rule, and
  # several CPU devices (host-platform device counts, several processes) are
  # test layouts, not speed.
  why = ("it runs only on the CPU backend" if jax.default_backend() != "cpu"
         else "it runs only with one CPU device in all"
         if jax.device_count() > 1 else None)
  if why:
    if name == "onednn":
      raise ValueError(f"PROXNAG_CONV=onednn: {why} (this run has "
                       f"{jax.device_count()} {jax.default_backend()} "
                       "devices); use auto or xla")
    return "xla"
  from proxnag_jax.models import onednn  # pylint: disable=g-import-not-at-top
  if name == "onednn":
    onednn.require()
    return "onednn"
  return "onednn" if onednn.available() else "xla"


def _plain(x, w, strides, pads, precision):
  dn = lax.conv_dimension_numbers(x.shape, w.shape, _DN)
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=dn,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, w, strides, pads, precision, use_onednn):
  return _conv_fwd(x, w, strides, pads, precision, use_onednn)[0]


def _conv_fwd(x, w, strides, pads, precision, use_onednn):
  if use_onednn:
    from proxnag_jax.models import onednn  # pylint: disable=g-import-not-at-top
    return onednn.conv(x, w, strides, pads), (x, w)
  return _plain(x, w, strides, pads, precision), (x, w)


def _conv_bwd(strides, pads, precision, use_onednn, res, dy):
  x, w = res
  if use_onednn:
    from proxnag_jax.models import onednn  # pylint: disable=g-import-not-at-top
    return (onednn.conv_input_grad(dy, w, x.shape, strides, pads),
            onednn.conv_kernel_grad(x, dy, w.shape, strides, pads))
  kh, kw, c, o = w.shape
  (pt, pb), (pl, pr) = pads
  sh, sw = strides
  n, ho, wo, _ = dy.shape
  # Kernel gradient: one (C x NHW) @ (NHW x O) matmul per kernel tap.
  xp = jnp.pad(x, ((0, 0), (max(pt, 0), max(pb, 0)),
                   (max(pl, 0), max(pr, 0)), (0, 0)))
  xp = xp[:, max(-pt, 0):xp.shape[1] - max(-pb, 0),
          max(-pl, 0):xp.shape[2] - max(-pr, 0)]
  dyf = dy.reshape(-1, o)
  taps = []
  for i in range(kh):
    for j in range(kw):
      xs = xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
      taps.append(jnp.matmul(xs.reshape(-1, c).T, dyf, precision=precision))
  dw = jnp.stack(taps).reshape(kh, kw, c, o)
  # Input gradient.
  if strides == (1, 1):
    wt = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    dx = _plain(dy, wt, (1, 1), ((kh - 1 - pt, kh - 1 - pb),
                                 (kw - 1 - pl, kw - 1 - pr)), precision)
  else:
    dx = jax.vjp(lambda x_: _plain(x_, w, strides, pads, precision), x)[1](
        dy)[0]
  return dx.astype(x.dtype), dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """``lax.conv_general_dilated`` (same arguments and result), with the
  faster gradients above (and oneDNN on the CPU, see the module docstring)
  for 2-D NHWC/HWIO convolutions without dilation or groups."""
  kwargs = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                dimension_numbers=dimension_numbers,
                feature_group_count=feature_group_count,
                batch_group_count=batch_group_count, precision=precision,
                preferred_element_type=preferred_element_type)
  ones = (1,) * (lhs.ndim - 2)
  supported = (
      lhs.ndim == 4 and feature_group_count == 1 and batch_group_count == 1
      and tuple(lhs_dilation or ones) == ones
      and tuple(rhs_dilation or ones) == ones
      and preferred_element_type is None
      and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers
                                     or _DN)
      == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DN))
  if not supported:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding,
                                    **kwargs)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2],
                                  window_strides, padding)
  pads = tuple((int(a), int(b)) for a, b in padding)
  use_onednn = (lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32
                and min(min(p) for p in pads) >= 0 and backend() == "onednn")
  return _conv(lhs, rhs, tuple(int(s) for s in window_strides), pads,
               precision, use_onednn)


__all__ = ["BACKENDS", "backend", "conv_general_dilated", "use_backend"]
