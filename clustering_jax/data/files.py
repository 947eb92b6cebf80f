"""Multi-view files: .mat (v5 through scipy, v7.3 through h5py) and .npz.

.mat layouts (both found in the community's benchmark files):
  * `X`: a 1xV (or Vx1) cell array of n x d_v matrices, `Y` (or `y`, `gt`, `truth`) n x 1 labels;
  * one key per view plus a label key (`truth`, `Y`, `y`, `gt`, `labels`).
.npz: arrays `X0`, `X1`, ... (or a single `X`) and optional labels `y`; an array of
rank 4 is taken as (n, H, W, C) images, rank 3 as (n, H, W).
"""

from __future__ import annotations

import os
import re
import zipfile

import numpy as np

from clustering_jax.data.container import DataError, Dataset, from_arrays

LABEL_KEYS = ("Y", "y", "gt", "truth", "labels", "label", "gnd")


def _n_classes(y):
  return int(len(np.unique(y))) if y is not None else None


def _finish(views, y, name, n_clusters):
  views = [np.asarray(v) for v in views]
  if y is not None:
    y = np.asarray(y).reshape(-1)
  # Files sometimes store views as d x n: orient each view along the label count.
  if y is not None:
    views = [v.T if (v.ndim == 2 and v.shape[0] != y.size and v.shape[1] == y.size) else v
             for v in views]
  k = n_clusters or _n_classes(y)
  if k is None:
    raise DataError(f"{name}: the file has no labels; pass n_clusters explicitly")
  return from_arrays([v.astype(np.float32) for v in views], n_clusters=k, labels=y, name=name)


def _mat_v5(path):
  import scipy.io as sio
  try:
    return sio.loadmat(path)
  except NotImplementedError:
    return None  # v7.3: HDF5
  except Exception as e:
    raise DataError(f"cannot read {path}: not a readable .mat file ({e})") from None


def _mat_v73(path):
  import h5py
  out = {}
  try:
    with h5py.File(path, "r") as f:
      for k in f.keys():
        if k.startswith("#"):
          continue
        d = f[k]
        if isinstance(d, h5py.Dataset) and d.dtype == h5py.ref_dtype:
          refs = d[()].ravel()
          cells = np.empty(len(refs), dtype=object)  # np.array(list) would broadcast same-n views
          for i, r in enumerate(refs):
            cells[i] = np.array(f[r]).T
          out[k] = cells
        elif isinstance(d, h5py.Dataset):
          out[k] = np.array(d).T  # MATLAB is column-major
  except OSError as e:
    raise DataError(f"cannot read {path}: not a readable .mat file ({e})") from None
  return out


def load_mat(path: str, *, name: str | None = None, n_clusters: int | None = None) -> Dataset:
  """Reads a multi-view .mat file in either layout; v7.3 files go through h5py."""
  name = name or os.path.splitext(os.path.basename(path))[0]
  import h5py
  # v7.3 files are HDF5 (with or without MATLAB's 512-byte header): go straight to h5py.
  m = None if h5py.is_hdf5(path) else _mat_v5(path)
  if m is None:
    m = _mat_v73(path)
  m = {k: v for k, v in m.items() if not k.startswith("__")}
  ykey = next((k for k in LABEL_KEYS if k in m), None)
  y = m.pop(ykey) if ykey else None
  if "X" in m and isinstance(m["X"], np.ndarray) and m["X"].dtype == object:
    views = list(m["X"].ravel())
  else:
    views = [v for k, v in sorted(m.items()) if isinstance(v, np.ndarray) and v.ndim == 2
             and np.issubdtype(v.dtype, np.number)]
    # keep the file's key order where possible (scipy preserves it)
    order = [k for k in m if isinstance(m[k], np.ndarray) and m[k].ndim == 2
             and np.issubdtype(m[k].dtype, np.number)]
    views = [m[k] for k in order]
  if not views:
    raise DataError(f"{path}: no view matrices found (keys: {sorted(m)})")
  return _finish(views, y, name, n_clusters)


def load_npz(path: str, *, name: str | None = None, n_clusters: int | None = None) -> Dataset:
  """Reads X0, X1, ... (or X) and optional y from an .npz file."""
  name = name or os.path.splitext(os.path.basename(path))[0]
  try:
    f = np.load(path, allow_pickle=False)
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise DataError(f"cannot read {path}: not a readable .npz file ({e})") from None
  with f:
    keys = sorted((k for k in f.files if re.fullmatch(r"X\d+", k)), key=lambda k: int(k[1:]))
    if not keys and "X" in f.files:
      keys = ["X"]
    if not keys:
      raise DataError(f"{path}: expected arrays X0, X1, ... or X; found {f.files}")
    views = [f[k] for k in keys]
    y = f["y"] if "y" in f.files else None
  if len(views) == 1 and views[0].ndim in (3, 4):
    k = n_clusters or _n_classes(y)
    if k is None:
      raise DataError(f"{name}: the file has no labels; pass n_clusters explicitly")
    x = views[0].astype(np.float32)
    if x.max(initial=0) > 1.0:
      x = x / 255.0
    return from_arrays(x, n_clusters=k, labels=y, name=name, kind="image")
  return _finish(views, y, name, n_clusters)


def load_file(path: str, **kw) -> Dataset:
  if not os.path.exists(path):
    raise DataError(f"file not found: {path}")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".mat":
    return load_mat(path, **kw)
  if ext == ".npz":
    return load_npz(path, **kw)
  raise DataError(f"unsupported file type {ext!r} for {path}; use .mat or .npz")
