"""Label-free health checks of a trained network, for fit_info_ and warnings."""

from __future__ import annotations

from typing import Optional

import numpy as np


def autoencoder_health(x: np.ndarray, z: np.ndarray, last_rec: Optional[float],
                       rec_loss: str = "sum") -> tuple[dict, list]:
  """Label-free checks of a pre-trained autoencoder: (values for fit_info_, warnings).

  rec_over_variance: the last pre-training L_rec (per sample, summed over features) over the
    data's total variance (an autoencoder that outputs the mean image scores 1).
  embedding_spread: RMS distance of the embedding from its mean over its RMS norm (0 when
    every input maps to one point).
  """
  n = x.shape[0]
  info, problems = {}, []
  total_var = float(np.sum(np.var(x.reshape(n, -1), axis=0, dtype=np.float64)))
  if last_rec is not None and total_var > 0:
    ratio = last_rec * (1 if rec_loss == "sum" else x[0].size) / total_var
    info["pretrain_rec_over_variance"] = round(float(ratio), 4)
    if ratio > 0.9:
      problems.append(
          f"pre-training ended with L_rec at {ratio:.0%} of the data's total variance "
          "(reconstructing the mean image scores 100%): the autoencoder may be untrained or "
          "collapsed; pre-train for more epochs or try another seed")
  zc = z.astype(np.float64)
  spread = float(np.sqrt(np.mean(np.sum((zc - zc.mean(0)) ** 2, axis=1))))
  scale = float(np.sqrt(np.mean(np.sum(zc ** 2, axis=1))))
  info["embedding_spread"] = round(spread / scale, 6) if scale > 0 else 0.0
  if n > 1 and spread <= 1e-6 * max(scale, 1e-12):
    problems.append("pre-training collapsed the embedding: every input maps to the same "
                    "point, so k-means and the density cores are meaningless; pre-train with "
                    "another seed or a smaller pretrain_lr")
  return info, problems
