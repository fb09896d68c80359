"""proxnag_jax.sweep_report: the table (mean ± std, missed targets), the
choice on validation, the written outputs."""

import json
import os

import pytest

from proxnag_jax import sweep
from proxnag_jax import sweep_report


def test_sweep_table_spread_and_missed_targets():
  from configs import sweep_lenet5_mnist  # pylint: disable=g-import-not-at-top
  c = sweep_lenet5_mnist.get_config()
  assert tuple(c.seeds) == (0, 1, 2)
  c.methods, c.sparsities = ("proxnag", "magnitude"), (0.9,)

  def row(m, seed, acc, reached=True):
    return {"method": m, "target_sparsity": 0.9, "seed": seed,
            "test_accuracy": acc, "val_accuracy": acc,
            "dense_test_accuracy": 0.99, "sparsity": 0.9,
            "mask_sparsity": 0.9, "epochs": 3.0, "reached_target": reached}

  rows = [row("proxnag", s, a, s != 2) for s, a in
          enumerate((0.981, 0.983, 0.985))]
  rows += [row("magnitude", s, 0.98) for s in range(3)]
  t = sweep_report.table_md(c, rows, "note")
  assert "| proxnag | 98.30 ± 0.20* |" in t    # sample std; a missed target
  assert "| magnitude | 98.00 ± 0.00 |" in t
  assert "| dense baseline | 99.00 ± 0.00 |" in t
  c.seeds = (0,)
  one = sweep_report.table_md(c, [r for r in rows if r["seed"] == 0], "note")
  assert "| proxnag | 98.10 |" in one and "±" not in one.split(
      "| method |")[1].split("Validation")[0]
  assert "One seed" in one


