#!/usr/bin/env python
"""Benchmark grid: methods x datasets x seeds, each seed a fresh `experiments/run.py` process.

  python experiments/benchmark.py --methods kmeans --datasets digits hdigit --seeds 0 1 2 \
      --data-dir ../shared/data

For each (method, dataset) it reports final-model metrics as mean ± std over seeds (and the
method's starting point under init_*), mean wall time and the per-epoch timings the method
records, writes one row file docs/results/rows/<method>__<dataset>[__<tag>].json, then
regenerates docs/results/benchmark.json and docs/results/BENCHMARKS.md from all row files,
beside the papers' numbers from experiments/paper_numbers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
PAPER = ROOT / "experiments" / "paper_numbers.json"
METRICS = ("acc", "nmi", "ari")


def run_one(method, dataset, seed, out, args) -> dict:
  cmd = [sys.executable, str(ROOT / "experiments" / "run.py"), "--method", method,
         "--dataset", dataset, "--seed", str(seed), "--out", str(out), "--quiet"]
  if args.data_dir:
    cmd += ["--data-dir", args.data_dir]
  if args.epochs is not None:
    cmd += ["--epochs", str(args.epochs)]
  if args.config:
    cmd += ["--config", args.config]
  if args.missing_rate:
    cmd += ["--missing-rate", str(args.missing_rate)]
  if args.max_samples:
    cmd += ["--max-samples", str(args.max_samples)]
  print("$", " ".join(shlex.quote(c) for c in cmd[1:]), flush=True)
  proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
  if proc.returncode != 0:
    raise RuntimeError(f"run failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
  print(proc.stdout.strip(), flush=True)
  return json.loads((Path(out) / "results.json").read_text())


#: Label-free health checks a method's fit_info_ may hold; copied into each seed's record.
HEALTH_KEYS = ("pretrain_rec_over_variance", "embedding_spread", "cluster_rec_over_pretrain")


def _stats(values):
  v = np.asarray([x for x in values if x is not None], np.float64)
  if v.size == 0:
    return None, None
  return float(v.mean()), float(v.std(ddof=0))


def summarize(method, dataset, tag, seeds, results, command) -> dict:
  row = {"method": method, "dataset": dataset, "tag": tag or "", "seeds": list(seeds),
         "n_samples": results[0]["n_samples"], "n_clusters": results[0]["n_clusters"]}
  for m in METRICS + ("purity", "f_measure"):
    row[f"{m}_mean"], row[f"{m}_std"] = _stats([r.get(m) for r in results])
  if all("init" in r for r in results):
    for m in METRICS:
      row[f"init_{m}_mean"], row[f"init_{m}_std"] = _stats([r["init"][m] for r in results])
    row["beats_init_every_seed"] = bool(all(r["acc"] > r["init"]["acc"] for r in results))
  row["wall_time_s_mean"], row["wall_time_s_std"] = _stats([r["wall_time_s"] for r in results])
  timing_keys = sorted({k for r in results for k, v in (r.get("info") or {}).items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)
                        and any(t in k for t in ("time", "_s", "per_s", "compile"))})
  row["timings"] = {k: _stats([(r.get("info") or {}).get(k) for r in results])[0]
                    for k in timing_keys}
  row["epochs"] = results[0].get("epochs")
  row["per_seed"] = [{"seed": r["seed"], **{m: r.get(m) for m in METRICS},
                      "wall_time_s": r["wall_time_s"],
                      **({"init_acc": r["init"]["acc"]} if "init" in r else {}),
                      **{k: v for k, v in (r.get("info") or {}).items() if k in HEALTH_KEYS}}
                     for r in results]
  row["jax_backend"] = results[0].get("jax_backend")
  row["machine"] = f"{platform.machine()}, {os.cpu_count()} CPU cores"
  row["date"] = time.strftime("%Y-%m-%d")
  row["command"] = command
  return row


def _setting(row) -> str:
  """The tag, else the --config file's stem, else 'default'."""
  if row.get("tag"):
    return row["tag"]
  parts = shlex.split(row.get("command", ""))
  if "--config" in parts[:-1]:
    return "config " + Path(parts[parts.index("--config") + 1]).stem
  return "default"


def _fmt(mean, std, pct=True):
  if mean is None:
    return "–"
  if pct:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"
  return f"{mean:.1f} ± {std:.1f}"


