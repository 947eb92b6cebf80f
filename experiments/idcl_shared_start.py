"""IDCL's clustering stage from one shared pre-trained state, on whichever code is importable.

Two modes, each a fresh process:

  pretrain: fits IDCL's pre-training only (`epochs=0`) and pickles the final pre-training
    state (params and Adam's count, mu, nu) to --state.
  cluster: fits IDCL with pre-training replaced by that state (the Run hands it back as the
    "pretrain" checkpoint at the stage's last epoch), runs the clustering stage and writes the
    per-epoch log, the labels and the scores to --out.

  compare: two `cluster` outputs (--a, --b; per-epoch log agreement and equal final labels)
    or two `pretrain` pickles (largest parameter difference).

Run `cluster` (or `pretrain`) once per code version (PYTHONPATH=<checkout>), then `compare`:
equal logs mean the two versions compute the same clustering stage. The labels are scored
after the fit only; they never reach it.

  python experiments/idcl_shared_start.py pretrain --seed 0 --state /tmp/idcl_s0.pkl
  PYTHONPATH=<old checkout> python experiments/idcl_shared_start.py cluster --seed 0 \
      --state /tmp/idcl_s0.pkl --out /tmp/old_s0.json
  python experiments/idcl_shared_start.py compare --a /tmp/new_s0.json --b /tmp/old_s0.json
"""

from __future__ import annotations

import argparse
import json
import pickle
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clustering_jax.api import IDCL
from clustering_jax.data import load_dataset
from clustering_jax.metrics import accuracy, nmi
from clustering_jax.train.run import Run


def _adam(opt_state):
  return next(s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(
      s, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState))


class CaptureRun(Run):
  """Keeps the pre-training state of the stage's last epoch in memory."""

  def __init__(self, last_epoch: int):
    super().__init__(None, quiet=True)
    self.last_epoch, self.captured = last_epoch, None

  def save(self, stage, epoch, state, *, force=False):
    if stage == "pretrain" and epoch == self.last_epoch:
      adam = _adam(state.opt_state)
      self.captured = {"params": jax.device_get(state.params), "count": int(adam.count),
                       "mu": jax.device_get(adam.mu), "nu": jax.device_get(adam.nu)}
    return False


class SharedStartRun(Run):
  """Hands back a pickled pre-training state as the "pretrain" checkpoint at its last epoch,
  shaped like the template the running code passes (its own state classes)."""

  def __init__(self, saved: dict, pretrain_epochs: int):
    super().__init__(None, quiet=True)
    self.saved, self.pretrain_epochs = saved, pretrain_epochs

  def restore(self, stage, like):
    if stage != "pretrain":
      return None
    s = self.saved
    adam = optax.ScaleByAdamState(count=jnp.asarray(s["count"], jnp.int32),
                                  mu=jax.tree.map(jnp.asarray, s["mu"]),
                                  nu=jax.tree.map(jnp.asarray, s["nu"]))

    def swap(node):  # Adam's state replaced; a schedule's count set to Adam's
      if isinstance(node, optax.ScaleByAdamState):
        return adam
      if isinstance(node, optax.ScaleByScheduleState):
        return optax.ScaleByScheduleState(count=jnp.asarray(s["count"], jnp.int32))
      return node

    is_state = lambda n: isinstance(n, (optax.ScaleByAdamState, optax.ScaleByScheduleState))
    opt_state = jax.tree.map(swap, like.opt_state, is_leaf=is_state)
    params = jax.tree.map(jnp.asarray, s["params"])
    if hasattr(like, "_replace"):   # a NamedTuple state
      state = like._replace(params=params, opt_state=opt_state)
    else:
      state = like.replace(params=params, opt_state=opt_state,
                           step=jnp.asarray(s["count"], jnp.int32))
    return state, self.pretrain_epochs


LOGGED = ("loss", "loss_rec", "loss_kl", "label_change", "n_curriculum", "dc", "n_core")


