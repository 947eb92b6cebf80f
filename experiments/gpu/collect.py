#!/usr/bin/env python
"""Condenses device-run directories into one small JSON each (results.json, the config,
and the logged ACC curves) for committing under docs/results/.

  python experiments/gpu/collect.py --out docs/results/gpu_session5 RUNDIR [RUNDIR ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def condense(run: Path) -> dict:
  out = {"run": run.name}
  if (run / "results.json").exists():
    out["results"] = json.loads((run / "results.json").read_text())
  else:
    out["results"] = None   # the run hit its wall-clock limit: the log below is all there is
  out["config"] = json.loads((run / "config.json").read_text())
  rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
  out["curve"] = [{k: r[k] for k in ("stage", "epoch", "time_s", "acc", "nmi", "rec", "loss_rec")
                   if k in r} for r in rows if "acc" in r]
  out["n_log_rows"] = len(rows)
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("runs", nargs="+")
  args = p.parse_args(argv)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  for r in map(Path, args.runs):
    (out / f"{r.name}.json").write_text(json.dumps(condense(r), indent=1) + "\n")
    print(out / f"{r.name}.json")


if __name__ == "__main__":
  main()
