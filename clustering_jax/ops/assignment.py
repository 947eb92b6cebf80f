"""Cluster assignment with density cores (IDCL §3.2–3.3) and the DEC self-training pieces:
density-core similarity (Eq. 10), Student-t assignment Q (Eq. 11), the DEC target
distribution P (Xie et al. 2016; IDCL Eq. 21) and the KL clustering loss (Eq. 12)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from clustering_jax.ops.distances import dot_hi, sq_dists

_TINY = 1e-30


def core_similarity(z: jax.Array, anchors: jax.Array, anchor_labels: jax.Array,
                    anchor_weights: jax.Array, *, n_clusters: int,
                    reduce: str = "sum") -> jax.Array:
  """Density-core similarity, Eq. 10: s_ik = Σ_{x_j ∈ C_k^core} (1 + ‖z_i - z_j‖²)^-1.

  The cores are given as a fixed-size set of anchors with weights (1 for a core member, 0
  otherwise), so the shape does not change when cores change. With the k-means centers as
  anchors (one per cluster, weight 1) this is DEC's center kernel (the ablation
  `assignment="center"`).

  Args:
    z: (b, d) embeddings. anchors: (m, d). anchor_labels: (m,) int cluster of each anchor.
    anchor_weights: (m,) float (0/1 core mask).
    reduce: "sum" (Eq. 10 as printed) or "mean" (divided by the core's size |C_k^core|, so
      a cluster's similarity does not grow with the size of its core; an empty core gives 0).
  Returns:
    (b, n_clusters) float32 similarities >= 0.
  """
  if z.ndim != 2 or anchors.ndim != 2 or z.shape[1] != anchors.shape[1]:
    raise ValueError(f"core_similarity: z {z.shape} and anchors {anchors.shape} must be (., d)")
  if anchor_labels.shape != anchors.shape[:1] or anchor_weights.shape != anchors.shape[:1]:
    raise ValueError(f"anchor_labels {anchor_labels.shape} / anchor_weights "
                     f"{anchor_weights.shape} must be ({anchors.shape[0]},)")
  kernel = 1.0 / (1.0 + sq_dists(z, anchors))                                     # (b, m)
  member = jax.nn.one_hot(anchor_labels, n_clusters, dtype=z.dtype) * anchor_weights[:, None]
  s = dot_hi(kernel, member)                                                       # Eq. 10
  if reduce == "mean":
    size = jnp.sum(member, axis=0)
    s = jnp.where(size > 0, s / jnp.maximum(size, _TINY), 0.0)
  elif reduce != "sum":
    raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
  return s


def soft_assignment(s: jax.Array) -> jax.Array:
  """Student-t assignment, Eq. 11: q_ik = s_ik / Σ_k' s_ik'.

  A row with no mass (no cores at all, or every kernel underflowed) gets the uniform 1/K.
  Args: s: (b, K) similarities >= 0.  Returns: (b, K) rows summing to 1.
  """
  tot = jnp.sum(s, axis=1, keepdims=True)
  return jnp.where(tot > 0, s / jnp.maximum(tot, _TINY), 1.0 / s.shape[1])


def target_distribution(q: jax.Array) -> jax.Array:
  """DEC target (Xie et al. 2016; IDCL Eq. 21): p_ik = (q_ik² / f_k) / Σ_k' (q_ik'² / f_k'),
  f_k = Σ_i q_ik the soft cluster frequency. A cluster with f_k = 0 contributes 0.

  Args: q: (n, K).  Returns: (n, K) rows summing to 1. Callers hold it fixed (stop gradient)
  while the network is optimized (§3.3).
  """
  f = jnp.sum(q, axis=0)
  w = jnp.where(f > 0, q ** 2 / jnp.maximum(f, _TINY), 0.0)
  tot = jnp.sum(w, axis=1, keepdims=True)
  return jnp.where(tot > 0, w / jnp.maximum(tot, _TINY), 1.0 / q.shape[1])


def kl_clustering_loss(p: jax.Array, q: jax.Array, *, weights=None) -> jax.Array:
  """Clustering loss, Eq. 12, per sample: KL(p_i ‖ q_i) = Σ_k p_ik log(p_ik / q_ik), averaged
  over the samples with weight > 0 (the 1/m of the mini-batch update, Eq. 16–17).

  Terms with p_ik = 0 are 0; q is floored at 1e-30 so an empty cluster (q_ik = 0 where
  p_ik > 0 cannot happen for P built from Q) never gives inf.

  Args:
    p: (b, K) target (treated as a constant). q: (b, K) assignment.
    weights: optional (b,) sample weights (0 for padding).
  Returns:
    () mean KL.
  """
  if p.shape != q.shape or p.ndim != 2:
    raise ValueError(f"kl_clustering_loss: p {p.shape} and q {q.shape} must be equal (b, K)")
  p = jax.lax.stop_gradient(p)  # the target P is fixed during optimization (§3.3)
  per = jnp.sum(jnp.where(p > 0, p * (jnp.log(jnp.maximum(p, _TINY))
                                      - jnp.log(jnp.maximum(q, _TINY))), 0.0), axis=1)
  if weights is None:
    return jnp.mean(per)
  return jnp.sum(per * weights) / jnp.maximum(jnp.sum(weights), 1.0)


__all__ = ["core_similarity", "kl_clustering_loss", "soft_assignment", "target_distribution"]
