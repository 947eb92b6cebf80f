"""The one typed container every loader returns."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

KINDS = ("image", "vector")


class DataError(ValueError):
  """Bad input data: the message names the problem."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Views of one dataset, numpy on the host.

  Attributes:
    views: tuple of arrays, each (n, d_v) float32 for vector data, or a single
      (n, H, W, C) float32 array in [0, 1] for image data.
    labels: (n,) int64 ground truth in 0..c-1, or None. Used for scoring only.
    name: dataset name.
    n_clusters: number of clusters to find.
    kind: "image" or "vector".
    image_shape: (H, W, C) for image data, else None.
    mask: optional (n, V) bool, True where view v of sample i is present.
  """

  views: tuple
  labels: Optional[np.ndarray]
  name: str
  n_clusters: int
  kind: str = "vector"
  image_shape: Optional[tuple] = None
  mask: Optional[np.ndarray] = None

  def __post_init__(self):
    validate(self)

  @property
  def n_samples(self) -> int:
    return int(self.views[0].shape[0])

  @property
  def n_views(self) -> int:
    return len(self.views)

  def flat_views(self) -> list:
    """Each view as (n, d_v) float32 (images flattened)."""
    return [v.reshape(v.shape[0], -1) for v in self.views]

  def concat(self) -> np.ndarray:
    """All views side by side, (n, sum d_v) float32."""
    return np.concatenate(self.flat_views(), axis=1)

  def replace(self, **changes) -> "Dataset":
    return dataclasses.replace(self, **changes)


def validate(ds: Dataset) -> None:
  """Raises DataError with a specific message on malformed data."""
  if ds.kind not in KINDS:
    raise DataError(f"kind must be one of {KINDS}, got {ds.kind!r}")
  if not isinstance(ds.views, tuple) or len(ds.views) == 0:
    raise DataError(f"dataset {ds.name!r}: needs at least one view")
  n = None
  for v, x in enumerate(ds.views):
    if not isinstance(x, np.ndarray):
      raise DataError(f"dataset {ds.name!r}: view {v} is {type(x).__name__}, not a numpy array")
    if x.ndim == 0 or x.shape[0] == 0:
      raise DataError(f"dataset {ds.name!r}: view {v} is empty (shape {x.shape})")
    if ds.kind == "vector" and x.ndim != 2:
      raise DataError(f"dataset {ds.name!r}: view {v} must be 2-D (n, d), got shape {x.shape}")
    if ds.kind == "vector" and x.shape[1] == 0:
      raise DataError(f"dataset {ds.name!r}: view {v} is empty (0 features)")
    if ds.kind == "image":
      if x.ndim != 4:
        raise DataError(
            f"dataset {ds.name!r}: images must have rank 4 (n, H, W, C), got shape {x.shape}")
      if ds.image_shape is not None and tuple(x.shape[1:]) != tuple(ds.image_shape):
        raise DataError(
            f"dataset {ds.name!r}: image shape {x.shape[1:]} != declared {ds.image_shape}")
    if n is None:
      n = x.shape[0]
    elif x.shape[0] != n:
      raise DataError(
          f"dataset {ds.name!r}: views have different sample counts "
          f"({[int(y.shape[0]) for y in ds.views]})")
    if not np.issubdtype(x.dtype, np.number):
      raise DataError(f"dataset {ds.name!r}: view {v} has non-numeric dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
      bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
      raise DataError(f"dataset {ds.name!r}: view {v} contains {bad} NaN/Inf values")
  if ds.kind == "image" and len(ds.views) != 1:
    raise DataError(f"dataset {ds.name!r}: image data holds exactly one view")
  if not isinstance(ds.n_clusters, (int, np.integer)) or ds.n_clusters < 2:
    raise DataError(f"dataset {ds.name!r}: n_clusters must be an integer >= 2, got {ds.n_clusters}")
  if ds.n_clusters > n:
    raise DataError(
        f"dataset {ds.name!r}: n_clusters={ds.n_clusters} exceeds the number of samples ({n})")
  if ds.labels is not None:
    if ds.labels.shape != (n,):
      raise DataError(f"dataset {ds.name!r}: labels shape {ds.labels.shape} != ({n},)")
  if ds.mask is not None:
    if ds.mask.shape != (n, len(ds.views)):
      raise DataError(
          f"dataset {ds.name!r}: mask shape {ds.mask.shape} != (n, n_views) = {(n, len(ds.views))}")
    if not np.all(ds.mask.any(axis=1)):
      raise DataError(f"dataset {ds.name!r}: every sample needs at least one present view")


def from_arrays(X, *, n_clusters: int, labels=None, name: str = "array", mask=None,
                kind: Optional[str] = None) -> Dataset:
  """Builds a Dataset from user arrays: (n, d), (n, H, W, C) images, or a list of views.

  A 3-D array (n, H, W) is taken as single-channel images.
  """
  if isinstance(X, Dataset):
    return X
  if isinstance(X, (list, tuple)):
    views = tuple(np.asarray(v, dtype=np.float32) for v in X)
    return Dataset(views=views, labels=_labels(labels), name=name, n_clusters=n_clusters,
                   kind=kind or "vector", mask=None if mask is None else np.asarray(mask, bool))
  x = np.asarray(X)
  if not np.issubdtype(x.dtype, np.number):
    raise DataError(f"input has non-numeric dtype {x.dtype}")
  x = x.astype(np.float32)
  if x.ndim == 3:
    x = x[..., None]
  if kind is None:
    kind = "image" if x.ndim == 4 else "vector"
  if kind == "vector" and x.ndim != 2:
    raise DataError(f"vector input must be 2-D (n, d), got shape {x.shape}")
  image_shape = tuple(x.shape[1:]) if kind == "image" else None
  return Dataset(views=(x,), labels=_labels(labels), name=name, n_clusters=n_clusters,
                 kind=kind, image_shape=image_shape,
                 mask=None if mask is None else np.asarray(mask, bool))


def _labels(y) -> Optional[np.ndarray]:
  if y is None:
    return None
  y = np.asarray(y).reshape(-1)
  _, inv = np.unique(y, return_inverse=True)
  return inv.astype(np.int64)


def as_views(x: Sequence[np.ndarray]) -> tuple:
  return tuple(np.asarray(v, np.float32) for v in x)
