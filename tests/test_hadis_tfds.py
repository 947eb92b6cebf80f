"""TFDS image sets of the HaDis paper (CIFAR-10, STL-10, CIFAR-100/20) through the adapter,
with TFDS's own mock data (no download)."""

import numpy as np
import pytest

from clustering_jax.data import DataError, load_dataset
from clustering_jax.data.augment import preset_for
from clustering_jax.data.tfds_adapter import load_tfds

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.mark.parametrize("spec, side", [("tfds:cifar10:train+test", 32), ("tfds:cifar10", 32),
                                        ("tfds:stl10:train+test", 96)])
def test_rgb_sets_load_as_images(spec, side):
  with tfds.testing.mock_data(num_examples=16):
    ds = load_dataset(spec)
  x = ds.views[0]
  assert ds.kind == "image" and x.shape == (16, side, side, 3) and x.dtype == np.float32
  assert ds.image_shape == (side, side, 3)
  assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5  # uint8 / 255
  assert ds.n_clusters == 10 and ds.labels.shape == (16,)
  assert preset_for(ds.image_shape).name == "simclr-rgb"


def test_cifar100_superclasses_and_unlabelled_stl10():
  with tfds.testing.mock_data(num_examples=40):
    ds = load_tfds("tfds:cifar100:train", label_key="coarse_label")
    assert ds.n_clusters == 20 and ds.labels.max() < 20
    with pytest.raises(DataError, match="no feature 'superclass'"):
      load_tfds("tfds:cifar100:train", label_key="superclass")
  # STL-10's unlabelled split stores label -1: no ground truth, K from the dataset's classes.
  rng = np.random.default_rng(0)
  rows = [{"image": rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), "label": -1}
          for _ in range(12)]
  with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: rows):
    ds = load_dataset("tfds:stl10:unlabelled")
  assert ds.views[0].shape == (12, 96, 96, 3) and ds.labels is None and ds.n_clusters == 10
  np.testing.assert_allclose(ds.views[0][0], rows[0]["image"] / 255.0, rtol=1e-6)
