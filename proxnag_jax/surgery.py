"""Network surgery: remove channels for real, so the pruned network is a
smaller dense network that runs faster.

A **channel group** is a set of channels that live and die together: the
output channels of a conv (or units of a Dense layer) with their bias and
BatchNorm entries (the *producers*) and the input channels of every layer
that reads them (the *consumers*). Channels joined by a residual addition form
one group with several producers (every conv that writes into the stream).

>>> groups = channel_groups(model, variables)
>>> keep = {"conv1": jnp.arange(20) < 12}           # keep 12 of 20 channels
>>> small_model, small_vars = shrink(model, variables, keep)
>>> small_model.apply(small_vars, x, train=False)   # == model.apply(
...                                                 #  zero_channels(...), x)

``shrink`` is exact: when the removed channels' producers are zero (kernel
columns, bias, BatchNorm scale and shift; :func:`zero_channels`), the smaller
network computes the same outputs up to float rounding. Groups of the
registered model families:

* ``LeNet5`` (``lenet5``, ``lenet5_bn``): ``conv1``, ``conv2``, ``fc1``.
* ``LeNet300100``: ``fc1``, ``fc2``. ``ConvN``: ``conv1..convD``, ``fc1``,
  ``fc2``. ``VGG``: ``conv0..conv12``.
* ``CifarResNet``: every block's inner channels ``layerS_B/inner`` (conv1 +
  bn1 -> conv2); the stage streams ``stageS`` (the stem or the first block's
  1x1 shortcut, every block's conv2 + bn2 -> the next convs, shortcuts and the
  classifier). With option-A shortcuts the streams are not prunable: the
  parameter-free shortcut pads stage ``S``'s channels into stage ``S+1`` at
  fixed positions, so removing a stream channel would need a model that
  scatters channels; option B's 1x1 convs free the stages (``resnetN_b``).

The classifier's outputs are never a group. Any other model's groups are
found by tracing its computation (:mod:`proxnag_jax.trace_groups`, which
also shrinks and exports it without a rebuilt module); the hand-written
families stay as its checks. A model family can also be added by hand with
:func:`register` (its group builder and its rebuild function).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from proxnag_jax import masks as masks_lib

from proxnag_jax.models.cifar_resnet import CifarResNet
from proxnag_jax.models.conv_n import ConvN
from proxnag_jax.models.lenet import LeNet300100
from proxnag_jax.models.lenet import LeNet5
from proxnag_jax.models.vgg import VGG

PyTree = Any


class Slot(NamedTuple):
  """One leaf's share of a channel group.

  Attributes:
    collection: ``'params'`` or ``'batch_stats'``.
    path: the keys of the leaf inside the collection, e.g.
      ``('layer1_0', 'conv1', 'kernel')``.
    axis: the leaf's channel axis.
    repeat: a consumer Dense layer after a flatten of ``(H, W, C)`` reads
      ``repeat = H*W`` copies of the channels along ``axis`` (index
      ``s * C + c``); 1 otherwise.
    offset, span: a leaf that holds several groups side by side along
      ``axis`` (a layer reading a concatenation, a BatchNorm after one) has
      one slot per group: channel ``c`` of the group is entry ``s * span +
      offset + c`` (``span``: the length of one repeated block, 0 for the
      group's own size, i.e. the slot covers the whole axis).
  """

  collection: str
  path: tuple
  axis: int
  repeat: int = 1
  offset: int = 0
  span: int = 0


def slot_index(slot: Slot, size: int) -> np.ndarray:
  """The entries along ``slot.axis`` that hold a group's ``size`` channels,
  block by block (``repeat * size`` indices)."""
  span = slot.span or size
  return (np.arange(slot.repeat)[:, None] * span + slot.offset
          + np.arange(size)[None, :]).reshape(-1)


def _whole(slot: Slot, size: int) -> bool:
  return slot.offset == 0 and slot.span in (0, size)


class ChannelGroup(NamedTuple):
  """Channels removed together (see the module docstring).

  Attributes:
    name: e.g. ``'conv2'``, ``'layer2_1/inner'``, ``'stage3'``.
    size: the number of channels.
    producers: slots whose entries along ``axis`` are the channels (kernel
      output axis, bias, BatchNorm scale / bias / mean / var).
    consumers: slots that read the channels (input axes of the next layers).
    prunable: False for groups that cannot be removed (option-A streams).
  """

  name: str
  size: int
  producers: tuple
  consumers: tuple
  prunable: bool = True

  def kernels(self) -> tuple:
    """The producer kernels (the weights a structured method scores)."""
    return tuple(s for s in self.producers
                 if s.collection == "params" and s.path[-1] == "kernel")

  def scales(self) -> tuple:
    """The producer BatchNorm scales (network slimming's factors)."""
    return tuple(s for s in self.producers
                 if s.collection == "params" and s.path[-1] == "scale")


# ---------------------------------------------------------------------------
# Group builders per model family.
# ---------------------------------------------------------------------------


def _get(variables: dict, slot: Slot):
  node = variables[slot.collection]
  for k in slot.path:
    node = node[k]
  return node


def slot_leaf(params: PyTree, slot: Slot, size: Optional[int] = None):
  """The params leaf of a ``'params'`` slot (with the group's ``size``:
  only the slot's entries along its axis, where the leaf holds several
  groups)."""
  w = _get({"params": params}, slot)
  if size is None or _whole(slot, size):
    return w
  return jnp.take(w, jnp.asarray(slot_index(slot, size)), axis=slot.axis)


def _per_channel(w, slot: Slot, size: int, reduce=jnp.sum):
  """``reduce`` of a leaf over everything but the slot's channels: one value
  per channel of the group (its repeated blocks reduced together)."""
  r = reduce(w, _other_axes(w, slot.axis))
  if _whole(slot, size) and slot.repeat == 1:
    return r
  r = jnp.take(r, jnp.asarray(slot_index(slot, size))).reshape(
      slot.repeat, size)
  return reduce(r, 0)


def _has(variables: dict, collection: str, path: tuple) -> bool:
  node = variables.get(collection, {})
  for k in path:
    if not hasattr(node, "get") or k not in node:
      return False
    node = node[k]
  return True


def _layer(variables, name: tuple, *, bn: Optional[tuple] = None) -> list:
  """Producer slots of a conv / Dense ``name`` (kernel, bias if any) and of
  its BatchNorm ``bn`` (scale, bias, mean, var) if present."""
  out = [Slot("params", name + ("kernel",), -1)]
  if _has(variables, "params", name + ("bias",)):
    out.append(Slot("params", name + ("bias",), -1))
  if bn is not None and _has(variables, "params", bn + ("scale",)):
    out += [Slot("params", bn + ("scale",), -1),
            Slot("params", bn + ("bias",), -1),
            Slot("batch_stats", bn + ("mean",), -1),
            Slot("batch_stats", bn + ("var",), -1)]
  return out


def _reader(variables, name: tuple, size: int, *, dense: bool = False
            ) -> Slot:
  """The consumer slot of layer ``name`` reading ``size`` channels."""
  kernel = name + ("kernel",)
  if dense:
    rows = _get(variables, Slot("params", kernel, 0)).shape[0]
    return Slot("params", kernel, 0, rows // size)
  return Slot("params", kernel, -2)


def _width(variables, name: tuple) -> int:
  return int(_get(variables, Slot("params", name + ("kernel",), -1)).shape[-1])


def _chain_groups(variables, layers: list, last: tuple, dense_from: int,
                  bns: Optional[list] = None) -> list:
  """Groups of a plain feed-forward stack: layer ``i``'s outputs are read by
  layer ``i + 1`` (``last`` reads the final one); layers from index
  ``dense_from`` on (and ``last``) are Dense."""
  groups = []
  readers = layers[1:] + [last]
  for i, (name, nxt) in enumerate(zip(layers, readers)):
    size = _width(variables, name)
    bn = bns[i] if bns else None
    groups.append(ChannelGroup(
        "/".join(name), size, tuple(_layer(variables, name, bn=bn)),
        (_reader(variables, nxt, size, dense=i + 1 >= dense_from),)))
  return groups


def _lenet5_groups(model: LeNet5, variables) -> list:
  bns = [("bn1",), ("bn2",), ("bn3",)] if model.batch_norm else None
  return _chain_groups(variables, [("conv1",), ("conv2",), ("fc1",)],
                       ("fc2",), dense_from=2, bns=bns)


def _lenet5_rebuild(model: LeNet5, sizes: dict):
  return model.clone(widths=(sizes["conv1"], sizes["conv2"], sizes["fc1"]))


def _lenet300_groups(model, variables) -> list:
  del model
  return _chain_groups(variables, [("fc1",), ("fc2",)], ("fc3",),
                       dense_from=0)


def _lenet300_rebuild(model, sizes):
  return model.clone(widths=(sizes["fc1"], sizes["fc2"]))


def _convn_groups(model: ConvN, variables) -> list:
  names = [(f"conv{i + 1}",) for i in range(model.depth)] + [("fc1",),
                                                             ("fc2",)]
  return _chain_groups(variables, names, ("fc3",), dense_from=model.depth)


def _convn_rebuild(model: ConvN, sizes):
  return model.clone(
      widths=tuple(sizes[f"conv{i + 1}"] for i in range(model.depth)),
      head=(sizes["fc1"], sizes["fc2"]))


def _vgg_groups(model: VGG, variables) -> list:
  n = sum(1 for v in model.cfg if v != "M")
  names = [(f"conv{i}",) for i in range(n)]
  return _chain_groups(variables, names, ("fc",), dense_from=n,
                       bns=[(f"bn{i}",) for i in range(n)])


def _vgg_rebuild(model: VGG, sizes):
  cfg, i = [], 0
  for v in model.cfg:
    if v == "M":
      cfg.append(v)
    else:
      cfg.append(sizes[f"conv{i}"])
      i += 1
  return model.clone(cfg=tuple(cfg))


def _resnet_blocks(model: CifarResNet) -> list:
  n = (model.depth - 2) // 6
  return [(s, b, f"layer{s + 1}_{b}") for s in range(3) for b in range(n)]


def _resnet_groups(model: CifarResNet, variables) -> list:
  groups = []
  blocks = _resnet_blocks(model)
  for _, _, blk in blocks:
    size = _width(variables, (blk, "conv1"))
    groups.append(ChannelGroup(
        f"{blk}/inner", size,
        tuple(_layer(variables, (blk, "conv1"), bn=(blk, "bn1"))),
        (_reader(variables, (blk, "conv2"), size),)))
  for s in range(3):
    producers = []
    if s == 0:
      producers += _layer(variables, ("conv1",), bn=("bn1",))
    in_stage = [blk for st, _, blk in blocks if st == s]
    if _has(variables, "params", (in_stage[0], "shortcut_conv")):
      producers += _layer(variables, (in_stage[0], "shortcut_conv"),
                          bn=(in_stage[0], "shortcut_bn"))
    for blk in in_stage:
      producers += _layer(variables, (blk, "conv2"), bn=(blk, "bn2"))
    size = _width(variables, (in_stage[0], "conv2"))
    # Readers: every block whose input is this stream (a stage's first block
    # reads the previous stream, or the stem's, which is stage 1's).
    readers = in_stage if s == 0 else in_stage[1:]
    consumers = [_reader(variables, (blk, "conv1"), size) for blk in readers]
    if s < 2:
      nxt = [blk for st, _, blk in blocks if st == s + 1][0]
      consumers.append(_reader(variables, (nxt, "conv1"), size))
      if _has(variables, "params", (nxt, "shortcut_conv")):
        consumers.append(_reader(variables, (nxt, "shortcut_conv"), size))
    else:
      consumers.append(_reader(variables, ("fc",), size, dense=True))
    # Option A pads stage s into stage s+1 at fixed positions (and adds the
    # stem's output to stage 1's blocks): its streams cannot shrink.
    groups.append(ChannelGroup(f"stage{s + 1}", size, tuple(producers),
                               tuple(consumers),
                               prunable=model.shortcut == "B"))
  return groups


def _resnet_rebuild(model: CifarResNet, sizes):
  blocks = _resnet_blocks(model)
  return model.clone(
      widths=tuple(sizes[f"stage{s + 1}"] for s in range(3)),
      block_widths=tuple(sizes[f"{blk}/inner"] for _, _, blk in blocks))


_FAMILIES: dict = {}


def register(model_type: type, groups_fn: Callable, rebuild_fn: Callable
             ) -> None:
  """Adds a model family: ``groups_fn(model, variables) -> [ChannelGroup]``
  and ``rebuild_fn(model, sizes: {group name: int}) -> smaller model``."""
  _FAMILIES[model_type] = (groups_fn, rebuild_fn)


register(LeNet5, _lenet5_groups, _lenet5_rebuild)
register(LeNet300100, _lenet300_groups, _lenet300_rebuild)
register(ConvN, _convn_groups, _convn_rebuild)
register(VGG, _vgg_groups, _vgg_rebuild)
register(CifarResNet, _resnet_groups, _resnet_rebuild)


def _family(model):
  for t, fns in _FAMILIES.items():
    if isinstance(model, t):
      return fns
  raise ValueError(
      f"network surgery does not know {type(model).__name__}; known: "
      f"{', '.join(t.__name__ for t in _FAMILIES)}. Find any model's groups "
      "by tracing it (proxnag_jax.trace_groups.traced_groups, or "
      "pj.structure), or add a family with proxnag_jax.surgery.register.")


def supports(model) -> bool:
  """Whether :func:`channel_groups` / :func:`shrink` know ``model``."""
  return any(isinstance(model, t) for t in _FAMILIES)


def channel_groups(model, variables: dict) -> tuple:
  """The channel groups of ``model`` with ``variables`` (a tuple of
  :class:`ChannelGroup`); raises ValueError for an unknown model family."""
  return tuple(_family(model)[0](model, variables))


def prunable_groups(groups) -> tuple:
  return tuple(g for g in groups if g.prunable)


# ---------------------------------------------------------------------------
# Channel masks and scores over the params pytree (traceable).
# ---------------------------------------------------------------------------


def _set(tree: dict, path: tuple, value) -> dict:
  """A copy of the nested dict ``tree`` with ``tree[path] = value``."""
  if not path:
    return value
  tree = dict(tree)
  tree[path[0]] = _set(tree[path[0]], path[1:], value)
  return tree


def _other_axes(w, axis: int) -> tuple:
  return tuple(a for a in range(w.ndim) if a != axis % w.ndim)


def _expand(keep: jax.Array, slot: Slot, shape: tuple) -> jax.Array:
  """``keep`` (one value per channel: a bool, a scale) shaped to broadcast
  along ``slot``'s axis of a leaf of ``shape`` (repeated for a flattened
  consumer; 1 / True on the entries of other groups the leaf holds)."""
  n = keep.shape[0]
  k = jnp.tile(keep, slot.repeat) if slot.repeat > 1 else keep
  length = shape[slot.axis]
  if k.shape[0] != length or not _whole(slot, n):
    k = jnp.ones((length,), keep.dtype).at[jnp.asarray(
        slot_index(slot, n))].set(k)
  out = [1] * len(shape)
  out[slot.axis] = length
  return k.reshape(out)


def channel_masks(params: PyTree, groups, keep: dict) -> PyTree:
  """Weight masks (a params-shaped tree of bools) switching off the
  producers of the removed channels: kernel columns, biases, BatchNorm
  scales and shifts. Leaves outside every group are all True. ``keep`` maps
  group names to bool arrays (groups not in it keep everything)."""
  masks = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
  masks = {"params": masks}
  for g in groups:
    if g.name not in keep:
      continue
    for s in g.producers:
      if s.collection != "params":
        continue
      leaf = _get(masks, s)
      masks = _set(masks, ("params",) + s.path,
                   leaf & _expand(jnp.asarray(keep[g.name], bool), s,
                                  leaf.shape))
  return masks["params"]


def zero_channels(variables: dict, groups, keep: dict) -> dict:
  """``variables`` with the removed channels' producer params set to zero
  (their BatchNorm statistics are left: with scale and shift zero the
  channel's output is zero whatever they hold)."""
  params = variables["params"]
  masks = channel_masks(params, groups, keep)
  params = jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)),
                        params, masks)
  return {**variables, "params": params}


