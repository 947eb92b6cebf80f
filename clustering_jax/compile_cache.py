"""JAX's persistent compilation cache, on by default for the CLI, the benchmark and the estimators.

A compiled XLA program is written to disk and loaded by later processes instead of being
compiled again, so a second run of the same method on data of the same shapes skips its
compiles (seconds on the CPU). Every program is cached, however small or fast to compile.

  enable(path=None)  turns the cache on (idempotent; `ClusteringEstimator.fit` calls it)
  disable()          turns it off for the rest of the process: `experiments/run.py
                     --no-compile-cache` calls it first (benchmark.py passes the flag on)
  cache_dir()        the directory in use, or None

Environment:
  CLUSTERING_JAX_COMPILE_CACHE=0 (or off / false / no)  no cache: enable() does nothing
  CLUSTERING_JAX_COMPILE_CACHE=/some/dir                 the cache directory
  otherwise the directory is $XDG_CACHE_HOME/clustering_jax/jax (~/.cache/clustering_jax/jax).
A cache directory the user configured for JAX itself (JAX_COMPILATION_CACHE_DIR or
`jax.config.update("jax_compilation_cache_dir", ...)`) is kept as it is, with its settings.

The cache is keyed by JAX on the program, the jax/jaxlib versions, the backend and the
compile options; delete the directory to clear it. Only programs compiled after enable()
are cached, so enable before the work you want covered.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import jax

ENV = "CLUSTERING_JAX_COMPILE_CACHE"
_OFF = ("0", "off", "false", "no")
_ON = ("", "1", "on", "true", "yes")

_state = {"disabled": False, "dir": None}   # dir: the directory this module set


def default_dir() -> Path:
  """$XDG_CACHE_HOME/clustering_jax/jax, or ~/.cache/clustering_jax/jax."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "clustering_jax" / "jax"


def opted_out() -> bool:
  """Whether the cache is switched off: by disable() or CLUSTERING_JAX_COMPILE_CACHE=0."""
  return _state["disabled"] or os.environ.get(ENV, "").strip().lower() in _OFF


def enable(path: Optional[str] = None) -> Optional[str]:
  """Turns JAX's persistent compilation cache on; returns its directory, or None when off.

  path: the directory; default $CLUSTERING_JAX_COMPILE_CACHE when it names one, else
  `default_dir()`. Caches every program (minimum compile time and entry size 0). Does
  nothing when opted out (`opted_out()`), or when JAX already has a cache directory that
  this module did not set (the user's own configuration wins).
  """
  if opted_out():
    return None
  current = jax.config.jax_compilation_cache_dir
  if current and current != _state["dir"]:
    return current                      # configured by the user: leave it alone
  env = os.environ.get(ENV, "").strip()
  if path is None:
    path = env if env.lower() not in _ON else str(default_dir())
  path = str(Path(path).expanduser())
  if current == path:
    return path
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return None                         # unwritable location: run without the cache
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  jax.config.update("jax_compilation_cache_dir", path)
  _state["dir"] = path
  return path


def disable() -> None:
  """No cache for the rest of this process: later enable() calls do nothing, and a cache
  this module turned on is turned off (the user's own JAX configuration is not touched)."""
  _state["disabled"] = True
  if _state["dir"] is not None and jax.config.jax_compilation_cache_dir == _state["dir"]:
    from jax.experimental.compilation_cache import compilation_cache
    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()     # JAX re-reads the (now empty) setting
  _state["dir"] = None


def cache_dir() -> Optional[str]:
  """The directory JAX caches compiled programs in, or None."""
  return jax.config.jax_compilation_cache_dir or None
