"""IDCL's transformer autoencoder (TAE, §3 and §4 "Experimental Setup").

Encoder: CNN patch embedding into a grid of 4×4 = 16 patches (kernel = stride = H/4 × W/4,
embedding size I_e = C·H/4·W/4 by default, §4), absolute position encoding (sinusoidal, App. F),
transformer blocks (pre-norm by default; Vaswani's post-norm with norm_first=False, see
TransformerBlock), then the linear block M-512-512-3072-10 on the flattened tokens
(M = 16·I_e). Decoder: the mirror image — linear block 10-3072-512-512-M, tokens + position
encoding, transformer blocks, a per-patch linear map back to pixels and a transpose that
reassembles the patches into the image.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clustering_jax.nets.mlp import MLP


def sinusoidal_positions(n_tokens: int, dim: int) -> np.ndarray:
  """(n_tokens, dim) fixed sine/cosine encoding of Vaswani et al.; odd dims drop the last cos."""
  pos = np.arange(n_tokens)[:, None]
  i = np.arange((dim + 1) // 2)[None, :]
  ang = pos / (10000.0 ** (2 * i / max(dim, 1)))
  pe = np.zeros((n_tokens, 2 * ang.shape[1]), np.float32)
  pe[:, 0::2], pe[:, 1::2] = np.sin(ang), np.cos(ang)
  return pe[:, :dim]


class PositionEncoding(nn.Module):
  """Adds an absolute position encoding to (b, tokens, dim): fixed sinusoidal or learned."""

  kind: str = "sinusoidal"

  @nn.compact
  def __call__(self, x):
    _, t, d = x.shape
    if self.kind == "sinusoidal":
      return x + jnp.asarray(sinusoidal_positions(t, d), x.dtype)[None]
    if self.kind == "learned":
      return x + self.param("pos", nn.initializers.normal(0.02), (1, t, d), x.dtype)
    raise ValueError(f"position encoding must be 'sinusoidal' or 'learned', got {self.kind!r}")


class TransformerBlock(nn.Module):
  """Transformer encoder block (Vaswani et al. 2017): attention and a ReLU FFN, each with a
  residual connection and LayerNorm.

  norm_first=True (default, as ViT): x = x + MHA(LN(x)); x = x + FFN(LN(x)). The residual
  stream is never normalized, which matters here: a token is one patch of C·ph·pw values
  (4 on 8×8 digits), and post-norm LN(x + ·) would remove each patch's mean and scale.
  norm_first=False: Vaswani's post-norm x = LN(x + MHA(x)); x = LN(x + FFN(x)).
  """

  num_heads: int
  mlp_ratio: int = 4
  norm_first: bool = True

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"token dim {d} is not divisible by num_heads={self.num_heads}")
    attn = nn.MultiHeadDotProductAttention(num_heads=self.num_heads)
    ffn = lambda h: nn.Dense(d)(nn.relu(nn.Dense(self.mlp_ratio * d)(h)))
    if self.norm_first:
      h = nn.LayerNorm()(x)
      x = x + attn(h, h)
      return x + ffn(nn.LayerNorm()(x))
    x = nn.LayerNorm()(x + attn(x, x))
    return nn.LayerNorm()(x + ffn(x))


def patch_grid(image_shape: Sequence[int], grid: int = 4):
  """Patch size (ph, pw) for a grid×grid patching of (H, W, C); H and W must divide by grid."""
  h, w, _ = image_shape
  if h % grid or w % grid:
    raise ValueError(f"image {h}x{w} does not split into a {grid}x{grid} patch grid; "
                     f"resize it (IDCL resizes 28x28 to 32x32, App. F)")
  return h // grid, w // grid


def patchify(x: jax.Array, grid: int = 4) -> jax.Array:
  """(b, H, W, C) -> (b, grid², ph·pw·C): row-major grid of non-overlapping patches."""
  b, h, w, c = x.shape
  ph, pw = h // grid, w // grid
  p = x.reshape(b, grid, ph, grid, pw, c).transpose(0, 1, 3, 2, 4, 5)
  return p.reshape(b, grid * grid, ph * pw * c)


def unpatchify(p: jax.Array, patch_shape: Sequence[int], grid: int = 4) -> jax.Array:
  """Inverse of patchify (the decoder's Transpose layer): (b, grid², ph·pw·C) -> (b, H, W, C)."""
  ph, pw, c = patch_shape
  b = p.shape[0]
  x = p.reshape(b, grid, grid, ph, pw, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, grid * ph, grid * pw, c)


class TransformerAutoencoder(nn.Module):
  """Transformer autoencoder of IDCL. `apply(params, x)` returns (z, x_hat) for x (b, H, W, C);
  `method="encode"` / `"decode"` give each half (as nets.MLPAutoencoder).

  Attributes:
    image_shape: (H, W, C) of the input.
    hidden: the linear block's hidden widths (paper: 512-512-3072).
    latent: embedding size d (paper: 10).
    depth, num_heads: transformer blocks per side and attention heads (not given in the paper).
    embed_dim: token size I_e; None = C·H/4·W/4 (the paper's patch-embedding size).
    grid: patches per side (paper: 4, i.e. 16 patches).
    pos_encoding: "sinusoidal" (App. F) or "learned".
    norm_first: pre-norm blocks (default) or Vaswani's post-norm (see TransformerBlock).
  """

  image_shape: Sequence[int]
  hidden: Sequence[int] = (512, 512, 3072)
  latent: int = 10
  depth: int = 1
  num_heads: int = 1
  mlp_ratio: int = 4
  embed_dim: int | None = None
  grid: int = 4
  pos_encoding: str = "sinusoidal"
  norm_first: bool = True

  def setup(self):
    h, w, c = self.image_shape
    ph, pw = patch_grid(self.image_shape, self.grid)
    self._patch = (ph, pw, c)
    self._dim = self.embed_dim or c * ph * pw
    m = self.grid * self.grid * self._dim
    # A convolution with kernel = stride = patch size, written as patchify + Dense (the same
    # map; cheaper on CPU than a strided conv).
    self.patch_embed = nn.Dense(self._dim)
    self.enc_pos = PositionEncoding(self.pos_encoding)
    block = lambda: TransformerBlock(self.num_heads, self.mlp_ratio, self.norm_first)
    self.enc_blocks = [block() for _ in range(self.depth)]
    self.enc_linear = MLP(tuple(self.hidden) + (self.latent,))
    self.dec_linear = MLP(tuple(reversed(self.hidden)) + (m,))
    self.dec_pos = PositionEncoding(self.pos_encoding)
    self.dec_blocks = [block() for _ in range(self.depth)]
    self.unpatch = nn.Dense(ph * pw * c)

  def encode(self, x: jax.Array) -> jax.Array:
    b = x.shape[0]
    t = self.patch_embed(patchify(x, self.grid))  # CNN patch embedding: (b, 16, I_e)
    t = self.enc_pos(t)
    for blk in self.enc_blocks:
      t = blk(t)
    return self.enc_linear(t.reshape(b, -1))  # M-512-512-3072-10

  def decode(self, z: jax.Array) -> jax.Array:
    b = z.shape[0]
    t = self.dec_linear(z).reshape(b, self.grid * self.grid, self._dim)  # 10-3072-512-512-M
    t = self.dec_pos(t)
    for blk in self.dec_blocks:
      t = blk(t)
    return unpatchify(self.unpatch(t), self._patch, self.grid)  # the Transpose layer

  def __call__(self, x: jax.Array):
    z = self.encode(x)
    return z, self.decode(z)


__all__ = ["PositionEncoding", "TransformerAutoencoder", "TransformerBlock", "patch_grid",
           "patchify", "sinusoidal_positions", "unpatchify"]
