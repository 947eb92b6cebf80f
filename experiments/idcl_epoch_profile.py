#!/usr/bin/env python
"""Where an IDCL clustering epoch spends its time, on whatever backend JAX runs on.

Runs the pieces of `methods/idcl.py` `fit` itself (make_steps, _epoch_batches, _run_scanned,
_run_steps)
for a short pre-training and then E clustering epochs, timing each part of an epoch with a
device sync after it: embed all, the jitted assignment pass (Alg. 2 lines 5-10), the host
reads of its results, the epoch's shuffle, and the mini-batch steps. Afterwards the parts of
the assignment pass are timed one by one on the last embedding. The epochs' ζ follows the
default pacing, so the curriculum set grows as it does in a real run (and a shuffle whose
shape follows the set's size would compile every epoch: `shuffle_by_set_size_ms` times that
older way for comparison, without using it).

  python experiments/idcl_epoch_profile.py --dataset digits --out docs/results/idcl_epoch_profile.json
  python experiments/idcl_epoch_profile.py --dataset hdigit-mnist --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--dataset", default="digits")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--config", default=None, help="JSON of IDCL Config overrides")
  p.add_argument("--pretrain-epochs", type=int, default=10,
                 help="pre-training epochs before the timed epochs (a sane embedding)")
  p.add_argument("--epochs", type=int, default=12, help="clustering epochs timed")
  p.add_argument("--reps", type=int, default=5, help="repetitions of each assignment part")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max-samples", type=int, default=None, help="use only the first N samples")
  p.add_argument("--out", default=None, help="JSON list to append the record to")
  args = p.parse_args(argv)
  if args.epochs < 2 or args.pretrain_epochs < 1:
    p.error("--epochs must be >= 2 and --pretrain-epochs >= 1")

  import jax
  import jax.numpy as jnp
  import numpy as np

  from clustering_jax.data import load_dataset
  from clustering_jax.methods import idcl
  from clustering_jax.ops.assignment import core_similarity, soft_assignment, target_distribution
  from clustering_jax.ops.curriculum import pacing, select_easy
  from clustering_jax.ops.density import cutoff_distance, density_cores, local_density
  from clustering_jax.ops.distances import map_row_blocks
  from clustering_jax.ops.kmeans import kmeans, lloyd
  from clustering_jax.train.batching import epoch_key, epoch_permutation

  overrides = json.loads(Path(args.config).read_text()) if args.config else {}
  cfg = dataclasses.replace(idcl.Config(), **overrides)
  cfg = dataclasses.replace(cfg, hidden=tuple(int(h) for h in cfg.hidden))   # as fit does
  cfg.validate()
  data = load_dataset(args.dataset, data_dir=args.data_dir, max_samples=args.max_samples)
  k = int(data.n_clusters)
  x_np = idcl.prepare_inputs(data, cfg)
  n = x_np.shape[0]
  x_all = jnp.asarray(x_np)
  net = idcl.make_net(cfg, x_np.shape)
  bpe = max(n // cfg.batch_size, 1)
  steps = idcl.make_steps(net, cfg, k, cfg.pretrain_epochs * bpe,
                          int(round(cfg.warmup * cfg.epochs * bpe)))
  key = jax.random.key(args.seed)
  k_init, k_pre, k_train, k_km0 = jax.random.split(key, 4)
  params = jax.jit(net.init)(k_init, x_all[:2])
  state = idcl.TrainState(params, steps["tx"].init(params))

  t0 = time.perf_counter()
  pre_timer, pre_compiled = idcl._Timer(), [None]
  for epoch in range(args.pretrain_epochs):
    bs = idcl._epoch_batches(k_pre, epoch, np.arange(n), cfg.batch_size, n)
    state, _, _ = idcl._run_scanned(steps["pretrain_epoch"], pre_compiled, pre_timer, state, bs,
                                    x_all, key=epoch_key(k_pre, epoch))
  pretrain_s = time.perf_counter() - t0
  z0 = steps["embed"](state.params, x_all)
  y_prev = np.asarray(kmeans(k_km0, z0, k, n_init=cfg.kmeans_n_init).labels, np.int32)

  def sync(t):
    jax.block_until_ready(t)
    return time.perf_counter()

  parts = ("embed", "assign", "host_reads", "shuffle", "steps", "epoch")
  per_epoch = {name: [] for name in parts}
  old_shuffle, tr_timer, tr_compiled = [], idcl._Timer(), [None]
  for epoch in range(args.epochs):
    k_assign, k_batch, k_steps = jax.random.split(epoch_key(k_train, epoch), 3)
    zeta = pacing(epoch, zeta0=cfg.zeta0, zeta_max=cfg.zeta_max, t_grow=cfg.t_grow, pace=cfg.pace)
    ts = time.perf_counter()
    z = steps["embed"](state.params, x_all)
    t1 = sync(z)
    a = steps["assign"](z, k_assign, jnp.asarray(y_prev), zeta)
    t2 = sync(a)
    y = np.asarray(a["y"])
    v = np.asarray(a["v"])
    _ = (float(a["dc"]), int(np.asarray(a["core"]).sum()))
    if cfg.kmeans_init == "restart":
      y = idcl.alignment(y, y_prev, k)[y]
    t3 = time.perf_counter()
    members = np.flatnonzero(v)
    bs = list(idcl._epoch_batches(k_batch, epoch, members, cfg.batch_size, n))
    t4 = time.perf_counter()
    state, _, _ = idcl._run_steps(steps["train_step"], tr_compiled, tr_timer, state, iter(bs),
                                  x_all, a["p"], a["anchors"], a["anchor_labels"],
                                  a["anchor_w"], key=k_steps)
    t5 = sync(state.params)
    y_prev = y.astype(np.int32)
    for name, dt in zip(parts, (t1 - ts, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - ts)):
      per_epoch[name].append(dt * 1000)
    to = time.perf_counter()   # the shuffle with the set's own length (the older way)
    members[epoch_permutation(k_batch, epoch + 10_000, len(members))]
    old_shuffle.append((time.perf_counter() - to) * 1000)

  def med(xs):
    return round(statistics.median(xs), 2)

  def timed(fn, *a):
    jax.block_until_ready(fn(*a))                         # compile
    out = []
    for _ in range(args.reps):
      tt = time.perf_counter()
      jax.block_until_ready(fn(*a))
      out.append((time.perf_counter() - tt) * 1000)
    return med(out)

  # The assignment pass's parts, one by one, on the last epoch's embedding.
  prev = jnp.asarray(y_prev)
  dc = cutoff_distance(z, k_assign, lam1=cfg.lam1)
  rho = local_density(z, dc)
  counts = jax.ops.segment_sum(jnp.ones_like(z[:, 0]), prev, num_segments=k)
  means = jax.ops.segment_sum(z, prev, num_segments=k) / jnp.maximum(counts, 1.0)[:, None]
  core = density_cores(rho, prev, n_clusters=k, lam2=cfg.lam2)
  w = core.astype(z.dtype)

  def q_fn(z, lab, w):
    return map_row_blocks(lambda zb, _: soft_assignment(core_similarity(
        zb, z, lab, w, n_clusters=k, reduce=cfg.core_reduce)), z)

  assign_parts = {
      "cutoff_distance": timed(jax.jit(lambda z, kk: cutoff_distance(z, kk, lam1=cfg.lam1)),
                               z, k_assign),
      "local_density": timed(jax.jit(local_density), z, dc),
      "lloyd_warm": timed(jax.jit(lambda z, m: lloyd(z, m)), z, means),
      "kmeans_10_restarts": timed(jax.jit(lambda kk, z: kmeans(kk, z, k, n_init=10)), k_assign, z),
      "density_cores": timed(jax.jit(lambda r, lab: density_cores(r, lab, n_clusters=k,
                                                                   lam2=cfg.lam2)), rho, prev),
      "core_similarity_Q": timed(jax.jit(q_fn), z, prev, w),
      "target_P_and_select": timed(jax.jit(lambda q, r, lab: (target_distribution(q), select_easy(
          r, lab, zeta=0.8, n_clusters=k))), q_fn(z, prev, w), rho, prev),
  }
  dev = jax.devices()[0]
  rec = {
      "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                               capture_output=True, text=True).stdout.strip(),
      "date": time.strftime("%Y-%m-%d"), "backend": jax.default_backend(),
      "device": getattr(dev, "device_kind", str(dev)), "host": platform.processor() or platform.machine(),
      "jax": jax.__version__, "dataset": args.dataset, "n": n, "input_shape": list(x_np.shape[1:]),
      "config": overrides, "pretrain_epochs": args.pretrain_epochs, "epochs": args.epochs,
      "command": "python experiments/idcl_epoch_profile.py " + " ".join(argv or sys.argv[1:]),
      "pretrain_s_per_epoch": round(pretrain_s / args.pretrain_epochs, 4),
      "pretrain_epoch_compile_s": round(pre_timer.compile_s, 2),
      "train_step_compile_s": round(tr_timer.compile_s, 2),
      "first_epoch_ms": {name: round(v[0], 1) for name, v in per_epoch.items()},
      "median_epoch_ms": {name: med(v[1:]) for name, v in per_epoch.items()},
      "steps_per_epoch": len(bs),
      "shuffle_by_set_size_ms": med(old_shuffle[1:]),
      "assign_parts_ms": assign_parts,
  }
  print(json.dumps(rec, indent=1))
  if args.out:
    out = Path(args.out)
    recs = json.loads(out.read_text()) if out.exists() else []
    recs.append(rec)
    out.write_text(json.dumps(recs, indent=1) + "\n")


if __name__ == "__main__":
  main()
