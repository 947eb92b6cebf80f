#!/usr/bin/env python
"""IDCL ablations from one shared pre-training (the paper's Table 4 and our own switches).

  python experiments/idcl_ablation.py --dataset digits --seed 0 \
      --variant default='{}' no-kl='{"alpha": 0}' center='{"assignment": "center"}' \
      --out docs/results/idcl_ablation.json

The autoencoder is pre-trained once per (dataset, seed, pre-training settings) with the
default config and checkpointed under --work; every variant then resumes from that
checkpoint, so all variants start from the same embedding and the same k-means starting
point, and only the clustering stage differs. A variant that changes pre-training
(backbone, rec_loss, pretrain_*) gets its own pre-training. Labels are used for scoring
only: ACC / NMI at the end and, for the curve, every `--curve-every` epochs. Results are
appended to --out (JSON, one record per variant) and printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: Config fields that change stage 1; a variant touching one gets its own pre-training.
PRETRAIN_FIELDS = ("backbone", "hidden", "latent", "depth", "num_heads", "mlp_ratio",
                   "pos_encoding", "norm_first", "image_size", "pretrain_lr", "batch_size",
                   "pretrain_epochs", "rec_loss", "augment")


def run_variant(data, name: str, overrides: dict, *, seed: int, epochs: int, work: Path,
                curve_every: int) -> dict:
  import jax
  import numpy as np

  from clustering_jax import metrics
  from clustering_jax.methods import idcl
  from clustering_jax.train.run import Run

  cfg = dataclasses.replace(idcl.Config(epochs=epochs), **overrides)
  pre = {f: getattr(cfg, f) for f in PRETRAIN_FIELDS}
  tag = hashlib.sha1(json.dumps(pre, sort_keys=True, default=str).encode()).hexdigest()[:10]
  pre_dir = work / f"pretrain_{data.name}_s{seed}_{tag}"
  y = np.asarray(data.labels)
  score = lambda lab: {"acc": metrics.accuracy(y, lab), "nmi": metrics.nmi(y, lab)}
  if not (pre_dir / "checkpoints" / "pretrain").exists():
    shutil.rmtree(pre_dir, ignore_errors=True)
    idcl.fit(data, dataclasses.replace(cfg, epochs=0), key=jax.random.key(seed),
             run=Run(str(pre_dir), checkpoint_every=max(cfg.pretrain_epochs, 1)))
  out = work / f"{data.name}_s{seed}_{name}"
  shutil.rmtree(out, ignore_errors=True)
  shutil.copytree(pre_dir / "checkpoints", out / "checkpoints")
  run = Run(str(out), checkpoint_every=10**9, score_fn=score)
  t0 = time.perf_counter()
  res = idcl.fit(data, cfg, key=jax.random.key(seed), run=run)
  wall = time.perf_counter() - t0
  rows = [r for r in run.history if r["stage"] == "train"]
  curve = {int(r["epoch"]): round(r["acc"], 4) for r in rows
           if curve_every and int(r["epoch"]) % curve_every == 0}
  return {"dataset": data.name, "seed": seed, "variant": name, "overrides": overrides,
          "epochs": epochs, "epochs_run": res.info["epochs"],
          "stopped_at_epoch": res.info["stopped_at_epoch"],
          "init": score(res.init_labels), "final": score(res.labels),
          "dc_first_last": [rows[0]["dc"], rows[-1]["dc"]] if rows else None,
          "loss_rec_first_last": ([rows[0].get("loss_rec"), rows[-1].get("loss_rec")]
                                  if rows else None),
          "median_label_change": (float(np.median([r["label_change"] for r in rows]))
                                  if rows else None),
          "acc_curve": curve, "wall_s": round(wall, 1)}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--dataset", default="digits")
  ap.add_argument("--data-dir", default=None)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--epochs", type=int, default=200, help="clustering epochs per variant")
  ap.add_argument("--variant", nargs="+", required=True, metavar="NAME=JSON")
  ap.add_argument("--curve-every", type=int, default=20)
  ap.add_argument("--work", default="runs/idcl_ablation")
  ap.add_argument("--out", default="docs/results/idcl_ablation.json")
  args = ap.parse_args(argv)

  from clustering_jax.data import load_dataset
  data = load_dataset(args.dataset, data_dir=args.data_dir)
  out = Path(args.out)
  records = json.loads(out.read_text()) if out.exists() else []
  for spec in args.variant:
    name, _, js = spec.partition("=")
    rec = run_variant(data, name, json.loads(js or "{}"), seed=args.seed, epochs=args.epochs,
                      work=Path(args.work), curve_every=args.curve_every)
    rec["command"] = " ".join(["python", "experiments/idcl_ablation.py", "--dataset",
                               args.dataset, "--seed", str(args.seed), "--epochs",
                               str(args.epochs), "--variant", f"'{spec}'"])
    records = [r for r in records if (r["dataset"], r["seed"], r["variant"], r["epochs"])
               != (rec["dataset"], rec["seed"], rec["variant"], rec["epochs"])] + [rec]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1) + "\n")
    print(f"| {rec['dataset']} | {rec['seed']} | {name} | {rec['init']['acc']:.3f} | "
          f"{rec['final']['acc']:.3f} | {rec['final']['nmi']:.3f} | {rec['acc_curve']} |",
          flush=True)


if __name__ == "__main__":
  main()
