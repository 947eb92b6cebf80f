"""JAX k-means against scikit-learn and small NumPy references."""

import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans as SkKMeans

from clustering_jax.data import load_dataset, scale_views
from clustering_jax.ops import assign, kmeans, kmeans_plusplus, lloyd, normalize, partition_cost

KEY = jax.random.key(0)
# The estimator's call of ops.kmeans passes all of these; jit keys its cache on the keywords
# passed, so tests pass the same ones to share one compiled function per shape across files.
KMEANS_DEFAULTS = {"n_init": 10, "max_iter": 300, "tol": 1e-4, "metric": "euclidean"}
# Most tests share one shape, k and n_init so the jitted kmeans compiles once per metric.
N, D, K, N_INIT = 60, 3, 3, 2
KW = dict(KMEANS_DEFAULTS, n_init=N_INIT)      # the estimator passes every keyword
COS = dict(KW, metric="cosine")
_pp = jax.jit(kmeans_plusplus, static_argnums=2)


def _blobs(n=120, k=3, d=4, seed=0):
  rng = np.random.default_rng(seed)
  c = rng.normal(0, 5, (k, d))
  y = rng.integers(0, k, n)
  return (c[y] + rng.normal(size=(n, d))).astype(np.float32)


def _np_assign(x, c):
  d = ((x[:, None, :].astype(np.float64) - c[None].astype(np.float64)) ** 2).sum(-1)
  return d.argmin(1), d.min(1)


def test_inertia_matches_sklearn_on_digits(digits_flat, sklearn_digits):
  x, _ = digits_flat
  t0 = time.perf_counter()
  res = kmeans(KEY, x, 10, **KMEANS_DEFAULTS)
  jax.block_until_ready(res)
  ours_s = time.perf_counter() - t0
  sk = sklearn_digits
  ours = float(res.inertia)
  assert ours <= sk.inertia_ * 1.01, (ours, sk.inertia_)
  # reported inertia is the true sum of squared distances to the returned centers
  labels, d = _np_assign(x, np.asarray(res.centers))
  np.testing.assert_array_equal(labels, np.asarray(res.labels))
  assert ours == pytest.approx(d.sum(), rel=1e-4)
  print(f"digits: ours {ours:.2f} ({ours_s:.2f}s incl. compile) sklearn {sk.inertia_:.2f}")


@pytest.mark.slow
def test_inertia_matches_sklearn_on_hdigit(shared_data_dir):
  ds = scale_views(load_dataset("hdigit", str(shared_data_dir)), "minmax")
  x = ds.concat()
  t0 = time.perf_counter()
  res = jax.block_until_ready(kmeans(KEY, x, 10, **KMEANS_DEFAULTS))
  ours_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  sk = SkKMeans(10, n_init=10, random_state=0).fit(x)
  sk_s = time.perf_counter() - t0
  assert float(res.inertia) <= sk.inertia_ * 1.01, (float(res.inertia), sk.inertia_)
  print(f"hdigit: ours {float(res.inertia):.1f} in {ours_s:.1f}s, sklearn {sk.inertia_:.1f} "
        f"in {sk_s:.1f}s")


def test_same_key_same_labels_different_keys_may_differ():
  x = _blobs(n=N, k=K, d=D, seed=1)
  a = kmeans(jax.random.key(1), x, K, **KW)
  b = kmeans(jax.random.key(1), x, K, **KW)
  np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))
  np.testing.assert_array_equal(np.asarray(a.centers), np.asarray(b.centers))
  # different keys give different seedings
  seeds = {tuple(np.asarray(_pp(jax.random.key(s), jnp.asarray(x), K))[:, 0].round(4))
           for s in range(5)}
  assert len(seeds) > 1


def test_kmeans_plusplus_picks_data_points_and_spreads():
  x = _blobs(n=N, k=K, d=D, seed=3)
  c = np.asarray(_pp(KEY, jnp.asarray(x), K))
  chex.assert_shape(c, (K, D))
  # every center is one of the points
  assert all(np.any(np.all(np.isclose(x, ci), axis=1)) for ci in c)
  # well-separated blobs: k-means++ puts one center in each blob
  true = SkKMeans(K, n_init=5, random_state=0).fit(x).labels_
  assert len(np.unique(true[[np.argmin(((x - ci) ** 2).sum(1)) for ci in c]])) == K


def _np_spherical_kmeans(x, c, n_iter):
  """Reference spherical k-means: unit rows, assign by max cosine, center = normalized mean."""
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  c = c / np.linalg.norm(c, axis=1, keepdims=True)
  for _ in range(n_iter):
    lab = np.argmax(x @ c.T, axis=1)
    for j in range(len(c)):
      if np.any(lab == j):
        m = x[lab == j].mean(0)
        c[j] = m / np.linalg.norm(m)
  lab = np.argmax(x @ c.T, axis=1)
  return lab, c, np.sum(1.0 - np.max(x @ c.T, axis=1))


