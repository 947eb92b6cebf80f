"""Baselines the deep methods must beat: spectral clustering on the concatenated views."""

import numpy as np

from clustering_jax import get_estimator
from clustering_jax.data import builtin
from clustering_jax.metrics import accuracy


def test_spectral_baseline_separates_blobs_and_is_deterministic():
  data = builtin.blobs(n_samples=300, n_clusters=3, n_features=4, seed=1)
  est = get_estimator("spectral")(n_clusters=3, random_state=0)
  a = est.fit_predict(data)
  assert a.shape == (300,)
  assert accuracy(data.labels, a) > 0.95
  assert est.embedding_.shape == (300, 3)
  np.testing.assert_allclose(np.linalg.norm(est.embedding_, axis=1), 1.0, atol=1e-4)
  b = get_estimator("spectral")(n_clusters=3, random_state=0).fit_predict(data)
  np.testing.assert_array_equal(a, b)
