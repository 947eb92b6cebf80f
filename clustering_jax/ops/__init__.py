"""Pure array functions: arrays in, arrays out; no modules, globals or I/O."""

from clustering_jax.ops.distances import cluster_sums, dot_hi, knn, map_row_blocks, sq_dists
from clustering_jax.ops.kmeans import (KMeansResult, assign, kmeans, kmeans_plusplus, lloyd,
                                       normalize, partition_cost)

__all__ = ["KMeansResult", "assign", "cluster_sums", "dot_hi", "kmeans", "kmeans_plusplus", "knn", "lloyd",
           "map_row_blocks", "normalize", "partition_cost", "sq_dists"]
