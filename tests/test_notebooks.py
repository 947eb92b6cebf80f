"""Every notebook's code cells run top to bottom (shell/magic lines skipped), and what they
print and say is checked: ACC values are numbers in [0, 1], and the text quotes the current
defaults."""

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
QUICKSTART = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def _cells(path, kind):
  return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]
          if c["cell_type"] == kind]


_RUNS: dict = {}


def _run(path) -> tuple[dict, str]:
  """Executes the code cells in one namespace; returns it and everything they printed.
  Each notebook runs once per test session."""
  if path in _RUNS:
    return _RUNS[path]
  ns, out = {}, io.StringIO()
  with contextlib.redirect_stdout(out):
    for src in _cells(path, "code"):
      src = "\n".join(ln for ln in src.splitlines() if not ln.lstrip().startswith(("!", "%")))
      exec(compile(src, f"{path.name}", "exec"), ns)
  _RUNS[path] = ns, out.getvalue()
  return _RUNS[path]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_prints_scores_in_range(path):
  ns, printed = _run(path)
  assert "data" in ns
  accs = re.findall(r"\bACC (\S+)", printed)
  assert accs, printed
  for v in accs:
    assert 0.0 <= float(v) <= 1.0, (v, printed)


def test_quickstart_prints_each_score_and_the_epochs_run():
  ns, printed = _run(QUICKSTART)
  lines = printed.splitlines()
  for label in ("k-means ACC", "IDCL start ACC", "IDCL final ACC"):
    assert sum(ln.startswith(label + " ") for ln in lines) == 1, printed
  quick = ns["QUICK"]
  assert ns["idcl"].fit_info_["epochs"] == {"pretrain": quick["pretrain_epochs"],
                                            "train": quick["epochs"]}
  assert f"epochs run: {ns['idcl'].fit_info_['epochs']}" in printed


def test_quickstart_text_quotes_the_current_defaults():
  from clustering_jax.methods.idcl import Config
  text = "\n".join(_cells(QUICKSTART, "markdown"))
  cfg = Config()
  assert f"`pretrain_epochs={cfg.pretrain_epochs}`" in text
  assert f"`epochs={cfg.epochs}`" in text
  assert f"{cfg.pretrain_epochs} pre-training epochs and {cfg.epochs} clustering epochs" in text
