"""Loop pieces: deterministic batching, Run logging, NaN guard, checkpoints and exact resume."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from clustering_jax.nets import MLPAutoencoder
from clustering_jax.ops import kmeans
from clustering_jax.train import (NonFiniteError, Run, batches, epoch_key, epoch_permutation,
                                   subset_permutation,
                                  n_batches)

KEY = jax.random.key(0)
# The estimator's call of ops.kmeans passes all of these; jit keys its cache on the keywords
# passed, so tests pass the same ones to share one compiled function per shape across files.
KMEANS_DEFAULTS = {"n_init": 10, "max_iter": 300, "tol": 1e-4, "metric": "euclidean"}


# -- batching -----------------------------------------------------------------------------------
def test_epoch_permutation_deterministic_and_a_permutation():
  a = epoch_permutation(KEY, 3, 50)
  b = epoch_permutation(KEY, 3, 50)
  np.testing.assert_array_equal(a, b)
  assert isinstance(a, np.ndarray) and a.shape == (50,)
  np.testing.assert_array_equal(np.sort(a), np.arange(50))
  assert not np.array_equal(a, epoch_permutation(KEY, 4, 50))
  assert not np.array_equal(a, epoch_permutation(jax.random.key(1), 3, 50))
  # epoch_key is a pure function of (key, epoch)
  np.testing.assert_array_equal(jax.random.key_data(epoch_key(KEY, 7)),
                                jax.random.key_data(epoch_key(KEY, 7)))


@pytest.mark.parametrize("n,bs", [(50, 16), (48, 16), (10, 16), (1, 1), (7, 3)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_cover_every_index_once(n, bs, drop_last):
  order = np.random.default_rng(n).permutation(n)
  got = list(batches(order, bs, drop_last=drop_last))
  assert len(got) == n_batches(n, bs, drop_last=drop_last)
  flat = np.concatenate(got)
  if drop_last and n >= bs:
    assert all(len(b) == bs for b in got)
    assert len(flat) == (n // bs) * bs
    np.testing.assert_array_equal(flat, order[:len(flat)])   # dropped only the tail
  else:
    np.testing.assert_array_equal(flat, order)                # every index exactly once, in order
    assert all(len(b) == bs for b in got[:-1]) and 1 <= len(got[-1]) <= bs



def test_subset_permutation_orders_the_subset_and_equals_the_full_shuffle_on_all():
  members = np.array([3, 7, 8, 20, 41, 42, 49])
  a = subset_permutation(KEY, 2, members, 50)
  np.testing.assert_array_equal(np.sort(a), members)           # a permutation of the subset
  np.testing.assert_array_equal(a, subset_permutation(KEY, 2, members, 50))
  # the order is the full epoch shuffle restricted to the subset
  full = epoch_permutation(KEY, 2, 50)
  np.testing.assert_array_equal(a, full[np.isin(full, members)])
  np.testing.assert_array_equal(subset_permutation(KEY, 2, np.arange(50), 50), full)
  assert subset_permutation(KEY, 2, np.array([], np.int64), 50).shape == (0,)
  # every position of a 2-member subset is taken by each member about half the time
  firsts = [subset_permutation(KEY, e, np.array([5, 9]), 50)[0] for e in range(200)]
  assert 70 < sum(f == 5 for f in firsts) < 130


def test_subset_permutation_rejects_bad_members():
  with pytest.raises(ValueError, match="distinct"):
    subset_permutation(KEY, 0, np.array([1, 1]), 10)
  with pytest.raises(ValueError, match=r"\[0, 10\)"):
    subset_permutation(KEY, 0, np.array([1, 10]), 10)
  with pytest.raises(ValueError, match="1-D"):
    subset_permutation(KEY, 0, np.zeros((2, 2), int), 10)

def test_batches_bad_size():
  with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
    list(batches(np.arange(4), 0))


# -- logging and the NaN guard ------------------------------------------------------------------
def test_log_writes_metrics_jsonl(tmp_path):
  run = Run(str(tmp_path), score_fn=lambda lab: {"n_labels": int(len(np.unique(lab)))})
  r0 = run.log("pre", 0, {"loss": jnp.float32(1.5), "terms": np.array([1.0, 2.0])})
  run.log("pre", 1, {"loss": 0.5}, labels=np.array([0, 1, 1]))
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert len(rows) == 2 and rows == run.history
  assert rows[0]["stage"] == "pre" and rows[0]["epoch"] == 0 and rows[0]["loss"] == 1.5
  assert rows[0]["terms"] == [1.0, 2.0] and r0 == rows[0]
  assert rows[1]["n_labels"] == 2 and "time_s" in rows[1]
  assert "n_labels" not in rows[0]                 # no labels given: no scoring
  assert not list(tmp_path.glob("checkpoints"))     # checkpoint_every=0: none


def test_nan_guard_names_stage_epoch_term_and_keeps_checkpoint(tmp_path):
  state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.int32(0)}
  run = Run(str(tmp_path), checkpoint_every=1)
  run.log("train", 0, {"loss": 1.0, "recon": 0.5})
  assert run.save("train", 0, state)
  with pytest.raises(NonFiniteError) as e:
    run.log("train", 1, {"loss": 2.0, "kl": float("nan")})
  msg = str(e.value)
  assert "'kl'" in msg and "train epoch 1" in msg
  assert "last good checkpoint: train epoch 0" in msg and str(tmp_path) in msg
  with pytest.raises(NonFiniteError, match=r"'loss' = inf at train epoch 2"):
    run.log("train", 2, {"loss": jnp.inf})
  run.close()
  # the bad epoch was not logged; the checkpoint of epoch 0 is on disk and restores
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["epoch"] for x in lines] == [0]
  fresh = Run(str(tmp_path), checkpoint_every=1)
  restored, nxt = fresh.restore("train", {"w": np.zeros((2, 3), np.float32), "step": np.int32(5)})
  assert nxt == 1
  np.testing.assert_array_equal(restored["w"], state["w"])
  fresh.close()


def test_resumed_run_continues_the_log_in_history(tmp_path):
  """A Run on a directory with a log starts from its rows, so checks over a whole stage see
  the epochs before an interruption; restore still drops rows past the restored epoch."""
  run = Run(str(tmp_path), checkpoint_every=1)
  for e in range(3):
    run.log("train", e, {"loss": 1.0 / (e + 1)})
  run.save("train", 1, {"w": np.ones(2, np.float32)})
  run.close()
  again = Run(str(tmp_path), checkpoint_every=1)
  assert [r["epoch"] for r in again.history] == [0, 1, 2]
  _, nxt = again.restore("train", {"w": np.zeros(2, np.float32)})
  assert nxt == 2 and [r["epoch"] for r in again.history] == [0, 1]
  again.close()
  assert Run(None).history == []


def test_nan_guard_checks_vector_metrics():
  run = Run(None)
  run.log("mv", 0, {"view_loss": np.array([0.5, 1.0]), "n": 3})
  with pytest.raises(NonFiniteError, match=r"'view_loss' = \[0.5, nan\] at mv epoch 1"):
    run.log("mv", 1, {"view_loss": jnp.array([0.5, jnp.nan])})


def test_progress_bar_shows_stage_and_loss(capsys):
  run = Run(None, quiet=False, force_bar=True)
  for e in run.epochs("pretrain", 1, 3):
    run.log("pretrain", e, {"loss": 0.125 * e})
  err = capsys.readouterr().err
  assert "pretrain" in err and "3/3" in err and "loss=0.25" in err
  assert len(list(Run(None, quiet=True).epochs("x", 0, 3))) == 3
  assert list(run.epochs("x", 3, 3)) == []


def test_nan_guard_without_checkpoint(tmp_path):
  run = Run(None)
  with pytest.raises(NonFiniteError, match="no checkpoint of this stage was written"):
    run.log("pre", 4, {"loss": float("nan")})


# -- checkpoints ------------------------------------------------------------------------------
@jax.jit
def _flax_adam_state():
  model = MLPAutoencoder(out_dim=5, hidden=(4,), latent=2)
  params = model.init(KEY, jnp.ones((1, 5)))
  tx = optax.adam(1e-3)
  opt = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.linspace(-1, 1, p.size).reshape(p.shape), params)
  _, opt = tx.update(grads, opt, params)      # non-trivial moments and count
  return {"params": params, "opt": opt, "centers": jnp.full((3, 2), 0.25),
          "labels": jnp.arange(7, dtype=jnp.int32)}


def test_save_restore_round_trip_bit_exact(tmp_path):
  state = _flax_adam_state()
  run = Run(str(tmp_path), checkpoint_every=1)
  assert run.restore("s", state) is None
  run.save("s", 0, state)
  run.close()
  like = jax.tree.map(jnp.zeros_like, state)
  fresh = Run(str(tmp_path), checkpoint_every=1)
  restored, nxt = fresh.restore("s", like)
  assert nxt == 1
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  adam = restored["opt"][0]
  assert type(adam) is optax.ScaleByAdamState and isinstance(restored["opt"], tuple)
  assert type(restored["opt"][1]) is type(state["opt"][1])
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    assert np.asarray(a).dtype == np.asarray(b).dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  fresh.close()


def test_save_every_n_and_latest(tmp_path):
  run = Run(str(tmp_path), checkpoint_every=2)
  saved = [run.save("t", e, {"x": np.full(2, e, np.float32)}) for e in range(5)]
  assert saved == [False, True, False, True, False]
  assert run.latest_epoch("t") == 3
  assert run.save("t", 4, {"x": np.full(2, 4, np.float32)}, force=True)
  state, nxt = run.restore("t", {"x": np.zeros(2, np.float32)})
  assert nxt == 5 and state["x"].tolist() == [4.0, 4.0]
  run.close()
  assert Run(None, checkpoint_every=1).restore("t", {"x": np.zeros(2)}) is None


def test_save_restore_typed_prng_key(tmp_path):
  """CONTRIBUTING lists the PRNG key as part of the state pytree."""
  state = {"key": jax.random.key(42), "x": jnp.ones(3)}
  run = Run(str(tmp_path), checkpoint_every=1)
  run.save("k", 0, state)
  restored, _ = Run(str(tmp_path), checkpoint_every=1).restore(
      "k", {"key": jax.random.key(0), "x": jnp.zeros(3)})
  np.testing.assert_array_equal(jax.random.key_data(restored["key"]),
                                jax.random.key_data(state["key"]))
  # the restored key draws the same numbers
  np.testing.assert_array_equal(jax.random.uniform(restored["key"], (3,)),
                                jax.random.uniform(state["key"], (3,)))


# -- THE RESUME TEST ----------------------------------------------------------------------------
# Shapes chosen to reuse test_kmeans' compiled kmeans (n=60, d=3, k=3, n_init=2).
N, D, LATENT, K, BATCH, EPOCHS = 60, 6, 3, 3, 20, 4
_MODEL = MLPAutoencoder(out_dim=D, hidden=(16,), latent=LATENT)
_TX = optax.adam(1e-2)
KW = dict(KMEANS_DEFAULTS, n_init=2)
_init = jax.jit(_MODEL.init)
_encode = jax.jit(lambda p, x: _MODEL.apply(p, x, method="encode"))
_opt_init = jax.jit(_TX.init)


@jax.jit
def _step(state, xb):
  def loss_fn(p):
    _, xh = _MODEL.apply(p, xb)
    return jnp.mean((xh - xb) ** 2)
  loss, g = jax.value_and_grad(loss_fn)(state["params"])
  upd, opt = _TX.update(g, state["opt"], state["params"])
  return {"params": optax.apply_updates(state["params"], upd), "opt": opt}, loss


class _Killed(Exception):
  pass


def _train(x, out_dir, *, kill_after=None):
  """Autoencoder pretraining + k-means on the embedding, built only from library pieces."""
  key = jax.random.key(0)
  k_init, k_data, k_km = jax.random.split(key, 3)
  params = _init(k_init, x[:1])
  state = {"params": params, "opt": _opt_init(params)}
  run = Run(str(out_dir), checkpoint_every=1)
  restored = run.restore("pretrain", state)
  state, start = restored if restored else (state, 0)
  try:
    for epoch in run.epochs("pretrain", start, EPOCHS):
      losses = []
      for idx in batches(epoch_permutation(k_data, epoch, N), BATCH):
        state, loss = _step(state, x[idx])
        losses.append(loss)
      run.log("pretrain", epoch, {"loss": jnp.mean(jnp.stack(losses))})
      run.save("pretrain", epoch, state)
      if kill_after is not None and epoch == kill_after:
        raise _Killed(epoch)
  finally:
    run.close()
  z = _encode(state["params"], x)
  res = kmeans(k_km, z, K, **KW)
  return state, np.asarray(res.labels), start


def test_resume_gives_same_params_and_labels(tmp_path):
  rng = np.random.default_rng(0)
  centers = rng.normal(0, 3, (K, D))
  x = jnp.asarray(centers[rng.integers(0, K, N)] + rng.normal(size=(N, D)), jnp.float32)

  state_a, labels_a, start_a = _train(x, tmp_path / "a")
  assert start_a == 0
  with pytest.raises(_Killed):
    _train(x, tmp_path / "b", kill_after=1)
  state_b, labels_b, start_b = _train(x, tmp_path / "b")      # a new Run on the same out_dir
  assert start_b == 2                                         # resumed, not restarted
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(labels_a, labels_b)
  # the resumed run logged epochs 0, 1 before the kill and 2, 3 after
  epochs_b = [json.loads(x)["epoch"] for x in (tmp_path / "b" / "metrics.jsonl").open()]
  assert epochs_b == [0, 1, 2, 3]
  # and training moved the parameters away from their initial values
  init = _init(jax.random.split(jax.random.key(0), 3)[0], x[:1])
  assert not np.array_equal(np.asarray(jax.tree.leaves(init)[0]),
                            np.asarray(jax.tree.leaves(state_a["params"])[0]))


def test_resume_drops_log_rows_past_the_checkpoint(tmp_path):
  from clustering_jax.train import Run
  run = Run(tmp_path, checkpoint_every=2)
  state = {"w": np.zeros(3, np.float32)}
  for e in range(3):  # checkpoint after epoch 1 only; epoch 2 is logged but not saved
    run.log("train", e, {"loss": float(e)})
    run.save("train", e, state)
  run.close()
  again = Run(tmp_path, checkpoint_every=2)
  _, start = again.restore("train", state)
  assert start == 2
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in rows] == [0, 1]


def test_batch_matrix_fixed_shape_and_small_sets():
  from clustering_jax.train import batch_matrix
  m = batch_matrix(np.arange(10), 4)
  np.testing.assert_array_equal(m, [[0, 1, 2, 3], [4, 5, 6, 7]])
  np.testing.assert_array_equal(batch_matrix(np.arange(3), 8), [[0, 1, 2]])
  with pytest.raises(ValueError):
    batch_matrix(np.arange(3), 0)
