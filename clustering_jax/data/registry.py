"""Dataset names -> loaders, and the data-directory rule.

Data directory: the `data_dir` argument (CLI --data-dir) > the environment variable
CLUSTERING_JAX_DATA > ~/clustering_jax_data. Files needed there: Hdigit.mat
(hdigit, hdigit-mnist, hdigit-usps) and prokaryotic.mat (prokaryotic).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from clustering_jax.data import builtin
from clustering_jax.data.container import DataError, Dataset
from clustering_jax.data.files import load_file
from clustering_jax.data.scaling import scale_views
from clustering_jax.data.tfds_adapter import load_tfds

ENV_VAR = "CLUSTERING_JAX_DATA"
DEFAULT_DATA_DIR = Path.home() / "clustering_jax_data"


def resolve_data_dir(data_dir: Optional[str] = None) -> Path:
  return Path(data_dir or os.environ.get(ENV_VAR) or DEFAULT_DATA_DIR)


def _file(data_dir, fname, name):
  d = resolve_data_dir(data_dir)
  p = d / fname
  if not p.exists():
    raise DataError(
        f"dataset {name!r} needs {fname} in the data directory {d} (missing). Pass "
        f"--data-dir DIR (or set {ENV_VAR}) to the folder holding {fname}.")
  return str(p)


def _hdigit(data_dir):
  return load_file(_file(data_dir, "Hdigit.mat", "hdigit"), name="hdigit")


def _hdigit_view_as_images(data_dir, view, side, name, column_major):
  mv = _hdigit(data_dir)
  x = mv.views[view]
  n = x.shape[0]
  if x.shape[1] != side * side:
    raise DataError(f"{name}: Hdigit view {view} has {x.shape[1]} features, not {side}x{side}")
  img = x.reshape(n, side, side)
  if column_major:  # the USPS view is stored MATLAB-style; the MNIST view row-major
    img = img.transpose(0, 2, 1)
  img = (img / max(float(img.max()), 1.0)).astype(np.float32)[..., None]
  return Dataset(views=(img,), labels=mv.labels, name=name, n_clusters=10, kind="image",
                 image_shape=(side, side, 1))


_NAMED = {
    "digits": lambda data_dir: builtin.digits(),
    "digits-mv": lambda data_dir: builtin.digits_multiview(),
    "blobs": lambda data_dir: builtin.blobs(),
    "blobs-mv": lambda data_dir: builtin.blobs(n_views=3),
    "hdigit": _hdigit,
    "hdigit-mnist": lambda data_dir: _hdigit_view_as_images(data_dir, 0, 28, "hdigit-mnist", False),
    "hdigit-usps": lambda data_dir: _hdigit_view_as_images(data_dir, 1, 16, "hdigit-usps", True),
    "prokaryotic": lambda data_dir: load_file(_file(data_dir, "prokaryotic.mat", "prokaryotic"),
                                              name="prokaryotic"),
}


def known_datasets() -> list:
  return sorted(_NAMED) + ["tfds:<name>[:<split>]", "<path>.mat", "<path>.npz"]


def load_dataset(name: str, data_dir: Optional[str] = None, *, scaling: Optional[str] = None,
                 download: bool = False, n_clusters: Optional[int] = None,
                 max_samples: Optional[int] = None) -> Dataset:
  """Loads a dataset by name, file path or TFDS spec.

  Args:
    name: a built-in name (see known_datasets()), a path to a .mat/.npz file, or
      `tfds:<name>[:<split>]`.
    data_dir: where named files / prepared TFDS data live (see module docstring).
    scaling: None (leave as loaded), "minmax", "standard" or "none", applied per view
      to vector views; images stay in [0, 1].
    download: allow TFDS to download (off by default: offline it would hang).
    n_clusters: override the number of clusters (default: number of classes).
    max_samples: keep only the first max_samples samples (quick runs).
  """
  if name.startswith("tfds:"):
    ds = load_tfds(name, data_dir=data_dir, download=download, n_clusters=n_clusters,
                   max_samples=max_samples)
  elif name.endswith((".mat", ".npz")) or os.sep in name:
    ds = load_file(name, n_clusters=n_clusters)
  elif name in _NAMED:
    ds = _NAMED[name](data_dir)
  else:
    raise DataError(f"unknown dataset {name!r}; known: {', '.join(known_datasets())}")
  if max_samples is not None and not name.startswith("tfds:") and max_samples < ds.n_samples:
    keep = slice(0, int(max_samples))
    ds = ds.replace(views=tuple(v[keep] for v in ds.views),
                    labels=None if ds.labels is None else ds.labels[keep],
                    mask=None if ds.mask is None else ds.mask[keep])
  if n_clusters is not None and n_clusters != ds.n_clusters:
    ds = ds.replace(n_clusters=int(n_clusters))
  if scaling is not None:
    ds = scale_views(ds, scaling)
  return ds
