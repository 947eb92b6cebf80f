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
  norms = np.stack([np.linalg.norm(e, axis=1) for e in es], axis=1)
  params = L.init_params(ps, norms, mask, L.Config())
  eye = np.eye(m, dtype=np.float32)
  np.testing.assert_allclose(params["R"], eye - ps[0] @ ps[0].T / len(xs), atol=1e-5)
  np.testing.assert_allclose(params["R"], (1 - 1 / len(xs)) * eye, atol=1e-5)
  np.testing.assert_allclose(params["U"], eye / len(xs), atol=1e-6)
  # a number sets L_p directly; L_p = 1 gives R = 0 (no memory of H in Eq. 5)
  p1 = L.init_params(ps, norms, mask, L.Config(lipschitz=1.0))
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
  return d, L.make_consts(xs, mk, h0, p0s, "residual" if variant == "full" else None)


def _e0s(c):
  """E_v,0 = X_v - H0 P_v,0 on present rows as explicit (n, d_v) arrays."""
  return tuple(c.mask[:, v:v + 1] * (x - c.h0 @ p) for v, (x, p) in enumerate(zip(c.xs, c.p0s)))


def _params(batch, cfg):
  norms = jnp.stack([jnp.linalg.norm(e, axis=1) for e in _e0s(batch)], axis=1)
  return L.init_params(batch.p0s, norms, batch.mask, cfg)


def _np_sigma(z, activation):
  if activation == "relu":
    return np.maximum(z, 0.0)
  return 1.0507009873554805 * np.where(z > 0, z, 1.6732632423543772 * np.expm1(np.minimum(z, 0)))


def _np_soft(a, t, activation):
  return _np_sigma(a - t, activation) - _np_sigma(-a - t, activation)


def _np_network(params, xs, mask, h0, e0s, p0s, cfg):
  """Algorithm 1 in float64 NumPy, straight from Eq. 11-14 (the test's own reading)."""
  par = {k: np.asarray(v, np.float64) for k, v in params.items()}
  xs = [np.asarray(x, np.float64) for x in xs]
  mask = np.asarray(mask, np.float64)
  h, ps = np.asarray(h0, np.float64), [np.asarray(p, np.float64) for p in p0s]
  es = [np.asarray(e, np.float64) for e in e0s] if cfg.variant == "full" else None
  for layer in range(cfg.n_layers):
    th = par["theta"][layer]
    acc = sum(mask[:, v:v + 1] * _np_soft(h @ par["R"] + ((x if es is None else x - es[v])
                                                           @ p.T) @ par["U"], th, cfg.activation)
              for v, (x, p) in enumerate(zip(xs, ps)))
    h = acc / np.maximum(mask.sum(1, keepdims=True), 1)                        # Eq. 11
    if cfg.variant == "full":                                                    # Eq. 12
      es = []
      for v, (x, p) in enumerate(zip(xs, ps)):
        a = mask[:, v:v + 1] * (x - h @ p)
        rho = par["rho"][layer, v]
        nrm = (np.linalg.norm(a, axis=1, keepdims=True) if cfg.shrink == "row"
               else np.full((len(a), 1), np.linalg.norm(a)))
        safe = np.where(nrm > 0, nrm, 1.0)
        es.append(np.where(nrm > rho, _np_sigma(nrm - rho, cfg.activation) / safe, 0.0) * a)
    if cfg.variant != "rmvc":                                                    # Eq. 13
      ps = []
      for v, x in enumerate(xs):
        m = h.T @ (mask[:, v:v + 1] * (x if es is None else x - es[v]))
        b, _, ct = np.linalg.svd(m, full_matrices=False)
        ps.append(b @ ct)
  loss = sum(np.sum(mask[:, v] * np.sum((x - h @ p) ** 2, axis=1)) / (mask[:, v].sum() * x.shape[1])
             for v, (x, p) in enumerate(zip(xs, ps)))                             # Eq. 14
  return h, ps, loss


@pytest.mark.parametrize("variant,shrink,activation", [
    ("full", "row", "relu"), ("full", "matrix", "relu"), ("full", "row", "selu"),
    ("amvc", "row", "relu"), ("rmvc", "row", "relu")])
