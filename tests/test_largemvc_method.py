"""LargeMvC-Net network layers against NumPy (Eq. 4-5, 7, 9-14), masks, and smoke fits."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clustering_jax import get_estimator
from clustering_jax.data import builtin
from clustering_jax.data.missing import simulate_missing
from clustering_jax.data.scaling import scale_views
from clustering_jax.methods import largemvc as L
from clustering_jax.methods.base import Views
from clustering_jax.train.run import quiet_run


def _orth_rows(rng, m, d):
  q, _ = np.linalg.qr(rng.normal(size=(d, m)))
  return q.T.astype(np.float32)


def _problem(seed=0, n=30, m=4, dims=(7, 5, 6)):
  rng = np.random.default_rng(seed)
  xs = tuple(rng.normal(size=(n, d)).astype(np.float32) for d in dims)
  es = tuple(0.3 * rng.normal(size=(n, d)).astype(np.float32) for d in dims)
  ps = tuple(_orth_rows(rng, m, d) for d in dims)
  h = np.abs(rng.normal(size=(n, m))).astype(np.float32)
  return xs, es, ps, h


def _l1_prox(a, t):
  return np.sign(a) * np.maximum(np.abs(a) - t, 0)


def test_one_layer_with_eq5_weights_is_one_proximal_gradient_step():
  xs, es, ps, h = _problem()
  lp, alpha = 2.5, 0.3
  m = h.shape[1]
  r = np.eye(m, dtype=np.float32) - ps[0] @ ps[0].T / lp   # = (1 - 1/L_p) I: P_v P_v^T = I
  u = np.eye(m, dtype=np.float32) / lp
  mask = np.ones((h.shape[0], len(xs)), np.float32)
  out = jax.jit(lambda *a: L.represent(*a, activation="relu"))(
      h, xs, es, ps, mask, r, u, alpha / lp)
  # Eq. 4: H <- 1/V sum_v S_{alpha/L_p}(H - (H P P^T - X P^T + E P^T) / L_p)
  ref = np.mean([_l1_prox(h - (h @ p @ p.T - x @ p.T + e @ p.T) / lp, alpha / lp)
                 for x, e, p in zip(xs, es, ps)], axis=0)
  np.testing.assert_allclose(out, ref, atol=1e-5)
  # per-view R_v = I - P_v P_v^T / L_p (Eq. 5 literally) for non-orthonormal P_v
  rng = np.random.default_rng(9)
  ps2 = tuple(rng.normal(size=p.shape).astype(np.float32) * 0.5 for p in ps)
  rv = np.stack([np.eye(m) - p @ p.T / lp for p in ps2]).astype(np.float32)
  uv = np.stack([np.eye(m) / lp] * len(ps2)).astype(np.float32)
  ref2 = np.mean([_l1_prox(h - (h @ p @ p.T - x @ p.T + e @ p.T) / lp, alpha / lp)
                  for x, e, p in zip(xs, es, ps2)], axis=0)
  np.testing.assert_allclose(L.represent(h, xs, es, ps2, mask, rv, uv, alpha / lp), ref2,
                             atol=1e-5)


def test_default_lipschitz_is_that_of_eq3_gradient_and_r_at_init():
  xs, es, ps, h = _problem(3)
  n, m = h.shape
  mask = np.ones((n, len(xs)), np.float32)
  # grad_H of Eq. 3's smooth part: sum_v (H P_v P_v^T - (X_v - E_v) P_v^T); its constant is V
  def grad(hh):
    return sum(hh @ p @ p.T - (x - e) @ p.T for x, e, p in zip(xs, es, ps))
  lp = L.lipschitz_constant(ps)
  np.testing.assert_allclose(lp, len(xs), rtol=1e-5)
  rng = np.random.default_rng(0)
  for _ in range(20):
    h1, h2 = rng.normal(size=(2, n, m)).astype(np.float32)
    ratio = np.linalg.norm(grad(h1) - grad(h2)) / np.linalg.norm(h1 - h2)
    assert ratio <= lp * (1 + 1e-5)
  np.testing.assert_allclose(ratio, lp, rtol=1e-4)   # P_v P_v^T = I: every direction attains it
  # default Config: R = I - P P^T / V and U = I / V at init (Eq. 5 with L_p = V)
  params = L.init_params(ps, es, mask, L.Config())
  eye = np.eye(m, dtype=np.float32)
  np.testing.assert_allclose(params["R"], eye - ps[0] @ ps[0].T / len(xs), atol=1e-5)
  np.testing.assert_allclose(params["R"], (1 - 1 / len(xs)) * eye, atol=1e-5)
  np.testing.assert_allclose(params["U"], eye / len(xs), atol=1e-6)
  # a number sets L_p directly; L_p = 1 gives R = 0 (no memory of H in Eq. 5)
  p1 = L.init_params(ps, es, mask, L.Config(lipschitz=1.0))
  np.testing.assert_allclose(p1["R"], 0 * eye, atol=1e-5)
  np.testing.assert_allclose(p1["U"], eye, atol=1e-6)
  # a view with fewer features than anchors: P_v P_v^T is a projection, the bound still holds
  p_short = np.linalg.qr(rng.normal(size=(m, m - 1)))[0].astype(np.float32)  # (m, d_v < m)
  lp_short = L.lipschitz_constant(ps[:2] + (p_short,))
  np.testing.assert_allclose(lp_short, 3, rtol=1e-5)   # 2 I + a rank-(m-1) projection


def test_noise_and_anchor_modules_equal_eq7_and_eq10():
  xs, es, ps, h = _problem(1)
  mask = np.ones((h.shape[0], len(xs)), np.float32)
  rho = np.array([0.5, 1.0, 2.0], np.float32)
  out = L.noise(h, xs, ps, mask, rho)
  for v, (x, p) in enumerate(zip(xs, ps)):
    a = x - h @ p
    nrm = np.linalg.norm(a, axis=1, keepdims=True)
    np.testing.assert_allclose(out[v], np.where(nrm > rho[v], (1 - rho[v] / nrm) * a, 0),
                               atol=1e-5)
  pn = L.anchor(h, xs, es, mask)
  for v, (x, e) in enumerate(zip(xs, es)):
    b, _, ct = np.linalg.svd(h.T @ (x - e), full_matrices=False)
    np.testing.assert_allclose(pn[v], b @ ct, atol=1e-4)


def test_reconstruction_loss_eq14_with_mask():
  xs, _, ps, h = _problem(2)
  mask = np.ones((h.shape[0], 3), np.float32)
  mask[:5, 1] = 0
  loss, per_view = L.reconstruction_loss(h, xs, ps, mask)
  ref = [np.mean((x[mask[:, v] > 0] - h[mask[:, v] > 0] @ p) ** 2)
         for v, (x, p) in enumerate(zip(xs, ps))]
  np.testing.assert_allclose(per_view, ref, rtol=1e-5)
  np.testing.assert_allclose(loss, sum(ref), rtol=1e-5)


def _small_batch(mask=None, seed=0, variant="full"):
  d = scale_views(builtin.blobs(n_samples=90, n_clusters=3, n_features=5, n_views=3, seed=seed),
                  "minmax")
  if mask is not None:
    d = d.replace(mask=mask)
  xs, mk = L.prepare(d)
  labels = np.arange(d.n_samples) % 3
  h0 = jax.nn.one_hot(labels, 3)
  p0s = L.anchor(h0, xs, None, mk)
  e0s = tuple(mk[:, v:v + 1] * (x - h0 @ p) if variant == "full" else jnp.zeros_like(x)
              for v, (x, p) in enumerate(zip(xs, p0s)))
  return d, L.Batch(xs, mk, h0, e0s, p0s)


def test_missing_entries_have_no_influence():
  mask = simulate_missing(0, 90, 3, 0.5)
  cfg = L.Config(n_layers=2)
  d, batch = _small_batch(mask)
  params = L.init_params(batch.p0s, batch.e0s, batch.mask, cfg)
  h, _, ps = L.forward(params, batch, cfg)
  loss = L.loss_fn(params, batch, cfg)[0]
  # junk where views are missing (prepare zeroes it; the network must also ignore it)
  junk = tuple(jnp.where(batch.mask[:, v:v + 1] > 0, x, 1e3) for v, x in enumerate(batch.xs))
  b2 = batch._replace(xs=junk)
  h2, _, ps2 = L.forward(params, b2, cfg)
  np.testing.assert_allclose(h2, h, atol=1e-5)
  np.testing.assert_allclose(L.loss_fn(params, b2, cfg)[0], loss, rtol=1e-6)
  chex.assert_tree_all_finite((h2, ps2))


def test_mask_changes_nothing_for_complete_samples_given_p():
  _, full = _small_batch()
  mask = np.ones((90, 3), np.float32)
  mask[::4, 1] = 0                              # some samples lose view 1
  complete = mask.all(axis=1)
  cfg = L.Config()
  params = L.init_params(full.p0s, full.e0s, full.mask, cfg)
  args = (params["R"], params["U"], params["theta"][0])
  es = tuple(0.1 * jnp.sin(x) for x in full.xs)   # any E: the rows of present views count
  h_full = L.represent(full.h0, full.xs, es, full.p0s, full.mask, *args)
  h_mask = L.represent(full.h0, full.xs, es, full.p0s, jnp.asarray(mask), *args)
  np.testing.assert_allclose(h_mask[complete], h_full[complete], atol=1e-6)
  assert not np.allclose(h_mask[~complete], h_full[~complete])
  e_full = L.noise(h_full, full.xs, full.p0s, full.mask, params["rho"][0])
  e_mask = L.noise(h_full, full.xs, full.p0s, jnp.asarray(mask), params["rho"][0])
  for v in range(3):
    np.testing.assert_allclose(e_mask[v][complete], e_full[v][complete], atol=1e-6)
    assert np.all(np.asarray(e_mask[v])[mask[:, v] == 0] == 0)


@pytest.mark.parametrize("variant", ["full", "amvc", "rmvc"])
def test_variants_train_steps_finite_and_loss_decreases(variant):
  cfg = L.Config(variant=variant, epochs=5, procrustes_grad="svd" if variant == "amvc" else "stop")
  _, batch = _small_batch(variant=variant)
  params = L.init_params(batch.p0s, batch.e0s, batch.mask, cfg)
  run = quiet_run()
  params, h, info = L.train(batch, params, cfg, run=run, n=90)
  chex.assert_shape(h, (90, 3))
  chex.assert_tree_all_finite((params, h))
  losses = [r["loss"] for r in run.history]
  assert len(losses) == 5 and losses[-1] < losses[0]
  assert info["n_devices"] == 1 and info["timing"]["train"]["epoch_s"] > 0
  if variant == "rmvc":   # no AnchorModule: P stays the initial P0
    _, _, ps = L.forward(params, batch, cfg)
    for p, p0 in zip(ps, batch.p0s):
      np.testing.assert_array_equal(p, p0)


def test_estimator_fit_with_mask_and_ablation():
  d = builtin.blobs(n_samples=120, n_clusters=3, n_features=5, n_views=2, seed=3)
  mask = simulate_missing(1, 120, 2, 0.3)
  est = get_estimator("largemvc")(n_clusters=3, random_state=0, epochs=4)
  est.fit(list(d.views), mask=mask)
  assert est.labels_.shape == (120,) and est.init_labels_.shape == (120,)
  assert set(np.unique(est.labels_)) <= {0, 1, 2}
  chex.assert_shape(est.embedding_, (120, 3))
  assert np.isfinite(est.embedding_).all()
  assert est.fit_info_["epochs"] == {"train": 4} and "init_time_s" in est.fit_info_
  # the same seed gives the same labels
  again = get_estimator("largemvc")(n_clusters=3, random_state=0, epochs=4).fit(list(d.views),
                                                                              mask=mask)
  np.testing.assert_array_equal(again.labels_, est.labels_)


def test_more_anchors_than_clusters_and_config_errors():
  d = builtin.blobs(n_samples=100, n_clusters=3, n_features=4, n_views=2, seed=0)
  cfg = L.Config(epochs=2, n_anchors=6)
  res = L.fit(Views.of(scale_views(d, "minmax")), 3, cfg, key=jax.random.key(0),
              run=quiet_run())
  chex.assert_shape(res.embedding, (100, 6))
  assert res.labels.max() < 3 and res.init_labels.max() < 3
  for bad in ({"variant": "x"}, {"shrink": "col"}, {"activation": "tanh"}, {"n_layers": 0},
              {"procrustes_grad": "x"}, {"shard": "tpu"}, {"rho_init": "mean"},
              {"anchor_multiple": 0}, {"lipschitz": 0.0}, {"lipschitz": "max"}):
    with pytest.raises(ValueError):
      dataclasses.replace(L.Config(), **bad).validate()


@pytest.mark.slow
def test_hdigit_end_to_end(shared_data_dir):
  from clustering_jax import metrics
  from clustering_jax.data import load_dataset
  d = load_dataset("hdigit", str(shared_data_dir))
  est = get_estimator("largemvc")(n_clusters=10, random_state=0).fit(d)
  assert metrics.accuracy(d.labels, est.labels_) > 0.7
