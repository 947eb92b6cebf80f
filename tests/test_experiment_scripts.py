"""The scripts under experiments/ run against the current code (tiny configs and sizes)."""

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest

from clustering_jax import metrics
from clustering_jax.data import load_dataset
from clustering_jax.methods.base import Views
from clustering_jax.methods import ulhe
from clustering_jax.train import Run

ROOT = Path(__file__).resolve().parent.parent


def _script(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


TINY = {"hidden": [16, 16, 32], "latent": 4, "pretrain_epochs": 2, "pretrain_batch_size": 128,
        "batch_size": 128, "kmeans_n_init": 2}


@pytest.mark.slow
def test_ulhe_ablation_shares_pretraining_and_matches_an_uninterrupted_fit(tmp_path):
  cfg_file = tmp_path / "tiny.json"
  cfg_file.write_text(json.dumps(TINY))
  out, work = tmp_path / "abl.json", tmp_path / "work"
  _script("ablation").main(["--method", "ulhe", "--dataset", "digits", "--epochs", "4",
                            "--config", str(cfg_file), "--work", str(work), "--out", str(out),
                            "--variant", "default={}", 'no-unif={"use_unif": false}'])
  recs = {r["variant"]: r for r in json.loads(out.read_text())}
  assert set(recs) == {"default", "no-unif"}
  assert len(list(work.glob("pretrain_*"))) == 1             # one pre-training, two variants
  assert recs["default"]["init"] == recs["no-unif"]["init"]
  assert "--method ulhe" in recs["default"]["command"]
  # Resuming from the shared checkpoint is the same computation as one uninterrupted fit.
  data = load_dataset("digits")
  res = ulhe.fit(Views.of(data), data.n_clusters,
                 ulhe.Config(**{**TINY, "hidden": tuple(TINY["hidden"]), "epochs": 4}),
                 key=jax.random.key(0), run=Run(None))
  y = np.asarray(data.labels)
  assert recs["default"]["final"]["acc"] == metrics.accuracy(y, res.labels)
  assert recs["default"]["init"]["acc"] == metrics.accuracy(y, res.init_labels)


def test_confusions_script(tmp_path, capsys):
  y = np.asarray(load_dataset("digits").labels)
  p = y.copy()
  p[y == 4] = 9                                   # all fours in the nines' cluster
  np.save(tmp_path / "init_labels.npy", y)
  np.save(tmp_path / "labels.npy", p)
  rng = np.random.default_rng(0)
  np.save(tmp_path / "init_embedding.npy", rng.normal(size=(len(y), 3)))
  _script("confusions").main(["--dataset", "digits", "--cost", "euclidean", str(tmp_path)])
  rows = [r for r in capsys.readouterr().out.splitlines() if str(tmp_path) in r]
  assert rows[0].count("|") == 7 and rows[1].endswith("| – |")      # no embedding.npy
  assert "| init_labels | 1.0000 | 0 |" in rows[0]
  # The merged cluster is matched to the larger class; the smaller one is all error.
  n4, n9 = int((y == 4).sum()), int((y == 9).sum())
  err = f"{n4}: 4 → 9" if n4 < n9 else f"{n9}: 9 → 4"
  assert f"| labels | {1 - min(n4, n9) / len(y):.4f} | {min(n4, n9)} | {err} |" in rows[1]


def test_kmeans_cost_relabels_any_label_values():
  conf = _script("confusions")
  rng = np.random.default_rng(0)
  z, lab = rng.normal(size=(30, 3)), rng.integers(0, 3, 30)
  ref = sum(((z[lab == k] - z[lab == k].mean(0)) ** 2).sum() for k in range(3)) / 30
  np.testing.assert_allclose(conf.kmeans_cost(z, lab, "euclidean"), ref, rtol=1e-5)
  # Label values need not be 0..k-1 (e.g. class labels); one point per part costs nothing.
  np.testing.assert_allclose(conf.kmeans_cost(z, 7 * lab + 4, "euclidean"), ref, rtol=1e-5)
  assert abs(conf.kmeans_cost(z, np.arange(30), "euclidean")) < 1e-6


def test_run_directory_holds_the_starting_point(tmp_path):
  from clustering_jax.experiment import run_experiment
  out = tmp_path / "run"
  run_experiment("ulhe", "digits", out=str(out), overrides={**TINY, "epochs": 2})
  z0, lab0 = np.load(out / "init_embedding.npy"), np.load(out / "init_labels.npy")
  assert z0.shape == (1797, 4) and lab0.shape == (1797,)
  y = np.asarray(load_dataset("digits").labels)
  res = json.loads((out / "results.json").read_text())
  assert res["init"]["acc"] == metrics.accuracy(y, lab0)


def test_ablation_pretrain_tag_keeps_earlier_work_directories():
  """Records in docs/results/idcl_ablation.json name pretrain_digits_s*_a0c2f900ec (constant
  lr 0.001, 1000 epochs); a Config field added later must not rename it, a changed one must."""
  import dataclasses

  from clustering_jax.methods import idcl
  abl = _script("ablation")
  legacy = json.loads((ROOT / "experiments/configs/idcl_pretrain1000.json").read_text())
  cfg = dataclasses.replace(idcl.Config(), **legacy)
  assert abl.pretrain_tag("idcl", cfg) == "a0c2f900ec"
  assert abl.pretrain_tag("idcl", dataclasses.replace(cfg, pretrain_warmup=0.2)) != "a0c2f900ec"
  assert abl.pretrain_tag("idcl", idcl.Config()) != abl.pretrain_tag(
      "idcl", dataclasses.replace(idcl.Config(), pretrain_schedule="constant"))


@pytest.mark.slow
def test_pretrain_schedule_scores_clean_reconstruction(tmp_path):
  """The selection score is Eq. 13 (summed over pixels, mean over samples) of the final
  autoencoder on the un-augmented images, one record per candidate and seed, no label
  metric anywhere."""
  from clustering_jax.methods import idcl
  ps = _script("pretrain_schedule")
  out = tmp_path / "sched.json"
  recs = ps.main(["--seeds", "0", "--candidates", "constant-0.001", "warmup_cosine-0.003",
                  "--pretrain-epochs", "1", "--out", str(out)])
  assert [r["candidate"] for r in recs] == ["constant-0.001", "warmup_cosine-0.003"]
  assert all(np.isfinite(r["clean_rec_loss"]) and r["clean_rec_loss"] > 0 for r in recs)
  assert recs[0]["clean_rec_loss"] != recs[1]["clean_rec_loss"]
  saved = json.loads(out.read_text())
  assert [r["clean_rec_loss"] for r in saved["records"]] == [r["clean_rec_loss"] for r in recs]
  assert "--pretrain-epochs 1" in saved["command"]
  assert not any(k in json.dumps(saved) for k in ('"acc"', '"nmi"', '"ari"'))
  # the score against Eq. 13 computed directly, for an untrained tiny TAE
  data = load_dataset("digits")
  cfg = idcl.Config(hidden=(16, 16, 32), latent=4)
  x = idcl.prepare_inputs(Views.of(data), cfg)[:600]
  net = idcl.make_net(cfg, x.shape)
  params = net.init(jax.random.key(0), x[:2])
  _, x_hat = net.apply(params, x)
  ref = np.mean(np.sum((np.asarray(x) - np.asarray(x_hat)) ** 2, axis=(1, 2, 3)))
  sub = data.replace(views=(data.views[0][:600],), labels=data.labels[:600])
  np.testing.assert_allclose(ps.clean_rec_loss(sub, cfg, params), ref, rtol=1e-4)


def test_run_checks_reads_the_stage_boundary_from_a_log(tmp_path, capsys):
  """run_checks: the largest clustering-epoch L_rec over the last pre-training L_rec, its
  epoch and the median label change; "–" where a log has no pre-training rows."""
  rc = _script("run_checks")
  rows = [{"stage": "pretrain", "epoch": e, "loss_rec": v} for e, v in enumerate([4.0, 2.0])]
  rows += [{"stage": "init", "epoch": 0, "inertia": 1.0}]
  rows += [{"stage": "train", "epoch": e, "loss_rec": v, "dc": d, "label_change": c}
           for e, (v, d, c) in enumerate([(2.2, 0.5, 0.1), (6.0, 0.4, 0.02), (1.8, 0.6, 0.03)])]
  c = rc.stage_checks(rows)
  assert c["pretrain_last_rec"] == 2.0 and c["max_rec_over_pretrain"] == 3.0
  assert c["max_rec_epoch"] == 1 and c["train_last_rec"] == 1.8 and c["epochs_run"] == 3
  assert c["dc_first_last"] == [0.5, 0.6] and c["median_label_change"] == 0.03
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[2:]))
  rc.main([str(tmp_path)])
  assert "– (1)" in capsys.readouterr().out        # no pre-training rows: no ratio


