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


def _main(*args):
  """The CLI in this process (see _run_helpers.cli)."""
  from _run_helpers import cli
  return cli().main(list(args))


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
  # The whole process's time: start-up (interpreter, imports) is counted from the process start.
  from _run_helpers import check_timing
  check_timing(r)
  assert r["timing"]["startup_s"] > 0.05 and r["timing"]["load_s"] > 0


def test_no_compile_cache_flag_disables_the_cache_before_the_run(tmp_path, monkeypatch):
  from clustering_jax import compile_cache
  calls = []
  monkeypatch.setattr(compile_cache, "disable", lambda: calls.append(compile_cache.cache_dir()))
  monkeypatch.setattr(compile_cache, "enable", lambda *a: calls.append("enable"))
  cfg = tmp_path / "tiny.json"
  cfg.write_text(json.dumps({"n_init": 2}))
  _main("--method", "kmeans", "--dataset", "blobs", "--out", str(tmp_path / "a"), "--quiet",
        "--config", str(cfg), "--no-compile-cache")
  assert len(calls) == 2 and calls[1] == "enable"       # disable() first, then the fit's enable()


def test_config_override_json_and_yaml(tmp_path, capsys):
  js = tmp_path / "o.json"
  js.write_text(json.dumps({"n_init": 2, "metric": "cosine"}))
  _main("--method", "kmeans", "--dataset", "blobs", "--out", str(tmp_path / "a"), "--quiet",
        "--config", str(js))
  params = json.loads((tmp_path / "a" / "config.json").read_text())["params"]
  assert params["n_init"] == 2 and params["metric"] == "cosine"
  ym = tmp_path / "o.yaml"
  ym.write_text("n_init: 3\n")
  _main("--method", "kmeans", "--dataset", "blobs", "--out", str(tmp_path / "b"), "--quiet",
        "--config", str(ym))
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
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, needle):
  # In-process (an interpreter and JAX per case cost ~5 s each); an uncaught exception here
  # would fail the test as a traceback would on the command line.
  with pytest.raises(SystemExit) as e:
    _main(*args, "--out", str(tmp_path / "x"), "--quiet")
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error:"), err
  assert needle in err[0]
  assert not (tmp_path / "x").exists()


def test_unknown_config_key_is_clear(tmp_path, capsys):
  js = tmp_path / "o.json"
  js.write_text(json.dumps({"no_such_param": 1}))
  with pytest.raises(SystemExit) as e:
    _main("--method", "kmeans", "--dataset", "blobs", "--config", str(js), "--quiet",
          "--out", str(tmp_path / "x"))
  assert e.value.code == 2 and "no_such_param" in capsys.readouterr().err