def channel_norms(params: PyTree, group: ChannelGroup, ord: int = 1
                  ) -> jax.Array:
  """Per-channel norm of the group's producer kernels: ``ord=1`` the sum of
  ``|w|`` over each output filter (Li et al.), ``ord=2`` the Euclidean norm
  over all producer kernels' columns together (group lasso)."""
  total = 0.0
  for s in group.kernels():
    w = _get({"params": params}, s)
    total = total + _per_channel(jnp.abs(w) if ord == 1 else w * w, s,
                                 group.size)
  return total if ord == 1 else jnp.sqrt(total)


def channel_sums(tree: PyTree, group: ChannelGroup, slots=None) -> jax.Array:
  """Per-channel sum of a params-shaped ``tree`` (e.g. ``|w * g|``) over
  the group's producer kernels (or ``slots``)."""
  total = 0.0
  for s in (slots if slots is not None else group.kernels()):
    total = total + _per_channel(_get({"params": tree}, s), s, group.size)
  return total


def channel_param_count(params: PyTree, group: ChannelGroup) -> int:
  """Producer params per channel (kernel column + bias + BN scale/shift)."""
  n = 0
  for s in group.producers:
    if s.collection == "params":
      w = _get({"params": params}, s)
      n += w.size // w.shape[s.axis]
  return n


