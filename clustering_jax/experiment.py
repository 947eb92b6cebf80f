"""One experiment run: load data, fit an estimator, score, and write the run directory.

The CLI (experiments/run.py) is a thin wrapper around `run_experiment`; the
benchmark harness starts the CLI in fresh processes. Scoring with ground truth
happens here, after fitting (and in the progress display), never inside training.
Data without labels gets the label-free scores only (silhouette, cluster sizes).
The schema of results.json is documented in README.md ("Command line"), with its `timing`:
the run's wall time split into phases that do not overlap (`TIMING_KEYS`).
"""

from __future__ import annotations

import json
import math
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from clustering_jax import metrics, timing
from clustering_jax.api import available_methods, get_estimator
from clustering_jax.data import DataError, Dataset, load_dataset
from clustering_jax.plots import plot_curves, plot_embedding
from clustering_jax.train.run import Run

SUMMARY_KEYS = ("acc", "nmi", "ari", "purity", "f_measure")
#: methods that model several views separately; every other method concatenates them.
MULTI_VIEW_METHODS = frozenset({"largemvc", "mvsib"})
#: the silhouette is computed on at most this many samples (a seeded sample, the same one for
#: the final model and the starting point), fewer for wide embeddings: m^2 * d <= SIL_BUDGET.
SIL_MAX_SAMPLES = 2000
SIL_MIN_SAMPLES = 300
SIL_BUDGET = 1e10
#: results.json["timing"]: the same keys for every method, seconds that add up to total_s.
TIMING_KEYS = ("startup_s", "load_s", "init_s", "compile_s", "train_s", "readout_s", "eval_s",
               "plots_s", "save_s", "total_s")

__all__ = ["SUMMARY_KEYS", "TIMING_KEYS", "build_estimator", "estimator_params", "format_table",
           "label_free_scores", "load_overrides", "main_error", "normalize_epochs",
           "plot_curves", "plot_embedding", "run_experiment", "schedule", "schedule_help"]


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


def estimator_params(method: str, *, seed: int = 0, epochs: Optional[int] = None,
                     pretrain_epochs: Optional[int] = None, n_clusters: Optional[int] = None,
                     overrides: Optional[dict] = None) -> dict:
  """The estimator's keyword arguments from the CLI's flags and --config overrides, checked
  (names and types) before any data is read. Flags win over the overrides. n_clusters is
  present only when given (by --n-clusters or the overrides); else the data's class count."""
  cls = get_estimator(method)
  params = dict(overrides or {})
  if epochs is not None:
    if cls.epochs_field is None:
      raise ValueError(f"method {method!r} has no training epochs to set (--epochs)")
    params[cls.epochs_field] = int(epochs)
  if pretrain_epochs is not None:
    field = getattr(cls, "pretrain_epochs_field", None)
    if field is None:
      raise ValueError(f"method {method!r} has no pre-training stage (--pretrain-epochs)")
    params[field] = int(pretrain_epochs)
  if n_clusters is not None:
    params["n_clusters"] = n_clusters
  params["random_state"] = seed
  cls.check_params(params)
  return params


def build_estimator(method: str, data: Dataset, *, seed: int, epochs: Optional[int] = None,
                    pretrain_epochs: Optional[int] = None, overrides: Optional[dict] = None):
  """The estimator for `data` (n_clusters from the overrides, else from the data)."""
  params = estimator_params(method, seed=seed, epochs=epochs, pretrain_epochs=pretrain_epochs,
                            overrides=overrides)
  params.setdefault("n_clusters", data.n_clusters)
  return get_estimator(method)(**params)


# ------------------------------------------------------------------------ schedules and epochs
def schedule(est) -> dict:
  """Config field -> epochs requested, for the fields --pretrain-epochs and --epochs set
  ({} for methods without epochs). These are upper bounds: a stop rule may end a stage early."""
  out = {}
  for field in (getattr(est, "pretrain_epochs_field", None), est.epochs_field):
    if field is not None:
      out[field] = int(getattr(est, field))
  return out


