#!/usr/bin/env python
"""Ablations of IDCL or ULHE-DC from one shared pre-training (the papers' tables and ours).

  python experiments/ablation.py --method idcl --dataset digits --seed 0 \\
      --variant default='{}' no-kl='{"alpha": 0}' center='{"assignment": "center"}'
  python experiments/ablation.py --method ulhe --dataset hdigit-mnist --data-dir ../shared/data \\
      --seed 0 --epochs 300 --config experiments/configs/ulhe_da300.json \\
      --variant default='{}' fixed='{"spl_advance": "fixed"}'

The autoencoder is pre-trained once per (method, dataset, seed, pre-training settings) with
the base config (defaults, or --config) and checkpointed under --work; every variant then
resumes from that checkpoint, so all variants start from the same embedding and the same
k-means starting point, and only the clustering stage differs (a resumed run is the same
computation as an uninterrupted one: same keys, same epochs). A variant that changes a
pre-training field gets its own pre-training. Labels are used for scoring only: ACC / NMI at
the end and, for the curve, every `--curve-every` epochs. Results are appended to --out
(JSON, one record per variant; default docs/results/METHOD_ablation.json) and printed as a
Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _idcl_extra(res, rows):
  import numpy as np
  return {"stopped_at_epoch": res.info["stopped_at_epoch"],
          "dc_first_last": [rows[0]["dc"], rows[-1]["dc"]] if rows else None,
          "loss_rec_first_last": ([rows[0].get("loss_rec"), rows[-1].get("loss_rec")]
                                  if rows else None),
          "median_label_change": (float(np.median([r["label_change"] for r in rows]))
                                  if rows else None),
          # label-free health checks of fit (None where fit did not compute them)
          **{k: res.info.get(k) for k in ("pretrain_rec_over_variance", "embedding_spread",
                                           "cluster_rec_over_pretrain")}}


def _ulhe_extra(res, rows):
  return {"stop_epoch": res.info["stop_epoch"], "spl_advances": res.info["spl_advances"]}


#: Per method: the clustering-epochs field, the logged stage of the clustering loop, the
#: Config fields that change stage 1 (a variant touching one gets its own pre-training),
#: and the method-specific entries of a record.
METHODS = {
    "idcl": {"epochs_field": "epochs", "stage": "train", "extra": _idcl_extra,
             "pretrain_fields": ("backbone", "hidden", "latent", "depth", "num_heads",
                                 "mlp_ratio", "pos_encoding", "norm_first", "image_size",
                                 "pretrain_lr", "batch_size", "pretrain_epochs", "rec_loss",
                                 "augment"),
             # fields added later, with the value every earlier record implied
             "pretrain_fields_added": {"pretrain_schedule": "constant",
                                       "pretrain_warmup": 0.1,
                                       # the resolved rate (a property; None follows lr)
                                       "pretrain_end_rate": 0.0}},
    "ulhe": {"epochs_field": "epochs", "stage": "train", "extra": _ulhe_extra,
             "pretrain_fields": ("hidden", "latent", "weight_init", "pretrain_epochs",
                                 "pretrain_batch_size", "pretrain_optimizer", "pretrain_lr",
                                 "momentum", "rec_reduction", "augment_pretrain")},
}


def pretrain_tag(method: str, cfg) -> str:
  """Hash of the Config fields that change stage 1: the name of a shared pre-training."""
  spec = METHODS[method]
  pre = {f: getattr(cfg, f) for f in spec["pretrain_fields"]}
  # Fields added later enter the hash only when they differ from the value earlier records
  # implied, so the work directories named in those records stay valid.
  pre.update({f: getattr(cfg, f) for f, old in spec.get("pretrain_fields_added", {}).items()
              if getattr(cfg, f) != old})
  return hashlib.sha1(json.dumps(pre, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_variant(data, method: str, name: str, base: dict, overrides: dict, *, seed: int,
                epochs: int, work: Path, curve_every: int) -> dict:
  import importlib

  import jax
  import numpy as np

  from clustering_jax import metrics
  from clustering_jax.methods.base import Views
  from clustering_jax.train.run import Run

  spec = METHODS[method]
  mod = importlib.import_module(f"clustering_jax.methods.{method}")
  cfg = dataclasses.replace(mod.Config(), **{**base, spec["epochs_field"]: epochs,
                                             **overrides})
  tag = pretrain_tag(method, cfg)
  pre_dir = work / f"pretrain_{data.name}_s{seed}_{tag}"
  y = np.asarray(data.labels)
  score = lambda lab: {"acc": metrics.accuracy(y, lab), "nmi": metrics.nmi(y, lab)}
  if not (pre_dir / "checkpoints" / "pretrain").exists():
    shutil.rmtree(pre_dir, ignore_errors=True)
    mod.fit(Views.of(data), data.n_clusters, dataclasses.replace(cfg, **{spec["epochs_field"]: 0}),
            key=jax.random.key(seed),
            run=Run(str(pre_dir), checkpoint_every=max(cfg.pretrain_epochs, 1)))
  out = work / f"{data.name}_s{seed}_{name}"
  shutil.rmtree(out, ignore_errors=True)
  shutil.copytree(pre_dir / "checkpoints", out / "checkpoints")
  if (pre_dir / "metrics.jsonl").exists():  # the pre-training's log, for fit's stage checks
    rows = [ln for ln in (pre_dir / "metrics.jsonl").read_text().splitlines()
            if ln.strip() and json.loads(ln).get("stage") == "pretrain"]
    (out / "metrics.jsonl").write_text("".join(ln + "\n" for ln in rows))
  run = Run(str(out), checkpoint_every=10**9, score_fn=score)
  t0 = time.perf_counter()
  res = mod.fit(Views.of(data), data.n_clusters, cfg, key=jax.random.key(seed), run=run)
  wall = time.perf_counter() - t0
  rows = [r for r in run.history if r["stage"] == spec["stage"]]
  curve = {int(r["epoch"]): round(r["acc"], 4) for r in rows
           if curve_every and int(r["epoch"]) % curve_every == 0}
  return {"dataset": data.name, "seed": seed, "variant": name, "overrides": overrides,
          "epochs": epochs, "epochs_run": res.info["epochs"],
          "init": score(res.init_labels), "final": score(res.labels),
          **spec["extra"](res, rows), "acc_curve": curve, "wall_s": round(wall, 1)}


def _commit() -> str:
  import subprocess
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                          capture_output=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--method", choices=sorted(METHODS), default="idcl")
  ap.add_argument("--dataset", default="digits")
  ap.add_argument("--data-dir", default=None)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--epochs", type=int, default=200, help="clustering epochs per variant")
  ap.add_argument("--config", default=None, help="JSON file of base Config overrides")
  ap.add_argument("--variant", nargs="+", required=True, metavar="NAME=JSON")
  ap.add_argument("--curve-every", type=int, default=20)
  ap.add_argument("--work", default=None, help="default runs/METHOD_ablation")
  ap.add_argument("--out", default=None, help="default docs/results/METHOD_ablation.json")
  args = ap.parse_args(argv)

  from clustering_jax.data import load_dataset
  data = load_dataset(args.dataset, data_dir=args.data_dir)
  base = json.loads(Path(args.config).read_text()) if args.config else {}
  out = Path(args.out or f"docs/results/{args.method}_ablation.json")
  work = Path(args.work or f"runs/{args.method}_ablation")
  records = json.loads(out.read_text()) if out.exists() else []
  commit = _commit()  # the code this process loaded
  for spec in args.variant:
    name, _, js = spec.partition("=")
    rec = run_variant(data, args.method, name, base, json.loads(js or "{}"), seed=args.seed,
                      epochs=args.epochs, work=work, curve_every=args.curve_every)
    cmd = ["python", "experiments/ablation.py", "--method", args.method, "--dataset",
           args.dataset, "--seed", str(args.seed), "--epochs", str(args.epochs)]
    if args.data_dir:
      cmd += ["--data-dir", args.data_dir]
    if args.config:
      cmd += ["--config", args.config]
      rec["config"] = args.config
    rec["command"] = " ".join(cmd + ["--variant", f"'{spec}'"])
    rec["commit"] = commit  # the defaults in force (records before 2026-11-30 lack it)
    key = lambda r: (r["dataset"], r["seed"], r["variant"], r["epochs"], r.get("config"))
    records = [r for r in records if key(r) != key(rec)] + [rec]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1) + "\n")
    print(f"| {rec['dataset']} | {rec['seed']} | {name} | {rec['init']['acc']:.3f} | "
          f"{rec['final']['acc']:.3f} | {rec['final']['nmi']:.3f} | {rec['acc_curve']} |",
          flush=True)


if __name__ == "__main__":
  main()
