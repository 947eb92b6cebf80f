"""embedding_2d.png and loss_curves.png: a bounded-cost projection, legends, no empty panel."""

import numpy as np
import pytest

from clustering_jax import plots


def _planted(n, d, k=4, seed=0):
  rng = np.random.default_rng(seed)
  y = np.arange(n) % k
  return (rng.normal(0, 3, (k, d))[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_plot_factorizes_only_small_matrices(monkeypatch, tmp_path):
  """The old plot took a full SVD of (a sample of) the embedding: 140 s at 2,708 x 9,557."""
  from clustering_jax.experiment import plot_embedding  # what a run calls
  shapes = []
  for name in ("svd", "qr", "eigh", "eig", "lstsq", "pinv"):
    real = getattr(np.linalg, name)
    def spy(a, *args, _real=real, **kw):
      shapes.append(np.shape(a))
      return _real(a, *args, **kw)
    monkeypatch.setattr(np.linalg, name, spy)
  x, y = _planted(3000, 600)
  plot_embedding(tmp_path / "e.png", x, y, "t")
  assert (tmp_path / "e.png").exists()
  assert shapes and max(min(s[-2:]) for s in shapes) <= 16, shapes
  xy, explained = plots.project_2d(x)
  assert xy.shape == (3000, 2) and np.all(np.isfinite(xy))


def test_projection_matches_exact_pca():
  x, _ = _planted(800, 300)
  xy, explained = plots.project_2d(x)
  xc = x.astype(np.float64) - x.mean(0)
  _, s, vt = np.linalg.svd(xc, full_matrices=False)
  np.testing.assert_allclose(explained, s[:2] ** 2 / np.sum(s ** 2), rtol=1e-3)
  exact = xc @ vt[:2].T
  for i in range(2):
    assert abs(np.corrcoef(xy[:, i], exact[:, i])[0, 1]) > 0.999
  # Narrow and degenerate embeddings.
  assert plots.project_2d(x[:, :1])[0].shape == (800, 2)
  assert plots.project_2d(np.zeros((10, 3)))[1].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("true_labels", [False, True])
def test_embedding_figure_has_legend_axis_labels_and_a_true_label_panel(true_labels):
  import matplotlib.pyplot as plt
  x, y = _planted(500, 20)
  pred = (y + 1) % 4
  fig, info = plots.embedding_figure(x, pred, "t", y if true_labels else None)
  try:
    assert len(fig.axes) == (2 if true_labels else 1)
    for ax in fig.axes:
      assert ax.get_xlabel().startswith("PC 1") and ax.get_ylabel().startswith("PC 2")
      legend = ax.get_legend()
      assert legend is not None and len(legend.get_texts()) == 4
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("clusters") and (not true_labels or "true labels" in titles[1])
    assert info["n_points"] == 500
  finally:
    plt.close(fig)


def test_many_clusters_keep_a_bounded_legend():
  import matplotlib.pyplot as plt
  x, _ = _planted(400, 5)
  fig, _ = plots.embedding_figure(x, np.arange(400) % 50, "t")
  try:
    legend = fig.axes[0].get_legend()
    assert len(legend.get_texts()) == plots.MAX_LEGEND and "of 50" in legend.get_title().get_text()
  finally:
    plt.close(fig)


def test_loss_curves_have_no_empty_panel(tmp_path):
  import matplotlib.pyplot as plt
  history = (
      [{"stage": "pretrain", "epoch": e, "loss_rec": 1.0 / (e + 1)} for e in range(5)]
      + [{"stage": "init", "epoch": 0, "inertia": 3.0}]                 # no loss at all
      + [{"stage": "train", "epoch": e, "loss": 2.0 - e, "loss_kl": float("nan"),
          "per_view": [1.0, 2.0]} for e in range(3)]
      + [{"stage": "final", "epoch": 0, "loss": 0.5}])                 # one point: no curve
  fig = plots.curves_figure(history)
  try:
    assert [ax.get_title() for ax in fig.axes] == ["pretrain", "train"]
    for ax in fig.axes:
      assert ax.lines and all(len(line.get_xdata()) >= 2 for line in ax.lines)
      assert ax.get_legend() is not None
  finally:
    plt.close(fig)
  assert plots.plot_curves(tmp_path / "c.png", history) and (tmp_path / "c.png").exists()
  # Nothing to draw: no file, rather than an empty figure.
  assert not plots.plot_curves(tmp_path / "d.png", history[5:6] + history[-1:])
  assert not (tmp_path / "d.png").exists()


def test_writing_plots_leaves_the_matplotlib_backend_alone(tmp_path):
  """No pyplot and no backend switch: a notebook's inline backend survives a run's plots."""
  import matplotlib
  before = matplotlib.get_backend()
  rng = np.random.default_rng(0)
  plots.plot_embedding(tmp_path / "e.png", rng.normal(size=(50, 4)), np.arange(50) % 3, "t")
  plots.plot_curves(tmp_path / "c.png", [{"stage": "s", "epoch": e, "loss": 1.0 / (e + 1)}
                                         for e in range(3)])
  assert matplotlib.get_backend() == before
  assert (tmp_path / "e.png").stat().st_size > 0 and (tmp_path / "c.png").stat().st_size > 0
