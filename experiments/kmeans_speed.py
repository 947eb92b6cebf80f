#!/usr/bin/env python
"""JAX k-means vs scikit-learn KMeans: inertia and time on digits and hdigit.

  python experiments/kmeans_speed.py --data-dir ../shared/data

Both use k-means++ seeding, n_init=10, max_iter=300, tol=1e-4 on the same scaled data.
JAX time is reported as first call (compile + run) and steady state (mean of 3 later calls
with other keys). Writes --out (default docs/results/kmeans_speed.json) and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np
from sklearn.cluster import KMeans

from clustering_jax.data import load_dataset
from clustering_jax.ops import kmeans


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data-dir", default=None)
  p.add_argument("--datasets", nargs="+", default=["digits", "hdigit"])
  p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "results"
                                      / "kmeans_speed.json"))
  args = p.parse_args(argv)
  rows = []
  for name in args.datasets:
    ds = load_dataset(name, args.data_dir, scaling="minmax")
    x = ds.concat().astype(np.float32)
    t = time.perf_counter()
    r = kmeans(jax.random.key(0), x, ds.n_clusters, n_init=10)
    r.inertia.block_until_ready()
    first = time.perf_counter() - t
    times, inertias = [], [float(r.inertia)]
    for s in (1, 2, 3):
      t = time.perf_counter()
      r = kmeans(jax.random.key(s), x, ds.n_clusters, n_init=10)
      r.inertia.block_until_ready()
      times.append(time.perf_counter() - t)
      inertias.append(float(r.inertia))
    sk_t, sk_in = [], []
    for s in (0, 1, 2):
      t = time.perf_counter()
      km = KMeans(ds.n_clusters, n_init=10, random_state=s).fit(x)
      sk_t.append(time.perf_counter() - t)
      sk_in.append(float(km.inertia_))
    rows.append({"dataset": name, "n": int(x.shape[0]), "d": int(x.shape[1]), "k": ds.n_clusters,
                 "jax_first_call_s": first, "jax_steady_s": float(np.mean(times)),
                 "sklearn_s": float(np.mean(sk_t)), "jax_inertia_mean": float(np.mean(inertias)),
                 "sklearn_inertia_mean": float(np.mean(sk_in)),
                 "inertia_rel_diff": float(np.mean(inertias) / np.mean(sk_in) - 1)})
  out = Path(args.out)
  meta = {"command": "python experiments/kmeans_speed.py " + " ".join(
              argv if argv is not None else sys.argv[1:]),
          "backend": jax.default_backend(), "cpu_count": os.cpu_count(), "rows": rows}
  out.write_text(json.dumps(meta, indent=2) + "\n")
  print("| dataset | n x d | JAX first call s | JAX steady s | sklearn s | inertia JAX / sklearn - 1 |")
  print("| --- | --- | --- | --- | --- | --- |")
  for r in rows:
    print(f"| {r['dataset']} | {r['n']} x {r['d']} | {r['jax_first_call_s']:.2f} | "
          f"{r['jax_steady_s']:.3f} | {r['sklearn_s']:.3f} | {100 * r['inertia_rel_diff']:+.2f}% |")


if __name__ == "__main__":
  main()
