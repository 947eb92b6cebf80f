"""Spectral embeddings from sparse graphs, near-linear in n.

Two graphs, both stored sparsely as (n, k) neighbour indices and weights:

* `knn_spectral_embedding`: the symmetric kNN connectivity graph W = (A + A^T) / 2,
  A_ij = 1 if j is one of the k nearest neighbours of i (`knn_indices`, row-blocked,
  O(n * block) memory; the kNN search itself is O(n^2 d) time). The top eigenvectors of the
  normalized adjacency D^-1/2 W D^-1/2 come from LOBPCG with sparse mat-vecs (gather for A,
  segment sum for A^T): O(n k c) per iteration; up to 2,048 points from a dense eigensolver.
* `anchor_spectral_embedding`: the anchor (landmark) graph W = Z diag(Z^T 1)^-1 Z^T, Z the
  (n, p) row-stochastic affinities of each point to its s nearest of p anchors (anchors
  from k-means on a subsample; adaptive-neighbour weights with a per-point scale). Its eigenvectors are the left singular vectors of
  Z diag(Z^T 1)^-1/2, obtained from the p x p Gram matrix, itself a sum over samples:
  O(n p d) time, O(n s) memory -- linear in n.

`spectral_embedding` picks one (kNN up to `knn_max_n` samples), optionally built on x's
coordinates in its top principal subspace (`principal_subspace`: randomized subspace
iteration, 2 n_iter passes over x), and returns the row-normalized top-c eigenvectors
(Ng-Jordan-Weiss), ready for k-means.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from clustering_jax.compile_cache import persistent_jit
from clustering_jax.ops.distances import dot_hi, map_row_blocks, sq_dists
from clustering_jax.ops.kmeans import kmeans, normalize

METHODS = ("auto", "knn", "anchor")
#: up to this many points the kNN graph's eigenvectors come from a dense eigensolver (exact).
DENSE_MAX_N = 2048


def orthonormalize(w: jax.Array) -> jax.Array:
  """Orthonormal basis (d, l) of the columns of w (d, l), l <= d, by shifted Cholesky QR
  twice (Fukaya et al. 2020): w <- w R^-T with R R^T = chol(w^T w + s I), a shift
  s ~ eps ||w||_F^2 keeping the factorization defined however ill-conditioned w is, then once
  more unshifted. Only l x l factorizations, applied as one matmul: no Householder QR of
  the tall matrix and no LAPACK call on it (LAPACK's threads are slow for these sizes on a
  busy CPU).
  """
  eps = jnp.finfo(w.dtype).eps
  eye = jnp.eye(w.shape[1], dtype=w.dtype)
  for shift in (True, False):
    g = dot_hi(w.T, w)
    if shift:
      g = g + (11.0 * (w.shape[0] * w.shape[1] + w.shape[1] ** 2) * eps * jnp.trace(g)
               + jnp.finfo(w.dtype).tiny) * eye
    r_inv = jax.scipy.linalg.solve_triangular(jnp.linalg.cholesky(g), eye, lower=True)
    w = dot_hi(w, r_inv.T)                                          # w R^-T
  return w


@persistent_jit(static_argnames=("rank", "n_iter"))
def principal_subspace(key: jax.Array, x: jax.Array, rank: int, *, n_iter: int = 2):
  """Orthonormal basis W (d, rank) of (approximately) the top-rank right singular subspace
  of x (n, d): subspace iteration W <- orth(x^T x W) from a Gaussian start, n_iter steps
  (the randomized range finder of Halko, Martinsson & Tropp 2011, Alg. 4.4, on x^T).
  Cost: 2 n_iter passes over x, O(n d rank) each; memory O(d rank).

  Not rotated to the singular vectors themselves (that needs an eigensolver): x W has the
  pairwise distances of x projected on the subspace, all a graph needs.
  """
  n, d = x.shape
  rank = min(rank, n, d)
  w = orthonormalize(jax.random.normal(key, (d, rank), x.dtype))
  for _ in range(n_iter):
    w = orthonormalize(dot_hi(x.T, dot_hi(x, w)))
  return w


def knn_indices(x: jax.Array, k: int, *, block: int = 1024) -> jax.Array:
  """(n, k) int32 indices of each point's k nearest other points, row-blocked.

  The neighbours of `ops.knn` without their distances: rows are ranked by
  x_i . x_j - ||x_j||^2 / 2 (= -(||x_i - x_j||^2 - ||x_i||^2) / 2), one pass over each
  (block, n) product instead of three. O(n^2 d) time, O(n * block) memory.
  """
  n = x.shape[0]
  half_sq = 0.5 * jnp.sum(x * x, axis=1)

  def rows(xb, ib):
    score = dot_hi(xb, x.T) - half_sq[None, :]                       # larger = nearer
    score = jnp.where(ib[:, None] == jnp.arange(n)[None, :], -jnp.inf, score)
    return jax.lax.top_k(score, k)[1].astype(jnp.int32)

  return map_row_blocks(rows, x, block=block)


def _sym_knn_matvec(idx: jax.Array, inv_sqrt_deg: jax.Array):
  """v (n, c) -> D^-1/2 (A + A^T)/2 D^-1/2 v for the 0/1 kNN matrix A given by idx (n, k)."""
  n, k = idx.shape
  flat = idx.reshape(-1)

  def mv(v):
    u = v * inv_sqrt_deg[:, None]
    av = jnp.sum(u[idx], axis=1)                                            # A u: gather
    atv = jax.ops.segment_sum(jnp.repeat(u, k, axis=0), flat, num_segments=n)  # A^T u
    return 0.5 * (av + atv) * inv_sqrt_deg[:, None]

  return mv


@persistent_jit(static_argnames=("n_components", "k", "block", "n_iter", "dense_max_n"))
def knn_spectral_embedding(key: jax.Array, x: jax.Array, n_components: int, *, k: int = 10,
                           block: int = 1024, n_iter: int = 200,
                           dense_max_n: int = DENSE_MAX_N):
  """Top eigenvectors of the normalized symmetric kNN connectivity graph.

  Up to dense_max_n points the graph is formed as a dense (n, n) matrix and solved exactly
  (`eigh`: O(n^3), small to compile); above, by LOBPCG on sparse mat-vecs.

  Args:
    key: PRNG key (LOBPCG start). x: (n, d) points. n_components: c.
    k: neighbours per point. n_iter: LOBPCG iterations.
  Returns:
    (embedding (n, c) with unit-norm rows, eigenvalues (c,) of D^-1/2 W D^-1/2).
  """
  from jax.experimental.sparse.linalg import lobpcg_standard
  n = x.shape[0]
  k = min(k, n - 1)
  idx = knn_indices(x, k, block=block)
  indeg = jax.ops.segment_sum(jnp.ones(n * k, x.dtype), idx.reshape(-1), num_segments=n)
  inv_sqrt_deg = 1.0 / jnp.sqrt(0.5 * (k + indeg))
  if n <= dense_max_n:
    a = jnp.zeros((n, n), x.dtype).at[jnp.repeat(jnp.arange(n), k), idx.reshape(-1)].set(1.0)
    m = inv_sqrt_deg[:, None] * (0.5 * (a + a.T)) * inv_sqrt_deg[None, :]
    vals, vecs = jnp.linalg.eigh(m)                                    # ascending
    return normalize(vecs[:, ::-1][:, :n_components]), vals[::-1][:n_components]
  mv = _sym_knn_matvec(idx, inv_sqrt_deg)
  # Shift to (I + M) / 2, eigenvalues in [0, 1], so "top" means the cluster eigenvectors.
  op = lambda v: 0.5 * (v + mv(v))
  n_vec = max(n_components + 2, min(2 * n_components, (n - 1) // 5))
  n_vec = min(n_vec, (n - 1) // 5)
  v0 = jax.random.normal(key, (n, n_vec), x.dtype)
  vals, vecs, _ = lobpcg_standard(op, v0, m=n_iter)
  order = jnp.argsort(-vals)[:n_components]
  return normalize(vecs[:, order]), 2.0 * vals[order] - 1.0


def _anchor_affinity(x, anchors, s, block):
  """(n, s) indices of each point's s nearest anchors and row-stochastic weights.

  Weights with a per-point scale (the closed form of Nie et al.'s adaptive neighbours):
  w_ij = (d_i,s+1 - d_ij) / sum_j'(d_i,s+1 - d_ij') over the s nearest, d squared
  distances; an outlier spreads its weight like any other point, so no anchor is cut off.
  """
  s1 = min(s + 1, anchors.shape[0])

  def rows(xb, _):
    d = sq_dists(xb, anchors)
    neg, j = jax.lax.top_k(-d, s1)
    return -neg, j.astype(jnp.int32)

  d, j = map_row_blocks(rows, x, block=block)
  if s1 == s:  # fewer than s + 1 anchors: uniform weights over all of them
    return j, jnp.full(d.shape, 1.0 / s, d.dtype)
  gap = jnp.maximum(d[:, s:s + 1] - d[:, :s], 0.0)
  tot = jnp.sum(gap, axis=1, keepdims=True)
  w = jnp.where(tot > 0, gap / jnp.where(tot > 0, tot, 1.0), 1.0 / s)
  return j[:, :s], w


@persistent_jit(static_argnames=("n_components", "n_anchors", "s", "block", "sample_size"))
def anchor_spectral_embedding(key: jax.Array, x: jax.Array, n_components: int, *,
                              n_anchors: int = 1000, s: int = 5, block: int = 4096,
                              sample_size: int = 20000):
  """Spectral embedding of the anchor graph W = Z Lambda^-1 Z^T (linear in n).

  Args:
    key: PRNG key (subsample and anchor k-means). x: (n, d). n_components: c.
    n_anchors: p anchors, from k-means (one restart, 30 Lloyd steps) on a random
      subsample of `sample_size` points. s: anchors per point.
  Returns:
    (embedding (n, c) with unit-norm rows, eigenvalues (c,) of the anchor graph).
  """
  n = x.shape[0]
  p = min(n_anchors, n)
  s = min(s, p)
  k_sub, k_km = jax.random.split(key)
  m = min(sample_size, n)
  sub = x[jax.random.choice(k_sub, n, (m,), replace=False)] if m < n else x
  anchors = kmeans(k_km, sub, p, n_init=1, max_iter=30).centers
  j, w = _anchor_affinity(x, anchors, s, block)
  lam = jax.ops.segment_sum(w.reshape(-1), j.reshape(-1), num_segments=p)   # Z^T 1
  zh = w / jnp.sqrt(jnp.maximum(lam[j], 1e-12))                            # Z Lambda^-1/2
  # Gram G = (Z Lambda^-1/2)^T (Z Lambda^-1/2), (p, p): a sum of s x s outer products.
  pair = (j[:, :, None] * p + j[:, None, :]).reshape(-1)
  g = jax.ops.segment_sum((zh[:, :, None] * zh[:, None, :]).reshape(-1), pair,
                          num_segments=p * p).reshape(p, p)
  evals, evecs = jnp.linalg.eigh(g)
  top = evals[::-1][:n_components]
  vt = evecs[:, ::-1][:, :n_components]
  # Left singular vectors: U = Z Lambda^-1/2 V Sigma^-1, gathered row by row.
  u = jnp.einsum("ns,nsc->nc", zh, vt[j]) / jnp.sqrt(jnp.maximum(top, 1e-12))
  return normalize(u), top


def spectral_embedding(key: jax.Array, x: jax.Array, n_components: int, *,
                       method: str = "auto", k: int = 10, knn_max_n: int = 20000,
                       n_anchors: int = 1000, s: int = 5, n_dims: Optional[int] = None):
  """Row-normalized spectral embedding (n, c) of x by the kNN or the anchor graph.

  method="auto" uses the kNN graph for n <= knn_max_n and the anchor graph above.
  n_dims: when given and smaller than d, the graph is built on the coordinates of x in its
  top-n_dims principal subspace (`project`), which cuts the O(n^2 d) kNN search to
  O(n^2 n_dims) and leaves out the directions of least variance.
  Returns (embedding, eigenvalues).
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  n = x.shape[0]
  if n_components < 1 or n_components >= n:
    raise ValueError(f"n_components={n_components} must be in [1, n={n})")
  if n_dims is not None and n_dims < 1:
    raise ValueError(f"n_dims must be >= 1 or None, got {n_dims}")
  if method == "auto":
    method = "knn" if n <= knn_max_n else "anchor"
  if method == "knn" and 5 * (n_components + 2) >= n:
    method = "anchor"  # LOBPCG needs 5 * block < n: tiny inputs take the exact anchor path
  x = jnp.asarray(x, jnp.float32)
  if n_dims is not None and n_dims < min(x.shape):
    x = project(jax.random.fold_in(key, 1), x, n_dims)
  if method == "knn":
    return knn_spectral_embedding(key, x, n_components, k=k)
  return anchor_spectral_embedding(key, x, n_components, n_anchors=n_anchors, s=s)


# It runs once per fit: XLA's backend optimization level 0 halves its compile time and leaves
# its run time (library matmuls) about the same.
@persistent_jit(static_argnames="rank", compiler_options={"xla_backend_optimization_level": 0})
def project(key: jax.Array, x: jax.Array, rank: int) -> jax.Array:
  """Coordinates x W (n, rank) of x in its top-rank principal subspace (`principal_subspace`;
  the principal components up to a rotation when x is centred)."""
  return dot_hi(x, principal_subspace(key, x, rank))