def _scale_slots(g, normalized):
  """``(norm_slots, free, relative)`` of group ``g``: with every kernel of
  the group normalised (``normalized``) and other producers to carry the
  scale, the channel norm is over those (``relative``; the kernels are
  ``free``); else over all its params producers."""
  def is_norm(slot):
    return normalized is not None and bool(_get({"params": normalized}, slot))

  ps = [s for s in g.producers if s.collection == "params"]
  kernels = [s for s in ps if s.path[-1] == "kernel"]
  free = [s for s in kernels if is_norm(s)]
  scaled = [s for s in ps if s not in free]
  relative = bool(kernels) and len(free) == len(kernels) and bool(scaled)
  return (scaled if relative else ps), free, relative


def relative_channel_scales(params: PyTree, g, normalized) -> Optional[
    jax.Array]:
  """Per channel of group ``g``, the norm of its scale-carrying params
  (BatchNorm scale and shift, a bias after it) over their rms across the
  group's channels: its share of the group's scale, the quantity the
  scale-invariant :func:`group_soft_threshold` thresholds. ``None`` when
  the group's kernels are not all normalised (its scale is the kernels')."""
  slots, _, relative = _scale_slots(g, normalized)
  if not relative:
    return None
  sq = 0.0
  for s in slots:
    w = _get({"params": params}, s)
    sq = sq + _per_channel(w * w, s, g.size)
  rms = jnp.sqrt(jnp.mean(sq))
  return jnp.sqrt(sq) / jnp.where(rms > 0, rms, 1.0)


