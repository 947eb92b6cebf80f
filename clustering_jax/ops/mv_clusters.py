"""MVSIB's per-epoch clusters, paper 000 §3.3: k-means of the consensus embedding and of every
view's, and the matching of their cluster ids across views and epochs.

Row 0 of the stacked embeddings z_all (V + 1, n, D) is z^cons, rows 1..V the views' z^(v).
`view_clusters` is jittable (fixed shapes); `match_ids` runs on the host (Hungarian matching on
contingency tables, `ops.partitions.align_partitions`), so that u_c^(v), u_c^cons and a
pseudo-label c all name the same cluster (Eq. 26's u⁺, Eq. 39's μ_c^(v), Appendix A's center).
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clustering_jax.ops.kmeans import KMeansResult, kmeans
from clustering_jax.ops.partitions import align_partitions


def view_clusters(key: jax.Array, z_all: jax.Array, n_clusters: int, *, n_init: int = 10,
                  rows_of: Optional[Sequence[np.ndarray]] = None) -> KMeansResult:
  """k-means (n_init restarts each) of z^cons and of every z^(v), with the keys of
  jax.random.split(key, V + 1) in that order.

  rows_of: optional static row indices per view (the samples that have view v, for missing
  views): view v's k-means then sees those rows only and its other rows carry the consensus
  labels. Without it the V + 1 problems share one compiled k-means run in sequence.
  Returns KMeansResult(labels (V+1, n), centers (V+1, C, D), inertia (V+1,), n_iter (V+1,)).
  """
  keys = jax.random.split(key, z_all.shape[0])
  if rows_of is None:
    return jax.lax.map(lambda a: kmeans(a[0], a[1], n_clusters, n_init=n_init), (keys, z_all))
  runs = [kmeans(keys[0], z_all[0], n_clusters, n_init=n_init)]
  for v, rows in enumerate(rows_of, 1):
    kv = kmeans(keys[v], z_all[v][rows], n_clusters, n_init=n_init)
    runs.append(kv._replace(labels=runs[0].labels.at[rows].set(kv.labels)))
  return jax.tree.map(lambda *a: jnp.stack(a), *runs)


def match_ids(labels: np.ndarray, prev: Optional[np.ndarray], n_clusters: int,
              rows_of: Optional[Sequence[np.ndarray]] = None):
  """Host-side id matching of one pass's partitions (V + 1, n): the consensus ids to the
  previous pass's labels `prev` (None: kept), then each view's ids to the matched consensus
  ids on the rows that have the view.

  Returns (consensus labels (n,) int32 in the matched ids, orders): orders[r] (C,) sorts a
  per-cluster array of partition r into the matched ids (x[orders[r]][c] belongs to cluster c).
  """
  labels = np.asarray(labels)
  perm = np.arange(n_clusters) if prev is None else align_partitions(labels[0], prev, n_clusters)
  lab = perm[labels[0]].astype(np.int32)
  rows_of = rows_of if rows_of is not None else [slice(None)] * (len(labels) - 1)
  views = [align_partitions(labels[v][r], lab[r], n_clusters) for v, r in enumerate(rows_of, 1)]
  return lab, [np.argsort(p) for p in [perm] + views]
