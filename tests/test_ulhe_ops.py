"""ULHE-DC ops (clustering_jax.ops.hypersphere) against small NumPy references,
plus shapes and finiteness on degenerate batches."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clustering_jax.ops import hypersphere as hs


# ----------------------------------------------------------------------------- references
def np_unit(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_centroids(z, labels, k):
  """Eq. 7, one cluster at a time."""
  m = np.zeros((k, z.shape[1]))
  for c in range(k):
    idx = labels == c
    if idx.any():
      m[c] = np_unit(np_unit(z[idx]).sum(0))
  return m


def np_unif(m, present, reduction="sum"):
  """Eq. 11 over ordered pairs i != j of present clusters, a double loop."""
  total, pairs = 0.0, 0
  for i in range(len(m)):
    for j in range(len(m)):
      if i != j and present[i] and present[j]:
        total += 1.0 / (1.0 - m[i] @ m[j])
        pairs += 1
  return total if reduction == "sum" else total / max(pairs, 1)


def np_cmpt(z, labels, k, reduction="sum", normalize=True):
  """Eq. 12: (1/K) sum_k sum(1 - Z_k^T Z_k), the pair sum written out."""
  zz = np_unit(z) if normalize else z
  total = 0.0
  for c in range(k):
    zc = zz[labels == c]
    if len(zc) == 0:
      continue
    s = np.sum(1.0 - zc @ zc.T)
    total += s if reduction == "sum" else s / len(zc) ** 2
  return total / k


@pytest.fixture
def batch():
  rng = np.random.default_rng(0)
  k, d = 4, 6
  centers = np_unit(rng.normal(size=(k, d)))
  labels = np.repeat(np.arange(k), [7, 5, 3, 1]).astype(np.int32)   # incl. a singleton
  z = (centers[labels] * rng.uniform(0.5, 2.0, (16, 1))
       + 0.3 * rng.normal(size=(16, d))).astype(np.float32)
  return z, centers.astype(np.float32), labels, k


# ----------------------------------------------------------------------------- Eq. 1-4, 6
def test_rec_and_norm_losses(batch):
  z, _, _, _ = batch
  rng = np.random.default_rng(1)
  x = rng.normal(size=(16, 3, 2)).astype(np.float32)
  xh = rng.normal(size=(16, 3, 2)).astype(np.float32)
  err = ((x - xh) ** 2).reshape(16, -1)
  np.testing.assert_allclose(hs.rec_loss(x, xh, reduction="sum"), err.sum(1).mean(), rtol=1e-5)
  np.testing.assert_allclose(hs.rec_loss(x, xh, reduction="mean"), err.mean(), rtol=1e-5)
  np.testing.assert_allclose(hs.norm_loss(z), np.mean((np.linalg.norm(z, axis=1) - 1) ** 2),
                             rtol=1e-5)
  with pytest.raises(ValueError):
    hs.rec_loss(x, xh[:, :2])


def test_cosine_cluster_loss_and_assignments(batch):
  z, centers, labels, _ = batch
  cos = np.sum(np_unit(z) * centers[labels], axis=1)
  np.testing.assert_allclose(hs.cosine_cluster_loss(z, centers, labels), np.mean(1 - cos),
                             rtol=1e-5, atol=1e-6)
  lab, dist = hs.assign_cosine(jnp.asarray(z), jnp.asarray(centers))       # Eq. 6
  d_ref = 1 - np_unit(z) @ centers.T
  np.testing.assert_array_equal(lab, d_ref.argmin(1))
  np.testing.assert_allclose(dist, d_ref.min(1), atol=1e-5)


# ----------------------------------------------------------------------------- Eq. 7-8
def test_batch_centroids_and_running_update(batch):
  z, centers, labels, k = batch
  m, counts = hs.batch_centroids(z, labels, k)
  np.testing.assert_allclose(m, np_centroids(z, labels, k), atol=1e-5)
  np.testing.assert_array_equal(counts, np.bincount(labels, minlength=k))
  # Eq. 8 with an empty cluster (label 3 dropped): it keeps its centroid.
  keep = labels != 3
  new = hs.update_centroids(centers, z[keep], labels[keep])
  n = keep.sum()
  cnt = np.bincount(labels[keep], minlength=k)
  ref = np_unit(centers + (k * cnt / n)[:, None] * np_centroids(z[keep], labels[keep], k))
  np.testing.assert_allclose(new, ref, atol=1e-5)
  np.testing.assert_allclose(new[3], centers[3], atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(new, axis=1), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------- Eq. 11
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_uniformity_matches_double_loop(batch, reduction):
  z, _, labels, k = batch
  m = np_centroids(z, labels, k).astype(np.float32)
  present = np.array([True, True, False, True])
  got = hs.uniformity_loss(jnp.asarray(m), jnp.asarray(present), reduction=reduction)
  np.testing.assert_allclose(got, np_unif(m, present, reduction), rtol=1e-4)


def test_uniformity_equals_hyperspherical_energy():
  """Eq. 9-11: for unit centroids sum_{i != j} 1/(1 - m_i^T m_j) = 4 * sum_{i > j} ||m_i - m_j||^-2."""
  m = np_unit(np.random.default_rng(2).normal(size=(5, 3))).astype(np.float32)
  energy = sum(np.linalg.norm(m[i] - m[j]) ** -2 for i in range(5) for j in range(i))
  np.testing.assert_allclose(hs.uniformity_loss(m, np.ones(5, bool)), 4 * energy, rtol=1e-4)


def test_uniformity_degenerate_cases_are_finite():
  m = np_unit(np.array([[1., 0, 0], [1., 0, 0], [0, 1., 0]], np.float32))   # two identical
  present = jnp.ones(3, bool)
  val, g = jax.value_and_grad(lambda c: hs.uniformity_loss(c, present, eps=1e-6))(jnp.asarray(m))
  chex.assert_tree_all_finite((val, g))
  assert val >= 2 / 1e-6                               # large, clamped, not inf
  # One cluster present (or none): no pair, loss 0 with a zero gradient.
  for pres in ([True, False, False], [False, False, False]):
    v, g = jax.value_and_grad(hs.uniformity_loss)(jnp.asarray(m), jnp.asarray(pres))
    assert float(v) == 0.0
    chex.assert_tree_all_finite(g)
    np.testing.assert_array_equal(g, 0.0)


# ----------------------------------------------------------------------------- Eq. 12
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("normalize", [True, False])
def test_compactness_matches_pair_sum(batch, reduction, normalize):
  z, _, labels, k = batch
  got = hs.compactness_loss(z, labels, k, normalize=normalize, reduction=reduction)
  np.testing.assert_allclose(got, np_cmpt(z, labels, k, reduction, normalize), rtol=1e-4,
                             atol=1e-5)


def test_compactness_zero_for_collapsed_clusters():
  z = np.array([[2., 0], [1., 0], [0, 3.], [0, 1.]], np.float32)
  assert abs(float(hs.compactness_loss(z, np.array([0, 0, 1, 1]), 2))) < 1e-5
  # One cluster holding both directions: 8 ordered orthogonal pairs of 1 - 0, over K = 2.
  assert float(hs.compactness_loss(z, np.array([0, 0, 0, 0]), 2)) == pytest.approx(8 / 2)


# ----------------------------------------------------------------------------- Eq. 13
def test_objective_is_the_weighted_sum_and_switches_drop_terms(batch):
  z, centers, labels, k = batch
  lam = dict(lambda0=2.0, lambda1=0.08, lambda2=0.4)
  loss, t = hs.ulhe_objective(z, centers, labels, **lam, reduction="mean")
  present = np.bincount(labels, minlength=k) > 0
  clus = np.mean(1 - np.sum(np_unit(z) * centers[labels], axis=1))
  nrm = np.mean((np.linalg.norm(z, axis=1) - 1) ** 2)
  unif = np_unif(np_centroids(z, labels, k), present, "mean")
  cmpt = np_cmpt(z, labels, k, "mean")
  np.testing.assert_allclose([t["clus"], t["norm"], t["unif"], t["cmpt"]],
                             [clus, nrm, unif, cmpt], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(loss, clus + 2.0 * nrm + 0.08 * unif + 0.4 * cmpt, rtol=1e-4)
  cases = {(False, True): clus + 2 * nrm + 0.4 * cmpt, (True, False): clus + 2 * nrm + 0.08 * unif,
           (False, False): clus + 2 * nrm}
  for (u, c), ref in cases.items():
    got, _ = hs.ulhe_objective(z, centers, labels, **lam, use_unif=u, use_cmpt=c,
                               reduction="mean")
    np.testing.assert_allclose(got, ref, rtol=1e-4)
  jitted = jax.jit(lambda z: hs.ulhe_objective(z, centers, labels, **lam)[0])
  np.testing.assert_allclose(jitted(z), hs.ulhe_objective(z, centers, labels, **lam)[0],
                             rtol=1e-5)


@pytest.mark.parametrize("case", ["one_cluster", "identical_points", "singleton", "zero_rows"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_objective_gradient_finite_on_degenerate_batches(case, reduction):
  rng = np.random.default_rng(3)
  k, d = 3, 4
  centers = np_unit(rng.normal(size=(k, d))).astype(np.float32)
  z = rng.normal(size=(8, d)).astype(np.float32)
  labels = np.array([0, 0, 0, 1, 1, 1, 2, 2], np.int32)
  if case == "one_cluster":
    labels = np.zeros(8, np.int32)
  elif case == "identical_points":       # two clusters whose batch centroids coincide
    z[:] = z[0]
  elif case == "singleton":
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2], np.int32)
  elif case == "zero_rows":
    z[:3] = 0.0

  def f(z):
    return hs.ulhe_objective(z, centers, labels, lambda0=2.0, lambda1=0.08, lambda2=0.4,
                             reduction=reduction)

  (loss, terms), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(z))
  chex.assert_shape(g, (8, d))
  chex.assert_tree_all_finite((loss, terms, g))
  assert int(terms["n_present"]) == len(np.unique(labels))


# ----------------------------------------------------------------------------- Eq. 14, §4.2
def test_change_rate_and_stop_rule():
  prev = np.array([0, 1, 2, 2, 1, 0, 0, 1, 2, 2])
  cur = np.array([0, 1, 2, 1, 1, 0, 0, 1, 2, 0])
  s_prev, s_cur = np.eye(3)[prev], np.eye(3)[cur]
  ref = 1 - np.sum(s_prev * s_cur) / len(prev)          # Eq. 14 with one-hot s
  np.testing.assert_allclose(hs.change_rate(prev, cur), ref)
  assert not bool(hs.should_stop(prev, cur, eta=0.2))    # 0.2 is not < 0.2
  assert bool(hs.should_stop(prev, cur, eta=0.21))
  assert bool(hs.should_stop(prev, prev, eta=0.001))
  with pytest.raises(ValueError):
    hs.change_rate(prev, cur[:5])


@pytest.mark.parametrize("frac", [1 / 3, 2 / 3, 1.0])
def test_easiest_per_cluster_matches_numpy(frac):
  rng = np.random.default_rng(4)
  labels = rng.integers(0, 4, 50)
  labels[labels == 3] = 2                                # cluster 3 empty
  dists = rng.uniform(size=50).astype(np.float32)
  got = np.asarray(hs.easiest_per_cluster(jnp.asarray(dists), jnp.asarray(labels), frac, 4))
  ref = np.zeros(50, bool)
  for c in range(4):
    idx = np.flatnonzero(labels == c)
    m = math.ceil(frac * len(idx))
    ref[idx[np.argsort(dists[idx])[:m]]] = True
  np.testing.assert_array_equal(got, ref)
