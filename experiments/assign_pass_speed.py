#!/usr/bin/env python
"""Times the pieces of IDCL's per-epoch assignment pass (d_c, Eq. 1 density, 10-restart k-means,
density cores, Eq. 10-11) on random 10-d embeddings, and writes one JSON record per code tree.

  python experiments/assign_pass_speed.py --out docs/results/assign_pass_speed.json
  # the same timings for another checkout's package, e.g. commit 56fc41b:
  git worktree add /tmp/old 56fc41b
  python experiments/assign_pass_speed.py --code /tmp/old --out docs/results/assign_pass_speed.json

Without --code the installed package is timed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--code", default=None,
                 help="another checkout whose clustering_jax is timed (default: the installed one)")
  p.add_argument("--sizes", type=int, nargs="+", default=[1797, 10000])
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--out", default=None, help="JSON list to append the record to")
  args = p.parse_args(argv)
  if args.code:  # time that checkout's package instead of the installed one
    sys.path.insert(0, args.code)
  import jax
  import jax.numpy as jnp
  import numpy as np
  from clustering_jax.ops.assignment import core_similarity, soft_assignment
  from clustering_jax.ops.density import cutoff_distance, density_cores, local_density
  from clustering_jax.ops.kmeans import kmeans

  def timed(fn, *a):
    jax.block_until_ready(fn(*a))                         # compile
    t0 = time.perf_counter()
    for _ in range(args.reps):
      out = jax.block_until_ready(fn(*a))
    return out, round((time.perf_counter() - t0) / args.reps * 1000, 1)

  code = args.code or str(ROOT)
  rec = {"code": code, "commit": subprocess.run(
      ["git", "-C", code, "rev-parse", "--short", "HEAD"], capture_output=True,
      text=True).stdout.strip(), "jax": jax.__version__, "backend": jax.default_backend(),
      "ms": {}}
  for n in args.sizes:
    z = jnp.asarray(np.random.default_rng(0).normal(size=(n, 10)).astype(np.float32))
    key = jax.random.key(0)
    ms = {}
    dc, ms["cutoff_distance"] = timed(jax.jit(lambda z, k: cutoff_distance(z, k, lam1=0.02)), z, key)
    rho, ms["local_density"] = timed(jax.jit(local_density), z, dc)
    km, ms["kmeans_10_restarts"] = timed(jax.jit(lambda k, z: kmeans(k, z, 10, n_init=10)), key, z)
    core, ms["density_cores"] = timed(
        jax.jit(lambda r, lab: density_cores(r, lab, n_clusters=10, lam2=0.05)), rho, km.labels)
    _, ms["core_similarity_Q"] = timed(jax.jit(lambda z, lab, w: soft_assignment(core_similarity(
        z, z, lab, w, n_clusters=10, reduce="mean"))), z, km.labels, core.astype(z.dtype))
    rec["ms"][str(n)] = ms
    print(n, ms)
  if args.out:
    out = Path(args.out)
    recs = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(recs + [rec], indent=1) + "\n")


if __name__ == "__main__":
  main()
