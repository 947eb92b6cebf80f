"""Where a run's seconds go: wall-clock stamps and the time JAX spends compiling.

JAX reports every trace of a jitted function, every lowering to MLIR and every backend
compile (or persistent-cache load) as a time span (`jax.monitoring`). This module sums
those spans, overlapping ones once, so that a phase of a run (loading, a training stage,
the read-out) can be split into its own work and the compile work done inside it:

  now()                    the clock of the spans (seconds since the epoch)
  compile_seconds(t0, t1)  seconds of [t0, t1] spent tracing, lowering or compiling
  add_compile_span(s, e)   counts [s, e] as compile work (`compile_cache.persistent_jit` loads)
  process_start()          when this process started (from /proc), or None

The listener is registered on import; spans before it are not seen.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Optional

import jax

#: the jax.monitoring events whose spans count as compile work (jax._src.dispatch names).
COMPILE_EVENTS = frozenset({
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
})

_spans: list = []          # disjoint [start, end] intervals, in order of their end
_lock = threading.Lock()


def now() -> float:
  """Wall-clock seconds, the clock jax.monitoring stamps its spans with."""
  return time.time()


def _on_span(event: str, start: float, end: float, **_) -> None:
  if event not in COMPILE_EVENTS:
    return
  with _lock:  # a span that overlaps the last ones (a trace around nested traces) absorbs them
    while _spans and _spans[-1][1] >= start:
      s, e = _spans.pop()
      start, end = min(start, s), max(end, e)
    _spans.append((start, end))


def add_compile_span(start: float, end: float) -> None:
  """Counts [start, end] as compile work (a compiled program loaded by this package itself)."""
  _on_span(next(iter(sorted(COMPILE_EVENTS))), start, end)


def compile_seconds(t0: float, t1: Optional[float] = None) -> float:
  """Seconds of [t0, t1] (t1 default now) in which JAX traced, lowered or compiled a program
  (a persistent-cache load included), each instant counted once."""
  t1 = now() if t1 is None else t1
  total = 0.0
  with _lock:
    for s, e in reversed(_spans):
      if e <= t0:
        break
      total += max(0.0, min(e, t1) - max(s, t0))
  return total


def process_start() -> Optional[float]:
  """This process's start time on the `now()` clock (Linux /proc; 10 ms resolution), so that
  the interpreter's own start-up counts too; None where it cannot be read."""
  try:
    with open("/proc/self/stat") as f:
      ticks = float(f.read().rsplit(")", 1)[1].split()[19])   # field 22: starttime
    with open("/proc/uptime") as f:
      uptime = float(f.read().split()[0])
    start = now() - uptime + ticks / os.sysconf("SC_CLK_TCK")
  except (OSError, ValueError, IndexError):
    return None
  return start if now() - 3600.0 < start <= now() else None


jax.monitoring.register_event_time_span_listener(_on_span)
