"""What a run does silently is said: views concatenated, a final model below its start, and
no IDCL health warnings from tiny test runs in the test output."""

import json
import warnings

import numpy as np
import pytest
from _run_helpers import ROOT, blobs_npz, cli, fake_deep_estimator

from clustering_jax import experiment
from clustering_jax.data import load_dataset


def test_single_view_method_on_several_views_says_it_concatenated_them(tmp_path, capsys):
  out = tmp_path / "run"
  cli().main(["--method", "kmeans", "--dataset", "blobs-mv", "--out", str(out), "--quiet"])
  err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("note:")]
  assert len(err) == 1 and "kmeans is a single-view method" in err[0]
  assert "concatenated the 3 views (8 + 8 + 8 features)" in err[0]
  notes = json.loads((out / "results.json").read_text())["notes"]
  assert notes == [err[0][len("note: "):]]


@pytest.mark.parametrize("method", ["kmeans", "spectral", "idcl", "ulhe"])
def test_every_single_view_method_gets_the_note(method):
  data = load_dataset("blobs-mv")
  notes = experiment.input_notes(method, data)
  assert len(notes) == 1 and "single-view" in notes[0]
  # One view: nothing to say. A missing-view mask: the single-view methods ignore it.
  assert experiment.input_notes(method, load_dataset("blobs")) == []
  mask = np.ones((data.n_samples, 3), bool)
  mask[0, 1] = False
  notes = experiment.input_notes(method, data.replace(mask=mask))
  assert len(notes) == 2 and "ignores the missing-view mask" in notes[1]


def test_multi_view_methods_get_no_note():
  assert experiment.input_notes("largemvc", load_dataset("blobs-mv")) == []


@pytest.mark.parametrize("worse", [True, False])
def test_final_model_below_its_start_is_said(tmp_path, monkeypatch, capsys, worse):
  monkeypatch.setattr(experiment, "get_estimator",
                      lambda name: fake_deep_estimator({"epochs": 3}, worse=worse))
  data = blobs_npz(tmp_path / "d.npz", labels=False)
  r = experiment.run_experiment("fake", str(data), out=str(tmp_path / "run"), n_clusters=3)
  err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("note:")]
  lf = r["label_free"]
  if worse:
    assert lf["silhouette"] < lf["init_silhouette"]
    assert len(r["notes"]) == 1 and "scores below its own start" in r["notes"][0]
    assert err == ["note: " + r["notes"][0]]
    assert f"{lf['silhouette']:.4f}" in err[0] and f"{lf['init_silhouette']:.4f}" in err[0]
  else:
    assert lf["silhouette"] == lf["init_silhouette"] and r["notes"] == [] and err == []


def test_idcl_health_warnings_of_tiny_runs_are_filtered_in_the_tests():
  """setup.cfg's filterwarnings drops them (IDCL's label-free health checks: right for users,
  expected from the test suite's 2-epoch runs); the library still warns, as test_idcl_method
  checks with pytest.warns (which sees filtered warnings)."""
  source = "\n".join(p.read_text() for p in (ROOT / "clustering_jax").rglob("*.py"))
  for fragment in ("pre-training ended with L_rec at", "clustering stage raised L_rec"):
    assert fragment in source, fragment  # the filters below still match what IDCL says
  messages = [
      "IDCL pre-training ended with L_rec at 617975% of the data's total variance "
      "(reconstructing the mean image scores 100%): the autoencoder may be untrained",
      "pre-training ended with L_rec at 397% of the data's total variance",
      "IDCL's clustering stage raised L_rec to 9.1x its value at the end of pre-training"]
  with warnings.catch_warnings(record=True) as seen:  # keeps pytest's configured filters
    for msg in messages:
      warnings.warn(msg, RuntimeWarning)
    warnings.warn("some other RuntimeWarning", RuntimeWarning)
  assert [str(w.message) for w in seen] == ["some other RuntimeWarning"]
