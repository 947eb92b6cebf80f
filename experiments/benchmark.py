#!/usr/bin/env python
"""Benchmark grid: methods x datasets x seeds, each seed a fresh `experiments/run.py` process.

  python experiments/benchmark.py --methods kmeans --datasets digits hdigit --seeds 0 1 2 \
      --data-dir ../shared/data

For each (method, dataset) it reports final-model metrics as mean ± std over seeds (and the
method's starting point under init_*), mean wall time, the epochs run per stage and the
timings the method records (fit_info_["timing"] flattened to `{stage}_epoch_s`, ...), writes
one row file docs/results/rows/<method>__<dataset>[__<tag>].json, then regenerates
docs/results/benchmark.json and docs/results/BENCHMARKS.md from all row files: one table of
the untagged (default) rows beside the baselines and the papers' numbers
(experiments/paper_numbers.json), and one table per method of its tagged rows.
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
  if args.no_compile_cache:
    cmd += ["--no-compile-cache"]
  print("$", " ".join(shlex.quote(c) for c in cmd[1:]), flush=True)
  done = Path(out) / "results.json"
  if args.reuse_runs and done.exists():
    prev = json.loads(done.read_text())
    if prev.get("command", "").split()[2:] == [str(c) for c in cmd[2:]]:
      print(f"(reusing the finished run in {out})", flush=True)
      return prev
  proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
  if proc.returncode != 0:
    raise RuntimeError(f"run failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
  print(proc.stdout.strip(), flush=True)
  return json.loads((Path(out) / "results.json").read_text())


#: Label-free health checks a method's fit_info_ may hold; copied into each seed's record.
HEALTH_KEYS = ("pretrain_rec_over_variance", "embedding_spread", "cluster_rec_over_pretrain")
#: The per-stage timings of `train.engine` (fit_info_["timing"][stage]) kept in a row.
STAGE_TIMINGS = ("epoch_s", "compile_s", "steps_per_s")
BASELINES = ("kmeans", "spectral")


def machine() -> str:
  """Architecture, processor model (XLA's CPU code, and so the float results of a long run,
  depend on it) and core count."""
  model, flags = "", []
  try:
    with open("/proc/cpuinfo") as f:
      info = dict(ln.split(":", 1) for ln in f.read().split("\n\n")[0].splitlines() if ":" in ln)
    model = info.get("model name\t", info.get("model name", "")).strip()
    flags = info.get("flags\t\t", info.get("flags", "")).split()
  except (OSError, ValueError):
    pass
  isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
  return ", ".join(x for x in (platform.machine(), model, isa, f"{os.cpu_count()} CPU cores")
                   if x)


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def flat_timings(info: dict) -> dict:
  """One run's timings from fit_info_: info["timing"] ({stage: {epoch_s, compile_s,
  steps_per_s, ...}}) flattened to `{stage}_{key}` (e.g. train_epoch_s, pretrain_compile_s),
  plus the method's other top-level seconds (keys ending in `_s`, e.g. init_time_s)."""
  out = {}
  for stage, t in (info.get("timing") or {}).items():
    for k in STAGE_TIMINGS:
      if _number((t or {}).get(k)):
        out[f"{stage}_{k}"] = t[k]
  out.update({k: v for k, v in info.items() if k != "timing" and k.endswith("_s") and _number(v)})
  return out


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
  for k in ("total_s", "train_s"):  # results.json's timing: the whole process, its training
    row[f"{k}_mean"], row[f"{k}_std"] = _stats([(r.get("timing") or {}).get(k) for r in results])
  timings = [flat_timings(r.get("info") or {}) for r in results]
  row["timings"] = {k: _stats([t.get(k) for t in timings])[0]
                    for k in sorted({k for t in timings for k in t})}
  # results.json's `epochs` is {stage: epochs run}; a stop rule can make it differ per seed.
  epochs = [r.get("epochs") or {} for r in results]
  row["epochs"] = {st: max(e.get(st, 0) for e in epochs) for st in dict.fromkeys(
      st for e in epochs for st in e)}
  row["per_seed"] = [{"seed": r["seed"], **{m: r.get(m) for m in METRICS},
                      "wall_time_s": r["wall_time_s"], "epochs": r.get("epochs") or {},
                      **({"timing": r["timing"]} if r.get("timing") else {}),
                      **({"init_acc": r["init"]["acc"]} if "init" in r else {}),
                      **{k: v for k, v in (r.get("info") or {}).items() if k in HEALTH_KEYS}}
                     for r in results]
  row["jax_backend"] = results[0].get("jax_backend")
  row["machine"] = machine()
  row["date"] = time.strftime("%Y-%m-%d")
  row["command"] = command
  return row


