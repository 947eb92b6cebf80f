"""Deterministic epoch shuffling and mini-batching (host side, numpy indices)."""

from __future__ import annotations

from typing import Iterator

import jax
import numpy as np


def epoch_key(key: jax.Array, epoch: int) -> jax.Array:
  """The PRNG key of one epoch: a pure function of (key, epoch), so resume is exact."""
  return jax.random.fold_in(key, epoch)


def epoch_permutation(key: jax.Array, epoch: int, n: int) -> np.ndarray:
  """Shuffled sample order for one epoch, (n,) int32; same (key, epoch) -> same order."""
  return np.asarray(jax.random.permutation(epoch_key(key, epoch), n))


def subset_permutation(key: jax.Array, epoch: int, members: np.ndarray, n: int) -> np.ndarray:
  """Shuffled order of `members` (distinct indices in [0, n)) for one epoch.

  The order is `epoch_permutation(key, epoch, n)` restricted to `members`: a uniformly random
  order of the subset whose shuffle always has the shape (n,), so it compiles once however
  the subset's size changes from epoch to epoch. (`jax.random.permutation` compiles a new
  sort for every new length: 220-260 ms each on this project's 2-core CPU, paid every epoch
  by a curriculum whose set grows.) When `members` is all of range(n) the result equals
  `epoch_permutation(key, epoch, n)`.
  """
  members = np.asarray(members)
  if members.ndim != 1:
    raise ValueError(f"members must be 1-D indices, got shape {members.shape}")
  if len(members) and (members.min() < 0 or members.max() >= n):
    raise ValueError(f"members must lie in [0, {n}), got [{members.min()}, {members.max()}]")
  if len(np.unique(members)) != len(members):
    raise ValueError("members must be distinct indices")
  perm = epoch_permutation(key, epoch, n)
  keep = np.zeros(n, bool)
  keep[members] = True
  return perm[keep[perm]].astype(members.dtype, copy=False)


def batches(order: np.ndarray, batch_size: int, *, drop_last: bool = False) -> Iterator[np.ndarray]:
  """Consecutive index batches of `order`. The last short batch is kept unless drop_last
  (or unless it would be the only batch: a set smaller than batch_size is one batch)."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  n = len(order)
  stop = n - n % batch_size if (drop_last and n >= batch_size) else n
  for s in range(0, stop, batch_size):
    yield order[s:s + batch_size]


def n_batches(n: int, batch_size: int, *, drop_last: bool = False) -> int:
  if drop_last and n >= batch_size:
    return n // batch_size
  return -(-n // batch_size)


def batch_matrix(order: np.ndarray, batch_size: int) -> np.ndarray:
  """(n_batches, B) index matrix of fixed batch shape for a jitted step or a lax.scan epoch.

  The short remainder is dropped (callers reshuffle every epoch, so every sample is used
  over epochs); a set smaller than batch_size forms one batch of all of it.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  b = min(batch_size, len(order))
  if b == 0:
    return np.zeros((0, 0), np.int64)
  nb = len(order) // b
  return np.asarray(order[:nb * b]).reshape(nb, b)
