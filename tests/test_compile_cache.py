"""compile_cache: enable() sets JAX's persistent cache (every program cached), the opt-out
leaves it unset, the user's own JAX setting wins, disable() stops writes, and an estimator's
fit turns it on. Each case runs in a fresh process: JAX's configuration is process-global."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, os, sys
import jax, jax.numpy as jnp
from clustering_jax import compile_cache
case = sys.argv[1]
out = {}
if case == "estimator":
  from clustering_jax import get_estimator
  x = jnp.arange(40.0).reshape(20, 2) % 7
  get_estimator("kmeans")(n_clusters=2).fit(x)
else:
  out["returned"] = compile_cache.enable()
  jax.jit(lambda a: a * 3 + 1)(jnp.ones(5)).block_until_ready()
  if case == "disable":
    n_before = len(os.listdir(out["returned"]))
    compile_cache.disable()
    out["after_disable"] = compile_cache.enable()
    jax.jit(lambda a: a * 5 - 2)(jnp.ones(6)).block_until_ready()
    out["new_files"] = len(os.listdir(out["returned"])) - n_before
out.update(dir=jax.config.jax_compilation_cache_dir,
           min_time=jax.config.jax_persistent_cache_min_compile_time_secs,
           min_size=jax.config.jax_persistent_cache_min_entry_size_bytes,
           cache_dir=compile_cache.cache_dir())
print("RESULT" + json.dumps(out))
"""


