"""MVSIB sample certainty estimation (SCE), paper 000 §3.4, Eq. 5-14.

Pure, jittable, fixed-shape array functions. Conventions (shared by the other MVSIB op modules
`routing`, `minority`, `mv_contrast`):
  V views, B batch rows, C clusters, D embedding width (256).
  Per-view quantities are stacked on a leading view axis: zs (V, B, D), centers (V, C, D),
  memberships (V, B, C).
  weights (B,): per-row weights; 0 marks a padding row, which changes no output on the other
  rows (and gets 0 itself). presence (B, V): 1 where view v of sample i is present, 0 where it
  is missing; view-wise reductions (min-max, max, mean over views) use present views only.
  Masks are float 0/1 arrays.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp


EPS = 1e-12        # the ε of Eq. 8 and 10
MIN_SIGMA = 1e-3   # floor of a kernel width (the public code's clamp)


def row_weights(weights: Optional[jax.Array], n: int, dtype=jnp.float32) -> jax.Array:
  """(n,) float weights; None -> ones."""
  dtype = jax.dtypes.canonicalize_dtype(dtype)
  if weights is None:
    return jnp.ones((n,), dtype)
  return jnp.asarray(weights).astype(dtype)


def view_row_weights(weights: Optional[jax.Array], presence: Optional[jax.Array],
                     n_views: int, n: int, dtype=jnp.float32) -> jax.Array:
  """(V, n) weight of row i in view v: weights_i * presence_iv (missing view or padding -> 0)."""
  w = row_weights(weights, n, dtype)[None, :]
  if presence is None:
    return jnp.broadcast_to(w, (n_views, n))
  if presence.shape != (n, n_views):
    raise ValueError(f"presence must be (B, V) = {(n, n_views)}, got {presence.shape}")
  return w * jnp.asarray(presence).astype(dtype).T


def sq_dists_to_centers(z: jax.Array, centers: jax.Array) -> jax.Array:
  """Eq. 5: d_ic = ||z_i - u_c||². z (..., B, D), centers (..., C, D) -> (..., B, C) >= 0.

  Direct differences (memory O(B·C·D); use `ops.map_row_blocks` for the whole data set): the
  ||z||² + ||u||² - 2 zᵀu expansion cancels catastrophically at large norms, and its gradient
  through the softmax of Eq. 7 came out nan under jit on the CPU at norms ~1e4 (the exact
  gradient there is 0).
  """
  return jnp.sum((z[..., :, None, :] - centers[..., None, :, :]) ** 2, axis=-1)


def gaussian_memberships(z: jax.Array, centers: jax.Array, sigma: jax.Array, *,
                         min_sigma: float = MIN_SIGMA):
  """Gaussian memberships, Eq. 5-7.

  m̃_ic = exp(-d_ic / (2 σ_c²)) (Eq. 6), m_ic = m̃_ic / Σ_j m̃_ij (Eq. 7), computed as a
  softmax of -d/(2σ²) (the same numbers, but finite when every m̃ underflows).

  Args:
    z: (..., B, D) embeddings (e.g. (V, B, D)).
    centers: (..., C, D) cluster centers u_c.
    sigma: (..., C) kernel widths σ_c (floored at min_sigma).
  Returns:
    (d (..., B, C) squared distances, m (..., B, C) rows summing to 1).
  """
  d = sq_dists_to_centers(z, centers)
  s = jnp.maximum(sigma, min_sigma)[..., None, :]
  return d, jax.nn.softmax(-d / (2.0 * s * s), axis=-1)


def lower_median(values: jax.Array, valid: jax.Array) -> jax.Array:
  """Lower median of values[valid] along the last axis; nan-free 0 when none is valid."""
  n = jnp.sum(valid, axis=-1)
  srt = jnp.sort(jnp.where(valid, values, jnp.inf), axis=-1)
  idx = jnp.maximum((n - 1) // 2, 0)
  med = jnp.take_along_axis(srt, idx[..., None], axis=-1)[..., 0]
  return jnp.where(n > 0, med, 0.0)


def cluster_bandwidths(z: jax.Array, labels: jax.Array, centers: jax.Array, *,
                       weights: Optional[jax.Array] = None, min_sigma: float = MIN_SIGMA):
  """Per-cluster kernel widths σ_c of Eq. 6 for one view (the paper leaves them open).

  σ_c = the (lower) median Euclidean distance of cluster c's members to u_c, as in the public
  code; an empty cluster takes the median over all rows (distance to their own center) instead
  of the public code's floor, so its kernel is not absurdly narrow. Floored at min_sigma.
  For stacked views use jax.vmap (labels and weights per view, e.g. weights * presence[:, v]).

  Args:
    z: (n, D); labels: (n,) int in [0, C); centers: (C, D); weights: optional (n,).
  Returns:
    (C,) σ.
  """
  n_clusters = centers.shape[0]
  w = row_weights(weights, z.shape[0], z.dtype) > 0
  dist = jnp.sqrt(jnp.sum((z - jnp.asarray(centers)[labels]) ** 2, axis=-1))
  member = (labels[None, :] == jnp.arange(n_clusters)[:, None]) & w[None, :]     # (C, n)
  per = lower_median(jnp.broadcast_to(dist, member.shape), member)
  fallback = lower_median(dist, w)
  sigma = jnp.where(jnp.sum(member, axis=1) > 0, per, fallback)
  return jnp.maximum(sigma, min_sigma)


def cluster_bandwidths_views(zs: jax.Array, labels: jax.Array, centers: jax.Array, *,
                             weights: Optional[jax.Array] = None,
                             presence: Optional[jax.Array] = None,
                             min_sigma: float = MIN_SIGMA) -> jax.Array:
  """`cluster_bandwidths` for stacked views: zs (V, n, D), labels (n,) or (V, n) (per-view
  k-means labels), centers (V, C, D); rows missing view v (presence (n, V)) or padding are left
  out of view v's medians. Returns (V, C)."""
  n_views, n, _ = zs.shape
  labels = jnp.broadcast_to(jnp.asarray(labels), (n_views, n))
  vw = view_row_weights(weights, presence, n_views, n, zs.dtype)
  return jax.vmap(lambda z, l, c, w: cluster_bandwidths(z, l, c, weights=w, min_sigma=min_sigma))(
    zs, labels, jnp.asarray(centers), vw)