def group_soft_threshold(params: PyTree, groups, tau, *,
                         weighted: bool = True,
                         normalized: Optional[PyTree] = None) -> PyTree:
  r"""The proximal map of the channel group lasso
  ``tau * sum_c sqrt(p_c) ||w_c||_2``: each channel's producer params
  (kernel column, bias, BatchNorm scale and shift, all together; ``p_c`` of
  them) are scaled by ``max(0, 1 - tau sqrt(p_c) / ||w_c||)``, so a whole
  channel becomes exactly zero. ``weighted=False`` drops ``sqrt(p_c)``
  (Yuan & Lin's weights make groups of different sizes comparable).
  Only prunable groups are touched. Traceable; ``tau`` may be traced.

  **Scale-invariant step** (``normalized``: a params-shaped tree of bools,
  the kernels whose output channels feed a normalisation). In a group whose
  kernels are all normalised, a kernel column's scale is invisible to the
  loss, so it is left out of the channel's norm: ``n_c`` is the norm of the
  channel's other producers (BatchNorm scale and shift, a bias after it),
  which carry its scale. The threshold is relative to the group's channels,
  ``tau * rms_c(n_c)``, each channel's scale params are multiplied by
  ``max(0, 1 - tau rms(n) / n_c)`` and then all of them by one factor that
  restores the group's total norm ``||n||``; a channel whose factor is 0
  loses its kernel columns too. So channels are ranked and removed by their
  share of the group's scale, and the group as a whole cannot shrink (an
  absolute threshold empties the group with the smallest weights first).
  Groups with an unnormalised kernel take the absolute step above."""
  out = {"params": params}
  for g in prunable_groups(groups):
    norm_slots, free, relative = _scale_slots(g, normalized)
    sq = 0.0
    for s in norm_slots:
      w = _get(out, s)
      sq = sq + _per_channel(w * w, s, g.size)
    norm = jnp.sqrt(sq)
    if relative:
      t = tau * jnp.sqrt(jnp.mean(sq))
      shrink = jnp.maximum(0.0, 1.0 - t / jnp.maximum(norm, 1e-30))
      shrink = jnp.where(norm > 0, shrink, 0.0)
      total = jnp.sqrt(jnp.sum(sq))
      after = jnp.sqrt(jnp.sum(jnp.square(shrink * norm)))
      scale = shrink * jnp.where(after > 0, total / jnp.where(
          after > 0, after, 1.0), 0.0)
      for s in free:
        w = _get(out, s)
        out = _set(out, ("params",) + s.path,
                   (w * _expand(scale > 0, s, w.shape)).astype(w.dtype))
    else:
      t = tau * (math.sqrt(channel_param_count(params, g)) if weighted
                 else 1.0)
      scale = jnp.maximum(0.0, 1.0 - t / jnp.maximum(norm, 1e-30))
      scale = jnp.where(norm > 0, scale, 0.0)
    for s in norm_slots:
      w = _get(out, s)
      out = _set(out, ("params",) + s.path,
                 (w * _expand(scale, s, w.shape)).astype(w.dtype))
  return out["params"]