# -- tables ---------------------------------------------------------------------------------
def _flag(row, name):
  parts = shlex.split(row.get("command", ""))
  return parts[parts.index(name) + 1] if name in parts[:-1] else None


def _changes(row) -> str:
  """What a row's command sets beyond the defaults: --config (its content), other flags."""
  out = []
  cfg = _flag(row, "--config")
  if cfg:
    path = ROOT / cfg
    body = json.dumps(json.loads(path.read_text()), separators=(", ", ": ")) if (
        path.exists() and path.suffix == ".json") else "(file not in the repository)"
    out.append(f"`{Path(cfg).name}`: `{body}`")
  for flag in ("--epochs", "--missing-rate", "--max-samples"):
    v = _flag(row, flag)
    if v is not None and v not in ("0", "0.0"):
      out.append(f"`{flag} {v}`")
  return "; ".join(out) or "–"


def _fmt(mean, std, pct=True):
  if mean is None:
    return "–"
  if pct:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"
  return f"{mean:.1f} ± {std:.1f}"


def _epochs_text(row) -> str:
  """`pretrain + train` epochs run, a range where seeds differ; older rows hold an int."""
  e = row.get("epochs")
  if not e:
    return "–"
  if not isinstance(e, dict):
    return str(e)
  per = [p.get("epochs") for p in row.get("per_seed", [])]
  parts = []
  for st, n in e.items():
    vals = [p[st] for p in per if isinstance(p, dict) and st in p]
    lo = min(vals) if vals else n
    parts.append(f"{lo}–{n}" if lo != n else str(n))
  return " + ".join(parts)


def _seconds(row) -> str:
  """The `total s / run | train s / run` cells (mean ± std over seeds), "–" where the row's
  runs have no results.json timing."""
  return " | ".join(_fmt(row.get(f"{k}_mean"), row.get(f"{k}_std") or 0.0, pct=False)
                    for k in ("total_s", "train_s"))


def _beats_start(row) -> str:
  seeds = [p for p in row.get("per_seed", []) if p.get("init_acc") is not None]
  if not seeds:
    return "–"
  return f"{sum(p['acc'] > p['init_acc'] for p in seeds)} of {len(seeds)}"


def _paper(paper, r) -> str:
  refs = [p for p in paper if p["method"] == r["method"] and p["dataset"] == r["dataset"]]
  return "; ".join(f"{100 * p['acc']:.1f} / {100 * p['nmi']:.1f}" if "nmi" in p
                   else f"{100 * p['acc']:.1f}" for p in refs) or "–"


def _link(r) -> str:
  return f"[{r['_file']}](rows/{r['_file']})"


