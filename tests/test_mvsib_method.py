"""MVSIB on train.engine: a tiny end-to-end fit (shapes, logs, one compile), resume, the four
ablation switches of §4.7, missing views, and the estimator contract.

The end-to-end tests compile the whole train step (about 1.5 min of XLA on a loaded 2-core
CPU the first time; the persistent cache of conftest.py serves the later fits, which share one
program: the switches are traced), so they are marked slow."""

from __future__ import annotations

import dataclasses

import chex
import jax
import numpy as np
import pytest

from clustering_jax import metrics
from clustering_jax.api import get_estimator
from clustering_jax.data import builtin
from clustering_jax.methods import mvsib
from clustering_jax.methods.base import Views
from clustering_jax.train import Run

N, K = 60, 3
TINY = dict(hidden=(16, 16, 32), latent=8, pretrain_epochs=2, epochs=3, e_w=1, e_c=2,
            batch_size=64, k=3, kmeans_n_init=2)
LOGGED = ("loss", "l_c", "l_feat", "l_u", "l_push", "l_pull", "l_cross", "l_imb", "mmd", "rep",
          "bnd", "term_cluster_feat_u", "term_hn", "term_cross", "term_imb", "phase", "p_e",
          "n_uncertain", "n_undecided", "n_fn", "n_hn", "hn_rate", "rc", "rc_n", "theta_mean",
          "theta_max", "n_minority", "n_pseudo", "label_change", "gate_hn", "u_bar")


@pytest.fixture(scope="module")
def blobs():
  return builtin.blobs(N, K, 6, n_views=3, seed=0)   # imbalanced: sizes 35, 17, 8


def _fit(data, run=None, seed=0, **over):
  cfg = mvsib.Config(**{**TINY, **over})
  views = data if isinstance(data, Views) else Views.of(data)
  run = run if run is not None else Run(None)
  return mvsib.fit(views, K, cfg, key=jax.random.key(seed), run=run), run


def _train_rows(run):
  return [r for r in run.history if r["stage"] == "train"]


@pytest.fixture(scope="module")
def smoke(blobs):
  run = Run(None, score_fn=lambda lab: {"acc": metrics.accuracy(blobs.labels, lab)})
  return _fit(blobs, run=run)


# ----------------------------------------------------------------------------- fast
def test_config_defaults_are_the_papers():
  cfg = mvsib.Config()
  assert (cfg.pretrain_epochs, cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay) == (
      200, 100, 256, 1e-4, 0.0)                                               # §4.4
  assert (cfg.latent, cfg.tau, cfg.k, cfg.knn_global_max) == (256, 0.5, 5, 10000)
  assert (cfg.lambda_u, cfg.lambda_hn, cfg.p0, cfg.alpha_sce) == (0.1, 0.1, 0.3, 0.5)
  assert (cfg.e_w, cfg.e_c, cfg.pi_fn, cfg.theta_bound) == (10, 20, 0.1, "batch")
  assert all(getattr(cfg, s) for s in mvsib.SWITCHES)
  assert cfg.normalize is True                          # §3.5.3: ℓ2-normalized representations
  cfg.validate()


@pytest.mark.parametrize("over, word", [
    ({"rec_loss": "l1"}, "rec_loss"), ({"theta_bound": "auto"}, "theta_bound"),
    ({"theta_bound": 0.0}, "theta_bound"), ({"e_c": 5, "e_w": 10}, "e_c"),
    ({"rho": 1.0}, "rho"), ({"mu_start": 0.8}, "mu_end"), ({"hn_variant": "x"}, "hn_variant"),
    ({"use_ism": 1}, "use_ism"), ({"normalize": "yes"}, "normalize"), ({"knn_graph": "data"}, "knn_graph"), ({"k": 0}, "k")])
def test_config_validate_names_the_field(over, word):
  with pytest.raises(ValueError, match=word):
    mvsib.Config(**over).validate()


