"""results.json has one documented shape for every method; `epochs` is stage -> epochs run."""

import json

import numpy as np
import pytest
from _run_helpers import (ROOT, TINY, TINY_EPOCHS, blobs_npz, check_results_schema,
                          check_run_dir, check_timing, documented_schema, fake_deep_estimator)

from clustering_jax import experiment, metrics, timing
from clustering_jax.api import available_methods, get_estimator
from clustering_jax.train.engine import PHASES


@pytest.mark.parametrize("info, want", [
    ({"epochs": {"pretrain": 2, "cluster": 5}}, {"pretrain": 2, "cluster": 5}),       # ULHE
    ({"epochs": 3, "epochs_per_stage": {"pretrain": 2, "train": 3}},
     {"pretrain": 2, "train": 3}),                                                    # IDCL now
    ({"epochs": {"pretrain": 2, "train": 3}, "epochs_per_stage": {"pretrain": 2, "train": 3}},
     {"pretrain": 2, "train": 3}),                                  # after the shared engine
    ({"epochs": 4}, {"train": 4}),                                                    # LargeMvC
    ({"epochs": np.int64(4)}, {"train": 4}),
    ({"inertia": 1.0}, {}), ({}, {}), (None, {}),                                     # baselines
])
def test_normalize_epochs_accepts_every_form(info, want):
  got = experiment.normalize_epochs(info)
  assert got == want and all(type(v) is int for v in got.values())


def test_schema_table_is_in_the_readme():
  schema = documented_schema()
  assert schema["epochs"] == "always" and schema["acc"] == "with labels"
  assert schema["init"].startswith("with labels, ")
  for k in ("label_free", "notes", "plot_time_s", "schedule", "has_labels", "timing"):
    assert schema[k] == "always", k


@pytest.mark.parametrize("info, labelled", [
    ({"epochs": 3, "epochs_per_stage": {"pretrain": 2, "train": 3}}, True),
    ({"epochs": {"pretrain": 2, "train": 3}}, False),
    ({"epochs": 3}, True)])
def test_one_shape_whatever_form_the_method_reports(tmp_path, monkeypatch, info, labelled):
  monkeypatch.setattr(experiment, "get_estimator", lambda name: fake_deep_estimator(info))
  data = blobs_npz(tmp_path / "d.npz", labels=labelled)
  out = tmp_path / "run"
  r = experiment.run_experiment("fake", str(data), out=str(out), n_clusters=3,
                                pretrain_epochs=2, epochs=3)
  assert r == json.loads((out / "results.json").read_text())
  check_run_dir(out, n=240, k=3, labelled=labelled)
  assert r["epochs"] == ({"train": 3} if info == {"epochs": 3} else {"pretrain": 2, "train": 3})
  assert r["schedule"] == {"pretrain_epochs": 2, "epochs": 3}
  assert ("init" in r) is labelled and (out / "loss_curves.png").exists()


def _data_for(method, tmp_path):
  if get_estimator(method).accepts == "image":
    rng = np.random.default_rng(0)
    path = tmp_path / "img.npz"
    np.savez(path, X=rng.random((120, 8, 8, 1)).astype(np.float32), y=np.arange(120) % 3)
    return str(path)
  return "blobs"


@pytest.mark.parametrize("method", [
    m if m == "kmeans" else pytest.param(m, marks=pytest.mark.slow) for m in available_methods()])
def test_every_registered_method_writes_the_documented_schema(tmp_path, method):
  cls = get_estimator(method)
  out = tmp_path / "run"
  r = experiment.run_experiment(
      method, _data_for(method, tmp_path), out=str(out), overrides=TINY.get(method, {}),
      epochs=TINY_EPOCHS if cls.epochs_field else None,
      pretrain_epochs=TINY_EPOCHS if cls.pretrain_epochs_field else None)
  has_init = (out / "init_labels.npy").exists()
  check_results_schema(r, has_init=has_init)      # timing: the same keys for every method
  assert r["has_labels"] and ("init" in r) is has_init
  t = r["timing"]
  assert t["startup_s"] == 0.0 and t["total_s"] > 0 and t["readout_s"] > 0
  if cls.epochs_field is None:
    assert r["epochs"] == {} and r["schedule"] == {}
    assert t["init_s"] == t["train_s"] == 0.0       # a baseline's fit is all read-out
  else:
    assert r["epochs"] and sum(r["epochs"].values()) <= 2 * TINY_EPOCHS
    assert r["schedule"][cls.epochs_field] == TINY_EPOCHS
    phases = r["info"]["phases"]                    # the method's own split (train.engine)
    assert list(phases) == list(PHASES) and t["train_s"] > 0
    assert t["train_s"] == pytest.approx(phases["train_s"], abs=1e-3)
    assert t["readout_s"] == pytest.approx(phases["readout_s"], abs=1e-3)


def test_fit_split_takes_the_methods_phases_and_gives_init_the_rest():
  ph = {"init_s": None, "compile_s": None, "train_s": 6.0, "readout_s": 1.0, "save_s": 0.5}
  assert experiment.fit_split(10.0, {"phases": ph}) == {
      "init_s": 2.5, "train_s": 6.0, "readout_s": 1.0, "save_s": 0.5}
  for info in ({}, {"inertia": 1.0}, {"phases": None}):     # baselines: all read-out
    assert experiment.fit_split(3.0, info) == {
        "init_s": 0.0, "train_s": 0.0, "readout_s": 3.0, "save_s": 0.0}
  # never negative, never above the fit (a method's clock and the caller's differ slightly)
  over = {**ph, "train_s": 12.0}
  got = experiment.fit_split(10.0, {"phases": over})
  assert got["init_s"] == 0.0 and got["train_s"] == 10.0


@pytest.mark.slow
def test_timing_phases_add_up_to_the_total_and_startup_counts_from_started(tmp_path):
  data = blobs_npz(tmp_path / "d.npz", labels=True)
  started = timing.now() - 1.5                      # as if the process started 1.5 s ago
  r = experiment.run_experiment("kmeans", str(data), out=str(tmp_path / "run"), n_clusters=3,
                                overrides=TINY["kmeans"], started=started)
  check_timing(r)
  t = r["timing"]
  assert 1.5 <= t["startup_s"] < 1.5 + 0.5 and t["total_s"] >= t["startup_s"] + r["total_time_s"]
  assert t["load_s"] > 0 and t["eval_s"] > 0 and t["plots_s"] > 0


def test_readme_lists_the_run_flags():
  text = (ROOT / "README.md").read_text()
  section = text[text.index("## Command line"):text.index("## Data")]
  for flag in ("--n-clusters", "--pretrain-epochs", "--epochs", "plot_time_s",
               "--no-compile-cache", *experiment.TIMING_KEYS):
    assert flag in section, flag


@pytest.mark.parametrize("n, d, k", [(60, 3, 4), (200, 7, 2), (31, 2, 30)])
def test_silhouette_equals_scikit_learns(n, d, k):
  from sklearn.metrics import silhouette_score
  rng = np.random.default_rng(n)
  y = np.r_[np.arange(k), rng.integers(0, k, n - k)]          # every cluster, some singletons
  x = (rng.normal(size=(n, d)) + 3.0 * rng.normal(size=(k, d))[y]).astype(np.float32)
  assert metrics.silhouette(x, y + 5) == pytest.approx(silhouette_score(x, y), abs=1e-6)