def test_sweep_chooses_on_validation_not_test(tmp_path):
  from configs import sweep_lenet5_mnist  # pylint: disable=g-import-not-at-top
  c = sweep_lenet5_mnist.get_config()
  c.variants = {"proxnag_a": {"method": "proxnag", "l1_step": 1e-3},
                "proxnag_b": {"method": "proxnag", "l1_step": 1e-2}}
  c.methods, c.sparsities = ("proxnag_a", "proxnag_b", "magnitude"), (0.5, 0.9)
  c.select_on_val = {"proxnag": ("proxnag_a", "proxnag_b")}
  c.paper_table = {"proxnag": (91.0, 90.0)}
  c.paper_sparsities = (0.5, 0.9)
  sweep.validate(c)

  def row(m, s, seed, test, val):
    return {"method": m, "target_sparsity": s, "seed": seed,
            "test_accuracy": test, "val_accuracy": val,
            "dense_test_accuracy": 0.99, "sparsity": s, "mask_sparsity": s,
            "epochs": 3.0, "reached_target": True}

  rows = []
  for seed in range(3):
    # 50%: a has the better validation and the worse test accuracy;
    # 90%: b has the better validation accuracy.
    rows += [row("proxnag_a", 0.5, seed, 0.90, 0.95),
             row("proxnag_b", 0.5, seed, 0.97, 0.94),
             row("proxnag_a", 0.9, seed, 0.80, 0.85),
             row("proxnag_b", 0.9, seed, 0.82, 0.86),
             row("magnitude", 0.5, seed, 0.9, 0.9),
             row("magnitude", 0.9, seed, 0.8, 0.8)]
  chosen = sweep_report.chosen_on_val(c, rows)
  assert [chosen["proxnag"][s][0] for s in (0.5, 0.9)] == ["proxnag_a",
                                                           "proxnag_b"]
  t = sweep_report.table_md(c, rows, "note")
  row_line = ("| **proxnag, chosen on validation** | 90.00 ± 0.00 "
              "(proxnag_a) | 82.00 ± 0.00 (proxnag_b) |")
  assert row_line in t
  # The paper's row follows the chosen row, once.
  assert t.count("| proxnag (paper) |") == 1
  assert t.index(row_line) < t.index("| proxnag (paper) |")
  # Over fewer seeds than the sweep's, the count is shown.
  t2 = sweep_report.table_md(c, [r for r in rows if r["seed"] == 0], "note")
  assert "(n=1) (proxnag_a)" in t2
  # One choice for every column: b's validation mean over both (90.0) beats
  # a's (90.0 too: a tie keeps the first listed); make b better at 50%.
  c.select_scope = "all"
  assert {p[0] for p in sweep_report.chosen_on_val(c, rows)["proxnag"].values()} == {
      "proxnag_a"}
  rows_b = [dict(r, val_accuracy=0.96) if r["method"] == "proxnag_b" and
            r["target_sparsity"] == 0.5 else r for r in rows]
  all_b = sweep_report.chosen_on_val(c, rows_b)["proxnag"]
  assert [all_b[s][0] for s in (0.5, 0.9)] == ["proxnag_b", "proxnag_b"]
  assert abs(all_b[0.5][1] - 91.0) < 1e-9     # mean of 96 and 86
  assert "averaged over the columns" in sweep_report.table_md(c, rows_b, "note")
  # A partial sweep: the chosen entry has no 90% cell yet.
  part = [r for r in rows_b if not (r["method"] == "proxnag_b" and
                                    r["target_sparsity"] == 0.9)]
  assert sweep_report.chosen_on_val(c, part)["proxnag"][0.9][0] == "proxnag_b"
  os.makedirs(tmp_path / "part")
  sweep_report.write_outputs(c, str(tmp_path / "part"), part, "note")
  assert (tmp_path / "part" / "accuracy_vs_sparsity.png").exists()
  # A variant that missed its target sparsity (a less sparse network) is
  # not chosen over one that reached it, whatever its validation accuracy;
  # if every variant missed, the best of them is still named (and starred).
  missed = [dict(r, reached_target=False, val_accuracy=0.99)
            if r["method"] == "proxnag_a" else r for r in rows]
  assert all(p[0] == "proxnag_b"
             for p in sweep_report.chosen_on_val(c, missed)["proxnag"].values())
  c.select_scope = "column"
  assert [sweep_report.chosen_on_val(c, missed)["proxnag"][s][0]
          for s in (0.5, 0.9)] == ["proxnag_b", "proxnag_b"]
  all_missed = [dict(r, reached_target=False) for r in rows]
  assert sweep_report.chosen_on_val(c, all_missed)["proxnag"][0.5][0] == "proxnag_a"
  assert "90.00 ± 0.00* (proxnag_a)" in sweep_report.table_md(c, all_missed, "note")
  # A requirement on a summary field (or, for runs finished before the
  # summary had it, the trace's last value): an entry below it is not
  # chosen while another meets it.
  c.select_require = {"near_binary": 0.99}
  os.makedirs(tmp_path / "traced")
  with open(tmp_path / "traced" / "trace.jsonl", "w") as f:
    f.write(json.dumps({"kind": "mask", "near_binary": 0.5}) + "\n")
    f.write(json.dumps({"kind": "mask", "near_binary": 0.995}) + "\n")
  req = [dict(r, near_binary=0.999 if r["method"] == "proxnag_b" else 0.4)
         for r in rows]
  assert [sweep_report.chosen_on_val(c, req)["proxnag"][s][0]
          for s in (0.5, 0.9)] == ["proxnag_b", "proxnag_b"]
  assert "near_binary >= 0.99" in sweep_report.table_md(c, req, "note")
  traced = [dict(r, workdir=str(tmp_path / "traced")) for r in rows]
  assert [sweep_report.chosen_on_val(c, traced)["proxnag"][s][0]
          for s in (0.5, 0.9)] == ["proxnag_a", "proxnag_b"]
  c.select_require = {"near_binary": "high"}
  with pytest.raises(ValueError, match="select_require"):
    sweep.validate(c)
  c.select_require = {}
  sweep_report.write_outputs(c, str(tmp_path), rows, "note")
  with open(tmp_path / "selection.json") as f:
    sel = json.load(f)
  assert sel["proxnag"]["0.9"]["entry"] == "proxnag_b"
  assert abs(sel["proxnag"]["0.9"]["val_accuracy"] - 86.0) < 1e-9
  assert (tmp_path / "accuracy_vs_sparsity.png").exists()
  c.select_scope = "best"
  with pytest.raises(ValueError, match="select_scope"):
    sweep.validate(c)
  c.select_scope = "column"
  for bad in ({"proxnag": ("proxnag_a", "proxnag_c")},
              {"proxnag_a": ("proxnag_a", "proxnag_b")}, {"proxnag": ()}):
    c.select_on_val = bad
    with pytest.raises(ValueError, match="select_on_val"):
      sweep.validate(c)
  # A search the command does not run (none of its entries in methods) is
  # left out, from the checks and from the table.
  c.select_on_val = {"proxnag": ("proxnag_a", "proxnag_b")}
  c.methods = ("magnitude",)
  sweep.validate(c)
  t = sweep_report.table_md(c, [r for r in rows if r["method"] ==
                                "magnitude"], "note")
  assert "chosen on validation" not in t
