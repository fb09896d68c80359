"""Pruning masks as pytrees, handled by pure functions.

A mask tree has the structure of the params tree; each leaf is a bool (or 0/1)
array of the param's shape, True where the weight is kept. Leaves that are not
prunable (biases, normalisation scales) get all-True masks, so
``apply_masks(params, masks)`` never touches them.

Which leaves are prunable is decided by a *filter* ``(path, leaf) -> bool``;
the default, :func:`default_prunable`, selects conv and dense kernels: arrays
with at least two dimensions whose name is not an embedding. Every function
here works on any params pytree, Flax or not.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Filter = Callable[[tuple, Any], bool]

__all__ = [
    "check_tree_match",
    "normalized_kernels",
    "default_prunable",
    "prunable_filter",
    "prunable_tree",
    "path_name",
    "ones_masks",
    "nonzero_masks",
    "apply_masks",
    "magnitude_masks",
    "topk_mask",
    "global_topk_masks",
    "layer_topk_masks",
    "topk_masks",
    "prunable_leaves",
    "num_prunable",
    "count_zeros",
    "sparsity_of",
    "masks_from_params",
    "layer_budget_fractions",
    "check_layer_budget",
    "power_allocation",
    "layer_counts_topk_masks",
    "prunable_names",
    "concat_selected",
    "split_selected",
    "filter_from_tree",
    "sparsity",
    "sparsity_report",
]

_NOT_PRUNABLE_NAMES = ("bias", "scale", "embedding", "mean", "var")


def path_name(path: tuple) -> str:
  """``('params', 'Conv_0', 'kernel')``-style key path as ``'Conv_0/kernel'``."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def default_prunable(path: tuple, leaf: Any) -> bool:
  """Conv and dense kernels: ``ndim >= 2`` and not a bias/scale/embedding."""
  last = path_name(path[-1:]) if path else ""
  return getattr(leaf, "ndim", 0) >= 2 and last not in _NOT_PRUNABLE_NAMES


def prunable_filter(exclude=()) -> Filter:
  """The default filter minus leaves whose name matches a regex in ``exclude``.

  Names are ``'/'``-joined key paths, e.g. ``'conv1/kernel'`` or
  ``'layer3_2/conv2/kernel'``; ``exclude=('^conv1/', '^fc/')`` keeps the first
  and last layers dense.
  """
  pats = [re.compile(p) for p in exclude]

  def flt(path, leaf):
    name = path_name(path)
    return default_prunable(path, leaf) and not any(p.search(name)
                                                    for p in pats)

  return flt


def prunable_tree(params: PyTree, prunable: Optional[Filter] = None) -> PyTree:
  """A tree of Python bools: which leaves a method may prune."""
  prunable = prunable or default_prunable
  return jax.tree_util.tree_map_with_path(
      lambda p, x: bool(prunable(p, x)), params
  )


def ones_masks(params: PyTree) -> PyTree:
  """All-True masks (a dense network)."""
  return jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)


def nonzero_masks(params: PyTree) -> PyTree:
  """Masks of the currently nonzero weights (``params != 0``)."""
  return jax.tree.map(lambda p: jnp.asarray(p) != 0, params)


def check_tree_match(tree, params, who: str, what: str = "masks") -> None:
  """Raises a ValueError naming ``who`` if ``tree`` does not match params."""
  try:
    jax.tree.map(lambda _m, _p: None, tree, params)
  except (ValueError, TypeError) as e:
    raise ValueError(
        f"{who}: the {what} tree does not match the params tree.\n"
        f"  {what}: {jax.tree.structure(tree)}\n"
        f"  params: {jax.tree.structure(params)}\n"
        "Build it from params, e.g. jax.tree.map(lambda p: p.ndim > 1, "
        "params), or pass a callable."
    ) from e




def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
  """``params * masks`` leaf by leaf (pruned entries become exact zeros)."""
  check_tree_match(masks, params, "apply_masks")
  return jax.tree.map(
      lambda p, m: jnp.where(jnp.asarray(m).astype(bool), p,
                             jnp.zeros_like(p)),
      params, masks,
  )


def _order_key(x: jax.Array) -> jax.Array:
  """A uint32 key with the order of the float32 values ``x``: ``-0.0`` and
  ``0.0`` share a key, NaN gets the smallest (it is never kept first)."""
  x = jnp.where(x == 0, jnp.zeros_like(x), x)
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  key = jnp.where((bits >> 31) == 1, ~bits, bits | jnp.uint32(0x80000000))
  return jnp.where(jnp.isnan(x), jnp.uint32(0), key)


