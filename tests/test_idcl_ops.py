"""IDCL ops against small NumPy references, plus shapes and finiteness on degenerate inputs."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clustering_jax.nets.transformer import (TransformerAutoencoder, patchify,
                                             sinusoidal_positions, unpatchify)
from clustering_jax.ops.assignment import (core_similarity, kl_clustering_loss, soft_assignment,
                                           target_distribution)
from clustering_jax.ops.curriculum import pacing, select_easy
from clustering_jax.ops.density import (cutoff_distance, density_cores, difficulty_scores,
                                        kth_smallest, local_density, per_cluster_top_fraction)


# ----------------------------------------------------------------------------- references
def np_pairwise(a, b):
  return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def np_cutoff(z, lam):
  d = np.sqrt(np_pairwise(z, z))[np.triu_indices(len(z), k=1)]
  pos = max(int(math.ceil(round(lam * d.size, 6))) - 1, 0)
  return np.sort(d)[pos]


def np_top_fraction(values, labels, frac, k):
  keep = np.zeros(len(values), bool)
  for c in range(k):
    idx = np.flatnonzero(labels == c)
    if idx.size == 0:
      continue
    a = np.sort(values[idx])[::-1]                       # 𝒜, descending
    m = max(int(math.ceil(round(frac * idx.size, 6))), 1)
    keep[idx] = values[idx] >= a[m - 1]
  return keep


def np_core_similarity(z, anchors, labels, w, k):
  s = np.zeros((len(z), k))
  for i in range(len(z)):
    for j in range(len(anchors)):
      s[i, labels[j]] += w[j] / (1.0 + np.sum((z[i] - anchors[j]) ** 2))
  return s


@pytest.fixture
def emb():
  rng = np.random.default_rng(0)
  centers = rng.normal(0, 4, (3, 5))
  lab = np.repeat(np.arange(3), [30, 15, 5])
  z = centers[lab] + rng.normal(0, 1, (50, 5))
  return z.astype(np.float32), lab.astype(np.int32)


# ----------------------------------------------------------------------------- density
def test_cutoff_distance_exact_matches_numpy(emb):
  z, _ = emb
  for lam in (0.02, 0.1, 0.5):
    got = float(cutoff_distance(jnp.asarray(z), lam1=lam))
    np.testing.assert_allclose(got, np_cutoff(z.astype(np.float64), lam), rtol=1e-4)


def test_cutoff_distance_sampled_estimate_is_close():
  z = np.random.default_rng(1).normal(size=(400, 3)).astype(np.float32)
  exact = np_cutoff(z.astype(np.float64), 0.02)
  est = float(cutoff_distance(jnp.asarray(z), jax.random.key(0), lam1=0.02, exact_max_n=100,
                              n_pairs=200_000))
  assert abs(est - exact) / exact < 0.03
  with pytest.raises(ValueError, match="PRNG key"):
    cutoff_distance(jnp.asarray(z), lam1=0.02, exact_max_n=100)


def test_kth_smallest_equals_sort_with_ties_zeros_and_inf():
  rng = np.random.default_rng(5)
  cases = [rng.exponential(size=1000), rng.choice([0.0, 1.0, 2.5, 3.0], size=200),
           np.array([np.inf, 0.0, -0.0, 7.0, np.inf, 1e-30, 3e38]), np.array([4.0])]
  for v in cases:
    v = v.astype(np.float32)
    ref = np.sort(np.where(v > 0, v, 0.0))
    f = jax.jit(kth_smallest)
    for pos in {0, len(v) // 3, len(v) // 2, len(v) - 1}:
      got = np.asarray(f(jnp.asarray(v), pos))
      assert got == ref[pos] and not np.signbit(got), (v[:8], pos, got, ref[pos])


def test_cutoff_distance_is_the_sorted_upper_triangle_exactly():
  # Selection by bisection must give the very float the sort of the n(n-1)/2 distances gives,
  # including with duplicate points (zero distances) and a rank inside a run of ties.
  rng = np.random.default_rng(6)
  z = np.repeat(rng.normal(size=(30, 4)), 3, axis=0).astype(np.float32)
  zj = jnp.asarray(z)
  from clustering_jax.ops.distances import sq_dists
  iu = np.triu_indices(len(z), k=1)
  d = np.sort(np.sqrt(np.asarray(sq_dists(zj, zj))[iu]))
  for lam in (0.005, 0.02, 0.3, 1.0):
    pos = max(math.ceil(lam * len(d) - 1e-4) - 1, 0)
    assert np.asarray(cutoff_distance(zj, lam1=lam)) == max(d[pos], np.float32(1e-12))


def test_local_density_matches_numpy_in_blocks(emb):
  z, _ = emb
  dc = 1.7
  ref = np.exp(-np_pairwise(z, z).astype(np.float64) / dc ** 2).sum(1)  # Eq. 1, j over all n
  got = local_density(jnp.asarray(z), jnp.float32(dc), block=7)
  chex.assert_shape(got, (50,))
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4)


def test_difficulty_scores_minmax(emb):
  rho = np.random.default_rng(2).uniform(1, 9, 20).astype(np.float32)
  ref = (rho - rho.min()) / (rho.max() - rho.min())
  np.testing.assert_allclose(np.asarray(difficulty_scores(jnp.asarray(rho))), ref, rtol=1e-5)
  flat = difficulty_scores(jnp.full((6,), 3.0))
  chex.assert_tree_all_finite(flat)
  np.testing.assert_array_equal(np.asarray(flat), 0.0)


@pytest.mark.parametrize("frac", [0.05, 0.3, 0.6, 0.95, 1.0])
def test_per_cluster_top_fraction_matches_numpy(frac):
  rng = np.random.default_rng(3)
  values = rng.integers(0, 6, 40).astype(np.float32)  # many ties
  labels = rng.integers(0, 4, 40).astype(np.int32)
  labels[0] = 4  # a one-sample cluster; cluster 5 is empty
  got = per_cluster_top_fraction(jnp.asarray(values), jnp.asarray(labels), frac=frac, n_clusters=6)
  np.testing.assert_array_equal(np.asarray(got), np_top_fraction(values, labels, frac, 6))
  assert bool(got[0])  # the one-sample cluster keeps its member


def test_density_cores_eq9_and_jit(emb):
  z, lab = emb
  rho = np.asarray(local_density(jnp.asarray(z), cutoff_distance(jnp.asarray(z))))
  core = density_cores(jnp.asarray(rho), jnp.asarray(lab), n_clusters=3, lam2=0.05)
  np.testing.assert_array_equal(np.asarray(core), np_top_fraction(rho, lab, 0.05, 3))
  # ceil(5% of 30) = 2, ceil(5% of 15) = 1, ceil(5% of 5) = 1 core members (no ties here).
  assert [int(np.asarray(core)[lab == c].sum()) for c in range(3)] == [2, 1, 1]
  jitted = jax.jit(density_cores, static_argnames=("n_clusters", "lam2"))
  np.testing.assert_array_equal(
      np.asarray(jitted(jnp.asarray(rho), jnp.asarray(lab), n_clusters=3, lam2=0.05)),
      np.asarray(core))


# ----------------------------------------------------------------------------- curriculum
def test_pacing_eq5_6():
  t = np.arange(0, 120)
  got = np.array([float(pacing(i, zeta0=0.6, zeta_max=0.95, t_grow=50)) for i in t])
  ref = np.minimum(0.95, 2.0 ** (-(np.log2(0.6) / 50) * t + np.log2(0.6)))
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  assert got[0] == pytest.approx(0.6)
  uncapped = np.array([float(pacing(i, zeta0=0.6, zeta_max=1.0, t_grow=50)) for i in t])
  assert uncapped[50] == pytest.approx(1.0)
  inc = np.diff(uncapped[:51])
  assert np.all(inc > 0) and np.all(np.diff(inc) > 0)  # Eq. 3 and Eq. 4: slow then fast


def test_pacing_ablations_change_the_schedule():
  lin = np.array([float(pacing(i, zeta0=0.6, zeta_max=1.0, t_grow=50, pace="linear"))
                  for i in range(51)])
  np.testing.assert_allclose(np.diff(lin), 0.4 / 50, rtol=1e-4)  # fixed pace
  exp1 = float(pacing(10, zeta0=0.6, zeta_max=0.95, t_grow=50))
  assert exp1 < lin[10]
  assert float(pacing(0, zeta0=0.6, zeta_max=0.95, t_grow=50, pace="all")) == 1.0
  with pytest.raises(ValueError):
    pacing(0, zeta0=0.6, zeta_max=0.95, t_grow=0)


def test_select_easy_matches_algorithm1():
  rng = np.random.default_rng(4)
  delta = rng.uniform(size=60).astype(np.float32)
  labels = rng.integers(0, 3, 60).astype(np.int32)
  v = select_easy(jnp.asarray(delta), jnp.asarray(labels), zeta=0.6, n_clusters=3)
  np.testing.assert_array_equal(np.asarray(v), np_top_fraction(delta, labels, 0.6, 3))
  for c in range(3):  # ceil(ζ|C_k|) easiest of every cluster
    assert np.asarray(v)[labels == c].sum() == math.ceil(0.6 * (labels == c).sum() - 1e-9)


# ----------------------------------------------------------------------------- assignment
def test_core_similarity_and_q_match_numpy(emb):
  z, lab = emb
  w = (np.arange(50) % 4 == 0).astype(np.float32)
  s = core_similarity(jnp.asarray(z[:7]), jnp.asarray(z), jnp.asarray(lab), jnp.asarray(w),
                      n_clusters=3)
  ref = np_core_similarity(z[:7].astype(np.float64), z, lab, w, 3)
  np.testing.assert_allclose(np.asarray(s), ref, rtol=1e-4)
  q = soft_assignment(s)
  np.testing.assert_allclose(np.asarray(q), ref / ref.sum(1, keepdims=True), rtol=1e-4)
  sm = core_similarity(jnp.asarray(z[:7]), jnp.asarray(z), jnp.asarray(lab), jnp.asarray(w),
                       n_clusters=3, reduce="mean")
  sizes = np.array([w[lab == c].sum() for c in range(3)])
  np.testing.assert_allclose(np.asarray(sm), ref / sizes, rtol=1e-4)


def test_target_distribution_matches_dec():
  q = np.random.default_rng(5).dirichlet(np.ones(4), size=12).astype(np.float32)
  w = q ** 2 / q.sum(0)
  ref = w / w.sum(1, keepdims=True)
  np.testing.assert_allclose(np.asarray(target_distribution(jnp.asarray(q))), ref, rtol=1e-5)


def test_kl_loss_matches_numpy_and_weights():
  rng = np.random.default_rng(6)
  p = rng.dirichlet(np.ones(3), size=5).astype(np.float32)
  q = rng.dirichlet(np.ones(3), size=5).astype(np.float32)
  per = (p * np.log(p / q)).sum(1)
  np.testing.assert_allclose(float(kl_clustering_loss(jnp.asarray(p), jnp.asarray(q))),
                             per.mean(), rtol=1e-5)
  w = np.array([1, 1, 0, 1, 0], np.float32)
  np.testing.assert_allclose(
      float(kl_clustering_loss(jnp.asarray(p), jnp.asarray(q), weights=jnp.asarray(w))),
      per[w > 0].mean(), rtol=1e-5)


def test_kl_gradient_matches_eq15(emb):
  """Autodiff of Eq. 12 w.r.t. z_i equals the paper's closed form (Eq. 15/28), with the
  printed ‖z_i - z_j‖ read as the vector z_i - z_j."""
  z, lab = emb
  w = (np.arange(50) % 3 == 0).astype(np.float32)
  anchors = jnp.asarray(z)
  zi = jnp.asarray(z[:6] + 0.3)
  q0 = soft_assignment(core_similarity(zi, anchors, jnp.asarray(lab), jnp.asarray(w),
                                       n_clusters=3))
  p = np.asarray(target_distribution(q0)) ** 0.5
  p = p / p.sum(1, keepdims=True)

  def loss(zz):
    q = soft_assignment(core_similarity(zz, anchors, jnp.asarray(lab), jnp.asarray(w),
                                        n_clusters=3))
    return kl_clustering_loss(jnp.asarray(p), q) * zz.shape[0]  # Σ_i, as Eq. 12

  g = np.asarray(jax.grad(loss)(zi))
  zi_np, q = np.asarray(zi, np.float64), np.asarray(q0, np.float64)
  ref = np.zeros_like(zi_np)
  for i in range(6):
    for c in range(3):
      js = np.flatnonzero((lab == c) & (w > 0))
      diff = zi_np[i] - z[js]
      ker = 1.0 / (1.0 + (diff ** 2).sum(1))
      ref[i] += 2 * (p[i, c] - q[i, c]) / ker.sum() * (diff * (ker ** 2)[:, None]).sum(0)
  np.testing.assert_allclose(g, ref, rtol=2e-3, atol=1e-6)


# ----------------------------------------------------------------------------- degenerate
def test_duplicate_points_stay_finite():
  z = jnp.ones((20, 4))
  dc = cutoff_distance(z)
  assert float(dc) > 0
  rho = local_density(z, dc)
  np.testing.assert_allclose(np.asarray(rho), 20.0)
  lab = jnp.asarray(np.arange(20) % 3, jnp.int32)
  core = density_cores(rho, lab, n_clusters=3)
  assert bool(jnp.all(core))  # all tie with the threshold
  q = soft_assignment(core_similarity(z, z, lab, core.astype(jnp.float32), n_clusters=3))
  p = target_distribution(q)
  kl, g = jax.value_and_grad(
      lambda zz: kl_clustering_loss(p, soft_assignment(
          core_similarity(zz, z, lab, core.astype(jnp.float32), n_clusters=3))))(z)
  chex.assert_tree_all_finite((difficulty_scores(rho), q, p, kl, g))


def test_empty_and_tiny_clusters_and_far_points():
  z = jnp.asarray(np.r_[np.zeros((5, 2)), [[1e6, 1e6]]], jnp.float32)
  lab = jnp.asarray([0, 0, 0, 0, 0, 1], jnp.int32)  # cluster 1: one sample; cluster 2: empty
  rho = local_density(z, cutoff_distance(z))
  core = density_cores(rho, lab, n_clusters=3)
  assert bool(core[5])  # a cluster smaller than 1/λ2 keeps its one member as its core
  s = core_similarity(z, z, lab, core.astype(jnp.float32), n_clusters=3)
  q = soft_assignment(s)
  p = target_distribution(q)
  chex.assert_shape((q, p), (6, 3))
  chex.assert_tree_all_finite((rho, q, p, kl_clustering_loss(p, q)))
  np.testing.assert_allclose(np.asarray(q[:, 2]), 0.0)  # the empty cluster gets no mass
  np.testing.assert_allclose(np.asarray(q.sum(1)), 1.0, rtol=1e-6)
  # no anchors at all: uniform assignment, not NaN
  q0 = soft_assignment(core_similarity(z, z, lab, jnp.zeros(6), n_clusters=3))
  np.testing.assert_allclose(np.asarray(q0), 1.0 / 3)


# ----------------------------------------------------------------------------- network
def test_patchify_roundtrip_and_layout():
  x = np.arange(2 * 8 * 8 * 1, dtype=np.float32).reshape(2, 8, 8, 1)
  p = np.asarray(patchify(jnp.asarray(x)))
  chex.assert_shape(p, (2, 16, 4))
  np.testing.assert_array_equal(p[0, 1], x[0, 0:2, 2:4, 0].ravel())  # patch (row 0, col 1)
  np.testing.assert_array_equal(p[1, 4], x[1, 2:4, 0:2, 0].ravel())  # patch (row 1, col 0)
  np.testing.assert_array_equal(np.asarray(unpatchify(jnp.asarray(p), (2, 2, 1))), x)


def test_sinusoidal_positions():
  pe = sinusoidal_positions(16, 4)
  np.testing.assert_allclose(pe[3], [np.sin(3), np.cos(3), np.sin(3 / 100), np.cos(3 / 100)],
                             rtol=1e-5)


@pytest.mark.parametrize("shape", [(8, 8, 1), (16, 16, 1)])
def test_transformer_autoencoder_shapes(shape):
  net = TransformerAutoencoder(shape, hidden=(16, 16, 32), latent=10, num_heads=2)
  x = jnp.ones((3,) + shape)
  params = jax.jit(net.init)(jax.random.key(0), x)
  z, xh = jax.jit(net.apply)(params, x)
  chex.assert_shape(z, (3, 10))
  chex.assert_shape(xh, (3,) + shape)
  chex.assert_tree_all_finite((z, xh))
  m = 16 * (shape[0] // 4) * (shape[1] // 4)  # M = 16 patches x I_e
  assert params["params"]["enc_linear"]["dense_0"]["kernel"].shape == (m, 16)
  with pytest.raises(ValueError, match="patch grid"):
    TransformerAutoencoder((10, 10, 1)).init(jax.random.key(0), jnp.ones((1, 10, 10, 1)))