def _run(case, tmp_path, **env):
  base = {k: v for k, v in os.environ.items()      # conftest's own JAX cache settings out
          if k != "CLUSTERING_JAX_COMPILE_CACHE" and not k.startswith(("JAX_COMPILATION_CACHE",
                                                                       "JAX_PERSISTENT_CACHE"))}
  base.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(tmp_path / "xdg"),
              HOME=str(tmp_path / "home"), **env)
  proc = subprocess.run([sys.executable, "-c", SCRIPT, case], cwd=REPO, env=base, text=True,
                        capture_output=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
  return json.loads(line[len("RESULT"):])


def _entries(path):
  return [p for p in Path(path).iterdir() if p.name.endswith("-cache")] if Path(path).is_dir() else []


def test_enable_sets_jax_config_and_caches_every_program(tmp_path):
  out = _run("default", tmp_path)
  want = str(tmp_path / "xdg" / "clustering_jax" / "jax")   # $XDG_CACHE_HOME/clustering_jax/jax
  assert out["returned"] == out["dir"] == out["cache_dir"] == want
  assert out["min_time"] == 0 and out["min_size"] == 0
  assert _entries(want), "a small, fast-to-compile program is cached too"
  # the variable names the directory
  other = tmp_path / "elsewhere"
  out = _run("default", tmp_path, CLUSTERING_JAX_COMPILE_CACHE=str(other))
  assert out["dir"] == str(other) and _entries(other)


def test_opt_out_leaves_jax_config_unset(tmp_path):
  for value in ("0", "off", "false"):
    out = _run("default", tmp_path, CLUSTERING_JAX_COMPILE_CACHE=value)
    assert out["returned"] is None and out["dir"] is None and out["cache_dir"] is None
    assert out["min_time"] == 1.0                      # JAX's default, untouched
  assert not (tmp_path / "xdg" / "clustering_jax").exists()


def test_users_own_jax_cache_dir_wins(tmp_path):
  mine = tmp_path / "mine"
  out = _run("default", tmp_path, JAX_COMPILATION_CACHE_DIR=str(mine))
  assert out["returned"] == out["dir"] == str(mine)
  assert out["min_time"] == 1.0                      # their thresholds too
  assert not (tmp_path / "xdg" / "clustering_jax").exists()


def test_disable_stops_the_cache(tmp_path):
  out = _run("disable", tmp_path)
  assert out["after_disable"] is None and out["dir"] is None
  assert out["new_files"] == 0


def test_estimator_fit_enables_the_cache(tmp_path):
  out = _run("estimator", tmp_path)
  want = tmp_path / "xdg" / "clustering_jax" / "jax"
  assert out["dir"] == str(want) and _entries(want)
  out = _run("estimator", tmp_path / "b", CLUSTERING_JAX_COMPILE_CACHE="0")
  assert out["dir"] is None and not (tmp_path / "b" / "xdg" / "clustering_jax").exists()


EXE_SCRIPT = r"""
import json, sys
import jax, numpy as np
from clustering_jax import compile_cache
compile_cache.enable(sys.argv[1])
from clustering_jax.ops.kmeans import kmeans
from clustering_jax.ops.spectral import knn_spectral_embedding
import pathlib, time
x = np.random.RandomState(0).randn(300, 6).astype(np.float32)
store = pathlib.Path(sys.argv[1]) / "clustering_jax_executables"
before = len(list(store.glob("*.pkl"))) if store.exists() else 0
kmeans.prefetch(jax.random.key(1), jax.ShapeDtypeStruct(x.shape, x.dtype), 4, n_init=3)
t = time.time()       # the background thread writes the entry (first process) before the call
while compile_cache.cache_dir() and before == 0 and not list(store.glob("*.pkl")) and time.time() - t < 240:
  time.sleep(0.05)
prefetched = len(list(store.glob("*.pkl"))) if store.exists() else 0
km = kmeans(jax.random.key(1), x, 4, n_init=3)
emb, vals = knn_spectral_embedding(jax.random.key(2), x, 3)      # dense path: LAPACK eigh
traced = jax.jit(lambda a: kmeans(jax.random.key(1), a, 4, n_init=3).inertia)(x)
print("RESULT" + json.dumps({"labels": np.asarray(km.labels).tolist(),
                             "inertia": float(km.inertia), "traced": float(traced),
                             "vals": np.asarray(vals).tolist(),
                             "emb": float(np.abs(np.asarray(emb)).sum()),
                             "prefetched": prefetched,
                             **compile_cache.executables}))
"""


def _run_exe(cache, tmp_path, **env):
  base = {k: v for k, v in os.environ.items()
          if k != "CLUSTERING_JAX_COMPILE_CACHE" and not k.startswith(("JAX_COMPILATION_CACHE",
                                                                       "JAX_PERSISTENT_CACHE"))}
  base.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), HOME=str(tmp_path / "home"), **env)
  proc = subprocess.run([sys.executable, "-c", EXE_SCRIPT, str(cache)], cwd=REPO, env=base,
                        text=True, capture_output=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
  return json.loads(line[len("RESULT"):])


def test_persistent_jit_executables_load_in_a_new_process_with_equal_results(tmp_path):
  cache = tmp_path / "cache"
  first = _run_exe(cache, tmp_path)
  assert (first["compiled"], first["loaded"]) == (2, 0)   # the traced call is plain jit
  assert first["prefetched"] == 1       # k-means compiled in the background before its call
  stored = sorted((cache / "clustering_jax_executables").iterdir())
  assert len(stored) == 2
  second = _run_exe(cache, tmp_path)                      # LAPACK runs from a loaded program
  assert (second["compiled"], second["loaded"]) == (0, 2)
  for key in ("labels", "inertia", "vals", "emb", "traced"):
    assert second[key] == first[key], key
  assert abs(first["traced"] - first["inertia"]) <= 1e-3 * abs(first["inertia"])
  # a broken entry is compiled again and replaced, with the same result
  stored[0].write_bytes(b"not an executable")
  third = _run_exe(cache, tmp_path)
  assert (third["compiled"], third["loaded"]) == (1, 1)
  assert third["labels"] == first["labels"] and third["vals"] == first["vals"]
  assert stored[0].read_bytes() != b"not an executable"
  # the opt-out: nothing stored or loaded
  off = _run_exe(tmp_path / "off", tmp_path, CLUSTERING_JAX_COMPILE_CACHE="0")
  assert (off["compiled"], off["loaded"]) == (0, 0) and off["labels"] == first["labels"]
