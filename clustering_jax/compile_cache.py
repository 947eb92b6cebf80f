"""JAX's persistent compilation cache, on by default for the CLI, the benchmark and the estimators.

A compiled XLA program is written to disk and loaded by later processes instead of being
compiled again, so a second run of the same method on data of the same shapes skips its
compiles (seconds on the CPU). Every program is cached, however small or fast to compile.

  enable(path=None)  turns the cache on (idempotent; `ClusteringEstimator.fit` calls it)
  disable()          turns it off for the rest of the process: `experiments/run.py
                     --no-compile-cache` calls it first (benchmark.py passes the flag on)
  cache_dir()        the directory in use, or None
  persistent_jit     `jax.jit` for a module-level op whose compiled executable is also
                     kept on disk (below)

Environment:
  CLUSTERING_JAX_COMPILE_CACHE=0 (or off / false / no)  no cache: enable() does nothing
  CLUSTERING_JAX_COMPILE_CACHE=/some/dir                 the cache directory
  otherwise the directory is $XDG_CACHE_HOME/clustering_jax/jax (~/.cache/clustering_jax/jax).
A cache directory the user configured for JAX itself (JAX_COMPILATION_CACHE_DIR or
`jax.config.update("jax_compilation_cache_dir", ...)`) is kept as it is, with its settings.

The cache is keyed by JAX on the program, the jax/jaxlib versions, the backend and the
compile options; delete the directory to clear it. Only programs compiled after enable()
are cached, so enable before the work you want covered.

Executables (`persistent_jit`). JAX's cache skips the compile but not the tracing and lowering
that compute its key: for a large op such as k-means or the LOBPCG spectral embedding those take
0.2-0.5 s per process. A `persistent_jit` op called with concrete arrays on one device, while
the cache is on, loads its compiled executable from `<cache dir>/clustering_jax_executables/`,
keyed by this package's source files, the jax/jaxlib versions, the backend, JAX's numeric
settings, the static arguments and the arguments' shapes and dtypes; a change to any of them
is a new entry. Anything else (a call inside another trace, several devices, no cache, an
entry that does not load) runs the plain `jax.jit`. Only pure module-level functions, whose
result depends on their arguments alone, may use it.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import pickle
import threading
from pathlib import Path
from typing import Callable, Optional

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


# -- executables ---------------------------------------------------------------------------
_EXE_DIR = "clustering_jax_executables"
_loaded: dict = {}          # signature -> compiled executable, for this process
#: this process's persistent_jit executables: loaded from disk, or compiled (and stored)
executables = {"loaded": 0, "compiled": 0}
_lapack = {"ready": False}
_pending: dict = {}         # signature -> Future of (executable, from disk) being prefetched
_lock = threading.Lock()
_pool: list = []


def _executor():
  from concurrent.futures import ThreadPoolExecutor
  if not _pool:
    _pool.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="clustering_jax_compile"))
  return _pool[0]


@functools.lru_cache(maxsize=1)
def _source_hash() -> str:
  """sha256 of this package's .py files (paths and contents)."""
  root = Path(__file__).resolve().parent
  h = hashlib.sha256()
  for f in sorted(root.rglob("*.py")):
    h.update(str(f.relative_to(root)).encode())
    h.update(f.read_bytes())
  return h.hexdigest()


def _environment() -> tuple:
  import jaxlib
  dev = jax.devices()[0]
  return (_source_hash(), jax.__version__, jaxlib.__version__, dev.platform,
          getattr(dev, "device_kind", ""), os.environ.get("XLA_FLAGS", ""),
          jax.config.jax_enable_x64, str(jax.config.jax_default_matmul_precision),
          str(jax.config.jax_default_prng_impl), jax.config.jax_threefry_partitionable)


def _exe_path(sig: tuple) -> Optional[Path]:
  base = cache_dir()
  if base is None:
    return None
  return Path(base) / _EXE_DIR / (hashlib.sha256(repr(sig).encode()).hexdigest() + ".pkl")


def _load(path: Path):
  from jax.experimental import serialize_executable
  if not _lapack["ready"] and jax.default_backend() == "cpu":
    # JAX points its LAPACK kernels at their routines when it first lowers a LAPACK call;
    # a loaded executable is never lowered, so lower one (eigh of 2x2) before running any.
    jax.jit(jax.numpy.linalg.eigh).lower(jax.ShapeDtypeStruct((2, 2), "float32"))
    _lapack["ready"] = True
  with open(path, "rb") as f:
    blob, in_tree, out_tree = pickle.load(f)
  return serialize_executable.deserialize_and_load(blob, in_tree, out_tree)