def test_assign_pass_speed_times_each_piece(tmp_path):
  out = tmp_path / "aps.json"
  _script("assign_pass_speed").main(["--sizes", "300", "--reps", "1", "--out", str(out)])
  rec, = json.loads(out.read_text())
  assert rec["backend"] == jax.default_backend() and rec["commit"]
  assert set(rec["ms"]["300"]) == {"cutoff_distance", "local_density", "kmeans_10_restarts",
                                   "density_cores", "core_similarity_Q"}
  assert all(v >= 0 for v in rec["ms"]["300"].values())


def test_largemvc_scaling_reads_the_engine_timing():
  sc = _script("largemvc_scaling")
  row = sc.worker(400, 2, 0)
  assert row["n"] == 400 and row["epochs"] == 2 and 0 <= row["acc"] <= 1
  assert row["time_per_epoch_s"] > 0 and row["compile_s"] > 0 and row["peak_rss_mib"] > 0
  rows = [{"n": 1000, "t": 1.0}, {"n": 4000, "t": 4.0}]
  assert abs(sc.fit_exponent(rows, "t") - 1.0) < 1e-9


@pytest.mark.slow
def test_kmeans_speed_writes_its_table(tmp_path):
  out = tmp_path / "kms.json"
  _script("kmeans_speed").main(["--datasets", "digits", "--out", str(out)])
  rec = json.loads(out.read_text())
  row, = rec["rows"]
  assert row["dataset"] == "digits" and row["n"] == 1797 and abs(row["inertia_rel_diff"]) < 0.05


