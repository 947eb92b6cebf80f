"""IDCL estimator: `IDCL(n_clusters=10).fit(images)` (`python experiments/run.py --method idcl`)."""

from __future__ import annotations

import numpy as np

from clustering_jax.api.base import ClusteringEstimator
from clustering_jax.data.container import Dataset, from_arrays
from clustering_jax.data.scaling import scale_views
from clustering_jax.methods import idcl as method
from clustering_jax.methods.base import Views


class IDCL(ClusteringEstimator):
  """Deep image clustering with a density curriculum and density-core assignment (ICMR 2024).

  Images (n, H, W, C) use the transformer autoencoder; vectors (n, d) the MLP autoencoder
  with the same linear block. Every keyword of `methods.idcl.Config` is a parameter (paper
  defaults); `--epochs` sets `epochs` (the clustering stage; `pretrain_epochs` is separate).

  After fit: labels_ (final model), embedding_ (n, 10), init_labels_ (pre-trained
  autoencoder + k-means), fit_info_ (epochs, time per epoch, compile time, steps/s).
  """

  config_cls = method.Config
  epochs_field = "epochs"
  pretrain_epochs_field = "pretrain_epochs"
  accepts = "any"

  def _fit(self, data, key, run):
    return method.fit(data, int(self.n_clusters), self.config, key=key, run=run)

  def _inputs(self, X):
    self._check_fitted()
    # New data may hold fewer samples than clusters: validate it as data, not as a fit input.
    data = from_arrays(X, n_clusters=2) if not isinstance(X, Dataset) else X
    data = scale_views(data, self.scaling)
    cfg = self.config
    x = method.prepare_inputs(Views.of(data), cfg)
    net = method.make_net(cfg, x.shape)
    return net, cfg, x

  def transform(self, X) -> np.ndarray:
    """Encoder embedding (n, latent) of new data."""
    net, cfg, x = self._inputs(X)
    return method.predict(net, cfg, self.state_, x, self.n_clusters)[0]

  def predict(self, X) -> np.ndarray:
    """Density-core assignment (Eq. 10–11, argmax) of new data to the final cores."""
    net, cfg, x = self._inputs(X)
    labels = method.predict(net, cfg, self.state_, x, self.n_clusters)[1]
    if labels is None:
      raise RuntimeError("IDCL was fitted with epochs=0: no density cores to predict with")
    return labels