def alive_channels(params: PyTree, group: ChannelGroup) -> jax.Array:
  """Bool per channel: some producer param of the channel is nonzero."""
  alive = jnp.zeros((group.size,), bool)
  for s in group.producers:
    if s.collection != "params":
      continue
    alive = alive | _per_channel(_get({"params": params}, s) != 0, s,
                                 group.size, jnp.any)
  return alive


def select_channels(scores: dict, groups, sparsity, scope: str = "layer"
                    ) -> dict:
  """Keep the highest-scoring channels of every prunable group (traceable).

  Args:
    scores: ``{group name: score per channel}``.
    groups: the model's channel groups.
    sparsity: the fraction of channels to remove (may be traced).
    scope: ``'layer'``: every group removes ``round(sparsity * size)`` (Li et
      al.'s uniform rate); ``'global'``: ``round(sparsity * total)`` over all
      prunable groups together (one threshold, network slimming). Every group
      keeps at least one channel.

  Returns:
    ``{group name: bool keep array}`` for the prunable groups.
  """
  gs = prunable_groups(groups)
  sparsity = jnp.asarray(sparsity, jnp.float32)
  if scope == "layer":
    out = {}
    for g in gs:
      n_rm = jnp.clip(jnp.round(sparsity * g.size), 0, g.size - 1)
      out[g.name] = masks_lib.topk_mask(scores[g.name],
                                        g.size - n_rm.astype(jnp.int32))
    return out
  if scope != "global":
    raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}.")
  total = sum(g.size for g in gs)
  n_rm = jnp.clip(jnp.round(sparsity * total), 0, total - len(gs))
  # Each group's best channel first, so no group is emptied.
  flat = jnp.concatenate([
      jnp.where(jnp.arange(g.size) == jnp.argmax(scores[g.name]), jnp.inf,
                scores[g.name].astype(jnp.float32)) for g in gs])
  keep = masks_lib.topk_mask(flat, total - n_rm.astype(jnp.int32))
  out, i = {}, 0
  for g in gs:
    out[g.name] = keep[i:i + g.size]
    i += g.size
  return out


