"""Clustering your own data: an .npz without labels, --n-clusters, complete run directories."""

import json
import subprocess
import sys

import pytest
from _run_helpers import ROOT, blobs_npz, check_run_dir, cli, tiny_args

from clustering_jax.api import available_methods, get_estimator
from clustering_jax.experiment import SUMMARY_KEYS

VECTOR_METHODS = [m for m in available_methods() if get_estimator(m).accepts != "image"]


@pytest.mark.slow
def test_kmeans_clusters_an_unlabelled_npz_from_the_command_line(tmp_path):
  data = blobs_npz(tmp_path / "mine.npz", labels=False)
  out = tmp_path / "run"
  p = subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), "--method", "kmeans",
                      "--dataset", str(data), "--n-clusters", "3", "--out", str(out), "--quiet"],
                     cwd=ROOT, text=True, capture_output=True, timeout=300)
  assert p.returncode == 0, p.stderr
  assert "silhouette" in p.stdout and "no labels" in p.stdout
  r = check_run_dir(out, n=240, k=3, labelled=False)
  assert not any(k in r for k in SUMMARY_KEYS) and "init" not in r
  assert r["epochs"] == {} and r["label_free"]["silhouette"] > 0.5  # three separated blobs
  assert sorted(r["label_free"]["cluster_sizes"]) == [80, 80, 80]
  assert json.loads((out / "config.json").read_text())["n_clusters"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in VECTOR_METHODS if m != "kmeans"])
def test_every_vector_method_clusters_an_unlabelled_npz(tmp_path, method, capsys):
  data = blobs_npz(tmp_path / "mine.npz", labels=False)
  out = tmp_path / "run"
  cli().main(["--method", method, "--dataset", str(data), "--n-clusters", "3", "--out", str(out),
              *tiny_args(method, tmp_path)])
  r = check_run_dir(out, n=240, k=3, labelled=False)
  assert not any(k in r for k in SUMMARY_KEYS) and "init" not in r
  cls = get_estimator(method)
  schedule = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("schedule:")]
  assert len(schedule) == 1
  if cls.epochs_field:  # a deep method: its schedule was the tiny one, and it has a start
    assert f"main stage 2 epochs ({cls.epochs_field}" in schedule[0]
    if cls.pretrain_epochs_field:
      assert "pre-training 2 epochs" in schedule[0]
    assert r["schedule"][cls.epochs_field] == 2
    assert (out / "init_labels.npy").exists() and (out / "loss_curves.png").exists()
    assert r["label_free"]["init_silhouette"] is not None
    assert 0 < sum(r["epochs"].values()) <= 4


def test_missing_labels_without_n_clusters_names_the_flag(tmp_path, capsys):
  data = blobs_npz(tmp_path / "mine.npz", labels=False)
  with pytest.raises(SystemExit) as e:
    cli().main(["--method", "kmeans", "--dataset", str(data), "--out", str(tmp_path / "x"),
                "--quiet"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "no labels" in err and "--n-clusters" in err
  assert not (tmp_path / "x").exists()


def test_n_clusters_flag_overrides_the_label_count_and_the_config(tmp_path, capsys):
  data = blobs_npz(tmp_path / "labelled.npz", labels=True)
  cfg = tmp_path / "k.json"
  cfg.write_text(json.dumps({"n_clusters": 4, "n_init": 2}))
  out = tmp_path / "run"
  cli().main(["--method", "kmeans", "--dataset", str(data), "--n-clusters", "5", "--out",
              str(out), "--quiet", "--config", str(cfg)])
  r = check_run_dir(out, n=240, k=5, labelled=True)
  assert all(k in r for k in SUMMARY_KEYS)  # external metrics still computed against y
  assert json.loads((out / "config.json").read_text())["params"]["n_clusters"] == 5


def test_n_clusters_in_the_config_reaches_the_loader(tmp_path, capsys):
  data = blobs_npz(tmp_path / "mine.npz", labels=False)
  cfg = tmp_path / "k.yaml"
  cfg.write_text("n_clusters: 4\nn_init: 2\n")
  out = tmp_path / "run"
  cli().main(["--method", "kmeans", "--dataset", str(data), "--config", str(cfg), "--out",
              str(out), "--quiet"])
  check_run_dir(out, n=240, k=4, labelled=False)


def test_label_free_silhouette_is_sampled_the_same_way_for_final_and_start(monkeypatch):
  import numpy as np

  from clustering_jax import experiment
  rng = np.random.default_rng(0)
  n = experiment.SIL_MAX_SAMPLES + 500
  y = np.arange(n) % 3
  good = rng.normal(size=(n, 2)) + 8 * np.eye(3)[y][:, :2]
  s = experiment.label_free_scores(good, y, 3, init_embedding=rng.normal(size=(n, 2)),
                                   init_labels=y)
  assert s["silhouette_n"] == experiment.SIL_MAX_SAMPLES
  assert s["silhouette"] > 0.5 and abs(s["init_silhouette"]) < 0.1
  assert s["cluster_sizes"] == np.bincount(y).tolist()
  # A wide embedding is scored on fewer rows (m^2 d bounded), still at least a few hundred.
  monkeypatch.setattr(experiment, "SIL_BUDGET", 1e8)
  wide = experiment.label_free_scores(rng.normal(size=(1000, 500)), y[:1000], 3)
  assert wide["silhouette_n"] == 447 and wide["init_silhouette"] is None
  assert experiment.label_free_scores(rng.normal(size=(1000, 5000)), y[:1000], 3)[
      "silhouette_n"] == experiment.SIL_MIN_SAMPLES
  # One cluster: undefined, not an error.
  assert experiment.label_free_scores(good, np.zeros(n, int), 3)["silhouette"] is None