@pytest.mark.slow
def test_device_check_writes_a_record(tmp_path):
  """SCALE=0 on the CPU: a small test file, a 2 + 2 epoch flagship run, one JSON record."""
  env = {**os.environ, "SCALE": "0", "TESTS": "tests/test_metrics.py",
         "RECORD_DIR": str(tmp_path / "rec"), "WORK": str(tmp_path / "work")}
  p = subprocess.run(["bash", str(ROOT / "experiments" / "device_check.sh")], cwd=ROOT, env=env,
                     text=True, capture_output=True, timeout=900)
  assert p.returncode == 0, p.stdout + p.stderr
  rec, = [json.loads(f.read_text()) for f in (tmp_path / "rec").glob("*.json")]
  assert rec["scale"] == 0 and rec["backend"] == "cpu"
  assert rec["tests"]["exit_status"] == 0 and rec["tests"]["tests"] > 0
  assert rec["tests"]["failures"] == 0 and rec["tests"]["failed"] == []
  fl = rec["flagship"]
  assert fl["exit_status"] == 0 and fl["epochs"] == {"pretrain": 2, "train": 2}
  assert 0 <= fl["acc"] <= 1 and 0 <= fl["init_acc"] <= 1
  assert set(fl["timing"]) == {"pretrain", "train"} and fl["timing"]["train"]["epoch_s"] > 0
  assert fl["command"].startswith("python experiments/run.py --method idcl --dataset digits")


