"""Clustering metrics: ACC (Hungarian), NMI, ARI, purity, pairwise F-measure, and the
label-free silhouette.

Imported by the API, experiments and tests only — never by ops/, methods/ or
train/ — so ground-truth labels cannot reach a loss, a schedule or a stop rule.
All functions accept any number of predicted clusters (it may differ from the
number of classes). Values are fractions in [0, 1] (ARI, silhouette in [-1, 1]).
NMI and ARI are computed from the contingency table in NumPy; SciPy is imported by the metrics
that need an assignment (ACC, confusions), so a run on unlabelled data does not load it.
"""

from __future__ import annotations

import numpy as np


def _check(y_true, y_pred):
  y_true = np.asarray(y_true).reshape(-1)
  y_pred = np.asarray(y_pred).reshape(-1)
  if y_true.shape != y_pred.shape:
    raise ValueError(f"label arrays differ in length: {y_true.shape[0]} vs {y_pred.shape[0]}")
  if y_true.size == 0:
    raise ValueError("empty label arrays")
  return y_true, y_pred


def contingency(y_true, y_pred) -> np.ndarray:
  """(n_classes, n_clusters) counts."""
  y_true, y_pred = _check(y_true, y_pred)
  _, t = np.unique(y_true, return_inverse=True)
  _, p = np.unique(y_pred, return_inverse=True)
  c = np.zeros((t.max() + 1, p.max() + 1), np.int64)
  np.add.at(c, (t, p), 1)
  return c


def accuracy(y_true, y_pred) -> float:
  """ACC with the best one-to-one (Hungarian) matching of clusters to classes.

  Unmatched clusters (when there are more clusters than classes) count as errors.
  """
  c = contingency(y_true, y_pred)
  from scipy.optimize import linear_sum_assignment
  rows, cols = linear_sum_assignment(-c)
  return float(c[rows, cols].sum() / c.sum())


def confusions(y_true, y_pred, top: int | None = None) -> list[tuple[int, object, object]]:
  """Where the ACC errors are: (count, true class, class its cluster is matched to), largest
  first, for every sample outside its class's Hungarian-matched cluster (the matching of
  `accuracy`). Samples in an unmatched cluster are left out. top: keep the largest `top`."""
  y_true, y_pred = _check(y_true, y_pred)
  classes = np.unique(y_true)
  c = contingency(y_true, y_pred)
  from scipy.optimize import linear_sum_assignment
  rows, cols = linear_sum_assignment(-c)
  out = [(int(c[a, col]), classes[a].item(), classes[r].item())
         for r, col in zip(rows, cols) for a in range(c.shape[0]) if a != r and c[a, col]]
  out.sort(key=lambda t: -t[0])
  return out[:top] if top is not None else out


def purity(y_true, y_pred) -> float:
  """Fraction of samples in their cluster's majority class (many-to-one)."""
  c = contingency(y_true, y_pred)
  return float(c.max(axis=0).sum() / c.sum())


def nmi(y_true, y_pred) -> float:
  """Normalized mutual information, I(T; P) / ((H(T) + H(P)) / 2) (natural logs; scikit-learn's
  `average_method="arithmetic"`): 1 when both labelings have one cluster, 0 when I = 0."""
  c = contingency(y_true, y_pred).astype(np.float64)
  if c.shape[0] == c.shape[1] == 1:
    return 1.0
  n = c.sum()
  pt, pp = c.sum(axis=1) / n, c.sum(axis=0) / n
  nz = c > 0
  pij = c[nz] / n
  mi = float(np.sum(pij * (np.log(pij) - np.log(np.outer(pt, pp)[nz]))))
  if mi <= 0.0:
    return 0.0
  h = lambda q: float(-np.sum(q * np.log(q)))
  return float(mi / max((h(pt) + h(pp)) / 2.0, np.finfo(np.float64).eps))


def ari(y_true, y_pred) -> float:
  """Adjusted Rand index (Hubert & Arabie 1985) from the pair counts of the contingency table:
  2(tp·tn − fn·fp) / ((tp + fn)(fn + tn) + (tp + fp)(fp + tn)); 1 when no pair disagrees."""
  c = contingency(y_true, y_pred).astype(np.float64)
  n = c.sum()
  sq = float((c * c).sum())
  tp = sq - n                                               # ordered pairs together in both
  fp = float((c @ c.sum(axis=0)).sum()) - sq                # together in P only
  fn = float((c.T @ c.sum(axis=1)).sum()) - sq              # together in T only
  tn = n * n - tp - fp - fn - n
  if fp == 0 and fn == 0:
    return 1.0
  return float(2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))


def pairwise_f(y_true, y_pred) -> dict:
  """Pairwise precision, recall and F-measure over all sample pairs."""
  c = contingency(y_true, y_pred).astype(np.float64)
  comb = lambda a: a * (a - 1) / 2.0
  tp = comb(c).sum()
  pred_pairs = comb(c.sum(axis=0)).sum()
  true_pairs = comb(c.sum(axis=1)).sum()
  precision = tp / pred_pairs if pred_pairs > 0 else 0.0
  recall = tp / true_pairs if true_pairs > 0 else 0.0
  f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
  return {"precision": float(precision), "recall": float(recall), "f_measure": float(f)}


def score(y_true, y_pred) -> dict:
  """All metrics as a flat dict: acc, nmi, ari, purity, f_measure, precision, recall."""
  return {"acc": accuracy(y_true, y_pred), "nmi": nmi(y_true, y_pred),
          "ari": ari(y_true, y_pred), "purity": purity(y_true, y_pred),
          **pairwise_f(y_true, y_pred)}


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
  """Mean silhouette (Rousseeuw 1987) with Euclidean distances, in float64: for each sample
  s = (b - a) / max(a, b), a its mean distance to the rest of its cluster, b the smallest
  mean distance to another cluster; 0 in a one-sample cluster. scikit-learn's
  silhouette_score; needs 2 <= clusters < samples. O(n^2 d) time, O(n^2) memory."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  _, lab = np.unique(np.asarray(labels).reshape(-1), return_inverse=True)
  sq = np.einsum("ij,ij->i", x, x)
  d = x @ x.T                                               # in place from here: one n x n
  d *= -2.0
  d += sq[:, None]
  d += sq[None, :]
  np.maximum(d, 0.0, out=d)
  np.sqrt(d, out=d)
  np.fill_diagonal(d, 0.0)
  counts = np.bincount(lab).astype(np.float64)
  sums = d @ np.eye(len(counts))[lab]                       # (n, k) distance sums per cluster
  own = counts[lab]
  a = sums[np.arange(len(lab)), lab] / np.maximum(own - 1.0, 1.0)
  mean_other = sums / counts
  mean_other[np.arange(len(lab)), lab] = np.inf
  b = mean_other.min(axis=1)
  s = np.where(own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-300), 0.0)
  return float(np.mean(s))
