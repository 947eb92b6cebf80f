"""Simulated missing views for incomplete multi-view experiments (LargeMvC-Net §4.1.1).

`simulate_missing(key_or_seed, n, n_views, rate)` returns an (n, V) bool mask, True where
view v of sample i is present, and every sample keeps at least one view.

Two protocols (the paper's sentence, "we randomly apply a sample missing rate to each view,
while ensuring every sample retains at least one complete view", allows both readings):

* `"per_sample"` (default): round(rate * n) samples, drawn at random, are incomplete; each
  drops a uniformly drawn non-empty proper subset of its views. `rate` is the fraction of
  incomplete samples, the usual protocol of deep incomplete multi-view clustering. It is
  defined for every rate in [0, 1) and any V >= 2 (with V = 2 each incomplete sample keeps
  one of its two views, so each view misses about rate / 2 of the samples).
* `"per_view"`: each view independently misses round(rate * n) random samples; samples left
  with no view get one of their views back at random (so a view can end up missing slightly
  fewer than rate * n). Needs rate <= (V - 1) / V, else it is infeasible with every sample
  keeping a view (V = 2: rate <= 0.5).
"""

from __future__ import annotations

import numpy as np

MODES = ("per_sample", "per_view")


def _rng(key_or_seed) -> np.random.Generator:
  if isinstance(key_or_seed, (int, np.integer)):
    return np.random.default_rng(int(key_or_seed))
  import jax  # a PRNG key (new-style typed or raw uint32): seed numpy from its bits
  if jax.dtypes.issubdtype(key_or_seed.dtype, jax.dtypes.prng_key):
    key_or_seed = jax.random.key_data(key_or_seed)
  data = np.asarray(key_or_seed)
  return np.random.default_rng(data.astype(np.uint64).ravel().tolist())


def simulate_missing(key_or_seed, n: int, n_views: int, rate: float, *,
                     mode: str = "per_sample") -> np.ndarray:
  """Random view-availability mask.

  Args:
    key_or_seed: an int seed or a jax PRNG key; same value -> same mask.
    n: number of samples; n_views: V.
    rate: missing rate in [0, 1) (see the module docstring for the two protocols).
    mode: "per_sample" (default) or "per_view".
  Returns:
    (n, V) bool, True = present; every row has at least one True.
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"missing rate must be in [0, 1), got {rate}")
  if n < 1 or n_views < 1:
    raise ValueError(f"need n >= 1 and n_views >= 1, got n={n}, n_views={n_views}")
  mask = np.ones((n, n_views), bool)
  if rate == 0.0:
    return mask
  if n_views == 1:
    raise ValueError("cannot drop views from single-view data: every sample must keep one view")
  rng = _rng(key_or_seed)
  n_miss = int(round(rate * n))
  if mode == "per_sample":
    rows = rng.choice(n, size=n_miss, replace=False)
    # Number of views each incomplete sample drops: uniform over the non-empty proper
    # subsets means P(k dropped) is proportional to C(V, k), k = 1 .. V-1.
    ks = np.arange(1, n_views)
    from math import comb
    w = np.array([comb(n_views, int(k)) for k in ks], np.float64)
    drop = rng.choice(ks, size=n_miss, p=w / w.sum())
    for r, k in zip(rows, drop):
      mask[r, rng.choice(n_views, size=int(k), replace=False)] = False
    return mask
  if rate > (n_views - 1) / n_views + 1e-12:
    raise ValueError(f"per_view missing rate {rate} > (V-1)/V = {(n_views - 1) / n_views:.3f} "
                     f"cannot keep a view for every sample with V={n_views}")
  for v in range(n_views):
    mask[rng.choice(n, size=n_miss, replace=False), v] = False
  empty = np.flatnonzero(~mask.any(axis=1))
  mask[empty, rng.integers(0, n_views, size=empty.size)] = True
  return mask