def test_cosine_matches_numpy_spherical_reference():
  rng = np.random.default_rng(2)
  dirs = rng.normal(size=(K, D))
  x = (dirs[rng.integers(0, K, N)] * rng.uniform(0.5, 3.0, (N, 1))
       + 0.3 * rng.normal(size=(N, D))).astype(np.float32)
  c0 = x[:K].copy()
  res = lloyd(jnp.asarray(x), jnp.asarray(c0), metric="cosine", max_iter=50, tol=0.0)
  lab, c, inertia = _np_spherical_kmeans(x.astype(np.float64), c0.astype(np.float64), 50)
  np.testing.assert_array_equal(np.asarray(res.labels), lab)
  np.testing.assert_allclose(np.asarray(res.centers), c, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(res.centers), axis=1), 1.0, atol=1e-5)
  assert float(res.inertia) == pytest.approx(inertia, rel=1e-4, abs=1e-4)
  # the same through kmeans(): scale of the rows does not matter for cosine
  r1 = kmeans(KEY, x, K, **COS)
  r2 = kmeans(KEY, x * rng.uniform(0.1, 10, (N, 1)).astype(np.float32), K, **COS)
  np.testing.assert_array_equal(np.asarray(r1.labels), np.asarray(r2.labels))


def _np_lloyd(x, c, n_iter):
  """Reference Lloyd: an empty cluster takes the next point farthest from its own center."""
  c = c.astype(np.float64)
  for _ in range(n_iter):
    lab, d = _np_assign(x, c)
    far = iter(np.argsort(-d, kind="stable"))
    c = np.stack([x[lab == j].mean(0) if np.any(lab == j) else x[next(far)]
                  for j in range(len(c))])
  return c


def test_euclidean_lloyd_matches_numpy_reference():
  x = _blobs(n=100, k=4, d=3, seed=5)
  c0 = x[:4].copy()      # cluster 2 empties after one step here and is re-seeded
  res = lloyd(jnp.asarray(x), jnp.asarray(c0), max_iter=100, tol=0.0)
  c = _np_lloyd(x, c0, 100)
  lab, d = _np_assign(x, c)
  np.testing.assert_array_equal(np.asarray(res.labels), lab)
  np.testing.assert_allclose(np.asarray(res.centers), c, atol=1e-4)
  assert float(res.inertia) == pytest.approx(d.sum(), rel=1e-4)


def test_empty_cluster_is_reseeded():
  x = _blobs(n=60, k=3, d=2, seed=4)
  far = np.array([[1e4, 1e4]], np.float32)
  c0 = np.concatenate([x[:2], far])            # the far-away center gets no point
  assert (_np_assign(x, c0)[0] != 2).all()
  res = lloyd(jnp.asarray(x), jnp.asarray(c0), max_iter=50)
  chex.assert_tree_all_finite(res)
  assert len(np.unique(np.asarray(res.labels))) == 3
  assert np.abs(np.asarray(res.centers)).max() < 100
  # the first update moved the empty center onto the point farthest from its center
  lab, d = _np_assign(x, c0)
  one = lloyd(jnp.asarray(x), jnp.asarray(c0), max_iter=1)
  np.testing.assert_allclose(np.asarray(one.centers)[2], x[np.argmax(d)])
  # deterministic
  again = lloyd(jnp.asarray(x), jnp.asarray(c0), max_iter=50)
  np.testing.assert_array_equal(np.asarray(res.labels), np.asarray(again.labels))


def test_two_empty_clusters_take_distinct_points():
  x = _blobs(n=60, k=3, d=2, seed=6)
  c0 = np.concatenate([x[:1], np.full((2, 2), 1e4, np.float32)])
  one = lloyd(jnp.asarray(x), jnp.asarray(c0), max_iter=1)
  c = np.asarray(one.centers)
  assert not np.allclose(c[1], c[2])
  _, d = _np_assign(x, c0)
  order = np.argsort(-d, kind="stable")
  np.testing.assert_allclose(c[1], x[order[0]])
  np.testing.assert_allclose(c[2], x[order[1]])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_identical_points_finite(metric):
  x = np.tile(np.array([[0.3, -1.0, 2.0]], np.float32), (N, 1))
  res = kmeans(KEY, x, K, **dict(KW, metric=metric))
  chex.assert_tree_all_finite(res)
  chex.assert_shape(res.labels, (N,))
  chex.assert_shape(res.centers, (K, D))
  assert float(res.inertia) == pytest.approx(0.0, abs=1e-5)