@jax.jit
def topk_mask(scores: jax.Array, k) -> jax.Array:
  """Bool mask of the ``k`` largest entries of ``scores`` (exactly ``k``).

  Ties are broken by position (the earlier entry is kept), so the count is
  exact even when many scores are equal (e.g. zeros). ``k`` may be traced.

  No sort: the ``k``-th largest value is found bit by bit on an
  order-preserving integer key (32 counting passes, ``O(32 n)``), then the
  entries above it and the first ``k - #above`` equal to it are kept. The
  result equals a stable descending argsort's first ``k``; on a CPU it is
  about 14x faster for a 235,200-entry layer (7 ms vs 96 ms, the sort was
  the cost of every edge-popup / SBP step). Jitted: called on concrete
  arrays it compiles once per shape, not once per operation.
  """
  flat = jnp.ravel(scores).astype(jnp.float32)
  key = _order_key(flat)
  k = jnp.asarray(k, jnp.int32)

  def bit(i, t):
    cand = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    enough = jnp.sum(key >= cand, dtype=jnp.int32) >= k
    return jnp.where(enough, cand, t)

  kth = jax.lax.fori_loop(0, 32, bit, jnp.uint32(0))   # the k-th largest key
  above = key > kth
  tie = key == kth
  room = k - jnp.sum(above, dtype=jnp.int32)
  keep = above | (tie & (jnp.cumsum(tie, dtype=jnp.int32) <= room))
  return keep.reshape(jnp.shape(scores))


def _check_sparsity(s):
  if isinstance(s, (float, int)) and not 0.0 <= s < 1.0:
    raise ValueError(f"sparsity must be in [0, 1), got {s}.")


def _num_removed(sparsity, n: int):
  """``round(sparsity * n)``: a Python int when it can be, else traced."""
  if isinstance(sparsity, (int, float)):
    return int(round(float(sparsity) * n))
  return jnp.round(jnp.asarray(sparsity, jnp.float32) * n).astype(jnp.int32)


def magnitude_masks(
    params: PyTree,
    sparsity: float,
    scope: str = "layer",
    prunable: Optional[Filter] = None,
    scores: Optional[PyTree] = None,
) -> PyTree:
  """Masks that keep the largest-magnitude weights.

  Args:
    params: params pytree.
    sparsity: fraction of *prunable* weights to remove, in [0, 1).
    scope: ``'layer'`` removes that fraction from every prunable leaf;
      ``'global'`` ranks all prunable weights together (one threshold).
    prunable: leaf filter ``(path, leaf) -> bool``; default conv/dense
      kernels. Non-prunable leaves get all-True masks.
    scores: optional pytree of scores to rank instead of ``|params|``
      (e.g. SNIP's ``|g * w|``).

  Returns:
    A bool pytree matching params. The number of removed weights is exactly
    ``round(sparsity * n)`` (per leaf, or over all prunable leaves).

  Example:
    >>> masks = magnitude_masks(params, 0.9, scope="global")
    >>> params = apply_masks(params, masks)
  """
  _check_sparsity(sparsity)
  if scope not in ("layer", "global"):
    raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}.")
  which = prunable_tree(params, prunable)
  if scores is None:
    scores = jax.tree.map(lambda p: jnp.abs(p).astype(jnp.float32), params)
  check_tree_match(scores, params, "magnitude_masks")

  leaves, treedef = jax.tree.flatten(params)
  sleaves = treedef.flatten_up_to(scores)
  wleaves = treedef.flatten_up_to(which)

  if scope == "layer":
    out = []
    for p, s, w in zip(leaves, sleaves, wleaves):
      if not w:
        out.append(jnp.ones(p.shape, bool))
        continue
      out.append(topk_mask(s, p.size - _num_removed(sparsity, p.size)))
    return jax.tree.unflatten(treedef, out)

  if not any(wleaves):
    return ones_masks(params)
  n = sum(p.size for p, w in zip(leaves, wleaves) if w)
  return global_topk_masks(scores, which, n - _num_removed(sparsity, n))


def concat_selected(leaves: list, which: list) -> jax.Array:
  """The ``which``-selected leaves, raveled into one float32 vector."""
  return jnp.concatenate([jnp.ravel(x).astype(jnp.float32)
                          for x, w in zip(leaves, which) if w])


def split_selected(flat: jax.Array, leaves: list, which: list,
                   fill) -> list:
  """The inverse of :func:`concat_selected`: ``flat`` cut back into the
  shapes of the selected leaves; other leaves become ``fill(leaf)``."""
  out, off = [], 0
  for x, w in zip(leaves, which):
    if w:
      out.append(flat[off:off + x.size].reshape(x.shape))
      off += x.size
    else:
      out.append(fill(x))
  return out


