"""HaDis end to end on tiny inputs: a 2-epoch fit (shapes, logs, one compile), the EMA teacher,
resume, the ablation switches, the optimizer and the estimator contract.

The fits compile one scanned step each (about 15 s of CPU; far more on a loaded machine), so
they are `slow` and share one fitted estimator where they can.
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clustering_jax.api import get_estimator
from clustering_jax.api.hadis import HaDis
from clustering_jax.data import builtin
from clustering_jax.data.augment import DIGITS_PRESET
from clustering_jax.data.container import DataError
from clustering_jax.methods import hadis as m
from clustering_jax.ops import selfsup as ss
from clustering_jax.train import Run
from clustering_jax.train.engine import new_state

TINY = dict(backbone="cnn", widths=(8, 16), proj_hidden=32, proj_dim=16, pred_hidden=32,
            epochs=2, warmup_epochs=1, batch_size=16, kmeans_n_init=2, embed_block=32)
N, K = 48, 10


@pytest.fixture(scope="module")
def small_digits():
  d = builtin.digits()
  keep = np.arange(N)
  return d.replace(views=(d.views[0][keep],), labels=d.labels[keep])


def fit(data, run=None, **kw):
  return HaDis(n_clusters=K, random_state=0, **{**TINY, **kw}).fit(data, run=run)


@pytest.fixture(scope="module")
def fitted(small_digits):
  run = Run(None)
  return fit(small_digits, run=run), run


# -- cheap checks ---------------------------------------------------------------------------
def test_registry_defaults_and_validation():
  assert get_estimator("hadis") is HaDis
  cfg = HaDis(n_clusters=10).config
  assert (cfg.backbone, cfg.epochs, cfg.batch_size, cfg.lr) == ("auto", 1000, 256, 0.05)
  assert (cfg.momentum, cfg.weight_decay, cfg.predictor_lr_mult) == (0.9, 5e-4, 10.0)
  assert (cfg.ema, cfg.lam, cfg.eps, cfg.tau_h, cfg.tau_p) == (0.996, 0.1, 0.001, 0.5, 0.5)
  assert (cfg.split, cfg.negatives, cfg.proj_hidden, cfg.proj_dim) == ("paper", "teacher", 4096,
                                                                       256)
  assert cfg.warmup == 50 and dataclasses.replace(cfg, epochs=50).warmup == 3
  assert dataclasses.replace(cfg, warmup_epochs=7).warmup == 7
  for bad in (dict(split="both"), dict(negatives="x"), dict(ema=1.5), dict(lr=0.0),
              dict(warmup_epochs=-1), dict(backbone="vit"), dict(widths=(8, 0))):
    with pytest.raises(ValueError):
      dataclasses.replace(cfg, **bad).validate()
  with pytest.raises(TypeError):
    HaDis(n_clusters=3, not_a_param=1)


def test_cpu_configs_load_and_validate():
  """The CPU settings of docs/methods/hadis.md: the same network, heads and batch; hdigit-mnist
  50 epochs with 3 warm-up epochs, digits 200 epochs with the 5 % warm-up (10)."""
  from pathlib import Path

  from clustering_jax.experiment import estimator_params, load_overrides
  root = Path(__file__).resolve().parents[1] / "experiments" / "configs"
  cfgs = {}
  for name in ("hadis_cpu", "hadis_digits"):
    kw = estimator_params("hadis", overrides=load_overrides(str(root / f"{name}.json")))
    cfgs[name] = HaDis(**kw).config
    cfgs[name].validate()
  cpu, dig = cfgs["hadis_cpu"], cfgs["hadis_digits"]
  for c in (cpu, dig):
    assert (c.backbone, tuple(c.widths), c.proj_hidden, c.proj_dim, c.pred_hidden,
            c.batch_size) == ("cnn", (16, 32, 64, 128), 512, 128, 512, 256)
  assert (cpu.epochs, cpu.warmup) == (50, 3)
  assert (dig.epochs, dig.warmup) == (200, 10)
  same = lambda c: dataclasses.replace(c, epochs=0, warmup_epochs=None)
  assert same(cpu) == same(dig)


def test_backbone_and_augmentation_by_shape():
  cfg = m.Config()
  assert m.backbone_kind(cfg, (8, 8, 1)) == "cnn"
  assert m.backbone_kind(cfg, (32, 32, 3)) == "resnet18"
  assert m.backbone_kind(dataclasses.replace(cfg, backbone="cnn"), (32, 32, 3)) == "cnn"
  assert m.augment_preset(cfg, (8, 8, 1)) == DIGITS_PRESET
  assert m.augment_preset(cfg, (32, 32, 3)).name == "simclr-rgb"
  rot = m.augment_preset(dataclasses.replace(cfg, rotate_shift=True), (28, 28, 1))
  assert (rot.rotate_degrees, rot.rotate_shift) == (10.0, 0.1)
  with pytest.raises(ValueError, match="3-channel"):
    m.augment_preset(dataclasses.replace(cfg, augment="rgb"), (8, 8, 1))


def test_schedule_and_predictor_rate():
  """Warm-up from 0, cosine to 0; the predictor's update is 10x the student's (same grads)."""
  sched = m.lr_schedule(0.1, 10, 110)
  assert float(sched(0)) == 0.0 and float(sched(5)) == pytest.approx(0.05)
  assert float(sched(10)) == pytest.approx(0.1) and float(sched(60)) == pytest.approx(0.05)
  assert float(sched(110)) == pytest.approx(0.0, abs=1e-7)
  assert float(m.lr_schedule(0.1, 0, 10)(0)) == pytest.approx(0.1)
  cfg = m.Config(weight_decay=0.0, momentum=0.0)
  tx = m.make_optimizer(cfg, lambda c: 0.5)
  params = {"student": {"a": jnp.ones(3)}, "predictor": {"b": jnp.ones(2)}}
  grads = jax.tree.map(jnp.ones_like, params)
  upd, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(upd["student"]["a"], -0.5)
  np.testing.assert_allclose(upd["predictor"]["b"], -5.0)
  # weight decay reaches every parameter: 5e-4·p is added to the gradient
  tx = m.make_optimizer(m.Config(momentum=0.0), lambda c: 1.0)
  upd, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_allclose(upd["student"]["a"], -5e-4, rtol=1e-6)
  # BYOL's cosine ramp of α for ema_schedule="cosine"
  ramp = dataclasses.replace(cfg, ema_schedule="cosine")
  assert float(m.ema_momentum(ramp, 0, 100)) == pytest.approx(0.996)
  assert float(m.ema_momentum(ramp, 100, 100)) == pytest.approx(1.0)
  assert float(m.ema_momentum(cfg, 50, 100)) == pytest.approx(0.996)


def test_images_required():
  with pytest.raises(DataError, match="images"):
    HaDis(n_clusters=2).fit(np.random.default_rng(0).normal(size=(20, 5)))


# -- pieces of the step -----------------------------------------------------------------------
def _setup(cfg, n=32, shape=(8, 8, 1), seed=0):
  enc, pred = m.make_nets(cfg, shape)
  params, stats = m.init_variables(enc, pred, cfg, jax.random.key(seed), shape)
  extra = {"teacher": jax.tree.map(jnp.copy, params["student"]),
           "stats": {**stats, "teacher": jax.tree.map(jnp.copy, stats["student"])},
           "labels": jnp.asarray(np.arange(n) % 3, jnp.int32),
           "centers": jnp.zeros((3, cfg.proj_dim))}
  x = jnp.asarray(np.random.default_rng(seed).uniform(size=(n, *shape)), jnp.float32)
  return enc, pred, params, extra, x


@pytest.mark.slow
def test_ablation_switches_change_what_they_say():
  """use_pcl / use_hsd drop their terms; pcl_on gates λ·L_PCL; ε = 0 is no noise at all."""
  cfg = m.Config(**{**TINY, "widths": (4,), "proj_hidden": 8, "proj_dim": 8, "pred_hidden": 8})
  enc, pred, params, extra, x = _setup(cfg, n=16)
  views, labels, w, key = jnp.stack([x[:8], x[8:]]), extra["labels"][:8], jnp.ones(8), \
      jax.random.key(3)

  def run(c, eps, pcl_on):
    return m.make_losses(enc, pred, c, 3)[2](params, extra, views, labels, w, key,
                                             jnp.float32(eps), jnp.float32(pcl_on))

  loss, (mt, _) = run(cfg, 0.0, 1.0)
  for k in ("loss_dsa", "loss_hsd", "loss_pcl", "hsd_n_pos", "hsd_n_neg", "hsd_w_p", "hsd_w_n",
            "hsd_frac_no_neg", "pcl_n_present"):
    assert k in mt and np.isfinite(float(mt[k])), k
  np.testing.assert_allclose(loss, mt["loss_dsa"] + mt["loss_hsd"] + 0.1 * mt["loss_pcl"],
                             rtol=1e-6)
  off, (m_off, _) = run(cfg, 0.0, 0.0)                          # warm-up: PCL logged, not added
  np.testing.assert_allclose(off, m_off["loss_dsa"] + m_off["loss_hsd"], rtol=1e-6)
  no_pcl, (m_np, _) = run(dataclasses.replace(cfg, use_pcl=False), 0.0, 1.0)
  assert "loss_pcl" not in m_np and "pcl_n_present" not in m_np
  np.testing.assert_allclose(no_pcl, m_np["loss_dsa"] + m_np["loss_hsd"], rtol=1e-6)
  no_hsd, (m_nh, _) = run(dataclasses.replace(cfg, use_hsd=False), 0.0, 1.0)
  assert "loss_hsd" not in m_nh and "hsd_n_pos" not in m_nh
  np.testing.assert_allclose(no_hsd, m_nh["loss_dsa"] + 0.1 * m_nh["loss_pcl"], rtol=1e-6)

  # ε = 0: L_DSA of the un-noised predictions, computed here without `diffuse`
  def fwd(module, variables, v):
    return module.apply(variables, v, train=True, mutable=["batch_stats"])[0]
  st = extra["stats"]
  t = jnp.stack([fwd(enc, m.teacher_variables(extra), v) for v in views])
  z = jnp.stack([fwd(enc, {"params": params["student"], "batch_stats": st["student"]}, v)
                 for v in views])
  p = jnp.stack([fwd(pred, {"params": params["predictor"], "batch_stats": st["predictor"]}, v)
                 for v in z])
  dsa = (ss.byol_align(p[0], t[1])[0] + ss.byol_align(p[1], t[0])[0]) / 2
  np.testing.assert_allclose(mt["loss_dsa"], dsa, rtol=1e-5)
  _, (m_eps, _) = run(cfg, 1.0, 1.0)                            # a large ε moves the predictions
  assert abs(float(m_eps["loss_dsa"]) - float(dsa)) > 1e-4


@pytest.mark.slow
def test_teacher_moves_by_ema_only():
  """After one step: student changed by SGD; teacher = α·old teacher + (1 − α)·new student
  (Eq. 12, after the optimizer step), checked leaf by leaf in NumPy."""
  cfg = m.Config(**TINY)
  enc, pred, params, extra, x = _setup(cfg)
  # a teacher different from the student, so the check sees both terms
  extra["teacher"] = jax.tree.map(lambda a: a + 0.01, extra["teacher"])
  old_t = jax.tree.map(np.asarray, extra["teacher"])
  old_s = jax.tree.map(np.asarray, params["student"])
  tx = m.make_optimizer(cfg, m.lr_schedule(0.05, 0, 10))
  state = new_state(params, tx, extra=extra)
  step = jax.jit(m.make_step(enc, pred, cfg, m.augment_preset(cfg, (8, 8, 1)), 3, 10))
  consts = {"x": x, "eps": jnp.float32(0.001), "pcl_on": jnp.float32(1.0)}
  new, metrics = step(state, consts, jnp.arange(16), jnp.ones(16), jax.random.key(5))
  assert float(metrics["ema"]) == pytest.approx(0.996)
  new_s = jax.tree.map(np.asarray, new.params["student"])
  moved = [np.max(np.abs(a - b)) for a, b in zip(jax.tree.leaves(new_s), jax.tree.leaves(old_s))]
  assert max(moved) > 0
  expect = jax.tree.map(lambda t, s: 0.996 * t.astype(np.float64) + 0.004 * s, old_t, new_s)
  chex.assert_trees_all_close(jax.tree.map(np.asarray, new.extra["teacher"]), expect,
                              rtol=1e-6, atol=1e-7)
  # the teacher's BatchNorm keeps its own running statistics (its forward in train mode)
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(new.extra["stats"]["teacher"]),
                                            jax.tree.leaves(extra["stats"]["teacher"])))
  np.testing.assert_array_equal(new.extra["labels"], extra["labels"])


# -- end to end -------------------------------------------------------------------------------
@pytest.mark.slow
def test_fit_shapes_logs_and_one_compile(fitted, small_digits):
  est, run = fitted
  chex.assert_shape((est.labels_, est.init_labels_), (N,))
  chex.assert_shape((est.embedding_, est.init_embedding_), (N, 16))
  for lab in (est.labels_, est.init_labels_):
    assert lab.min() >= 0 and lab.max() < K
  chex.assert_tree_all_finite((est.embedding_, est.init_embedding_))
  np.testing.assert_allclose(np.linalg.norm(est.embedding_, axis=1), 1.0, rtol=1e-5)
  info = est.fit_info_
  assert info["epochs"] == {"train": 2} and info["backbone"] == "cnn"
  assert info["timing"]["train"]["n_compiles"] == 1   # one compile across the warm-up gate
  assert info["warmup_epochs"] == 1 and info["steps_per_epoch"] == N // 16
  rows = [r for r in run.history if r["stage"] == "train"]
  assert [r["pcl_on"] for r in rows] == [0.0, 1.0] and [r["eps"] for r in rows] == [0.0, 0.001]
  for k in ("loss", "loss_dsa", "loss_hsd", "loss_pcl", "hsd_n_pos", "hsd_n_neg", "hsd_w_p",
            "hsd_w_n", "hsd_frac_no_neg", "pcl_n_present", "ema", "lr", "label_change"):
    assert all(np.isfinite(r[k]) for r in rows), k
  assert rows[0]["lr"] > 0 and rows[-1]["ema"] == pytest.approx(0.996)
  assert [r["stage"] for r in run.history][0] == "init"


@pytest.mark.slow
def test_estimator_contract(fitted, small_digits):
  est, _ = fitted
  assert est.get_params()["epochs"] == 2 and est.get_params()["widths"] == (8, 16)
  x = small_digits.views[0]
  z = est.transform(x[:5])
  chex.assert_shape(z, (5, 16))
  np.testing.assert_allclose(z, est.embedding_[:5], rtol=1e-5, atol=1e-6)
  pred = est.predict(x)
  chex.assert_shape(pred, (N,))
  assert np.mean(pred == est.labels_) > 0.9   # nearest final center vs. the k-means labels
  with pytest.raises(DataError, match="images"):
    est.predict(x.reshape(N, -1))
  # fit_predict: the same labels from the same seed (deterministic)
  again = HaDis(n_clusters=K, random_state=0, **TINY).fit_predict(small_digits)
  np.testing.assert_array_equal(again, est.labels_)


class Killed(RuntimeError):
  pass


@pytest.mark.slow
def test_resume_matches_uninterrupted(tmp_path, fitted, small_digits):
  ref, _ = fitted

  class KillingRun(Run):
    def log(self, stage, epoch, metrics, **kw):
      if (stage, epoch) == ("train", 1):
        raise Killed()
      return super().log(stage, epoch, metrics, **kw)

  with pytest.raises(Killed):
    fit(small_digits, run=KillingRun(tmp_path, checkpoint_every=1))
  run = Run(tmp_path, checkpoint_every=1)
  resumed = fit(small_digits, run=run)
  run.close()
  assert [r["epoch"] for r in run.history if r["stage"] == "train"] == [0, 1]
  assert resumed.fit_info_["epochs"] == {"train": 1}   # only epoch 1 ran after the restore
  np.testing.assert_array_equal(resumed.labels_, ref.labels_)
  np.testing.assert_allclose(resumed.embedding_, ref.embedding_, rtol=1e-5, atol=1e-6)
