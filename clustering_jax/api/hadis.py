"""HaDis estimator: `HaDis(n_clusters=10).fit(images)`; CLI: `experiments/run.py --method hadis`."""

from __future__ import annotations

import numpy as np

from clustering_jax.api.base import ClusteringEstimator
from clustering_jax.data.container import DataError, Dataset, from_arrays
from clustering_jax.methods import hadis as method
from clustering_jax.methods.base import Views


class HaDis(ClusteringEstimator):
  """Hardness-aware deep image clustering by self-distillation (paper 004).

  Images only, (n, H, W, C) in [0, 1] (or (n, H, W) grayscale). Every keyword of
  `methods.hadis.Config` is a parameter (paper defaults: ResNet-18 for RGB, 1000 epochs,
  batch 256); `--epochs` sets `epochs`. The small grayscale CPU settings are
  experiments/configs/hadis_cpu.json (hdigit-mnist) and hadis_digits.json (digits).

  After fit: labels_ (k-means on the final teacher's features), embedding_ (n, proj_dim)
  ℓ2-normalized teacher features, init_labels_ / init_embedding_ (the random teacher),
  fit_info_ (epochs, timing, backbone, ...).

  >>> est = HaDis(n_clusters=10, epochs=50).fit(images)
  >>> est.labels_, est.transform(images), est.predict(images)
  """

  config_cls = method.Config
  epochs_field = "epochs"
  accepts = "image"

  def _fit(self, data, key, run):
    return method.fit(data, int(self.n_clusters), self.config, key=key, run=run)

  def _images(self, X) -> np.ndarray:
    self._check_fitted()
    # New data may hold fewer samples than clusters: validate it as data, not as a fit input.
    data = X if isinstance(X, Dataset) else from_arrays(X, n_clusters=2)
    if data.kind != "image":
      raise DataError(f"{type(self).__name__} needs images (n, H, W, C); got vector data")
    return method.images_of(Views.of(data))

  def transform(self, X) -> np.ndarray:
    """ℓ2-normalized teacher features (n, proj_dim) of new images."""
    return method.transform(self.config, self.state_, self._images(X))

  def predict(self, X) -> np.ndarray:
    """Nearest final k-means center (cosine) of each new image's teacher feature."""
    return method.predict(self.config, self.state_, self._images(X))
