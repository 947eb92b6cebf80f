"""Data layer: container validation, loaders, data-dir rule, scaling, TFDS adapter."""

import re
import time

import h5py
import numpy as np
import pytest
import scipy.io as sio

from clustering_jax.data import (DataError, Dataset, from_arrays, known_datasets, load_dataset,
                                 resolve_data_dir, scale_array, scale_views)
from clustering_jax.data import builtin, registry
from clustering_jax.data.files import load_mat, load_npz

RNG = np.random.default_rng(0)


def _views(n=12, dims=(5, 3)):
  return tuple(RNG.normal(size=(n, d)).astype(np.float32) for d in dims)


# -- bad input: each raises a specific DataError ------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_values_rejected(bad):
  v = _views()
  v[1][3, 2] = bad
  with pytest.raises(DataError, match=r"view 1 contains 1 NaN/Inf values"):
    Dataset(views=v, labels=None, name="t", n_clusters=2)


def test_views_with_different_sample_counts():
  a, b = _views()
  with pytest.raises(DataError, match=r"different sample counts \(\[12, 11\]\)"):
    Dataset(views=(a, b[:11]), labels=None, name="t", n_clusters=2)


@pytest.mark.parametrize("shape", [(0, 4), (12, 0)])
def test_empty_view(shape):
  a, _ = _views()
  with pytest.raises(DataError, match=r"view 1 is empty"):
    Dataset(views=(a, np.zeros(shape, np.float32)), labels=None, name="t", n_clusters=2)


def test_no_views():
  with pytest.raises(DataError, match="at least one view"):
    Dataset(views=(), labels=None, name="t", n_clusters=2)


@pytest.mark.parametrize("k,msg", [(1, r"n_clusters must be an integer >= 2, got 1"),
                                   (0, r"n_clusters must be an integer >= 2, got 0"),
                                   (13, r"n_clusters=13 exceeds the number of samples \(12\)")])
def test_bad_n_clusters(k, msg):
  with pytest.raises(DataError, match=msg):
    Dataset(views=_views(), labels=None, name="t", n_clusters=k)


@pytest.mark.parametrize("shape", [(6, 8, 8), (6, 8, 8, 1, 1), (6, 64)])
def test_images_of_wrong_rank(shape):
  with pytest.raises(DataError, match=r"images must have rank 4 \(n, H, W, C\)"):
    Dataset(views=(np.zeros(shape, np.float32),), labels=None, name="t", n_clusters=2,
            kind="image")


def test_image_data_single_view():
  img = np.zeros((6, 4, 4, 1), np.float32)
  with pytest.raises(DataError, match="image data holds exactly one view"):
    Dataset(views=(img, img), labels=None, name="t", n_clusters=2, kind="image")


def test_bad_mask():
  v = _views()
  with pytest.raises(DataError, match=r"mask shape \(12, 3\) != \(n, n_views\) = \(12, 2\)"):
    Dataset(views=v, labels=None, name="t", n_clusters=2, mask=np.ones((12, 3), bool))
  mask = np.ones((12, 2), bool)
  mask[4] = False
  with pytest.raises(DataError, match="every sample needs at least one present view"):
    Dataset(views=v, labels=None, name="t", n_clusters=2, mask=mask)


def test_labels_of_wrong_length():
  with pytest.raises(DataError, match=r"labels shape \(11,\) != \(12,\)"):
    Dataset(views=_views(), labels=np.zeros(11, np.int64), name="t", n_clusters=2)


def test_missing_file(tmp_path):
  p = tmp_path / "nope.mat"
  with pytest.raises(DataError, match=r"file not found: .*nope\.mat"):
    load_dataset(str(p))


@pytest.mark.parametrize("ext,kind", [(".mat", "mat"), (".npz", "npz")])
def test_corrupt_file(tmp_path, ext, kind):
  p = tmp_path / f"bad{ext}"
  p.write_bytes(b"this is not a data file at all" * 20)
  with pytest.raises(DataError, match=rf"cannot read .*bad\{ext}: not a readable \.{kind} file"):
    load_dataset(str(p))


