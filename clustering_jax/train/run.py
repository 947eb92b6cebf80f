"""Host-side bookkeeping for one training run.

A method's fit loop asks a Run for its epochs, reports metrics once per epoch,
and hands it the state pytree to checkpoint. The Run shows a progress bar, writes
metrics.jsonl, keeps orbax checkpoints, and stops on a non-finite loss while the
last good checkpoint stays on disk. Labels never reach this module: scoring is a
callback (`score_fn`) supplied by the API layer and used for display/logging only.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np


class NonFiniteError(FloatingPointError):
  """A loss term became NaN/Inf; the message names stage, epoch and term."""


def _is_key(a) -> bool:
  return isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


def _host(a) -> np.ndarray:
  """A leaf as a numpy array; typed PRNG keys as their raw key data."""
  return np.asarray(jax.random.key_data(a)) if _is_key(a) else np.asarray(a)


def _to_py(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


class Run:
  """Progress bar + JSON-lines log + orbax checkpoints + NaN guard.

  Args:
    out_dir: run directory (metrics.jsonl, checkpoints/); None keeps nothing on disk.
    quiet: no progress bar (also none when stderr is not a TTY, unless force_bar).
    checkpoint_every: save every N epochs of each stage (0: never).
    score_fn: optional labels -> dict of metrics, for display and logs only.
  """

  def __init__(self, out_dir: Optional[str] = None, *, quiet: bool = True,
               checkpoint_every: int = 0, score_fn: Optional[Callable] = None,
               force_bar: bool = False):
    self.out_dir = Path(out_dir) if out_dir else None
    self.quiet = quiet or not (force_bar or sys.stderr.isatty())
    self.checkpoint_every = int(checkpoint_every)
    self.score_fn = score_fn
    self.history: list[dict] = []
    self._bar = None
    self._managers: dict = {}
    self._t0 = time.perf_counter()
    if self.out_dir:
      self.out_dir.mkdir(parents=True, exist_ok=True)
      # A resumed run continues the same log: history holds the rows already on disk, so
      # checks over a whole stage (e.g. IDCL's L_rec against its pre-trained value) see them.
      path = self.out_dir / "metrics.jsonl"
      if path.exists():
        self.history = [json.loads(line) for line in path.read_text().splitlines()
                        if line.strip()]

  # -- epochs and progress -------------------------------------------------
  def epochs(self, stage: str, start: int, stop: int) -> Iterator[int]:
    """Yields epochs start..stop-1 of a stage with a progress bar."""
    if stop <= start:
      return
    if not self.quiet:
      from tqdm.auto import tqdm
      self._bar = tqdm(total=stop, initial=start, desc=stage, leave=True, dynamic_ncols=True)
    try:
      for e in range(start, stop):
        yield e
        if self._bar is not None:
          self._bar.update(1)
    finally:
      if self._bar is not None:
        self._bar.close()
        self._bar = None

  # -- metrics ---------------------------------------------------------------
  def log(self, stage: str, epoch: int, metrics: dict, *, labels=None) -> dict:
    """Records one epoch. Raises NonFiniteError if any metric is NaN/Inf."""
    row = {k: _to_py(v) for k, v in metrics.items()}
    for k, v in row.items():
      a = np.asarray(v)  # scalars and per-view/per-term vectors alike
      if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
        last = self.latest_epoch(stage)
        where = (f"last good checkpoint: {stage} epoch {last} in {self._ckpt_dir(stage)}"
                 if last is not None else "no checkpoint of this stage was written")
        raise NonFiniteError(
            f"non-finite loss term {k!r} = {v} at {stage} epoch {epoch}; stopping ({where})")
    if labels is not None and self.score_fn is not None:
      row.update(self.score_fn(np.asarray(labels)))
    row = {"stage": stage, "epoch": int(epoch),
           "time_s": round(time.perf_counter() - self._t0, 3), **row}
    self.history.append(row)
    if self.out_dir:
      with open(self.out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    if self._bar is not None:
      self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                             for k, v in row.items()
                             if k not in ("stage", "epoch", "time_s") and np.isscalar(v)},
                            refresh=False)
    return row

  # -- checkpoints -------------------------------------------------------------
  def _ckpt_dir(self, stage: str) -> Optional[Path]:
    return (self.out_dir / "checkpoints" / stage).absolute() if self.out_dir else None

  def _manager(self, stage: str):
    if stage not in self._managers:
      import orbax.checkpoint as ocp
      self._managers[stage] = ocp.CheckpointManager(
          self._ckpt_dir(stage), options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
    return self._managers[stage]

  @property
  def checkpointing(self) -> bool:
    return self.out_dir is not None and self.checkpoint_every > 0

  def latest_epoch(self, stage: str) -> Optional[int]:
    if not self.checkpointing or not self._ckpt_dir(stage).exists():
      return None
    return self._manager(stage).latest_step()

  def save(self, stage: str, epoch: int, state: Any, *, force: bool = False) -> bool:
    """Saves `state` as the checkpoint of `epoch` (completed) when due. Call after log()."""
    if not self.checkpointing:
      return False
    if not force and (epoch + 1) % self.checkpoint_every != 0:
      return False
    import orbax.checkpoint as ocp
    mgr = self._manager(stage)
    mgr.save(epoch, args=ocp.args.StandardSave(jax.tree.map(_host, state)), force=True)
    mgr.wait_until_finished()
    return True

  def restore(self, stage: str, like: Any):
    """Latest checkpoint of a stage as (state, next_epoch), or None.

    `like` is a pytree of the same structure (e.g. the freshly initialized state);
    restored leaves take its types (named tuples of optax states survive).
    """
    step = self.latest_epoch(stage)
    if step is None:
      return None
    import orbax.checkpoint as ocp
    abstract = jax.tree.map(lambda a: np.zeros_like(_host(a)), like)
    state = self._manager(stage).restore(step, args=ocp.args.StandardRestore(abstract))
    state = jax.tree.map(
        lambda r, a: (jax.random.wrap_key_data(np.asarray(r), impl=jax.random.key_impl(a))
                      if _is_key(a) else np.asarray(r, dtype=np.asarray(a).dtype)), state, like)
    self._drop_logged_after(stage, step)
    return state, step + 1

  def _drop_logged_after(self, stage: str, epoch: int) -> None:
    """Forgets log rows of `stage` past the restored epoch: they will be run and logged again."""
    keep = lambda row: not (row.get("stage") == stage and row.get("epoch", -1) > epoch)
    self.history = [r for r in self.history if keep(r)]
    path = self.out_dir / "metrics.jsonl" if self.out_dir else None
    if path is not None and path.exists():
      rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
      path.write_text("".join(json.dumps(r) + "\n" for r in rows if keep(r)))

  def close(self):
    for m in self._managers.values():
      m.wait_until_finished()
      m.close()
    self._managers = {}


def quiet_run() -> Run:
  """A Run that shows and keeps nothing (the estimator default)."""
  return Run(None, quiet=True)


def env_flag(name: str) -> bool:
  return os.environ.get(name, "").lower() in ("1", "true", "yes")
