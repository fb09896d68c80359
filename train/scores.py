"""Where an edge-popup or SBP run's learned scores ended up, per layer.

  python -m train.scores --run runs/random_lenet300/cells/sbp_50_seed0

Reads the run's latest checkpoint and prints, per prunable layer, how far the
scores are from their centre (0.5 for SBP's ``[0, 1]`` relaxation, 0 for
edge-popup; they start uniform within ``b = sqrt(1 / fan_in)`` of it, a mean
distance of ``b / 2``) and, for SBP, the
fraction of scores at the box's bounds (where the projection binds); for SBP,
how binary the relaxed mask was over training (the per-epoch ``mask`` events
of its trace: mean distance to {0, 1}, share within 0.01 of it, and the
l_p-box penalty); also written to ``RUN/score_stats.json``.
"""

import json
import os

from absl import app
import orbax.checkpoint as ocp


from proxnag_jax import hostio
from proxnag_jax.methods import edge_popup
from train import cli

_RUN = cli.run_flag("A train.prune / sweep cell workdir of method edge_popup "
                    "or sbp.")


def main(argv):
  del argv
  if not _RUN.value:
    raise app.UsageError("--run is required: a finished edge_popup or sbp "
                         "run's workdir.")
  summary = os.path.join(_RUN.value, "summary.json")
  if not os.path.exists(summary):
    raise app.UsageError(f"{summary} does not exist: --run must be a "
                         "finished edge_popup or sbp run.")
  with open(summary) as f:
    method = json.load(f).get("method")
  if method not in ("edge_popup", "sbp"):
    raise app.UsageError(f"{_RUN.value} ran {method!r}; score statistics "
                         "are for edge_popup and sbp runs.")
  ckpt = hostio.Checkpointer(os.path.join(_RUN.value, "checkpoints"))
  step = ckpt.latest_step()
  if step is None:
    raise app.UsageError(f"{_RUN.value}/checkpoints holds no checkpoint.")
  state = ckpt.mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"]
  ms = state["method_state"]
  rows = edge_popup.score_stats(state["params"], ms["prunable"], ms["mask"],
                                relaxed=method == "sbp")
  print(f"{_RUN.value} ({method}, step {step}):")
  pct = lambda v: "—" if v is None else f"{v:.1%}"
  print("| layer | shape | init ± b | mean dist (init b/2) | max dist | "
        "at 0 | at 1 | kept at 1 |")
  print("|---|---|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['leaf']} | {'x'.join(map(str, r['shape']))} | "
          f"{r['init_halfwidth']:.4f} | {r['mean_dist']:.4f} | "
          f"{r['max_dist']:.3f} | {pct(r['at_lower'])} | "
          f"{pct(r['at_upper'])} | {pct(r['kept_at_upper'])} |")
  over_training = binariness(os.path.join(_RUN.value, "trace.jsonl"))
  if over_training:
    print("\nhow binary the relaxed mask is, per epoch:")
    print("| step | mean distance to {0, 1} | within 0.01 | rho |")
    print("|---:|---:|---:|---:|")
    for r in over_training:
      rho = "—" if r["rho"] is None else f"{r['rho']:.3g}"
      print(f"| {r['step']} | {r['binary_gap']:.4f} | "
            f"{r['near_binary']:.1%} | {rho} |")
  hostio.write_json(os.path.join(_RUN.value, "score_stats.json"),
                    {"method": method, "step": step, "layers": rows,
                     "binariness": over_training})


def binariness(trace_path: str) -> list:
  """The per-epoch ``mask`` events of an SBP run's trace that say how binary
  its relaxed mask was (runs of other methods or older runs: none)."""
  if not os.path.exists(trace_path):
    return []
  out = []
  with open(trace_path) as f:
    for line in f:
      r = json.loads(line)
      if r.get("kind") == "mask" and "binary_gap" in r:
        out.append({"step": r["step"], "binary_gap": r["binary_gap"],
                    "near_binary": r["near_binary"], "rho": r.get("rho")})
  return out


if __name__ == "__main__":
  app.run(main)
