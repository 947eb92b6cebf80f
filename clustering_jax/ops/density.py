"""Density information of an embedding (IDCL §3.1–3.2): cut-off distance d_c, local density
(Eq. 1), min-max difficulty scores (Eq. 2), per-cluster top fractions and density cores (Eq. 9).

All functions are pure and jittable; O(n²) quantities are computed in row blocks.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from clustering_jax.ops.distances import map_row_blocks, sq_dists

#: n(n-1)/2 pairs up to this n are sorted exactly; above it d_c is estimated on sampled pairs.
EXACT_DC_MAX_N = 3000
#: Number of random pairs (i != j) used to estimate d_c when n > EXACT_DC_MAX_N.
DC_SAMPLE_PAIRS = 1_000_000
_TINY = 1e-12


def _rank_position(frac: float, count):
  """0-based position of the value ranked at `frac` of `count` sorted values: ceil(frac·count)-1,
  clipped to [0, count-1] (so a non-empty set always has a value at its position)."""
  # The 1e-4 slack keeps float32 round-off (0.05·20 = 1.0000001) from adding a rank.
  return jnp.clip(jnp.ceil(frac * count - 1e-4).astype(jnp.int32) - 1, 0,
                  jnp.maximum(count - 1, 0))


def kth_smallest(v: jax.Array, pos) -> jax.Array:
  """Exact order statistic of non-negative floats: the value at 0-based position `pos` of
  sorted(v), found by bisection on the float32 bit pattern (monotone for v >= 0): 32 counting
  passes, O(32·N) instead of a full O(N log N) sort. Entries that are +inf or NaN sort last.

  Returns () float32, bit-equal to the sort's answer (NaN-free v)."""
  v = jnp.asarray(v, jnp.float32).ravel()
  nan = jnp.isnan(v)
  v = jnp.where(v > 0, v, 0.0)          # -0.0 and negative round-off count as +0.0
  bits = jnp.where(nan, jnp.iinfo(jnp.int32).max, jax.lax.bitcast_convert_type(v, jnp.int32))
  target = jnp.asarray(pos, jnp.int32) + 1

  def body(_, lohi):
    lo, hi = lohi
    mid = lo + (hi - lo) // 2
    ok = jnp.sum(bits <= mid, dtype=jnp.int32) >= target
    return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

  lo, _ = jax.lax.fori_loop(0, 32, body, (jnp.int32(0), jnp.max(bits)))
  return jax.lax.bitcast_convert_type(lo, jnp.float32)


