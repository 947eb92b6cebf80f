"""scikit-learn-style estimator base shared by every method."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Optional

import jax
import numpy as np

from clustering_jax import compile_cache
from clustering_jax.data.container import DataError, Dataset, from_arrays
from clustering_jax.data.scaling import SCALINGS, scale_views
from clustering_jax.methods.base import FitResult, Views
from clustering_jax.train.run import Run, quiet_run


class ParameterError(ValueError, TypeError):
  """A bad estimator parameter; the message starts with the parameter's name."""


def _type_words(hint) -> str:
  """How a type hint reads in an error message: "an integer", "a number or None", ..."""
  origin = typing.get_origin(hint)
  if origin is typing.Union or origin is types.UnionType:
    return " or ".join(_type_words(a) for a in typing.get_args(hint))
  if origin is not None:
    hint = origin
  return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
          tuple: "a list or tuple", list: "a list or tuple",
          type(None): "None"}.get(hint, getattr(hint, "__name__", str(hint)))


def _type_ok(value, hint) -> bool:
  """Whether value fits a Config field's type hint (numpy scalars count as Python ones)."""
  origin = typing.get_origin(hint)
  if hint is Any or isinstance(hint, typing.TypeVar):
    return True
  if origin is typing.Union or origin is types.UnionType:
    return any(_type_ok(value, a) for a in typing.get_args(hint))
  if origin is not None:
    hint = origin
  if hint is type(None):
    return value is None
  if hint is bool:
    return isinstance(value, (bool, np.bool_))
  if isinstance(value, (bool, np.bool_)):
    return False  # True is an int to Python, but not a count or a rate here
  if hint is int:
    return isinstance(value, (int, np.integer))
  if hint is float:
    return isinstance(value, (int, float, np.integer, np.floating))
  if hint in (tuple, list):
    return isinstance(value, (tuple, list))
  return not isinstance(hint, type) or isinstance(value, hint)


def check_param(name: str, value, hint) -> None:
  """Raises ParameterError("name: expected ..., got ...") when value does not fit hint."""
  if not _type_ok(value, hint):
    raise ParameterError(f"{name}: expected {_type_words(hint)}, got {value!r}")


class ClusteringEstimator:
  """Base estimator: parameters are n_clusters, random_state and the fields of
  the method's Config dataclass (paper defaults). `fit` validates the input,
  runs the method and sets `labels_`, `embedding_` (and `init_labels_`,
  `init_embedding_` — the starting point — for deep methods). Subclasses set `config_cls`, `kind` and implement `_fit`.
  """

  config_cls: Any = None
  #: which Config field `--epochs` sets (the main training stage), or None.
  epochs_field: Optional[str] = None
  #: which Config field `--pretrain-epochs` sets (the pre-training stage), or None.
  pretrain_epochs_field: Optional[str] = None
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
      raise ParameterError(f"{type(self).__name__} got unknown parameter(s) {sorted(unknown)}; "
                           f"known: {self.known_params()}")
    self.check_params({"n_clusters": n_clusters, "random_state": random_state,
                       "scaling": scaling, **params})
    for k, v in {**defaults, **params}.items():
      setattr(self, k, v)

  # -- scikit-learn parameter protocol -------------------------------------
  @classmethod
  def _config_defaults(cls) -> dict:
    if cls.config_cls is None:
      return {}
    return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
            for f in dataclasses.fields(cls.config_cls)}

  @classmethod
  def known_params(cls) -> list:
    """Every parameter the estimator accepts, sorted."""
    return sorted({"n_clusters", "random_state", "scaling", *cls._config_defaults()})

  @classmethod
  def _param_hints(cls) -> dict:
    """Parameter -> type hint: the Config's annotations, else the type of the default."""
    defaults = cls._config_defaults()
    try:
      hints = typing.get_type_hints(cls.config_cls) if cls.config_cls is not None else {}
    except Exception:  # unresolvable annotations: fall back to the defaults' types
      hints = {}
    out = {k: hints.get(k, type(v) if v is not None else Any) for k, v in defaults.items()}
    return {**out, "n_clusters": int, "random_state": int, "scaling": str}

  @classmethod
  def check_params(cls, params: dict) -> None:
    """Validates parameter names and types (not fitting): raises ParameterError naming the
    parameter, e.g. "n_clusters: expected an integer, got 'ten'"."""
    hints = cls._param_hints()
    unknown = sorted(set(params) - set(hints))
    if unknown:
      raise ParameterError(f"{cls.__name__} got unknown parameter(s) {unknown}; "
                           f"known: {cls.known_params()}")
    for k, v in params.items():
      check_param(k, v, hints[k])
    if "n_clusters" in params and params["n_clusters"] < 2:
      raise ParameterError(f"n_clusters: expected an integer >= 2, got {params['n_clusters']!r}")
    if "scaling" in params and params["scaling"] not in SCALINGS:
      raise ParameterError(f"scaling: expected one of {list(SCALINGS)}, got {params['scaling']!r}")

  def get_params(self, deep: bool = True) -> dict:
    out = {"n_clusters": self.n_clusters, "random_state": self.random_state,
           "scaling": self.scaling}
    out.update({k: getattr(self, k) for k in self._config_defaults()})
    return out

  def set_params(self, **params):
    valid = self.get_params()
    for k, v in params.items():
      if k not in valid:
        raise ParameterError(f"invalid parameter {k!r} for {type(self).__name__}; "
                             f"known: {sorted(valid)}")
    self.check_params(params)
    for k, v in params.items():
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
    compile_cache.enable()  # persistent XLA cache; off with CLUSTERING_JAX_COMPILE_CACHE=0
    data = self._as_dataset(X, mask)
    self.n_features_in_ = int(sum(v.shape[1] for v in data.flat_views()))
    key = jax.random.key(int(self.random_state))
    # The method sees the views and the mask only: labels cannot reach training.
    result: FitResult = self._fit(Views.of(data), key, run if run is not None else quiet_run())
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

  def _fit(self, data: Views, key, run: Run) -> FitResult:  # pragma: no cover
    raise NotImplementedError
