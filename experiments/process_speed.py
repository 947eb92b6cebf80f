"""Whole-process wall time of `experiments/run.py`, cold and warm compile cache, per seed.

Each run is a fresh process timed from outside (its whole life: interpreter, imports, data,
fit, scoring, plots, saving). "cold" starts from an empty compile-cache directory; "warm"
reruns the same command on the cache the previous run filled. results.json's `timing`
phases, the engine's epoch time and the start and final ACC are kept beside the wall time.

  python experiments/process_speed.py --method largemvc --dataset hdigit --modes cold warm \
      --seeds 0 1 2 --out docs/results/process_speed.json
  python experiments/process_speed.py --method largemvc --dataset prokaryotic --modes warm
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_run(args, seed: int, cache: Path, out: Path) -> dict:
  cmd = [sys.executable, str(REPO / "experiments" / "run.py"), "--method", args.method,
         "--dataset", args.dataset, "--seed", str(seed), "--out", str(out), "--quiet"]
  if args.data_dir:
    cmd += ["--data-dir", args.data_dir]
  env = {**os.environ, "CLUSTERING_JAX_COMPILE_CACHE": str(cache)}
  t = time.perf_counter()
  subprocess.run(cmd, check=True, cwd=REPO, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - t
  res = json.loads((out / "results.json").read_text())
  epoch_s = {k: v.get("epoch_s") for k, v in (res.get("info", {}).get("timing") or {}).items()}
  return {"seed": seed, "wall_s": round(wall, 3), "timing": res.get("timing"),
          "epoch_s": epoch_s, "acc": res.get("acc"), "init_acc": (res.get("init") or {}).get("acc")}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--method", required=True)
  ap.add_argument("--dataset", required=True)
  ap.add_argument("--data-dir", default="../shared/data")
  ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  ap.add_argument("--modes", nargs="+", choices=("cold", "warm"), default=["cold", "warm"])
  ap.add_argument("--out", default=None, help="append the record to this JSON file")
  args = ap.parse_args(argv)
  runs = []
  with tempfile.TemporaryDirectory() as tmp:
    cache = Path(tmp) / "cache"
    for seed in args.seeds:
      for mode in args.modes:
        if mode == "cold":
          shutil.rmtree(cache, ignore_errors=True)
        elif not cache.exists():   # warm without a cold run first: fill the cache, untimed
          one_run(args, seed, cache, Path(tmp) / "fill")
        runs.append({"mode": mode, **one_run(args, seed, cache, Path(tmp) / "run")})
        print(json.dumps({k: runs[-1][k] for k in ("mode", "seed", "wall_s", "acc")}))
  summary = {mode: {"wall_s": [r["wall_s"] for r in runs if r["mode"] == mode],
                    "median_wall_s": round(statistics.median(
                        [r["wall_s"] for r in runs if r["mode"] == mode]), 3)}
             for mode in args.modes}
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                          capture_output=True).stdout.strip()
  rec = {"method": args.method, "dataset": args.dataset, "commit": commit,
         "date": time.strftime("%Y-%m-%d"), "load_average_after": os.getloadavg()[0],
         "summary": summary, "runs": runs,
         "command": "python experiments/process_speed.py " + " ".join(argv or sys.argv[1:])}
  print(json.dumps(summary))
  if args.out:
    from clustering_jax.experiment import append_json
    append_json(args.out, rec)


if __name__ == "__main__":
  main()
