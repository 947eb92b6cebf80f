"""Host-side comparison of two predicted partitions (no ground truth involved)."""

from __future__ import annotations

import numpy as np


def align_partitions(new: np.ndarray, old: np.ndarray, n_clusters: int) -> np.ndarray:
  """Permutation `perm` (k,) such that perm[new] matches `old` as well as possible: Hungarian
  matching on the contingency table of two predicted partitions (no ground truth involved)."""
  from scipy.optimize import linear_sum_assignment
  cont = np.zeros((n_clusters, n_clusters), np.int64)
  np.add.at(cont, (np.asarray(new), np.asarray(old)), 1)
  r, c = linear_sum_assignment(-cont)
  perm = np.arange(n_clusters)
  perm[r] = c
  return perm.astype(np.int32)
