"""proxnag_jax: neural-network pruning by sparse optimisation, in JAX/Optax.

The public API, re-exported from its modules:

* proximal maths (:mod:`proxnag_jax.prox`): ``soft_threshold``,
  ``group_soft_threshold``, ``scale_invariant_soft_threshold``;
* Optax transformations (:mod:`proxnag_jax.transforms`): ``proxnag``,
  ``prox_l1``, ``prox_group_l1``, ``nesterov_extrapolation``,
  ``sparse_params``, ``with_masks``, ``get_masks``, ``set_masks``;
* masks as pytrees (:mod:`proxnag_jax.masks`): ``magnitude_masks``,
  ``apply_masks``, ``sparsity_report``, ``normalized_kernels`` (which
  kernels feed a normalisation, for the scale-invariant proximal step) and
  friends.

Pruning methods are values of one interface (:mod:`proxnag_jax.methods`,
``get_method(name, **settings)``), all run by one jitted, scanned, resumable
and vmappable loop (:mod:`proxnag_jax.loop`), and each is also one Optax
transformation for the user's own loop (:mod:`proxnag_jax.pruner`):
``pruning(method, ...)``, ``start``, ``model_params``, ``final_params``,
``export``, ``structure``.
"""

from proxnag_jax.transforms import admm_penalty
from proxnag_jax.transforms import admm_state
from proxnag_jax.transforms import admm_step
from proxnag_jax.transforms import AdmmState
from proxnag_jax.transforms import reweighted_shrink
from proxnag_jax.transforms import set_admm_state
from proxnag_jax.masks import apply_masks
from proxnag_jax.masks import check_tree_match
from proxnag_jax.masks import default_prunable
from proxnag_jax.masks import magnitude_masks
from proxnag_jax.masks import nonzero_masks
from proxnag_jax.masks import normalized_kernels
from proxnag_jax.masks import ones_masks
from proxnag_jax.masks import path_name
from proxnag_jax.masks import prunable_filter
from proxnag_jax.masks import prunable_tree
from proxnag_jax.masks import sparsity
from proxnag_jax.masks import sparsity_report
from proxnag_jax.masks import topk_mask
from proxnag_jax.prox import capped_simplex_projection
from proxnag_jax.prox import group_norms
from proxnag_jax.prox import group_soft_threshold
from proxnag_jax.prox import scale_invariant_soft_threshold
from proxnag_jax.prox import soft_threshold
from proxnag_jax.transforms import ExtrapolationState
from proxnag_jax.transforms import fista_momentum
from proxnag_jax.transforms import get_masks
from proxnag_jax.transforms import lpbox_admm
from proxnag_jax.transforms import lpbox_state
from proxnag_jax.transforms import LpBoxState
from proxnag_jax.transforms import nesterov_extrapolation
from proxnag_jax.transforms import prox_channel_l1
from proxnag_jax.transforms import prox_group_l1
from proxnag_jax.transforms import prox_l1
from proxnag_jax.transforms import ProxState
from proxnag_jax.transforms import proxnag
from proxnag_jax.transforms import set_hyperparams
from proxnag_jax.transforms import set_masks
from proxnag_jax.transforms import set_sparse_params
from proxnag_jax.transforms import sparse_params
from proxnag_jax.transforms import with_masks
from proxnag_jax.transforms import WithMasksState
from proxnag_jax import methods
from proxnag_jax import report
from proxnag_jax import surgery
from proxnag_jax.pruner import done
from proxnag_jax.pruner import export
from proxnag_jax.pruner import final_params
from proxnag_jax.pruner import model_params
from proxnag_jax.pruner import pruning
from proxnag_jax.pruner import PruningState
from proxnag_jax.pruner import PruningTransformation
from proxnag_jax.pruner import run_state
from proxnag_jax.pruner import start
from proxnag_jax.pruner import structure
from proxnag_jax.surgery import channel_groups
from proxnag_jax.surgery import shrink

__all__ = [
    "methods",
    "report",
    "done",
    "export",
    "final_params",
    "model_params",
    "pruning",
    "PruningState",
    "PruningTransformation",
    "run_state",
    "start",
    "structure",
    "admm_penalty",
    "admm_state",
    "admm_step",
    "AdmmState",
    "reweighted_shrink",
    "set_admm_state",
    "apply_masks",
    "check_tree_match",
    "default_prunable",
    "magnitude_masks",
    "nonzero_masks",
    "normalized_kernels",
    "ones_masks",
    "path_name",
    "prunable_filter",
    "prunable_tree",
    "sparsity",
    "sparsity_report",
    "topk_mask",
    "capped_simplex_projection",
    "group_norms",
    "group_soft_threshold",
    "scale_invariant_soft_threshold",
    "soft_threshold",
    "ExtrapolationState",
    "fista_momentum",
    "get_masks",
    "lpbox_admm",
    "lpbox_state",
    "LpBoxState",
    "nesterov_extrapolation",
    "prox_channel_l1",
    "prox_group_l1",
    "surgery",
    "shrink",
    "channel_groups",
    "prox_l1",
    "ProxState",
    "proxnag",
    "set_hyperparams",
    "set_masks",
    "set_sparse_params",
    "sparse_params",
    "with_masks",
    "WithMasksState",
]

__version__ = "0.1.0"
