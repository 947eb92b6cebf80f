"""scikit-learn-style estimators and the registry of method names.

The registry maps a CLI method name to the module and class of its estimator;
modules are imported on first use, so `import clustering_jax` stays light.
"""

from __future__ import annotations

import importlib
import importlib.util

from clustering_jax.api.base import ClusteringEstimator

_REGISTRY = {
    "kmeans": ("clustering_jax.api.kmeans", "KMeans"),
    "spectral": ("clustering_jax.api.spectral", "Spectral"),
    "idcl": ("clustering_jax.api.idcl", "IDCL"),
    "ulhe": ("clustering_jax.api.ulhe", "ULHE"),
    "largemvc": ("clustering_jax.api.largemvc", "LargeMvC"),
    "mvsib": ("clustering_jax.api.mvsib", "MVSIB"),
    "hadis": ("clustering_jax.api.hadis", "HaDis"),
}


def available_methods() -> list:
  """Names of the methods whose estimator module exists in this install."""
  return [n for n, (mod, _) in _REGISTRY.items() if importlib.util.find_spec(mod) is not None]


def get_estimator(name: str):
  """The estimator class registered under `name`."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown method {name!r}; known: {', '.join(available_methods())}")
  mod, cls = _REGISTRY[name]
  if importlib.util.find_spec(mod) is None:
    raise ValueError(f"method {name!r} is not implemented yet; available: "
                     f"{', '.join(available_methods())}")
  return getattr(importlib.import_module(mod), cls)


def __getattr__(attr):
  for name, (mod, cls) in _REGISTRY.items():
    if cls == attr and importlib.util.find_spec(mod) is not None:
      return get_estimator(name)
  raise AttributeError(attr)


__all__ = ["ClusteringEstimator", "available_methods", "get_estimator"]
