"""What every method's fit returns."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np


@dataclasses.dataclass
class FitResult:
  """Outcome of one method fit.

  labels: (n,) int final cluster labels of the final model.
  embedding: (n, e) float32 representation the labels come from.
  init_labels: (n,) labels of the method's starting point (e.g. autoencoder +
    k-means before the clustering stage), or None for non-deep methods.
  state: whatever transform/predict need (parameters, centers), a pytree.
  info: JSON-able facts: epochs run per stage, compile_s, time per epoch, ...
  """

  labels: np.ndarray
  embedding: np.ndarray
  init_labels: Optional[np.ndarray] = None
  init_embedding: Optional[np.ndarray] = None
  state: Any = None
  info: dict = dataclasses.field(default_factory=dict)
