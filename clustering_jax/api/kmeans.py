"""k-means baseline on the scaled, concatenated views (the project's JAX k-means)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from clustering_jax.api.base import ClusteringEstimator
from clustering_jax.methods.base import FitResult
from clustering_jax.ops import kmeans as kmeans_op
from clustering_jax.ops.kmeans import assign


@dataclasses.dataclass(frozen=True)
class KMeansConfig:
  n_init: int = 10
  max_iter: int = 300
  tol: float = 1e-4
  metric: str = "euclidean"


class KMeans(ClusteringEstimator):
  """k-means (k-means++ + Lloyd, n_init restarts) on the concatenated views."""

  config_cls = KMeansConfig

  def _fit(self, data, key, run):
    x = jnp.asarray(data.concat())
    cfg = self.config
    res = kmeans_op(key, x, int(self.n_clusters), n_init=cfg.n_init, max_iter=cfg.max_iter,
                    tol=cfg.tol, metric=cfg.metric)
    run.log("kmeans", 0, {"inertia": res.inertia, "n_iter": res.n_iter}, labels=res.labels)
    return FitResult(labels=np.asarray(res.labels), embedding=np.asarray(x),
                     state={"centers": np.asarray(res.centers)},
                     info={"inertia": float(res.inertia), "n_iter": int(res.n_iter)})

  def predict(self, X) -> np.ndarray:
    self._check_fitted()
    x = jnp.asarray(self._as_dataset(X).concat())
    return np.asarray(assign(x, jnp.asarray(self.state_["centers"]), metric=self.metric)[0])

  def transform(self, X) -> np.ndarray:
    """Distances (n, k) to the centers, as scikit-learn's KMeans.transform."""
    self._check_fitted()
    x = jnp.asarray(self._as_dataset(X).concat())
    c = jnp.asarray(self.state_["centers"])
    return np.sqrt(np.asarray(jax.vmap(lambda r: jnp.sum((r - c) ** 2, axis=1))(x)))
