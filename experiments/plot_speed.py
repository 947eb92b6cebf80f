#!/usr/bin/env python
"""Time embedding_2d.png on a wide embedding: the randomized-PCA projection and the figure.

  python experiments/plot_speed.py                       # 2,708 x 9,557, as the issue's k-means run
  python experiments/plot_speed.py --n 2708 --d 9557 --repeats 3 --out docs/results/plot_speed.json

k-means' embedding is the scaled, concatenated data, so a 2,708 x 9,557 data set gives a
2,708 x 9,557 embedding; the full SVD that embedding_2d.png used to take cost 140 s on 2 CPU
cores (6.7 s of clustering). This makes a random embedding of that shape with 7 planted
clusters, times the projection alone and projection + figure + PNG (with and without a second
panel of true labels), and writes the times (the first call, which imports matplotlib, apart)
to docs/results/plot_speed.json. --svd also times the old full SVD once (slow).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from clustering_jax.plots import plot_embedding, project_2d  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--n", type=int, default=2708)
  p.add_argument("--d", type=int, default=9557)
  p.add_argument("--k", type=int, default=7)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--svd", action="store_true", help="also time the old full SVD once")
  p.add_argument("--out", default=str(ROOT / "docs" / "results" / "plot_speed.json"))
  args = p.parse_args(argv)

  rng = np.random.default_rng(0)
  y = rng.integers(0, args.k, args.n)
  centers = rng.normal(0, 1, (args.k, args.d)).astype(np.float32)
  emb = centers[y] + rng.normal(0, 3, (args.n, args.d)).astype(np.float32)
  labels = y  # the clusters are the planted classes here; the times do not depend on it

  cpu = {"projection": [], "one": [], "two": []}

  def timed(fn, key=None):
    """Wall seconds; the process's CPU seconds (all threads) go to cpu[key]. On a shared
    machine the wall time grows with the load, the CPU time much less."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    if key:
      cpu[key].append(time.process_time() - c)
    return time.perf_counter() - t

  rec = {"n": args.n, "d": args.d, "k": args.k, "repeats": args.repeats}
  with tempfile.TemporaryDirectory() as tmp:
    png = Path(tmp) / "embedding_2d.png"
    rec["first_call_s"] = round(timed(lambda: plot_embedding(
        png, emb, labels, "plot_speed", true_labels=y)), 3)
    proj = [timed(lambda: project_2d(emb), "projection") for _ in range(args.repeats)]
    one = [timed(lambda: plot_embedding(png, emb, labels, "plot_speed"), "one")
           for _ in range(args.repeats)]
    two = [timed(lambda: plot_embedding(png, emb, labels, "plot_speed", true_labels=y), "two")
           for _ in range(args.repeats)]
  med = lambda v: round(float(np.median(v)), 3)
  rec.update({
      "projection_s": med(proj),
      "projection_and_plot_s": med(one),
      "projection_and_plot_two_panels_s": med(two),
      "cpu_s": {"projection": med(cpu["projection"]), "projection_and_plot": med(cpu["one"]),
                "projection_and_plot_two_panels": med(cpu["two"])},
  })
  # How good the projection is: its explained variance against the exact PCA's (of a sample).
  xy, explained = project_2d(emb)
  rec["explained_variance"] = [round(float(v), 5) for v in explained]
  if args.svd:
    e = emb - emb.mean(0)
    t = time.perf_counter()
    _, s, _ = np.linalg.svd(e.astype(np.float64), full_matrices=False)
    rec["full_svd_s"] = round(time.perf_counter() - t, 3)
    rec["exact_explained_variance"] = [round(float(v), 5)
                                       for v in (s[:2] ** 2 / np.sum(s ** 2))]
  rec.update({"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
              "load_average": [round(v, 2) for v in os.getloadavg()],
              "note": "times are medians of --repeats calls after a first call that imports "
                      "matplotlib; wall times scale with the machine's load (load_average: "
                      "1-, 5-, 15-minute averages at the end; the CPU count is the idle "
                      "level)",
              "numpy": np.__version__, "date": time.strftime("%Y-%m-%d"),
              "command": "python experiments/plot_speed.py " + " ".join(argv or sys.argv[1:])})
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(rec, indent=2) + "\n")
  print(json.dumps(rec, indent=2))
  return rec


if __name__ == "__main__":
  main()
