"""The one training engine: train state, scanned epochs, compile-and-time, stages, embedding.

Every method trains through these pieces:

- `TrainState`: params, opt_state, step and `extra` (any other trees a step carries:
  an EMA teacher, centers, batch statistics, previous labels). The optimizer `tx` is a
  static field, so learning-rate schedules are optax schedules read from its own count.
- `ScannedEpoch(step_fn)`: one jitted loop of `step_fn` over a fixed-shape batch matrix.
  Batches whose weights are all zero are not run (no update, no optimizer count): the loop's
  length is an argument, so a member set that changes size (a curriculum) runs with one
  shape and compiles once. Compiled ahead of time on first use; its compile time, steps and step
  time are recorded. With more than one device the batch axis is sharded over a `data`
  mesh axis and everything else is replicated: no sharding code in the methods.
- `run_stage(run, name, state, n_epochs, epoch_fn)`: restore -> epochs -> log -> save, the
  only copy of that loop; returns the state and the stage's timing summary.
- `timing_info(stages, start=, done=)`: what a fit reports of its epochs and seconds, the
  fit's wall time split into init / compile / train / read-out / save (`fit_phases`).
- `make_embed(fn, block)`: a whole dataset through `fn` in row blocks.

Key convention: a method hands each epoch its epoch key (`epoch_key(stage_key, epoch)`
unless it splits it further); batch b of the epoch uses `fold_in(epoch_key, b)`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clustering_jax import timing
from clustering_jax.ops.distances import map_row_blocks
from clustering_jax.train.batching import batch_matrix
from clustering_jax.train.run import Run


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["step", "params", "opt_state", "extra"],
                   meta_fields=["apply_fn", "tx"])
@dataclasses.dataclass(frozen=True)
class TrainState:
  """Flax's TrainState (the same fields, pytree and update) plus `extra` trees.

  step, params, opt_state and extra are pytree leaves; apply_fn and tx are static. Defined
  here rather than imported so that a method without flax modules does not import flax.
  """
  step: Any
  apply_fn: Optional[Callable]
  params: Any
  tx: Any
  opt_state: Any
  extra: Any = None

  def replace(self, **updates) -> "TrainState":
    return dataclasses.replace(self, **updates)

  def apply_gradients(self, *, grads, **updates) -> "TrainState":
    """step + 1, params and opt_state after one `tx` update with `grads`, and `updates`."""
    deltas, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, deltas),
                        opt_state=opt_state, **updates)


def new_state(params, tx, extra=None, apply_fn=None) -> TrainState:
  """A TrainState at step 0. The optimizer state is built in one compiled call (op by op,
  every parameter shape compiles its own zeros)."""
  return TrainState(step=jax.device_put(np.zeros((), np.int32)), apply_fn=apply_fn,
                    params=params, tx=tx, opt_state=jax.jit(tx.init)(params), extra=extra)


# -- batches -------------------------------------------------------------------------
def epoch_batches(order: np.ndarray, n_total: int, batch_size: int):
  """(idx, w), each (n_batches, B), of fixed shape for a set of at most n_total samples.

  n_batches = max(n_total // B, 1) with B = min(batch_size, n_total): the shape depends
  on the data only. `order` (the epoch's shuffled members) fills full batches first (its
  remainder is dropped; the order is reshuffled every epoch); a set smaller than one batch
  forms one batch padded with zero-weight rows; the rows after the set's batches have
  zero weight and are skipped by `ScannedEpoch`.
  """
  order = np.asarray(order)
  if len(order) > n_total:
    raise ValueError(f"order has {len(order)} samples, more than n_total={n_total}")
  b = max(min(int(batch_size), int(n_total)), 1)
  nb = max(n_total // b, 1)
  idx = np.zeros((nb, b), np.int32)
  w = np.zeros((nb, b), np.float32)
  if len(order) >= b:
    full = batch_matrix(order, b)
    idx[:len(full)], w[:len(full)] = full, 1.0
  elif len(order):
    idx[0, :len(order)], w[0, :len(order)] = order, 1.0
  return idx, w


# -- devices ---------------------------------------------------------------------------
def data_mesh() -> Optional[jax.sharding.Mesh]:
  """A one-axis ('data') mesh over all devices, or None on a single device."""
  if jax.device_count() == 1:
    return None
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicate(tree, mesh):
  if mesh is None:
    return tree
  return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def _on_device(a, dtype):
  """a as a jax.Array of dtype: host data is copied over (jnp.asarray compiles a program per
  new shape for that)."""
  if isinstance(a, jax.Array) and a.dtype == dtype:
    return a
  return jax.device_put(np.asarray(a, dtype))


def _on_mesh(a, mesh) -> bool:
  return (isinstance(a, jax.Array) and isinstance(a.sharding, jax.sharding.NamedSharding)
          and a.sharding.mesh == mesh)


def shard_rows(tree, mesh, axis: int = 0):
  """Splits every leaf's `axis` over the mesh's data axis (its size must divide it)."""
  if mesh is None:
    return tree
  spec = jax.sharding.PartitionSpec(*([None] * axis + ["data"]))
  return jax.device_put(tree, jax.sharding.NamedSharding(mesh, spec))


# -- one scanned epoch ---------------------------------------------------------------------
def _leaf_sig(a) -> tuple:
  """(shape, dtype name) of one argument, as the compiled program sees it: an array's own
  dtype, a Python scalar's JAX dtype. Cheap: it runs for every leaf of every epoch's call."""
  dtype = getattr(a, "dtype", None)
  if dtype is None:
    return (np.shape(a), str(jnp.result_type(a)))
  return (tuple(a.shape), dtype.name)


class ScannedEpoch:
  """`step_fn(state, consts, idx, w, key) -> (state, metrics)` scanned over an epoch.

  Calling it with (state, consts, idx (nb, B), w (nb, B), key) returns the new state and
  the metrics averaged over the batches that ran (summed in batch order on the device), as
  Python floats: one host sync per epoch. params and opt_state are donated, `extra` is not.
  Empty batches (all weights zero) are moved behind the others and not run; batch b keeps
  its key fold_in(key, b). `n_compiles` counts the programs compiled (1 in a fit whose
  shapes are fixed, whatever the number of empty batches).
  """

  def __init__(self, step_fn: Callable):
    # One trace of the step per shape: `eval_shape` below traces this jitted step and the
    # loop body's call finds that trace in JAX's cache (XLA inlines the call).
    self._step = jax.jit(step_fn)
    self._jit = jax.jit(self._epoch, donate_argnums=0)
    self._exe: dict = {}
    self.compile_s, self.n_compiles, self.steps, self.step_s = 0.0, 0, 0, 0.0

  def _epoch(self, core, extra, consts, idx, w, batch_ids, n_run, key):
    """The first n_run rows of (idx, w) (the batches with weight), batch_ids[i] the row's
    place in the epoch (its key): a loop of dynamic length, so one program serves every
    number of empty batches (no conditional around the step)."""
    state = core.replace(extra=extra)
    m_shape = jax.eval_shape(self._step, state, consts, idx[0], w[0], key)[1]
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)

    def body(i, carry):
      st, total = carry
      st, m = self._step(st, consts, idx[i], w[i], jax.random.fold_in(key, batch_ids[i]))
      return st, jax.tree.map(jnp.add, total, m)

    state, total = jax.lax.fori_loop(0, n_run, body, (state, zeros))
    return state, jax.tree.map(lambda t: t / jnp.maximum(n_run, 1).astype(t.dtype), total)

  def __call__(self, state, consts, idx, w, key):
    mesh = data_mesh()
    w_host = np.asarray(w)
    full = w_host.sum(axis=1) > 0
    n_run = int(full.sum())
    if n_run < len(full):   # batches with weight first, in order; the rest are not run
      order = np.concatenate([np.flatnonzero(full), np.flatnonzero(~full)])
      idx, w = np.asarray(idx)[order], w_host[order]
    else:
      order = np.arange(len(full))
    idx, w = _on_device(idx, np.int32), _on_device(w, np.float32)
    batch_ids = _on_device(order, np.int32)
    n_dev = jax.device_put(np.int32(n_run))
    if mesh is not None:  # constants a method placed itself (shard_rows) keep their sharding
      state, key, batch_ids, n_dev = replicate((state, key, batch_ids, n_dev), mesh)
      consts = jax.tree.map(lambda a: a if _on_mesh(a, mesh) else replicate(a, mesh), consts)
      split = idx.shape[1] % mesh.size == 0
      idx, w = (shard_rows if split else replicate)((idx, w), mesh, *((1,) if split else ()))
    # params/opt_state are donated; `extra` is not, so arrays a method still holds from it
    # (labels, centers) stay valid after the call.
    args = (state.replace(extra=None), state.extra, consts, idx, w, batch_ids, n_dev, key)
    leaves, tree = jax.tree.flatten(args)
    sig = (tree, tuple(_leaf_sig(a) for a in leaves))
    if sig not in self._exe:
      t = time.perf_counter()
      self._exe[sig] = self._jit.lower(*args).compile()
      self.compile_s += time.perf_counter() - t
      self.n_compiles += 1
    t = time.perf_counter()
    state, metrics = self._exe[sig](*args)
    metrics = jax.device_get(metrics)
    self.step_s += time.perf_counter() - t
    self.steps += n_run
    return state, {k: (float(v) if np.ndim(v) == 0 else np.asarray(v).tolist())
                   for k, v in metrics.items()}


# -- stages ---------------------------------------------------------------------------------
class Epoch(NamedTuple):
  """What a method's epoch function returns to `run_stage`."""
  state: Any
  metrics: dict
  labels: Any = None      # this epoch's labels, for the display score only (never training)
  stop: bool = False      # the method's stop rule fired: the stage ends after this epoch


def _stopped(run: Run, name: str) -> bool:
  return any(r.get("stage") == name and r.get("stopped") for r in run.history)


def run_stage(run: Run, name: str, state, n_epochs: int, epoch_fn: Callable, *,
              scans: tuple = ()):
  """Restore -> epochs -> log -> save for one stage. Returns (state, info).

  epoch_fn(epoch, state) -> Epoch. A checkpoint is written when due, at the stage's last
  epoch and at a stop; a stage that stopped (a logged row with "stopped") is not resumed.
  info: epochs (run in this call), epoch_s (median wall time of an epoch without
  compilation and checkpoint saves), compile_s, steps_per_s and n_compiles of the stage's
  ScannedEpochs (`scans`), stopped_at; and for `timing_info`: t_start, t_end (`timing.now()`
  stamps of the stage) and save_s (checkpoint restore and saves).
  """
  t_start = timing.now()
  restored = run.restore(name, state)
  state, start = restored if restored else (state, 0)
  if restored:
    state = jax.tree.map(jnp.asarray, state)
  save_s = timing.now() - t_start
  stop_epoch = next((r["epoch"] for r in run.history
                     if r.get("stage") == name and r.get("stopped")), None)
  times = []
  for epoch in run.epochs(name, start, n_epochs if stop_epoch is None else start):
    t0, c0 = time.perf_counter(), sum(s.compile_s for s in scans)
    out = epoch_fn(epoch, state)
    state = out.state
    metrics = {**out.metrics, **({"stopped": 1} if out.stop else {})}
    run.log(name, epoch, metrics, labels=out.labels)
    t_save = time.perf_counter()
    run.save(name, epoch, state, force=out.stop or epoch + 1 == n_epochs)
    save_s += time.perf_counter() - t_save
    times.append(t_save - t0 - (sum(s.compile_s for s in scans) - c0))
    if out.stop:
      stop_epoch = epoch
      break
  steps, step_s = sum(s.steps for s in scans), sum(s.step_s for s in scans)
  info = {"epochs": len(times), "epoch_s": round(float(np.median(times)), 5) if times else None,
          "compile_s": round(sum(s.compile_s for s in scans), 4) if scans else None,
          "steps_per_s": round(steps / step_s, 2) if step_s > 0 else None,
          "n_compiles": sum(s.n_compiles for s in scans), "stopped_at": stop_epoch,
          "t_start": t_start, "t_end": timing.now(), "save_s": save_s}
  return state, info


#: A fit's seconds, split without overlap (`fit_phases`); the same keys for every method.
PHASES = ("init_s", "compile_s", "train_s", "readout_s", "save_s")


def fit_phases(stages: dict, *, start: Optional[float] = None, done: Any = None) -> dict:
  """A fit's wall time in PHASES, from its stages' run_stage infos; call it at the fit's end.

  compile_s: JAX tracing, lowering and compiling (or cache loads) between `start` and now
  (`timing.compile_seconds`); the other phases leave it out. train_s: the stages' epochs
  (pre-training included). save_s: checkpoint saves and restores. readout_s: from the last
  stage's end to now (the final embedding and labels). init_s: the rest, from `start` (a
  `timing.now()` stamp at the fit's start) to the first stage and between stages (the starting
  point). Without `start`, init_s and compile_s are None (the caller, who knows when the fit
  began, fills them). done: arrays the read-out produced, waited for before the clock is read
  (JAX runs asynchronously).
  """
  if done is not None:
    jax.block_until_ready(done)
  end = timing.now()
  spans = [(v["t_start"], v["t_end"]) for v in stages.values() if "t_start" in v]
  save = sum(v.get("save_s", 0.0) for v in stages.values())
  train = sum(e - s - timing.compile_seconds(s, e) for s, e in spans) - save
  last = max((e for _, e in spans), default=end if start is None else start)
  out = {"init_s": None, "compile_s": None, "train_s": train,
         "readout_s": end - last - timing.compile_seconds(last, end), "save_s": save}
  if start is not None:
    out["compile_s"] = timing.compile_seconds(start, end)
    out["init_s"] = (end - start) - sum(v for k, v in out.items() if k != "init_s")
  return {k: None if v is None else round(max(v, 0.0), 4) for k, v in out.items()}


def timing_info(stages: dict, *, start: Optional[float] = None, done: Any = None) -> dict:
  """fit_info_ entries from {stage: run_stage info}: the same keys for every method.

  epochs: {stage: epochs run}; timing: {stage: {epoch_s, compile_s, steps_per_s,
  n_compiles}}; phases: `fit_phases(stages, start=start, done=done)`, so call it when the
  fit's read-out is done.
  """
  return {"epochs": {k: v["epochs"] for k, v in stages.items()},
          "timing": {k: {t: v[t] for t in ("epoch_s", "compile_s", "steps_per_s", "n_compiles")}
                     for k, v in stages.items()},
          "phases": fit_phases(stages, start=start, done=done)}


# -- embedding ---------------------------------------------------------------------------
def make_embed(fn: Callable, *, block: int = 1024) -> Callable:
  """jitted `embed(params, x)`: fn(params, rows) over row blocks of x, concatenated."""
  return jax.jit(lambda params, x: map_row_blocks(lambda rows, _: fn(params, rows), x,
                                                  block=block))
