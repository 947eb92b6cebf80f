"""Pairwise distances and kNN, computed in row blocks so memory is O(n * block)."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp


def dot_hi(a: jax.Array, b: jax.Array) -> jax.Array:
  """a @ b in full float32. On GPUs XLA's default float32 matmul rounds its inputs to
  TF32 (10-bit mantissa): squared distances by the expansion below were then off by
  up to 4e-3 on an H200 (docs/results/device_runs.md), enough to flip nearest-centre
  decisions. On the CPU this is the same as a @ b."""
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def cluster_sums(x: jax.Array, labels: jax.Array, n_clusters: int, *,
                 how: str = "auto") -> jax.Array:
  """Per-cluster sums of the rows of x: (n_clusters, d); a label outside [0, n_clusters)
  adds nowhere.

  how: "segment" (`jax.ops.segment_sum`), "matmul" (one-hot(labels)ᵀ @ x in full float32)
  or "auto": segment on the CPU, matmul on an accelerator. On a GPU, XLA's scatter-add
  accumulates with atomics in no fixed order, so two identical calls can differ in the last
  bits and flip a near-tie in k-means (k-means's determinism test failed on an H200 with
  the segment sum; docs/results/device_runs.md); the matmul adds in a fixed order. The CPU
  keeps the segment sum, so every number measured there is unchanged.
  """
  if how == "auto":
    how = "segment" if jax.default_backend() == "cpu" else "matmul"
  if how == "segment":
    return jax.ops.segment_sum(x, labels, num_segments=n_clusters)
  if how != "matmul":
    raise ValueError(f"how must be 'auto', 'segment' or 'matmul', got {how!r}")
  return dot_hi(jax.nn.one_hot(labels, n_clusters, dtype=x.dtype).T, x)


def sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
  """Squared Euclidean distances.

  Args:
    a: (n, d). b: (m, d).
  Returns:
    (n, m), clipped at 0 (the expansion can go slightly negative in float32).
  """
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f"sq_dists needs (n, d) and (m, d), got {a.shape} and {b.shape}")
  aa = jnp.sum(a * a, axis=1)[:, None]
  bb = jnp.sum(b * b, axis=1)[None, :]
  return jnp.maximum(aa + bb - 2.0 * dot_hi(a, b.T), 0.0)


def map_row_blocks(fn: Callable, x: jax.Array, *, block: int = 1024) -> jax.Array:
  """Applies fn to consecutive row blocks of x and concatenates the results.

  fn maps (block, d) rows plus their (block,) global indices to (block, ...). Rows
  past n are padding (copies of row 0) and are dropped, so fn never sees NaN.
  Peak memory is that of one call of fn, e.g. O(block * n) for a distance row.
  """
  n = x.shape[0]
  block = int(min(block, n))
  n_blocks = -(-n // block)
  pad = n_blocks * block - n
  xp = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad,) + x.shape[1:])]) if pad else x
  idx = jnp.arange(n_blocks * block).reshape(n_blocks, block)
  out = jax.lax.map(lambda a: fn(a[0], a[1]), (xp.reshape((n_blocks, block) + x.shape[1:]), idx))
  out = jax.tree.map(lambda o: o.reshape((n_blocks * block,) + o.shape[2:])[:n], out)
  return out


@functools.partial(jax.jit, static_argnames=("k", "block", "exclude_self"))
def knn(x: jax.Array, k: int, *, block: int = 1024, exclude_self: bool = True):
  """k nearest neighbours by Euclidean distance, blocked over query rows.

  Args:
    x: (n, d) points.
    k: number of neighbours (k < n when exclude_self).
  Returns:
    (dists, idx): (n, k) squared distances ascending and (n, k) int32 indices.
  """
  n = x.shape[0]
  if k >= n + (0 if exclude_self else 1):
    raise ValueError(f"knn: k={k} too large for n={n}")

  def rows(xb, ib):
    d = sq_dists(xb, x)
    if exclude_self:
      d = jnp.where(ib[:, None] == jnp.arange(n)[None, :], jnp.inf, d)
    neg, idx = jax.lax.top_k(-d, k)
    return -neg, idx.astype(jnp.int32)

  return map_row_blocks(rows, x, block=block)
