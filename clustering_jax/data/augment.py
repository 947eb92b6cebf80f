"""Image augmentations as pure, jittable JAX functions with explicit keys."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_rotate_shift(key: jax.Array, x: jax.Array, *, max_degrees: float = 10.0,
                        max_shift: float = 0.1) -> jax.Array:
  """Each image rotated by U(-max_degrees, max_degrees) about its centre and shifted by
  U(-max_shift·H, max_shift·H) pixels per axis (bilinear; neighbours outside the image
  count as 0, scipy's mode="grid-constant").
  IDCL App. F; the same pair DEC-DA/ASPC-DA use for digits. x: (b, H, W, C) -> (b, H, W, C)."""
  b, h, w, _ = x.shape
  k1, k2 = jax.random.split(key)
  theta = jnp.deg2rad(jax.random.uniform(k1, (b,), minval=-max_degrees, maxval=max_degrees))
  shift = jax.random.uniform(k2, (b, 2), minval=-1.0, maxval=1.0) * max_shift * jnp.array([h, w])
  rr, cc = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0

  def one(img, th, sh):
    # Inverse map: output pixel -> source location.
    yy, xx = rr - cy - sh[0], cc - cx - sh[1]
    sy = jnp.cos(th) * yy - jnp.sin(th) * xx + cy
    sx = jnp.sin(th) * yy + jnp.cos(th) * xx + cx
    warp = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [sy, sx], order=1, mode="constant")
    return jax.vmap(warp, in_axes=2, out_axes=2)(img)

  return jax.vmap(one)(x, theta, shift)


def random_rotate_shift_flat(key: jax.Array, x: jax.Array, image_shape: tuple,
                             **kwargs) -> jax.Array:
  """random_rotate_shift on flattened images: x (b, H·W·C) -> (b, H·W·C)."""
  img = jnp.reshape(x, (x.shape[0],) + tuple(image_shape))
  return jnp.reshape(random_rotate_shift(key, img, **kwargs), x.shape)