def entropy(m: jax.Array, *, eps: float = EPS) -> jax.Array:
  """Eq. 8 (left): H_i = -Σ_c m_ic ln(m_ic + ε). m (..., B, C) -> (..., B)."""
  return -jnp.sum(m * jnp.log(m + eps), axis=-1)


def top2_gap(m: jax.Array) -> jax.Array:
  """Eq. 9: Δ_i = m_i(1) - m_i(2), the two largest memberships. m (..., B, C), C >= 2."""
  if m.shape[-1] < 2:
    raise ValueError(f"top2_gap needs at least 2 clusters, got {m.shape[-1]}")
  top = jax.lax.top_k(m, 2)[0]
  return top[..., 0] - top[..., 1]


def batch_minmax(x: jax.Array, weights: Optional[jax.Array] = None, *,
                 eps: float = EPS) -> jax.Array:
  """Batch range normalization of Eq. 8 (right) and Eq. 10: (x - min) / (max - min + ε).

  min and max run over the rows with weight > 0 (along the last axis); other rows get 0.
  x (..., B), weights broadcastable to x. A batch whose rows are all equal maps to 0.
  """
  if weights is None:
    valid = jnp.ones(x.shape, bool)
  else:
    valid = jnp.broadcast_to(jnp.asarray(weights) > 0, x.shape)
  any_valid = jnp.any(valid, axis=-1, keepdims=True)
  lo = jnp.min(jnp.where(valid, x, jnp.inf), axis=-1, keepdims=True)
  hi = jnp.max(jnp.where(valid, x, -jnp.inf), axis=-1, keepdims=True)
  lo = jnp.where(any_valid, lo, 0.0)            # no valid row: keep everything finite
  hi = jnp.where(any_valid, hi, 0.0)
  return jnp.where(valid, (x - lo) / (hi - lo + eps), 0.0)


class Uncertainty(NamedTuple):
  u: jax.Array        # (B,) fused uncertainty u_i, Eq. 12
  u_view: jax.Array   # (V, B) view-level u_i^(v), Eq. 11
  h: jax.Array        # (V, B) normalized entropy h_i^(v), Eq. 8
  delta: jax.Array    # (V, B) normalized top-2 gap δ_i^(v), Eq. 10


