"""Spectral clustering baseline: k-means on the spectral embedding of the scaled,
concatenated views (the project's kNN / anchor graph embedding and JAX k-means)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from clustering_jax.api.base import ClusteringEstimator
from clustering_jax.methods.base import FitResult
from clustering_jax.ops import kmeans
from clustering_jax.ops.spectral import spectral_embedding


@dataclasses.dataclass(frozen=True)
class SpectralConfig:
  graph: str = "auto"     # "knn" up to knn_max_n samples, "anchor" above (see ops/spectral.py)
  n_neighbors: int = 10
  n_anchors: int = 1000
  n_init: int = 10


class Spectral(ClusteringEstimator):
  """Normalized spectral clustering (Ng-Jordan-Weiss) on a kNN or anchor graph."""

  config_cls = SpectralConfig

  def _fit(self, data, key, run):
    cfg = self.config
    k_emb, k_km = jax.random.split(key)
    x = jnp.asarray(data.concat())
    emb, eig = spectral_embedding(k_emb, x, int(self.n_clusters), method=cfg.graph,
                                  k=cfg.n_neighbors, n_anchors=cfg.n_anchors)
    res = kmeans(k_km, emb, int(self.n_clusters), n_init=cfg.n_init)
    run.log("spectral", 0, {"inertia": res.inertia}, labels=res.labels)
    return FitResult(labels=np.asarray(res.labels), embedding=np.asarray(emb),
                     info={"eigenvalues": np.asarray(eig).tolist()})
