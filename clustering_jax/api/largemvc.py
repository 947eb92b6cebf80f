"""LargeMvC-Net estimator: multi-view vectors, complete or with a missing-view mask."""

from __future__ import annotations

from clustering_jax.api.base import ClusteringEstimator
from clustering_jax.methods import largemvc


class LargeMvC(ClusteringEstimator):
  """LargeMvC-Net (anchor-based deep unfolding network) on a list of views.

  >>> est = LargeMvC(n_clusters=10, random_state=0).fit([x_view0, x_view1], mask=mask)
  >>> est.labels_, est.embedding_        # k-means labels on H, and H (n, m)
  >>> est.init_labels_                    # the start: k-means on the spectral embedding

  Parameters are those of `methods.largemvc.Config` (paper defaults: 100 epochs, lr 0.01,
  L = 2 layers, m = c anchors). `variant="amvc"` / `"rmvc"` give the ablations of the
  paper's appendix Table 1. There is no `predict`: H of a new sample depends on P_v,
  which the AnchorModule recomputes from the whole training set.
  """

  config_cls = largemvc.Config
  epochs_field = "epochs"
  accepts = "any"   # images are flattened to one vector view

  def _fit(self, data, key, run):
    return largemvc.fit(data, int(self.n_clusters), self.config, key=key, run=run)
