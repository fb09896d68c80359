"""The fast-gradient convolution equals lax.conv_general_dilated and its
gradients, to float32 rounding, for the configurations the models use, on
both backends (XLA with the custom gradients, and oneDNN custom calls on the
CPU where the ``[cpu]`` extra is installed)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from proxnag_jax.models import conv
from proxnag_jax.models import onednn

DN = ("NHWC", "HWIO", "NHWC")
CASES = [(3, 1, "SAME"), (3, 1, ((1, 1), (1, 1))), (3, 2, ((1, 1), (1, 1))),
         (1, 2, "VALID"), (1, 1, "SAME"), (5, 1, "VALID"), (3, 2, "SAME"),
         (7, 2, ((3, 3), (3, 3))), (3, 1, ((0, 2), (2, 0)))]


def _need_onednn():
  if onednn.available():
    return
  msg = f"oneDNN convolutions unavailable: {onednn.why_unavailable()}"
  if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    pytest.fail(msg + " (CI installs the [cpu] extra)")
  pytest.skip(msg)


def _case(k, stride, padding, shape=(4, 9, 10, 3), out=5):
  kx, kw, kd = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, shape)
  w = jax.random.normal(kw, (k, k, shape[3], out))
  dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)
  ref = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), padding,
                                              dimension_numbers=dn)
  new = lambda x, w: conv.conv_general_dilated(x, w, (stride, stride),
                                               padding, dimension_numbers=dn)
  dy = jax.random.normal(kd, ref(x, w).shape)
  return x, w, dy, ref, new


def _close(a, b):
  # Sums of up to 4*9*10 products of unit normals: float32 rounding of
  # differently ordered sums, relative to the result's scale.
  scale = float(jnp.max(jnp.abs(b)))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * scale)


@pytest.mark.parametrize("backend", ["xla", "onednn"])
@pytest.mark.parametrize("k,stride,padding", CASES)
def test_values_and_gradients_match_lax(backend, k, stride, padding):
  if backend == "onednn":
    _need_onednn()
  x, w, dy, ref, new = _case(k, stride, padding)
  with conv.use_backend(backend):
    y = jax.jit(new)(x, w)
    gn = jax.jit(lambda x, w, dy: jax.vjp(new, x, w)[1](dy))(x, w, dy)
  if backend == "xla":
    np.testing.assert_array_equal(np.asarray(y), np.asarray(ref(x, w)))
  else:
    _close(y, ref(x, w))
  for a, b in zip(gn, jax.vjp(ref, x, w)[1](dy)):
    _close(a, b)


def test_onednn_is_what_the_program_runs():
  _need_onednn()
  x, w, _, _, new = _case(3, 1, "SAME")
  # A new jit per backend: a function already traced keeps its backend.
  with conv.use_backend("onednn"):
    assert conv.backend() == "onednn"
    text = jax.jit(lambda x, w: new(x, w)).lower(x, w).as_text()
  assert "proxnag_conv_PnjConvFwd" in text
  with conv.use_backend("xla"):
    assert conv.backend() == "xla"
    text = jax.jit(lambda x, w: new(x, w)).lower(x, w).as_text()
  assert "custom_call" not in text and "convolution" in text


def test_onednn_under_vmap_and_scan():
  """vmapped runs (the loop's K runs) and a scanned chunk, against XLA."""
  _need_onednn()
  x, w, dy, _, new = _case(3, 2, ((1, 1), (1, 1)), shape=(2, 8, 8, 4), out=6)
  xs = jnp.stack([x, 2 * x, -x])

  def programs():  # new functions per backend (a traced one keeps its own)
    def grads(x, w):
      return jax.grad(lambda w: jnp.sum(new(x, w) * dy))(w)

    def chunk(w):
      return lax.scan(lambda w, xi: (w - 0.01 * grads(xi, w), None), w,
                      xs)[0]
    return jax.jit(jax.vmap(grads, in_axes=(0, None))), jax.jit(chunk)

  out = {}
  for b in ("xla", "onednn"):
    with conv.use_backend(b):
      vmapped, chunk = programs()
      assert ("custom_call" in chunk.lower(w).as_text()) == (b == "onednn")
      out[b] = (vmapped(xs, w), chunk(w))
  for a, b in zip(out["onednn"], out["xla"]):
    _close(a, b)


def test_other_dtypes_and_negative_padding_stay_on_xla():
  _need_onednn()
  x = jnp.ones((2, 6, 6, 3), jnp.bfloat16)
  w = jnp.ones((3, 3, 3, 4), jnp.bfloat16)
  with conv.use_backend("onednn"):
    text = jax.jit(lambda x, w: conv.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=DN)).lower(x, w).as_text()
    assert "custom_call" not in text
    x = x.astype(jnp.float32)
    w = w.astype(jnp.float32)
    text = jax.jit(lambda x, w: conv.conv_general_dilated(
        x, w, (1, 1), ((-1, 1), (1, 1)), dimension_numbers=DN)).lower(
            x, w).as_text()
    assert "custom_call" not in text


