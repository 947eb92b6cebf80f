"""What every method's fit receives and returns, and the Config checks they share."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Views:
  """A method's input: the (scaled) views and the missing-view mask, never labels.

  views: V arrays (n, d_v), or one (n, H, W, C) image array when `is_image`.
  mask: (n, V) bool, True where a view is present; None when every view is.
  """

  views: tuple
  mask: Optional[np.ndarray] = None
  is_image: bool = False

  @classmethod
  def of(cls, data) -> "Views":
    """The views and mask of a `Dataset` (its labels stay behind)."""
    return cls(tuple(data.views), data.mask, is_image=data.kind == "image")

  @property
  def n_samples(self) -> int:
    return int(self.views[0].shape[0])

  @property
  def n_views(self) -> int:
    return len(self.views)

  @property
  def image_shape(self) -> Optional[tuple]:
    return tuple(self.views[0].shape[1:]) if self.is_image else None

  def flat_views(self) -> list:
    """Every view as (n, d_v) (images flattened)."""
    return [np.asarray(v).reshape(v.shape[0], -1) for v in self.views]

  def concat(self) -> np.ndarray:
    """All views side by side, (n, sum d_v) float32."""
    return np.concatenate(self.flat_views(), axis=1).astype(np.float32)


@dataclasses.dataclass
class FitResult:
  """Outcome of one method fit.

  labels: (n,) int final cluster labels of the final model.
  embedding: (n, e) float32 representation the labels come from.
  init_labels: (n,) labels of the method's starting point (e.g. autoencoder +
    k-means before the clustering stage), or None for non-deep methods.
  state: whatever transform/predict need (parameters, centers), a pytree.
  info: JSON-able facts. Deep methods give `epochs` ({stage: epochs run}) and `timing`
    ({stage: {epoch_s, compile_s, steps_per_s}}) from `train.engine`.
  """

  labels: np.ndarray
  embedding: np.ndarray
  init_labels: Optional[np.ndarray] = None
  init_embedding: Optional[np.ndarray] = None
  state: Any = None
  info: dict = dataclasses.field(default_factory=dict)


# -- Config checks: each method's Config.validate() is a list of these -------------------
def one_of(cfg, name: str, options: Sequence) -> None:
  v = getattr(cfg, name)
  if v not in options:
    raise ValueError(f"{name} must be one of {tuple(options)}, got {v!r}")


def in_range(cfg, name: str, lo: float, hi: float = float("inf"), *,
             lo_open: bool = False, hi_open: bool = False) -> None:
  v = getattr(cfg, name)
  ok = isinstance(v, (int, float)) and not isinstance(v, bool)
  ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
  if not ok:
    lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
    raise ValueError(f"{name} must be in {lb}{lo}, {hi}{rb}, got {v!r}")
