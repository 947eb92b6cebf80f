"""IDCL end to end on tiny inputs: smoke fit, ablation switches, resume, estimator contract."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clustering_jax.api import get_estimator
from clustering_jax.api.idcl import IDCL
from clustering_jax.data import builtin
from clustering_jax.methods import idcl as m
from clustering_jax.nets.mlp import MLPAutoencoder
from clustering_jax.nets.transformer import TransformerAutoencoder
from clustering_jax.ops.partitions import align_partitions
from clustering_jax.train import Run
from clustering_jax.train.health import autoencoder_health
from clustering_jax.train.engine import ScannedEpoch, epoch_batches, new_state

TINY = dict(hidden=(16, 16, 32), latent=4, pretrain_epochs=2, epochs=3, batch_size=64,
            kmeans_n_init=2)


@pytest.fixture(scope="module")
def small_digits():
  d = builtin.digits()
  keep = np.arange(200)
  return d.replace(views=(d.views[0][keep],), labels=d.labels[keep])


def fit(data, run=None, seed=0, **kw):
  return IDCL(n_clusters=data.n_clusters, random_state=seed, **{**TINY, **kw}).fit(data, run=run)


def test_registry_and_params():
  assert get_estimator("idcl") is IDCL
  est = IDCL(n_clusters=10)
  assert est.get_params()["alpha"] == 0.1 and est.get_params()["t_grow"] == 100.0
  assert est.config.kmeans_init == "warm"   # docs/methods/idcl.md, "Defaults"
  assert est.config.pretrain_epochs == 1000 and est.config.epochs == 200
  # the pre-training ends at the clustering stage's rate, and follows it when lr changes
  assert est.config.pretrain_end_lr is None and est.config.pretrain_end_rate == est.config.lr
  assert IDCL(lr=0.0005).config.pretrain_end_rate == 0.0005
  assert IDCL(lr=0.01).config.pretrain_end_rate == est.config.pretrain_lr   # capped at the peak
  assert est.config.lr == 0.001  # paper: 0.01 (see the method page)
  assert est.config.warmup == 0.0
  # pre-training: peak 0.001 with warm-up and cosine decay, chosen without labels
  assert (est.config.pretrain_lr, est.config.pretrain_schedule) == (0.001, "warmup_cosine")
  # Eq. 13 and Eq. 16-17: L_rec summed over pixels, both terms averaged over the batch
  assert (est.config.rec_loss, est.config.kl_reduce) == ("sum", "mean")
  with pytest.raises(TypeError):
    IDCL(n_clusters=3, not_a_param=1)


@pytest.mark.slow
def test_smoke_fit_tiny_digits(small_digits):
  run = Run(None)
  est = fit(small_digits, run=run)
  chex.assert_shape((est.labels_, est.init_labels_), (200,))
  chex.assert_shape(est.embedding_, (200, 4))
  assert np.isfinite(est.embedding_).all()
  info = est.fit_info_
  assert info["net"] == "TransformerAutoencoder"
  assert info["epochs"] == {"pretrain": 2, "train": 3}
  assert set(info["timing"]) == {"pretrain", "train"}
  t = info["timing"]["train"]
  assert t["compile_s"] > 0 and t["steps_per_s"] > 0 and t["epoch_s"] > 0
  assert t["n_compiles"] == info["timing"]["pretrain"]["n_compiles"] == 1
  train_rows = [r for r in run.history if r["stage"] == "train"]
  assert train_rows and all(np.isfinite(r["loss_kl"]) for r in train_rows if "loss_kl" in r)
  # ζ0 = 0.6 of every cluster at the first clustering epoch (Eq. 7 with ceil per cluster)
  assert 0.6 * 200 <= train_rows[0]["n_curriculum"] <= 0.6 * 200 + 10
  # transform / predict on new data reuse the fitted encoder and cores
  z = est.transform(small_digits.views[0][:5])
  chex.assert_shape(z, (5, 4))
  np.testing.assert_allclose(z, est.embedding_[:5], rtol=1e-4, atol=1e-4)
  pred = est.predict(small_digits.views[0])
  assert np.mean(pred == est.labels_) > 0.99  # the same cores and Eq. 10-11


def _assign(cfg, z, n_clusters=3, zeta=0.6):
  net = m.make_net(cfg, (1, 8, 8, 1))
  steps = m.make_steps(net, cfg, n_clusters)
  return steps["assign"](z, jax.random.key(0), jnp.zeros(z.shape[0], jnp.int32),
                         jnp.float32(zeta))


def test_ablation_assignment_center_vs_core():
  rng = np.random.default_rng(0)
  z = jnp.asarray(np.r_[rng.normal(0, 1, (40, 2)), rng.normal(6, 2, (40, 2))], jnp.float32)
  core = _assign(m.Config(**TINY), z, n_clusters=2)
  cent = _assign(m.Config(**TINY, assignment="center"), z, n_clusters=2)
  chex.assert_shape(core["anchors"], (80, 2))   # density cores: weights over all samples
  chex.assert_shape(cent["anchors"], (2, 2))    # k-means centers
  assert 2 <= int(core["anchor_w"].sum()) <= 6   # ~5 % of each cluster
  assert not np.allclose(np.asarray(core["p"]), np.asarray(cent["p"]), atol=1e-3)


def test_kmeans_init_previous_keeps_last_epochs_clusters():
  """kmeans_init="previous": the clusters of Eq. 7/9 are Y of iteration t-1 (no k-means)."""
  rng = np.random.default_rng(4)
  z = jnp.asarray(np.r_[rng.normal(0, 1, (30, 2)), rng.normal(8, 1, (30, 2))], jnp.float32)
  prev = jnp.asarray(np.r_[np.ones(30), np.zeros(30)], jnp.int32)   # swapped ids
  cfg = m.Config(**TINY, kmeans_init="previous")
  steps = m.make_steps(m.make_net(cfg, (1, 8, 8, 1)), cfg, 2)
  a = steps["assign"](z, jax.random.key(0), prev, jnp.float32(0.6))
  np.testing.assert_array_equal(np.asarray(a["km_labels"]), np.asarray(prev))
  np.testing.assert_array_equal(np.asarray(a["y"]), np.asarray(prev))  # ids carried over
  # cores lie inside the previous clusters: every core anchor keeps its cluster's id
  core = np.asarray(a["core"])
  assert core[:30].sum() >= 1 and core[30:].sum() >= 1
  with pytest.raises(ValueError, match="kmeans_init"):
    m.Config(kmeans_init="nope").validate()


def test_ablation_pace_switches():
  z = jnp.asarray(np.random.default_rng(1).normal(size=(60, 3)), jnp.float32)
  v_exp = _assign(m.Config(**TINY), z, zeta=float(m.pacing(20, zeta0=0.6, zeta_max=0.95,
                                                            t_grow=100)))["v"]
  v_lin = _assign(m.Config(**TINY), z, zeta=float(m.pacing(20, zeta0=0.6, zeta_max=0.95,
                                                            t_grow=100, pace="linear")))["v"]
  assert int(v_exp.sum()) < int(v_lin.sum()) < 60   # slow-then-fast starts slower
  all_cfg = m.Config(**TINY, pace="all")
  zeta_all = m.pacing(0, zeta0=all_cfg.zeta0, zeta_max=all_cfg.zeta_max, t_grow=1, pace="all")
  assert int(_assign(all_cfg, z, zeta=float(zeta_all))["v"].sum()) == 60


def test_ablation_backbone():
  cfg = m.Config(**TINY)
  assert isinstance(m.make_net(cfg, (5, 8, 8, 1)), TransformerAutoencoder)
  assert isinstance(m.make_net(dataclasses.replace(cfg, backbone="mlp"), (5, 8, 8, 1)),
                    MLPAutoencoder)
  assert isinstance(m.make_net(cfg, (5, 64)), MLPAutoencoder)  # vectors


def test_image_resize_rule():
  cfg = m.Config()
  assert m.resize_side(cfg, (28, 28, 1)) == 32   # 7x7 patches (49 odd) -> 32x32 (App. F)
  assert m.resize_side(cfg, (16, 16, 1)) is None
  assert m.resize_side(cfg, (8, 8, 1)) is None


@pytest.mark.slow
def test_vector_data_uses_mlp():
  data = builtin.blobs(n_samples=120, n_clusters=3, n_features=6)
  est = fit(data, epochs=2)
  assert est.fit_info_["net"] == "MLPAutoencoder"
  chex.assert_shape(est.embedding_, (120, 4))
  assert np.isfinite(est.embedding_).all() and set(np.unique(est.labels_)) <= {0, 1, 2}


def test_alignment_is_a_permutation():
  old = np.array([0, 0, 1, 1, 2, 2])
  new = np.array([2, 2, 0, 0, 1, 1])
  perm = align_partitions(new, old, 3)
  np.testing.assert_array_equal(perm[new], old)


class Killed(RuntimeError):
  pass


def _killed_then_resumed(data, tmp_path, stage, epoch, **kw):
  """Fits until `stage` logs `epoch`, kills the run there, resumes it from its checkpoints;
  returns (uninterrupted fit, resumed fit, the resumed run's first logged epoch of stage)."""
  class KillingRun(Run):
    def log(self, s, e, metrics, **k):
      if (s, e) == (stage, epoch):
        raise Killed()
      return super().log(s, e, metrics, **k)

  ref = fit(data, run=Run(None), **kw)
  with pytest.raises(Killed):
    fit(data, run=KillingRun(tmp_path, checkpoint_every=1), **kw)
  run = Run(tmp_path, checkpoint_every=1)
  n_before = len(run.history)  # the killed run's log, which the resumed run continues
  resumed = fit(data, run=run, **kw)
  run.close()
  return ref, resumed, [r["epoch"] for r in run.history[n_before:] if r["stage"] == stage][0]


@pytest.mark.slow
def test_resume_matches_uninterrupted(tmp_path, small_digits):
  ref, resumed, first = _killed_then_resumed(small_digits, tmp_path, "train", 2, epochs=4,
                                             tol=0.0)
  assert first == 2
  np.testing.assert_array_equal(resumed.labels_, ref.labels_)
  # the label-free stage checks cover the whole run, not only the epochs after the resume
  for k in ("pretrain_rec_over_variance", "cluster_rec_over_pretrain"):
    assert resumed.fit_info_[k] == pytest.approx(ref.fit_info_[k], rel=1e-4), k
  np.testing.assert_allclose(resumed.embedding_, ref.embedding_, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_loss_reductions_switch_the_objective():
  """kl_reduce="sum" is Eq. 14 as printed (Σ over the batch); rec_loss="sum" is Eq. 13."""
  rng = np.random.default_rng(3)
  x_all = jnp.asarray(rng.uniform(size=(32, 8, 8, 1)), jnp.float32)
  p_all = jnp.asarray(rng.dirichlet(np.ones(3), size=32), jnp.float32)
  idx, w = jnp.arange(8, dtype=jnp.int32), jnp.ones(8)
  out = {}
  for kl_reduce in ("mean", "sum"):
    for rec in ("mean", "sum"):
      cfg = m.Config(**TINY, kl_reduce=kl_reduce, rec_loss=rec, augment=False)
      net = m.make_net(cfg, x_all.shape)
      steps = m.make_steps(net, cfg, 3)
      params = net.init(jax.random.key(0), x_all[:2])
      z = net.apply(params, x_all, method="encode")
      state = new_state(params, m.optimizers(cfg, 0, 0)[1])
      lab = jnp.asarray(np.arange(32) % 3, jnp.int32)
      _, met = jax.jit(steps["train_step"])(state, (x_all, p_all, z, lab, jnp.ones(32)), idx,
                                            w, jax.random.key(1))
      out[kl_reduce, rec] = {k: float(v) for k, v in met.items()}
  np.testing.assert_allclose(out["sum", "mean"]["loss_kl"], 8 * out["mean", "mean"]["loss_kl"],
                             rtol=1e-5)
  np.testing.assert_allclose(out["mean", "sum"]["loss_rec"], 64 * out["mean", "mean"]["loss_rec"],
                             rtol=1e-5)
  for v in out.values():  # Eq. 14: L = L_rec + α·L_clu
    np.testing.assert_allclose(v["loss"], v["loss_rec"] + 0.1 * v["loss_kl"], rtol=1e-5)


def test_pretrain_lr_schedule_values_and_validation():
  """warmup_cosine: 0 -> 1 linearly over 10 % of the steps, then a half cosine to
  pretrain_end_lr / pretrain_lr."""
  cfg = m.Config(pretrain_schedule="warmup_cosine", pretrain_warmup=0.1, pretrain_end_lr=0.0)
  f = lambda c: m.pretrain_schedule(cfg, 100)(c) / cfg.pretrain_lr
  t = np.arange(101)
  ref = np.where(t < 10, t / 10, 0.5 * (1 + np.cos(np.pi * np.clip((t - 10) / 90, 0, 1))))
  np.testing.assert_allclose([float(f(i)) for i in t], ref, atol=1e-6)
  const = m.pretrain_schedule(m.Config(pretrain_schedule="constant"), 100)
  assert float(const(0)) == float(const(99)) == m.Config().pretrain_lr
  # pretrain_end_lr: the half cosine ends at end/peak instead of 0
  g = lambda c: m.pretrain_schedule(dataclasses.replace(cfg, pretrain_lr=0.001,
                                                        pretrain_end_lr=0.0002), 100)(c) / 0.001
  ref_end = np.where(t < 10, t / 10, 0.2 + 0.8 * 0.5 * (1 + np.cos(np.pi * np.clip((t - 10) / 90,
                                                                                   0, 1))))
  np.testing.assert_allclose([float(g(i)) for i in t], ref_end, atol=1e-6)
  with pytest.raises(ValueError, match="pretrain_end_lr"):
    m.Config(pretrain_lr=0.001, pretrain_end_lr=0.002).validate()
  with pytest.raises(ValueError, match="pretrain_schedule"):
    m.Config(pretrain_schedule="step").validate()
  with pytest.raises(ValueError, match="pretrain_warmup"):
    m.Config(pretrain_warmup=1.0).validate()


@pytest.mark.slow
def test_pretrain_schedule_scales_the_adam_step():
  """At Adam step 0 the warm-up factor is 0 (no move); at the end of warm-up the step equals
  the constant-rate step."""
  x_all = jnp.asarray(np.random.default_rng(0).uniform(size=(16, 8, 8, 1)), jnp.float32)
  idx, w, key = jnp.arange(8, dtype=jnp.int32), jnp.ones(8), jax.random.key(1)
  moved = {}
  for sched in ("constant", "warmup_cosine"):
    cfg = m.Config(**TINY, augment=False, pretrain_schedule=sched, pretrain_warmup=0.5,
                   pretrain_lr=0.001)
    net = m.make_net(cfg, x_all.shape)
    step = jax.jit(m.make_steps(net, cfg, 2)["pretrain_step"])
    params = net.init(jax.random.key(0), x_all[:2])
    state = new_state(params, m.optimizers(cfg, 4, 0)[0])   # warm-up: 2 of 4 steps
    deltas = []
    for _ in range(3):
      new, _ = step(jax.tree.map(jnp.copy, state), x_all, idx, w, key)
      deltas.append(jax.tree.map(lambda a, b: np.asarray(a - b), new.params, state.params))
      state = new
    moved[sched] = deltas
  leaves = lambda t: np.concatenate([a.ravel() for a in jax.tree.leaves(t)])
  assert np.all(leaves(moved["warmup_cosine"][0]) == 0)                    # factor 0
  assert np.abs(leaves(moved["constant"][0])).max() > 0
  # step index 1: factor 0.5 on Adam's step (which differs from the constant run's
  # because the parameters differ); step index 2 is the peak: factor 1
  assert 0 < np.abs(leaves(moved["warmup_cosine"][1])).max() < 0.0011
  np.testing.assert_allclose(np.abs(leaves(moved["warmup_cosine"][1])).max(), 0.0005, rtol=0.05)


@pytest.mark.slow
def test_pretrain_resume_keeps_the_schedule(tmp_path, small_digits):
  """The schedule reads Adam's checkpointed step count: a pre-training killed after one
  epoch and resumed ends where an uninterrupted one does."""
  kw = dict(pretrain_epochs=3, epochs=0, pretrain_schedule="warmup_cosine",
            pretrain_lr=0.003)
  ref, resumed, first = _killed_then_resumed(small_digits, tmp_path, "pretrain", 1, **kw)
  assert first == 1
  np.testing.assert_allclose(resumed.embedding_, ref.embedding_, rtol=1e-5, atol=1e-5)
  const = fit(small_digits, run=Run(None), **{**kw, "pretrain_schedule": "constant"})
  assert not np.allclose(const.embedding_, ref.embedding_, atol=1e-4)


@pytest.mark.slow
def test_pretraining_that_learns_nothing_warns(small_digits):
  """fit_info_ reports the final pre-training L_rec over the data's total variance (label
  free); at a rate too small to move the weights it stays above 0.9 and fit warns."""
  run = Run(None)
  with pytest.warns(RuntimeWarning, match="total variance"):
    est = fit(small_digits, run=run, epochs=0, pretrain_lr=1e-12, pretrain_schedule="constant")
  x = np.asarray(small_digits.views[0], np.float64).reshape(200, -1)
  last = [r["loss_rec"] for r in run.history if r["stage"] == "pretrain"][-1]
  ratio = est.fit_info_["pretrain_rec_over_variance"]
  np.testing.assert_allclose(ratio, last / x.var(axis=0).sum(), rtol=1e-3)
  assert ratio > 0.9 and est.fit_info_["embedding_spread"] > 0


def test_pretrain_health_flags_a_collapsed_embedding():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(50, 8, 8, 1))
  z_ok = rng.normal(size=(50, 4))
  info, problems = autoencoder_health(x, z_ok, last_rec=0.1 * x.reshape(50, -1).var(0).sum())
  assert problems == [] and info["pretrain_rec_over_variance"] == pytest.approx(0.1)
  assert 0.5 < info["embedding_spread"] <= 1.0
  z_point = np.tile(rng.normal(size=(1, 4)), (50, 1))            # every input -> one point
  info, problems = autoencoder_health(x, z_point, last_rec=None)
  assert info["embedding_spread"] == 0.0 and len(problems) == 1 and "same point" in problems[0]
  _, problems = autoencoder_health(x, np.zeros((50, 4)), last_rec=None)   # the origin too
  assert len(problems) == 1
  # per-pixel L_rec (rec_loss="mean") is scaled back to a per-sample sum
  info, _ = autoencoder_health(x, z_ok, last_rec=x.reshape(50, -1).var(0).mean(),
                              rec_loss="mean")
  assert info["pretrain_rec_over_variance"] == pytest.approx(1.0)


def _with_count(opt_state, count):
  """An optax state whose step counters read `count`."""
  return jax.tree.map(lambda a: jnp.asarray(count, a.dtype) if a.ndim == 0 else a, opt_state)


@pytest.mark.slow
def test_clustering_warmup_scales_the_stage_steps():
  """Config.warmup: the clustering stage's s-th step is Adam's step times min(1, (s+1)/W),
  counted from Adam's count at the stage start (the pre-training's steps, or 0 after a reset)."""
  rng = np.random.default_rng(3)
  x_all = jnp.asarray(rng.uniform(size=(32, 8, 8, 1)), jnp.float32)
  p_all = jnp.asarray(rng.dirichlet(np.ones(3), size=32), jnp.float32)
  idx, w, key = jnp.arange(8, dtype=jnp.int32), jnp.ones(8), jax.random.key(1)
  lab = jnp.asarray(np.arange(32) % 3, jnp.int32)
  leaves = lambda t: np.concatenate([np.ravel(a) for a in jax.tree.leaves(t)])
  for reset, pre_steps in ((False, 5), (True, 5), (False, 0)):
    cfg = m.Config(**TINY, augment=False, reset_optimizer=reset)
    net = m.make_net(cfg, x_all.shape)
    params = net.init(jax.random.key(0), x_all[:2])
    z = net.apply(params, x_all, method="encode")
    step = jax.jit(m.make_steps(net, cfg, 3)["train_step"])
    consts = (x_all, p_all, z, lab, jnp.ones(32))
    deltas = {}
    for warm in (0, 4):
      tx = m.optimizers(cfg, pre_steps, warm)[1]
      s = new_state(params, tx)
      if not reset:   # the stage starts after the pre-training's Adam steps
        s = s.replace(opt_state=_with_count(s.opt_state, pre_steps))
      out = []
      for _ in range(5):
        before = leaves(s.params)
        s, _ = step(s, consts, idx, w, key)
        out.append(leaves(s.params) - before)
      deltas[warm] = out
    # first step of the stage: a quarter of the un-warmed step, from the same state (the
    # tolerance is the float32 rounding of parameter + step; the steps are ~1e-4)
    np.testing.assert_allclose(deltas[4][0], 0.25 * deltas[0][0], rtol=1e-3, atol=3e-7)
    assert np.abs(deltas[0][0]).max() > 0
  with pytest.raises(ValueError, match="warmup"):
    m.Config(warmup=1.5).validate()


@pytest.mark.slow
def test_clustering_stage_that_undoes_pretraining_warns(small_digits):
  """fit_info_ reports the largest clustering-epoch L_rec over the last pre-training one;
  a clustering lr far too large for the autoencoder raises it and fit warns (label free)."""
  run = Run(None)
  with pytest.warns(RuntimeWarning, match="raised L_rec"):
    est = fit(small_digits, run=run, pretrain_epochs=3, epochs=3, lr=0.5, warmup=0.0)
  pre = [r["loss_rec"] for r in run.history if r["stage"] == "pretrain"][-1]
  stage = [r["loss_rec"] for r in run.history if r["stage"] == "train" and "loss_rec" in r]
  np.testing.assert_allclose(est.fit_info_["cluster_rec_over_pretrain"], max(stage) / pre,
                             rtol=1e-3)
  assert est.fit_info_["cluster_rec_over_pretrain"] > 2


@pytest.mark.slow
def test_clustering_stage_shuffles_with_one_shape(small_digits, monkeypatch):
  """The curriculum set changes size every epoch; its shuffle must not (a new length is a
  new compile: 1-2 s per epoch on a GPU). Every shuffle of a fit has the length n."""
  from clustering_jax.train import batching
  lengths = []
  real = batching.epoch_permutation

  def spy(key, epoch, n):
    lengths.append(n)
    return real(key, epoch, n)

  monkeypatch.setattr(batching, "epoch_permutation", spy)
  run = Run(None)
  fit(small_digits, run=run, epochs=4, t_grow=2.0)
  sizes = [r["n_curriculum"] for r in run.history if r["stage"] == "train"]
  assert len(set(sizes)) > 1, sizes          # the set did change size between epochs
  assert len(lengths) >= TINY["pretrain_epochs"] + len(sizes)
  assert set(lengths) == {200}, sorted(set(lengths))


@pytest.mark.slow
def test_scanned_pretrain_epoch_equals_the_step_loop():
  """The engine's scanned epoch of `pretrain_step` (augmentation keys per batch) makes the
  same updates as calling the step batch by batch with fold_in(key, b)."""
  x_all = jnp.asarray(np.random.default_rng(0).uniform(size=(40, 8, 8, 1)), jnp.float32)
  cfg = m.Config(**TINY, augment=True, pretrain_schedule="warmup_cosine", pretrain_warmup=0.5)
  net = m.make_net(cfg, x_all.shape)
  step = m.make_steps(net, cfg, 2)["pretrain_step"]
  params = net.init(jax.random.key(0), x_all[:2])
  tx = m.optimizers(cfg, 6, 0)[0]
  idx, w = epoch_batches(np.arange(40)[::-1], 40, 16)       # 2 full batches (8 dropped)
  key = jax.random.key(3)
  scan = ScannedEpoch(step)
  s1, m1 = scan(new_state(jax.tree.map(jnp.copy, params), tx), x_all, idx, w, key)
  s2, losses = new_state(params, tx), []
  for b in range(2):
    s2, mb = jax.jit(step)(s2, x_all, jnp.asarray(idx[b]), jnp.asarray(w[b]),
                           jax.random.fold_in(key, b))
    losses.append(float(mb["loss_rec"]))
  chex.assert_trees_all_close(s1.params, s2.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m1["loss_rec"], np.mean(losses), rtol=1e-5)
  assert scan.steps == 2 and int(s1.step) == 2