def test_input_errors(blobs):
  with pytest.raises(ValueError, match="k=60"):
    _fit(blobs, k=N)
  img = Views((np.zeros((8, 4, 4, 1), np.float32),), is_image=True)
  with pytest.raises(ValueError, match="multi-view vectors"):
    _fit(img)


def test_registry_and_estimator_fields():
  cls = get_estimator("mvsib")
  assert cls.config_cls is mvsib.Config and cls.accepts == "any"
  assert (cls.epochs_field, cls.pretrain_epochs_field) == ("epochs", "pretrain_epochs")
  est = cls(n_clusters=3, theta_bound=0.5, use_scl=False)
  assert est.get_params()["theta_bound"] == 0.5 and est.config.use_scl is False
  with pytest.raises(TypeError):
    cls(n_clusters=3, use_scl="no")


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_smoke_fit_shapes_logs_and_one_compile(smoke, blobs):
  res, run = smoke
  chex.assert_shape(res.labels, (N,))
  chex.assert_shape(res.embedding, (N, 8))
  chex.assert_shape(res.init_embedding, (N, 8))
  chex.assert_tree_all_finite((res.embedding, res.init_embedding))
  assert res.labels.min() >= 0 and res.labels.max() < K
  assert set(np.unique(res.init_labels)) <= set(range(K))
  info = res.info
  assert info["epochs"] == {"pretrain": 2, "train": 3}
  for stage in ("pretrain", "train"):
    t = info["timing"][stage]
    assert t["n_compiles"] == 1 and t["compile_s"] > 0 and t["epoch_s"] > 0
  assert info["global_knn_graph"] and not info["missing_views"]
  assert len(info["view_weights"]) == 3 and abs(sum(info["view_weights"]) - 1) < 1e-3
  rows = _train_rows(run)
  for r in rows:
    for k in LOGGED:
      assert k in r and np.isfinite(r[k]), k
  assert [r["phase"] for r in rows] == [1, 2, 3]                       # e <= E_w, <= E_c, >
  np.testing.assert_allclose([r["p_e"] for r in rows], [0.3, 0.15, 0.0], atol=1e-6)  # Eq. 13
  assert rows[0]["n_fn"] + rows[0]["n_hn"] == 0      # no routing in the warm-up (stage 1)
  assert rows[0]["term_hn"] == 0 and rows[1]["term_cross"] == 0 and rows[2]["term_cross"] > 0
  assert rows[1]["n_fn"] + rows[1]["n_hn"] > 0 and rows[1]["n_undecided"] >= 0
  assert rows[2]["n_undecided"] == 0                  # undecided only while e <= E_c
  assert all(r["n_minority"] >= 1 and r["n_pseudo"] > 0 for r in rows)  # the 8-sample blob
  assert 0 <= rows[2]["rc"] <= 1 and 0 <= rows[2]["hn_rate"] <= 1
  assert rows[1]["rc_n"] == 0 and rows[1]["rc"] == 0   # nothing routed in the epoch before
  assert all(r["theta_max"] <= 1 for r in rows)
  # well-separated blobs: the start and the final model both find them
  assert metrics.accuracy(blobs.labels, res.init_labels) > 0.9
  assert metrics.accuracy(blobs.labels, res.labels) > 0.9


class Killed(RuntimeError):
  pass