def test_factored_network_equals_numpy_algorithm1(variant, shrink, activation):
  mask = np.ones((90, 3), np.float32)
  mask[::4, 1] = 0
  mask[1::7, 0] = 0
  _, batch = _small_batch(jnp.asarray(mask, bool), variant=variant)
  cfg = L.Config(variant=variant, shrink=shrink, activation=activation)
  params = _params(batch, cfg)
  rng = np.random.default_rng(0)
  params = dict(params, R=params["R"] + 0.05 * rng.normal(size=params["R"].shape),
                rho=params["rho"] * np.float32(0.7))        # some rows shrink, some vanish
  h_ref, p_ref, loss_ref = _np_network(params, batch.xs, batch.mask, batch.h0, _e0s(batch),
                                       batch.p0s, cfg)
  out = jax.jit(lambda p, b: L.forward(p, b, cfg))(params, batch)
  np.testing.assert_allclose(out.h, h_ref, atol=2e-5)
  for p, pr in zip(out.ps, p_ref):
    np.testing.assert_allclose(p, pr, atol=2e-4)
  np.testing.assert_allclose(L.loss_fn(params, batch, cfg)[0], loss_ref, rtol=1e-5)
  hd = L.forward_dense(params, batch.xs, batch.mask, batch.h0, _e0s(batch), batch.p0s, cfg)[0]
  np.testing.assert_allclose(hd, h_ref, atol=2e-5)


@pytest.mark.parametrize("grad", ["stop", "svd"])
def test_factored_gradient_equals_explicit_network(grad):
  mask = np.ones((90, 3), np.float32)
  mask[::5, 2] = 0
  _, batch = _small_batch(jnp.asarray(mask, bool))
  cfg = L.Config(procrustes_grad=grad)
  params = dict(_params(batch, cfg), rho=_params(batch, cfg)["rho"] * np.float32(0.8))
  e0s = _e0s(batch)

  def dense_loss(p):
    h, _, ps = L.forward_dense(p, batch.xs, batch.mask, batch.h0, e0s, batch.p0s, cfg)
    return L.reconstruction_loss(h, batch.xs, ps, batch.mask)[0]

  g_ref = jax.grad(dense_loss)(params)
  g = jax.grad(lambda p: L.loss_fn(p, batch, cfg)[0])(params)
  for k in params:
    scale = float(jnp.abs(g_ref[k]).max()) + 1e-6
    np.testing.assert_allclose(g[k], g_ref[k], atol=1e-4 * scale + 1e-7, err_msg=k)


def test_start_values_match_numpy():
  d = scale_views(builtin.blobs(n_samples=60, n_clusters=3, n_features=4, n_views=2, seed=1),
                  "minmax")
  mask = np.ones((60, 2), bool)
  mask[::6, 0] = False
  xs, mk = L.prepare(Views.of(d.replace(mask=mask)))
  labels = np.arange(60) % 4
  cfg = L.Config()
  batch, params = L.start(xs, mk, jnp.asarray(labels), m=4, cfg=cfg)
  h0 = np.eye(4)[labels]
  for v, x in enumerate(xs):
    x = np.asarray(x, np.float64)
    b, _, ct = np.linalg.svd(h0.T @ (mask[:, v:v + 1] * x), full_matrices=False)
    p0 = b @ ct
    np.testing.assert_allclose(batch.p0s[v], p0, atol=1e-5)
    np.testing.assert_allclose(batch.g0[:, v], x @ p0.T, atol=1e-5)
    np.testing.assert_allclose(batch.xx[:, v], mask[:, v] * (x ** 2).sum(1), rtol=1e-6)
    resid = np.linalg.norm(x - h0 @ p0, axis=1)[mask[:, v]]
    np.testing.assert_allclose(params["rho"][:, v], np.median(resid), rtol=1e-4)   # rho_init
  for v, x in enumerate(xs):                                         # E0 = X - H0 P0: (X - E0) P0^T
    np.testing.assert_allclose(batch.t0[:, v], mask[:, v:v + 1] * (h0 @ batch.p0s[v] @ batch.p0s[v].T)
                               + (~mask[:, v:v + 1]) * batch.g0[:, v], atol=1e-5)
  np.testing.assert_allclose(params["U"], np.eye(4) / 2, atol=1e-5)                  # L_p = V = 2