def round_keep(keep: dict, scores: dict, groups, round_to: int) -> dict:
  """Rounds every group's kept count to the nearest multiple of
  ``round_to`` (at least ``round_to``, at most the group's size), keeping
  the highest scores: CPU and GPU convolutions run much faster on channel
  counts that are multiples of 8 (measured in docs/results.md: a shrunk
  ResNet-20 with odd inner widths ran 1.38x faster than the dense one, the
  same widths rounded up to multiples of 8 1.74x). Traceable; the target
  count then holds only to within ``round_to / 2`` channels per group."""
  if round_to <= 1:
    return keep
  out = dict(keep)
  for g in prunable_groups(groups):
    if g.name not in keep or g.size <= round_to:
      continue
    k = jnp.sum(keep[g.name], dtype=jnp.int32)
    k = jnp.clip(jnp.round(k / round_to) * round_to, round_to,
                 g.size).astype(jnp.int32)
    out[g.name] = masks_lib.topk_mask(scores[g.name], k)
  return out


def num_removed(keep: dict) -> jax.Array:
  """Channels a selection ``{group: bool keep per channel}`` removes
  (int32, traceable)."""
  return sum((jnp.sum(~k, dtype=jnp.int32) for k in keep.values()),
             jnp.int32(0))


def removed_channels(params: PyTree, groups) -> jax.Array:
  """Channels of the prunable groups whose producers are all zero (int32,
  traceable)."""
  return sum((jnp.sum(~alive_channels(params, g), dtype=jnp.int32)
              for g in prunable_groups(groups)), jnp.int32(0))


def num_channels(groups) -> int:
  """Channels in the prunable groups."""
  return sum(g.size for g in prunable_groups(groups))


# ---------------------------------------------------------------------------
# What a channel selection costs: params and MACs of the shrunk network.
# ---------------------------------------------------------------------------


class CostTerm(NamedTuple):
  """One share of the shrunk network's cost: ``cost * prod f(group)`` over
  ``groups``, ``f`` the kept fraction of a prunable group (1 for ``None``:
  channels no group removes). A kernel's groups are the ones its input and
  output axes hold (several for a kernel with several channel axes, e.g.
  attention heads and head features)."""

  cost: float
  groups: tuple


def _slot_groups(groups, shapes: dict) -> dict:
  """params path -> ``{axis: [(group, share), ...]}``: the prunable groups
  along each of the leaf's axes and the share of the axis each holds (1
  unless the leaf holds several groups side by side); ``shapes``: params
  path -> leaf shape."""
  out: dict = {}
  for g in prunable_groups(groups):
    for sl in g.producers + g.consumers:
      if sl.collection == "params":
        shape = shapes[sl.path]
        axis = sl.axis % len(shape)
        out.setdefault(sl.path, {}).setdefault(axis, []).append(
            (g.name, g.size * sl.repeat / shape[axis]))
  return out


