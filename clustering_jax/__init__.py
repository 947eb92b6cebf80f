"""clustering_jax: JAX/Flax deep clustering (MVSIB, LargeMvC-Net, ULHE-DC, IDCL, HaDis)."""

from clustering_jax.api import available_methods, get_estimator
from clustering_jax.data import DataError, Dataset, load_dataset

__version__ = "0.1.0"


def __getattr__(attr):
  from clustering_jax import api
  return getattr(api, attr)


__all__ = ["DataError", "Dataset", "available_methods", "get_estimator", "load_dataset"]
