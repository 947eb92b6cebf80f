"""Per-epoch wall time of each deep method's stages on this machine, from the run log.

Fits each method through its public estimator on a short schedule and reads the epoch
times from metrics.jsonl (`time_s` is written when an epoch ends): the median gap between
consecutive epochs of a stage, so every epoch's host work (embedding, k-means, logging) is
counted and the first epoch (compiles) is left out. Works on any version of the library
that writes `time_s`, so two checkouts can be compared side by side:

  python experiments/epoch_speed.py --out docs/results/epoch_speed.json
  python experiments/epoch_speed.py --label before --repo /tmp/old_checkout --out /tmp/old.json
  python experiments/epoch_speed.py --methods idcl --epochs 40 --out /tmp/idcl.json

--epochs N runs every stage of every case for N epochs (more epochs, a steadier median).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: (method, dataset, --epochs, overrides): short schedules, the methods' other defaults.
CASES = [
    ("idcl", "digits", 12, {"pretrain_epochs": 12}),
    ("ulhe", "digits", 12, {"pretrain_epochs": 12}),
    ("largemvc", "digits-mv", 40, {}),
]


def _epoch_gaps(metrics_path: Path) -> dict:
  rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
  out = {}
  for stage in dict.fromkeys(r["stage"] for r in rows):
    t = [r["time_s"] for r in rows if r["stage"] == stage]
    gaps = sorted(b - a for a, b in zip(t[1:], t[2:]))  # skip the first (compiling) epoch
    if gaps:
      out[stage] = {"epochs": len(t), "median_epoch_s": round(gaps[len(gaps) // 2], 4)}
  return out


def measure(repo: Path, seed: int, methods=None, n_epochs=None) -> dict:
  results = {}
  for method, dataset, epochs, overrides in CASES:
    if methods and method not in methods:
      continue
    if n_epochs:
      epochs = n_epochs
      overrides = {k: (n_epochs if k.endswith("epochs") else v) for k, v in overrides.items()}
    with tempfile.TemporaryDirectory() as tmp:
      cfg = Path(tmp) / "cfg.json"
      cfg.write_text(json.dumps(overrides))
      cmd = [sys.executable, str(repo / "experiments" / "run.py"), "--method", method,
             "--dataset", dataset, "--seed", str(seed), "--epochs", str(epochs),
             "--config", str(cfg),
             "--out", str(Path(tmp) / "run"), "--quiet"]
      env = {**os.environ, "PYTHONPATH": str(repo)}
      subprocess.run(cmd, check=True, cwd=repo, env=env, capture_output=True, text=True)
      results[f"{method}/{dataset}"] = _epoch_gaps(Path(tmp) / "run" / "metrics.jsonl")
  return results


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--repo", default=str(REPO), help="checkout to measure (default: this one)")
  ap.add_argument("--label", default="current")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default=None, help="append the record to this JSON file")
  ap.add_argument("--methods", nargs="+", default=None,
                  help="measure only these methods' cases (default: all)")
  ap.add_argument("--epochs", type=int, default=None,
                  help="epochs of every stage (default: each case's own, 12-40)")
  args = ap.parse_args(argv)
  cases = measure(Path(args.repo), args.seed, args.methods, args.epochs)
  rec = {"label": args.label, "repo": args.repo, "cases": cases,
         "command": "python experiments/epoch_speed.py " + " ".join(argv or sys.argv[1:])}
  print(json.dumps(rec, indent=2))
  if args.out:
    from clustering_jax.experiment import append_json
    append_json(args.out, rec)


if __name__ == "__main__":
  main()
