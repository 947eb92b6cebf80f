"""Blocked distances and kNN against brute-force NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chex

from clustering_jax.ops import cluster_sums, knn, map_row_blocks, sq_dists

RNG = np.random.default_rng(0)
X = RNG.normal(size=(23, 4)).astype(np.float32)


def _np_sq(a, b):
  return ((a[:, None, :].astype(np.float64) - b[None].astype(np.float64)) ** 2).sum(-1)


def test_sq_dists_matches_numpy():
  b = RNG.normal(size=(7, 4)).astype(np.float32)
  d = np.asarray(sq_dists(jnp.asarray(X), jnp.asarray(b)))
  assert d.shape == (23, 7)
  np.testing.assert_allclose(d, _np_sq(X, b), rtol=1e-5, atol=1e-5)
  # clipped at zero: the distance of a point to itself is exactly >= 0, never negative
  big = (X * 1000).astype(np.float32)
  assert (np.asarray(sq_dists(jnp.asarray(big), jnp.asarray(big))) >= 0).all()


def test_sq_dists_shape_error():
  with pytest.raises(ValueError, match=r"needs \(n, d\) and \(m, d\), got \(23, 4\) and \(3, 5\)"):
    sq_dists(jnp.asarray(X), jnp.zeros((3, 5)))


def _np_knn(x, k, exclude_self):
  d = _np_sq(x, x)
  if exclude_self:
    np.fill_diagonal(d, np.inf)
  idx = np.argsort(d, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(d, idx, axis=1), idx


@pytest.mark.parametrize("block", [1, 5, 8, 23, 64])   # 5 and 8 do not divide n=23
@pytest.mark.parametrize("exclude_self", [True, False])
def test_knn_matches_brute_force(block, exclude_self):
  k = 4
  d, idx = knn(jnp.asarray(X), k, block=block, exclude_self=exclude_self)
  wd, widx = _np_knn(X, k, exclude_self)
  assert d.shape == (23, k) and idx.shape == (23, k) and idx.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(idx), widx)
  np.testing.assert_allclose(np.asarray(d), wd, rtol=1e-4, atol=1e-5)
  if exclude_self:
    assert not (np.asarray(idx) == np.arange(23)[:, None]).any()
  else:
    np.testing.assert_array_equal(np.asarray(idx)[:, 0], np.arange(23))


def test_knn_k_too_large():
  with pytest.raises(ValueError, match="k=23 too large for n=23"):
    knn(jnp.asarray(X), 23)


@pytest.mark.parametrize("block", [1, 4, 7, 23, 100])
def test_map_row_blocks(block):
  def fn(rows, idx):
    # a row-dependent quantity that needs the global index: distance row + own index
    return jnp.sum(sq_dists(rows, jnp.asarray(X)), axis=1) + idx, idx

  out, idx = map_row_blocks(fn, jnp.asarray(X), block=block)
  assert out.shape == (23,) and idx.shape == (23,)
  np.testing.assert_array_equal(np.asarray(idx), np.arange(23))
  np.testing.assert_allclose(np.asarray(out), _np_sq(X, X).sum(1) + np.arange(23), rtol=1e-5)


def test_map_row_blocks_padding_never_nan():
  # fn that would produce NaN on zero rows: padding uses copies of row 0, not zeros
  x = jnp.asarray(np.abs(X) + 1.0)
  out = map_row_blocks(lambda r, i: jnp.log(r).sum(1), x, block=5)
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_allclose(np.asarray(out), np.log(np.abs(X) + 1.0).sum(1), rtol=1e-5)


def test_map_row_blocks_under_jit():
  f = jax.jit(lambda x: map_row_blocks(lambda r, i: r * 2.0, x, block=6))
  np.testing.assert_allclose(np.asarray(f(jnp.asarray(X))), X * 2.0)


def test_distance_matmuls_ask_for_full_float32():
  # GPUs round float32 matmul inputs to TF32 by default (sq_dists was off by 4e-3 on an H200);
  # the CPU ignores the setting, so this checks the request itself in the traced program.
  from clustering_jax.ops import kmeans
  from clustering_jax.ops.hypersphere import uniformity_loss

  def dots(fn, *args):
    eqns = jax.make_jaxpr(fn)(*args).eqns
    found = []
    def walk(eqs):
      for e in eqs:
        if e.primitive.name == "dot_general":
          found.append(e.params["precision"])
        for v in e.params.values():
          for sub in (v if isinstance(v, (tuple, list)) else (v,)):
            if hasattr(sub, "jaxpr"):
              walk(sub.jaxpr.eqns if hasattr(sub.jaxpr, "eqns") else sub.eqns)
            elif hasattr(sub, "eqns"):
              walk(sub.eqns)
    walk(eqns)
    return found

  hi = jax.lax.Precision.HIGHEST
  x = jnp.asarray(X)
  for fn, args in [(sq_dists, (x, x)),
                   (lambda a: kmeans(jax.random.key(0), a, 3, n_init=1, max_iter=2), (x,)),
                   (lambda a: kmeans(jax.random.key(0), a, 3, n_init=1, max_iter=2,
                                     metric="cosine"), (x,)),
                   (lambda c: uniformity_loss(c, jnp.ones(3, bool)), (x[:3],))]:
    precisions = dots(fn, *args)
    assert precisions and all(p == (hi, hi) for p in precisions), precisions


@pytest.mark.parametrize("how", ["segment", "matmul", "auto"])
def test_cluster_sums_matches_numpy(how):
  labels = np.array([0, 2, 2, 4, 0, 2, 9, -1] + [1] * 15)   # 9 and -1: outside [0, 5)
  s = cluster_sums(jnp.asarray(X), jnp.asarray(labels), 5, how=how)
  chex.assert_shape(s, (5, 4))
  chex.assert_tree_all_finite(s)
  ref = np.zeros((5, 4))
  for i, lab in enumerate(labels):
    if 0 <= lab < 5:
      ref[lab] += X[i]
  np.testing.assert_allclose(np.asarray(s), ref, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(s)[3] == 0)                      # an empty cluster sums to 0
  # the same call twice gives the same bits (on a GPU, the reason for "matmul")
  s2 = cluster_sums(jnp.asarray(X), jnp.asarray(labels), 5, how=how)
  np.testing.assert_array_equal(np.asarray(s), np.asarray(s2))


def test_cluster_sums_auto_is_the_segment_sum_on_the_cpu_and_rejects_bad_how():
  labels = jnp.asarray(np.arange(23) % 3)
  auto = cluster_sums(jnp.asarray(X), labels, 3)
  want = "segment" if jax.default_backend() == "cpu" else "matmul"
  np.testing.assert_array_equal(np.asarray(auto),
                                np.asarray(cluster_sums(jnp.asarray(X), labels, 3, how=want)))
  with pytest.raises(ValueError, match="how must be"):
    cluster_sums(jnp.asarray(X), labels, 3, how="scatter")
