"""Channel groups of any JAX model, found by tracing its computation.

:func:`traced_groups` traces ``apply_fn(variables, x)`` to a jaxpr and follows
every axis of every intermediate value through the operations (a union-find
over "axes that index the same channels"):

* **convolutions and dense layers** (``conv_general_dilated``,
  ``dot_general``): the input's feature axis and the kernel's input axis are
  the same channels (the kernel *consumes* them); the output's feature axis
  is the kernel's output axis (the kernel *produces* them). A depthwise
  convolution (``feature_group_count`` = channels) ties its outputs to its
  inputs;
* **elementwise operations** (bias add, BatchNorm's scale and shift,
  activations, residual additions) make the aligned axes of their operands
  the same channels: a residual addition joins the streams it adds, a bias
  or a BatchNorm parameter joins the channels it is added to;
* **layout operations**: ``broadcast_in_dim``, ``transpose``, reductions and
  pooling keep the axes they keep; a ``reshape`` that flattens ``(H, W, C)``
  into one axis makes a consumer that reads ``H*W`` copies of the channels
  (:class:`~proxnag_jax.surgery.Slot`'s ``repeat``);
* calls (``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``remat``) are
  followed inside;
* **concatenations** along the channel axis: the result holds its inputs'
  channel sets side by side (a concatenation of concatenations flattened);
  a leaf axis it meets (the next layers' input axes, a BatchNorm after it,
  a conv whose output is added onto it) holds the same sets at the same
  offsets, so each concatenated branch stays its own group and its slots
  carry ``offset`` / ``span`` (:class:`~proxnag_jax.surgery.Slot`).

Every set of channels that some kernel produces becomes a
:class:`~proxnag_jax.surgery.ChannelGroup` (producers: the kernels' output
axes and the biases, scales, shifts and statistics joined to them;
consumers: the kernels reading them). A group is **not prunable**, with the
reason in :func:`traced_groups`' report, where a dependency cannot be
followed: the channels reach the network's output or come from its input;
an operation pads, slices, splits or merges the channel axis (e.g. option-A
shortcuts, attention heads split out of a feature axis); concatenations of
different layouts meet, or one meets channels that are not a leaf's; a
grouped (not depthwise) convolution; or an operation this tracer does not
know. Nothing is guessed.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import numpy as np

from jax.extend import core as jcore

from proxnag_jax import surgery
from proxnag_jax.models import conv

PyTree = Any

_ELEMENTWISE = frozenset("""
add sub mul div max min pow neg exp exp2 log log1p expm1 tanh logistic sqrt
rsqrt cbrt abs sign convert_element_type select_n integer_pow erf erfc erf_inv
square copy copy_p ne eq gt ge lt le and or not xor clamp sin cos tan asin acos
atan atan2 sinh cosh asinh acosh atanh reduce_precision nextafter rem
is_finite floor ceil round real imag conj stop_gradient
""".split())
_REDUCTIONS = frozenset(("reduce_sum", "reduce_max", "reduce_min",
                         "reduce_prod", "reduce_and", "reduce_or",
                         "argmax", "argmin"))
_CALLS = frozenset(("jit", "pjit", "closed_call", "core_call",
                    "custom_jvp_call", "custom_vjp_call", "remat",
                    "checkpoint", "custom_lin"))


_OUTPUT = "the channels reach the network's output"


class _UF:
  """Union-find over axis nodes, with a reason per tainted node."""

  def __init__(self):
    self.parent: list[int] = []
    self.size: list[int] = []        # nodes per class (at its root)
    self.leaves: list[int] = []      # leaf axes per class (at its root)
    self.taint: dict[int, str] = {}

  def new(self, leaf: bool = False) -> int:
    self.parent.append(len(self.parent))
    self.size.append(1)
    self.leaves.append(int(leaf))
    return len(self.parent) - 1

  def find(self, a: int) -> int:
    while self.parent[a] != a:
      self.parent[a] = self.parent[self.parent[a]]
      a = self.parent[a]
    return a

  def union(self, a: int, b: int) -> None:
    a, b = self.find(a), self.find(b)
    if a != b:
      self.parent[b] = a
      self.size[a] += self.size[b]
      self.leaves[a] += self.leaves[b]

  def mark(self, a: int, why: str) -> None:
    self.taint.setdefault(a, why)


class _Ref(NamedTuple):
  """An axis: its channel node and how many copies of those channels it
  holds (``repeat``, from a flatten of spatial axes into it). A
  concatenated axis holds several channel sets side by side: ``parts``,
  ``((node, size), ...)`` in order (``node`` then only stands for the
  whole axis)."""

  node: int
  repeat: int = 1
  parts: Optional[tuple] = None


class _Role(NamedTuple):
  leaf: int        # index of the variables leaf
  axis: int
  kind: str        # 'out' (a kernel's outputs), 'in' (read), 'elem'
  repeat: int


class TraceReport(NamedTuple):
  """What :func:`traced_groups` found: the groups and, for each group that
  is not prunable, why (``{group name: reason}``)."""

  groups: tuple
  reasons: dict


def _sub_jaxprs(eqn):
  for p in eqn.params.values():
    if isinstance(p, jcore.ClosedJaxpr):
      yield p.jaxpr
    elif isinstance(p, jcore.Jaxpr):
      yield p


class _Tracer:
  """One pass over a jaxpr: axis refs per variable, roles of leaf axes."""

  def __init__(self):
    self.uf = _UF()
    self.env: dict = {}
    self.source: dict = {}        # var -> leaf index it is an alias of
    self.leaf_axes: dict = {}     # (leaf, axis) -> node
    self.roles: list[_Role] = []
    # A leaf axis met by a concatenated one (a BatchNorm after a
    # concatenation, the kernel reading it): its root -> the parts.
    self.splits: dict = {}

  # -- variables -------------------------------------------------------

  def fresh(self, aval, leaf: bool = False) -> list:
    return [_Ref(self.uf.new(leaf)) for _ in range(len(aval.shape))]

  def refs(self, v) -> Optional[list]:
    if isinstance(v, jcore.Literal):
      return None
    if v not in self.env:
      self.env[v] = self.fresh(v.aval)
    return self.env[v]

  def mark_all(self, refs, why):
    for r in refs or ():
      self.taint(r, why)

  def parts(self, r: _Ref) -> Optional[tuple]:
    """The channel sets of a concatenated axis (``None`` for a plain one)."""
    if r.parts is not None:
      return r.parts
    return self.splits.get(self.uf.find(r.node))

  def taint(self, r: _Ref, why: str) -> None:
    self.uf.mark(r.node, why)
    for n, _ in self.parts(r) or ():
      self.uf.mark(n, why)

  def join(self, a: _Ref, b: _Ref, why: str, repeats: bool = True) -> None:
    """``a`` and ``b`` hold the same channels (``repeats=False``: one reads
    the other's flattened copies, see ``_dot_general``)."""
    if repeats and a.repeat != b.repeat:
      self.taint(a, why)
      self.taint(b, why)
      return
    pa, pb = self.parts(a), self.parts(b)
    if pa is None and pb is None:
      self.uf.union(a.node, b.node)
      return
    if pa is not None and pb is not None:
      if [n for _, n in pa] != [n for _, n in pb]:
        why = "concatenations of different channel sets meet"
        self.taint(a, why)
        self.taint(b, why)
        return
      for (x, _), (y, _) in zip(pa, pb):
        self.uf.union(x, y)
      return
    plain, parts = (a, pb) if pa is None else (b, pa)
    root = self.uf.find(plain.node)
    if (self.uf.leaves[root] == self.uf.size[root]
        and not any(self.uf.find(n) == root for n in self.uf.taint)):
      # Leaf axes only (BatchNorm parameters, possibly already combined,
      # a kernel's input axis), met by a concatenation for the first time:
      # they hold the same parts.
      self.splits[root] = parts
      return
    why = ("a concatenated axis meets channels that are not a leaf's "
           "(e.g. a residual addition onto a concatenation)")
    self.taint(a, why)
    self.taint(b, why)

  # -- the pass ----------------------------------------------------------

  def run(self, jaxpr, in_refs):
    for v, r in zip(jaxpr.invars, in_refs):
      if r is not None:
        self.env[v] = r
    for eqn in jaxpr.eqns:
      self.eqn(eqn)
    return [self.refs(v) for v in jaxpr.outvars]

  def eqn(self, eqn):
    name = eqn.primitive.name
    ins = [self.refs(v) for v in eqn.invars]
    outs = eqn.outvars
    handler = getattr(self, "_" + name, None)
    if name in _ELEMENTWISE:
      self._elementwise(eqn, ins)
    elif name in _REDUCTIONS:
      axes = set(eqn.params.get("axes", ()))
      for i in axes:
        # A statistic over the channels (LayerNorm, a softmax over
        # features): removing channels changes it.
        self.taint(ins[0][i], "a reduction (e.g. a LayerNorm) runs over "
                   "the channel axis")
      self.env[outs[0]] = [r for i, r in enumerate(ins[0]) if i not in axes]
    elif name in _CALLS:
      self._call(eqn, ins)
    elif handler is not None:
      handler(eqn, ins)
    else:
      for r in ins:
        self.mark_all(r, f"operation {name!r} is not followed")
      for v in outs:
        self.env[v] = self.fresh(v.aval)
        self.mark_all(self.env[v], f"operation {name!r} is not followed")

  def _call(self, eqn, ins):
    subs = list(_sub_jaxprs(eqn))
    if len(subs) != 1 or len(subs[0].invars) != len(ins):
      for r in ins:
        self.mark_all(r, f"call {eqn.primitive.name!r} is not followed")
      for v in eqn.outvars:
        self.env[v] = self.fresh(v.aval)
      return
    sub = subs[0]
    for v_in, v_sub in zip(eqn.invars, sub.invars):
      if not isinstance(v_in, jcore.Literal) and v_in in self.source:
        self.source[v_sub] = self.source[v_in]
    out_refs = self.run(sub, ins)
    for v, v_sub, r in zip(eqn.outvars, sub.outvars, out_refs):
      self.env[v] = r if r is not None else self.fresh(v.aval)
      if v_sub in self.source:
        self.source[v] = self.source[v_sub]

  def _elementwise(self, eqn, ins):
    out = eqn.outvars[0]
    rank = len(out.aval.shape)
    full = [r for r in ins if r is not None and len(r) == rank and rank]
    if not full:
      self.env[out] = self.fresh(out.aval)
      return
    shape = out.aval.shape
    ops = [(r, v.aval.shape) for r, v in zip(ins, eqn.invars)
           if r is not None and len(r) == rank]
    res = []
    for k in range(rank):
      # Broadcast (size-1) axes carry no channels of the others.
      col = [r[k] for r, sh in ops if sh[k] == shape[k]]
      for r in col[1:]:
        self.join(col[0], r, "axes joined with different repeats")
      res.append(col[0] if col else _Ref(self.uf.new()))
    self.env[out] = res
    # A value that is a leaf changed elementwise (a cast, a mask) stays an
    # alias of that leaf; a leaf combined with an activation is a producer
    # entry of its channels (bias, scale, shift, statistics).
    srcs = {self.source[v] for v in eqn.invars
            if not isinstance(v, jcore.Literal) and v in self.source}
    acts = [v for v in eqn.invars if not isinstance(v, jcore.Literal)
            and v not in self.source and len(v.aval.shape) == rank]
    if len(srcs) == 1 and not acts:
      self.source[out] = srcs.pop()

  def _broadcast_in_dim(self, eqn, ins):
    v = eqn.outvars[0]
    dims = eqn.params["broadcast_dimensions"]
    out = self.fresh(v.aval)
    op = eqn.invars[0]
    if ins[0] is not None:
      for i, d in enumerate(dims):
        if op.aval.shape[i] == v.aval.shape[d]:
          out[d] = ins[0][i]
    self.env[v] = out
    if op in self.source:
      self.source[v] = self.source[op]

  def _transpose(self, eqn, ins):
    perm = eqn.params["permutation"]
    self.env[eqn.outvars[0]] = [ins[0][p] for p in perm]
    if eqn.invars[0] in self.source:
      self.source[eqn.outvars[0]] = self.source[eqn.invars[0]]

  def _squeeze(self, eqn, ins):
    dims = set(d % len(ins[0]) for d in eqn.params["dimensions"])
    self.env[eqn.outvars[0]] = [r for i, r in enumerate(ins[0])
                                if i not in dims]
    if eqn.invars[0] in self.source:
      self.source[eqn.outvars[0]] = self.source[eqn.invars[0]]

  def _reshape(self, eqn, ins):
    op, v = eqn.invars[0], eqn.outvars[0]
    a, b = list(op.aval.shape), list(v.aval.shape)
    out = self.fresh(v.aval)
    i = j = 0
    while i < len(a) or j < len(b):
      if i < len(a) and a[i] == 1:
        i += 1
        continue
      if j < len(b) and b[j] == 1:
        j += 1
        continue
      bi, bj = [i], [j]
      pa, pb = a[i], b[j]
      while pa != pb:
        if pa < pb:
          i += 1
          bi.append(i)
          pa *= a[i]
        else:
          j += 1
          bj.append(j)
          pb *= b[j]
      bi = [k for k in bi if a[k] != 1]
      bj = [k for k in bj if b[k] != 1]
      if len(bi) == 1 and len(bj) == 1:
        out[bj[0]] = ins[0][bi[0]]
      elif len(bj) == 1:
        # Merged axes: the last one's channels, repeated over the others
        # (index s * C + c); the other axes' channels are lost.
        last = ins[0][bi[-1]]
        rep = math.prod(a[k] for k in bi[:-1])
        out[bj[0]] = last._replace(repeat=last.repeat * rep)
        for k in bi[:-1]:
          self.taint(ins[0][k], "a reshape merges the channel axis into "
                     "another")
      else:
        for k in bi:
          self.taint(ins[0][k], "a reshape splits the channel axis")
      i, j = bi[-1] + 1 if bi else i + 1, bj[-1] + 1 if bj else j + 1
    self.env[v] = out
    if op in self.source:
      self.source[v] = self.source[op]

  def _keep_or_taint(self, eqn, ins, keep: list, why: str):
    v = eqn.outvars[0]
    out = self.fresh(v.aval)
    for k, r in enumerate(ins[0]):
      if keep[k]:
        out[k] = r
      else:
        self.taint(r, why)
        self.taint(out[k], why)
    self.env[v] = out

  def _pad(self, eqn, ins):
    cfg = eqn.params["padding_config"]
    self._keep_or_taint(eqn, ins, [c == (0, 0, 0) for c in cfg],
                        "the channel axis is padded (e.g. a parameter-free "
                        "shortcut)")

  def _slice(self, eqn, ins):
    shape_in = eqn.invars[0].aval.shape
    shape_out = eqn.outvars[0].aval.shape
    self._keep_or_taint(eqn, ins, [x == y for x, y in zip(shape_in,
                                                            shape_out)],
                        "the channel axis is sliced")

  def _dynamic_slice(self, eqn, ins):
    self._slice(eqn, ins)

  def _rev(self, eqn, ins):
    dims = set(eqn.params["dimensions"])
    self._keep_or_taint(eqn, ins, [k not in dims for k in range(len(ins[0]))],
                        "the channel axis is reversed")

  def _reduce_window(self, eqn, ins):
    p = eqn.params
    keep = [w == 1 and s == 1 and pd == (0, 0) for w, s, pd in zip(
        p["window_dimensions"], p["window_strides"], p["padding"])]
    self._keep_or_taint(eqn, ins[:1], keep, "a window runs over the channel "
                        "axis")

  _reduce_window_sum = _reduce_window
  _reduce_window_max = _reduce_window
  _reduce_window_min = _reduce_window

  def _concatenate(self, eqn, ins):
    dim = eqn.params["dimension"]
    v = eqn.outvars[0]
    out = self.fresh(v.aval)
    for k in range(len(out)):
      col = [r[k] for r in ins if r is not None]
      if k == dim:
        # The channel sets side by side, in order (a concatenation of
        # concatenations flattened); the consumers read each at its offset.
        if len(col) != len(ins) or any(r.repeat != 1 for r in col):
          for r in col + [out[k]]:
            self.taint(r, "a concatenation of constants or of flattened "
                       "channels")
          continue
        parts = []
        for r, var in zip(col, eqn.invars):
          parts += list(self.parts(r) or ((r.node, var.aval.shape[dim]),))
        out[k] = _Ref(out[k].node, 1, tuple(parts))
      else:
        out[k] = col[0]
        for r in col[1:]:
          self.join(col[0], r, "axes joined with different repeats")
    self.env[v] = out

  def _split(self, eqn, ins):
    axis = eqn.params["axis"]
    for v in eqn.outvars:
      out = list(ins[0])
      out[axis] = _Ref(self.uf.new())
      self.taint(ins[0][axis], "the channel axis is split")
      self.taint(out[axis], "the channel axis is split")
      self.env[v] = out

  def _iota(self, eqn, ins):
    del ins
    self.env[eqn.outvars[0]] = self.fresh(eqn.outvars[0].aval)

  def _role(self, var, axis, kind, repeat=1):
    if var in self.source:
      self.roles.append(_Role(self.source[var], axis, kind, repeat))

  def _conv_general_dilated(self, eqn, ins):
    lhs, rhs = eqn.invars[:2]
    dn = eqn.params["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    groups = eqn.params["feature_group_count"]
    v = eqn.outvars[0]
    out = self.fresh(v.aval)
    lf, ro, ri = lhs_spec[1], rhs_spec[0], rhs_spec[1]
    out[out_spec[1]] = ins[1][ro]
    self._role(rhs, ro, "out")
    if eqn.params.get("batch_group_count", 1) != 1:
      self.mark_all(ins[0], "a batch-grouped convolution")
    if groups == 1:
      self.join(ins[0][lf], ins[1][ri], "a convolution reads repeated "
                "channels")
      self._role(rhs, ri, "in")
    elif groups == lhs.aval.shape[lf] and rhs.aval.shape[ri] == 1:
      # Depthwise: output channel k (of m per input) reads input k // m;
      # with one output per input the channels are the same.
      if rhs.aval.shape[ro] == groups:
        self.join(ins[0][lf], ins[1][ro], "a depthwise convolution")
      else:
        self.taint(ins[0][lf], "a depthwise convolution with a channel "
                   "multiplier")
        self.taint(ins[1][ro], "a depthwise convolution with a channel "
                   "multiplier")
    else:
      for r in (ins[0][lf], ins[1][ri], ins[1][ro]):
        self.taint(r, f"a grouped convolution ({groups} groups)")
    for k in range(2, len(lhs_spec)):
      self.uf.mark(out[out_spec[k]].node, "spatial")
    self.env[v] = out

  def _dot_general(self, eqn, ins):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = eqn.invars[:2]
    for a, b in zip(lc, rc):
      x, y = ins[0][a], ins[1][b]
      if rhs in self.source and lhs not in self.source and y.repeat == 1:
        # A kernel reading a flattened (H, W, C) axis: its rows are the
        # channels repeated x.repeat times.
        self.join(x, y, "", repeats=False)
        self._role(rhs, b, "in", x.repeat)
      elif lhs in self.source and rhs not in self.source and x.repeat == 1:
        self.join(x, y, "", repeats=False)
        self._role(lhs, a, "in", y.repeat)
      else:
        self.join(x, y, "a contraction over repeated channels")
        self._role(rhs, b, "in", x.repeat)
        self._role(lhs, a, "in", y.repeat)
    for a, b in zip(lb, rb):
      self.join(ins[0][a], ins[1][b], "batch axes with different repeats")
    out = [ins[0][a] for a in lb]
    lfree = [k for k in range(len(ins[0])) if k not in lc and k not in lb]
    rfree = [k for k in range(len(ins[1])) if k not in rc and k not in rb]
    out += [ins[0][k] for k in lfree] + [ins[1][k] for k in rfree]
    for k in lfree:
      self._role(lhs, k, "out")
    for k in rfree:
      self._role(rhs, k, "out")
    self.env[eqn.outvars[0]] = out


def _trace(apply_fn: Callable, variables: dict, example_input):
  """``(closed jaxpr, tracer, flat leaves, group report)``."""
  flat, _ = jax.tree_util.tree_flatten_with_path(variables)
  # Plain convolutions (not oneDNN custom calls) in the program: they are
  # what the tracer follows, and what runs anywhere once exported.
  with conv.use_backend("xla"):
    closed = jax.make_jaxpr(apply_fn)(variables, example_input)
  jaxpr = closed.jaxpr
  n = len(flat)
  tr = _Tracer()
  in_refs = []
  for k, v in enumerate(jaxpr.invars):
    refs = tr.fresh(v.aval, leaf=k < n)
    if k < n:
      tr.source[v] = k
      for axis, r in enumerate(refs):
        tr.leaf_axes[(k, axis)] = r.node
    else:
      tr.mark_all(refs, "the channels come from the network's input")
    in_refs.append(refs)
  outs = tr.run(jaxpr, in_refs)
  for r in outs:
    tr.mark_all(r, _OUTPUT)
  uf = tr.uf
  roles: dict = {}
  for ro in tr.roles:
    roles.setdefault((ro.leaf, ro.axis), ro)
  shapes = [np.shape(x) for _, x in flat]
  comps: dict = {}     # root -> [(leaf, axis, offset, span, size)]
  for (leaf, axis), node in tr.leaf_axes.items():
    parts = tr.splits.get(uf.find(node))
    if parts is None:
      comps.setdefault(uf.find(node), []).append(
          (leaf, axis, 0, 0, shapes[leaf][axis]))
      continue
    span, offset = sum(size for _, size in parts), 0
    for node_, size in parts:
      comps.setdefault(uf.find(node_), []).append(
          (leaf, axis, offset, span, size))
      offset += size
  taint: dict = {}
  for node, why in uf.taint.items():
    taint.setdefault(uf.find(node), why)
  paths = [tuple(_key(p) for p in path) for path, _ in flat]
  groups, reasons, roots = [], {}, {}
  n_out: dict = {}
  for (leaf, _), r in roles.items():
    if r.kind == "out":
      n_out[leaf] = n_out.get(leaf, 0) + 1
  for root, members in comps.items():
    outs_ = [m for m in members if roles.get(m[:2], None) is not None
             and roles[m[:2]].kind == "out"]
    if not outs_:
      continue
    if taint.get(root) == _OUTPUT:
      continue        # the network's outputs (the classifier) are no group
    producers, consumers = [], []
    for leaf, axis, offset, span, _ in sorted(members):
      if shapes[leaf][axis] == 1:
        continue
      slot_path = paths[leaf]
      role = roles.get((leaf, axis))
      kind = role.kind if role is not None else "elem"
      if kind == "in":
        consumers.append(surgery.Slot(slot_path[0], slot_path[1:], axis,
                                      role.repeat, offset, span))
      else:
        producers.append(surgery.Slot(slot_path[0], slot_path[1:], axis,
                                      1, offset, span))
    order = {(r.leaf, r.axis): k for k, r in reversed(list(enumerate(
        tr.roles)))}
    first = min(outs_, key=lambda m: (order.get(m[:2], len(order)), m[2]))
    name = "/".join(str(k) for k in paths[first[0]][1:-1]) or str(first[0])
    if n_out[first[0]] > 1:      # a kernel with several output axes
      name += f"@{first[1]}"
    if first[3]:                 # one of several groups along that axis
      name += f"+{first[2]}"
    size = first[4]
    prunable = root not in taint
    if not prunable:
      reasons[name] = taint[root]
    roots[name] = root
    groups.append(surgery.ChannelGroup(name, int(size), tuple(producers),
                                       tuple(consumers), prunable))
  groups.sort(key=lambda g: min(paths.index((s.collection,) + s.path)
                                for s in g.producers))
  return closed, tr, roots, TraceReport(tuple(groups), reasons)


def traced_groups(apply_fn: Callable, variables: dict, example_input,
                  ) -> TraceReport:
  """The channel groups of ``apply_fn(variables, example_input)``.

  Args:
    apply_fn: ``(variables, x) -> outputs``, e.g. ``lambda v, x:
      model.apply(v, x, train=False)`` for a Linen model, or
      :func:`nnx_apply` for an NNX model.
    variables: ``{collection: tree}`` (``'params'``, ``'batch_stats'``, ...).
    example_input: an input of the shape the model takes (values unused).

  Returns:
    A :class:`TraceReport`: the groups (each named after its first producer
    kernel) and, for each group that is not prunable, the reason.
  """
  return _trace(apply_fn, variables, example_input)[3]


_SHAPE_PARAMS = {"reshape": "new_sizes", "broadcast_in_dim": "shape",
                 "iota": "shape"}


def _interpret(jaxpr, consts, args, size_of):
  """Evaluates ``jaxpr`` on ``args`` whose shapes may be smaller than the
  traced ones: every operation whose parameters fix a shape takes its
  output's new shape (``size_of(var) -> shape``); calls are inlined (their
  custom derivatives are dropped: this is for inference)."""
  env = {}

  def read(v):
    return v.val if isinstance(v, jcore.Literal) else env[v]

  for v, x in zip(jaxpr.constvars, consts):
    env[v] = x
  for v, x in zip(jaxpr.invars, args):
    env[v] = x
  for eqn in jaxpr.eqns:
    vals = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    if name in _CALLS:
      sub = next(_sub_jaxprs_closed(eqn))
      outs = _interpret(sub.jaxpr, sub.consts, vals, size_of)
    else:
      params = dict(eqn.params)
      if name in _SHAPE_PARAMS:
        params[_SHAPE_PARAMS[name]] = tuple(size_of(eqn.outvars[0]))
      if "sharding" in params and name in _SHAPE_PARAMS:
        params["sharding"] = None
      if name == "conv_general_dilated" and params["feature_group_count"] > 1:
        # Depthwise: one group per (now fewer) input channel.
        lf = params["dimension_numbers"].lhs_spec[1]
        if params["feature_group_count"] == eqn.invars[0].aval.shape[lf]:
          params["feature_group_count"] = int(np.shape(vals[0])[lf])
      outs = eqn.primitive.bind(*vals, **params)
      if not eqn.primitive.multiple_results:
        outs = [outs]
    for v, x in zip(eqn.outvars, outs):
      env[v] = x
  return [read(v) for v in jaxpr.outvars]


def _sub_jaxprs_closed(eqn):
  for p in eqn.params.values():
    if isinstance(p, jcore.ClosedJaxpr):
      yield p
    elif isinstance(p, jcore.Jaxpr):
      yield jcore.ClosedJaxpr(p, ())


def shrink_traced(apply_fn: Callable, variables: dict, example_input,
                  keep: dict):
  """The smaller network of any traceable model, without a rebuilt module.

  Removes the channels ``keep[name] == False`` of the traced groups
  (:func:`traced_groups`) from the variables and returns ``(small_apply,
  small_variables)``: ``small_apply(small_variables, x)`` runs the model's
  own computation at the smaller shapes (the jaxpr traced at ``x``'s shape,
  evaluated with every shape that carries channels reduced). Exact up to
  float rounding when the removed channels are zero
  (:func:`~proxnag_jax.surgery.zero_channels`). ``small_apply`` is a pure
  JAX function: jit it, or export it (:func:`export_portable`).
  """
  _, tr, roots, report = _trace(apply_fn, variables, example_input)
  kept = surgery.checked_keep(report.groups, keep, "shrink_traced",
                              report.reasons)
  small = surgery.take_channels(variables, report.groups, kept)
  sizes = {roots[n]: int(k.sum()) for n, k in kept.items()}
  leaf_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x),
                                                            x.dtype),
                             variables)

  def small_apply(small_variables, x):
    closed, tr2, roots2, _ = _trace(apply_fn, leaf_shapes, x)
    sizes2 = {roots2[n]: s for n, s in ((n, sizes[roots[n]])
                                        for n in kept)}
    uf = tr2.uf

    def size_of(v):
      refs = tr2.env.get(v)
      shape = list(v.aval.shape)
      if refs is None:
        return shape
      for k, r in enumerate(refs):
        parts = tr2.parts(r)
        if parts is not None:
          shape[k] = r.repeat * sum(sizes2.get(uf.find(n), size)
                                    for n, size in parts)
          continue
        s = sizes2.get(uf.find(r.node))
        if s is not None:
          shape[k] = s * r.repeat
      return shape

    args = jax.tree.leaves((small_variables, x))
    out = _interpret(closed.jaxpr, closed.consts, args, size_of)
    treedef = jax.tree.structure(jax.eval_shape(apply_fn, leaf_shapes, x))
    return jax.tree.unflatten(treedef, out)

  return small_apply, small


