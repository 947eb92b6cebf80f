"""flax.linen modules."""

from clustering_jax.nets.mlp import MLP, MLPAutoencoder, activation

__all__ = ["MLP", "MLPAutoencoder", "activation"]
