"""Clustering metrics against brute-force references and scikit-learn."""

import itertools

import numpy as np
import pytest
from sklearn import metrics as skm

from clustering_jax import metrics as M

RNG = np.random.default_rng(0)


def _acc_brute(y, p):
  """Best one-to-one map clusters -> classes by trying every injective assignment."""
  classes, clusters = np.unique(y), np.unique(p)
  best = 0
  if len(clusters) <= len(classes):
    for perm in itertools.permutations(classes, len(clusters)):
      m = dict(zip(clusters, perm))
      best = max(best, sum(m[a] == b for a, b in zip(p, y)))
  else:  # more clusters than classes: choose which clusters get a class
    for perm in itertools.permutations(clusters, len(classes)):
      m = dict(zip(perm, classes))
      best = max(best, sum(m.get(a, None) == b for a, b in zip(p, y)))
  return best / len(y)


def _purity_brute(y, p):
  return sum(np.bincount(y[p == c]).max() for c in np.unique(p)) / len(y)


def _pairs_brute(y, p):
  tp = fp = fn = 0
  for i, j in itertools.combinations(range(len(y)), 2):
    same_t, same_p = y[i] == y[j], p[i] == p[j]
    tp += same_t and same_p
    fp += same_p and not same_t
    fn += same_t and not same_p
  prec = tp / (tp + fp) if tp + fp else 0.0
  rec = tp / (tp + fn) if tp + fn else 0.0
  return prec, rec, (2 * prec * rec / (prec + rec) if prec + rec else 0.0)


CASES = [(RNG.integers(0, c, 30), RNG.integers(0, k, 30)) for c, k in
         [(3, 3), (4, 4), (3, 5), (5, 3), (2, 6), (4, 2)]]
CASES.append((np.array([0, 0, 1, 1, 2, 2]), np.array([5, 5, 9, 9, 7, 7])))   # perfect, relabeled


@pytest.mark.parametrize("y,p", CASES)
def test_accuracy_vs_brute_force(y, p):
  assert M.accuracy(y, p) == pytest.approx(_acc_brute(y, p))


def test_accuracy_known_values():
  assert M.accuracy([0, 0, 1, 1], [1, 1, 0, 0]) == 1.0
  assert M.accuracy([0, 0, 1, 1], [0, 1, 2, 3]) == 0.5      # more clusters: unmatched = errors
  assert M.accuracy([0, 1, 2, 3], [0, 0, 1, 1]) == 0.5      # fewer clusters
  assert M.accuracy(["a", "b", "b"], [7, 3, 3]) == 1.0      # any label values


@pytest.mark.parametrize("y,p", CASES)
def test_purity_vs_reference_and_at_least_acc(y, p):
  assert M.purity(y, p) == pytest.approx(_purity_brute(y, p))
  assert M.purity(y, p) >= M.accuracy(y, p) - 1e-12


DEGENERATE = [([0, 0, 0], [0, 0, 0]), ([0, 0, 0], [0, 1, 2]), ([0, 1, 2], [4, 4, 4]), ([3], [1]),
              ([0, 1], [1, 0]), ([0, 0, 1, 1], [0, 1, 0, 1]), (["a", "b", "b"], ["x", "y", "y"])]


@pytest.mark.parametrize("y,p", CASES + DEGENERATE)
def test_nmi_ari_vs_sklearn(y, p):
  assert M.nmi(y, p) == pytest.approx(skm.normalized_mutual_info_score(y, p), abs=1e-12)
  assert M.ari(y, p) == pytest.approx(skm.adjusted_rand_score(y, p), abs=1e-12)


def test_nmi_ari_vs_sklearn_random_sizes():
  rng = np.random.default_rng(3)
  for _ in range(200):
    n = int(rng.integers(1, 60))
    y, p = rng.integers(0, rng.integers(1, 7), n), rng.integers(0, rng.integers(1, 7), n)
    assert M.nmi(y, p) == pytest.approx(skm.normalized_mutual_info_score(y, p), abs=1e-12)
    assert M.ari(y, p) == pytest.approx(skm.adjusted_rand_score(y, p), abs=1e-12)


def test_scores_do_not_import_sklearn():
  # A run's evaluation stays cheap: scikit-learn (~2 s to import) is not loaded by the scores.
  import subprocess
  import sys
  code = ("import sys; from clustering_jax import metrics as M; M.score([0, 1, 1], [1, 0, 0]); "
          "sys.exit('sklearn' in sys.modules)")
  assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("y,p", CASES)
def test_pairwise_f_vs_pair_count(y, p):
  got = M.pairwise_f(y, p)
  prec, rec, f = _pairs_brute(y, p)
  assert got["precision"] == pytest.approx(prec)
  assert got["recall"] == pytest.approx(rec)
  assert got["f_measure"] == pytest.approx(f)


def test_pairwise_f_degenerate():
  # every sample its own cluster: no predicted pairs
  assert M.pairwise_f([0, 0, 1], [0, 1, 2]) == {"precision": 0.0, "recall": 0.0, "f_measure": 0.0}


@pytest.mark.parametrize("y,p", CASES)
def test_label_permutation_invariance(y, p):
  rename_p = RNG.permutation(10)[p] + 100
  rename_y = RNG.permutation(10)[y]
  a, b = M.score(y, p), M.score(rename_y, rename_p)
  for k in a:
    assert a[k] == pytest.approx(b[k]), k


def test_score_keys_and_ranges():
  y, p = CASES[2]
  s = M.score(y, p)
  assert set(s) == {"acc", "nmi", "ari", "purity", "f_measure", "precision", "recall"}
  for k, v in s.items():
    assert isinstance(v, float)
    assert (-1.0 if k == "ari" else 0.0) <= v <= 1.0


@pytest.mark.parametrize("fn", [M.accuracy, M.purity, M.nmi, M.ari, M.pairwise_f, M.score])
def test_length_mismatch(fn):
  with pytest.raises(ValueError, match="label arrays differ in length: 3 vs 2"):
    fn([0, 1, 1], [0, 1])


def test_empty_labels():
  with pytest.raises(ValueError, match="empty label arrays"):
    M.accuracy([], [])


def test_confusions_known_values():
  y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
  p = np.array([5, 5, 7, 7, 7, 7, 9, 9])     # one class-0 sample in class 1's cluster
  assert M.confusions(y, p) == [(1, 0, 1)]
  assert M.confusions(y, y) == []
  # 4/9-style swap: half of each class in the other's cluster.
  y = np.array([4] * 4 + [9] * 4)
  p = np.array([0, 0, 0, 1, 1, 1, 0, 1])
  assert sorted(M.confusions(y, p)) == [(1, 4, 9), (1, 9, 4)]


@pytest.mark.parametrize("y,p", CASES)
def test_confusions_account_for_every_matched_error(y, p):
  # The counts add up to the ACC errors when every cluster is matched to a class.
  conf = M.confusions(y, p)
  if len(np.unique(p)) <= len(np.unique(y)):
    assert sum(c for c, _, _ in conf) == round(len(y) * (1 - M.accuracy(y, p)))
  assert [c for c, _, _ in conf] == sorted((c for c, _, _ in conf), reverse=True)
  assert M.confusions(y, p, top=2) == conf[:2]
