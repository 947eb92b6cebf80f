"""Per-view feature scaling: min-max (default), standard, none."""

from __future__ import annotations

import numpy as np

from clustering_jax.data.container import DataError, Dataset

SCALINGS = ("minmax", "standard", "none")


def scale_array(x: np.ndarray, method: str) -> np.ndarray:
  """Scales each feature (column) of a (n, d) array; constant columns map to 0."""
  x = np.asarray(x, np.float32)
  if method == "none":
    return x
  if method == "minmax":
    lo, hi = x.min(axis=0), x.max(axis=0)
    span = hi - lo
    return ((x - lo) / np.where(span > 0, span, 1.0)).astype(np.float32)
  if method == "standard":
    # float64: a constant float32 column then has mean exactly equal to it and sd exactly 0
    # (in float32 the rounding error makes sd ~1e-7 and the column becomes +-1).
    x64 = x.astype(np.float64)
    mu, sd = x64.mean(axis=0), x64.std(axis=0)
    return ((x64 - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)
  raise DataError(f"unknown scaling {method!r}; choose one of {SCALINGS}")


def scale_views(data: Dataset, method: str = "minmax") -> Dataset:
  """Scales each vector view feature-wise. Images (already in [0, 1]) are left alone."""
  if method not in SCALINGS:
    raise DataError(f"unknown scaling {method!r}; choose one of {SCALINGS}")
  if data.kind == "image" or method == "none":
    return data
  return data.replace(views=tuple(scale_array(v, method) for v in data.views))
