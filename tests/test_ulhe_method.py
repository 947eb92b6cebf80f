"""ULHE-DC method and estimator: a shrunk-config smoke run, the stop rule, the self-paced
schedule, the ablation switches, init, determinism and the estimator contract."""

import dataclasses

import chex
import jax
import numpy as np
import pytest

from clustering_jax import metrics
from clustering_jax.api import get_estimator
from clustering_jax.data import from_arrays
from clustering_jax.methods import ulhe
from clustering_jax.methods.base import Views
from clustering_jax.train import Run
from clustering_jax.train.engine import ScannedEpoch, new_state

TINY = dict(hidden=(16, 16, 32), latent=4, pretrain_epochs=3, pretrain_batch_size=32,
            epochs=6, batch_size=32, kmeans_n_init=2, pretrain_optimizer="adam",
            pretrain_lr=1e-3)


@pytest.fixture(scope="module")
def blobs():
  rng = np.random.default_rng(0)
  centers = rng.uniform(0, 1, (3, 12))
  y = np.repeat(np.arange(3), 32)
  x = np.clip(centers[y] + 0.05 * rng.normal(size=(96, 12)), 0, 1).astype(np.float32)
  return from_arrays(x, n_clusters=3), y


def _fit(data, seed=0, run=None, **over):
  cfg = ulhe.Config(**{**TINY, **over})
  return ulhe.fit(Views.of(data), data.n_clusters, cfg, key=jax.random.key(seed),
                  run=run or Run(None)), cfg


@pytest.fixture(scope="module")
def smoke(blobs):
  data, y = blobs
  run = Run(None, score_fn=lambda lab: {"acc": metrics.accuracy(y, lab)})
  res, cfg = _fit(data, run=run, eta=0.0)
  return res, run, cfg


def test_smoke_run_shapes_and_info(smoke, blobs):
  res, run, _ = smoke
  chex.assert_shape(res.labels, (96,))
  chex.assert_shape(res.init_labels, (96,))
  chex.assert_shape(res.embedding, (96, 4))
  chex.assert_tree_all_finite(res.embedding)
  np.testing.assert_allclose(np.linalg.norm(res.embedding, axis=1), 1.0, atol=1e-5)
  assert set(np.unique(res.labels)) <= {0, 1, 2}
  info = res.info
  assert info["epochs"] == {"pretrain": 3, "train": 6}
  for stage in ("pretrain", "train"):
    t = info["timing"][stage]
    assert t["epoch_s"] > 0 and t["compile_s"] > 0 and t["steps_per_s"] > 0
  # The growing self-paced set reuses one compiled epoch, with empty batches (steps 1-2) and
  # once every sample is selected (step 3).
  assert info["timing"]["pretrain"]["n_compiles"] == 1
  assert info["timing"]["train"]["n_compiles"] == 1
  stages = [r["stage"] for r in run.history]
  assert stages.count("pretrain") == 3 and stages.count("init") == 1
  assert stages.count("train") == 6
  for r in run.history:
    for v in r.values():
      assert not isinstance(v, float) or np.isfinite(v)
  # Well-separated blobs: the cosine k-means start and the final model both find them.
  y = blobs[1]
  assert metrics.accuracy(y, res.init_labels) > 0.9
  assert metrics.accuracy(y, res.labels) > 0.9


def test_self_paced_schedule_grows_easy_to_hard(smoke):
  _, run, _ = smoke
  rows = [r for r in run.history if r["stage"] == "train"]
  assert [r["spl_step"] for r in rows] == [0, 0, 1, 1, 2, 2]
  n_train = [r["n_train"] for r in rows]
  assert n_train[0] < n_train[2] < n_train[4] == 96
  assert n_train[0] == 3 * 11                            # ceil(32 / 3) per cluster


@pytest.mark.slow
def test_stop_rule_ends_training(blobs):
  data, _ = blobs
  # eta = 1.01: any change rate passes Eq. 14, so with one schedule step training stops at
  # the first check after a w-update (epoch 1), not at epoch 0 (s^(0) from k-means).
  res, _ = _fit(data, eta=1.01, spl_steps=1, pretrain_epochs=1)
  assert res.info["stopped_by_rule"] and res.info["stop_epoch"] == 1
  assert res.info["epochs"]["train"] == 2     # epoch 0 trained, epoch 1 stopped
  # Before the last step the rule advances the schedule instead of stopping.
  res, _ = _fit(data, eta=1.01, spl_steps=3, pretrain_epochs=1)
  adv = res.info["spl_advances"]
  assert [a["step"] for a in adv] == [1, 2] and all(a["by_stop_rule"] for a in adv)
  assert res.info["stop_epoch"] == 3
  # spl_advance="fixed": the same always-true rule no longer shortens steps 1 and 2
  # (6 epochs, steps of 2); it ends training at the first check of the last step.
  res, _ = _fit(data, eta=1.01, spl_steps=3, pretrain_epochs=1, spl_advance="fixed")
  adv = res.info["spl_advances"]
  assert [(a["epoch"], a["step"], a["by_stop_rule"]) for a in adv] == [(2, 1, False),
                                                                        (4, 2, False)]
  assert res.info["stop_epoch"] == 5 and res.info["epochs"]["train"] == 6