def global_topk_masks(scores: PyTree, which: PyTree, n_keep) -> PyTree:
  """Keeps the ``n_keep`` highest scores over all leaves marked True in
  ``which`` (a tree of Python bools), with one threshold; ``n_keep`` may be
  traced. Unmarked leaves get all-True masks."""
  treedef = jax.tree.structure(which)
  leaves = treedef.flatten_up_to(scores)
  w = jax.tree.leaves(which)
  keep = topk_mask(concat_selected(leaves, w), n_keep)
  return jax.tree.unflatten(treedef, split_selected(
      keep, leaves, w, lambda x: jnp.ones(x.shape, bool)))


def filter_from_tree(which: PyTree) -> Filter:
  """A ``(path, leaf) -> bool`` filter reading a tree of Python bools (the
  form :func:`prunable_tree` returns), for functions that take a filter."""

  def flt(path, leaf):
    del leaf
    node = which
    for k in path:
      node = node[getattr(k, "key", getattr(k, "idx", k))]
    return bool(node)

  return flt


def sparsity(params: PyTree, prunable: Optional[Filter] = None) -> jax.Array:
  """Fraction of exact zeros among the prunable weights (jit-compatible)."""
  return sparsity_of(params, prunable_tree(params, prunable))


# ---------------------------------------------------------------------------
# The same on a tree of Python bools (the form the methods carry in
# ``Context.prunable``): all traceable.
# ---------------------------------------------------------------------------


def prunable_leaves(tree: PyTree, prunable: PyTree) -> list:
  """The leaves of ``tree`` marked prunable, in tree order."""
  treedef = jax.tree.structure(prunable)
  return [x for x, w in zip(treedef.flatten_up_to(tree),
                            jax.tree.leaves(prunable)) if w]


def num_prunable(params: PyTree, prunable: PyTree) -> int:
  return int(sum(x.size for x in prunable_leaves(params, prunable)))


def count_zeros(params: PyTree, prunable: PyTree) -> jax.Array:
  """Exact zeros among the prunable weights (int32, traceable)."""
  leaves = prunable_leaves(params, prunable)
  return sum((jnp.sum(x == 0, dtype=jnp.int32) for x in leaves),
             jnp.int32(0))


def sparsity_of(params: PyTree, prunable: PyTree) -> jax.Array:
  n = max(num_prunable(params, prunable), 1)
  return count_zeros(params, prunable).astype(jnp.float32) / n


def masks_from_params(params: PyTree, prunable: PyTree) -> PyTree:
  """Masks of the nonzero prunable weights (other leaves all True)."""
  return jax.tree.map(
      lambda p, w: (p != 0) if w else jnp.ones(p.shape, bool), params,
      prunable)


def layer_topk_masks(scores: PyTree, prunable: PyTree, sparsity) -> PyTree:
  """In every prunable leaf keep all but ``round(sparsity * size)`` of the
  highest scores; ``sparsity`` may be traced. Other leaves all True."""
  return magnitude_masks(
      scores, sparsity, scope="layer",
      prunable=filter_from_tree(prunable), scores=scores)


def topk_masks(scores: PyTree, prunable: PyTree, n_keep, sparsity,
               scope: str) -> PyTree:
  """The highest ``scores``: ``n_keep`` over all prunable leaves
  (``scope='global'``) or all but ``round(sparsity * size)`` in every leaf
  (``'layer'``). Traceable."""
  if scope == "global":
    return global_topk_masks(scores, prunable, n_keep)
  return layer_topk_masks(scores, prunable, sparsity)


