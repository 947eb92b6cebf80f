"""Every notebook's code cells run top to bottom (shell/magic lines skipped)."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path):
  nb = json.loads(path.read_text())
  ns = {}
  for cell in nb["cells"]:
    if cell["cell_type"] != "code":
      continue
    src = "".join(cell["source"])
    src = "\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("!", "%")))
    exec(compile(src, f"{path.name}", "exec"), ns)
  assert "data" in ns
