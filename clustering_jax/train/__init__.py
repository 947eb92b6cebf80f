"""Shared loop pieces: seeded batching, progress/logging, checkpoint/resume, NaN guard."""

from clustering_jax.train.batching import (batch_matrix, batches, epoch_key, epoch_permutation,
                                           n_batches, subset_permutation)
from clustering_jax.train.run import NonFiniteError, Run, quiet_run

__all__ = ["NonFiniteError", "Run", "batch_matrix", "batches", "epoch_key", "epoch_permutation", "n_batches",
           "quiet_run", "subset_permutation"]