def test_a_bad_backend_name_is_refused(monkeypatch):
  monkeypatch.setenv("PROXNAG_CONV", "mkl")
  with pytest.raises(ValueError, match="PROXNAG_CONV"):
    conv.backend()
  with pytest.raises(ValueError, match="use one of"):
    with conv.use_backend("mkl"):
      pass


def test_unsupported_configurations_fall_back():
  x = jnp.ones((2, 8, 8, 4))
  w = jnp.ones((3, 3, 2, 4))
  dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)
  got = conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn,
                                  feature_group_count=2)
  want = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn,
                                  feature_group_count=2)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_several_devices_use_xla(monkeypatch):
  """The custom calls have no sharding rule: with more than one device in all
  the default falls back to XLA, and requiring oneDNN is refused."""
  monkeypatch.setattr(jax, "device_count", lambda: 4)
  with conv.use_backend("auto"):
    assert conv.backend() == "xla"
  with conv.use_backend("onednn"):
    with pytest.raises(ValueError, match="one CPU device"):
      conv.backend()


def test_the_onednn_functions_register_their_targets_themselves():
  """Called directly (not through conv_general_dilated), in a fresh process."""
  _need_onednn()
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  code = ("import jax, jax.numpy as jnp\n"
          "from proxnag_jax.models import onednn\n"
          "y = jax.jit(lambda x, w: onednn.conv(x, w, (1, 1), ((1, 1), (1, 1))))("
          "jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 3)))\n"
          "print(float(y[0, 1, 1, 0]))\n")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True,
                     text=True, timeout=300, check=False,
                     cwd=os.path.dirname(os.path.dirname(__file__)))
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.split()[-1] == "18.0"   # 3 x 3 taps x 2 channels of ones


def test_requiring_onednn_where_it_cannot_build_says_why(tmp_path):
  """No compiler (CXX=/bin/false) and an empty build cache: PROXNAG_CONV=onednn
  fails with a ValueError naming the build, auto falls back to XLA."""
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  code = ("from proxnag_jax.models import conv\n"
          "print(conv.backend())\n"
          "try:\n"
          "  with conv.use_backend('onednn'):\n"
          "    conv.backend()\n"
          "except ValueError as e:\n"
          "  print('refused:', str(e).splitlines()[0])\n")
  env = {**os.environ, "CXX": "/bin/false", "PROXNAG_CONV": "auto",
         "PROXNAG_ONEDNN_CACHE": str(tmp_path), "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  r = subprocess.run([sys.executable, "-c", code], capture_output=True,
                     text=True, timeout=300, check=False, env=env,
                     cwd=os.path.dirname(os.path.dirname(__file__)))
  assert r.returncode == 0, r.stderr[-2000:]
  out = r.stdout.splitlines()
  assert out[0] == "xla"
  assert out[1].startswith("refused:") and ("build" in out[1]
                                             or "oneDNN" in out[1]), out
