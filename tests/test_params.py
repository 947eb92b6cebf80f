"""Parameter values are checked at the estimator boundary, and errors name the parameter."""

import typing

import numpy as np
import pytest

from clustering_jax.api import available_methods, get_estimator
from clustering_jax.api.base import ParameterError


def _wrong_value(hint):
  """A value of the wrong type for a Config field's type hint."""
  args = set(typing.get_args(hint)) or {hint}
  if str in args:
    return [1]          # neither a number nor a string
  if bool in args:
    return "yes"
  if args & {int, float, tuple}:
    return "ten"
  return object()


def test_n_clusters_and_random_state_are_checked():
  km = get_estimator("kmeans")
  with pytest.raises(ParameterError, match=r"^n_clusters: expected an integer, got 'ten'$"):
    km(n_clusters="ten")
  with pytest.raises(ValueError, match=r"^n_clusters: expected an integer, got 2.5"):
    km(n_clusters=2.5)
  with pytest.raises(TypeError, match=r"^n_clusters: expected an integer >= 2, got 1"):
    km(n_clusters=1)
  with pytest.raises(ParameterError, match=r"^random_state: expected an integer, got None"):
    km(random_state=None)
  with pytest.raises(ParameterError, match=r"^scaling: expected one of"):
    km(scaling="zscore")
  with pytest.raises(ParameterError, match=r"^n_clusters: expected an integer, got True"):
    km(n_clusters=True)
  km(n_clusters=np.int64(3), random_state=np.int32(1))   # numpy integers are integers


@pytest.mark.parametrize("method", available_methods())
def test_every_config_field_is_type_checked(method):
  cls = get_estimator(method)
  hints = cls._param_hints()
  defaults = cls._config_defaults()
  assert set(defaults) <= set(hints)
  cls(n_clusters=3, **defaults)  # the defaults pass
  for field in defaults:
    with pytest.raises(ParameterError, match=rf"^{field}: expected .*, got "):
      cls(n_clusters=3, **{field: _wrong_value(hints[field])})
    est = cls(n_clusters=3)
    with pytest.raises(ParameterError, match=rf"^{field}: expected "):
      est.set_params(**{field: _wrong_value(hints[field])})
    assert getattr(est, field) == defaults[field]  # a rejected set_params changes nothing


def test_accepted_forms_of_each_type():
  idcl = get_estimator("idcl")
  est = idcl(n_clusters=3, hidden=[8, 8, 16], lr=1, t_grow=np.float32(5.0), augment=np.bool_(False),
             pretrain_end_lr=None)
  assert est.hidden == [8, 8, 16] and est.lr == 1
  lmvc = get_estimator("largemvc")
  lmvc(n_clusters=3, lipschitz=2.5, n_anchors=None, rho_init="median")
  lmvc(n_clusters=3, lipschitz="auto", n_anchors=4)


def test_unknown_parameter_lists_every_accepted_one():
  for method in available_methods():
    cls = get_estimator(method)
    with pytest.raises(TypeError) as e:
      cls(no_such=1)
    msg = str(e.value)
    assert "no_such" in msg
    for name in ("n_clusters", "random_state", "scaling", *cls._config_defaults()):
      assert repr(name) in msg.split("known:")[1], (method, name)
    with pytest.raises(ValueError, match="invalid parameter 'no_such'"):
      cls().set_params(no_such=1)
