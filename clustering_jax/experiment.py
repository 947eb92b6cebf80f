"""One experiment run: load data, fit an estimator, score, and write the run directory.

The CLI (experiments/run.py) is a thin wrapper around `run_experiment`; the
benchmark harness starts the CLI in fresh processes. Scoring with ground truth
happens here, after fitting (and in the progress display), never inside training.
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from clustering_jax import metrics
from clustering_jax.api import get_estimator
from clustering_jax.data import Dataset, load_dataset
from clustering_jax.train.run import Run

SUMMARY_KEYS = ("acc", "nmi", "ari", "purity", "f_measure")


def load_overrides(path: Optional[str]) -> dict:
  """Reads a JSON or YAML file of estimator parameter overrides."""
  if not path:
    return {}
  p = Path(path)
  if not p.exists():
    raise FileNotFoundError(f"config file not found: {path}")
  text = p.read_text()
  if p.suffix.lower() in (".yaml", ".yml"):
    import yaml
    out = yaml.safe_load(text) or {}
  else:
    try:
      out = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f"config file {path} is not valid JSON: {e}") from None
  if not isinstance(out, dict):
    raise ValueError(f"config file {path} must hold a mapping of parameter -> value")
  return out


def build_estimator(method: str, data: Dataset, *, seed: int, epochs: Optional[int] = None,
                    overrides: Optional[dict] = None):
  cls = get_estimator(method)
  params = dict(overrides or {})
  if epochs is not None:
    if cls.epochs_field is None:
      raise ValueError(f"method {method!r} has no training epochs to set (--epochs)")
    params[cls.epochs_field] = int(epochs)
  params.setdefault("n_clusters", data.n_clusters)
  return cls(random_state=seed, **params)


def _json_default(o):
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  if isinstance(o, Path):
    return str(o)
  return repr(o)


def write_json(path: Path, obj) -> None:
  path.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def plot_embedding(path: Path, embedding: np.ndarray, labels: np.ndarray, title: str) -> None:
  """2-D PCA projection of the learned representation, colored by cluster."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  e = np.asarray(embedding, np.float64).reshape(len(embedding), -1)
  e = e - e.mean(axis=0)
  if e.shape[1] > 2:
    _, _, vt = np.linalg.svd(e[:: max(1, len(e) // 5000)], full_matrices=False)
    e = e @ vt[:2].T
  elif e.shape[1] == 1:
    e = np.concatenate([e, np.zeros_like(e)], axis=1)
  fig, ax = plt.subplots(figsize=(5, 5))
  ax.scatter(e[:, 0], e[:, 1], c=labels, s=3, cmap="tab10" if labels.max() < 10 else "tab20")
  ax.set_title(title)
  ax.set_xticks([])
  ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_curves(path: Path, history: list) -> bool:
  """Loss curves per stage from the per-epoch log; False when there is nothing to plot."""
  stages = {}
  for row in history:
    for k, v in row.items():
      if "loss" in k and isinstance(v, (int, float)):
        stages.setdefault(row["stage"], {}).setdefault(k, []).append((row["epoch"], v))
  if not stages:
    return False
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.5), squeeze=False)
  for ax, (stage, terms) in zip(axes[0], stages.items()):
    for k, pts in terms.items():
      ax.plot(*zip(*pts), label=k)
    ax.set_title(stage)
    ax.set_xlabel("epoch")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def run_experiment(method: str, dataset: str, *, out: str, seed: int = 0,
                   data_dir: Optional[str] = None, epochs: Optional[int] = None,
                   overrides: Optional[dict] = None, quiet: bool = True,
                   checkpoint_every: int = 0, download: bool = False,
                   max_samples: Optional[int] = None, missing_rate: float = 0.0,
                   argv: Optional[list] = None) -> dict:
  """Runs one method on one dataset and writes the run directory `out`. Returns results."""
  import jax
  t0 = time.perf_counter()
  data = load_dataset(dataset, data_dir, download=download, max_samples=max_samples)
  if missing_rate:
    from clustering_jax.data.missing import simulate_missing
    mask = simulate_missing(seed, data.n_samples, data.n_views, missing_rate)
    data = data.replace(mask=np.asarray(mask, bool))
  est = build_estimator(method, data, seed=seed, epochs=epochs, overrides=overrides)
  out_dir = Path(out)
  out_dir.mkdir(parents=True, exist_ok=True)
  command = "python experiments/run.py " + " ".join(shlex.quote(a) for a in (argv or []))
  write_json(out_dir / "config.json", {
      "method": method, "dataset": dataset, "seed": seed, "data_dir": data_dir,
      "epochs": epochs, "missing_rate": missing_rate, "max_samples": max_samples,
      "params": est.get_params(), "command": command})
  y = data.labels
  score_fn = None
  if y is not None:
    score_fn = lambda pred: {"acc": metrics.accuracy(y, pred), "nmi": metrics.nmi(y, pred)}
  # A fresh metrics log per invocation, unless resuming from checkpoints.
  if (out_dir / "metrics.jsonl").exists() and not (out_dir / "checkpoints").exists():
    (out_dir / "metrics.jsonl").unlink()
  run = Run(out_dir, quiet=quiet, checkpoint_every=checkpoint_every, score_fn=score_fn)
  try:
    est.fit(data, run=run)
  finally:
    run.close()
  wall = time.perf_counter() - t0
  results = {"method": method, "dataset": data.name, "seed": seed,
             "n_samples": data.n_samples, "n_clusters": data.n_clusters,
             "n_views": data.n_views}
  if y is not None:
    results.update(metrics.score(y, est.labels_))
    if est.init_labels_ is not None:
      results["init"] = metrics.score(y, est.init_labels_)
  info = dict(getattr(est, "fit_info_", {}) or {})
  results.update({
      "epochs": info.get("epochs", epochs),
      "wall_time_s": round(wall, 3),
      "jax_backend": jax.default_backend(),
      "device_count": jax.device_count(),
      "missing_rate": missing_rate,
      "n_predicted_clusters": int(len(np.unique(est.labels_))),
      "info": info,
      "python": platform.python_version(), "jax_version": jax.__version__,
      "command": command,
  })
  np.save(out_dir / "labels.npy", np.asarray(est.labels_))
  np.save(out_dir / "embedding.npy", np.asarray(est.embedding_, np.float32))
  if est.init_labels_ is not None:
    np.save(out_dir / "init_labels.npy", np.asarray(est.init_labels_))
  if est.init_embedding_ is not None:
    np.save(out_dir / "init_embedding.npy", np.asarray(est.init_embedding_, np.float32))
  write_json(out_dir / "results.json", results)
  plot_embedding(out_dir / "embedding_2d.png", est.embedding_, est.labels_,
                 f"{method} on {data.name}: final clusters (PCA of embedding)")
  plot_curves(out_dir / "loss_curves.png", run.history)
  return results


def format_table(results: dict) -> str:
  """The final metrics table printed by the CLI."""
  rows = [("", "final") + (("init",) if "init" in results else ())]
  for k in SUMMARY_KEYS:
    if k in results:
      rows.append((k, f"{results[k]:.4f}") +
                  ((f"{results['init'][k]:.4f}",) if "init" in results else ()))
  rows.append(("wall_time_s", f"{results['wall_time_s']:.1f}") + (("",) if "init" in results else ()))
  w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  head = f"{results['method']} on {results['dataset']} (seed {results['seed']}, n={results['n_samples']}, k={results['n_clusters']}, {results['jax_backend']})"
  return head + "\n" + "\n".join("  ".join(c.rjust(w[i]) for i, c in enumerate(r)) for r in rows)


def main_error(msg: str, code: int = 2):
  print(f"error: {msg}", file=sys.stderr)
  raise SystemExit(code)