def _fake_result(seed, acc, init_acc, epochs):
  return {"seed": seed, "n_samples": 10, "n_clusters": 2, "acc": acc, "nmi": acc, "ari": acc,
          "purity": acc, "f_measure": acc, "wall_time_s": 5.0 + seed, "epochs": epochs,
          "jax_backend": "cpu", "init": {"acc": init_acc, "nmi": 0.5, "ari": 0.5},
          "info": {"epochs": epochs, "init_time_s": 1.5, "embedding_spread": 0.7,
                   "timing": {st: {"epoch_s": 0.1 * (seed + 1), "compile_s": 2.0,
                                   "steps_per_s": 10.0, "n_compiles": 1} for st in epochs}}}


def test_benchmark_rows_flatten_engine_timings_and_epochs(tmp_path):
  bm = _script("benchmark")
  res = [_fake_result(0, 0.8, 0.7, {"pretrain": 4, "train": 3}),
         _fake_result(1, 0.6, 0.7, {"pretrain": 4, "train": 5})]
  assert bm.flat_timings(res[0]["info"]) == {
      "pretrain_epoch_s": 0.1, "pretrain_compile_s": 2.0, "pretrain_steps_per_s": 10.0,
      "train_epoch_s": 0.1, "train_compile_s": 2.0, "train_steps_per_s": 10.0,
      "init_time_s": 1.5}
  row = bm.summarize("m", "d", "", [0, 1], res, "python experiments/benchmark.py x")
  assert row["timings"]["train_epoch_s"] == pytest.approx(0.15)
  assert "embedding_spread" not in row["timings"]
  assert row["epochs"] == {"pretrain": 4, "train": 5}
  assert [p["epochs"] for p in row["per_seed"]] == [r["epochs"] for r in res]
  # one default row, one tagged row: the main table and the method's variants table
  (tmp_path / "rows").mkdir()
  (tmp_path / "rows" / "m__d.json").write_text(json.dumps(row))
  tagged = bm.summarize("m", "d", "t1", [0, 1], res, "python experiments/benchmark.py "
                        "--missing-rate 0.3 --tag t1")
  (tmp_path / "rows" / "m__d__t1.json").write_text(json.dumps(tagged))
  bm.regenerate(tmp_path)
  md = (tmp_path / "BENCHMARKS.md").read_text()
  main = md[md.index("## Default settings"):md.index("## Variants")]
  variants = md[md.index("## Variants"):md.index("## Papers")]
  assert "| d | m | 2 | 70.0 ± 10.0 |" in main and "| 4 + 3–5 |" in main
  assert "1 of 2" in main and "t1" not in main
  assert "### m" in variants and "| d | t1 | `--missing-rate 0.3` | 0 1 |" in variants


def test_benchmark_reuse_runs_reads_a_finished_run_of_the_same_command(tmp_path):
  """--reuse-runs: a seed's run directory with results.json of the same command is read, not
  run again; another command (here another seed's) is not taken for it."""
  import argparse
  bm = _script("benchmark")
  args = argparse.Namespace(data_dir=None, epochs=None, config=None, missing_rate=None,
                            max_samples=None, no_compile_cache=False, reuse_runs=True)
  out = tmp_path / "seed0"
  out.mkdir()
  done = {"acc": 0.5, "command": f"python experiments/run.py --method kmeans --dataset digits "
                                 f"--seed 0 --out {out} --quiet"}
  (out / "results.json").write_text(json.dumps(done))
  assert bm.run_one("kmeans", "digits", 0, out, args) == done
  with pytest.raises(RuntimeError, match="run failed"):   # a different command: it runs
    bm.run_one("nosuchmethod", "digits", 0, out, args)
