"""experiments/ablation.py and experiments/confusions.py on digits with tiny configs."""

import importlib.util
import json
from pathlib import Path

import jax
import numpy as np

from clustering_jax import metrics
from clustering_jax.data import load_dataset
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
  res = ulhe.fit(data, ulhe.Config(**{**TINY, "hidden": tuple(TINY["hidden"]),
                                      "cluster_epochs": 4}),
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
  _script("confusions").main(["--dataset", "digits", str(tmp_path)])
  rows = [r for r in capsys.readouterr().out.splitlines() if str(tmp_path) in r]
  assert "| init_labels | 1.0000 | 0 |" in rows[0]
  # The merged cluster is matched to the larger class; the smaller one is all error.
  n4, n9 = int((y == 4).sum()), int((y == 9).sum())
  err = f"{n4}: 4 → 9" if n4 < n9 else f"{n9}: 9 → 4"
  assert f"| labels | {1 - min(n4, n9) / len(y):.4f} | {min(n4, n9)} | {err} |" in rows[1]
