"""The run directory's figures: a 2-D projection of the embedding and the loss curves.

The projection is a randomized PCA (Halko, Martinsson & Tropp 2011) fitted on at most
`max_rows` sampled rows, so its cost is bounded in rows and linear in columns: about
O(max_rows · d · (oversample + 2) · (2 · power_iters + 2)) flops and no d × d or n × n matrix.
A full SVD of a 2,708 × 9,557 embedding took 140 s on 2 CPU cores; this takes well under a
second (experiments/plot_speed.py, docs/results/plot_speed.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

#: at most this many rows fit the projection and at most max_points are drawn.
MAX_FIT_ROWS = 5000
MAX_POINTS = 20000
#: clusters / classes named one by one in a legend; above this, the legend says how many.
MAX_LEGEND = 20


def project_2d(embedding: np.ndarray, *, max_rows: int = MAX_FIT_ROWS, oversample: int = 10,
               power_iters: int = 2, seed: int = 0):
  """First two principal components of an (n, ...) embedding by randomized PCA.

  Returns (xy (n, 2) float32, explained (2,) fraction of the total variance of the rows used).
  Embeddings with one column get a zero second coordinate. Deterministic for a given seed;
  each component's sign is fixed so that its largest loading is positive.
  """
  e = np.asarray(embedding, np.float32).reshape(len(embedding), -1)
  n, d = e.shape
  rng = np.random.default_rng(seed)
  rows = np.sort(rng.choice(n, max_rows, replace=False)) if n > max_rows else slice(None)
  fit = e[rows]
  mean = fit.mean(axis=0, dtype=np.float64).astype(np.float32)
  fit = fit - mean
  flat = fit.ravel()
  total = float(np.dot(flat, flat))
  if d == 1:
    xy = np.concatenate([e - mean, np.zeros_like(e)], axis=1)
    return xy, np.array([1.0 if total > 0 else 0.0, 0.0])
  if d <= 256:  # small: the exact eigenvectors of the d × d covariance are cheapest
    evals, evecs = np.linalg.eigh(fit.T.astype(np.float64) @ fit.astype(np.float64))
    comps = evecs[:, ::-1][:, :2].T.astype(np.float32)
    var = np.maximum(evals[::-1][:2], 0.0)
  else:  # randomized range finder with power iterations; only l × l factorizations
    ell = min(2 + oversample, *fit.shape)
    y = fit @ rng.standard_normal((d, ell)).astype(np.float32)
    for _ in range(power_iters):
      y = fit @ (fit.T @ _orth(y))
    b = _orth(y).T @ fit                                    # (l', d): fit ≈ Q B
    evals, u = np.linalg.eigh(b.astype(np.float64) @ b.T.astype(np.float64))
    top = np.argsort(evals)[::-1][:2]
    var = np.maximum(evals[top], 0.0)
    comps = (u[:, top].T.astype(np.float32) @ b) / np.sqrt(np.maximum(var, 1e-30))[:, None]
    comps = comps.astype(np.float32)
  comps = comps * np.where(np.take_along_axis(
      comps, np.argmax(np.abs(comps), axis=1)[:, None], axis=1) < 0, -1, 1).astype(np.float32)
  xy = e @ comps.T - mean @ comps.T  # no centred copy of all n rows
  if xy.shape[1] == 1:
    xy = np.concatenate([xy, np.zeros_like(xy)], axis=1)
  explained = np.zeros(2)
  explained[:len(var)] = var / total if total > 0 else 0.0
  return xy.astype(np.float32), explained


def _orth(y: np.ndarray) -> np.ndarray:
  """An orthonormal basis (float32) of the columns of y (m × l, l small), by Cholesky-QR
  twice in float64 through the l × l Gram matrix; directions below 1e-6 of the largest
  singular value are dropped. LAPACK's QR of a tall thin float32 matrix was the slowest step
  of the projection on a loaded 2-core CPU."""
  q = y.astype(np.float64)
  for _ in range(2):
    w, v = np.linalg.eigh(q.T @ q)
    keep = w > max(float(w.max()), 1e-300) * 1e-12
    q = q @ (v[:, keep] / np.sqrt(w[keep]))
  return q.astype(np.float32)


def _scatter_panel(ax, xy, values, title, legend_title, explained):
  """One panel: points coloured by integer values, a legend and axis labels."""
  import matplotlib
  from matplotlib.lines import Line2D
  uniq = np.unique(values)
  cmap = matplotlib.colormaps["tab10" if len(uniq) <= 10 else "tab20"]
  index = np.searchsorted(uniq, values)
  colors = cmap(index % cmap.N)
  ax.scatter(xy[:, 0], xy[:, 1], c=colors, s=3, linewidths=0, rasterized=True)
  ax.set_title(title, fontsize=9)
  ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of variance)")
  ax.set_ylabel(f"PC 2 ({explained[1]:.0%} of variance)")
  ax.tick_params(labelsize=7)
  shown = uniq[:MAX_LEGEND]
  handles = [Line2D([], [], marker="o", linestyle="", markersize=4,
                    color=cmap(i % cmap.N), label=str(v)) for i, v in enumerate(shown)]
  title = legend_title if len(uniq) <= MAX_LEGEND else f"{legend_title} ({MAX_LEGEND} of {len(uniq)})"
  ax.legend(handles=handles, title=title, fontsize=6, title_fontsize=7, markerscale=1.0,
            loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
            ncol=1 if len(shown) <= 12 else 2)


def embedding_figure(embedding: np.ndarray, labels: np.ndarray, title: str,
                     true_labels: Optional[np.ndarray] = None, *, seed: int = 0):
  """The figure of embedding_2d.png: the projection coloured by cluster and, when ground
  truth exists, a second panel coloured by the true labels. Returns (figure, info)."""
  from matplotlib.figure import Figure   # no pyplot: the caller's backend stays as it is
  labels = np.asarray(labels).reshape(-1)
  n = len(labels)
  keep = (np.sort(np.random.default_rng(seed).choice(n, MAX_POINTS, replace=False))
          if n > MAX_POINTS else np.arange(n))
  xy, explained = project_2d(embedding, seed=seed)
  xy = xy[keep]
  panels = [(labels[keep], f"clusters (k = {len(np.unique(labels))})", "cluster")]
  if true_labels is not None:
    true_labels = np.asarray(true_labels).reshape(-1)
    panels.append((true_labels[keep], f"true labels ({len(np.unique(true_labels))} classes)",
                   "class"))
  fig = Figure(figsize=(5.6 * len(panels), 4.6))
  axes = fig.subplots(1, len(panels), squeeze=False)
  for ax, (values, sub, legend_title) in zip(axes[0], panels):
    _scatter_panel(ax, xy, values, sub, legend_title, explained)
  fig.suptitle(title + (f" ({len(keep)} of {n} points)" if len(keep) < n else ""), fontsize=10)
  # Fixed margins with room for each legend on the axes' right: tight_layout and
  # bbox_inches="tight" each cost another draw of every point.
  if len(panels) == 1:
    fig.subplots_adjust(left=0.14, right=0.78, bottom=0.11, top=0.86)
  else:
    fig.subplots_adjust(left=0.07, right=0.89, bottom=0.11, top=0.86, wspace=0.42)
  return fig, {"n_points": int(len(keep)), "explained_variance": [round(float(v), 4)
                                                                  for v in explained]}


def plot_embedding(path: Path, embedding: np.ndarray, labels: np.ndarray, title: str,
                   true_labels: Optional[np.ndarray] = None) -> dict:
  """Writes embedding_2d.png (see embedding_figure); returns its info."""
  fig, info = embedding_figure(embedding, labels, title, true_labels)
  fig.savefig(path, dpi=110)
  return info


def _loss_series(history: list) -> dict:
  """stage -> {term: [(epoch, value), ...]} of the finite scalar loss terms logged."""
  stages: dict = {}
  for row in history:
    for k, v in row.items():
      if ("loss" in k and isinstance(v, (int, float)) and not isinstance(v, bool)
          and np.isfinite(v)):
        stages.setdefault(row.get("stage", "?"), {}).setdefault(k, []).append(
            (row.get("epoch", 0), v))
  return stages


def curves_figure(history: list):
  """The figure of loss_curves.png: one panel per stage that logged a loss over at least two
  epochs (a stage with one logged point, such as a final evaluation, has no curve to draw).
  Returns None when no stage has a curve."""
  stages = {s: terms for s, terms in _loss_series(history).items()
            if max(len({e for e, _ in pts}) for pts in terms.values()) >= 2}
  if not stages:
    return None
  from matplotlib.figure import Figure
  width = 5.0 * len(stages)
  fig = Figure(figsize=(width, 3.5))
  axes = fig.subplots(1, len(stages), squeeze=False)
  for ax, (stage, terms) in zip(axes[0], stages.items()):
    for k, pts in terms.items():
      ax.plot(*zip(*pts), label=k, marker="o" if len(pts) < 2 else None, markersize=3)
    ax.set_title(stage)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
  # Fixed margins in inches (tight_layout costs another layout pass over every tick label).
  fig.subplots_adjust(left=0.85 / width, right=1 - 0.2 / width, bottom=0.55 / 3.5,
                      top=1 - 0.35 / 3.5, wspace=1.0 / 4.0)
  return fig


def plot_curves(path: Path, history: list) -> bool:
  """Writes loss_curves.png; False (and no file) when there is no curve to draw."""
  fig = curves_figure(history)
  if fig is None:
    return False
  fig.savefig(path, dpi=110)
  return True
