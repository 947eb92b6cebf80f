"""MVSIB imbalanced-sample mitigation (ISM), paper 000 §3.6.1-3.6.2, Eq. 30-38, Appendix B.

Pure, jittable, fixed-shape array functions on the consensus embeddings z^cons (B, D) of a batch;
conventions as in `clustering_jax.ops.uncertainty` (weights (B,), 0 = padding).

Shapes never depend on the data: every cluster gets a slot of P pseudo-samples, psi (C, P, D),
with a weight array psi_w (C, P) that is 1 on the pseudo-samples that exist (minority clusters
present in the batch) and 0 elsewhere; every loss multiplies by these weights.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from clustering_jax.ops.distances import cluster_sums, sq_dists
from clustering_jax.ops.uncertainty import MIN_SIGMA, lower_median, row_weights

COV_EPS = 1e-6   # ε of Eq. 31-32 (the public code's value)


def minority_clusters(counts: jax.Array, rho: float) -> jax.Array:
  """Global minority set S = {c : n_c < ρ n̄}, n̄ = (1/C) Σ_j n_j (§3.6.1).

  counts (C,) cluster sizes over the whole data set -> (C,) float 0/1.
  """
  counts = jnp.asarray(counts, jnp.float32)
  return (counts < rho * jnp.mean(counts)).astype(jnp.float32)


def batch_cluster_stats(z: jax.Array, labels: jax.Array, n_clusters: int, *,
                        weights: Optional[jax.Array] = None):
  """Batch counts n_c and means μ_c (Eq. 30). z (B, D), labels (B,) -> ((C,), (C, D));
  an absent cluster has count 0 and mean 0. Gradients flow to z through the means."""
  w = row_weights(weights, z.shape[0], z.dtype)
  counts = cluster_sums(w[:, None], labels, n_clusters)[:, 0]
  sums = cluster_sums(z * w[:, None], labels, n_clusters)
  return counts, sums / jnp.where(counts > 0, counts, 1.0)[:, None]


class PseudoSamples(NamedTuple):
  psi: jax.Array      # (C, P, D) pseudo-samples ψ_{c,p}
  weight: jax.Array   # (C, P) 1 where ψ_{c,p} exists (c ∈ M = S ∩ L̃), else 0
  counts: jax.Array   # (C,) batch counts n_c
  means: jax.Array    # (C, D) batch means μ_c


def _membership(labels, n_clusters, w):
  return jax.nn.one_hot(labels, n_clusters, dtype=w.dtype).T * w[None, :]          # (C, B)


def pseudo_samples(key: jax.Array, z: jax.Array, labels: jax.Array, minority: jax.Array,
                   centers: jax.Array, *, n_pseudo: int = 5,
                   weights: Optional[jax.Array] = None, eps: float = COV_EPS) -> PseudoSamples:
  """Minority pseudo-samples by reparameterization, Eq. 30-33.

  For c ∈ M = S ∩ L̃ (minority and present in the batch):
    n_c >= 2: ψ_{c,p} ~ N(μ_c, Σ'_c), Σ'_c = (P/n_c) Σ_c + ε I (Eq. 32),
      Σ_c = Σ_i (z_i - μ_c)(z_i - μ_c)ᵀ / (n_c - 1 + ε) (Eq. 31), drawn without forming Σ_c:
      ψ = μ_c + sqrt(P/n_c) Σ_i ξ_i (z_i - μ_c) / sqrt(n_c - 1 + ε) + sqrt(ε) η, with
      ξ ~ N(0, I_B) over the members and η ~ N(0, I_D), whose covariance is exactly Σ'_c
      (also when n_c < D, where Σ_c is singular). Gradients reach z through μ_c and z_i - μ_c.
    n_c = 1: "the center is reverted to the initial center": one pseudo-sample ψ_{c,0} =
      centers[c] (weight 1), the other P - 1 slots weight 0.
  Other clusters: weight 0 (their psi entries are finite placeholders).
  The same key gives the same samples; the draws of row i come from fold_in(key, i), so
  padding rows appended after the real rows change nothing.

  Args:
    key: PRNG key; z: (B, D) z^cons; labels: (B,) int; minority: (C,) S (`minority_clusters`);
    centers: (C, D) u^cons (k-means); n_pseudo: P; weights: optional (B,); eps: ε.
  Returns:
    PseudoSamples(psi (C, P, D), weight (C, P), counts (C,), means (C, D)).
  """
  n_clusters, d = centers.shape
  n = z.shape[0]
  w = row_weights(weights, n, z.dtype)
  counts, means = batch_cluster_stats(z, labels, n_clusters, weights=weights)
  memb = _membership(labels, n_clusters, jnp.sqrt(w))                            # (C, B)
  k_xi, k_eta = jax.random.split(key)
  # ξ for row i from fold_in(key, i): padding rows appended after the real ones leave the
  # real rows' draws, hence the pseudo-samples, unchanged.
  xi = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(k_xi, i), (n_clusters, n_pseudo),
                                            z.dtype))(jnp.arange(n))               # (B, C, P)
  xi = jnp.transpose(xi, (1, 2, 0)) * memb[:, None, :]                             # (C, P, B)
  eta = jax.random.normal(k_eta, (n_clusters, n_pseudo, d), z.dtype)
  # Σ_i ξ_i sqrt(w_i)(z_i - μ_c) = ξ·(sqrt(w) z) - (Σ_i ξ_i sqrt(w_i)) μ_c
  dev = jnp.einsum("cpb,bd->cpd", xi, z) - jnp.sum(xi, -1)[..., None] * means[:, None, :]
  n_safe = jnp.where(counts >= 2, counts, 2.0)
  scale = jnp.sqrt(n_pseudo / n_safe) / jnp.sqrt(n_safe - 1.0 + eps)              # Eq. 31-32
  gauss = means[:, None, :] + scale[:, None, None] * dev + jnp.sqrt(eps) * eta     # Eq. 33
  in_m = (minority > 0) & (counts > 0)
  many = in_m & (counts >= 2)
  one = in_m & (counts < 2)
  psi = jnp.where(many[:, None, None], gauss, jnp.broadcast_to(centers[:, None, :], gauss.shape))
  first = jnp.arange(n_pseudo) == 0
  weight = (many[:, None] | (one[:, None] & first[None, :])).astype(z.dtype)
  return PseudoSamples(psi, weight, counts, means)


def amplified_cov_max_eig(z: jax.Array, labels: jax.Array, n_clusters: int, *,
                          n_pseudo: int = 5, weights: Optional[jax.Array] = None,
                          eps: float = COV_EPS, max_members: Optional[int] = None) -> jax.Array:
  """λ_max(Σ'_c) per cluster (Eq. 31-32), from the smaller of the (M, M) Gram and the (D, D)
  scatter matrix; 0 for clusters with fewer than 2 members. No gradient. Returns (C,).

  M = B, or max_members: each cluster's first max_members rows (batch order) are gathered
  first, so the eigensolver works on (C, M, M) instead of (C, B, B). Exact for clusters with
  at most max_members rows in the batch, e.g. every minority cluster (n_c < ρ n̄) with
  max_members >= ρ n̄; a larger cluster gets the value of its first max_members rows."""
  z = jax.lax.stop_gradient(z)
  w = row_weights(weights, z.shape[0], z.dtype)
  counts, means = batch_cluster_stats(z, labels, n_clusters, weights=weights)
  memb = _membership(labels, n_clusters, jnp.sqrt(w))                            # (C, B)
  if max_members is not None and max_members < z.shape[0]:
    pick = jax.lax.top_k((memb > 0).astype(jnp.int32), int(max_members))[1]  # members, in order
    rows, memb = z[pick], jnp.take_along_axis(memb, pick, 1)                     # (C, M, D)
  else:
    rows = jnp.broadcast_to(z[None], (n_clusters,) + z.shape)
  x = memb[:, :, None] * (rows - means[:, None, :])                               # (C, M, D)
  if x.shape[1] <= z.shape[1]:
    g = jnp.einsum("cbd,ced->cbe", x, x, precision=jax.lax.Precision.HIGHEST)
  else:
    g = jnp.einsum("cbd,cbe->cde", x, x, precision=jax.lax.Precision.HIGHEST)
  lam = jnp.linalg.eigvalsh(g)[:, -1]
  n_safe = jnp.where(counts >= 2, counts, 2.0)
  lam = n_pseudo / n_safe * lam / (n_safe - 1.0 + eps) + eps
  return jnp.where(counts >= 2, lam, 0.0)


def min_center_gap(centers: jax.Array, center_weights: Optional[jax.Array] = None) -> jax.Array:
  """γ = min_{c ≠ c'} ||u_c - u_c'|| over centers with weight > 0 (B.1); 0 with < 2 centers."""
  n = centers.shape[0]
  cw = jnp.ones((n,), bool) if center_weights is None else center_weights > 0
  d2 = sq_dists(centers, centers)
  ok = cw[:, None] & cw[None, :] & ~jnp.eye(n, dtype=bool)
  g = jnp.min(jnp.where(ok, d2, jnp.inf))
  return jax.lax.stop_gradient(jnp.where(jnp.isfinite(g), jnp.sqrt(g), 0.0))


def safety_radii(lam_max: jax.Array, centers: jax.Array, *, t: float = 0.0,
                 delta: float = 0.0, center_weights: Optional[jax.Array] = None):
  """The paper's radii (§3.6.2, Theorem B): R_max = σ_max (√D + t) + δ̂, σ_max = sqrt(λ_max(Σ'_c)),
  and R'_min = γ - R_max with γ the minimal center gap.

  lam_max (C,) from `amplified_cov_max_eig`; centers (C, D). t is the tail parameter (the
  paper ties it to a target rate it does not fix; 0 by default) and δ̂ a slack (0).
  Returns (r_max (C,), r_min (C,)), no gradient.
  """
  d = centers.shape[1]
  r_max = jnp.sqrt(jnp.maximum(lam_max, 0.0)) * (jnp.sqrt(float(d)) + t) + delta
  r_min = min_center_gap(centers, center_weights) - r_max
  return jax.lax.stop_gradient(r_max), jax.lax.stop_gradient(r_min)


def gaussian_kernel(a: jax.Array, b: jax.Array, sigma) -> jax.Array:
  """Eq. 34: K(x, y) = exp(-||x - y||² / (2σ²)). a (n, D), b (m, D) -> (n, m)."""
  return jnp.exp(-sq_dists(a, b) / (2.0 * jnp.asarray(sigma) ** 2))


def median_bandwidth(z: jax.Array, *, weights: Optional[jax.Array] = None,
                     min_sigma: float = MIN_SIGMA) -> jax.Array:
  """Median heuristic σ = median_{i<j} ||z_i - z_j|| over the valid rows (Gretton et al. 2012),
  floored at min_sigma; no gradient. Our default bandwidth for Eq. 34-35 (the paper only says
  σ > 0). z (B, D) -> ()."""
  z = jax.lax.stop_gradient(z)
  n = z.shape[0]
  w = row_weights(weights, n, z.dtype) > 0
  i, j = np.triu_indices(n, 1)                       # the pairs i < j only: half the sort
  med = lower_median(sq_dists(z, z)[i, j], w[i] & w[j])
  return jnp.maximum(jnp.sqrt(med), min_sigma)


def mmd_per_cluster(z: jax.Array, labels: jax.Array, ps: PseudoSamples, *, sigma,
                    weights: Optional[jax.Array] = None) -> jax.Array:
  """Eq. 35, the unbiased batch MMD² between cluster c's real rows and its pseudo-samples:

  D^(c) = Σ_{i≠j} K(z_i, z_j)/(n_c(n_c-1)) + Σ_{p≠q} K(ψ_p, ψ_q)/(P(P-1))
          - 2 Σ_{i,p} K(z_i, ψ_p)/(n_c P)
  (with row weights w and ψ weights: n_c = Σ w, pair sums Σ_{i≠j} w_i w_j, n_c(n_c-1) ->
  (Σw)² - Σw²; the same numbers for 0/1 weights). 0 for clusters with fewer than 2 real rows
  or 2 pseudo-samples (c ∉ M included).

  Args:
    z: (B, D) z^cons; labels (B,); ps: `pseudo_samples` output; sigma: bandwidth σ.
  Returns:
    (C,) D^(c).
  """
  n_clusters, n_pseudo, d = ps.psi.shape
  w = row_weights(weights, z.shape[0], z.dtype)
  memb = _membership(labels, n_clusters, w)                                       # (C, B)
  pw = ps.weight
  kzz = gaussian_kernel(z, z, sigma)
  n_c = jnp.sum(memb, -1)
  t1n = jnp.einsum("cb,be,ce->c", memb, kzz, memb) - jnp.sum(memb ** 2 * jnp.diag(kzz), -1)
  t1d = n_c ** 2 - jnp.sum(memb ** 2, -1)
  kpp = jax.vmap(lambda p: gaussian_kernel(p, p, sigma))(ps.psi)                  # (C, P, P)
  p_c = jnp.sum(pw, -1)
  t2n = jnp.einsum("cp,cpq,cq->c", pw, kpp, pw) - jnp.sum(pw ** 2 * jnp.diagonal(kpp, 0, 1, 2), -1)
  t2d = p_c ** 2 - jnp.sum(pw ** 2, -1)
  kzp = gaussian_kernel(z, ps.psi.reshape(-1, d), sigma).reshape(-1, n_clusters, n_pseudo)
  t3n = jnp.einsum("cb,bcp,cp->c", memb, kzp, pw)
  ok = (t1d > 0) & (t2d > 0) & (n_c >= 2) & (p_c >= 2)
  safe = lambda x: jnp.where(ok, x, 1.0)
  val = t1n / safe(t1d) + t2n / safe(t2d) - 2.0 * t3n / safe(n_c * p_c)
  return jnp.where(ok, val, 0.0)


def repulsion_loss(ps: PseudoSamples, *, sigma_r) -> jax.Array:
  """Eq. 36: L_rep = Σ_{c ≠ c' ∈ M} Σ_p Σ_q exp(-||ψ_{c,p} - ψ_{c',q}||² / (2σ_r²)) (ordered
  pairs of distinct clusters, as written), weighted by the pseudo-sample weights. Returns ()."""
  n_clusters, n_pseudo, d = ps.psi.shape
  flat = ps.psi.reshape(-1, d)
  fw = ps.weight.reshape(-1)
  cid = jnp.repeat(jnp.arange(n_clusters), n_pseudo)
  k = gaussian_kernel(flat, flat, sigma_r)
  mask = fw[:, None] * fw[None, :] * (cid[:, None] != cid[None, :])
  return jnp.sum(mask * k)


def boundary_loss(ps: PseudoSamples, centers: jax.Array, *, r_max, r_min,
                  center_weights: Optional[jax.Array] = None) -> jax.Array:
  """Eq. 37: L_b = Σ_{c∈M} Σ_p [max(||ψ_{c,p} - u_c|| - R_max, 0)
                                 + max(R'_min - min_{j≠c} ||ψ_{c,p} - u_j||, 0)].

  centers: (C, D) u^cons; r_max, r_min: scalars or (C,) (e.g. `safety_radii`); only centers
  with center_weights > 0 count as "other" centers. Returns ()."""
  n_clusters, n_pseudo, d = ps.psi.shape
  r_max = jnp.broadcast_to(jnp.asarray(r_max, centers.dtype), (n_clusters,))[:, None]
  r_min = jnp.broadcast_to(jnp.asarray(r_min, centers.dtype), (n_clusters,))[:, None]
  d2 = sq_dists(ps.psi.reshape(-1, d), centers).reshape(n_clusters, n_pseudo, n_clusters)
  dist = jnp.sqrt(jnp.maximum(d2, 1e-24))
  own = jnp.eye(n_clusters, dtype=bool)[:, None, :]                               # (C, 1, C)
  d_own = jnp.sum(jnp.where(own, dist, 0.0), -1)
  cw = jnp.ones((n_clusters,), bool) if center_weights is None else center_weights > 0
  other = ~own & cw[None, None, :]
  has_other = jnp.any(other, -1)
  d_other = jnp.min(jnp.where(other, dist, jnp.inf), -1)
  d_other = jnp.where(has_other, d_other, 0.0)
  term = jax.nn.relu(d_own - r_max) + jnp.where(has_other, jax.nn.relu(r_min - d_other), 0.0)
  return jnp.sum(ps.weight * term)


def imbalance_loss(mmd: jax.Array, l_rep: jax.Array, l_b: jax.Array, *,
                   lambda_mmd: float = 1.0, lambda_rep: float = 1.0,
                   lambda_b: float = 0.1) -> jax.Array:
  """Eq. 38: L_imb = Σ_{c∈M} λ_mmd D^(c) + λ_rep L_rep + λ_b L_b. mmd (C,) (0 off M)."""
  return lambda_mmd * jnp.sum(mmd) + lambda_rep * l_rep + lambda_b * l_b


class ISMLosses(NamedTuple):
  loss: jax.Array      # () L_imb, Eq. 38
  mmd: jax.Array       # (C,) D^(c), Eq. 35
  rep: jax.Array       # () L_rep, Eq. 36
  bnd: jax.Array       # () L_b, Eq. 37
  ps: PseudoSamples    # the batch's pseudo-samples (Eq. 30-33), also used by Eq. 39-41


def ism_losses(key: jax.Array, z: jax.Array, labels: jax.Array, minority: jax.Array,
               centers: jax.Array, *, n_pseudo: int = 5, weights: Optional[jax.Array] = None,
               lambda_mmd: float = 1.0, lambda_rep: float = 1.0, lambda_b: float = 0.1,
               max_members: Optional[int] = None) -> ISMLosses:
  """ISM on one batch (§3.6), Eq. 30-38 assembled: `pseudo_samples` of the minority clusters
  present, σ = σ_r = `median_bandwidth` of z, `mmd_per_cluster`, `repulsion_loss`,
  `boundary_loss` with Theorem B's `safety_radii` and `imbalance_loss`. λ_max(Σ'_c) (an
  eigensolve, `amplified_cov_max_eig` with max_members) runs only when some pseudo-sample
  exists; otherwise L_b has no term and the radii are not needed.

  z (B, D) z^cons; labels (B,); minority (C,) S; centers (C, D) u^cons. Returns ISMLosses."""
  n_clusters = centers.shape[0]
  ps = pseudo_samples(key, z, labels, minority, centers, n_pseudo=n_pseudo, weights=weights)
  sigma = median_bandwidth(z, weights=weights)                              # σ, σ_r of Eq. 34-36
  mmd = mmd_per_cluster(z, labels, ps, sigma=sigma, weights=weights)         # Eq. 35
  rep = repulsion_loss(ps, sigma_r=sigma)                                    # Eq. 36
  lam = jax.lax.cond(jnp.any(ps.weight > 0),
                     lambda: amplified_cov_max_eig(z, labels, n_clusters, n_pseudo=n_pseudo,
                                                   weights=weights, max_members=max_members),
                     lambda: jnp.zeros((n_clusters,), z.dtype))
  r_max, r_min = safety_radii(lam, centers)                                  # Theorem B
  bnd = boundary_loss(ps, centers, r_max=r_max, r_min=r_min)                 # Eq. 37
  loss = imbalance_loss(mmd, rep, bnd, lambda_mmd=lambda_mmd, lambda_rep=lambda_rep,
                        lambda_b=lambda_b)                                    # Eq. 38
  return ISMLosses(loss, mmd, rep, bnd, ps)
