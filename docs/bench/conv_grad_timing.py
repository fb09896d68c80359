"""Per-call timings of one 3x3 16->16 conv on a 128x32x32 batch: forward, input
gradient (dx), kernel gradient (dW) with XLA's own gradient and two rewrites, alone
and inside a lax.scan of 3 calls (the numbers in docs/results.md, "Where the time
goes"). Run: python docs/bench/conv_grad_timing.py
"""
import time, jax, jax.numpy as jnp, numpy as np
from jax import lax
x = jax.random.normal(jax.random.PRNGKey(0), (128, 32, 32, 16))
w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 16, 16)) * 0.1
dn = ("NHWC", "HWIO", "NHWC")
conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
dy = jax.random.normal(jax.random.PRNGKey(2), (128, 32, 32, 16))
def t(name, f, *a):
  f = jax.jit(f); jax.block_until_ready(f(*a)); t0 = time.time()
  for _ in range(5): r = f(*a)
  jax.block_until_ready(r); print(f"{name}: {(time.time()-t0)/5*1000:.1f} ms")
t("fwd", conv, x, w)
t("dx", lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0], x, w, dy)
t("dw", lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0], x, w, dy)
def dw_im2col(x, w, dy):
  kh, kw, c, o = w.shape
  p = lax.conv_general_dilated_patches(x, (kh, kw), (1, 1), "SAME", dimension_numbers=dn)  # N,H,W,C*kh*kw
  g = jnp.einsum("nhwp,nhwo->po", p, dy)
  return g.reshape(c, kh, kw, o).transpose(1, 2, 0, 3)
t("dw im2col", dw_im2col, x, w, dy)
ref = jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]
print("max err", float(jnp.max(jnp.abs(dw_im2col(x, w, dy) - ref))), float(jnp.max(jnp.abs(ref))))
# inside a scan
def scan_dw(x, w, dy, f):
  return lax.scan(lambda c, _: (c + f(x, w, dy), None), jnp.zeros_like(w), None, length=3)[0]
t("dw in scan (x3)", lambda x, w, dy: scan_dw(x, w, dy, lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]), x, w, dy)
t("dw im2col in scan (x3)", lambda x, w, dy: scan_dw(x, w, dy, dw_im2col), x, w, dy)
t("dx in scan (x3)", lambda x, w, dy: lax.scan(lambda c, _: (c + jax.vjp(lambda x: conv(x, w), x)[1](dy)[0], None), jnp.zeros_like(x), None, length=3)[0], x, w, dy)
def dw_shift(x, w, dy):
  kh, kw, c, o = w.shape
  n, h, ww, _ = dy.shape
  xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  dyf = dy.reshape(-1, o)
  rows = []
  for i in range(kh):
    for j in range(kw):
      xs = xp[:, i:i + h, j:j + ww, :].reshape(-1, c)
      rows.append(xs.T @ dyf)
  return jnp.stack(rows).reshape(kh, kw, c, o)
print("shift err", float(jnp.max(jnp.abs(dw_shift(x, w, dy) - ref))))
t("dw shift", dw_shift, x, w, dy)
t("dw shift in scan (x3)", lambda x, w, dy: scan_dw(x, w, dy, dw_shift), x, w, dy)
wt = lambda w: jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
dx_conv = lambda x, w, dy: conv(dy, wt(w))
refx = jax.vjp(lambda x: conv(x, w), x)[1](dy)[0]
print("dx err", float(jnp.max(jnp.abs(dx_conv(x, w, dy) - refx))))
t("dx conv", dx_conv, x, w, dy)
t("dx conv in scan (x3)", lambda x, w, dy: lax.scan(lambda c, _: (c + dx_conv(x, w, dy), None), jnp.zeros_like(x), None, length=3)[0], x, w, dy)
t("fwd in scan (x3)", lambda x, w, dy: lax.scan(lambda c, _: (c + conv(x, w), None), jnp.zeros_like(x), None, length=3)[0], x, w, dy)