@pytest.mark.slow
def test_resume_matches_uninterrupted(tmp_path, smoke, blobs):
  ref, _ = smoke

  class KillingRun(Run):
    def log(self, stage, epoch, metrics, **kw):
      if (stage, epoch) == ("train", 1):
        raise Killed()
      return super().log(stage, epoch, metrics, **kw)

  with pytest.raises(Killed):
    _fit(blobs, run=KillingRun(tmp_path, checkpoint_every=1))
  run = Run(tmp_path, checkpoint_every=1)
  res, _ = _fit(blobs, run=run)
  run.close()
  assert res.info["epochs"] == {"pretrain": 0, "train": 2}   # epochs 1, 2 after the restore
  assert [r["epoch"] for r in _train_rows(run)] == [0, 1, 2]
  np.testing.assert_array_equal(res.labels, ref.labels)
  np.testing.assert_allclose(res.embedding, ref.embedding, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("switch", mvsib.SWITCHES)
def test_ablation_switch_removes_its_term(blobs, smoke, switch):
  res, run = _fit(blobs, pretrain_epochs=1, **{switch: False})
  rows = _train_rows(run)
  assert len(rows) == 3 and all(np.isfinite(r["loss"]) for r in rows)
  chex.assert_tree_all_finite(res.embedding)
  on = _train_rows(smoke[1])
  if switch == "use_ism":           # no pseudo-samples: L_imb and its parts are 0 (§4.7.1)
    assert all(r["n_pseudo"] == 0 and r["l_imb"] == 0 and r["mmd"] == 0 and r["rep"] == 0
               for r in rows)
    assert any(r["mmd"] != 0 for r in on)
  elif switch == "use_routing":     # no FN/HN decisions: no soft mask, no push-pull (§4.7.2)
    assert all(r["n_fn"] == r["n_hn"] == 0 and r["term_hn"] == 0 and r["l_push"] == 0
               and r["theta_max"] == 0 for r in rows)
  elif switch == "use_scl":         # no sample-level contrast L_feat (§4.7.3)
    assert all(r["l_feat"] == 0 for r in rows) and all(r["l_feat"] != 0 for r in on)
  else:                             # no curriculum: stage 3 and p_0 from the first epoch (§4.7.4)
    assert [r["phase"] for r in rows] == [3, 3, 3]
    assert all(r["p_e"] == pytest.approx(0.3) for r in rows)
    assert rows[0]["term_cross"] > 0 and rows[0]["n_fn"] + rows[0]["n_hn"] > 0
    assert all(r["n_undecided"] == 0 for r in rows)


@pytest.mark.slow
def test_missing_views_are_weighted_out(blobs):
  """A missing view's values change nothing (every view-wise term takes presence weights, each
  view's k-means runs on its present rows); the per-batch kNN path (n >= knn_global_max) too."""
  rng = np.random.default_rng(1)
  mask = np.ones((N, 3), bool)
  mask[rng.choice(N, 15, replace=False), rng.integers(0, 3, 15)] = False
  out = []
  for fill in (0.0, 3.0):
    views = tuple(np.where(mask[:, [v]], x, fill).astype(np.float32)
                  for v, x in enumerate(blobs.views))
    run = Run(None)
    res, _ = _fit(Views(views, mask), run=run, knn_global_max=10, epochs=2, e_w=0, e_c=1)
    assert res.info["missing_views"] and not res.info["global_knn_graph"]
    assert all(np.isfinite(r["loss"]) for r in _train_rows(run))
    out.append(res)
  np.testing.assert_array_equal(out[0].labels, out[1].labels)
  np.testing.assert_allclose(out[0].embedding, out[1].embedding, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_estimator_contract(blobs, smoke):
  cls = get_estimator("mvsib")
  est = cls(n_clusters=K, random_state=0, scaling="none", **TINY)
  assert est.get_params()["epochs"] == 3 and est.get_params()["pretrain_epochs"] == 2
  labels = est.fit_predict(list(blobs.views))
  np.testing.assert_array_equal(labels, smoke[0].labels)   # same seed, same data, same labels
  assert est.fit_info_["epochs"] == {"pretrain": 2, "train": 3}
  z = est.transform(list(blobs.views))
  chex.assert_shape(z, (N, 8))
  np.testing.assert_allclose(z, est.embedding_, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(est.predict(list(blobs.views)), est.labels_)
  chex.assert_shape(est.predict([v[:7] for v in blobs.views]), (7,))
  assert dataclasses.asdict(est.config)["hidden"] == (16, 16, 32)
