"""The training engine: fixed-shape batches, the scanned epoch, stages, resume, timing."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from clustering_jax import timing
from clustering_jax.train import Run
from clustering_jax.train.engine import (PHASES, Epoch, ScannedEpoch, epoch_batches, make_embed,
                                         new_state, run_stage, timing_info)


def _problem(n=40, d=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = (x @ np.array([1.0, -2.0, 0.5], np.float32) + 0.1).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(y)


def _step(state, consts, idx, w, key):
  """Weighted least squares on a batch plus a key-dependent noise term (checks the keys)."""
  x, y = consts

  def loss_fn(p):
    r = x[idx] @ p["w"] + p["b"] - y[idx] + 0.01 * jax.random.normal(key, (idx.shape[0],))
    return jnp.sum(w * r ** 2) / jnp.maximum(jnp.sum(w), 1.0)

  loss, g = jax.value_and_grad(loss_fn)(state.params)
  return state.apply_gradients(grads=g), {"loss": loss}


def _fresh():
  return new_state({"w": jnp.zeros(3), "b": jnp.zeros(())}, optax.adam(0.05))


def test_epoch_batches_fixed_shape():
  order = np.random.default_rng(0).permutation(10)
  for members in (order, order[:7], order[:3], order[:0]):
    idx, w = epoch_batches(members, 10, 4)
    assert idx.shape == w.shape == (2, 4)
    assert w.sum() == (len(members) // 4) * 4 if len(members) >= 4 else w.sum() == len(members)
  idx, w = epoch_batches(order[:3], 10, 4)           # smaller than a batch: one padded batch
  np.testing.assert_array_equal(idx[0, :3], order[:3])
  np.testing.assert_array_equal(w[0], [1, 1, 1, 0])
  np.testing.assert_array_equal(w[1], 0)
  idx, w = epoch_batches(order[:3], 3, 8)            # fewer samples than a batch
  assert idx.shape == (1, 3) and w.sum() == 3
  with pytest.raises(ValueError, match="n_total"):
    epoch_batches(order, 3, 8)


def test_scanned_epoch_equals_step_loop_and_skips_empty_batches():
  consts = _problem()
  key = jax.random.key(1)
  order = np.asarray(jax.random.permutation(key, 40))
  idx, w = epoch_batches(order[:25], 40, 8)          # 3 full batches + 2 skipped ones
  assert idx.shape == (5, 8) and w[3:].sum() == 0
  epoch = ScannedEpoch(_step)
  state, m = epoch(_fresh(), consts, idx, w, key)
  ref, losses = _fresh(), []
  step = jax.jit(_step)
  for b in range(3):
    ref, mb = step(ref, consts, jnp.asarray(idx[b]), jnp.asarray(w[b]), jax.random.fold_in(key, b))
    losses.append(float(mb["loss"]))
  assert int(state.step) == 3 and int(ref.step) == 3     # skipped batches: no update
  np.testing.assert_allclose(state.params["w"], ref.params["w"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(m["loss"], np.mean(losses), rtol=1e-6)
  # A different member-set size reuses the compiled epoch.
  idx2, w2 = epoch_batches(order[:11], 40, 8)
  epoch(state, consts, idx2, w2, key)
  assert epoch.n_compiles == 1 and epoch.steps == 4 and epoch.compile_s > 0


def test_empty_batches_anywhere_are_skipped_and_others_keep_their_keys():
  consts, key = _problem(), jax.random.key(3)
  idx, w = epoch_batches(np.arange(40), 40, 8)
  w[1] = 0.0                                          # an empty batch between full ones
  w[3] = 0.0
  state, m = ScannedEpoch(_step)(_fresh(), consts, idx, w, key)
  ref, losses, step = _fresh(), [], jax.jit(_step)
  for b in (0, 2, 4):
    ref, mb = step(ref, consts, jnp.asarray(idx[b]), jnp.asarray(w[b]), jax.random.fold_in(key, b))
    losses.append(float(mb["loss"]))
  assert int(state.step) == 3
  np.testing.assert_allclose(state.params["w"], ref.params["w"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(m["loss"], np.mean(losses), rtol=1e-6)


def test_scanned_epoch_uses_per_batch_keys():
  consts = _problem()
  idx, w = epoch_batches(np.arange(40), 40, 8)
  s1, _ = ScannedEpoch(_step)(_fresh(), consts, idx, w, jax.random.key(1))
  s2, _ = ScannedEpoch(_step)(_fresh(), consts, idx, w, jax.random.key(2))
  assert not np.allclose(s1.params["w"], s2.params["w"])


def _stage(run, n_epochs, stop_at=None):
  consts = _problem()
  scan = ScannedEpoch(_step)

  def epoch_fn(epoch, state):
    key = jax.random.fold_in(jax.random.key(0), epoch)
    idx, w = epoch_batches(np.asarray(jax.random.permutation(key, 40)), 40, 8)
    state, m = scan(state, consts, idx, w, key)
    return Epoch(state, m, stop=stop_at is not None and epoch == stop_at)

  return run_stage(run, "fit", _fresh(), n_epochs, epoch_fn, scans=(scan,))


def test_run_stage_resume_equals_uninterrupted(tmp_path):
  full, info = _stage(Run(tmp_path / "a", checkpoint_every=2), 6)
  assert info["epochs"] == 6 and info["compile_s"] > 0 and info["steps_per_s"] > 0
  assert timing_info({"fit": info})["epochs"] == {"fit": 6}
  _stage(Run(tmp_path / "b", checkpoint_every=2), 4)             # "killed" after epoch 3
  resumed, info_b = _stage(Run(tmp_path / "b", checkpoint_every=2), 6)
  assert info_b["epochs"] == 2
  np.testing.assert_array_equal(resumed.params["w"], full.params["w"])
  assert int(resumed.step) == int(full.step) == 30
  assert type(resumed.opt_state[0]).__name__ == "ScaleByAdamState"


def test_run_stage_stop_is_final_on_resume(tmp_path):
  run = Run(tmp_path, checkpoint_every=100)
  state, info = _stage(run, 10, stop_at=2)
  assert info["epochs"] == 3 and info["stopped_at"] == 2
  assert run.history[-1]["stopped"] == 1
  again, info2 = _stage(Run(tmp_path, checkpoint_every=100), 10, stop_at=None)
  assert info2["epochs"] == 0 and info2["stopped_at"] == 2
  np.testing.assert_array_equal(again.params["w"], state.params["w"])


def test_make_embed_blocks_match_whole():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(37, 4)), jnp.float32)
  w = jnp.asarray(np.random.default_rng(1).normal(size=(4, 2)), jnp.float32)
  embed = make_embed(lambda p, rows: jnp.tanh(rows @ p), block=8)
  np.testing.assert_allclose(embed(w, x), jnp.tanh(x @ w), rtol=1e-6)


def test_nan_step_stops_stage_with_last_checkpoint(tmp_path):
  from clustering_jax.train import NonFiniteError
  run = Run(tmp_path, checkpoint_every=1)
  scan = ScannedEpoch(lambda s, c, i, w, k: (s, {"loss": jnp.where(s.step >= 0, jnp.nan, 0.0)}))

  def epoch_fn(epoch, state):
    if epoch == 0:
      return Epoch(state, {"loss": 1.0})
    state, m = scan(state, None, np.zeros((1, 2), np.int32), np.ones((1, 2), np.float32),
                    jax.random.key(0))
    return Epoch(state, m)

  with pytest.raises(NonFiniteError, match="epoch 1"):
    run_stage(run, "fit", _fresh(), 3, epoch_fn, scans=(scan,))
  assert run.latest_epoch("fit") == 0


def test_step_is_traced_once_for_both_programs():
  traces = []

  def step(state, consts, idx, w, key):
    traces.append(1)
    return _step(state, consts, idx, w, key)

  epoch, consts = ScannedEpoch(step), _problem()
  state, _ = epoch(_fresh(), consts, *epoch_batches(np.arange(40), 40, 8), jax.random.key(0))
  epoch(state, consts, *epoch_batches(np.arange(20), 40, 8), jax.random.key(1))  # 2 empty
  assert epoch.n_compiles == 1 and len(traces) == 1


def test_timing_info_splits_the_fit_into_phases_that_add_up(tmp_path):
  consts, scan = _problem(), ScannedEpoch(_step)

  def epoch_fn(epoch, state):
    time.sleep(0.03)
    state, m = scan(state, consts, *epoch_batches(np.arange(40), 40, 8), jax.random.key(epoch))
    return Epoch(state, m)

  start = timing.now()
  time.sleep(0.05)                                              # the starting point
  state, info = run_stage(Run(tmp_path, checkpoint_every=2), "fit", _fresh(), 3, epoch_fn,
                          scans=(scan,))
  time.sleep(0.05)                                              # the read-out
  assert timing_info({"fit": info})["phases"]["init_s"] is None   # no start: the caller's
  ph = timing_info({"fit": info}, start=start, done=state.params)["phases"]
  total = timing.now() - start
  assert list(ph) == list(PHASES)
  assert sum(ph.values()) == pytest.approx(total, abs=0.02)
  assert ph["init_s"] >= 0.045 and ph["readout_s"] >= 0.045 and ph["train_s"] >= 0.085
  assert ph["compile_s"] > 0 and ph["save_s"] > 0             # the epoch's compile, checkpoints
  assert ph["train_s"] + ph["save_s"] <= info["t_end"] - info["t_start"]
