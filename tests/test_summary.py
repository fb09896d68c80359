"""proxnag_jax.summary: one schema for every run, one decision of "target
reached"."""

import json
import os

import pytest

from helpers import COMMON_SUMMARY_FIELDS as COMMON

from proxnag_jax import summary as summary_lib


@pytest.mark.parametrize("target,match,kept,dense,want", [
    # Whole units: at least round(target * dense) removed.
    (0.9, "weights", 100, 1000, True),
    (0.9, "weights", 101, 1000, False),
    (0.5, "channels", 8, 16, True),
    (0.5, "channels", 9, 16, False),
    (1 / 3, "weights", 67, 100, True),     # round(33.3) = 33 removed
    (1 / 3, "weights", 68, 100, False),
    # Budgets: kept <= (1 - target) * dense, up to float rounding.
    (0.75, "macs", 250.0, 1000.0, True),
    (0.75, "macs", 250.0 * (1 + 1e-9), 1000.0, True),
    (0.75, "macs", 251.0, 1000.0, False),
    (0.5, "params", 500, 1000, True),
    (0.5, "params", 501, 1000, False),
])
def test_target_reached_counts_units_and_budgets(target, match, kept, dense,
                                                 want):
  assert summary_lib.target_reached(target, match, kept, dense) is want


def test_target_reached_refuses_an_unknown_count():
  with pytest.raises(ValueError, match="unknown match 'flops'"):
    summary_lib.target_reached(0.5, "flops", 1, 2)


def test_dense_summary_has_the_common_schema(dense_dir):
  with open(os.path.join(dense_dir, "summary.json")) as f:
    s = json.load(f)
  assert set(COMMON) <= set(s), sorted(set(COMMON) - set(s))
  assert s["kind"] == "train" and s["method"] == "dense"
  assert s["target_sparsity"] == 0.0 and s["reached_target"]
  assert s["steps"] > 0 and s["images_per_s"] > 0