def sample_uncertainty(m: jax.Array, *, alpha: float = 0.5,
                       weights: Optional[jax.Array] = None,
                       presence: Optional[jax.Array] = None,
                       eps: float = EPS) -> Uncertainty:
  """Dual-criterion uncertainty, Eq. 8-12.

  h^(v) = minmax(H^(v)) (Eq. 8), δ^(v) = minmax(Δ^(v)) (Eq. 9-10),
  u^(v) = α h^(v) + (1 - α)(1 - δ^(v)) (Eq. 11), u = max over present views (Eq. 12).
  The min-max runs per view over the batch rows present in that view.

  Args:
    m: (V, B, C) memberships (Eq. 7).
    alpha: the entropy/separation balance α (α_sce) of Eq. 11.
    weights: optional (B,) row weights (0 = padding); presence: optional (B, V).
  Returns:
    Uncertainty(u (B,), u_view (V, B), h (V, B), delta (V, B)); entries of missing views and
    padding rows are 0, and u is 0 on a row with no present view.
  """
  if m.ndim != 3:
    raise ValueError(f"memberships must be (V, B, C), got {m.shape}")
  n_views, n, _ = m.shape
  vw = view_row_weights(weights, presence, n_views, n, m.dtype)                 # (V, B)
  h = batch_minmax(entropy(m, eps=eps), vw, eps=eps)                            # Eq. 8
  delta = batch_minmax(top2_gap(m), vw, eps=eps)                                # Eq. 9-10
  u_view = jnp.where(vw > 0, alpha * h + (1.0 - alpha) * (1.0 - delta), 0.0)   # Eq. 11
  u = jnp.max(jnp.where(vw > 0, u_view, -jnp.inf), axis=0)                      # Eq. 12
  u = jnp.where(jnp.any(vw > 0, axis=0), u, 0.0)
  return Uncertainty(u, u_view, h, delta)


def uncertain_ratio(epoch, n_epochs: int, p0: float) -> jax.Array:
  """Eq. 13: p_e = p_0 (1 - (e - 1)/(E - 1)), e = 1..E (1-based; may be traced).

  With E = 1 the ratio stays p_0. Clipped to [0, p_0] for e outside 1..E.
  """
  e = jnp.asarray(epoch, jnp.float32)
  frac = (e - 1.0) / max(int(n_epochs) - 1, 1)
  return jnp.clip(p0 * (1.0 - frac), 0.0, p0)


def n_uncertain(n_rows, p_e) -> jax.Array:
  """Eq. 14: k_e = max(1, floor(N p_e)) with N the number of (valid) rows ranked; 0 if N = 0.
  Also capped at N. Returns an int32 scalar."""
  n = jnp.asarray(n_rows, jnp.int32)
  k = jnp.maximum(1, jnp.floor(n.astype(jnp.float32) * p_e).astype(jnp.int32))
  return jnp.minimum(k, n)


def descending_rank(scores: jax.Array, valid: jax.Array) -> jax.Array:
  """Rank of each row by score, highest first among valid rows (ties: lower index first);
  invalid rows rank after all valid ones. (B,) -> (B,) int32."""
  key = jnp.where(valid, -scores, jnp.inf)
  order = jnp.argsort(key, stable=True)
  return jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))


def select_uncertain(scores: jax.Array, p_e, *,
                     weights: Optional[jax.Array] = None) -> jax.Array:
  """The uncertain set U_t (§3.4.2): the top k_e rows of the batch by score (Eq. 14).

  The paper ranks the predicted û_i (pass û; u works too). N of Eq. 14 is the number of valid
  rows of this batch (ranking is within the batch).

  Args:
    scores: (B,) uncertainty scores; p_e: the ratio of Eq. 13; weights: optional (B,).
  Returns:
    (B,) float 0/1 mask of U_t (the certain set C_t is valid - mask).
  """
  valid = row_weights(weights, scores.shape[0], scores.dtype) > 0
  k = n_uncertain(jnp.sum(valid), p_e)
  rank = descending_rank(jax.lax.stop_gradient(scores), valid)
  return ((rank < k) & valid).astype(scores.dtype)


def weighted_mean(x: jax.Array, weights: Optional[jax.Array] = None) -> jax.Array:
  """Σ w x / Σ w over the last axis (0 when Σ w = 0), e.g. the batch mean ū of Eq. 29."""
  w = row_weights(weights, x.shape[-1], x.dtype)
  tot = jnp.sum(w, axis=-1)
  return jnp.where(tot > 0, jnp.sum(w * x, axis=-1) / jnp.where(tot > 0, tot, 1.0), 0.0)