def compare(a_path: str, b_path: str) -> dict:
  """Agreement of two `cluster` outputs (JSON) or two `pretrain` states (pickles)."""
  if a_path.endswith(".json"):
    with open(a_path) as fa, open(b_path) as fb:
      a, b = json.load(fa), json.load(fb)
    pairs = list(zip(a["log"], b["log"]))
    rel = {k: max((abs(x[k] - y[k]) / max(abs(y[k]), 1e-12) for x, y in pairs
                   if k in x and k in y), default=None) for k in LOGGED}
    return {"epochs": [a["epochs_run"], b["epochs_run"]],
            "final_labels_identical": a["labels"] == b["labels"],
            "acc": [a["acc"], b["acc"]], "start_acc": [a["init_acc"], b["init_acc"]],
            "epochs_logged_identical_per_metric": {
                k: sum(x.get(k) == y.get(k) for x, y in pairs) for k in LOGGED},
            "max_relative_difference_per_metric": rel}
  with open(a_path, "rb") as fa, open(b_path, "rb") as fb:
    a, b = pickle.load(fa), pickle.load(fb)
  diffs = [float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
           for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]))]
  return {"adam_steps": [a["count"], b["count"]], "max_param_difference": max(diffs)}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("mode", choices=("pretrain", "cluster", "compare"))
  p.add_argument("--dataset", default="digits")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--state", help="pickle of the pre-training state (pretrain, cluster)")
  p.add_argument("--a", help="compare: a cluster output (.json) or a pre-training pickle")
  p.add_argument("--b", help="compare: the other one, of the same kind")
  p.add_argument("--out", help="cluster: JSON of the clustering stage's log and scores")
  p.add_argument("--pretrain-epochs", type=int, default=1000)
  p.add_argument("--epochs", type=int, default=200)
  a = p.parse_args(argv)
  if a.mode == "compare":
    if not (a.a and a.b):
      p.error("compare needs --a and --b")
    print(json.dumps(compare(a.a, a.b), indent=1))
    return
  if not a.state:
    p.error(f"{a.mode} needs --state")
  data = load_dataset(a.dataset)
  k = int(data.n_clusters)
  t0 = time.perf_counter()
  if a.mode == "pretrain":
    run = CaptureRun(a.pretrain_epochs - 1)
    IDCL(n_clusters=k, random_state=a.seed, pretrain_epochs=a.pretrain_epochs,
         epochs=0).fit(data, run=run)
    with open(a.state, "wb") as f:
      pickle.dump(run.captured, f)
    print(f"pre-training state after {a.pretrain_epochs} epochs -> {a.state} "
          f"({time.perf_counter() - t0:.0f} s)")
    return
  with open(a.state, "rb") as f:
    saved = pickle.load(f)
  run = SharedStartRun(saved, a.pretrain_epochs)
  est = IDCL(n_clusters=k, random_state=a.seed, pretrain_epochs=a.pretrain_epochs,
             epochs=a.epochs).fit(data, run=run)
  y = np.asarray(data.labels)
  log = [{k2: v for k2, v in r.items() if k2 not in ("time_s",)} for r in run.history
         if r.get("stage") == "train"]
  out = {"seed": a.seed, "state": a.state, "epochs_run": len(log),
         "init_acc": float(accuracy(y, est.init_labels_)),
         "acc": float(accuracy(y, est.labels_)), "nmi": float(nmi(y, est.labels_)),
         "labels": np.asarray(est.labels_).tolist(), "log": log,
         "seconds": round(time.perf_counter() - t0, 1)}
  with open(a.out, "w") as f:
    json.dump(out, f)
  print(f"seed {a.seed}: start {out['init_acc']:.4f} -> final {out['acc']:.4f} "
        f"({out['epochs_run']} epochs, {out['seconds']} s)")


if __name__ == "__main__":
  main()
