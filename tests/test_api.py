"""Estimator API: scikit-learn parameter protocol, fit/predict contract, registry."""

import dataclasses

import numpy as np
import pytest
from sklearn.base import clone

import clustering_jax
from clustering_jax import metrics
from clustering_jax.api import ClusteringEstimator, available_methods, get_estimator
from clustering_jax.api.kmeans import KMeans, KMeansConfig
from clustering_jax.data import DataError, Dataset, load_dataset

# Same shapes as test_kmeans (n=60, d=3, k=3, n_init=2) so the jitted k-means is reused.
N, D, K = 60, 3, 3


def _x(seed=0):
  rng = np.random.default_rng(seed)
  c = rng.normal(0, 5, (K, D))
  y = np.arange(N) % K
  return (c[y] + rng.normal(size=(N, D))).astype(np.float32), y


def test_get_set_params_and_clone():
  est = KMeans(n_clusters=4, random_state=3, n_init=2)
  p = est.get_params()
  assert p["n_clusters"] == 4 and p["random_state"] == 3 and p["n_init"] == 2
  assert p["scaling"] == "minmax"
  assert set(p) == {"n_clusters", "random_state", "scaling"} | {
      f.name for f in dataclasses.fields(KMeansConfig)}
  assert est.set_params(max_iter=7, n_clusters=5) is est
  assert est.max_iter == 7 and est.n_clusters == 5 and est.config.max_iter == 7
  c = clone(est)
  assert type(c) is KMeans and c is not est and c.get_params() == est.get_params()
  assert not hasattr(c, "labels_")
  assert "n_init=2" in repr(est) and "max_iter=7" in repr(est)


def test_unknown_params():
  with pytest.raises(TypeError, match=r"KMeans got unknown parameter\(s\) \['n_iters'\]"):
    KMeans(n_clusters=3, n_iters=5)
  with pytest.raises(ValueError, match="invalid parameter 'n_iters' for KMeans"):
    KMeans(n_clusters=3).set_params(n_iters=5)


def test_fit_returns_self_with_labels_and_embedding():
  x, _ = _x()
  est = KMeans(n_clusters=K, n_init=2)
  assert est.fit(x) is est
  assert est.labels_.shape == (N,) and est.embedding_.shape == (N, D)
  assert est.n_features_in_ == D and est.init_labels_ is None and est.init_embedding_ is None
  assert set(np.unique(est.labels_)) == set(range(K))
  # embedding_ is the min-max scaled input (the default scaling)
  np.testing.assert_allclose(est.embedding_.min(0), 0.0, atol=1e-6)
  np.testing.assert_allclose(est.embedding_.max(0), 1.0, atol=1e-6)


def test_fit_predict_equals_labels_and_predict_transform():
  x, _ = _x()
  est = KMeans(n_clusters=K, n_init=2)
  labels = est.fit_predict(x)
  np.testing.assert_array_equal(labels, est.labels_)
  np.testing.assert_array_equal(est.predict(x), est.labels_)
  dist = est.transform(x)
  assert dist.shape == (N, K)
  np.testing.assert_array_equal(dist.argmin(1), est.labels_)
  # same seed, same labels; the estimator is deterministic
  np.testing.assert_array_equal(KMeans(n_clusters=K, n_init=2).fit(x).labels_, labels)


def test_predict_before_fit():
  with pytest.raises(RuntimeError, match="this KMeans is not fitted yet; call fit first"):
    KMeans(n_clusters=3).predict(np.zeros((4, 2)))
  with pytest.raises(RuntimeError, match="not fitted yet"):
    KMeans(n_clusters=3).transform(np.zeros((4, 2)))


def test_fit_accepts_ndarray_list_of_views_and_dataset():
  x, y = _x()
  a = KMeans(n_clusters=K, n_init=2).fit(x).labels_
  # two views that concatenate to x
  b = KMeans(n_clusters=K, n_init=2).fit([x[:, :1], x[:, 1:]]).labels_
  ds = Dataset(views=(x[:, :2], x[:, 2:]), labels=y, name="t", n_clusters=7)
  est = KMeans(n_clusters=K, n_init=2).fit(ds)         # the estimator's n_clusters wins
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a, est.labels_)
  assert len(np.unique(est.labels_)) == K


def test_fit_ignores_y():
  x, y = _x()
  a = KMeans(n_clusters=K, n_init=2).fit(x).labels_
  b = KMeans(n_clusters=K, n_init=2).fit(x, y[::-1]).labels_
  np.testing.assert_array_equal(a, b)


def test_fit_rejects_bad_input():
  x, _ = _x()
  bad = x.copy()
  bad[0, 0] = np.nan
  with pytest.raises(DataError, match="NaN/Inf"):
    KMeans(n_clusters=K).fit(bad)
  with pytest.raises(DataError, match=r"n_clusters=61 exceeds the number of samples \(60\)"):
    KMeans(n_clusters=61).fit(x)
  with pytest.raises(DataError, match="different sample counts"):
    KMeans(n_clusters=K).fit([x, x[:10]])


def test_kmeans_acc_on_digits_close_to_sklearn(sklearn_digits, digits_flat):
  ds = load_dataset("digits")
  np.testing.assert_array_equal(ds.concat(), digits_flat[0])   # same data as the sklearn fit
  est = KMeans(n_clusters=10).fit(ds)
  ours = metrics.accuracy(ds.labels, est.labels_)
  theirs = metrics.accuracy(ds.labels, sklearn_digits.labels_)
  assert abs(ours - theirs) <= 0.03, (ours, theirs)


def test_registry():
  assert "kmeans" in available_methods()
  assert get_estimator("kmeans") is KMeans
  assert issubclass(KMeans, ClusteringEstimator)
  assert clustering_jax.get_estimator("kmeans") is KMeans
  with pytest.raises(ValueError) as e:
    get_estimator("nope")
  msg = str(e.value)
  assert "unknown method 'nope'" in msg
  for name in available_methods():
    assert name in msg
