#!/usr/bin/env python
"""IDCL pre-training learning-rate schedules, compared by the reconstruction loss only.

  python experiments/pretrain_schedule.py --dataset digits --seeds 0 1 2 \\
      --out docs/results/idcl_pretrain_schedule.json

Why: the paper pre-trains with Adam at lr 0.01 for 100 epochs (§4) and states no schedule.
At a constant 0.01 our TAE does not train, so the default is a constant 0.001
(docs/methods/idcl.md, "Departures"), with which L_rec is still falling steeply after the
paper's 100 epochs. A linear warm-up followed by a cosine decay is the usual way to train a
transformer with Adam at a rate at which it diverges from a cold start.

The rule, fixed before any candidate was run (this file was committed first): every
candidate pre-trains for the paper's 100 epochs (the default config's `pretrain_epochs` at the
time; now `--pretrain-epochs`' default), everything else default. The score is L_rec (Eq. 13: ‖x − x̂‖² summed over pixels, mean over
samples) of the final pre-trained autoencoder on all un-augmented images. The candidate with
the lowest mean score over the seeds becomes the default, if its score is below the current
default's on every seed; otherwise the default stays. Labels are not loaded into any score:
this script never computes ACC, NMI or ARI.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: name -> Config overrides, spelled out in full so a candidate does not change with the
#: defaults. "constant-0.001" was the default at the time of the comparison; "constant-0.01"
#: is the paper's stated rate.
CANDIDATES = {
    f"{sched}-{lr}": {"pretrain_schedule": sched, "pretrain_lr": lr, "pretrain_warmup": 0.1,
                      "pretrain_end_lr": 0.0}
    for sched in ("constant", "warmup_cosine") for lr in (0.001, 0.003, 0.01)
}


def clean_rec_loss(data, cfg, params) -> float:
  """Eq. 13 on every un-augmented input, summed over pixels, averaged over samples."""
  import jax.numpy as jnp

  from clustering_jax.methods import idcl
  from clustering_jax.ops.distances import map_row_blocks
  x = jnp.asarray(idcl.prepare_inputs(data, cfg))
  net = idcl.make_net(cfg, x.shape)
  per_sample = map_row_blocks(
      lambda rows, _: idcl.rec_per_sample(rows, net.apply(params, rows)[1], "sum"), x,
      block=512)
  return float(jnp.mean(per_sample))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--dataset", default="digits")
  ap.add_argument("--data-dir", default=None)
  ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
  ap.add_argument("--pretrain-epochs", type=int, default=100,
                  help="the paper's 100 (the length the committed comparisons used)")
  ap.add_argument("--out", default=None, help="JSON file to write the records to")
  args = ap.parse_args(argv)

  import jax
  import numpy as np

  from clustering_jax import load_dataset
  from clustering_jax.methods import idcl
  from clustering_jax.methods.base import Views
  from clustering_jax.train.run import NonFiniteError, quiet_run

  data = load_dataset(args.dataset, data_dir=args.data_dir)
  records = []
  for name in args.candidates:
    for seed in args.seeds:
      cfg = dataclasses.replace(idcl.Config(), epochs=0, **CANDIDATES[name])
      if args.pretrain_epochs is not None:
        cfg = dataclasses.replace(cfg, pretrain_epochs=args.pretrain_epochs)
      run = quiet_run()
      t0 = time.perf_counter()
      try:
        res = idcl.fit(Views.of(data), data.n_clusters, cfg, key=jax.random.key(seed), run=run)
        score = round(clean_rec_loss(data, cfg, res.state["params"]), 5)
      except NonFiniteError:  # a diverged candidate scores +inf
        score = float("inf")
      wall = time.perf_counter() - t0
      train_rec = [r["loss_rec"] for r in run.history if r["stage"] == "pretrain"]
      rec = {"candidate": name, "overrides": CANDIDATES[name], "seed": seed,
             "pretrain_epochs": cfg.pretrain_epochs, "clean_rec_loss": score,
             "train_rec_loss_at": {e: round(train_rec[e - 1], 5)
                                   for e in (1, 10, 25, 50, 75, 100) if e <= len(train_rec)},
             "wall_s": round(wall, 1)}
      records.append(rec)
      print(json.dumps(rec), flush=True)

  by = {}
  for r in records:
    by.setdefault(r["candidate"], {})[r["seed"]] = r["clean_rec_loss"]
  base = by.get("constant-0.001", {})
  print("\n| candidate | clean L_rec per seed | mean | below constant-0.001 (the default until 2026-11-30) on every seed |")
  print("| --- | --- | --- | --- |")
  for name, per in by.items():
    vals = [per[s] for s in args.seeds if s in per]
    below = all(per[s] < base[s] for s in per if s in base) if base else None
    print(f"| {name} | {' / '.join(f'{v:.4f}' for v in vals)} | {np.mean(vals):.4f} | "
          f"{below} |")
  if args.out:
    cmd = "python experiments/pretrain_schedule.py " + " ".join(argv or sys.argv[1:])
    Path(args.out).write_text(json.dumps({"command": cmd, "records": records}, indent=1) + "\n")
  return records


if __name__ == "__main__":
  main()
