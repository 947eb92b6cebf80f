"""Shared test fixtures: CPU-only JAX, a persistent compile cache, the real-data folder."""

import os
from pathlib import Path

# Before jax is imported anywhere: CPU only, and a compile cache so reruns skip most compiles.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/clustering_jax_test_jax_cache")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
  """../shared/data next to the repository (Hdigit.mat, prokaryotic.mat); skips when absent."""
  d = (REPO / ".." / "shared" / "data").resolve()
  if not (d / "Hdigit.mat").exists() or not (d / "prokaryotic.mat").exists():
    pytest.skip(f"real benchmark files not found in {d}")
  return d


@pytest.fixture(scope="session")
def digits_flat():
  """scikit-learn digits as (1797, 64) float32 in [0, 1] and the labels."""
  import numpy as np
  from sklearn.datasets import load_digits
  d = load_digits()
  return (d.data / 16.0).astype(np.float32), d.target


@pytest.fixture(scope="session")
def sklearn_digits(digits_flat):
  """scikit-learn KMeans(n_clusters=10, n_init=10, random_state=0) fitted on digits_flat."""
  from sklearn.cluster import KMeans
  return KMeans(10, n_init=10, random_state=0).fit(digits_flat[0])

