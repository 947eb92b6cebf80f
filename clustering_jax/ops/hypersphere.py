"""ULHE-DC losses and updates on the unit hypersphere (paper 002, §3.2-3.4).

Pure array functions, jit-safe, numerically safe on degenerate batches (zero
embeddings, empty or singleton clusters, coinciding centroids). Notation:
z (B, d) encoder outputs F_w(x), centers M (K, d) unit rows, labels s (B,) int.
Per-cluster sums are `cluster_sums` reductions (a segment sum on the CPU, a one-hot matmul on an
accelerator), so they shard over the batch axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from clustering_jax.ops.distances import cluster_sums, dot_hi
from clustering_jax.ops.kmeans import assign

EPS = 1e-12


def safe_norm(x: jax.Array, *, axis: int = -1, keepdims: bool = False,
              eps: float = EPS) -> jax.Array:
  """l2 norm with a finite gradient at 0: sqrt(max(sum x^2, eps^2))."""
  return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=keepdims), eps * eps))


def unit(x: jax.Array, *, eps: float = EPS) -> jax.Array:
  """Rows scaled to unit norm (`Norm(.)` of Eq. 7); zero rows stay zero, gradients finite."""
  return x / safe_norm(x, keepdims=True, eps=eps)


def rec_loss(x: jax.Array, x_hat: jax.Array, *, reduction: str = "mean") -> jax.Array:
  """L_rec, Eq. 1: E_i ||x_i - x_hat_i||^2.

  x, x_hat: (B, ...) same shape. reduction: "sum" sums the squared error over the
  features of a sample (Eq. 1 as written), "mean" averages it (PyTorch's MSELoss, the
  scale the paper's lr 0.1 works with). Either way the mean over samples. Returns ().
  """
  if x.shape != x_hat.shape:
    raise ValueError(f"rec_loss: x {x.shape} and x_hat {x_hat.shape} differ")
  err = jnp.reshape(x - x_hat, (x.shape[0], -1)) ** 2
  if reduction == "sum":
    return jnp.mean(jnp.sum(err, axis=1))
  if reduction == "mean":
    return jnp.mean(err)
  raise ValueError(f"rec_loss: reduction must be 'sum' or 'mean', got {reduction!r}")


def norm_loss(z: jax.Array, weights=None) -> jax.Array:
  """L_norm, Eq. 2: E_i (||z_i||_2 - 1)^2 for z (B, d). Returns ()."""
  if z.ndim != 2:
    raise ValueError(f"norm_loss needs (B, d) embeddings, got {z.shape}")
  return _mean((safe_norm(z) - 1.0) ** 2, weights)


def assign_cosine(z: jax.Array, centers: jax.Array):
  """Assignments s, Eq. 6: argmin_k 1 - cos(z_i, m_k). Returns labels (B,) int32 and
  their cosine distances (B,). (The project's k-means `assign`, cosine metric.)"""
  return assign(z, centers, metric="cosine")


def _mean(v: jax.Array, weights) -> jax.Array:
  """Mean over samples, or the weighted mean (zero-weight rows are padding)."""
  if weights is None:
    return jnp.mean(v)
  return jnp.sum(weights * v) / jnp.maximum(jnp.sum(weights), 1.0)


def cosine_cluster_loss(z: jax.Array, centers: jax.Array, labels: jax.Array,
                        weights=None) -> jax.Array:
  """Clustering objective, Eq. 4: E_i 1 - cos(z_i, M s_i).

  z (B, d), centers (K, d), labels (B,) int, weights (B,) or None. Centers are taken as
  given (they are updated by Eq. 8, not by gradients). Returns ().
  """
  if z.ndim != 2 or centers.ndim != 2 or z.shape[1] != centers.shape[1]:
    raise ValueError(f"cosine_cluster_loss: z {z.shape} and centers {centers.shape} mismatch")
  m = unit(centers)[labels]                          # M s_i
  return _mean(1.0 - jnp.sum(unit(z) * m, axis=1), weights)


def batch_centroids(z: jax.Array, labels: jax.Array, n_clusters: int):
  """Centroids of Eq. 7: m_k = Norm(sum_{i in C_k} z_i / ||z_i||).

  z (B, d), labels (B,) int in [0, K). Returns (centroids (K, d), counts (K,) float);
  a cluster with no member has a zero centroid and count 0.
  """
  sums = cluster_sums(unit(z), labels, n_clusters)
  counts = jax.ops.segment_sum(jnp.ones(labels.shape, z.dtype), labels,
                               num_segments=n_clusters)
  return unit(sums), counts


def update_centroids(centers: jax.Array, z: jax.Array, labels: jax.Array) -> jax.Array:
  """Running centroid update, Eq. 8: m_k <- Norm(m_k + K |C_k| / N * m_hat_k).

  centers (K, d) previous centroids, z (N, d) embeddings of the samples used this
  iteration, labels (N,) their assignments (Eq. 6); m_hat_k from Eq. 7. A cluster
  with no member keeps its centroid. Returns (K, d) unit rows.
  """
  k = centers.shape[0]
  m_hat, counts = batch_centroids(z, labels, k)
  weight = k * counts / z.shape[0]                   # K |C_k^(t)| / N
  return unit(centers + weight[:, None] * m_hat)     # Eq. 8


def uniformity_loss(centroids: jax.Array, present: jax.Array, *, eps: float = 1e-6,
                    reduction: str = "sum") -> jax.Array:
  """L_unif, Eq. 11 (hyperspherical energy, v = 2, Eq. 9-10): sum(1 / (1 - M^T M)).

  centroids (K, d) unit rows computed from the mini-batch (Eq. 7), present (K,) bool:
  the clusters with a member in the batch. The sum runs over ordered pairs i != j of
  present clusters (the diagonal, 1/0, is excluded). The denominator is clamped at
  eps, so two coinciding centroids give a large finite value with zero gradient
  rather than inf/NaN. reduction: "sum" (Eq. 11 as written) or "mean" over the
  counted pairs (0 when fewer than two clusters are present). Returns ().
  """
  k = centroids.shape[0]
  if present.shape != (k,):
    raise ValueError(f"uniformity_loss: present {present.shape} must be ({k},)")
  pair = present[:, None] & present[None, :] & ~jnp.eye(k, dtype=bool)
  gram = dot_hi(centroids, centroids.T)   # 1 - gram near 0: full float32
  # Masked pairs get a dummy denominator (no NaN leaks through the where's gradient).
  denom = jnp.where(pair, jnp.maximum(1.0 - gram, eps), 1.0)
  total = jnp.sum(jnp.where(pair, 1.0 / denom, 0.0))
  if reduction == "sum":
    return total
  if reduction == "mean":
    return total / jnp.maximum(jnp.sum(pair), 1)
  raise ValueError(f"uniformity_loss: reduction must be 'sum' or 'mean', got {reduction!r}")


def compactness_loss(z: jax.Array, labels: jax.Array, n_clusters: int, *,
                     normalize: bool = True, reduction: str = "sum") -> jax.Array:
  """L_cmpt, Eq. 12: (1/K) sum_k sum(1 - Z_k^T Z_k), Z_k the cluster's embeddings.

  z (B, d), labels (B,) int. sum over all (i, j) in C_k x C_k of 1 - z_i^T z_j equals
  |C_k|^2 - ||sum_{i in C_k} z_i||^2, computed that way in O(B d). normalize: use
  z_i / ||z_i|| (the paper's premise ||z|| = 1, so the sum is a total cosine distance);
  False uses the raw z. reduction: "sum" (Eq. 12 as written) or "mean", which
  replaces sum(.) by the mean over the |C_k|^2 pairs of each cluster (an empty
  cluster adds 0); the 1/K stays. Returns ().
  """
  zz = unit(z) if normalize else z
  sums = cluster_sums(zz, labels, n_clusters)
  counts = jax.ops.segment_sum(jnp.ones(labels.shape, z.dtype), labels,
                               num_segments=n_clusters)
  per_cluster = counts ** 2 - jnp.sum(sums * sums, axis=1)
  if reduction == "mean":
    per_cluster = per_cluster / jnp.maximum(counts ** 2, 1.0)
  elif reduction != "sum":
    raise ValueError(f"compactness_loss: reduction must be 'sum' or 'mean', got {reduction!r}")
  return jnp.sum(per_cluster) / n_clusters


def ulhe_objective(z: jax.Array, centers: jax.Array, labels: jax.Array, *, lambda0: float,
                   lambda1: float, lambda2: float, use_unif: bool = True,
                   use_cmpt: bool = True, unif_eps: float = 1e-6, cmpt_normalize: bool = True,
                   reduction: str = "sum", weights=None):
  """Clustering-stage objective, Eq. 13, on one mini-batch.

  L = Eq. 4 + lambda0 L_norm + lambda1 L_unif + lambda2 L_cmpt, with L_unif on the
  batch centroids (Eq. 7) of the clusters present in the batch. use_unif / use_cmpt
  switch the regularizers off (the ablations of Table 2); reduction applies to
  L_unif and L_cmpt ("sum" as Eq. 11-12 are written, or "mean" over pairs).
  z (B, d), centers (K, d), labels (B,). weights (B,) or None: rows of weight 0 are
  padding and add nothing to any term. Returns (loss (), dict of every term).
  """
  k = centers.shape[0]
  if weights is not None:
    labels = jnp.where(weights > 0, labels, k)       # a label outside [0, K) adds nowhere
  clus = cosine_cluster_loss(z, centers, labels, weights)
  nrm = norm_loss(z, weights)
  m_b, counts = batch_centroids(z, labels, k)
  unif = uniformity_loss(m_b, counts > 0, eps=unif_eps, reduction=reduction)
  cmpt = compactness_loss(z, labels, k, normalize=cmpt_normalize, reduction=reduction)
  loss = clus + lambda0 * nrm                        # Eq. 13
  if use_unif:
    loss = loss + lambda1 * unif
  if use_cmpt:
    loss = loss + lambda2 * cmpt
  return loss, {"loss": loss, "clus": clus, "norm": nrm, "unif": unif, "cmpt": cmpt,
                "n_present": jnp.sum(counts > 0)}


def change_rate(prev_labels: jax.Array, labels: jax.Array) -> jax.Array:
  """Assignment change rate of Eq. 14: 1 - sum(s^(t-1) * s^(t)) / N for one-hot s,
  i.e. the fraction of samples whose label changed. (N,) ints -> ()."""
  if prev_labels.shape != labels.shape:
    raise ValueError(f"change_rate: shapes {prev_labels.shape} and {labels.shape} differ")
  return jnp.mean((prev_labels != labels).astype(jnp.float32))


def should_stop(prev_labels: jax.Array, labels: jax.Array, *, eta: float) -> jax.Array:
  """Stop rule, Eq. 14: change rate < eta. Returns () bool."""
  return change_rate(prev_labels, labels) < eta


def easiest_per_cluster(dists: jax.Array, labels: jax.Array, fraction: float,
                        n_clusters: int) -> jax.Array:
  """Self-paced selection (§4.2): in each cluster, the ceil(fraction * |C_k|) samples
  closest to its centroid ("the closer the sample is to the cluster center, the
  easier it is"). dists (N,), labels (N,). Returns (N,) bool."""
  n = labels.shape[0]
  order = jnp.lexsort((dists, labels))               # by cluster, then distance
  counts = jax.ops.segment_sum(jnp.ones((n,), jnp.int32), labels, num_segments=n_clusters)
  starts = jnp.cumsum(counts) - counts
  sorted_labels = labels[order]
  pos = jnp.arange(n) - starts[sorted_labels]        # rank inside the cluster
  keep_n = jnp.ceil(fraction * counts.astype(jnp.float32)).astype(jnp.int32)
  keep_sorted = pos < keep_n[sorted_labels]
  return jnp.zeros((n,), bool).at[order].set(keep_sorted)
