"""scikit-learn-style estimator base shared by every method."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import numpy as np

from clustering_jax.data.container import DataError, Dataset, from_arrays
from clustering_jax.data.scaling import scale_views
from clustering_jax.methods.base import FitResult
from clustering_jax.train.run import Run, quiet_run


class ClusteringEstimator:
  """Base estimator: parameters are n_clusters, random_state and the fields of
  the method's Config dataclass (paper defaults). `fit` validates the input,
  runs the method and sets `labels_`, `embedding_` (and `init_labels_`,
  `init_embedding_` — the starting point — for deep methods). Subclasses set `config_cls`, `kind` and implement `_fit`.
  """

  config_cls: Any = None
  #: which Config field `--epochs` sets (the main training stage), or None.
  epochs_field: Optional[str] = None
  #: "image", "vector" or "any": what input the method accepts.
  accepts: str = "any"

  def __init__(self, n_clusters: int = 8, *, random_state: int = 0, scaling: str = "minmax",
               **params):
    self.n_clusters = n_clusters
    self.random_state = random_state
    self.scaling = scaling
    defaults = self._config_defaults()
    unknown = set(params) - set(defaults)
    if unknown:
      raise TypeError(f"{type(self).__name__} got unknown parameter(s) {sorted(unknown)}; "
                      f"known: {sorted(defaults)}")
    for k, v in {**defaults, **params}.items():
      setattr(self, k, v)

  # -- scikit-learn parameter protocol -------------------------------------
  @classmethod
  def _config_defaults(cls) -> dict:
    if cls.config_cls is None:
      return {}
    return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
            for f in dataclasses.fields(cls.config_cls)}

  def get_params(self, deep: bool = True) -> dict:
    out = {"n_clusters": self.n_clusters, "random_state": self.random_state,
           "scaling": self.scaling}
    out.update({k: getattr(self, k) for k in self._config_defaults()})
    return out

  def set_params(self, **params):
    valid = self.get_params()
    for k, v in params.items():
      if k not in valid:
        raise ValueError(f"invalid parameter {k!r} for {type(self).__name__}; known: {sorted(valid)}")
      setattr(self, k, v)
    return self

  def __repr__(self):
    changed = {k: v for k, v in self.get_params().items()
               if k in ("n_clusters", "random_state") or v != self._config_defaults().get(k, v)}
    return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

  @property
  def config(self):
    """The method's Config built from the current parameters."""
    if self.config_cls is None:
      return None
    return self.config_cls(**{k: getattr(self, k) for k in self._config_defaults()})

  # -- fitting -------------------------------------------------------------
  def _as_dataset(self, X, mask=None) -> Dataset:
    if isinstance(X, Dataset):
      data = X if X.n_clusters == self.n_clusters else X.replace(n_clusters=int(self.n_clusters))
      if mask is not None:
        data = data.replace(mask=np.asarray(mask, bool))
    else:
      data = from_arrays(X, n_clusters=int(self.n_clusters), mask=mask)
    if self.accepts == "image" and data.kind != "image":
      raise DataError(f"{type(self).__name__} needs images (n, H, W, C); got vector data")
    return scale_views(data, self.scaling)

  def fit(self, X, y=None, *, mask=None, run: Optional[Run] = None):
    """Clusters X: an (n, d) array, (n, H, W, C) images, a list of views, or a Dataset.

    y is ignored (scikit-learn convention); labels never reach training.
    mask: optional (n, n_views) bool, True where a view is present.
    run: a train.Run for progress, logs and checkpoints (default: silent).
    """
    data = self._as_dataset(X, mask)
    self.n_features_in_ = int(sum(v.shape[1] for v in data.flat_views()))
    key = jax.random.key(int(self.random_state))
    result: FitResult = self._fit(data, key, run if run is not None else quiet_run())
    self.labels_ = np.asarray(result.labels)
    self.embedding_ = np.asarray(result.embedding)
    self.init_labels_ = None if result.init_labels is None else np.asarray(result.init_labels)
    self.init_embedding_ = (None if result.init_embedding is None
                            else np.asarray(result.init_embedding))
    self.fit_info_ = result.info
    self.state_ = result.state
    return self

  def fit_predict(self, X, y=None, **kwargs) -> np.ndarray:
    return self.fit(X, y, **kwargs).labels_

  def _check_fitted(self):
    if not hasattr(self, "labels_"):
      raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit first")

  def _fit(self, data: Dataset, key, run: Run) -> FitResult:  # pragma: no cover
    raise NotImplementedError