def regenerate(results_dir: Path = RESULTS) -> list:
  files = sorted((results_dir / "rows").glob("*.json"))
  rows = [{**json.loads(p.read_text()), "_file": p.name} for p in files]
  order = lambda r: (r["dataset"], r["method"] not in BASELINES, r["method"] != "kmeans",
                     r["method"], r.get("tag", ""))
  rows.sort(key=order)
  (results_dir / "benchmark.json").write_text(json.dumps(
      [{k: v for k, v in r.items() if k != "_file"} for r in rows], indent=2) + "\n")
  paper = json.loads(PAPER.read_text())["entries"] if PAPER.exists() else []
  default = {(r["method"], r["dataset"]): r for r in rows if not r.get("tag")}
  lines = [
      "# Benchmarks",
      "",
      "Final-model metrics: ACC (Hungarian matching), NMI, ARI, in percent, mean ± std over the",
      "seeds of a row. \"start\" is the method's own starting point (e.g. autoencoder + k-means),",
      "scored the same way; \"final > start\" counts the seeds where the final model's ACC is",
      "above it. Labels are used for scoring only. Each row is one file under `rows/`, written by",
      "`python experiments/benchmark.py --methods M --datasets D --seeds 0 1 2 [--tag T ...]`;",
      "this page is generated from them (`python experiments/benchmark.py --regenerate`), and each",
      "row's exact command is listed at the end. Seconds per run, on the machine of the row's",
      "`machine` field: wall is loading + fitting; total is the whole process (start-up and",
      "imports to the written run directory) and train its training epochs, both from",
      "results.json's `timing` (\"–\": a row written before results.json had it).",
      "",
      "## Default settings",
      "",
      "One row per (dataset, method) with the method's defaults (no `--tag`), the baselines",
      "`kmeans` and `spectral` first; paper: the paper's ACC / NMI on its closest dataset (see",
      "\"Papers' numbers\").",
      "",
      "| dataset | method | seeds | ACC | NMI | ARI | start ACC | final > start | epochs run "
      "| wall s / run | total s / run | train s / run | paper ACC / NMI | row |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for r in rows:
    if r.get("tag"):
      continue
    lines.append(
        f"| {r['dataset']} | {r['method']} | {len(r['seeds'])} | "
        f"{_fmt(r['acc_mean'], r['acc_std'])} | {_fmt(r['nmi_mean'], r['nmi_std'])} | "
        f"{_fmt(r['ari_mean'], r['ari_std'])} | "
        f"{_fmt(r.get('init_acc_mean'), r.get('init_acc_std'))} | {_beats_start(r)} | "
        f"{_epochs_text(r)} | {_fmt(r['wall_time_s_mean'], r['wall_time_s_std'], pct=False)} | "
        f"{_seconds(r)} | {_paper(paper, r)} | {_link(r)} |")
  flagged = [r for r in rows if not r.get("tag") and _changes(r) != "–"]
  if flagged:
    lines += ["", "Default rows run with a flag: " + "; ".join(
        f"{r['method']} / {r['dataset']}: {_changes(r)}" for r in flagged) + "."]
  lines += ["", "## Variants and ablations", "",
            "Rows with a `--tag`: a `--config` file, a missing-view rate or other seeds. \"default",
            "ACC\" is the default row's ACC on the same dataset.", ""]
  for method in dict.fromkeys(r["method"] for r in rows if r.get("tag")):
    lines += [f"### {method}", "",
              "| dataset | tag | what it sets | seeds | ACC | NMI | ARI | start ACC | "
              "final > start | default ACC | epochs run | wall s / run | total s / run | "
              "train s / run | row |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
              "| --- |"]
    for r in rows:
      if r["method"] != method or not r.get("tag"):
        continue
      d = default.get((r["method"], r["dataset"]))
      seeds = " ".join(map(str, r["seeds"]))
      lines.append(
          f"| {r['dataset']} | {r['tag']} | {_changes(r)} | {seeds} | "
          f"{_fmt(r['acc_mean'], r['acc_std'])} | {_fmt(r['nmi_mean'], r['nmi_std'])} | "
          f"{_fmt(r['ari_mean'], r['ari_std'])} | "
          f"{_fmt(r.get('init_acc_mean'), r.get('init_acc_std'))} | {_beats_start(r)} | "
          f"{_fmt(d['acc_mean'], d['acc_std']) if d else '–'} | {_epochs_text(r)} | "
          f"{_fmt(r['wall_time_s_mean'], r['wall_time_s_std'], pct=False)} | {_seconds(r)} | "
          f"{_link(r)} |")
    lines.append("")
  lines += ["## Papers' numbers", "",
            "| method | dataset | paper | table | setting | ACC | NMI | ARI |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for p in paper:
    lines.append(f"| {p['method']} | {p['dataset']} | {p['paper']} | {p['table']} | {p['setting']} | "
                 + " | ".join(f"{100 * p[m]:.2f}" if m in p else "–" for m in METRICS) + " |")
  lines += ["", "## Timings", "",
            "Per-run timings the methods record, mean over seeds: `{stage}_epoch_s` (median epoch",
            "without compilation), `{stage}_compile_s`, `{stage}_steps_per_s` from `train.engine`,",
            "and the method's other seconds. Rows written before `train.engine` keep the keys of",
            "their time.", ""]
  for r in rows:
    if r.get("timings"):
      t = ", ".join(f"{k} {v:.3g}" for k, v in r["timings"].items()
                    if v is not None and k.endswith("_s"))
      lines.append(f"- {r['method']} / {r['dataset']} ({r.get('tag') or 'default'}): {t}")
  lines += ["", "## Commands", ""]
  for r in rows:
    lines.append(f"- {r['_file']} ({r['machine']}, {r['jax_backend']}): `{r['command']}`")
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
  p.add_argument("--no-compile-cache", action="store_true",
                 help="runs without JAX's persistent compilation cache (run.py's flag)")
  p.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench"))
  p.add_argument("--reuse-runs", action="store_true",
                 help="a seed whose run directory holds a finished run of the same command "
                      "(results.json) is read, not run again (resumes an interrupted grid)")
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