@pytest.mark.slow
def test_benchmark_harness_writes_rows_and_tables(tmp_path):
  p = subprocess.run([sys.executable, str(ROOT / "experiments" / "benchmark.py"), "--methods",
                      "kmeans", "--datasets", "blobs", "--seeds", "0", "1", "--results-dir",
                      str(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--no-compile-cache"],
                     cwd=ROOT, text=True, capture_output=True, timeout=300)
  assert p.returncode == 0, p.stderr
  rows = json.loads((tmp_path / "benchmark.json").read_text())
  assert len(rows) == 1 and rows[0]["method"] == "kmeans" and rows[0]["seeds"] == [0, 1]
  assert 0 <= rows[0]["acc_mean"] <= 1 and rows[0]["acc_std"] >= 0
  assert "benchmark.py" in rows[0]["command"]
  seeds = [json.loads((tmp_path / "runs" / "kmeans__blobs" / f"seed{s}" / "results.json")
                      .read_text()) for s in (0, 1)]
  assert all("--no-compile-cache" in r["command"] for r in seeds)      # passed on to run.py
  assert rows[0]["total_s_mean"] == pytest.approx(np.mean([r["timing"]["total_s"] for r in seeds]))
  assert rows[0]["train_s_mean"] == 0.0
  md = (tmp_path / "BENCHMARKS.md").read_text()
  assert "| blobs | kmeans |" in md and "| total s / run | train s / run |" in md
  line = next(ln for ln in md.splitlines() if ln.startswith("| blobs | kmeans |"))
  assert f"| {rows[0]['total_s_mean']:.1f} ± " in line and "| 0.0 ± 0.0 |" in line


# --- flags, schedules and validation (in-process: no interpreter start per case) -------------
def test_help_says_what_each_epoch_flag_sets_per_method(capsys):
  from clustering_jax.api import available_methods, get_estimator
  with pytest.raises(SystemExit) as e:
    _main("--help")
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert "--pretrain-epochs" in out and "--n-clusters" in out
  rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")
          and line.split() and line.split()[0] in available_methods()}
  assert set(rows) == set(available_methods())
  for m, line in rows.items():
    cls = get_estimator(m)
    fields = [f for f in (cls.epochs_field, cls.pretrain_epochs_field) if f]
    assert all(f in line for f in fields), line
    assert line.count("- (an error)") == 2 - len(fields), line


def test_epoch_flags_set_each_methods_fields():
  from clustering_jax.experiment import estimator_params
  assert {k: v for k, v in estimator_params("idcl", epochs=4, pretrain_epochs=3).items()
          if "epochs" in k} == {"epochs": 4, "pretrain_epochs": 3}
  from clustering_jax.api import get_estimator
  ulhe = get_estimator("ulhe")
  assert {k: v for k, v in estimator_params("ulhe", epochs=4, pretrain_epochs=3).items()
          if "epochs" in k} == {ulhe.epochs_field: 4, ulhe.pretrain_epochs_field: 3}
  # The flags win over the same fields in --config.
  p = estimator_params("idcl", pretrain_epochs=3, overrides={"pretrain_epochs": 500})
  assert p["pretrain_epochs"] == 3


def test_schedule_is_one_line_on_stderr_unless_quiet(tmp_path, capsys):
  from clustering_jax.api import get_estimator
  from clustering_jax.experiment import schedule, schedule_line
  idcl = get_estimator("idcl")(n_clusters=3, pretrain_epochs=7, epochs=5)
  line = schedule_line("idcl", idcl)
  assert "pre-training 7 epochs (pretrain_epochs" in line and "main stage 5 epochs" in line
  assert "\n" not in line and schedule(idcl) == {"pretrain_epochs": 7, "epochs": 5}
  ulhe = get_estimator("ulhe")(n_clusters=3)
  assert (f"main stage {getattr(ulhe, ulhe.epochs_field)} epochs ({ulhe.epochs_field}"
          in schedule_line("ulhe", ulhe))
  _main("--method", "kmeans", "--dataset", "blobs", "--out", str(tmp_path / "a"))
  err = capsys.readouterr().err
  assert [ln for ln in err.splitlines() if ln.startswith("schedule:")] == [
      "schedule: kmeans has no training epochs (--epochs / --pretrain-epochs do not apply)"]
  _main("--method", "kmeans", "--dataset", "blobs", "--out", str(tmp_path / "b"), "--quiet")
  assert "schedule:" not in capsys.readouterr().err


@pytest.mark.parametrize("args, config, needle", [
    (["--method", "kmeans", "--pretrain-epochs", "3"], None, "no pre-training stage"),
    (["--method", "largemvc", "--pretrain-epochs", "3"], None, "no pre-training stage"),
    (["--method", "idcl", "--pretrain-epochs", "-1"], None, "--pretrain-epochs must be >= 0"),
    (["--method", "kmeans", "--n-clusters", "1"], None, "--n-clusters must be >= 2"),
    (["--method", "kmeans"], {"n_clusters": "ten"}, "n_clusters: expected an integer, got 'ten'"),
    (["--method", "kmeans"], {"n_init": "ten"}, "n_init: expected an integer, got 'ten'"),
    (["--method", "kmeans"], {"tol": "small"}, "tol: expected a number, got 'small'"),
    (["--method", "idcl"], {"augment": "yes"}, "augment: expected true or false, got 'yes'"),
    (["--method", "idcl"], {"hidden": 5}, "hidden: expected a list or tuple, got 5"),
    (["--method", "idcl"], {"pretrain_end_lr": "x"}, "pretrain_end_lr: expected a number or None"),
    (["--method", "kmeans"], {"scaling": "zscore"}, "scaling: expected one of"),
    # Values of the right type that the method rejects: before the run directory is made
    # (IDCL's Config.validate) or by fit before its first epoch (k-means' metric).
    (["--method", "idcl"], {"pace": "bogus"}, "pace must be one of"),
    (["--method", "kmeans"], {"metric": "bogus"}, "metric must be one of"),
])
def test_bad_values_name_the_parameter_and_leave_no_run_directory(tmp_path, capsys, args,
                                                                   config, needle):
  extra = []
  if config is not None:
    (tmp_path / "c.json").write_text(json.dumps(config))
    extra = ["--config", str(tmp_path / "c.json")]
  out = tmp_path / "run"
  with pytest.raises(SystemExit) as e:
    _main(*args, "--dataset", "blobs", "--out", str(out), "--quiet", *extra)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
  assert not out.exists()


def test_unknown_parameter_error_lists_every_accepted_parameter(tmp_path, capsys):
  (tmp_path / "c.json").write_text(json.dumps({"n_iters": 3}))
  with pytest.raises(SystemExit):
    _main("--method", "kmeans", "--dataset", "blobs", "--config", str(tmp_path / "c.json"),
          "--out", str(tmp_path / "x"), "--quiet")
  err = capsys.readouterr().err
  for name in ("n_clusters", "random_state", "scaling", "n_init", "max_iter", "tol", "metric"):
    assert repr(name) in err, name


@pytest.mark.parametrize("after_epochs", [0, 2])
def test_a_fit_that_fails_validation_before_its_first_epoch_leaves_no_directory(
    tmp_path, monkeypatch, after_epochs):
  from _run_helpers import fake_deep_estimator

  from clustering_jax import experiment
  base = fake_deep_estimator({})

  class Failing(base):
    def _fit(self, data, key, run):
      for e in range(after_epochs):
        run.log("pretrain", e, {"loss": 1.0})
      raise ValueError("bad value found by fit")

  monkeypatch.setattr(experiment, "get_estimator", lambda name: Failing)
  out = tmp_path / "run"
  with pytest.raises(ValueError, match="bad value found by fit"):
    experiment.run_experiment("fake", "blobs", out=str(out))
  # Before any epoch: no half-made directory. After epochs: the log shows how far it got.
  assert out.exists() == (after_epochs > 0)
  if after_epochs:
    assert len((out / "metrics.jsonl").read_text().splitlines()) == after_epochs
  # A directory that existed before the run (e.g. to resume) is never removed.
  existing = tmp_path / "existing"
  existing.mkdir()
  monkeypatch.setattr(experiment, "get_estimator", lambda name: Failing)
  with pytest.raises(ValueError):
    experiment.run_experiment("fake", "blobs", out=str(existing))
  assert existing.exists()
