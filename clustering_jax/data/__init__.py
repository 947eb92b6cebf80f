"""Data layer: one Dataset container, built-in sets, .mat/.npz files, TFDS, scaling."""

from clustering_jax.data.container import DataError, Dataset, from_arrays
from clustering_jax.data.registry import ENV_VAR, known_datasets, load_dataset, resolve_data_dir
from clustering_jax.data.scaling import SCALINGS, scale_array, scale_views

__all__ = ["DataError", "Dataset", "ENV_VAR", "SCALINGS", "from_arrays", "known_datasets",
           "load_dataset", "resolve_data_dir", "scale_array", "scale_views"]