def schedule_line(method: str, est) -> str:
  """The one line printed on stderr at the start of a run."""
  sched = schedule(est)
  if not sched:
    return f"schedule: {method} has no training epochs (--epochs / --pretrain-epochs do not apply)"
  names = {getattr(est, "pretrain_epochs_field", None): "pre-training",
           est.epochs_field: "main stage"}
  parts = [f"{names[f]} {v} epochs ({f}, --{'pretrain-' if names[f] == 'pre-training' else ''}"
           f"epochs)" for f, v in sched.items()]
  return f"schedule: {method}: " + ", then ".join(parts) + "; a stop rule may end a stage early"


def schedule_help() -> str:
  """What --epochs and --pretrain-epochs set for each method (for --help)."""
  rows = [("method", "--epochs sets", "--pretrain-epochs sets")]
  for name in available_methods():
    cls = get_estimator(name)
    defaults = cls._config_defaults()
    cell = lambda f: f"{f} (default {defaults[f]})" if f else "- (an error)"
    rows.append((name, cell(cls.epochs_field), cell(getattr(cls, "pretrain_epochs_field", None))))
  w = [max(len(r[i]) for r in rows) for i in range(3)]
  table = "\n".join("  " + "  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip()
                    for r in rows)
  return ("What the epoch flags set, per method (a field of the method's Config; --config\n"
          "can set any field):\n" + table + "\n"
          "--epochs sets the main (clustering) stage, --pretrain-epochs the pre-training before\n"
          "it; '-': the method has no such stage and the flag is an error. A run prints its\n"
          "schedule on stderr (unless --quiet); results.json's `epochs` holds the epochs run\n"
          "per stage.")


def normalize_epochs(info: Optional[dict]) -> dict:
  """fit_info_'s epochs as one shape, stage -> epochs run.

  Accepts every form the methods have used: `epochs` as a dict of stage -> epochs (as is),
  `epochs_per_stage` as that dict (IDCL, whose `epochs` is the clustering stage's count), an
  int `epochs` (one stage, named "train"), or nothing ({}: kmeans, spectral).
  """
  info = info or {}
  for key in ("epochs", "epochs_per_stage"):
    v = info.get(key)
    if isinstance(v, dict):
      return {str(k): int(n) for k, n in v.items()}
  v = info.get("epochs")
  if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
    return {"train": int(v)}
  return {}


# ------------------------------------------------------------------------ scores and notes
def _silhouette(x: np.ndarray, labels: np.ndarray) -> Optional[float]:
  k = len(np.unique(labels))
  if k < 2 or k >= len(labels) or not np.all(np.isfinite(x)):
    return None
  return round(metrics.silhouette(x, labels), 6)


def label_free_scores(embedding: np.ndarray, labels: np.ndarray, n_clusters: int, *,
                      init_embedding: Optional[np.ndarray] = None,
                      init_labels: Optional[np.ndarray] = None, seed: int = 0) -> dict:
  """Scores that need no ground truth.

  silhouette: the silhouette (`silhouette`, Euclidean) of the embedding with the labels, on a seeded
    sample of silhouette_n rows (all rows when n <= SIL_MAX_SAMPLES and the embedding is
    narrow); None when it is undefined (one cluster, or a non-finite embedding).
  init_silhouette: the same for the starting point (init embedding, init labels), on the same
    rows; None for methods without one.
  cluster_sizes: samples per label 0 .. n_clusters - 1.
  """
  labels = np.asarray(labels).reshape(-1)
  n = len(labels)
  x = np.asarray(embedding, np.float32).reshape(n, -1)
  m = min(n, SIL_MAX_SAMPLES, max(SIL_MIN_SAMPLES, int(math.sqrt(SIL_BUDGET / x.shape[1]))))
  rows = (np.sort(np.random.default_rng(seed).choice(n, m, replace=False)) if m < n
          else np.arange(n))
  out = {"silhouette": _silhouette(x[rows], labels[rows]), "silhouette_n": int(len(rows)),
         "cluster_sizes": np.bincount(labels.astype(np.int64),
                                      minlength=int(n_clusters)).tolist(),
         "init_silhouette": None}
  if init_embedding is not None and init_labels is not None:
    x0 = np.asarray(init_embedding, np.float32).reshape(n, -1)
    out["init_silhouette"] = _silhouette(x0[rows], np.asarray(init_labels).reshape(-1)[rows])
  return out


