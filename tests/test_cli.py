"""The command line: run directory contents, overrides, and clear errors (exit 2)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = [sys.executable, str(ROOT / "experiments" / "run.py")]


def _run(*args, cwd=ROOT):
  return subprocess.run(RUN + list(args), cwd=cwd, text=True, capture_output=True, timeout=300)


def test_kmeans_digits_writes_run_directory(tmp_path):
  out = tmp_path / "run"
  p = _run("--method", "kmeans", "--dataset", "digits", "--seed", "0", "--out", str(out), "--quiet")
  assert p.returncode == 0, p.stderr
  assert "acc" in p.stdout and "nmi" in p.stdout
  for f in ("config.json", "metrics.jsonl", "results.json", "labels.npy", "embedding.npy",
            "embedding_2d.png"):
    assert (out / f).exists(), f
  r = json.loads((out / "results.json").read_text())
  for k in ("method", "dataset", "seed", "n_samples", "n_clusters", "acc", "nmi", "ari", "purity",
            "f_measure", "epochs", "wall_time_s", "jax_backend"):
    assert k in r, k
  for k in ("acc", "nmi", "purity", "f_measure"):
    assert 0.0 <= r[k] <= 1.0
  assert r["n_samples"] == 1797 and r["n_clusters"] == 10
  labels = np.load(out / "labels.npy")
  assert labels.shape == (1797,)
  # ACC within 0.03 of scikit-learn's KMeans(n_init=10) on the same data (issue 2).
  from sklearn.cluster import KMeans
  from sklearn.datasets import load_digits

  from clustering_jax.metrics import accuracy
  d = load_digits()
  sk = KMeans(10, n_init=10, random_state=0).fit_predict(d.data / 16.0)
  assert abs(r["acc"] - accuracy(d.target, sk)) < 0.03
  cfg = json.loads((out / "config.json").read_text())
  assert cfg["params"]["n_clusters"] == 10 and cfg["seed"] == 0


def test_config_override_json_and_yaml(tmp_path):
  js = tmp_path / "o.json"
  js.write_text(json.dumps({"n_init": 2, "metric": "cosine"}))
  p = _run("--method", "kmeans", "--dataset", "blobs", "--out", str(tmp_path / "a"), "--quiet",
           "--config", str(js))
  assert p.returncode == 0, p.stderr
  params = json.loads((tmp_path / "a" / "config.json").read_text())["params"]
  assert params["n_init"] == 2 and params["metric"] == "cosine"
  ym = tmp_path / "o.yaml"
  ym.write_text("n_init: 3\n")
  p = _run("--method", "kmeans", "--dataset", "blobs", "--out", str(tmp_path / "b"), "--quiet",
           "--config", str(ym))
  assert p.returncode == 0, p.stderr
  assert json.loads((tmp_path / "b" / "config.json").read_text())["params"]["n_init"] == 3


@pytest.mark.parametrize("args, needle", [
    (["--method", "nope"], "unknown method"),
    (["--method", "kmeans", "--dataset", "no-such-set"], "unknown dataset"),
    (["--method", "kmeans", "--dataset", "hdigit", "--data-dir", "/nonexistent"], "Hdigit.mat"),
    (["--method", "kmeans", "--dataset", "/nonexistent/file.mat"], "file not found"),
    (["--method", "kmeans", "--config", "/nonexistent.json"], "config file not found"),
    (["--method", "kmeans", "--dataset", "blobs", "--missing-rate", "1.5"], "missing-rate"),
    (["--method", "kmeans", "--dataset", "blobs", "--epochs", "3"], "no training epochs"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
  p = _run(*args, "--out", str(tmp_path / "x"), "--quiet")
  assert p.returncode == 2, (p.returncode, p.stderr)
  err = p.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error:"), p.stderr
  assert needle in err[0]
  assert "Traceback" not in p.stderr


def test_unknown_config_key_is_clear(tmp_path):
  js = tmp_path / "o.json"
  js.write_text(json.dumps({"no_such_param": 1}))
  p = _run("--method", "kmeans", "--dataset", "blobs", "--config", str(js), "--quiet",
           "--out", str(tmp_path / "x"))
  assert p.returncode == 2 and "no_such_param" in p.stderr


def test_benchmark_harness_writes_rows_and_tables(tmp_path):
  p = subprocess.run([sys.executable, str(ROOT / "experiments" / "benchmark.py"), "--methods",
                      "kmeans", "--datasets", "blobs", "--seeds", "0", "1", "--results-dir",
                      str(tmp_path), "--runs-dir", str(tmp_path / "runs")],
                     cwd=ROOT, text=True, capture_output=True, timeout=300)
  assert p.returncode == 0, p.stderr
  rows = json.loads((tmp_path / "benchmark.json").read_text())
  assert len(rows) == 1 and rows[0]["method"] == "kmeans" and rows[0]["seeds"] == [0, 1]
  assert 0 <= rows[0]["acc_mean"] <= 1 and rows[0]["acc_std"] >= 0
  assert "benchmark.py" in rows[0]["command"]
  md = (tmp_path / "BENCHMARKS.md").read_text()
  assert "| blobs | kmeans |" in md
