"""data/augment.py: the rotate-and-shift augmentation against scipy's map_coordinates."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from clustering_jax.data.augment import random_rotate_shift, random_rotate_shift_flat


def _images(n=4, h=8, w=8, c=1, seed=2):
  return np.random.default_rng(seed).uniform(size=(n, h, w, c)).astype(np.float32)


def test_matches_scipy_reference():
  x = _images(n=3, h=10, w=8, c=2)
  key = jax.random.key(5)
  out = np.asarray(random_rotate_shift(key, jnp.asarray(x), max_degrees=30.0, max_shift=0.2))
  chex.assert_shape(out, x.shape)
  # Same draws as the function, then the inverse warp in NumPy/scipy.
  k1, k2 = jax.random.split(key)
  theta = np.deg2rad(np.asarray(jax.random.uniform(k1, (3,), minval=-30.0, maxval=30.0)))
  shift = np.asarray(jax.random.uniform(k2, (3, 2), minval=-1.0, maxval=1.0)) * 0.2 * [10, 8]
  rr, cc = np.meshgrid(np.arange(10.0), np.arange(8.0), indexing="ij")
  cy, cx = 4.5, 3.5
  for i in range(3):
    yy, xx = rr - cy - shift[i, 0], cc - cx - shift[i, 1]
    sy = np.cos(theta[i]) * yy - np.sin(theta[i]) * xx + cy
    sx = np.sin(theta[i]) * yy + np.cos(theta[i]) * xx + cx
    for ch in range(2):
      ref = ndimage.map_coordinates(x[i, :, :, ch], [sy, sx], order=1, mode="grid-constant")
      np.testing.assert_allclose(out[i, :, :, ch], ref, atol=1e-5)


def test_identity_and_integer_shift():
  x = jnp.asarray(_images())
  xi = random_rotate_shift(jax.random.key(0), x, max_degrees=0.0, max_shift=0.0)
  np.testing.assert_allclose(np.asarray(xi), np.asarray(x), atol=1e-5)
  xa = random_rotate_shift(jax.random.key(0), x)
  assert not np.allclose(np.asarray(xa), np.asarray(x))
  # The warp is per sample: different images get different draws.
  same = jnp.broadcast_to(x[:1], x.shape)
  xs = np.asarray(random_rotate_shift(jax.random.key(1), same))
  assert not np.allclose(xs[0], xs[1])


def test_flat_version_and_degenerate_inputs():
  x = _images(n=5, h=6, w=6)
  key = jax.random.key(3)
  flat = random_rotate_shift_flat(key, jnp.asarray(x.reshape(5, -1)), (6, 6, 1))
  img = random_rotate_shift(key, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(flat), np.asarray(img).reshape(5, -1), atol=1e-6)
  zeros = random_rotate_shift(key, jnp.zeros((2, 6, 6, 1)))
  chex.assert_tree_all_finite(zeros)
  np.testing.assert_allclose(np.asarray(zeros), 0.0)
  # Bilinear warp of values in [0, 1] stays in [0, 1].
  assert float(jnp.min(img)) >= -1e-6 and float(jnp.max(img)) <= 1 + 1e-6