def test_truncated_hdf5_mat(tmp_path):
  p = tmp_path / "trunc.mat"
  _write_v73(p, [np.ones((10, 3))], np.arange(10) % 2)
  data = p.read_bytes()
  p.write_bytes(data[:len(data) // 3])
  with pytest.raises(DataError, match=r"cannot read .*trunc\.mat"):
    load_dataset(str(p))


def test_unknown_dataset_lists_known():
  with pytest.raises(DataError) as e:
    load_dataset("mnistt")
  msg = str(e.value)
  assert "unknown dataset 'mnistt'" in msg
  for name in ("digits", "digits-mv", "blobs", "hdigit", "hdigit-mnist", "hdigit-usps",
               "prokaryotic", "tfds:<name>[:<split>]"):
    assert name in msg
  assert set(registry._NAMED) <= set(known_datasets())


def test_unsupported_extension(tmp_path):
  p = tmp_path / "x.csv"
  p.write_text("1,2\n")
  with pytest.raises(DataError, match=r"unsupported file type '\.csv'"):
    load_dataset(str(p))


def test_unknown_scaling():
  with pytest.raises(DataError, match=r"unknown scaling 'zscore'; choose one of"):
    load_dataset("blobs", scaling="zscore")


# -- built-in sets --------------------------------------------------------------------------------
def test_digits():
  ds = load_dataset("digits")
  assert ds.kind == "image" and ds.views[0].shape == (1797, 8, 8, 1)
  assert ds.views[0].dtype == np.float32 and ds.image_shape == (8, 8, 1)
  assert ds.views[0].min() == 0.0 and ds.views[0].max() == 1.0
  assert ds.n_clusters == 10 and sorted(np.unique(ds.labels)) == list(range(10))
  assert ds.concat().shape == (1797, 64)


def test_digits_multiview_deterministic():
  a, b = load_dataset("digits-mv"), load_dataset("digits-mv")
  assert a.n_views == 3 and a.kind == "vector" and a.n_clusters == 10
  assert [v.shape for v in a.views] == [(1797, 64), (1797, 32), (1797, 32)]
  for va, vb in zip(a.views, b.views):
    assert va.dtype == np.float32
    np.testing.assert_array_equal(va, vb)
  np.testing.assert_array_equal(a.labels, b.labels)
  # The views are what the docstring says, recomputed here from the raw digits.
  img = load_dataset("digits").views[0][..., 0]
  np.testing.assert_allclose(a.views[0], img.reshape(-1, 64))
  np.testing.assert_allclose(a.views[1][:, :8], img.sum(axis=2), rtol=1e-6)
  np.testing.assert_allclose(a.views[1][:, 8:16], img.sum(axis=1), rtol=1e-6)
  np.testing.assert_allclose(a.views[1][5, 16], img[5, :2, :2].mean(), rtol=1e-6)
  # Orientation histograms are magnitude-weighted: per image they sum to the total magnitude.
  gy, gx = np.gradient(img, axis=(1, 2))
  np.testing.assert_allclose(a.views[2].sum(axis=1), np.hypot(gx, gy).sum(axis=(1, 2)), rtol=1e-4)
  assert (a.views[2] >= 0).all()


def test_blobs_imbalanced_multiview():
  ds = builtin.blobs(n_samples=300, n_clusters=4, n_features=5, n_views=3, imbalance=4.0)
  assert ds.n_views == 3 and all(v.shape == (300, 5) for v in ds.views)
  sizes = np.bincount(ds.labels)
  assert sizes.sum() == 300 and len(sizes) == 4
  assert sizes.max() / sizes.min() > 2.5
  np.testing.assert_array_equal(ds.views[0], builtin.blobs(300, 4, 5, 3).views[0])
  assert not np.array_equal(ds.views[0], builtin.blobs(300, 4, 5, 3, seed=1).views[0])
  assert load_dataset("blobs-mv").n_views == 3


# -- files --------------------------------------------------------------------------------------
def test_mat_v5_cell_layout(tmp_path):
  a, b = _views(n=30, dims=(4, 6))
  y = (np.arange(30) % 3 + 1).reshape(-1, 1).astype(np.uint8)
  cells = np.empty((1, 2), dtype=object)
  cells[0, 0], cells[0, 1] = a.astype(np.float64), b.astype(np.float64)
  sio.savemat(tmp_path / "c.mat", {"X": cells, "Y": y})
  ds = load_dataset(str(tmp_path / "c.mat"))
  assert ds.name == "c" and ds.n_views == 2 and ds.n_clusters == 3
  np.testing.assert_allclose(ds.views[0], a)
  np.testing.assert_allclose(ds.views[1], b)
  np.testing.assert_array_equal(ds.labels, np.arange(30) % 3)  # 1..3 -> 0..2


def test_mat_v5_cell_layout_d_by_n(tmp_path):
  """Views stored d x n (transposed) are turned to n x d using the label count."""
  a, b = _views(n=30, dims=(4, 6))
  cells = np.empty((2, 1), dtype=object)
  cells[0, 0], cells[1, 0] = a.T, b.T
  sio.savemat(tmp_path / "t.mat", {"X": cells, "y": np.arange(30) % 2})
  ds = load_mat(str(tmp_path / "t.mat"))
  assert [v.shape for v in ds.views] == [(30, 4), (30, 6)]
  np.testing.assert_allclose(ds.views[1], b)


def test_mat_v5_one_key_per_view(tmp_path):
  a, b, c = _views(n=25, dims=(3, 7, 2))
  truth = (np.arange(25) % 4).reshape(-1, 1)
  sio.savemat(tmp_path / "k.mat", {"text": a, "proteome": b, "genes": c, "truth": truth})
  ds = load_dataset(str(tmp_path / "k.mat"))
  assert ds.n_views == 3 and ds.n_clusters == 4
  np.testing.assert_allclose(ds.views[0], a)   # the file's key order is kept
  np.testing.assert_allclose(ds.views[1], b)
  np.testing.assert_allclose(ds.views[2], c)
  np.testing.assert_array_equal(ds.labels, truth.ravel())


def test_mat_without_labels_needs_n_clusters(tmp_path):
  sio.savemat(tmp_path / "u.mat", {"A": np.ones((5, 2)), "B": np.zeros((5, 3))})
  with pytest.raises(DataError, match="no labels; pass n_clusters"):
    load_dataset(str(tmp_path / "u.mat"))
  assert load_dataset(str(tmp_path / "u.mat"), n_clusters=2).n_views == 2


def _write_v73(path, views, y, *, matlab_header=True, cell_shape="row"):
  """Mimics MATLAB -v7.3: HDF5, matrices stored column-major (MATLAB n x d -> HDF5 d x n),
  a cell array `X` as a dataset of object references into #refs#, and `Y` as 1 x n."""
  kw = {"userblock_size": 512} if matlab_header else {}
  with h5py.File(path, "w", **kw) as f:
    g = f.create_group("#refs#")
    refs = [g.create_dataset(f"r{i}", data=np.asarray(v, np.float64).T).ref
            for i, v in enumerate(views)]
    shape = (len(views), 1) if cell_shape == "row" else (1, len(views))  # MATLAB 1xV -> HDF5 Vx1
    f.create_dataset("X", data=np.array(refs, dtype=h5py.ref_dtype).reshape(shape))
    f.create_dataset("Y", data=np.asarray(y, np.float64).reshape(1, -1))
  if matlab_header:
    hdr = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Nov 23 10:00:00 2026 HDF5"
    with open(path, "r+b") as fh:
      fh.write(hdr.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")


@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize("cell_shape", ["row", "col"])
def test_mat_v73_through_h5py(tmp_path, header, cell_shape):
  n = 40
  a = RNG.normal(size=(n, 5))
  b = RNG.normal(size=(n, 3))
  c = RNG.normal(size=(n, 5))   # same shape as `a`: the cells must not be merged into one array
  y = np.arange(n) % 4 + 1
  p = tmp_path / "v73.mat"
  _write_v73(p, [a, b, c], y, matlab_header=header, cell_shape=cell_shape)
  assert h5py.is_hdf5(p)
  ds = load_dataset(str(p))
  assert [v.shape for v in ds.views] == [(n, 5), (n, 3), (n, 5)]
  for got, want in zip(ds.views, (a, b, c)):
    np.testing.assert_allclose(got, want.astype(np.float32))
  np.testing.assert_array_equal(ds.labels, y - 1)
  assert ds.n_clusters == 4


def test_mat_v73_one_key_per_view(tmp_path):
  n = 16
  a, b = RNG.normal(size=(n, 2)), RNG.normal(size=(n, 6))
  p = tmp_path / "keys73.mat"
  with h5py.File(p, "w") as f:
    f.create_dataset("view1", data=a.T)
    f.create_dataset("view2", data=b.T)
    f.create_dataset("truth", data=(np.arange(n) % 2).reshape(1, -1).astype(np.float64))
  ds = load_dataset(str(p))
  np.testing.assert_allclose(ds.views[0], a.astype(np.float32))
  np.testing.assert_allclose(ds.views[1], b.astype(np.float32))
  np.testing.assert_array_equal(ds.labels, np.arange(n) % 2)


def test_npz_views(tmp_path):
  a, b = _views(n=20, dims=(3, 4))
  c = RNG.normal(size=(20, 2)).astype(np.float32)
  y = np.arange(20) % 5
  np.savez(tmp_path / "m.npz", X0=a, X1=b, X2=c, y=y)
  ds = load_npz(str(tmp_path / "m.npz"))
  assert ds.n_views == 3 and ds.n_clusters == 5 and ds.kind == "vector"
  for got, want in zip(ds.views, (a, b, c)):
    np.testing.assert_array_equal(got, want)
  # X10 sorts after X2 (numeric, not lexicographic)
  views = {f"X{i}": np.full((4, 1), i, np.float32) for i in (0, 1, 2, 10)}
  np.savez(tmp_path / "o.npz", **views, y=np.arange(4) % 2)
  assert [int(v[0, 0]) for v in load_dataset(str(tmp_path / "o.npz")).views] == [0, 1, 2, 10]


def test_npz_single_x(tmp_path):
  x = RNG.normal(size=(15, 6)).astype(np.float32)
  np.savez(tmp_path / "s.npz", X=x, y=np.arange(15) % 3)
  ds = load_dataset(str(tmp_path / "s.npz"))
  assert ds.n_views == 1 and ds.kind == "vector"
  np.testing.assert_array_equal(ds.views[0], x)


@pytest.mark.parametrize("shape", [(10, 6, 5, 3), (10, 6, 5)])
def test_npz_images(tmp_path, shape):
  x = RNG.integers(0, 256, size=shape).astype(np.uint8)
  x.reshape(-1)[0] = 255
  np.savez(tmp_path / "img.npz", X=x, y=np.arange(10) % 2)
  ds = load_dataset(str(tmp_path / "img.npz"))
  want = x.reshape(shape if len(shape) == 4 else shape + (1,)).astype(np.float32) / 255.0
  assert ds.kind == "image" and ds.image_shape == want.shape[1:]
  np.testing.assert_allclose(ds.views[0], want)


def test_npz_without_views(tmp_path):
  np.savez(tmp_path / "e.npz", features=np.ones((3, 2)))
  with pytest.raises(DataError, match=r"expected arrays X0, X1, \.\.\. or X; found \['features'\]"):
    load_dataset(str(tmp_path / "e.npz"))


def test_max_samples_and_n_clusters_override():
  ds = load_dataset("digits-mv", max_samples=100, n_clusters=5)
  assert ds.n_samples == 100 and all(v.shape[0] == 100 for v in ds.views)
  assert ds.labels.shape == (100,) and ds.n_clusters == 5


# -- the real files -------------------------------------------------------------------------------
def test_real_hdigit(shared_data_dir):
  ds = load_dataset("hdigit", str(shared_data_dir))
  assert [v.shape for v in ds.views] == [(10000, 784), (10000, 256)]
  assert ds.n_clusters == 10 and np.bincount(ds.labels).tolist() == [1000] * 10


def test_real_hdigit_images(shared_data_dir):
  m = load_dataset("hdigit-mnist", str(shared_data_dir))
  u = load_dataset("hdigit-usps", str(shared_data_dir))
  assert m.views[0].shape == (10000, 28, 28, 1) and m.kind == "image"
  assert u.views[0].shape == (10000, 16, 16, 1) and u.kind == "image"
  hd = load_dataset("hdigit", str(shared_data_dir))
  for ds in (m, u):
    assert ds.n_clusters == 10
    assert ds.views[0].min() >= 0.0 and ds.views[0].max() == pytest.approx(1.0)
    np.testing.assert_array_equal(ds.labels, hd.labels)
  # Orientation: the mean "7" has its horizontal bar at the top, so its row profile peaks in
  # the top rows while its column profile does not peak at the left; a transposed image fails.
  # (In Hdigit.mat the USPS view of class c depicts the digit (c + 1) mod 10; MNIST's depicts c.)
  for ds, cls in ((m, 7), (u, 6)):
    seven = ds.views[0][ds.labels == cls, :, :, 0].mean(axis=0)
    rows, cols = seven.sum(axis=1), seven.sum(axis=0)
    assert np.argmax(rows) < 0.4 * len(rows), ds.name
    assert np.argmax(cols) >= 0.4 * len(cols), ds.name


def test_real_prokaryotic(shared_data_dir):
  ds = load_dataset("prokaryotic", str(shared_data_dir))
  assert ds.n_views == 3 and ds.n_clusters == 4 and ds.n_samples == 551
  assert [v.shape[1] for v in ds.views] == [438, 3, 393]


# -- data-dir resolution --------------------------------------------------------------------------
def test_data_dir_resolution_order(tmp_path, monkeypatch):
  monkeypatch.delenv(registry.ENV_VAR, raising=False)
  assert resolve_data_dir() == registry.DEFAULT_DATA_DIR
  assert str(registry.DEFAULT_DATA_DIR) in registry.__doc__.replace(
      "~", str(registry.Path.home()))
  monkeypatch.setenv(registry.ENV_VAR, str(tmp_path / "env"))
  assert resolve_data_dir() == tmp_path / "env"
  assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"


def test_data_dir_env_var_is_used(shared_data_dir, tmp_path, monkeypatch):
  monkeypatch.setenv(registry.ENV_VAR, str(shared_data_dir))
  assert load_dataset("prokaryotic").n_samples == 551
  # the argument wins over the environment variable
  with pytest.raises(DataError, match="needs prokaryotic.mat in the data directory"):
    load_dataset("prokaryotic", str(tmp_path))


def test_named_file_missing_message(tmp_path, monkeypatch):
  monkeypatch.delenv(registry.ENV_VAR, raising=False)
  with pytest.raises(DataError) as e:
    load_dataset("hdigit", str(tmp_path))
  msg = str(e.value)
  assert "Hdigit.mat" in msg and str(tmp_path) in msg and "(missing)" in msg
  assert "--data-dir" in msg and registry.ENV_VAR in msg


# -- scaling ------------------------------------------------------------------------------------
def _scaling_input():
  x = RNG.normal(3.0, 2.0, size=(50, 4)).astype(np.float32)
  x[:, 1] = 0.1          # constant columns, values not exact in binary
  x[:, 3] = 1.0 / 3.0
  return x


def test_minmax_scaling():
  x = _scaling_input()
  s = scale_array(x, "minmax")
  want = (x.astype(np.float64) - x.min(0)) / np.where(np.ptp(x, 0) > 0, np.ptp(x, 0), 1)
  np.testing.assert_allclose(s, want, atol=1e-6)
  assert s.min() == 0.0 and s.max() == pytest.approx(1.0)
  np.testing.assert_array_equal(s[:, [1, 3]], 0.0)


def test_standard_scaling():
  x = _scaling_input()
  s = scale_array(x, "standard")
  assert np.isfinite(s).all() and s.dtype == np.float32
  np.testing.assert_array_equal(s[:, [1, 3]], 0.0)
  np.testing.assert_allclose(s[:, [0, 2]].mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(s[:, [0, 2]].std(0), 1.0, atol=1e-5)


def test_standard_scaling_constant_column_large_n():
  x = np.full((1000, 2), 0.1, np.float32)
  x[:, 1] = 7.3
  np.testing.assert_array_equal(scale_array(x, "standard"), 0.0)


def test_none_scaling_and_images_untouched():
  x = _scaling_input()
  np.testing.assert_array_equal(scale_array(x, "none"), x)
  ds = load_dataset("blobs-mv", scaling="minmax")
  for v in ds.views:
    np.testing.assert_allclose(v.min(0), 0.0)
    np.testing.assert_allclose(v.max(0), 1.0, rtol=1e-6)
  img = load_dataset("digits")
  assert scale_views(img, "standard") is img


# -- from_arrays --------------------------------------------------------------------------------
def test_from_arrays_variants():
  x = RNG.normal(size=(9, 4))
  assert from_arrays(x, n_clusters=2).kind == "vector"
  assert from_arrays(x.reshape(9, 2, 2), n_clusters=2).views[0].shape == (9, 2, 2, 1)
  ds = from_arrays([x, x[:, :2]], n_clusters=3, labels=["b", "a", "b", "c", "a", "a", "b", "c",
                                                        "c"])
  assert ds.n_views == 2 and ds.labels.tolist() == [1, 0, 1, 2, 0, 0, 1, 2, 2]
  with pytest.raises(DataError, match="non-numeric dtype"):
    from_arrays(np.array([["a", "b"]] * 3), n_clusters=2)


# -- TFDS -----------------------------------------------------------------------------------------
def test_tfds_mock_mnist():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=24):
    ds = load_dataset("tfds:mnist:train")
  assert ds.kind == "image" and ds.views[0].shape == (24, 28, 28, 1)
  assert ds.n_clusters == 10 and ds.name == "tfds:mnist:train"
  assert ds.labels.shape == (24,)
  assert 0.0 <= ds.views[0].min() and ds.views[0].max() <= 1.0


def test_tfds_not_prepared_fails_fast(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  t0 = time.perf_counter()
  with pytest.raises(DataError) as e:
    load_dataset("tfds:mnist:train", str(tmp_path))
  assert time.perf_counter() - t0 < 20
  msg = str(e.value)
  assert re.search(r"TFDS dataset 'mnist' split 'train' is not prepared", msg)
  assert str(tmp_path) in msg and "--download" in msg and "tfds build mnist" in msg


@pytest.mark.parametrize("spec", ["tfds:", "tfds:mnist:train:extra"])
def test_tfds_bad_spec(spec):
  with pytest.raises(DataError, match="bad TFDS spec"):
    load_dataset(spec)


def test_tfds_unknown_name(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(DataError, match="unknown TFDS dataset 'no_such_set_xyz'"):
    load_dataset("tfds:no_such_set_xyz", str(tmp_path))