def export_portable(path: str, small_apply: Callable, small_variables: dict,
                    example_input) -> None:
  """Saves a network for loading without this library or the model's code:
  ``path + '.stablehlo'`` (``jax.export`` serialised, batch size symbolic)
  and ``path + '.npz'`` (the variables). Load with :func:`load_portable`."""
  from jax import export as jexport  # pylint: disable=g-import-not-at-top
  batch = jexport.symbolic_shape("b")[0]
  x_spec = jax.ShapeDtypeStruct((batch,) + tuple(np.shape(example_input)[1:]),
                                np.asarray(example_input).dtype)
  v_spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a),
                                                       np.asarray(a).dtype),
                        small_variables)
  with conv.use_backend("xla"):  # no custom calls in a portable program
    exported = jexport.export(jax.jit(small_apply))(v_spec, x_spec)
  with open(path + ".stablehlo", "wb") as f:
    f.write(exported.serialize())
  flat, _ = jax.tree_util.tree_flatten_with_path(small_variables)
  np.savez(path + ".npz", **{f"{k:05d}": np.asarray(x)
                             for k, (_, x) in enumerate(flat)})
  with open(path + ".tree", "w") as f:
    f.write(repr([tuple(_key(p) for p in path_) for path_, _ in flat]))


def load_portable(path: str):
  """``(fn, variables)`` of :func:`export_portable`'s files: ``fn(variables,
  x)`` runs the exported network (only ``jax`` and ``numpy`` needed)."""
  import ast  # pylint: disable=g-import-not-at-top
  from jax import export as jexport  # pylint: disable=g-import-not-at-top
  with open(path + ".stablehlo", "rb") as f:
    exported = jexport.deserialize(bytearray(f.read()))
  with open(path + ".tree") as f:
    paths = ast.literal_eval(f.read())
  data = np.load(path + ".npz")
  variables: dict = {}
  for k, p in enumerate(paths):
    node = variables
    for key in p[:-1]:
      node = node.setdefault(key, {})
    node[p[-1]] = data[f"{k:05d}"]
  return exported.call, variables