@pytest.mark.parametrize("unif,cmpt", [(False, True), (True, False), (False, False)])
def test_ablation_switches_change_the_objective(blobs, unif, cmpt):
  data, _ = blobs
  run = Run(None)
  _fit(data, run=run, use_unif=unif, use_cmpt=cmpt, pretrain_epochs=1, epochs=2,
       eta=0.0)
  cfg = ulhe.Config()
  for r in (r for r in run.history if r["stage"] == "train"):
    ref = r["clus"] + cfg.lambda0 * r["norm"]
    ref += cfg.lambda1 * r["unif"] * unif + cfg.lambda2 * r["cmpt"] * cmpt
    # Per-batch loss is linear in the terms, so the epoch means obey the same sum.
    assert r["loss"] == pytest.approx(ref, rel=1e-4, abs=1e-6)
    assert r["unif"] > 0                                 # computed (logged) either way


def test_torch_linear_init_bounds():
  cfg = ulhe.Config(hidden=(8, 6), latent=3)
  params = ulhe.init_params(cfg, jax.random.key(0), 20)
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    layer = params
    for p in path[:-1]:
      layer = layer[p.key]
    bound = 1 / np.sqrt(layer["kernel"].shape[0])
    assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.5 * bound


def test_estimator_contract_and_determinism(blobs, smoke):
  data, _ = blobs
  est_cls = get_estimator("ulhe")
  assert est_cls.epochs_field == "epochs"
  est = est_cls(n_clusters=3, random_state=0, scaling="none", eta=0.0, **TINY)
  est.fit(data.views[0])
  # Same seed, same data -> the same labels as the method-level smoke run.
  np.testing.assert_array_equal(est.labels_, smoke[0].labels)
  # predict is Eq. 6 with the final encoder and centroids: it reproduces labels_.
  np.testing.assert_array_equal(est.predict(data.views[0]), est.labels_)
  emb = est.transform(data.views[0])
  chex.assert_shape(emb, (96, 4))
  chex.assert_shape(est.init_embedding_, (96, 4))                 # the starting point
  np.testing.assert_allclose(np.linalg.norm(est.init_embedding_, axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(emb, est.embedding_, atol=1e-5)
  with pytest.raises(TypeError):
    est_cls(n_clusters=3, no_such_param=1)


def test_bad_config_values(blobs):
  data, _ = blobs
  with pytest.raises(ValueError):
    _fit(data, spl_steps=0)
  with pytest.raises(ValueError, match="spl_advance"):
    _fit(data, spl_advance="adaptive")
  with pytest.raises(ValueError):
    _fit(data, pretrain_optimizer="rmsprop")
  assert dataclasses.asdict(ulhe.Config())["lambda1"] == 0.08


def _tiny_images(n=48, seed=0):
  rng = np.random.default_rng(seed)
  x = np.zeros((n, 8, 8, 1), np.float32)
  y = np.arange(n) % 3
  for i in range(n):                      # three stroke directions, jittered
    r = 2 + rng.integers(0, 3)
    if y[i] == 0:
      x[i, r, 1:7] = 1.0
    elif y[i] == 1:
      x[i, 1:7, r] = 1.0
    else:
      x[i, np.arange(1, 7), np.arange(1, 7)] = 1.0
  return from_arrays(x, n_clusters=3), y


@pytest.mark.slow
def test_augment_switches_change_each_stage_and_need_images(blobs):
  data, _ = _tiny_images()
  cfg = ulhe.Config(**TINY)
  x = jax.numpy.asarray(data.concat())
  net = ulhe.make_net(cfg, x.shape[1])
  params = ulhe.init_params(cfg, jax.random.key(0), x.shape[1])
  tx = ulhe.optimizer("adam", 1e-3, 0.9)
  idx, w = jax.numpy.arange(48).reshape(3, 16), jax.numpy.ones((3, 16))
  k0, k1 = jax.random.key(1), jax.random.key(2)

  def first_epoch(step, params, x, key, extra=None):
    return ScannedEpoch(step)(new_state(jax.tree.map(jax.numpy.copy, params), tx, extra), x,
                              idx, w, key)[1]

  plain = first_epoch(ulhe.make_pretrain_step(net, "mean"), params, x, k0)["rec"]
  aug = ulhe.make_pretrain_step(net, "mean", (8, 8, 1))
  a0, a0b, a1 = (first_epoch(aug, params, x, k)["rec"] for k in (k0, k0, k1))
  assert float(a0) != pytest.approx(float(plain), rel=1e-4)   # the inputs were warped
  assert float(a0) == float(a0b) and float(a0) != float(a1)    # keyed, deterministic
  enc = params["params"]["encoder"]
  sm = lambda: {"centers": jax.numpy.eye(3, cfg.latent), "labels": jax.numpy.arange(48) % 3}
  c_plain = first_epoch(ulhe.make_cluster_step(net, cfg), enc, x, k0, sm())
  c_aug = first_epoch(ulhe.make_cluster_step(net, cfg, (8, 8, 1)), enc, x, k0, sm())
  chex.assert_tree_all_finite(c_aug)
  assert float(c_aug["clus"]) != pytest.approx(float(c_plain["clus"]), rel=1e-4)
  # End to end on images; on vector data the switches are a clear error.
  res, _ = _fit(data, augment_pretrain=True, augment_cluster=True)
  chex.assert_tree_all_finite(res.embedding)
  with pytest.raises(ValueError, match="image data"):
    _fit(blobs[0], augment_pretrain=True)