def _terms(cost: float, axes: dict) -> list:
  """``cost`` split over the combinations of a leaf's groups, one per
  axis; the share of an axis no prunable group holds goes with ``None``."""
  terms = [CostTerm(cost, ())]
  for parts in axes.values():
    rest = 1.0 - sum(f for _, f in parts)
    if rest > 1e-9:
      parts = parts + [(None, rest)]
    terms = [CostTerm(t.cost * f, t.groups + (g,)) for t in terms
             for g, f in parts]
  return terms


def cost_terms(variables: dict, groups, kind: str,
               layer_macs: Optional[list] = None) -> tuple:
  """The shrunk network's parameter count (``kind='params'``) or MACs per
  example (``'macs'``) as a sum of :class:`CostTerm` (exact: a kernel's
  size and MACs are multilinear in the kept channels along its axes, a
  bias or BatchNorm entry linear in its channels; a leaf holding several
  groups side by side gives one term per group).

  Args:
    variables: the dense network's variables.
    groups: its channel groups.
    kind: ``'params'`` or ``'macs'``.
    layer_macs: for ``'macs'``, the ``layers`` list of
      :func:`proxnag_jax.report.count_macs` (``name``, ``macs``).
  """
  flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
  shapes = {tuple(getattr(k, "key", getattr(k, "name", k)) for k in path):
            np.shape(leaf) for path, leaf in flat}
  by_axis = _slot_groups(groups, shapes)
  if kind == "params":
    terms = []
    for path, shape in shapes.items():
      terms += _terms(float(np.prod(shape)), by_axis.get(path, {}))
    return tuple(terms)
  if kind == "macs":
    if layer_macs is None:
      raise ValueError("cost_terms('macs') needs layer_macs (count_macs's "
                       "'layers').")
    terms = []
    for l in layer_macs:
      p = tuple(l["name"].split("/")) + ("kernel",)
      terms += _terms(float(l["macs"]), by_axis.get(p, {}))
    return tuple(terms)
  raise ValueError(f"kind must be 'params' or 'macs', got {kind!r}.")


def shrunk_cost(terms: tuple, groups, keep: dict) -> jax.Array:
  """The cost (:func:`cost_terms`) of the network that keeps ``keep``
  (``{group: bool per channel}``; a group not in ``keep`` keeps all).
  Traceable, float32."""
  sizes = {g.name: g.size for g in prunable_groups(groups)}
  frac = {n: jnp.sum(k, dtype=jnp.float32) / sizes[n]
          for n, k in keep.items() if n in sizes}
  total = jnp.float32(0)
  for t in terms:
    f = t.cost
    for g in t.groups:
      f = f * frac.get(g, 1.0)
    total = total + f
  return total


def select_for_cost(pick: Callable[[jax.Array], dict], terms: tuple, groups,
                    target, iters: int = 24) -> dict:
  """``pick(s)`` at the smallest channel fraction ``s`` in [0, 1] whose
  shrunk network removes at least ``target`` of the cost (bisection;
  ``pick`` must remove more channels as ``s`` grows). When even ``s = 1``
  falls short (every group keeps a channel), ``pick(1)``. Traceable."""
  dense = float(sum(t.cost for t in terms))
  budget = (1.0 - jnp.asarray(target, jnp.float32)) * dense

  def body(_, lohi):
    lo, hi = lohi
    mid = 0.5 * (lo + hi)
    ok = shrunk_cost(terms, groups, pick(mid)) <= budget
    return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

  _, hi = jax.lax.fori_loop(0, iters, body,
                            (jnp.float32(0), jnp.float32(1)))
  return pick(hi)


# ---------------------------------------------------------------------------
# Surgery.
# ---------------------------------------------------------------------------


def shrink(model, variables: dict, keep: dict):
  """The smaller network keeping ``keep[name]`` channels of each group.

  Args:
    model: a registered Flax model (see the module docstring).
    variables: its variables (``params`` and, if any, ``batch_stats``).
    keep: ``{group name: bool array of the group's size}``; groups left out
      keep all channels. At least one channel of every group must stay.

  Returns:
    ``(small_model, small_variables)``: a model of the same class with the
    new widths (e.g. ``LeNet5(widths=(12, 31, 80))``) and its variables.
    Exact up to float rounding when the removed channels are zero
    (:func:`zero_channels`). Runs on the host (new shapes).
  """
  groups = channel_groups(model, variables)
  kept = checked_keep(groups, keep, "shrink")
  sizes = {g.name: int(kept[g.name].sum()) if g.name in kept else g.size
           for g in groups}
  small = _family(model)[1](model, sizes)
  return small, take_channels(variables, groups, kept)