@functools.partial(jax.jit, static_argnames=("lam1", "exact_max_n", "n_pairs"))
def cutoff_distance(z: jax.Array, key: Optional[jax.Array] = None, *, lam1: float = 0.02,
                    exact_max_n: int = EXACT_DC_MAX_N, n_pairs: int = DC_SAMPLE_PAIRS) -> jax.Array:
  """The density radius d_c of Eq. 1: the pairwise distance ranked at λ1 (ascending).

  "determined by sorting n² distances ... and selecting a number ranked at λ1" (§3.1,
  after Rodriguez & Laio 2014). Of the n(n-1)/2 distances of distinct pairs i < j (the n
  zero self-distances carry no information) we take the value at 0-based position
  ceil(λ1·N) - 1 of their ascending order, selected exactly by `kth_smallest` (the same float
  a full sort gives, without the sort). For n > exact_max_n the same rank is taken on `n_pairs` pairs (i, j), i != j,
  drawn uniformly with `key` — an unbiased estimate of the quantile, O(n_pairs) memory.

  Args:
    z: (n, d) embedding.
    key: PRNG key; needed only when n > exact_max_n.
    lam1: rank fraction λ1 (paper: 2 %).
  Returns:
    () float32 distance (not squared), floored at 1e-12 so Eq. 1 never divides by zero.
  """
  _check_rank2(z)
  n = z.shape[0]
  if n < 2:
    raise ValueError(f"cutoff_distance needs at least 2 points, got {n}")
  if n <= exact_max_n:
    # The n(n-1)/2 pairs i < j: the rest of the matrix is set to +inf, which sorts last.
    # Selecting on d² and taking the root equals selecting on d (sqrt is monotone).
    r = jnp.arange(n)
    d2 = jnp.where(r[:, None] < r[None, :], sq_dists(z, z), jnp.inf)
    pos = _rank_position(lam1, n * (n - 1) // 2)
    return jnp.maximum(jnp.sqrt(kth_smallest(d2, pos)), _TINY)
  else:
    if key is None:
      raise ValueError(f"cutoff_distance: n={n} > exact_max_n={exact_max_n} needs a PRNG key")
    ki, kj = jax.random.split(key)
    i = jax.random.randint(ki, (n_pairs,), 0, n)
    j = (i + jax.random.randint(kj, (n_pairs,), 1, n)) % n  # uniform over j != i
    d = jnp.sqrt(jnp.sum((z[i] - z[j]) ** 2, axis=1))
  return jnp.maximum(kth_smallest(d, _rank_position(lam1, d.shape[0])), _TINY)


def _check_rank2(z):
  if z.ndim != 2:
    raise ValueError(f"expected an (n, d) embedding, got shape {z.shape}")


@functools.partial(jax.jit, static_argnames=("block",))
def local_density(z: jax.Array, dc: jax.Array, *, block: int = 1024) -> jax.Array:
  """Gaussian-kernel local density, Eq. 1: ρ_i = Σ_j exp(-‖z_i - z_j‖² / d_c²).

  The sum runs over all j = 1..n as printed (j = i adds the constant 1). Computed in row
  blocks: O(n·block) memory.

  Args:
    z: (n, d) embedding. dc: () cut-off distance (> 0).
  Returns:
    (n,) float32 densities, each in [1, n].
  """
  _check_rank2(z)
  dc2 = jnp.maximum(jnp.asarray(dc, z.dtype), _TINY) ** 2
  return map_row_blocks(lambda rows, _: jnp.sum(jnp.exp(-sq_dists(rows, z) / dc2), axis=1), z,
                        block=block)


def difficulty_scores(rho: jax.Array) -> jax.Array:
  """Eq. 2: min-max normalized density δ_i = (ρ_i - min ρ) / (max ρ - min ρ) ∈ [0, 1].

  Higher δ = denser neighbourhood = easier (selected earlier). All-equal densities give 0.
  """
  lo, hi = jnp.min(rho), jnp.max(rho)
  return (rho - lo) / jnp.maximum(hi - lo, _TINY)


def per_cluster_top_fraction(values: jax.Array, labels: jax.Array, *, frac,
                             n_clusters: int) -> jax.Array:
  """Mask of the samples whose value is at least the per-cluster threshold at rank `frac`.

  For each cluster C_k the values of its members are sorted in descending order (𝒜 in
  Eq. 7); the threshold is the value at 1-based position ceil(frac·|C_k|) (at least the
  first), and a member is kept when its value is >= that threshold (ties are all kept).
  Used by Eq. 7 (easy samples, frac = ζ_t) and Eq. 9 (density cores, frac = λ2).

  Args:
    values: (n,) scores. labels: (n,) int cluster ids in [0, n_clusters).
    frac: scalar in (0, 1] (may be traced).
  Returns:
    (n,) bool mask; every non-empty cluster keeps at least one member.
  """
  if values.ndim != 1 or labels.shape != values.shape:
    raise ValueError(f"values {values.shape} and labels {labels.shape} must both be (n,)")
  n = values.shape[0]
  labels = labels.astype(jnp.int32)
  # Sort by cluster, then by value descending; rank of each member inside its cluster.
  order = jnp.lexsort((-values, labels))
  sorted_labels = labels[order]
  counts = jax.ops.segment_sum(jnp.ones((n,), jnp.int32), labels, num_segments=n_clusters)
  starts = jnp.cumsum(counts) - counts
  rank_sorted = jnp.arange(n, dtype=jnp.int32) - starts[sorted_labels]
  rank = jnp.zeros((n,), jnp.int32).at[order].set(rank_sorted)
  keep_n = _rank_position(frac, counts) + 1  # ceil(frac·|C_k|), >= 1
  in_top = rank < keep_n[labels]
  # Threshold = smallest value among the top members; ties with it are kept too.
  thr = jax.ops.segment_min(jnp.where(in_top, values, jnp.inf), labels, num_segments=n_clusters)
  return values >= thr[labels]


def density_cores(rho: jax.Array, labels: jax.Array, *, n_clusters: int,
                  lam2: float = 0.05) -> jax.Array:
  """Density cores, Eq. 9: C_k^core = {x_i ∈ C_k : ρ_i >= ρ̂_k}, ρ̂_k the density ranked at λ2
  in the descending densities of C_k (λ2 = 5 %, §3.2). Every non-empty cluster has a core of
  at least one sample (a cluster with fewer than 1/λ2 members keeps its densest member).

  Returns: (n,) bool core mask.
  """
  return per_cluster_top_fraction(rho, labels, frac=lam2, n_clusters=n_clusters)


__all__ = ["DC_SAMPLE_PAIRS", "EXACT_DC_MAX_N", "cutoff_distance", "density_cores",
           "difficulty_scores", "local_density", "per_cluster_top_fraction"]
