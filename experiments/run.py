#!/usr/bin/env python
"""Run one clustering method on one dataset and write a run directory.

  python experiments/run.py --method kmeans --dataset digits
  python experiments/run.py --method idcl --dataset digits --seed 0 --out runs/idcl-digits
  python experiments/run.py --method largemvc --dataset hdigit --data-dir ../shared/data
  python experiments/run.py --method kmeans --dataset my_data.npz --n-clusters 5

The run directory holds config.json, metrics.jsonl, results.json, labels.npy,
embedding.npy, checkpoints/ (with --checkpoint-every) and PNG plots. Data without
labels (an .npz without `y`) needs --n-clusters and gets label-free scores only. Bad
input ends with one line on stderr and exit status 2; a NaN/Inf loss with status 3.
"""

from __future__ import annotations

import time

_STARTED = time.time()  # as early as possible: results.json's timing.startup_s starts here

import argparse  # noqa: E402
import atexit  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402


def _epilog(argv) -> str:
  """The per-method table of what the epoch flags set; built only for --help (it imports
  every method's estimator)."""
  if not any(a in ("-h", "--help") for a in argv):
    return ""
  from clustering_jax.experiment import schedule_help
  return schedule_help()


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=_epilog(argv),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--method", required=True, help="kmeans, idcl, ulhe, largemvc, ...")
  p.add_argument("--dataset", default="digits",
                 help="built-in name, path to .mat/.npz, or tfds:<name>[:<split>]")
  p.add_argument("--data-dir", default=None,
                 help="folder with Hdigit.mat / prokaryotic.mat / prepared TFDS data "
                      "(default: $CLUSTERING_JAX_DATA or ~/clustering_jax_data)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--epochs", type=int, default=None,
                 help="epochs of the method's main (clustering) stage; which Config field "
                      "this sets per method: see the table below")
  p.add_argument("--pretrain-epochs", type=int, default=None,
                 help="epochs of the pre-training stage; which Config field this sets per "
                      "method: see the table below")
  p.add_argument("--n-clusters", type=int, default=None,
                 help="number of clusters; required for data without labels, and overrides "
                      "the label count (and n_clusters in --config) when given")
  p.add_argument("--config", default=None, help="JSON or YAML file of parameter overrides")
  p.add_argument("--out", default=None, help="run directory (default: runs/METHOD-DATASET-sSEED-TIME)")
  p.add_argument("--quiet", action="store_true",
                 help="no progress bar and no schedule line (notes are still printed)")
  p.add_argument("--checkpoint-every", type=int, default=0,
                 help="save an orbax checkpoint every N epochs; rerunning with the same --out resumes")
  p.add_argument("--download", action="store_true", help="allow TFDS to download the dataset")
  p.add_argument("--max-samples", type=int, default=None, help="use only the first N samples")
  p.add_argument("--missing-rate", type=float, default=0.0,
                 help="simulate missing views at this rate (every sample keeps one view)")
  p.add_argument("--no-compile-cache", action="store_true",
                 help="do not use JAX's persistent compilation cache (on by default, in "
                      "$CLUSTERING_JAX_COMPILE_CACHE or ~/.cache/clustering_jax/jax; "
                      "CLUSTERING_JAX_COMPILE_CACHE=0 also turns it off)")
  return p.parse_args(argv)


def main(argv=None):
  as_process = argv is None       # the command itself: its process started with this script
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  from clustering_jax import compile_cache, timing
  if args.no_compile_cache:
    compile_cache.disable()
  started = min(timing.process_start() or _STARTED, _STARTED) if as_process else _STARTED
  from clustering_jax.data import DataError
  from clustering_jax.experiment import format_table, load_overrides, main_error, run_experiment
  from clustering_jax.train import NonFiniteError
  if not 0.0 <= args.missing_rate < 1.0:
    main_error(f"--missing-rate must be in [0, 1), got {args.missing_rate}")
  for flag in ("epochs", "pretrain_epochs"):
    if getattr(args, flag) is not None and getattr(args, flag) < 0:
      main_error(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
  if args.n_clusters is not None and args.n_clusters < 2:
    main_error(f"--n-clusters must be >= 2, got {args.n_clusters}")
  safe_ds = args.dataset.replace("/", "_").replace(":", "_")
  out = args.out or os.path.join(
      "runs", f"{args.method}-{safe_ds}-s{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
  try:
    overrides = load_overrides(args.config)
    results = run_experiment(
        args.method, args.dataset, out=out, seed=args.seed, data_dir=args.data_dir,
        epochs=args.epochs, pretrain_epochs=args.pretrain_epochs, n_clusters=args.n_clusters,
        overrides=overrides, quiet=args.quiet,
        checkpoint_every=args.checkpoint_every, download=args.download,
        max_samples=args.max_samples, missing_rate=args.missing_rate, argv=argv,
        started=started)
  except NonFiniteError as e:
    main_error(str(e), code=3)
  except (DataError, ValueError, TypeError, FileNotFoundError) as e:
    main_error(str(e))
  print(format_table(results))
  print(f"run directory: {out}")


if __name__ == "__main__":
  main()
  # The run directory is complete: run the exit handlers (JAX's, orbax's), then end without
  # the interpreter's teardown, which frees every compiled program and module one by one.
  sys.stdout.flush()
  sys.stderr.flush()
  atexit._run_exitfuncs()
  os._exit(0)