def checked_keep(groups, keep: dict, who: str, reasons=None) -> dict:
  """``keep`` as bool arrays, checked against ``groups``: a known group,
  its size, at least one channel kept, and only prunable groups cut
  (``reasons``: why a group is not prunable)."""
  names = {g.name: g for g in groups}
  unknown = sorted(set(keep) - set(names))
  if unknown:
    raise ValueError(f"{who}: no channel group {unknown}; groups: "
                     f"{', '.join(names)}.")
  out = {}
  for name, k in keep.items():
    g = names[name]
    k = np.asarray(k, bool).reshape(-1)
    if k.shape[0] != g.size:
      raise ValueError(f"{who}: keep[{name!r}] has {k.shape[0]} entries, "
                       f"the group has {g.size} channels.")
    if not k.any():
      raise ValueError(f"{who}: keep[{name!r}] removes every channel; "
                       "keep at least one.")
    if not g.prunable and not k.all():
      why = (reasons or {}).get(name, "see proxnag_jax.surgery's docstring")
      raise ValueError(f"{who}: group {name!r} cannot be pruned ({why}).")
    out[name] = k
  return out


def take_channels(variables: dict, groups, keep: dict) -> dict:
  """``variables`` with only the channels ``keep[name]`` of each group
  (groups left out keep all): every producer and consumer slot sliced (a
  leaf holding several groups, e.g. one reading a concatenation, loses each
  group's removed entries at once)."""
  out = jax.tree.map(np.asarray, jax.device_get(dict(variables)))
  kept: dict = {}      # (collection, path, axis) -> bool per entry
  for g in groups:
    k = keep.get(g.name)
    if k is None:
      continue
    k = np.asarray(k, bool).reshape(-1)
    for s in g.producers + g.consumers:
      w = _get(out, s)
      axis = s.axis % w.ndim
      entries = kept.setdefault((s.collection, s.path, axis),
                                np.ones(w.shape[axis], bool))
      entries[slot_index(s, g.size)] &= np.tile(k, s.repeat)
  for (collection, path, axis), entries in kept.items():
    w = _get(out, Slot(collection, path, axis))
    out = _set(out, (collection,) + path,
               np.take(w, np.flatnonzero(entries), axis=axis))
  # (device_put, not jnp.asarray: no conversion program compiled per shape)
  return jax.device_put(out)


def architecture(model) -> dict:
  """The constructor fields surgery sets (``widths``, ``block_widths``,
  ``cfg``, ``head``) with their values: ``get_model(name, **arch)`` builds
  the shrunk network again."""
  names = ("widths", "block_widths", "cfg", "head")
  return {f.name: (list(getattr(model, f.name))
                   if getattr(model, f.name) is not None else None)
          for f in dataclasses.fields(model) if f.name in names}


def shrink_to_alive(model, variables: dict):
  """:func:`shrink` removing every prunable channel whose producers are all
  zero (each group keeps at least its first channel). Returns
  ``(small_model, small_variables, keep)``."""
  groups = channel_groups(model, variables)
  keep = {}
  for g in prunable_groups(groups):
    k = np.asarray(alive_channels(variables["params"], g))
    if not k.any():
      k = np.arange(g.size) == 0
    keep[g.name] = k
  small, small_vars = shrink(model, variables, keep)
  return small, small_vars, keep


def kept_by_masks(masks: PyTree, groups) -> dict:
  """``{group name: bool per channel}``: the channels whose producers the
  weight ``masks`` (a params-shaped tree of bools, as
  :func:`channel_masks` makes) keep, for every prunable group."""
  return {g.name: np.asarray(alive_channels(masks, g))
          for g in prunable_groups(groups)}


def count_params(variables: dict) -> int:
  """Parameters (the ``params`` collection) of a network."""
  return int(sum(np.size(x) for x in jax.tree.leaves(variables["params"])))


__all__ = ["Slot", "ChannelGroup", "channel_groups", "prunable_groups",
           "channel_masks", "zero_channels", "channel_norms", "channel_sums",
           "group_soft_threshold", "relative_channel_scales",
           "alive_channels", "shrink", "register",
           "supports", "count_params", "select_channels",
           "removed_channels", "num_channels", "channel_param_count",
           "architecture", "shrink_to_alive", "kept_by_masks", "slot_leaf",
           "round_keep",
           "CostTerm", "cost_terms", "shrunk_cost", "select_for_cost",
           "num_removed"]