def sparsity_report(
    params: PyTree,
    masks: Optional[PyTree] = None,
    prunable: Optional[Filter] = None,
) -> dict:
  """Counts of parameters and nonzeros, per leaf and in total (host side).

  A weight counts as nonzero when it is nonzero in ``params`` and (if given)
  kept by ``masks``.

  Returns:
    ``{'layers': [{'name', 'shape', 'prunable', 'params', 'nonzero',
    'sparsity'}, ...], 'num_params', 'num_nonzero', 'prunable_params',
    'prunable_nonzero', 'sparsity', 'compression_ratio'}`` where
    ``sparsity`` is the fraction of zeros among prunable weights,
    ``stored_params = prunable_nonzero + (num_params - prunable_params)``
    (non-prunable leaves, e.g. biases and norm scales, are stored whatever
    their values: a bias that training left at zero is not a pruned weight)
    and ``compression_ratio = num_params / stored_params``. ``num_nonzero``
    is the plain count of nonzero entries over all leaves.

  Example:
    >>> r = sparsity_report(params)
    >>> print(f"{r['sparsity']:.1%} sparse, {r['compression_ratio']:.1f}x")
  """
  which = prunable_tree(params, prunable)
  if masks is not None:
    check_tree_match(masks, params, "sparsity_report")
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  treedef = jax.tree.structure(params)
  wflat = treedef.flatten_up_to(which)
  mflat = treedef.flatten_up_to(masks) if masks is not None else [None] * len(
      flat)
  layers = []
  tot = nz = ptot = pnz = 0
  for (path, p), w, m in zip(flat, wflat, mflat):
    arr = np.asarray(p)
    alive = arr != 0
    if m is not None:
      alive = alive & np.broadcast_to(np.asarray(m).astype(bool), arr.shape)
    n, k = int(arr.size), int(alive.sum())
    layers.append({
        "name": path_name(path),
        "shape": list(arr.shape),
        "prunable": bool(w),
        "params": n,
        "nonzero": k,
        "sparsity": 1.0 - k / n if n else 0.0,
    })
    tot += n
    nz += k
    if w:
      ptot += n
      pnz += k
  return {
      "layers": layers,
      "num_params": tot,
      "num_nonzero": nz,
      "prunable_params": ptot,
      "prunable_nonzero": pnz,
      "stored_params": pnz + (tot - ptot),
      "sparsity": 1.0 - pnz / ptot if ptot else 0.0,
      "compression_ratio": (tot / (pnz + tot - ptot) if pnz + tot - ptot
                            else float("inf")),
  }


def normalized_kernels(fn: Callable[[PyTree], jax.Array], params: PyTree,
                       *, seed: int = 0, rtol: float = 1e-3) -> PyTree:
  """Which kernels have normalised output channels, found by probing ``fn``.

  ``fn(params) -> output`` runs the model in training mode on one batch
  (BatchNorm with batch statistics). A leaf with at least two axes counts as
  normalised when multiplying each of its output filters (the last axis) by
  its own positive factor (random, in [1.5, 3]) leaves the output unchanged
  within ``rtol`` (relative, in the max norm): the loss cannot see those
  filters' scales. A kernel followed by BatchNorm passes; a classifier, a
  kernel feeding a residual sum before any normalisation, or a kernel
  followed by a normalisation over channels jointly (LayerNorm) fails.
  One jitted forward pass per leaf; host side, run once per model.

  Returns:
    a tree of Python bools with ``params``' structure.

  Example:
    >>> fn = lambda p: model.apply({"params": p, "batch_stats": bs}, x,
    ...                            train=True, mutable=["batch_stats"])[0]
    >>> normalized = normalized_kernels(fn, params)
    >>> tx = proxnag_jax.proxnag(0.01, 1e-2, mask=kernels,
    ...                          normalized=normalized)
  """
  leaves, treedef = jax.tree.flatten(params)
  run = jax.jit(lambda ls: fn(jax.tree.unflatten(treedef, ls)))
  base = np.asarray(run(leaves), np.float64)
  scale = max(float(np.max(np.abs(base))), 1e-12)
  rng = np.random.default_rng(seed)
  out = []
  for i, x in enumerate(leaves):
    if np.ndim(x) < 2:
      out.append(False)
      continue
    factor = rng.uniform(1.5, 3.0, size=np.shape(x)[-1]).astype(np.float32)
    scaled = list(leaves)
    scaled[i] = x * factor
    diff = np.max(np.abs(np.asarray(run(scaled), np.float64) - base))
    out.append(bool(diff <= rtol * scale))
  return jax.tree.unflatten(treedef, out)


# ---------------------------------------------------------------------------
# Per-layer budgets.
# ---------------------------------------------------------------------------


def layer_budget_fractions(layer_keep: dict, params, prunable, who: str):
  """A per-layer budget ``layer_keep`` ({name: fraction kept, or count
  kept}) as one kept fraction per prunable leaf (tree order), with the
  leaves' sizes: ``(fractions, sizes)``, for :func:`power_allocation`. A
  name is a leaf (``'conv1/kernel'``) or its module (``'conv1'``); every
  prunable leaf must be named once. Host check: raises ValueError naming
  ``who``."""
  names = prunable_names(params, prunable)
  sizes = [int(x.size) for x in prunable_leaves(params, prunable)]
  given = dict(layer_keep)
  fracs, used = [], set()
  for leaf, n in zip(names, sizes):
    hits = [k for k in given if k == leaf or leaf.startswith(k + "/")]
    if len(hits) != 1:
      raise ValueError(
          f"{who}: layer_keep must name every prunable layer once; "
          f"{leaf!r} is matched by {hits or 'no entry'} (layers: "
          f"{', '.join(names)}).")
    v = float(given[hits[0]])
    used.add(hits[0])
    if not 0 < v <= n:
      raise ValueError(f"{who}: layer_keep[{hits[0]!r}] = {v} must be a "
                       f"kept fraction in (0, 1] or a kept count in [1, {n}].")
    fracs.append(v if v <= 1.0 else v / n)
  extra = sorted(set(given) - used)
  if extra:
    raise ValueError(f"{who}: layer_keep names {extra}, which are not "
                     f"prunable layers ({', '.join(names)}).")
  return fracs, sizes


