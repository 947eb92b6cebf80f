"""Embedded datasets (no network): digits, digits-mv, blobs."""

from __future__ import annotations

import numpy as np

from clustering_jax.data.container import Dataset


def digits() -> Dataset:
  """scikit-learn's 1,797 8x8 digit images as (n, 8, 8, 1) in [0, 1], 10 classes."""
  from sklearn.datasets import load_digits
  d = load_digits()
  x = (d.images.astype(np.float32) / 16.0)[..., None]
  return Dataset(views=(x,), labels=d.target.astype(np.int64), name="digits", n_clusters=10,
                 kind="image", image_shape=(8, 8, 1))


def _orientation_histograms(img: np.ndarray, n_bins: int = 8, cells: int = 2) -> np.ndarray:
  """Gradient-orientation histograms weighted by magnitude on a cells x cells grid."""
  gy, gx = np.gradient(img, axis=(1, 2))
  mag = np.hypot(gx, gy)
  ang = np.mod(np.arctan2(gy, gx), np.pi)  # unsigned orientation in [0, pi)
  b = np.minimum((ang / np.pi * n_bins).astype(int), n_bins - 1)
  n, h, w = img.shape
  ch, cw = h // cells, w // cells
  out = np.zeros((n, cells, cells, n_bins), np.float32)
  for i in range(cells):
    for j in range(cells):
      sl = (slice(None), slice(i * ch, (i + 1) * ch), slice(j * cw, (j + 1) * cw))
      bb, mm = b[sl].reshape(n, -1), mag[sl].reshape(n, -1)
      for k in range(n_bins):
        out[:, i, j, k] = np.sum(mm * (bb == k), axis=1)
  return out.reshape(n, -1)


def digits_multiview() -> Dataset:
  """Three deterministic views of the same 1,797 digits.

  view 0 (64): raw pixels;
  view 1 (32): projection profiles — 8 row sums, 8 column sums — plus the 16
         means of the 2x2 blocks;
  view 2 (32): gradient-orientation histograms, 8 unsigned bins on a 2x2 grid
         of 4x4 cells, weighted by gradient magnitude.
  """
  from sklearn.datasets import load_digits
  d = load_digits()
  img = d.images.astype(np.float32) / 16.0
  n = img.shape[0]
  pixels = img.reshape(n, 64)
  profiles = np.concatenate([img.sum(axis=2), img.sum(axis=1),
                             img.reshape(n, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(n, 16)], axis=1)
  hog = _orientation_histograms(img)
  return Dataset(views=(pixels, profiles.astype(np.float32), hog), labels=d.target.astype(np.int64),
                 name="digits-mv", n_clusters=10, kind="vector")


def blobs(n_samples: int = 600, n_clusters: int = 4, n_features: int = 8, n_views: int = 1, *,
          imbalance: float = 4.0, spread: float = 1.0, seed: int = 0) -> Dataset:
  """Synthetic Gaussian blobs with imbalanced cluster sizes (largest/smallest ~ imbalance).

  Each view is a fixed random linear map of a shared latent point plus view noise,
  so all views agree on the clusters.
  """
  rng = np.random.default_rng(seed)
  w = np.geomspace(imbalance, 1.0, n_clusters)
  sizes = np.maximum(1, np.floor(w / w.sum() * n_samples).astype(int))
  sizes[0] += n_samples - sizes.sum()
  y = np.repeat(np.arange(n_clusters), sizes)
  centers = rng.normal(0, 6.0, (n_clusters, n_features))
  z = centers[y] + rng.normal(0, spread, (n_samples, n_features))
  views = []
  for _ in range(n_views):
    a = rng.normal(0, 1.0, (n_features, n_features)) / np.sqrt(n_features)
    views.append((z @ a + 0.1 * rng.normal(size=z.shape)).astype(np.float32) if n_views > 1
                 else z.astype(np.float32))
  perm = rng.permutation(n_samples)
  return Dataset(views=tuple(v[perm] for v in views), labels=y[perm].astype(np.int64),
                 name="blobs", n_clusters=n_clusters, kind="vector")
