"""k-means: greedy k-means++ seeding and Lloyd iterations, Euclidean or cosine.

The one k-means of the project. Deterministic under a PRNG key; restarts are
run in sequence and the one with the lowest inertia is kept; empty clusters are
re-seeded at the points farthest from their centers (deterministic).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from clustering_jax.compile_cache import persistent_jit
from clustering_jax.ops.distances import cluster_sums, dot_hi

METRICS = ("euclidean", "cosine")


class KMeansResult(NamedTuple):
  labels: jax.Array    # (n,) int32
  centers: jax.Array   # (k, d) float32 (unit-norm rows for cosine)
  inertia: jax.Array   # () sum of squared distances (cosine: sum of 1 - cos)
  n_iter: jax.Array    # () Lloyd iterations run


def normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows scaled to unit l2 norm; zero rows stay zero."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def _dist(x, c, metric, xx=None):
  """(n, k) distances: squared Euclidean, or 1 - cos for unit-norm inputs.

  xx: optional precomputed (n, 1) squared norms of x (saves a pass per Lloyd step).
  """
  if metric == "cosine":
    return jnp.maximum(1.0 - dot_hi(x, c.T), 0.0)
  if xx is None:
    xx = jnp.sum(x * x, axis=1, keepdims=True)
  cc = jnp.sum(c * c, axis=1)[None, :]
  return jnp.maximum(xx + cc - 2.0 * dot_hi(x, c.T), 0.0)


def assign(x: jax.Array, centers: jax.Array, *, metric: str = "euclidean", xx=None):
  """Nearest-center labels (n,) int32 and their distances (n,)."""
  if metric == "cosine":
    x, centers = normalize(x), normalize(centers)
  d = _dist(x, centers, metric, xx)
  labels = jnp.argmin(d, axis=1).astype(jnp.int32)
  return labels, jnp.take_along_axis(d, labels[:, None], axis=1)[:, 0]


def kmeans_plusplus(key: jax.Array, x: jax.Array, n_clusters: int, *,
                    metric: str = "euclidean") -> jax.Array:
  """Greedy k-means++ seeding (2 + log k candidates per step). Returns (k, d) centers."""
  n = x.shape[0]
  n_trials = 2 + int(math.log(n_clusters))
  key0, key = jax.random.split(key)
  first = jax.random.randint(key0, (), 0, n)
  centers = jnp.zeros((n_clusters, x.shape[1]), x.dtype).at[0].set(x[first])
  closest = _dist(x, x[first][None], metric)[:, 0]

  def body(i, carry):
    centers, closest = carry
    k = jax.random.fold_in(key, i)
    p = closest / jnp.maximum(jnp.sum(closest), 1e-30)
    # All points identical (p == 0): fall back to uniform sampling.
    p = jnp.where(jnp.sum(closest) > 0, p, jnp.full_like(p, 1.0 / n))
    cand = jax.random.choice(k, n, (n_trials,), p=p)
    d = jnp.minimum(closest[None, :], _dist(x, x[cand], metric).T)  # (trials, n)
    best = jnp.argmin(jnp.sum(d, axis=1))
    return centers.at[i].set(x[cand[best]]), d[best]

  centers, _ = jax.lax.fori_loop(1, n_clusters, body, (centers, closest))
  return centers


def _update_centers(x, labels, dists, centers, metric):
  k = centers.shape[0]
  sums = cluster_sums(x, labels, k)
  counts = jax.ops.segment_sum(jnp.ones_like(labels, x.dtype), labels, num_segments=k)
  new = sums / jnp.maximum(counts, 1.0)[:, None]
  # Empty clusters take the points farthest from their centers, in order.
  empty = counts == 0
  # At most k clusters are empty, so the k farthest points suffice (top_k puts the lower
  # index first on ties, as the stable argsort it replaces: O(n·k), not O(n log n) per step).
  far = jax.lax.top_k(dists, min(k, x.shape[0]))[1]
  rank = jnp.clip(jnp.cumsum(empty) - 1, 0, far.shape[0] - 1)
  new = jnp.where(empty[:, None], x[far[rank]], new)
  if metric == "cosine":
    new = normalize(new)
  return new


def lloyd(x: jax.Array, centers: jax.Array, *, metric: str = "euclidean", max_iter: int = 300,
          tol: float = 1e-4) -> KMeansResult:
  """Lloyd iterations from given centers until the center shift is below tol.

  tol is relative to the mean per-feature variance of x (as scikit-learn).
  """
  if metric == "cosine":
    x, centers = normalize(x), normalize(centers)
  tol_abs = tol * jnp.mean(jnp.var(x, axis=0))
  xx = None if metric == "cosine" else jnp.sum(x * x, axis=1, keepdims=True)

  def cond(s):
    _, shift, it = s
    return (it < max_iter) & (shift > tol_abs)

  def body(s):
    c, _, it = s
    labels, d = assign(x, c, metric=metric, xx=xx)
    new = _update_centers(x, labels, d, c, metric)
    return new, jnp.sum((new - c) ** 2), it + 1

  c, _, it = jax.lax.while_loop(cond, body, (centers, jnp.asarray(jnp.inf, x.dtype), 0))
  labels, d = assign(x, c, metric=metric, xx=xx)
  return KMeansResult(labels, c, jnp.sum(d), it)


def partition_cost(x: jax.Array, labels: jax.Array, n_clusters: int, *,
                   metric: str = "euclidean") -> jax.Array:
  """Mean k-means cost of any partition (labels in [0, n_clusters)) with each part's own
  center: squared distance to the part's mean, or 1 - cos to its normalized mean. For the
  labels and centers Lloyd converged to this is the inertia / n."""
  if metric == "cosine":
    x = normalize(x)
  sums = cluster_sums(x, labels, n_clusters)
  counts = jax.ops.segment_sum(jnp.ones_like(labels, x.dtype), labels, num_segments=n_clusters)
  centers = sums / jnp.maximum(counts, 1.0)[:, None]
  if metric == "cosine":
    centers = normalize(centers)
  d = _dist(x, centers, metric)
  return jnp.mean(jnp.take_along_axis(d, labels[:, None].astype(jnp.int32), axis=1))


@persistent_jit(static_argnames=("n_clusters", "n_init", "max_iter", "metric"))
def kmeans(key: jax.Array, x: jax.Array, n_clusters: int, *, n_init: int = 10,
           max_iter: int = 300, tol: float = 1e-4, metric: str = "euclidean") -> KMeansResult:
  """k-means with n_init k-means++ restarts; keeps the lowest inertia (first on ties).

  Args:
    key: PRNG key; same key and data give the same result.
    x: (n, d) float points.
    n_clusters: k (static).
    metric: "euclidean" or "cosine" (spherical k-means on unit-norm rows).
  Returns:
    KMeansResult(labels (n,), centers (k, d), inertia (), n_iter ()).
  """
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
  if x.ndim != 2:
    raise ValueError(f"kmeans needs (n, d) points, got shape {x.shape}")
  if not 1 <= n_clusters <= x.shape[0]:
    raise ValueError(f"n_clusters={n_clusters} must be in [1, n={x.shape[0]}]")
  x = jnp.asarray(x, jnp.float32)
  xs = normalize(x) if metric == "cosine" else x

  def one(k):
    c0 = kmeans_plusplus(k, xs, n_clusters, metric=metric)
    return lloyd(xs, c0, metric=metric, max_iter=max_iter, tol=tol)

  # Restarts run one after another (lax.map): each stops at its own convergence, where a
  # vmapped while_loop would run every restart as long as the slowest (2.4x slower on hdigit).
  runs = jax.lax.map(one, jax.random.split(key, n_init))
  best = jnp.argmin(runs.inertia)
  return jax.tree.map(lambda a: a[best], runs)
