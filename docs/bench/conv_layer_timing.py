"""One ResNet-20 conv layer forward + backward inside a lax.scan of 10 (batch
128, 3x3, stride 1, best of 3), for the three stages' shapes: the library's
custom-VJP conv on XLA (proxnag_jax/models/conv.py), the same with oneDNN's
three passes (models/onednn.py), the conv as one im2col matmul, and the kernel
gradient as one im2col matmul. docs/results.md, "Train-step
throughput". Run from the repo root: python docs/bench/conv_layer_timing.py
"""
import time, functools, sys
sys.path.insert(0, ".")
import jax, jax.numpy as jnp
from jax import lax
from proxnag_jax.models import conv as conv_lib

def im2col(x, kh, kw, pads, strides):
  (pt, pb), (pl, pr) = pads
  xp = jnp.pad(x, ((0,0),(pt,pb),(pl,pr),(0,0)))
  n, H, W, c = x.shape
  sh, sw = strides
  ho = (H + pt + pb - kh)//sh + 1; wo = (W + pl + pr - kw)//sw + 1
  cols = [xp[:, i:i+sh*(ho-1)+1:sh, j:j+sw*(wo-1)+1:sw, :] for i in range(kh) for j in range(kw)]
  return jnp.concatenate(cols, -1), ho, wo   # N,ho,wo,kh*kw*c

@functools.partial(jax.custom_vjp, nondiff_argnums=(2,3))
def conv_mm(x, w, strides, pads):
  kh, kw, c, o = w.shape
  xc, ho, wo = im2col(x, kh, kw, pads, strides)
  return (xc.reshape(-1, kh*kw*c) @ w.reshape(-1, o)).reshape(x.shape[0], ho, wo, o)
def conv_mm_fwd(x, w, strides, pads):
  return conv_mm(x, w, strides, pads), (x, w)
def conv_mm_bwd(strides, pads, res, dy):
  x, w = res
  kh, kw, c, o = w.shape
  xc, ho, wo = im2col(x, kh, kw, pads, strides)
  dw = (xc.reshape(-1, kh*kw*c).T @ dy.reshape(-1, o)).reshape(w.shape)
  _, vjp = jax.vjp(lambda x_: conv_lib._plain(x_, w, strides, pads, None), x)
  if strides == (1,1):
    wt = jnp.flip(w, (0,1)).transpose(0,1,3,2)
    (pt,pb),(pl,pr) = pads
    dx = conv_lib._plain(dy, wt, (1,1), ((kh-1-pt,kh-1-pb),(kw-1-pl,kw-1-pr)), None)
  else:
    dx = vjp(dy)[0]
  return dx, dw
conv_mm.defvjp(conv_mm_fwd, conv_mm_bwd)

# conv_cur fwd + current bwd but dW via single im2col matmul
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,3))
def conv_mix(x, w, strides, pads):
  return conv_lib._plain(x, w, strides, pads, None)
def conv_mix_fwd(x, w, strides, pads):
  return conv_mix(x, w, strides, pads), (x, w)
conv_mix.defvjp(conv_mix_fwd, conv_mm_bwd)

def bench(name, f, c, hw, steps=10):
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (128, hw, hw, c)); w = jax.random.normal(key, (3,3,c,c))*0.1
  pads = ((1,1),(1,1))
  def body(carry, _):
    x, w = carry
    y, vjp = jax.vjp(lambda x_, w_: f(x_, w_, (1,1), pads), x, w)
    dx, dw = vjp(y)
    return (x + 1e-6*dx, w - 1e-6*dw), None
  g = jax.jit(lambda x, w: lax.scan(body, (x, w), None, length=steps)[0])
  jax.block_until_ready(g(x, w))
  best = 1e9
  for _ in range(3):
    t = time.perf_counter(); jax.block_until_ready(g(x, w)); best = min(best, time.perf_counter()-t)
  print(f"{name:8s} c={c:3d} hw={hw:2d}: {1000*best/steps:7.2f} ms fwd+bwd")

cur = lambda x, w, s, p: conv_lib._conv(x, w, s, p, None, False)
dnn = lambda x, w, s, p: conv_lib._conv(x, w, s, p, None, True)
for c, hw in ((16, 32), (32, 16), (64, 8)):
  bench("xla", cur, c, hw)
  bench("onednn", dnn, c, hw)
  bench("im2col", conv_mm, c, hw)
  bench("mix", conv_mix, c, hw)
