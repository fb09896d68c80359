"""oneDNN convolutions for XLA:CPU, as XLA FFI custom calls.

XLA:CPU runs a convolution with Eigen; for the small-channel 3x3 convolutions of
CIFAR networks its forward pass and gradients are 2-3x slower than oneDNN's
(the library PyTorch's CPU convolutions use), measured layer by layer in
``docs/results.md`` ("Train-step throughput"). This module compiles
``_onednn/conv.cc`` (three handlers: forward, input gradient, kernel gradient;
NHWC activations, HWIO kernels, float32) against the ``onednn-cpu-gomp`` wheel
and registers them with JAX. :mod:`proxnag_jax.models.conv` uses them on the
CPU when they are available.

Install the extra, then build once (the first use builds it too)::

    pip install -e ".[cpu]"
    python -m proxnag_jax.models.onednn build   # prints where it went
    python -m proxnag_jax.models.onednn info    # what oneDNN runs per layer

The shared library goes to ``$PROXNAG_ONEDNN_CACHE`` (default
``~/.cache/proxnag_jax``), named by a hash of the source, the jaxlib version and
the oneDNN headers, so a changed source or upgrade rebuilds it. A missing
oneDNN, compiler or failed build leaves :func:`available` false and the
convolutions on XLA (with one warning saying why).
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import numpy as np

_SRC = os.path.join(os.path.dirname(__file__), "_onednn", "conv.cc")
_TARGETS = {"fwd": "PnjConvFwd", "bwd_data": "PnjConvBwdData",
            "bwd_weights": "PnjConvBwdWeights"}
_PREFIX = "proxnag_conv_"


class Unavailable(ValueError):
  """oneDNN convolutions cannot be built or loaded here (the message says why
  and what to install). A ValueError: the commands report it as a user's
  error (``PROXNAG_CONV=onednn`` without the ``[cpu]`` extra or a compiler),
  without a traceback."""


def _dnnl_root() -> str:
  """The prefix holding ``include/oneapi/dnnl`` and ``lib/libdnnl.so``:
  ``$DNNL_ROOT``, else the Python environment's prefix (where the
  ``onednn-cpu-gomp`` / ``onednn-devel-cpu-gomp`` wheels install them)."""
  for root in (os.environ.get("DNNL_ROOT"), sys.prefix):
    if root and os.path.exists(
        os.path.join(root, "include", "oneapi", "dnnl", "dnnl.hpp")):
      return root
  raise Unavailable(
      "oneDNN headers not found (install the extra: pip install -e \".[cpu]\", "
      "or point DNNL_ROOT at a oneDNN install with include/ and lib/)")


def _library_path(root: str) -> str:
  import jaxlib  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  with open(_SRC, "rb") as f:
    h.update(f.read())
  h.update(jaxlib.__version__.encode())
  with open(os.path.join(root, "include", "oneapi", "dnnl",
                         "dnnl_version.h"), "rb") as f:
    h.update(f.read())
  cache = os.environ.get("PROXNAG_ONEDNN_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "proxnag_jax")
  return os.path.join(cache, f"pnj_conv_{h.hexdigest()[:16]}.so")


def build(verbose: bool = False) -> str:
  """Compiles the handlers (once per source/jaxlib/oneDNN version) and returns
  the shared library's path. Raises :class:`Unavailable` with the reason."""
  root = _dnnl_root()
  path = _library_path(root)
  if os.path.exists(path):
    return path
  compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which(
      "c++")
  if not compiler:
    raise Unavailable("no C++ compiler found (install g++, or set CXX)")
  import jax  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time (test workers)
    if os.path.exists(path):
      return path
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
    os.close(fd)
    lib = os.path.join(root, "lib")
    cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
           "-I", jax.ffi.include_dir(), "-I", os.path.join(root, "include"),
           _SRC, "-o", tmp, "-L", lib, "-ldnnl", f"-Wl,-rpath,{lib}"]
    if verbose:
      print(" ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
      os.unlink(tmp)
      raise Unavailable("building the oneDNN convolutions failed:\n"
                        + done.stderr[-2000:])
    os.replace(tmp, path)
  return path


@functools.lru_cache(maxsize=None)
def _load():
  """Builds if needed, loads and registers the handlers; ``(lib, None)`` or
  ``(None, reason)``."""
  try:
    import jax  # pylint: disable=g-import-not-at-top
    lib = ctypes.cdll.LoadLibrary(build())
    for name in _TARGETS.values():
      jax.ffi.register_ffi_target(_PREFIX + name,
                                  jax.ffi.pycapsule(getattr(lib, name)),
                                  platform="cpu")
    return lib, None
  except (Unavailable, OSError) as e:
    return None, str(e)


def available() -> bool:
  """Whether the oneDNN convolutions are built and registered (builds them on
  first call when oneDNN and a compiler are present)."""
  return _load()[0] is not None


def why_unavailable() -> str | None:
  return _load()[1]


def require() -> None:
  lib, why = _load()
  if lib is None:
    raise Unavailable(why)


def _attrs(strides, pads) -> dict:
  (pt, pb), (pl, pr) = pads
  return dict(sh=np.int64(strides[0]), sw=np.int64(strides[1]),
              pt=np.int64(pt), pb=np.int64(pb), pl=np.int64(pl),
              pr=np.int64(pr))


def out_hw(x_shape, w_shape, strides, pads) -> tuple[int, int]:
  (pt, pb), (pl, pr) = pads
  return ((x_shape[1] + pt + pb - w_shape[0]) // strides[0] + 1,
          (x_shape[2] + pl + pr - w_shape[1]) // strides[1] + 1)


def _call(target, shape, *args, strides, pads):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  require()  # built and registered before a program names the target
  # vmapped runs loop over the mapped axis: on the CPU, K separate
  # convolutions are faster than one grouped convolution.
  return jax.ffi.ffi_call(_PREFIX + _TARGETS[target],
                          jax.ShapeDtypeStruct(shape, jnp.float32),
                          vmap_method="sequential")(
                              *args, **_attrs(strides, pads))


def conv(x, w, strides, pads):
  """``y = conv(x, w)``: NHWC ``x``, HWIO ``w``, float32, explicit non-negative
  ``pads = ((top, bottom), (left, right))``."""
  ho, wo = out_hw(x.shape, w.shape, strides, pads)
  return _call("fwd", (x.shape[0], ho, wo, w.shape[3]), x, w,
               strides=strides, pads=pads)


def conv_input_grad(dy, w, x_shape, strides, pads):
  """The gradient of :func:`conv` with respect to ``x``, applied to ``dy``."""
  return _call("bwd_data", tuple(x_shape), dy, w, strides=strides, pads=pads)


def conv_kernel_grad(x, dy, w_shape, strides, pads):
  """The gradient of :func:`conv` with respect to ``w``, applied to ``dy``."""
  return _call("bwd_weights", tuple(w_shape), x, dy, strides=strides,
               pads=pads)


def implementation(x_shape, w_shape, strides, pads) -> dict[str, str]:
  """The oneDNN implementation picked for each of the three passes of one
  shape, e.g. ``{'fwd': 'brgconv:avx512_core', ...}``."""
  require()
  lib = _load()[0]
  (pt, pb), (pl, pr) = pads
  buf = ctypes.create_string_buffer(256)
  out = {}
  for i, name in enumerate(_TARGETS):
    rc = lib.pnj_conv_impl_name(
        (ctypes.c_int64 * 4)(*x_shape), (ctypes.c_int64 * 4)(*w_shape),
        (ctypes.c_int64 * 6)(strides[0], strides[1], pt, pb, pl, pr), i, buf,
        256)
    out[name] = buf.value.decode() if rc == 0 else "?"
  return out


def _main(argv) -> int:
  cmd = argv[1] if len(argv) > 1 else "info"
  if cmd not in ("build", "info"):
    print("usage: python -m proxnag_jax.models.onednn [build|info]")
    return 2
  try:
    path = build(verbose=cmd == "build")
  except Unavailable as e:
    print(f"oneDNN convolutions unavailable: {e}")
    return 1
  print(f"built: {path}")
  if cmd == "info":
    for x, w, s, p in (((128, 32, 32, 16), (3, 3, 16, 16), (1, 1),
                        ((1, 1), (1, 1))),
                       ((128, 32, 32, 16), (3, 3, 16, 32), (2, 2),
                        ((0, 1), (0, 1))),
                       ((128, 8, 8, 64), (3, 3, 64, 64), (1, 1),
                        ((1, 1), (1, 1)))):
      print(f"x {x} w {w} strides {s}: {implementation(x, w, s, p)}")
  return 0


if __name__ == "__main__":
  warnings.simplefilter("default")
  sys.exit(_main(sys.argv))