def check_layer_budget(counts, params, prunable, target: float,
                       who: str) -> None:
  """Refuses per-layer kept ``counts`` (one per prunable leaf, tree order)
  that empty a layer: a ValueError naming the layers (host check)."""
  names = prunable_names(params, prunable)
  empty = [k for k, c in zip(names, list(counts)) if int(c) < 1]
  if empty:
    raise ValueError(
        f"{who}: the per-layer budget at sparsity {float(target)} keeps no "
        f"weight of {', '.join(empty)}; give those layers a larger share in "
        "layer_keep or lower the target.")


def power_allocation(fractions, sizes, n_keep, iters: int = 64) -> jax.Array:
  """Kept counts per layer from per-layer kept fractions, to a total.

  ``k_l = n_l · f_l^γ`` with one exponent ``γ > 0`` found by bisection so
  that the counts, rounded by largest remainder, sum to ``n_keep`` exactly.
  Fractions that already keep ``n_keep`` give ``γ = 1`` (they are used as
  they are); a smaller total lowers every fraction, the small ones most (a
  layer kept at 1% loses more of its share than one kept at 20%, the pattern
  of published LeNet-5 allocations from 12x to 280x). ``fractions`` in
  (0, 1] and ``sizes`` are static (one entry per layer); ``n_keep`` may be
  traced. Returns int32 counts, each in [0, n_l] (a caller refuses a 0).

  >>> power_allocation([0.2, 0.08, 0.009, 0.07], [500, 25000, 400000, 5000],
  ...                  1210)   # LeNet-5: ADMM's 71x fractions taken to 356x
  """
  f = jnp.asarray(fractions, jnp.float32)
  n = jnp.asarray(sizes, jnp.float32)
  k = jnp.asarray(n_keep, jnp.float32)
  logf = jnp.log(jnp.clip(f, 1e-30, 1.0))
  total = lambda g: jnp.sum(n * jnp.exp(g * logf))

  def bisect(_, lohi):
    lo, hi = lohi        # in log(gamma)
    mid = 0.5 * (lo + hi)
    big = total(jnp.exp(mid)) > k        # too many kept: raise gamma
    return jnp.where(big, mid, lo), jnp.where(big, hi, mid)

  lo, hi = jax.lax.fori_loop(0, iters, bisect,
                             (jnp.float32(-8.0), jnp.float32(8.0)))
  real = n * jnp.exp(jnp.exp(0.5 * (lo + hi)) * logf)
  base_ = jnp.minimum(jnp.floor(real), n)
  short = jnp.asarray(n_keep, jnp.int32) - jnp.sum(base_).astype(jnp.int32)
  # Largest remainders first (ties: the earlier layer), never above n_l.
  room = base_ < n
  rem = jnp.where(room, real - base_, -1.0)
  order = jnp.argsort(-rem, stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
  add = (rank < short) & room
  return (base_ + add).astype(jnp.int32)


def layer_counts_topk_masks(scores: PyTree, which: PyTree, counts) -> PyTree:
  """Keeps the ``counts[i]`` highest scores in the ``i``-th leaf marked True
  in ``which`` (tree order); other leaves all True. ``counts`` may be
  traced (an int array with one entry per marked leaf)."""
  treedef = jax.tree.structure(which)
  leaves = treedef.flatten_up_to(scores)
  out, i = [], 0
  for x, w in zip(leaves, jax.tree.leaves(which)):
    if w:
      out.append(topk_mask(x, counts[i]))
      i += 1
    else:
      out.append(jnp.ones(jnp.shape(x), bool))
  return jax.tree.unflatten(treedef, out)


def prunable_names(params: PyTree, which: PyTree) -> list:
  """The names (``'conv1/kernel'``) of the leaves marked True, tree order."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return [path_name(p) for (p, _), w in zip(flat, jax.tree.leaves(which))
          if w]