def test_zero_rows_cosine_finite():
  x = np.zeros((N, D), np.float32)
  x[N // 2:] = 1.0
  x[N // 2:, 0] = np.arange(N // 2)
  res = kmeans(KEY, x, K, **COS)
  chex.assert_tree_all_finite(res)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_assign_matches_numpy_argmin(metric):
  rng = np.random.default_rng(7)
  x = rng.normal(size=(50, 6)).astype(np.float32)
  c = rng.normal(size=(7, 6)).astype(np.float32)
  labels, d = assign(jnp.asarray(x), jnp.asarray(c), metric=metric)
  chex.assert_shape(labels, (50,))
  chex.assert_shape(d, (50,))
  assert labels.dtype == jnp.int32
  if metric == "euclidean":
    want, wd = _np_assign(x, c)
  else:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    cos = xn @ cn.T
    want, wd = cos.argmax(1), 1.0 - cos.max(1)
  np.testing.assert_array_equal(np.asarray(labels), want)
  np.testing.assert_allclose(np.asarray(d), wd, atol=1e-4, rtol=1e-4)


def test_normalize():
  x = jnp.asarray([[3.0, 4.0], [0.0, 0.0]])
  np.testing.assert_allclose(np.asarray(normalize(x)), [[0.6, 0.8], [0.0, 0.0]])


def test_shapes_and_dtypes():
  x = _blobs(n=N, k=K, d=D)
  res = kmeans(KEY, x, K, **KW)
  chex.assert_shape(res.labels, (N,))
  chex.assert_shape(res.centers, (K, D))
  chex.assert_shape(res.inertia, ())
  chex.assert_type(res.labels, jnp.int32)
  chex.assert_type(res.centers, jnp.float32)
  assert 1 <= int(res.n_iter) <= 300
  assert np.asarray(res.labels).min() >= 0 and np.asarray(res.labels).max() < K


@pytest.mark.parametrize("kw,msg", [({"metric": "manhattan"}, "metric must be one of"),
                                    ({"n_clusters": 41}, r"n_clusters=41 must be in \[1, n=40\]")])
def test_bad_arguments(kw, msg):
  x = _blobs(n=40, k=3, d=5)
  args = {"n_clusters": 3, **kw}
  with pytest.raises(ValueError, match=msg):
    kmeans(KEY, x, args.pop("n_clusters"), **args)
  with pytest.raises(ValueError, match=r"needs \(n, d\) points"):
    kmeans(KEY, x[:, :, None], 3)


def test_lloyd_jit_equals_eager():
  x = jnp.asarray(_blobs(n=80, k=4, d=3, seed=8))
  c0 = x[:4]
  eager = lloyd(x, c0, max_iter=20)
  jitted = jax.jit(lambda a, b: lloyd(a, b, max_iter=20))(x, c0)
  np.testing.assert_array_equal(np.asarray(eager.labels), np.asarray(jitted.labels))
  np.testing.assert_allclose(np.asarray(eager.centers), np.asarray(jitted.centers), atol=1e-6)
  assert int(eager.n_iter) == int(jitted.n_iter)
  chex.assert_trees_all_close(eager.inertia, jitted.inertia, rtol=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_partition_cost_matches_numpy_and_kmeans_inertia(metric):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(60, 4)).astype(np.float32)
  lab = rng.integers(0, 3, 60)
  u = x / np.linalg.norm(x, axis=1, keepdims=True) if metric == "cosine" else x
  ref = 0.0
  for k in range(3):
    m = u[lab == k].mean(0)
    ref += (np.sum(1 - u[lab == k] @ (m / np.linalg.norm(m))) if metric == "cosine"
            else np.sum((u[lab == k] - m) ** 2))
  cost = partition_cost(jnp.asarray(x), jnp.asarray(lab), 3, metric=metric)
  chex.assert_shape(cost, ())
  np.testing.assert_allclose(float(cost), ref / 60, rtol=1e-5)
  # At Lloyd's fixed point the cost of k-means's own labels is its inertia / n.
  res = kmeans(jax.random.key(0), jnp.asarray(x), 3, n_init=2, metric=metric)
  np.testing.assert_allclose(float(partition_cost(jnp.asarray(x), res.labels, 3, metric=metric)),
                             float(res.inertia) / 60, rtol=1e-4, atol=1e-6)
  # An empty part costs nothing and gives no NaN.
  assert np.isfinite(float(partition_cost(jnp.asarray(x), jnp.zeros(60, jnp.int32), 3,
                                          metric=metric)))