def input_notes(method: str, data: Dataset) -> list:
  """What a method does silently with its input: views concatenated, a mask ignored."""
  notes = []
  if data.n_views > 1 and method not in MULTI_VIEW_METHODS:
    dims = [int(v.shape[1]) for v in data.flat_views()]
    notes.append(
        f"{method} is a single-view method: it concatenated the {data.n_views} views "
        f"({' + '.join(map(str, dims))} features) into one {sum(dims)}-feature vector per "
        f"sample (multi-view methods: {', '.join(sorted(MULTI_VIEW_METHODS))})")
    if data.mask is not None and not data.mask.all():
      notes.append(f"{method} ignores the missing-view mask: it saw every view of every sample")
  return notes


def degradation_note(method: str, scores: dict) -> Optional[str]:
  """A note when the final model scores below its own start by the silhouette."""
  s, s0 = scores.get("silhouette"), scores.get("init_silhouette")
  if s is None or s0 is None or not s < s0:
    return None
  return (f"{method}'s final model scores below its own start by a label-free measure: "
          f"silhouette {s:.4f} against {s0:.4f} for the starting point (init_labels.npy, "
          f"init_embedding.npy; the same {scores['silhouette_n']} samples)")


def _note(msg: str) -> None:
  print(f"note: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ the run
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


def append_json(path, record) -> None:
  """Appends record to the JSON list in path (a new file when absent): a measurement log."""
  path = Path(path)
  write_json(path, (json.loads(path.read_text()) if path.exists() else []) + [record])


class _Laps:
  """Consecutive windows of a run on the `timing.now()` clock: each lap's seconds without
  the JAX compile work inside it, which is summed apart (compile_s)."""

  def __init__(self, t: float):
    self.t, self.compile_s = t, 0.0

  def lap(self) -> float:
    t = timing.now()
    c = timing.compile_seconds(self.t, t)
    out, self.t = t - self.t - c, t
    self.compile_s += c
    return out


def fit_split(fit_s: float, info: dict) -> dict:
  """A fit's compile-free seconds fit_s as init_s, train_s, readout_s and save_s, from the
  method's fit_info_["phases"] (`train.engine.timing_info`): train, read-out and checkpoint
  seconds as the method measured them, init the rest (input preparation and the starting
  point). A method without phases (kmeans, spectral: no training) is all read-out."""
  ph = info.get("phases") or {}
  if not isinstance(ph, dict) or ph.get("readout_s") is None:
    return {"init_s": 0.0, "train_s": 0.0, "readout_s": fit_s, "save_s": 0.0}
  part = {k: min(float(ph.get(k) or 0.0), fit_s) for k in ("train_s", "readout_s", "save_s")}
  return {"init_s": max(fit_s - sum(part.values()), 0.0), **part}


def run_experiment(method: str, dataset: str, *, out: str, seed: int = 0,
                   data_dir: Optional[str] = None, epochs: Optional[int] = None,
                   pretrain_epochs: Optional[int] = None, n_clusters: Optional[int] = None,
                   overrides: Optional[dict] = None, quiet: bool = True,
                   checkpoint_every: int = 0, download: bool = False,
                   max_samples: Optional[int] = None, missing_rate: float = 0.0,
                   argv: Optional[list] = None, started: Optional[float] = None) -> dict:
  """Runs one method on one dataset and writes the run directory `out`. Returns results.

  n_clusters (--n-clusters, else `n_clusters` in the overrides) overrides the data's class
  count, and is required for data without labels. Parameters are checked, the data loaded
  and the estimator built before the run directory is made; a validation error that ends
  fit before its first epoch removes the directory again if this run made it.
  started: when the process started (a `timing.now()` stamp, the CLI's); the seconds from
  it to this call are results.json's timing.startup_s (0 without).
  """
  import jax
  t_run = timing.now()
  t0 = time.perf_counter()
  laps = _Laps(t_run)
  params = estimator_params(method, seed=seed, epochs=epochs, pretrain_epochs=pretrain_epochs,
                            n_clusters=n_clusters, overrides=overrides)
  try:
    data = load_dataset(dataset, data_dir, download=download, max_samples=max_samples,
                        n_clusters=params.get("n_clusters"))
  except DataError as e:
    if params.get("n_clusters") is None and "no labels" in str(e):
      raise DataError(f"{e} (on the command line: --n-clusters K)") from None
    raise
  if missing_rate:
    from clustering_jax.data.missing import simulate_missing
    mask = simulate_missing(seed, data.n_samples, data.n_views, missing_rate)
    data = data.replace(mask=np.asarray(mask, bool))
  params.setdefault("n_clusters", data.n_clusters)
  est = get_estimator(method)(**params)
  validate = getattr(est.config, "validate", None)
  if callable(validate):
    validate()
  notes = input_notes(method, data)
  if not quiet:
    print(schedule_line(method, est), file=sys.stderr, flush=True)
  for msg in notes:
    _note(msg)

  out_dir = Path(out)
  made_dir = not out_dir.exists()
  out_dir.mkdir(parents=True, exist_ok=True)
  command = "python experiments/run.py " + " ".join(shlex.quote(a) for a in (argv or []))
  write_json(out_dir / "config.json", {
      "method": method, "dataset": dataset, "seed": seed, "data_dir": data_dir,
      "epochs": epochs, "pretrain_epochs": pretrain_epochs, "n_clusters": n_clusters,
      "missing_rate": missing_rate, "max_samples": max_samples,
      "params": est.get_params(), "command": command})
  y = data.labels
  score_fn = None
  if y is not None:
    score_fn = lambda pred: {"acc": metrics.accuracy(y, pred), "nmi": metrics.nmi(y, pred)}
  # A fresh metrics log per invocation, unless resuming from checkpoints.
  if (out_dir / "metrics.jsonl").exists() and not (out_dir / "checkpoints").exists():
    (out_dir / "metrics.jsonl").unlink()
  run = Run(out_dir, quiet=quiet, checkpoint_every=checkpoint_every, score_fn=score_fn)
  load_s = laps.lap()
  t_fit = time.perf_counter()
  try:
    est.fit(data, run=run)
  except (ValueError, TypeError):
    # A validation error before the first epoch: leave no half-made run directory.
    if made_dir and not run.history:
      run.close()
      shutil.rmtree(out_dir, ignore_errors=True)
    raise
  finally:
    t_close = time.perf_counter()
    run.close()                     # waits for checkpoint writes
    close_s = time.perf_counter() - t_close
  fit_s = time.perf_counter() - t_fit
  wall = time.perf_counter() - t0
  info = dict(getattr(est, "fit_info_", {}) or {})
  split = fit_split(max(laps.lap() - close_s, 0.0), info)
  split["save_s"] += close_s

  t_score = time.perf_counter()
  results = {"method": method, "dataset": data.name, "seed": seed,
             "n_samples": data.n_samples, "n_clusters": data.n_clusters,
             "n_views": data.n_views, "has_labels": y is not None}
  if y is not None:
    results.update(metrics.score(y, est.labels_))
    if est.init_labels_ is not None:
      results["init"] = metrics.score(y, est.init_labels_)
  scores = label_free_scores(est.embedding_, est.labels_, data.n_clusters,
                             init_embedding=est.init_embedding_, init_labels=est.init_labels_,
                             seed=seed)
  worse = degradation_note(method, scores)
  if worse:
    notes.append(worse)
    _note(worse)
  score_s = time.perf_counter() - t_score
  eval_s = laps.lap()

  np.save(out_dir / "labels.npy", np.asarray(est.labels_))
  np.save(out_dir / "embedding.npy", np.asarray(est.embedding_, np.float32))
  if est.init_labels_ is not None:
    np.save(out_dir / "init_labels.npy", np.asarray(est.init_labels_))
  if est.init_embedding_ is not None:
    np.save(out_dir / "init_embedding.npy", np.asarray(est.init_embedding_, np.float32))
  split["save_s"] += laps.lap()
  t_plot = time.perf_counter()
  try:
    plot_embedding(out_dir / "embedding_2d.png", est.embedding_, est.labels_,
                   f"{method} on {data.name}: 2-D PCA of the final embedding", true_labels=y)
    plot_curves(out_dir / "loss_curves.png", run.history)
  except Exception as e:  # a figure is not worth the run's results
    msg = f"plotting failed ({type(e).__name__}: {e}); the run's other files are complete"
    notes.append(msg)
    _note(msg)
  plot_s = time.perf_counter() - t_plot
  plots_s = laps.lap()

  results.update({
      "label_free": scores,
      "n_predicted_clusters": int(len(np.unique(est.labels_))),
      "epochs": normalize_epochs(info),
      "schedule": schedule(est),
      "notes": notes,
      "wall_time_s": round(wall, 3),
      "fit_time_s": round(fit_s, 3),
      "score_time_s": round(score_s, 3),
      "plot_time_s": round(plot_s, 3),
      "total_time_s": round(time.perf_counter() - t0, 3),
      "jax_backend": jax.default_backend(),
      "device_count": jax.device_count(),
      "missing_rate": missing_rate,
      "info": info,
      "python": platform.python_version(), "jax_version": jax.__version__,
      "command": command,
  })
  split["save_s"] += laps.lap()     # the rest, up to writing results.json
  started = t_run if started is None else min(started, t_run)
  t = {"startup_s": t_run - started, "load_s": load_s, "init_s": split["init_s"],
       "compile_s": laps.compile_s, "train_s": split["train_s"],
       "readout_s": split["readout_s"], "eval_s": eval_s, "plots_s": plots_s,
       "save_s": split["save_s"], "total_s": laps.t - started}
  results["timing"] = {k: round(t[k], 3) for k in TIMING_KEYS}
  write_json(out_dir / "results.json", results)
  return results


def format_table(results: dict) -> str:
  """The final metrics table printed by the CLI."""
  has_init = "init" in results or results["label_free"]["init_silhouette"] is not None
  rows = [("", "final") + (("init",) if has_init else ())]
  for k in SUMMARY_KEYS:
    if k in results:
      rows.append((k, f"{results[k]:.4f}") +
                  ((f"{results['init'][k]:.4f}",) if "init" in results else ()))
  lf = results["label_free"]
  fmt = lambda v: "-" if v is None else f"{v:.4f}"
  rows.append(("silhouette", fmt(lf["silhouette"])) +
              ((fmt(lf["init_silhouette"]),) if has_init else ()))
  for k in ("wall_time_s", "plot_time_s"):
    rows.append((k, f"{results[k]:.1f}") + (("",) if has_init else ()))
  w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  head = (f"{results['method']} on {results['dataset']} (seed {results['seed']}, "
          f"n={results['n_samples']}, k={results['n_clusters']}, {results['jax_backend']}"
          f"{'' if results['has_labels'] else ', no labels'})")
  return head + "\n" + "\n".join("  ".join(c.rjust(w[i]) for i, c in enumerate(r)) for r in rows)


def main_error(msg: str, code: int = 2):
  print(f"error: {msg}", file=sys.stderr)
  raise SystemExit(code)