def test_standardized_concat_matches_numpy():
  rng = np.random.default_rng(4)
  xs = (rng.normal(2, 3, size=(40, 5)).astype(np.float32),
        rng.normal(size=(40, 3)).astype(np.float32))
  xs[1][:, 2] = 1.5                                                  # a constant feature
  mask = np.ones((40, 2), np.float32)
  mask[::3, 0] = 0
  out = np.asarray(L.standardized_concat(tuple(jnp.asarray(x) for x in xs), jnp.asarray(mask)))
  for v, (x, sl) in enumerate(zip(xs, (slice(0, 5), slice(5, 8)))):
    pres = mask[:, v] > 0
    sd = x[pres].std(0)
    ref = (x - x[pres].mean(0)) / np.where(sd > 0, sd, 1) / np.sqrt(x.shape[1])
    np.testing.assert_allclose(out[pres, sl], ref[pres], atol=1e-5)
    assert np.all(out[~pres, sl] == 0)


def test_fit_compiles_nothing_twice(caplog):
  """One LargeMvC fit: every jitted function is compiled once per shape (the final k-means
  shares the initial one's program when m = c)."""
  d = builtin.blobs(n_samples=150, n_clusters=3, n_features=6, n_views=2, seed=5)
  est = get_estimator("largemvc")(n_clusters=3, random_state=7, epochs=3, knn_k=6)
  with caplog.at_level("WARNING"), jax.log_compiles(True):
    est.fit(list(d.views))
  msgs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling ")]
  assert len(set(msgs)) == len(msgs), [m[:120] for m in msgs if msgs.count(m) > 1]
  assert est.fit_info_["timing"]["train"]["n_compiles"] == 1


def test_missing_entries_have_no_influence():
  mask = simulate_missing(0, 90, 3, 0.5)
  cfg = L.Config(n_layers=2)
  d, batch = _small_batch(mask)
  params = _params(batch, cfg)
  out = L.forward(params, batch, cfg)
  loss = L.loss_fn(params, batch, cfg)[0]
  # junk where views are missing (prepare zeroes it; the network must also ignore it), in the
  # data and in everything derived from it (||X_v,i||^2, X_v P_v^T)
  junk = tuple(jnp.where(batch.mask[:, v:v + 1] > 0, x, 1e3) for v, x in enumerate(batch.xs))
  b2 = L.make_consts(junk, batch.mask, batch.h0, batch.p0s, "residual")
  b2 = b2._replace(xx=jnp.where(batch.mask > 0, b2.xx, 1e7))
  out2 = L.forward(params, b2, cfg)
  np.testing.assert_allclose(out2.h, out.h, atol=1e-5)
  for p2, p in zip(out2.ps, out.ps):
    np.testing.assert_allclose(p2, p, atol=1e-5)
  np.testing.assert_allclose(L.loss_fn(params, b2, cfg)[0], loss, rtol=1e-6)
  chex.assert_tree_all_finite((out2.h, out2.ps))
  # the explicit network ignores it too
  hd = L.forward_dense(params, junk, batch.mask, batch.h0, _e0s(batch), batch.p0s, cfg)[0]
  np.testing.assert_allclose(hd, out.h, atol=1e-5)


def test_mask_changes_nothing_for_complete_samples_given_p():
  _, full = _small_batch()
  mask = np.ones((90, 3), np.float32)
  mask[::4, 1] = 0                              # some samples lose view 1
  complete = mask.all(axis=1)
  cfg = L.Config()
  params = _params(full, cfg)
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
  params = _params(batch, cfg)
  run = quiet_run()
  params, h, info = L.train(batch, params, cfg, run=run, n=90)
  chex.assert_shape(h, (90, 3))
  chex.assert_tree_all_finite((params, h))
  losses = [r["loss"] for r in run.history]
  assert len(losses) == 5 and losses[-1] < losses[0]
  assert info["n_devices"] == 1 and info["timing"]["train"]["epoch_s"] > 0
  if variant == "rmvc":   # no AnchorModule: P stays the initial P0
    for p, p0 in zip(L.forward(params, batch, cfg).ps, batch.p0s):
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
