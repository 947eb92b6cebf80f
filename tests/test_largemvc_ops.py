"""LargeMvC-Net ops against NumPy references: soft threshold, l2,1 shrinkage, Procrustes,
spectral embeddings, and the missing-view simulation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clustering_jax.data.missing import simulate_missing
from clustering_jax.ops import spectral
from clustering_jax.ops.unfolding import procrustes, row_shrink, shrink_scale, soft_threshold


def _selu(x):
  a, s = 1.6732632423543772, 1.0507009873554805
  return s * np.where(x > 0, x, a * (np.exp(np.minimum(x, 0)) - 1))


# -- soft threshold (Eq. 11) ---------------------------------------------------------------

def test_soft_threshold_relu_is_l1_prox():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(7, 5)).astype(np.float32) * 2
  theta = 0.4
  ref = np.sign(a) * np.maximum(np.abs(a) - theta, 0)        # prox of theta*||.||_1
  out = jax.jit(lambda x: soft_threshold(x, theta))(a)
  np.testing.assert_allclose(out, ref, atol=1e-6)
  # and it minimizes 1/2 (z - a)^2 + theta |z| elementwise against perturbations
  obj = lambda z: 0.5 * (z - a) ** 2 + theta * np.abs(z)
  for eps in (1e-2, -1e-2, 0.3, -0.3):
    assert np.all(obj(np.asarray(out)) <= obj(np.asarray(out) + eps) + 1e-6)
  # one-sided: prox of theta*||.||_1 + indicator(z >= 0)
  np.testing.assert_allclose(soft_threshold(a, theta, nonnegative=True),
                             np.maximum(a - theta, 0), atol=1e-6)


def test_soft_threshold_selu_formula_and_eager_equals_jit():
  a = np.linspace(-3, 3, 13).astype(np.float32)
  ref = _selu(a - 0.5) - _selu(-a - 0.5)
  np.testing.assert_allclose(soft_threshold(a, 0.5, activation="selu"), ref, atol=1e-5)
  np.testing.assert_allclose(jax.jit(lambda x: soft_threshold(x, 0.5, activation="selu"))(a),
                             soft_threshold(a, 0.5, activation="selu"), atol=1e-6)
  with pytest.raises(ValueError, match="activation"):
    soft_threshold(a, 0.1, activation="tanh")


# -- shrinkage (Eq. 12) -------------------------------------------------------------------------

def _l21_prox(a, rho):
  norms = np.linalg.norm(a, axis=1, keepdims=True)
  return np.where(norms > rho, (1 - rho / np.where(norms > 0, norms, 1)) * a, 0.0)


def test_row_shrink_is_l21_prox():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(9, 4)).astype(np.float32)
  a[2] = 0.0                                   # a zero row
  a[5] *= 0.1                                  # a row below the threshold
  rho = 0.8
  out = np.asarray(jax.jit(lambda x: row_shrink(x, rho))(a))
  np.testing.assert_allclose(out, _l21_prox(a, rho), atol=1e-6)
  # defining optimization: 1/2||e - a||^2 + rho sum_i ||e_i|| is minimal at out
  obj = lambda e: 0.5 * np.sum((e - a) ** 2) + rho * np.sum(np.linalg.norm(e, axis=1))
  for _ in range(20):
    assert obj(out) <= obj(out + 0.05 * rng.normal(size=a.shape)) + 1e-6


def test_shrink_scale_is_the_factor_of_row_shrink():
  rng = np.random.default_rng(3)
  a = rng.normal(size=(8, 5)).astype(np.float32)
  a[1] = 0.0
  a[4] *= 0.05
  for act, rho in (("relu", 0.9), ("selu", 0.9), ("relu", -0.3)):
    c = shrink_scale(np.sum(a * a, axis=1, keepdims=True), rho, activation=act)
    np.testing.assert_allclose(c * a, row_shrink(a, rho, activation=act), atol=1e-6)
    assert float(c[1, 0]) == 0.0                                   # a zero row: factor 0
  nrm = np.linalg.norm(a, axis=1)
  np.testing.assert_allclose(shrink_scale(nrm ** 2, 0.9),
                             np.where(nrm > 0.9, 1 - 0.9 / np.where(nrm > 0, nrm, 1), 0), atol=1e-6)


def test_row_shrink_matrix_mode_and_row_weight():
  rng = np.random.default_rng(2)
  a = rng.normal(size=(6, 3)).astype(np.float32)
  rho = 1.5
  fro = np.linalg.norm(a)
  np.testing.assert_allclose(row_shrink(a, rho, mode="matrix"), (1 - rho / fro) * a, atol=1e-6)
  w = np.array([1, 0, 1, 1, 0, 1], np.float32)
  aw = a * w[:, None]
  np.testing.assert_allclose(row_shrink(a, rho, mode="matrix", row_weight=w),
                             (1 - rho / np.linalg.norm(aw)) * aw, atol=1e-6)
  np.testing.assert_allclose(row_shrink(a, rho, row_weight=w), _l21_prox(aw, rho), atol=1e-6)


def test_row_shrink_selu_zero_below_threshold_and_finite_grads():
  a = np.array([[0.1, 0.0], [3.0, 4.0], [0.0, 0.0]], np.float32)
  out = np.asarray(row_shrink(a, 1.0, activation="selu"))
  assert np.all(out[0] == 0) and np.all(out[2] == 0)
  np.testing.assert_allclose(out[1], _selu(np.float32(4.0)) / 5.0 * a[1], rtol=1e-5)
  g = jax.grad(lambda x, r: jnp.sum(row_shrink(x, r) ** 2), argnums=(0, 1))(a, 1.0)
  chex.assert_tree_all_finite(g)
  assert float(g[1]) != 0.0     # the threshold stays trainable


# -- Procrustes (Eq. 9-10, 13) -------------------------------------------------------------------

def _random_orthonormal_rows(rng, k, d):
  q, _ = np.linalg.qr(rng.normal(size=(d, k)))
  return q.T


def test_procrustes_orthonormal_and_maximizes_trace():
  rng = np.random.default_rng(3)
  m = rng.normal(size=(4, 9)).astype(np.float32)
  p = np.asarray(jax.jit(procrustes)(m))
  chex.assert_shape(p, (4, 9))
  np.testing.assert_allclose(p @ p.T, np.eye(4), atol=1e-5)
  best = np.trace(p.T @ m)
  b, s, ct = np.linalg.svd(m.astype(np.float64), full_matrices=False)
  np.testing.assert_allclose(best, s.sum(), rtol=1e-5)             # the maximum is sum(sigma)
  np.testing.assert_allclose(p, b @ ct, atol=1e-5)
  for _ in range(200):
    q = _random_orthonormal_rows(rng, 4, 9)
    assert np.trace(q.T @ m) <= best + 1e-4


def test_procrustes_degenerate_inputs_and_fewer_features_than_anchors():
  z = procrustes(jnp.zeros((3, 5)))
  chex.assert_tree_all_finite(z)
  np.testing.assert_allclose(z @ z.T, np.eye(3), atol=1e-5)
  tall = procrustes(jnp.asarray(np.random.default_rng(4).normal(size=(5, 3)), jnp.float32))
  np.testing.assert_allclose(tall.T @ tall, np.eye(3), atol=1e-5)   # k > d: orthonormal columns
  big = procrustes(jnp.asarray(np.random.default_rng(5).normal(size=(3, 6)) * 1e6, jnp.float32))
  np.testing.assert_allclose(big @ big.T, np.eye(3), atol=1e-5)


def test_procrustes_gradient_policies():
  rng = np.random.default_rng(6)
  m = jnp.asarray(rng.normal(size=(3, 7)), jnp.float32)
  t = jnp.asarray(rng.normal(size=(3, 7)), jnp.float32)
  f = lambda mm, g: jnp.sum(procrustes(mm, grad=g) * t)
  assert float(jnp.abs(jax.grad(f)(m, "stop")).max()) == 0.0
  g = jax.grad(f)(m, "svd")
  chex.assert_tree_all_finite(g)
  # the SVD gradient agrees with a central finite difference along a random direction
  dirn = jnp.asarray(rng.normal(size=(3, 7)), jnp.float32)
  eps = 1e-2
  fd = (f(m + eps * dirn, "svd") - f(m - eps * dirn, "svd")) / (2 * eps)
  np.testing.assert_allclose(float(jnp.sum(g * dirn)), float(fd), rtol=2e-2, atol=2e-3)
  with pytest.raises(ValueError, match="grad"):
    procrustes(m, grad="nope")


# -- spectral embeddings -------------------------------------------------------------------------

def _two_blobs(n_per=60, seed=0):
  rng = np.random.default_rng(seed)
  x = np.concatenate([rng.normal(0, 1, (n_per, 3)), rng.normal(12, 1, (n_per, 3))])
  return x.astype(np.float32), np.repeat([0, 1], n_per)


def test_knn_matvec_equals_dense_normalized_adjacency():
  x, _ = _two_blobs(20)
  k = 4
  from clustering_jax.ops import knn
  _, idx = knn(jnp.asarray(x), k)
  n = x.shape[0]
  a = np.zeros((n, n))
  a[np.repeat(np.arange(n), k), np.asarray(idx).ravel()] = 1.0
  w = 0.5 * (a + a.T)
  deg = w.sum(1)
  ref = w / np.sqrt(deg[:, None] * deg[None, :])
  v = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
  mv = spectral._sym_knn_matvec(idx, jnp.asarray(1.0 / np.sqrt(deg), jnp.float32))
  np.testing.assert_allclose(mv(jnp.asarray(v)), ref @ v, atol=1e-5)


@pytest.mark.parametrize("method", ["knn", "anchor"])
def test_spectral_embedding_separates_blobs(method):
  x, y = _two_blobs()
  emb, evals = spectral.spectral_embedding(jax.random.key(0), jnp.asarray(x), 2, method=method,
                                           k=5, n_anchors=20, s=3)
  chex.assert_shape(emb, (120, 2))
  chex.assert_tree_all_finite((emb, evals))
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
  # two components: both top eigenvalues ~1, and the rows of each blob coincide
  np.testing.assert_allclose(np.asarray(evals), [1.0, 1.0], atol=1e-3)
  e = np.asarray(emb)
  assert np.abs(e[y == 0] @ e[y == 1].T).max() < 1e-2


def _low_rank_plus_noise(n=400, d=60, k=6, seed=0):
  rng = np.random.default_rng(seed)
  u = np.linalg.qr(rng.normal(size=(n, k)))[0]
  v = np.linalg.qr(rng.normal(size=(d, k)))[0]
  x = (u * np.linspace(40, 20, k)) @ v.T + 0.05 * rng.normal(size=(n, d))
  return x.astype(np.float32)


def test_orthonormalize_spans_the_columns_even_when_ill_conditioned():
  rng = np.random.default_rng(1)
  w = rng.normal(size=(50, 8)) * np.logspace(0, -5, 8)            # condition number ~1e5
  w = w.astype(np.float32)
  q = np.asarray(jax.jit(spectral.orthonormalize)(jnp.asarray(w)), np.float64)
  np.testing.assert_allclose(q.T @ q, np.eye(8), atol=2e-5)
  # same span: projecting w on span(q) gives w back (relative to each column's size)
  resid = w - q @ (q.T @ w)
  assert np.all(np.linalg.norm(resid, axis=0) <= 1e-3 * np.linalg.norm(w, axis=0))


def test_principal_subspace_matches_numpy_svd():
  x = _low_rank_plus_noise()
  w = np.asarray(spectral.principal_subspace(jax.random.key(0), jnp.asarray(x), 6), np.float64)
  chex.assert_shape(w, (60, 6))
  np.testing.assert_allclose(w.T @ w, np.eye(6), atol=1e-5)
  vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)[2][:6]
  cosines = np.linalg.svd(vt @ w, compute_uv=False)               # of the principal angles
  assert cosines.min() > 0.9999
  # project: distances are those of x projected on the top-6 principal subspace
  y = np.asarray(spectral.project(jax.random.key(0), jnp.asarray(x), 6))
  ref = x @ vt.T
  dy = np.linalg.norm(y[:, None] - y[None], axis=-1)
  dref = np.linalg.norm(ref[:, None] - ref[None], axis=-1)
  np.testing.assert_allclose(dy, dref, atol=1e-2 * dref.max())


def test_knn_indices_equal_brute_force():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(70, 4)).astype(np.float32)
  idx = np.asarray(spectral.knn_indices(jnp.asarray(x), 5, block=16))
  d = ((x[:, None] - x[None]) ** 2).sum(-1)
  np.fill_diagonal(d, np.inf)
  ref = np.argsort(d, axis=1)[:, :5]
  np.testing.assert_array_equal(np.sort(idx, 1), np.sort(ref, 1))


def test_knn_embedding_dense_and_lobpcg_match_numpy_eigh():
  rng = np.random.default_rng(8)
  x = np.concatenate([rng.normal(0, 1, (100, 3)), rng.normal(4, 1.5, (80, 3)),
                      rng.normal(-5, 0.7, (120, 3))]).astype(np.float32)
  k, c = 6, 3
  idx = np.asarray(spectral.knn_indices(jnp.asarray(x), k))
  a = np.zeros((300, 300))
  a[np.repeat(np.arange(300), k), idx.ravel()] = 1.0
  w = 0.5 * (a + a.T)
  dinv = 1 / np.sqrt(w.sum(1))
  vals, vecs = np.linalg.eigh(dinv[:, None] * w * dinv[None])
  ref_vals, ref = vals[::-1][:c], vecs[:, ::-1][:, :c]
  ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
  emb, ev = spectral.knn_spectral_embedding(jax.random.key(0), jnp.asarray(x), c, k=k)  # dense
  np.testing.assert_allclose(ev, ref_vals, atol=1e-5)
  np.testing.assert_allclose(np.abs(np.asarray(emb)), np.abs(ref), atol=1e-3)  # column signs
  emb2, ev2 = spectral.knn_spectral_embedding(jax.random.key(0), jnp.asarray(x), c, k=k,
                                              dense_max_n=0)                  # LOBPCG
  np.testing.assert_allclose(ev2, ref_vals, atol=1e-3)


@pytest.mark.parametrize("method", ["knn", "anchor"])
def test_spectral_embedding_on_principal_subspace(method):
  rng = np.random.default_rng(2)
  x, y = _two_blobs()
  x = np.concatenate([x, 0.1 * rng.normal(size=(120, 20))], axis=1).astype(np.float32)
  emb, evals = spectral.spectral_embedding(jax.random.key(0), jnp.asarray(x), 2, method=method,
                                           k=5, n_anchors=20, s=3, n_dims=3)
  e = np.asarray(emb)
  assert np.abs(e[y == 0] @ e[y == 1].T).max() < 1e-2
  np.testing.assert_allclose(np.asarray(evals), [1.0, 1.0], atol=1e-3)
  # n_dims >= d: the features as given
  full = spectral.spectral_embedding(jax.random.key(0), jnp.asarray(x), 2, method=method, k=5,
                                     n_anchors=20, s=3)
  same = spectral.spectral_embedding(jax.random.key(0), jnp.asarray(x), 2, method=method, k=5,
                                     n_anchors=20, s=3, n_dims=23)
  np.testing.assert_array_equal(full[0], same[0])
  with pytest.raises(ValueError, match="n_dims"):
    spectral.spectral_embedding(jax.random.key(0), jnp.asarray(x), 2, n_dims=0)


def test_anchor_embedding_matches_dense_reference():
  rng = np.random.default_rng(7)
  x = rng.normal(size=(80, 4)).astype(np.float32)
  p, s = 12, 3
  anchors = jnp.asarray(x[:p])
  j, w = spectral._anchor_affinity(jnp.asarray(x), anchors, s, 32)
  np.testing.assert_allclose(np.asarray(w).sum(1), 1.0, atol=1e-5)
  # dense reference of the adaptive-neighbour weights and the graph spectrum
  d = ((x[:, None, :] - x[None, :p, :]) ** 2).sum(-1)
  order = np.argsort(d, axis=1)
  z = np.zeros((80, p))
  for i in range(80):
    ds = d[i, order[i, :s + 1]]
    z[i, order[i, :s]] = (ds[s] - ds[:s]) / np.sum(ds[s] - ds[:s])
  zi = np.zeros((80, p))
  zi[np.repeat(np.arange(80), s), np.asarray(j).ravel()] = np.asarray(w).ravel()
  np.testing.assert_allclose(zi, z, atol=1e-5)
  lam = z.sum(0)
  graph = z @ np.diag(1 / lam) @ z.T
  ref = np.sort(np.linalg.eigvalsh(graph))[::-1][:3]
  zh = z / np.sqrt(lam)
  got = np.sort(np.linalg.eigvalsh(zh.T @ zh))[::-1][:3]
  np.testing.assert_allclose(got, ref, atol=1e-6)


# -- missing views ------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.7])
@pytest.mark.parametrize("n_views", [2, 3])
def test_simulate_missing_per_sample(rate, n_views):
  m = simulate_missing(3, 500, n_views, rate)
  assert m.shape == (500, n_views) and m.dtype == bool
  assert m.any(axis=1).all()
  assert (~m.all(axis=1)).sum() == round(rate * 500)
  np.testing.assert_array_equal(m, simulate_missing(3, 500, n_views, rate))
  k = jax.random.key(3)
  np.testing.assert_array_equal(simulate_missing(k, 500, n_views, rate),
                                simulate_missing(k, 500, n_views, rate))


def test_simulate_missing_per_view_and_errors():
  m = simulate_missing(jax.random.key(1), 400, 3, 0.3, mode="per_view")
  assert m.any(axis=1).all()
  assert np.all((~m).sum(axis=0) <= 120) and np.all((~m).sum(axis=0) >= 100)
  with pytest.raises(ValueError, match="per_view"):
    simulate_missing(0, 100, 2, 0.7, mode="per_view")
  with pytest.raises(ValueError, match="missing rate"):
    simulate_missing(0, 100, 2, 1.0)
  with pytest.raises(ValueError, match="single-view"):
    simulate_missing(0, 100, 1, 0.2)