def _store(path: Path, compiled) -> None:
  from jax.experimental import serialize_executable
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
      pickle.dump(serialize_executable.serialize(compiled), f)
    os.replace(tmp, path)               # atomic: a reader sees a whole entry or none
  except Exception:                     # noqa: BLE001 - a cache that cannot be written is no cache
    pass


def _fresh_compile(jitted, dyn: dict, stat: dict):
  """Lowers and compiles without JAX's own cache: an executable JAX loaded from its cache does
  not serialize whole (the copy misses some of its functions), a fresh one does."""
  from jax._src import config as jax_config
  with jax_config.enable_compilation_cache(False):
    return jitted.lower(**dyn, **stat).compile()


def _aval(a) -> str:
  if isinstance(a, jax.ShapeDtypeStruct):
    return str(jax.core.ShapedArray(a.shape, a.dtype))
  return str(jax.typeof(a))


def _obtain(jitted, sig: tuple, dyn: dict, stat: dict):
  """(executable, loaded from disk?) for sig: the stored entry, else a fresh compile (stored).
  dyn may hold jax.ShapeDtypeStruct (a prefetch)."""
  from clustering_jax import timing
  path = _exe_path(sig)
  if path is not None and path.exists():
    t0 = timing.now()
    try:
      exe = _load(path)
      timing.add_compile_span(t0, timing.now())
      return exe, True
    except Exception:                   # noqa: BLE001 - a stale or broken entry: compile again
      path.unlink(missing_ok=True)
  exe = _fresh_compile(jitted, dyn, stat)
  if path is not None:
    _store(path, exe)
  return exe, False


def persistent_jit(fun: Callable = None, *, static_argnames=(), **jit_kwargs) -> Callable:
  """`jax.jit(fun, static_argnames=..., **jit_kwargs)` whose executable persists across
  processes (see the module docstring). The returned function also has the jitted one's
  `lower`, is itself `jitted`, and has `prefetch(*args, **kwargs)`: the same arguments, arrays
  or jax.ShapeDtypeStruct, whose executable is then loaded or compiled in a background thread
  while the caller goes on (a later call with those shapes waits for it)."""
  if fun is None:
    return functools.partial(persistent_jit, static_argnames=static_argnames, **jit_kwargs)
  static = (static_argnames,) if isinstance(static_argnames, str) else tuple(static_argnames)
  jitted = jax.jit(fun, static_argnames=static, **jit_kwargs)
  params = inspect.signature(fun)
  if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.parameters.values()):
    raise TypeError(f"persistent_jit: {fun.__qualname__} must name its arguments (no *args, "
                    "**kwargs)")

  def signature(args, kwargs):
    """(sig, dynamic arguments, static arguments), or None where the plain jit runs."""
    if cache_dir() is None or opted_out():
      return None
    bound = params.bind(*args, **kwargs)
    bound.apply_defaults()
    dyn = {k: v for k, v in bound.arguments.items() if k not in static}
    leaves, tree = jax.tree.flatten(dyn)
    if any(isinstance(a, jax.core.Tracer) for a in leaves) or jax.device_count() != 1:
      return None
    try:
      avals = tuple(_aval(a) for a in leaves)
    except TypeError:
      return None
    stat = {k: v for k, v in bound.arguments.items() if k in static}
    return ((fun.__module__, fun.__qualname__, _environment(), repr(sorted(stat.items())),
             repr(sorted(jit_kwargs.items())), str(tree), avals), dyn, stat)

  @functools.wraps(fun)
  def call(*args, **kwargs):
    found = signature(args, kwargs)
    if found is None:
      return jitted(*args, **kwargs)
    sig, dyn, stat = found
    with _lock:
      exe = _loaded.get(sig)
      pending = _pending.pop(sig, None)
    if exe is not None:
      return exe(**dyn)
    exe, from_disk = pending.result() if pending is not None else _obtain(jitted, sig, dyn, stat)
    if from_disk:   # run a loaded entry to the end once: a broken one is compiled again
      try:
        out = jax.block_until_ready(exe(**dyn))
      except Exception:                 # noqa: BLE001
        path = _exe_path(sig)
        if path is not None:
          path.unlink(missing_ok=True)
        exe, from_disk = _obtain(jitted, sig, dyn, stat)   # the entry is gone: compiles
        out = exe(**dyn)
    else:
      out = exe(**dyn)
    with _lock:
      _loaded[sig] = exe
      executables["loaded" if from_disk else "compiled"] += 1
    return out

  def prefetch(*args, **kwargs) -> None:
    found = signature(args, kwargs)
    if found is None:
      return
    sig, dyn, stat = found
    with _lock:
      if sig in _loaded or sig in _pending:
        return
      _pending[sig] = _executor().submit(_obtain, jitted, sig, dyn, stat)

  call.lower = jitted.lower
  call.jitted = jitted
  call.prefetch = prefetch
  return call
