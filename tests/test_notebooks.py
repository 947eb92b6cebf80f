"""The notebooks in notebooks/.

Static checks (default run, milliseconds): each notebook is saved without outputs, its first
code cell installs the library from `REPO` and reads the small-schedule switch, the defaults and
command-line flags its text quotes are the library's current ones, and the keywords of every
schedule it can run (not only the one CI runs) are valid for their method.

Execution (marker `notebooks`: `python -m pytest -m notebooks tests/test_notebooks.py`): each
notebook runs top to bottom in its own Jupyter kernel with CLUSTERING_JAX_NOTEBOOK_SMALL=1, the
image notebook with 8 emulated CPU devices (XLA_FLAGS in the kernel's environment, so it is set
before the kernel imports JAX), and what the cells print is checked: every ACC is a number in
[0, 1], every registered method has a row, the missing-view mask and the view weights add up,
the sharding cell reports the 8 devices it was given, and times per epoch are positive.
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NB_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]
SMALL_ENV = "CLUSTERING_JAX_NOTEBOOK_SMALL"
DEVICES = 8                       # emulated CPU devices for images_tpu
BASELINES = ("kmeans", "spectral")


def _cells(path: Path, kind: str) -> list:
  return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]
          if c["cell_type"] == kind]


def _markdown(path: Path) -> str:
  return "\n".join(_cells(path, "markdown"))


# -- static checks -------------------------------------------------------------------------
def test_the_three_notebooks_are_there():
  assert {"quickstart", "multiview", "images_tpu"} <= set(IDS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_saved_without_outputs(path):
  for cell in json.loads(path.read_text())["cells"]:
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"][:80]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_first_code_cell_installs_and_detects_the_backend(path):
  first = _cells(path, "code")[0]
  assert re.search(r'^REPO = "https://', first, re.M), first
  assert 'find_spec("clustering_jax") is None' in first      # no install where it imports
  assert '"pip", "install"' in first and 'f"git+{REPO}"' in first
  assert f'"{SMALL_ENV}"' in first
  assert "jax.default_backend()" in first and "jax.devices()" in first


def _quoted_defaults(path: Path) -> list:
  """(method, field, value) for every `field=value` in a markdown table row whose first
  column is a method name in backticks, e.g. | `idcl` | `pretrain_epochs=1000`, ... |."""
  out = []
  for line in _markdown(path).splitlines():
    row = re.match(r"\|\s*`([a-z]+)`\s*\|", line)
    if row:
      for field, value in re.findall(r"`(\w+)=([^`]+)`", line):
        out.append((row.group(1), field, ast.literal_eval(value)))
  return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_text_quotes_the_current_defaults(path):
  from clustering_jax import get_estimator
  quoted = _quoted_defaults(path)
  assert quoted, "no table of defaults"
  for method, field, value in quoted:
    defaults = get_estimator(method)._config_defaults()
    assert field in defaults, (method, field)
    assert defaults[field] == value, (method, field, value, defaults[field])


def test_quickstart_table_lists_every_registered_method():
  from clustering_jax import available_methods
  rows = {m for m, _, _ in _quoted_defaults(NB_DIR / "quickstart.ipynb")}
  assert rows == set(available_methods())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_flags_in_the_text_are_cli_flags(path):
  run_py = (REPO / "experiments" / "run.py").read_text()
  for flag in set(re.findall(r"(?<![\w-])--[a-z][\w-]*[a-z]", _markdown(path))):
    if "_" not in flag:               # XLA's and TFDS's flags have underscores, ours hyphens
      assert f'"{flag}"' in run_py, flag


def _schedules(path: Path) -> list:
  """(variable, method, keywords) for every schedule a code cell defines: a dict of method ->
  dict(...) (SHORT, TINY, ...) or a dict(...) named *_<METHOD> (TINY_MVSIB, ...)."""
  from clustering_jax import available_methods
  methods = set(available_methods())

  def kwargs(node):
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "dict":
      return {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    return None

  out = []
  for src in _cells(path, "code"):
    src = "\n".join(ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!")))
    for node in ast.walk(ast.parse(src)):
      if not (isinstance(node, ast.Assign) and len(node.targets) == 1
              and isinstance(node.targets[0], ast.Name)):
        continue
      name, value = node.targets[0].id, node.value
      if (isinstance(value, ast.Dict) and value.keys
          and all(isinstance(k, ast.Constant) and k.value in methods for k in value.keys)
          and all(kwargs(v) is not None for v in value.values)):
        out += [(name, k.value, kwargs(v)) for k, v in zip(value.keys, value.values)]
      elif kwargs(value) is not None and name.split("_")[-1].lower() in methods:
        out.append((name, name.split("_")[-1].lower(), kwargs(value)))
  return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_schedule_is_valid_for_its_method(path):
  """Also the schedules CI does not run (a CPU's SHORT): names, types and the Config's rules."""
  from clustering_jax import get_estimator
  schedules = _schedules(path)
  if path.stem != "multiview":
    assert {n for n, _, _ in schedules} >= {"SHORT", "TINY"}, schedules
  for name, method, params in schedules:
    cls = get_estimator(method)
    cls.check_params(params)
    validate = getattr(cls(n_clusters=2, **params).config, "validate", None)
    if callable(validate):
      validate()


# -- execution -------------------------------------------------------------------------------
_RUNS: dict = {}


def _execute(stem: str) -> dict:
  """Runs notebooks/<stem>.ipynb in a fresh kernel (once per test session); returns each code
  cell's printed text (stdout) by position and the number of PNG images it displayed."""
  if stem in _RUNS:
    return _RUNS[stem]
  import nbformat
  from nbclient import NotebookClient
  env = dict(os.environ, JAX_PLATFORMS="cpu", **{SMALL_ENV: "1"})
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  if stem == "images_tpu":
    flags += f" --xla_force_host_platform_device_count={DEVICES}"
  env["XLA_FLAGS"] = flags.strip()
  nb = nbformat.read(NB_DIR / f"{stem}.ipynb", as_version=4)
  NotebookClient(nb, timeout=1800, kernel_name="python3",
                 resources={"metadata": {"path": str(NB_DIR)}}).execute(env=env)
  code = [c for c in nb.cells if c.cell_type == "code"]
  text = ["".join(o.get("text", "") for o in c.outputs
                  if o.output_type == "stream" and o.name == "stdout") for c in code]
  images = [sum("image/png" in o.get("data", {}) for o in c.outputs) for c in code]
  _RUNS[stem] = {"text": text, "printed": "\n".join(text), "images": images}
  return _RUNS[stem]


def _accs(printed: str) -> list:
  return [float(v) for v in re.findall(r"\bACC (-?[\d.]+\d|nan|inf)", printed)]


def _line(printed: str, start: str) -> str:
  lines = [ln for ln in printed.splitlines() if ln.startswith(start)]
  assert len(lines) == 1, (start, printed)
  return lines[0]


@pytest.mark.notebooks
@pytest.mark.parametrize("stem", ["quickstart", "multiview", "images_tpu"])
def test_every_printed_acc_is_in_the_unit_interval(stem):
  run = _execute(stem)
  accs = _accs(run["printed"])
  assert accs, run["printed"]
  assert all(0.0 <= a <= 1.0 for a in accs), run["printed"]
  assert "schedule: small" in run["text"][0] and "backend cpu" in run["text"][0]


@pytest.mark.notebooks
def test_quickstart_table_has_every_method_final_beside_start():
  from clustering_jax import available_methods
  run = _execute("quickstart")
  tiny = {m: p for n, m, p in _schedules(NB_DIR / "quickstart.ipynb") if n == "TINY"}
  table = next(t for t in run["text"] if t.startswith("method"))
  rows = {ln.split()[0]: ln for ln in table.splitlines()[2:]}
  assert set(rows) == set(available_methods()), table
  for method, row in rows.items():
    cols = row.split(maxsplit=7)
    start, final, nmi = cols[2], float(cols[3]), float(cols[4])
    assert 0.0 <= final <= 1.0 and 0.0 <= nmi <= 1.0, row
    if method in BASELINES:
      assert start == "-", row
      continue
    assert 0.0 <= float(start) <= 1.0, row
    epochs = ast.literal_eval(cols[7])       # the stages run, each within its schedule
    asked = {k: v for k, v in tiny[method].items() if k in ("pretrain_epochs", "epochs")}
    assert set(epochs) == {"pretrain" if k == "pretrain_epochs" else "train" for k in asked}, row
    for stage, n in epochs.items():
      assert 1 <= n <= asked["pretrain_epochs" if stage == "pretrain" else "epochs"], row
  assert run["images"][-1] >= 1        # the embedding figure


@pytest.mark.notebooks
def test_multiview_missing_views_weights_and_curves():
  run = _execute("multiview")
  printed = run["printed"]
  data = re.search(r"data: \S+, (\d+) samples, (\d+) views", printed)
  n, views = int(data.group(1)), int(data.group(2))
  # per_sample protocol: round(rate * n) samples lose some views, every view keeps most rows
  miss = re.search(r"missing_rate 0.3: (\d+) of (\d+) samples incomplete; present per view "
                   r"(\[.*\])", printed)
  assert int(miss.group(1)) == round(0.3 * n) and int(miss.group(2)) == n
  present = ast.literal_eval(miss.group(3))
  assert len(present) == views and all(0.5 < p < 1.0 for p in present)
  for label in ("LargeMvC-Net, missing_rate 0.0:", "LargeMvC-Net, missing_rate 0.3:",
                "MVSIB:"):
    assert len(_accs(_line(printed, f"{label} start ACC"))) == 2     # start and final
  alpha = ast.literal_eval(_line(printed, "MVSIB view weights:").split(":", 1)[1].strip())
  assert len(alpha) == views and abs(sum(alpha) - 1.0) < 2e-3 and min(alpha) > 0
  rho = re.findall(r"rho \(layer x view\) (\[\[.*?\]\])", printed)
  assert len(rho) == 2 and all(len(r) == 2 and all(len(layer) == views for layer in r)
                               for r in map(ast.literal_eval, rho))
  assert len(re.findall(r"rows in metrics.jsonl", printed)) == 3
  assert sum(run["images"]) >= 3       # weights, loss curves, the run directory's figure


@pytest.mark.notebooks
def test_images_tpu_shards_over_the_devices_it_was_given_and_times_epochs():
  run = _execute("images_tpu")
  printed = run["printed"]
  assert f"{DEVICES} device(s)" in run["text"][0]
  assert _line(printed, "devices in the mesh:") == f"devices in the mesh: {DEVICES}"
  shards = re.findall(r"^  \S+: columns (\d+):(\d+) of every batch, shard shape \((\d+), (\d+)\)",
                      printed, re.M)
  assert len(shards) == DEVICES
  width = int(shards[0][3])
  assert sorted(int(a) for a, _, _, _ in shards) == [i * width for i in range(DEVICES)]
  assert "P(None, 'data')" in printed
  assert re.search(rf"one batch of images \(256, .*\): P\('data',?\), \({256 // DEVICES}, ",
                   printed)
  source = re.search(r"^data: (\S+), (\d+) images", printed, re.M)
  assert source.group(1) in ("tfds:mnist:test", "hdigit-mnist", "digits")
  if source.group(1) != "tfds:mnist:test":
    assert "tfds:mnist:test is not available here" in printed   # the fallback is said
  for name in ("IDCL", "ULHE-DC", "HaDis"):
    assert len(_accs(_line(printed, f"{name}: start ACC"))) == 2
    times = re.findall(r" (\d+\.\d+) s", _line(printed, f"{name} time per epoch:")
                       .split("(compile")[0])
    assert times and all(float(t) > 0 for t in times), printed
  assert run["images"][-1] >= 1
