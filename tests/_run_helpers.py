"""Shared by the run-directory tests: tiny schedules per method, the CLI in-process, the
documented results.json schema (read from README.md), and small data files."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

#: parameter overrides that make each method's run take seconds (with --epochs 2 and
#: --pretrain-epochs 2 where the method has those stages).
TINY = {
    "kmeans": {"n_init": 2},
    "spectral": {"n_init": 2},
    "idcl": {"hidden": [16, 16, 32], "latent": 4, "batch_size": 64, "kmeans_n_init": 2},
    "ulhe": {"hidden": [16, 16, 32], "latent": 4, "pretrain_batch_size": 64, "batch_size": 64,
             "kmeans_n_init": 2},
    "largemvc": {"kmeans_n_init": 2},
    "mvsib": {"hidden": [16, 16, 32], "latent": 8, "e_w": 1, "e_c": 2, "batch_size": 64, "k": 3,
              "kmeans_n_init": 2},
    "hadis": {"backbone": "cnn", "widths": [8, 16], "proj_hidden": 32, "proj_dim": 16,
              "pred_hidden": 32, "warmup_epochs": 1, "batch_size": 16, "kmeans_n_init": 2,
              "embed_block": 32},
}
TINY_EPOCHS = 2


def cli():
  """experiments/run.py as a module (main(argv) runs the CLI in this process)."""
  spec = importlib.util.spec_from_file_location("run_cli", ROOT / "experiments" / "run.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def tiny_args(method: str, tmp_path: Path) -> list:
  """--config with TINY[method] and tiny --epochs / --pretrain-epochs where they apply."""
  from clustering_jax.api import get_estimator
  cls = get_estimator(method)
  cfg = tmp_path / f"tiny_{method}.json"
  cfg.write_text(json.dumps(TINY.get(method, {})))
  args = ["--config", str(cfg)]
  if cls.epochs_field:
    args += ["--epochs", str(TINY_EPOCHS)]
  if cls.pretrain_epochs_field:
    args += ["--pretrain-epochs", str(TINY_EPOCHS)]
  return args


def blobs_npz(path: Path, *, labels: bool, n: int = 240, d: int = 6, k: int = 3,
              views: int = 1, seed: int = 0) -> Path:
  """k separated Gaussian blobs as an .npz (X, or X0, X1, ...), with or without y."""
  rng = np.random.default_rng(seed)
  y = rng.permutation(np.arange(n) % k)
  x = (rng.normal(0, 5, (k, d))[y] + rng.normal(size=(n, d))).astype(np.float32)
  arrays = ({"X": x} if views == 1 else
            {f"X{v}": (x @ rng.normal(size=(d, d))).astype(np.float32) for v in range(views)})
  if labels:
    arrays["y"] = y
  np.savez(path, **arrays)
  return path


def documented_schema() -> dict:
  """README's results.json table: key -> 'always' | 'with labels' | 'with labels, ...'."""
  text = (ROOT / "README.md").read_text()
  section = text[text.index("## Command line"):]
  section = section[:section.index("\n## ", 5)]
  rows = re.findall(r"^\| `([a-z_0-9]+)` \| ([^|]+?) \|", section, flags=re.M)
  assert rows, "README's Command line section has no results.json table"
  return {k: when.strip() for k, when in rows}


LABEL_FREE_KEYS = {"silhouette", "silhouette_n", "cluster_sizes", "init_silhouette"}


def check_results_schema(r: dict, *, has_init: bool) -> None:
  """results.json has exactly the documented keys for its case, and `epochs` is a dict."""
  schema = documented_schema()
  want = {k for k, when in schema.items() if when == "always"}
  if r["has_labels"]:
    want |= {k for k, when in schema.items() if when == "with labels"}
    if has_init:
      want |= {k for k, when in schema.items() if when.startswith("with labels, ")}
  assert set(r) == want, (sorted(set(r) - want), sorted(want - set(r)))
  assert set(r["label_free"]) == LABEL_FREE_KEYS
  assert isinstance(r["epochs"], dict)
  assert all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in r["epochs"].items())
  assert isinstance(r["schedule"], dict) and isinstance(r["notes"], list)
  for k in ("wall_time_s", "fit_time_s", "score_time_s", "plot_time_s", "total_time_s"):
    assert r[k] >= 0, k
  assert r["total_time_s"] >= r["wall_time_s"]
  check_timing(r)


