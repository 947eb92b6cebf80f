#!/usr/bin/env python
"""Run one clustering method on one dataset and write a run directory.

  python experiments/run.py --method kmeans --dataset digits
  python experiments/run.py --method idcl --dataset digits --seed 0 --out runs/idcl-digits
  python experiments/run.py --method largemvc --dataset hdigit --data-dir ../shared/data

The run directory holds config.json, metrics.jsonl, results.json, labels.npy,
embedding.npy, checkpoints/ (with --checkpoint-every) and PNG plots. Bad input
ends with one line on stderr and exit status 2; a NaN/Inf loss with status 3.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--method", required=True, help="kmeans, idcl, ulhe, largemvc, ...")
  p.add_argument("--dataset", default="digits",
                 help="built-in name, path to .mat/.npz, or tfds:<name>[:<split>]")
  p.add_argument("--data-dir", default=None,
                 help="folder with Hdigit.mat / prokaryotic.mat / prepared TFDS data "
                      "(default: $CLUSTERING_JAX_DATA or ~/clustering_jax_data)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--epochs", type=int, default=None, help="main training epochs of the method")
  p.add_argument("--config", default=None, help="JSON or YAML file of parameter overrides")
  p.add_argument("--out", default=None, help="run directory (default: runs/METHOD-DATASET-sSEED-TIME)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.add_argument("--checkpoint-every", type=int, default=0,
                 help="save an orbax checkpoint every N epochs; rerunning with the same --out resumes")
  p.add_argument("--download", action="store_true", help="allow TFDS to download the dataset")
  p.add_argument("--max-samples", type=int, default=None, help="use only the first N samples")
  p.add_argument("--missing-rate", type=float, default=0.0,
                 help="simulate missing views at this rate (every sample keeps one view)")
  return p.parse_args(argv)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  from clustering_jax.data import DataError
  from clustering_jax.experiment import format_table, load_overrides, main_error, run_experiment
  from clustering_jax.train import NonFiniteError
  if not 0.0 <= args.missing_rate < 1.0:
    main_error(f"--missing-rate must be in [0, 1), got {args.missing_rate}")
  if args.epochs is not None and args.epochs < 0:
    main_error(f"--epochs must be >= 0, got {args.epochs}")
  safe_ds = args.dataset.replace("/", "_").replace(":", "_")
  out = args.out or os.path.join(
      "runs", f"{args.method}-{safe_ds}-s{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
  try:
    overrides = load_overrides(args.config)
    results = run_experiment(
        args.method, args.dataset, out=out, seed=args.seed, data_dir=args.data_dir,
        epochs=args.epochs, overrides=overrides, quiet=args.quiet,
        checkpoint_every=args.checkpoint_every, download=args.download,
        max_samples=args.max_samples, missing_rate=args.missing_rate, argv=argv)
  except NonFiniteError as e:
    main_error(str(e), code=3)
  except (DataError, ValueError, TypeError, FileNotFoundError) as e:
    main_error(str(e))
  print(format_table(results))
  print(f"run directory: {out}")


if __name__ == "__main__":
  main()
