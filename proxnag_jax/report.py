"""Parameter and multiply-accumulate (MAC) counts per layer, tables, plots.

MACs follow the usual convention of pruning papers (and of ``thop``): a conv
or dense layer costs ``output positions x nonzero kernel weights`` MACs per
example; biases, BatchNorm, activations and pooling are not counted. With a
mask (or zeros in the kernel) the zeros are skipped, so
``dense MACs / sparse MACs`` is the theoretical speed-up.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from proxnag_jax import masks as masks_lib

PyTree = Any


def layer_output_shapes(model: nn.Module, variables: dict,
                        input_shape) -> dict[tuple, tuple]:
  """Maps each Conv/Dense module path to its output shape (no FLOPs run)."""
  shapes = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if (context.method_name == "__call__" and
        isinstance(context.module, (nn.Conv, nn.Dense))):
      shapes[tuple(context.module.path)] = tuple(out.shape)
    return out

  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return shapes


def count_macs(model: nn.Module, variables: dict, input_shape,
               masks: Optional[PyTree] = None) -> dict:
  """Per-layer and total MACs for one example, dense and with zeros skipped.

  Args:
    model: a Flax module.
    variables: its variables (``{'params': ..., ...}``); zeros in the kernels
      count as skipped.
    input_shape: shape of one batch, e.g. ``(1, 32, 32, 3)``.
    masks: optional masks over ``variables['params']``; masked-out weights
      count as zeros.

  Returns:
    ``{'layers': [{'name', 'kernel_shape', 'output_shape', 'params',
    'nonzero', 'macs', 'macs_sparse'}], 'macs', 'macs_sparse',
    'theoretical_speedup'}``.

  Example:
    >>> count_macs(get_model('resnet20'), variables, (1, 32, 32, 3))['macs']
    40551040
  """
  shapes = layer_output_shapes(model, variables, input_shape)
  params = variables["params"]
  layers = []
  for path, out_shape in shapes.items():
    node = params
    for k in path:
      node = node[k]
    kernel = np.asarray(node["kernel"])
    alive = kernel != 0
    if masks is not None:
      m = masks
      for k in path:
        m = m[k]
      alive = alive & np.asarray(m["kernel"]).astype(bool)
    positions = math.prod(out_shape[1:-1])   # spatial output positions
    layers.append({
        "name": "/".join(path),
        "kernel_shape": list(kernel.shape),
        "output_shape": list(out_shape[1:]),
        "params": int(kernel.size),
        "nonzero": int(alive.sum()),
        "macs": int(positions * kernel.size),
        "macs_sparse": int(positions * alive.sum()),
    })
  dense = sum(l["macs"] for l in layers)
  sparse = sum(l["macs_sparse"] for l in layers)
  return {"layers": layers, "macs": dense, "macs_sparse": sparse,
          "theoretical_speedup": dense / sparse if sparse else float("inf")}


def num_params(tree: PyTree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def layer_table(params: PyTree, macs: Optional[dict] = None,
                masks: Optional[PyTree] = None) -> str:
  """A Markdown table: per leaf shape, params, nonzeros, sparsity, MACs."""
  rep = masks_lib.sparsity_report(params, masks)
  by_kernel = {}
  if macs:
    by_kernel = {l["name"] + "/kernel": l for l in macs["layers"]}
  rows = ["| layer | shape | params | nonzero | sparsity | MACs | MACs (sparse) |",
          "|---|---|---:|---:|---:|---:|---:|"]
  for l in rep["layers"]:
    m = by_kernel.get(l["name"])
    rows.append(
        f"| {l['name']} | {'x'.join(map(str, l['shape']))} | {l['params']:,} "
        f"| {l['nonzero']:,} | {l['sparsity']:.2%} | "
        f"{m['macs']:,} | {m['macs_sparse']:,} |" if m else
        f"| {l['name']} | {'x'.join(map(str, l['shape']))} | {l['params']:,} "
        f"| {l['nonzero']:,} | {l['sparsity']:.2%} | | |")
  rows.append(
      f"| **total** | | {rep['num_params']:,} | {rep['num_nonzero']:,} | "
      f"{rep['sparsity']:.2%} (prunable) | "
      + (f"{macs['macs']:,} | {macs['macs_sparse']:,} |" if macs else " | |"))
  return "\n".join(rows)