def regenerate(results_dir: Path = RESULTS) -> list:
  rows = [json.loads(p.read_text()) for p in sorted((results_dir / "rows").glob("*.json"))]
  rows.sort(key=lambda r: (r["dataset"], r["method"] != "kmeans", r["method"], r.get("tag", "")))
  (results_dir / "benchmark.json").write_text(json.dumps(rows, indent=2) + "\n")
  paper = json.loads(PAPER.read_text())["entries"] if PAPER.exists() else []
  lines = [
      "# Benchmarks",
      "",
      "Final-model metrics (ACC with Hungarian matching, NMI, ARI; percent, mean ± std over seeds).",
      "`init` is the method's own starting point (e.g. autoencoder + k-means). Labels are used for",
      "scoring only. Regenerate with `python experiments/benchmark.py --regenerate`; each row's exact",
      "command is in `benchmark.json` and listed below the table.",
      "",
      "| dataset | method | setting | seeds | ACC | NMI | ARI | init ACC | wall s / run | paper (ACC / NMI) |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for r in rows:
    refs = [p for p in paper if p["method"] == r["method"] and p["dataset"] == r["dataset"]]
    ref = "; ".join(
        f"{100 * p['acc']:.1f} / {100 * p['nmi']:.1f}" if "nmi" in p else f"{100 * p['acc']:.1f}"
        for p in refs) or "–"
    lines.append(
        f"| {r['dataset']} | {r['method']} | {_setting(r)} | {len(r['seeds'])} | "
        f"{_fmt(r['acc_mean'], r['acc_std'])} | {_fmt(r['nmi_mean'], r['nmi_std'])} | "
        f"{_fmt(r['ari_mean'], r['ari_std'])} | "
        f"{_fmt(r.get('init_acc_mean'), r.get('init_acc_std'))} | "
        f"{_fmt(r['wall_time_s_mean'], r['wall_time_s_std'], pct=False)} | {ref} |")
  lines += ["", "## Papers' numbers", "",
            "| method | dataset | paper | table | setting | ACC | NMI | ARI |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for p in paper:
    lines.append(f"| {p['method']} | {p['dataset']} | {p['paper']} | {p['table']} | {p['setting']} | "
                 + " | ".join(f"{100 * p[m]:.2f}" if m in p else "–" for m in METRICS) + " |")
  lines += ["", "## Timings", "", "Per-run timings the methods record (mean over seeds).", ""]
  for r in rows:
    if r.get("timings"):
      t = ", ".join(f"{k} {v:.3g}" for k, v in r["timings"].items() if v is not None)
      lines.append(f"- {r['method']} / {r['dataset']} ({_setting(r)}): {t}")
  lines += ["", "## Commands", ""]
  for r in rows:
    lines.append(f"- {r['method']} / {r['dataset']} ({_setting(r)}) "
                 f"({r['machine']}, {r['jax_backend']}, {r['date']}): `{r['command']}`")
  (results_dir / "BENCHMARKS.md").write_text("\n".join(lines) + "\n")
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--methods", nargs="+", default=[])
  p.add_argument("--datasets", nargs="+", default=[])
  p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  p.add_argument("--data-dir", default=None)
  p.add_argument("--epochs", type=int, default=None)
  p.add_argument("--config", default=None, help="JSON/YAML parameter overrides for every run")
  p.add_argument("--missing-rate", type=float, default=0.0)
  p.add_argument("--max-samples", type=int, default=None)
  p.add_argument("--tag", default="", help="names a non-default setting (row file suffix)")
  p.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench"))
  p.add_argument("--results-dir", default=str(RESULTS))
  p.add_argument("--regenerate", action="store_true", help="only rebuild the tables from row files")
  args = p.parse_args(argv)
  results_dir = Path(args.results_dir)
  (results_dir / "rows").mkdir(parents=True, exist_ok=True)
  command = "python experiments/benchmark.py " + " ".join(
      shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
  if not args.regenerate:
    if not args.methods or not args.datasets:
      p.error("--methods and --datasets are required (or --regenerate)")
    for method in args.methods:
      for dataset in args.datasets:
        safe = dataset.replace("/", "_").replace(":", "_")
        name = f"{method}__{safe}" + (f"__{args.tag}" if args.tag else "")
        results = [run_one(method, dataset, s, Path(args.runs_dir) / name / f"seed{s}", args)
                   for s in args.seeds]
        row = summarize(method, dataset, args.tag, args.seeds, results, command)
        (results_dir / "rows" / f"{name}.json").write_text(json.dumps(row, indent=2) + "\n")
        print(f"{name}: ACC {_fmt(row['acc_mean'], row['acc_std'])}, "
              f"NMI {_fmt(row['nmi_mean'], row['nmi_std'])}, wall {row['wall_time_s_mean']:.1f}s")
  regenerate(results_dir)
  print(f"wrote {results_dir / 'benchmark.json'} and {results_dir / 'BENCHMARKS.md'}")


if __name__ == "__main__":
  main()