def shrink_nnx(model, keep: dict, example_input):
  """Removes channels from an NNX model **in place**: the kernels, biases,
  norms and statistics of the traced groups (:func:`traced_groups`) lose
  the channels ``keep[name] == False``, and each ``nnx.Conv``,
  ``nnx.Linear``, ``nnx.BatchNorm`` / ``LayerNorm`` gets its feature counts
  (``in_features``, ``out_features``, ``num_features``, a depthwise conv's
  ``feature_group_count``) from its new shapes. Returns the model, whose
  outputs equal the masked model's up to float rounding."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  graphdef, state = nnx.split(model)
  variables = {"params": nnx.to_pure_dict(state)}
  report = traced_groups(nnx_apply(graphdef), variables, example_input)
  keep = surgery.checked_keep(report.groups, keep, "shrink_nnx",
                              report.reasons)
  small = surgery.take_channels(variables, report.groups, keep)
  nnx.replace_by_pure_dict(state, small["params"])
  nnx.update(model, state)
  for _, m in nnx.iter_modules(model):
    if isinstance(m, nnx.Conv):
      k = m.kernel.get_value()
      depthwise = m.feature_group_count == m.in_features > 1
      m.out_features = k.shape[-1]
      m.in_features = m.out_features if depthwise else k.shape[-2]
      if depthwise:
        m.feature_group_count = m.in_features
    elif isinstance(m, nnx.Linear):
      m.in_features, m.out_features = m.kernel.get_value().shape
    elif isinstance(m, (nnx.BatchNorm, nnx.LayerNorm)):
      if getattr(m, "scale", None) is not None:
        m.num_features = m.scale.get_value().shape[0]
  return model


def nnx_apply(graphdef) -> Callable:
  """``(variables, x) -> model(x)`` of an NNX model split as ``graphdef,
  state = nnx.split(model)``, for :func:`traced_groups` and
  :func:`shrink_traced`, with ``variables = {'params':
  nnx.to_pure_dict(state)}`` (every state leaf, BatchNorm statistics
  included, under one collection)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  def apply(variables, x):
    state = nnx.State(variables["params"])
    return nnx.merge(graphdef, state)(x)
  return apply


def _key(entry) -> Any:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return getattr(entry, attr)
  return str(entry)
