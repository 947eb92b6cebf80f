"""MLP and the symmetric MLP autoencoder d-h1-...-hk-latent-hk-...-h1-d."""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu, "selu": nn.selu, "tanh": jnp.tanh,
               "leaky_relu": nn.leaky_relu, "identity": lambda x: x}


def activation(name: str) -> Callable:
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


class MLP(nn.Module):
  """Dense layers with an activation between them (none after the last)."""

  features: Sequence[int]
  act: str = "relu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, f in enumerate(self.features):
      x = nn.Dense(f, name=f"dense_{i}")(x)
      if i < len(self.features) - 1:
        x = activation(self.act)(x)
    return x


class MLPAutoencoder(nn.Module):
  """Encoder d -> hidden... -> latent (linear), decoder latent -> reversed hidden -> d (linear).

  `apply(params, x)` returns (z, x_hat); `method="encode"` / `method="decode"` give each half.
  Inputs of any trailing shape are flattened; x_hat comes back in the input's shape.
  """

  out_dim: int
  hidden: Sequence[int] = (500, 500, 2000)
  latent: int = 10
  act: str = "relu"

  def setup(self):
    self.encoder = MLP(tuple(self.hidden) + (self.latent,), act=self.act)
    self.decoder = MLP(tuple(reversed(self.hidden)) + (self.out_dim,), act=self.act)

  def encode(self, x: jax.Array) -> jax.Array:
    return self.encoder(x.reshape(x.shape[0], -1))

  def decode(self, z: jax.Array) -> jax.Array:
    return self.decoder(z)

  def __call__(self, x: jax.Array):
    z = self.encode(x)
    return z, self.decode(z).reshape(x.shape)
