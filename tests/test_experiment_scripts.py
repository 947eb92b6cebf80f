"""experiments/ablation.py and experiments/confusions.py on digits with tiny configs."""

import importlib.util
import json
from pathlib import Path

import jax
import numpy as np

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
                 ulhe.Config(**{**TINY, "hidden": tuple(TINY["hidden"]), "cluster_epochs": 4}),
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
  run_experiment("ulhe", "digits", out=str(out), overrides={**TINY, "cluster_epochs": 2})
  z0, lab0 = np.load(out / "init_embedding.npy"), np.load(out / "init_labels.npy")
  assert z0.shape == (1797, 4) and lab0.shape == (1797,)
  y = np.asarray(load_dataset("digits").labels)
  res = json.loads((out / "results.json").read_text())
  assert res["init"]["acc"] == metrics.accuracy(y, lab0)


def test_gpu_collect_condenses_finished_and_cut_runs(tmp_path):
  spec = importlib.util.spec_from_file_location("collect", ROOT / "experiments" / "gpu" / "collect.py")
  collect = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(collect)
  done, cut = tmp_path / "runs" / "done", tmp_path / "runs" / "cut"
  for d in (done, cut):
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"method": "ulhe", "seed": 0}))
    rows = [{"stage": "pretrain", "epoch": 0, "time_s": 1.0, "rec": 0.5},
            {"stage": "pretrain", "epoch": 1, "time_s": 2.0, "rec": 0.4, "acc": 0.6, "nmi": 0.5},
            {"stage": "cluster", "epoch": 0, "time_s": 3.0, "acc": 0.7, "loss": 1.0}]
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  (done / "results.json").write_text(json.dumps({"acc": 0.7}))
  out = tmp_path / "out"
  collect.main(["--out", str(out), str(done), str(cut)])
  a, b = (json.loads((out / f"{n}.json").read_text()) for n in ("done", "cut"))
  assert a["results"] == {"acc": 0.7} and b["results"] is None   # a cut run keeps its log only
  assert a["n_log_rows"] == 3
  assert [(r["stage"], r["epoch"], r["acc"]) for r in a["curve"]] == [("pretrain", 1, 0.6),
                                                                     ("cluster", 0, 0.7)]
  assert "loss" not in a["curve"][1] and a["curve"][0]["rec"] == 0.4


def test_ablation_pretrain_tag_keeps_earlier_work_directories():
  """The records of 2026-11-30 name pretrain_digits_s*_a0c2f900ec (constant lr 0.001, 1000
  epochs); a field added since must not rename it, and a changed field must."""
  import dataclasses

  from clustering_jax.methods import idcl
  abl = _script("ablation")
  legacy = json.loads((ROOT / "experiments/configs/idcl_pretrain1000.json").read_text())
  cfg = dataclasses.replace(idcl.Config(), **legacy)
  assert abl.pretrain_tag("idcl", cfg) == "a0c2f900ec"
  assert abl.pretrain_tag("idcl", dataclasses.replace(cfg, pretrain_warmup=0.2)) != "a0c2f900ec"
  assert abl.pretrain_tag("idcl", idcl.Config()) != abl.pretrain_tag(
      "idcl", dataclasses.replace(idcl.Config(), pretrain_schedule="constant"))


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
  x = idcl.prepare_inputs(data, cfg)[:600]
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


def test_idcl_epoch_profile_times_every_part(tmp_path):
  cfg_file = tmp_path / "tiny.json"
  cfg_file.write_text(json.dumps({"hidden": [16, 16, 32], "latent": 4, "batch_size": 64,
                                  "kmeans_n_init": 2}))
  out = tmp_path / "prof.json"
  args = ["--dataset", "digits", "--max-samples", "200", "--config", str(cfg_file),
          "--pretrain-epochs", "1", "--epochs", "3", "--reps", "1", "--out", str(out)]
  _script("idcl_epoch_profile").main(args)
  _script("idcl_epoch_profile").main(args)                   # appends a second record
  recs = json.loads(out.read_text())
  assert len(recs) == 2 and recs[0]["n"] == 200 and recs[0]["backend"] == jax.default_backend()
  rec = recs[0]
  parts = rec["median_epoch_ms"]
  assert set(parts) == {"embed", "assign", "host_reads", "shuffle", "steps", "epoch"}
  assert all(v >= 0 for v in parts.values())
  assert parts["epoch"] >= parts["steps"] and parts["epoch"] >= parts["assign"]
  assert rec["steps_per_epoch"] >= 1 and rec["shuffle_by_set_size_ms"] > 0
  assert set(rec["assign_parts_ms"]) >= {"cutoff_distance", "local_density", "lloyd_warm",
                                         "core_similarity_Q"}
