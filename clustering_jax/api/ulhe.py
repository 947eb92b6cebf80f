"""ULHE-DC estimator (scikit-learn style)."""

from __future__ import annotations

import numpy as np

from clustering_jax.api.base import ClusteringEstimator
from clustering_jax.methods import ulhe


class ULHE(ClusteringEstimator):
  """ULHE-DC: autoencoder on the unit hypersphere, cosine k-means start, clustering
  with hyperspherical-energy uniformity (Eq. 11) and intra-cluster compactness (Eq. 12).

  Parameters are n_clusters, random_state, scaling and the fields of
  `clustering_jax.methods.ulhe.Config` (paper defaults, §4.2). Images are
  flattened; several views are concatenated.

  >>> est = ULHE(n_clusters=10, pretrain_epochs=50).fit(X)
  >>> est.labels_, est.init_labels_, est.embedding_
  """

  config_cls = ulhe.Config
  epochs_field = "epochs"
  pretrain_epochs_field = "pretrain_epochs"
  accepts = "any"

  def _fit(self, data, key, run):
    return ulhe.fit(data, int(self.n_clusters), self.config, key=key, run=run)

  def predict(self, X) -> np.ndarray:
    """Eq. 6 assignments of new samples to the fitted centroids."""
    self._check_fitted()
    return ulhe.predict(self.config, self.state_, self._as_dataset(X).concat())

  def transform(self, X) -> np.ndarray:
    """Unit-norm encoder embeddings (n, latent) of new samples."""
    self._check_fitted()
    return ulhe.transform(self.config, self.state_, self._as_dataset(X).concat())
