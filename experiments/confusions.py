#!/usr/bin/env python
"""Where the errors of run directories are: the largest confusions of their start
(init_labels.npy) and final model (labels.npy) after the Hungarian matching of ACC.

  python experiments/confusions.py --dataset hdigit-mnist --data-dir ../shared/data \\
      runs/bench/ulhe__hdigit-mnist__da300/seed0 runs/bench/ulhe__hdigit-mnist__da300/seed1

Prints one Markdown row per run and labelling: ACC, errors, and the `--top` largest
(count, true class -> class its cluster is matched to). Labels are used for scoring only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--dataset", required=True)
  ap.add_argument("--data-dir", default=None)
  ap.add_argument("--top", type=int, default=4)
  ap.add_argument("runs", nargs="+", help="run directories with init_labels.npy / labels.npy")
  args = ap.parse_args(argv)

  from clustering_jax import metrics
  from clustering_jax.data import load_dataset
  y = np.asarray(load_dataset(args.dataset, data_dir=args.data_dir).labels)
  print("| run | labels | ACC | errors | largest confusions (count: true → matched as) |")
  print("| --- | --- | --- | --- | --- |")
  for d in args.runs:
    for name in ("init_labels", "labels"):
      f = Path(d) / f"{name}.npy"
      if not f.exists():
        continue
      p = np.load(f)
      acc = metrics.accuracy(y, p)
      conf = ", ".join(f"{c}: {a} → {b}" for c, a, b in metrics.confusions(y, p, args.top))
      print(f"| {d} | {name} | {acc:.4f} | {round(len(y) * (1 - acc))} | {conf} |")


if __name__ == "__main__":
  main()
