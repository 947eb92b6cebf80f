"""TFDS adapter: `tfds:<name>[:<split>]` into the Dataset container.

Reads prepared data with `tfds.data_source` (no TensorFlow needed). A download
happens only when asked (download=True): offline, TFDS retries for minutes
instead of failing, so by default a missing dataset fails at once with a message
saying how to prepare the data directory.

Splits may be TFDS split expressions, e.g. `tfds:cifar10:train+test` (the 60,000 images the
HaDis paper clusters) or `tfds:stl10:train+test` (its 13,000 labelled STL-10 images). Images
come back as (n, H, W, C) float32 in [0, 1] (uint8 pixels divided by 255).
"""

from __future__ import annotations

import numpy as np

from clustering_jax.data.container import DataError, Dataset, from_arrays


def parse_spec(spec: str):
  parts = spec.split(":")
  if parts[0] != "tfds" or len(parts) not in (2, 3) or not parts[1]:
    raise DataError(f"bad TFDS spec {spec!r}; use tfds:<name>[:<split>], e.g. tfds:mnist:test")
  return parts[1], (parts[2] if len(parts) == 3 else "test")


def load_tfds(spec: str, *, data_dir=None, download: bool = False, n_clusters=None,
              max_samples=None, label_key: str = "label") -> Dataset:
  """Loads a prepared TFDS split as an image Dataset.

  label_key: the feature holding the ground truth, e.g. "coarse_label" for CIFAR-100's 20
  superclasses (the "CIFAR-20" of the clustering literature). Labels are evaluation-only. A
  split whose labels are all negative (STL-10's `unlabelled`, label -1) has no labels.
  """
  name, split = parse_spec(spec)
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise DataError("tensorflow-datasets is not installed: pip install tensorflow-datasets") from None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:
    raise DataError(f"unknown TFDS dataset {name!r} ({e})") from None
  if download:
    try:
      builder.download_and_prepare()
    except Exception as e:
      raise DataError(f"TFDS download of {name!r} failed ({type(e).__name__}: {e})") from None
  try:
    src = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:
    raise DataError(
        f"TFDS dataset {name!r} split {split!r} is not prepared in data dir "
        f"{data_dir or builder.data_dir!r}. Prepare it once with network access "
        f"(`python experiments/run.py ... --dataset {spec} --download`, or "
        f"`tfds build {name} --data_dir DIR`), then pass --data-dir DIR. ({type(e).__name__})"
    ) from None
  n = len(src) if max_samples is None else min(len(src), int(max_samples))
  if n == 0:
    raise DataError(f"TFDS {name}:{split} is empty")
  rows = [src[i] for i in range(n)]
  first = rows[0]
  img_key = "image" if "image" in first else next(
      (k for k, v in first.items() if np.ndim(v) == 3), None)
  if img_key is None:
    raise DataError(f"TFDS {name}: no image feature found (features: {sorted(first)})")
  raw = np.stack([np.asarray(r[img_key]) for r in rows])
  x = raw.astype(np.float32)
  if raw.dtype == np.uint8 or x.max(initial=0) > 1.0:
    x = x / 255.0
  if label_key != "label" and label_key not in first:
    raise DataError(f"TFDS {name}: no feature {label_key!r} (features: {sorted(first)})")
  y = np.asarray([int(r[label_key]) for r in rows]) if label_key in first else None
  if y is not None and np.all(y < 0):
    y = None
  info_classes = None
  try:
    info_classes = builder.info.features[label_key].num_classes
  except Exception:
    pass
  k = n_clusters or info_classes or (len(np.unique(y)) if y is not None else None)
  if k is None:
    raise DataError(f"TFDS {name}: no labels; pass n_clusters")
  return from_arrays(x, n_clusters=int(k), labels=y, name=f"tfds:{name}:{split}", kind="image")