def check_timing(r: dict) -> None:
  """results.json's timing: the same keys for every method, phases >= 0 that add up to
  total_s, which holds the run's own total."""
  from clustering_jax.experiment import TIMING_KEYS
  t = r["timing"]
  assert list(t) == list(TIMING_KEYS), list(t)
  assert all(isinstance(v, float) and v >= 0 for v in t.values()), t
  parts = sum(v for k, v in t.items() if k != "total_s")
  assert abs(parts - t["total_s"]) <= 0.001 * len(t) + 1e-6, (parts, t)
  assert t["total_s"] >= r["total_time_s"] - 0.01


def check_run_dir(out: Path, *, n: int, k: int, labelled: bool) -> dict:
  """A complete run directory; returns results.json."""
  r = json.loads((out / "results.json").read_text())
  has_init = (out / "init_labels.npy").exists()
  for f in ("config.json", "metrics.jsonl", "labels.npy", "embedding.npy", "embedding_2d.png"):
    assert (out / f).exists(), f
  if has_init:
    assert (out / "init_embedding.npy").exists()
    assert np.load(out / "init_labels.npy").shape == (n,)
  labels = np.load(out / "labels.npy")
  assert labels.shape == (n,) and labels.min() >= 0 and labels.max() < k
  assert np.load(out / "embedding.npy").shape[0] == n
  assert r["has_labels"] is labelled and r["n_samples"] == n and r["n_clusters"] == k
  check_results_schema(r, has_init=has_init)
  lf = r["label_free"]
  assert len(lf["cluster_sizes"]) == k and sum(lf["cluster_sizes"]) == n
  assert lf["cluster_sizes"] == np.bincount(labels, minlength=k).tolist()
  assert lf["silhouette"] is None or -1.0 <= lf["silhouette"] <= 1.0
  assert 0 < lf["silhouette_n"] <= n
  if has_init:
    assert lf["init_silhouette"] is None or -1.0 <= lf["init_silhouette"] <= 1.0
  else:
    assert lf["init_silhouette"] is None
  return r


def fake_deep_estimator(info: dict, *, worse: bool = False):
  """A deep-method stand-in with a pre-training and a main stage that logs losses, reports
  `info` as fit_info_ (each method's form of `epochs`), starts from k-means on the data and
  ends either there or (worse=True) at random labels, a lower silhouette than the start."""
  import dataclasses

  from sklearn.cluster import KMeans

  from clustering_jax.api.base import ClusteringEstimator
  from clustering_jax.methods.base import FitResult

  @dataclasses.dataclass(frozen=True)
  class FakeConfig:
    pretrain_epochs: int = 2
    epochs: int = 3

  class FakeDeep(ClusteringEstimator):
    config_cls = FakeConfig
    epochs_field = "epochs"
    pretrain_epochs_field = "pretrain_epochs"

    def _fit(self, data, key, run):  # data: a Dataset, or the engine's views-only input
      x = np.concatenate([np.asarray(v, np.float32).reshape(len(v), -1) for v in data.views], 1)
      for e in range(self.pretrain_epochs):
        run.log("pretrain", e, {"loss_rec": 1.0 / (e + 1)})
      start = KMeans(int(self.n_clusters), n_init=2, random_state=0).fit_predict(x)
      for e in range(self.epochs):
        run.log("train", e, {"loss": 2.0 / (e + 1)}, labels=start)
      final = (np.random.default_rng(0).integers(0, int(self.n_clusters), len(x)) if worse
               else start)
      return FitResult(labels=final, embedding=x, init_labels=start, init_embedding=x,
                       info=dict(info))

  return FakeDeep
