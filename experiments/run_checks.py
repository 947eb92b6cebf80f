#!/usr/bin/env python
"""The label-free stage checks of IDCL run directories, read from their metrics.jsonl.

  python experiments/run_checks.py runs/bench/idcl__digits__lr001-p1000/seed{0,1,2}

Per run, one Markdown row: the last pre-training L_rec, the largest clustering-epoch L_rec
over it (the stage-boundary check of docs/methods/idcl-notes.md, "How defaults were chosen")
and the epoch where it was reached, the last clustering-epoch L_rec, d_c at the first and
last clustering epoch, the median label-change rate per epoch, and the number of clustering
epochs run. No labels are read. A run directory without pre-training rows in its log (a run
resumed from another directory's pre-training that did not copy its log) gets "–" in those
columns.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def stage_checks(rows: list[dict]) -> dict:
  """The checks of one run's log rows (IDCL: stages "pretrain" and "train")."""
  pre = [r["loss_rec"] for r in rows if r.get("stage") == "pretrain" and "loss_rec" in r]
  tr = [r for r in rows if r.get("stage") == "train"]
  rec = [(r["epoch"], r["loss_rec"]) for r in tr if "loss_rec" in r]
  out = {"pretrain_last_rec": pre[-1] if pre else None, "epochs_run": len(rec),
         "train_last_rec": rec[-1][1] if rec else None,
         "dc_first_last": [tr[0]["dc"], tr[-1]["dc"]] if tr else None,
         "median_label_change": (float(np.median([r["label_change"] for r in tr]))
                                 if tr else None)}
  if rec:
    epoch, peak = max(rec, key=lambda er: er[1])
    out["max_rec_epoch"] = epoch
    out["max_rec_over_pretrain"] = peak / pre[-1] if pre and pre[-1] > 0 else None
  return out


def _fmt(v, spec=".3f"):
  return "–" if v is None else format(v, spec)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("runs", nargs="+", help="run directories holding metrics.jsonl")
  args = ap.parse_args(argv)
  print("| run | pre-training L_rec | max L_rec / pre-training (epoch) | last L_rec | d_c first → "
        "last | median label change | epochs |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for d in args.runs:
    path = Path(d) / "metrics.jsonl"
    if not path.exists():
      sys.exit(f"no metrics.jsonl in {d}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    c = stage_checks(rows)
    dc = c["dc_first_last"]
    print(f"| {d} | {_fmt(c['pretrain_last_rec'])} | {_fmt(c.get('max_rec_over_pretrain'))} "
          f"({c.get('max_rec_epoch', '–')}) | {_fmt(c['train_last_rec'])} | "
          f"{_fmt(dc[0] if dc else None, '.2f')} → {_fmt(dc[1] if dc else None, '.2f')} | "
          f"{_fmt(c['median_label_change'], '.2%')} | {c['epochs_run']} |")


if __name__ == "__main__":
  main()
