#!/usr/bin/env python
"""LargeMvC-Net scaling benchmark: time per epoch and peak memory against n.

  python experiments/largemvc_scaling.py --n 10000 50000 200000 --epochs 20 \
      --out docs/results/largemvc_scaling.json

Each n runs in a fresh subprocess (so ru_maxrss is that run's peak resident memory) on
synthetic multi-view blobs (`data.builtin.blobs`: 10 clusters, 3 views of 64 features),
with the anchor-graph spectral initialization (linear in n) and full-batch training.
Time per epoch is fit_info_["timing"]["train"]["epoch_s"]: the median epoch time without
the one compile (`train.engine.run_stage`). The
exponent b of time ~ n^b is a least-squares fit on log-log axes. Writes JSON and a
Markdown table next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(n: int, epochs: int, seed: int) -> dict:
  import jax

  from clustering_jax import metrics
  from clustering_jax.api.largemvc import LargeMvC
  from clustering_jax.data import builtin
  t0 = time.perf_counter()
  d = builtin.blobs(n_samples=n, n_clusters=10, n_features=64, n_views=3, imbalance=2.0,
                    spread=3.0, seed=seed)
  rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  est = LargeMvC(n_clusters=10, random_state=seed, epochs=epochs, spectral_graph="anchor")
  est.fit(list(d.views))
  info = est.fit_info_
  train = info["timing"]["train"]
  return {"n": n, "n_views": 3, "dims": [64, 64, 64], "epochs": epochs,
          "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
          "time_per_epoch_s": train["epoch_s"], "compile_s": train["compile_s"],
          "init_time_s": info["init_time_s"], "total_time_s": round(time.perf_counter() - t0, 2),
          "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
          "rss_after_data_mib": round(rss_data, 1),
          "acc": round(metrics.accuracy(d.labels, est.labels_), 4),
          "init_acc": round(metrics.accuracy(d.labels, est.init_labels_), 4),
          "devices": [str(x) for x in jax.devices()][:1], "n_devices": info["n_devices"]}


def fit_exponent(rows, key="time_per_epoch_s"):
  import numpy as np
  n = np.log([r["n"] for r in rows])
  t = np.log([r[key] for r in rows])
  b, a = np.polyfit(n, t, 1)
  return float(b)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--n", type=int, nargs="+", default=[10000, 50000, 200000])
  p.add_argument("--epochs", type=int, default=20)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=str(ROOT / "docs" / "results" / "largemvc_scaling.json"))
  p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker is not None:
    print("RESULT" + json.dumps(worker(args.worker, args.epochs, args.seed)), flush=True)
    return
  rows = []
  for n in args.n:
    cmd = [sys.executable, __file__, "--worker", str(n), "--epochs", str(args.epochs),
           "--seed", str(args.seed)]
    print("$", " ".join(shlex.quote(c) for c in cmd[1:]), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
    if proc.returncode != 0:
      raise SystemExit(f"n={n} failed: {proc.stderr[-2000:]}")
    row = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))[6:])
    print(row, flush=True)
    rows.append(row)
  out = {"command": "python experiments/largemvc_scaling.py " + " ".join(
             shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
         "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs: "
                    f"timings are noisy)",
         "rows": rows,
         "exponent_time_per_epoch": round(fit_exponent(rows), 3),
         "exponent_peak_rss": round(fit_exponent(rows, "peak_rss_mib"), 3)}
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
  md = ["# LargeMvC-Net scaling (synthetic 3-view blobs, 3 x 64 features, 10 clusters)", "",
        f"Command: `{out['command']}`  ", f"Machine: {out['machine']}.", "",
        "| n | time / epoch (s) | compile (s) | init (s) | peak RSS (MiB) | ACC | init ACC |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for r in rows:
    md.append(f"| {r['n']:,} | {r['time_per_epoch_s']:.4f} | {r['compile_s']:.2f} | "
              f"{r['init_time_s']:.1f} | {r['peak_rss_mib']:.0f} | {r['acc']:.4f} | "
              f"{r['init_acc']:.4f} |")
  md += ["", f"Fitted exponent of time per epoch vs n: **{out['exponent_time_per_epoch']}** "
         f"(peak RSS: {out['exponent_peak_rss']}).", ""]
  Path(args.out).with_suffix(".md").write_text("\n".join(md))
  print("\n".join(md))


if __name__ == "__main__":
  main()
