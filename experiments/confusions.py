#!/usr/bin/env python
"""Where the errors of run directories are: the largest confusions of their start
(init_labels.npy) and final model (labels.npy) after the Hungarian matching of ACC.

  python experiments/confusions.py --dataset hdigit-mnist --data-dir ../shared/data \\
      --cost cosine runs/bench/ulhe__hdigit-mnist__da300/seed{0,1,2}

Prints one Markdown row per run and labelling: ACC, errors, and the `--top` largest
(count, true class -> class its cluster is matched to). With `--cost cosine|euclidean` it
adds the k-means cost of that partition on its own embedding (init_embedding.npy for the
start, embedding.npy for the final model), beside the cost of the ground-truth partition on
the same embedding: if the classes cost more than the clusters, the clustering objective
itself prefers the wrong partition. Labels are used for scoring and diagnosis only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def kmeans_cost(z: np.ndarray, labels: np.ndarray, metric: str) -> float:
  """The project's k-means cost (ops.kmeans.partition_cost) of a partition of z."""
  from clustering_jax.ops.kmeans import partition_cost
  ids, inv = np.unique(labels, return_inverse=True)
  return float(partition_cost(np.asarray(z, np.float32), inv.astype(np.int32), len(ids),
                              metric=metric))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--dataset", required=True)
  ap.add_argument("--data-dir", default=None)
  ap.add_argument("--top", type=int, default=4)
  ap.add_argument("--cost", choices=("cosine", "euclidean"), default=None)
  ap.add_argument("runs", nargs="+", help="run directories with init_labels.npy / labels.npy")
  args = ap.parse_args(argv)

  from clustering_jax import metrics
  from clustering_jax.data import load_dataset
  y = np.asarray(load_dataset(args.dataset, data_dir=args.data_dir).labels)
  cost = f" | {args.cost} cost: clusters / classes" if args.cost else ""
  print(f"| run | labels | ACC | errors | largest confusions (count: true → matched as){cost} |")
  print("| --- | --- | --- | --- | --- |" + (" --- |" if args.cost else ""))
  for d in args.runs:
    for name, emb in (("init_labels", "init_embedding"), ("labels", "embedding")):
      f = Path(d) / f"{name}.npy"
      if not f.exists():
        continue
      p = np.load(f)
      acc = metrics.accuracy(y, p)
      conf = ", ".join(f"{c}: {a} → {b}" for c, a, b in metrics.confusions(y, p, args.top))
      row = f"| {d} | {name} | {acc:.4f} | {round(len(y) * (1 - acc))} | {conf} |"
      if args.cost:
        e = Path(d) / f"{emb}.npy"
        if e.exists():
          z = np.load(e)
          row += (f" {kmeans_cost(z, p, args.cost):.4f} / "
                  f"{kmeans_cost(z, y, args.cost):.4f} |")
        else:
          row += " – |"
      print(row)


if __name__ == "__main__":
  main()
