"""MVSIB estimator (scikit-learn style)."""

from __future__ import annotations

import numpy as np

from clustering_jax.api.base import ClusteringEstimator
from clustering_jax.methods import mvsib


class MVSIB(ClusteringEstimator):
  """MVSIB: per-view autoencoders fused into a consensus embedding, trained with
  uncertainty-aware FN/HN routing, minority pseudo-samples and hierarchical contrast
  (paper 000, Algorithm 1).

  Parameters are n_clusters, random_state, scaling and the fields of
  `clustering_jax.methods.mvsib.Config` (the paper's defaults, §4.4). X is a list of views
  (n, d_v); `mask` (n, V) marks the present views.

  >>> est = MVSIB(n_clusters=4).fit([X0, X1, X2])
  >>> est.labels_, est.init_labels_, est.embedding_
  """

  config_cls = mvsib.Config
  epochs_field = "epochs"
  pretrain_epochs_field = "pretrain_epochs"
  accepts = "any"

  def _fit(self, data, key, run):
    return mvsib.fit(data, int(self.n_clusters), self.config, key=key, run=run)

  def transform(self, X, mask=None) -> np.ndarray:
    """Consensus embeddings z^cons (n, latent) of new samples (Eq. 1, 3)."""
    self._check_fitted()
    data = self._as_dataset(X, mask)
    return mvsib.transform(self.config, self.state_, data.flat_views(), data.mask)

  def predict(self, X, mask=None) -> np.ndarray:
    """Nearest final consensus center of each new sample."""
    self._check_fitted()
    data = self._as_dataset(X, mask)
    return mvsib.predict(self.config, self.state_, data.flat_views(), data.mask)
