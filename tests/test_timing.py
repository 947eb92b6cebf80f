"""timing: JAX's compile spans summed once each, clipped to a window; the process start."""

import jax
import jax.numpy as jnp

from clustering_jax import timing

TRACE, COMPILE = sorted(timing.COMPILE_EVENTS)[:2]


def test_overlapping_spans_count_once_and_windows_clip(monkeypatch):
  monkeypatch.setattr(timing, "_spans", [])
  timing._on_span(TRACE, 10.5, 11.0)           # a nested trace ends first ...
  timing._on_span(COMPILE, 10.0, 12.0)         # ... then the span around it
  timing._on_span("/jax/some/other_event", 12.0, 13.0)    # not compile work
  timing._on_span(COMPILE, 13.0, 14.0)
  assert timing._spans == [(10.0, 12.0), (13.0, 14.0)]
  assert timing.compile_seconds(0.0, 100.0) == 3.0
  assert timing.compile_seconds(11.0, 13.5) == 1.5
  assert timing.compile_seconds(12.0, 13.0) == 0.0


def test_a_compile_shows_in_its_window_and_a_cached_call_does_not():
  f = jax.jit(lambda a: jnp.cos(a) * 3.0 + a.sum())
  t0 = timing.now()
  f(jnp.ones((7, 5))).block_until_ready()
  t1 = timing.now()
  f(jnp.ones((7, 5))).block_until_ready()
  t2 = timing.now()
  assert 0.0 < timing.compile_seconds(t0, t1) <= t1 - t0
  assert timing.compile_seconds(t1, t2) == 0.0


def test_process_start_is_before_now():
  start = timing.process_start()
  assert start is None or timing.now() - 3600.0 < start <= timing.now()
