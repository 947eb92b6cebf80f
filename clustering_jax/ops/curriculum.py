"""IDCL's density curriculum (§3.1): the pacing function (Eq. 5–6) and the per-cluster
easy-sample selection of the Curriculum Generator (Eq. 7–8, Algorithm 1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from clustering_jax.ops.density import per_cluster_top_fraction

PACES = ("exp", "linear", "all")


def pacing(t, *, zeta0: float = 0.6, zeta_max: float = 0.95, t_grow: float,
           pace: str = "exp") -> jax.Array:
  """Proportion ζ_t of each cluster used for training at curriculum epoch t (t = 0, 1, ...).

  pace="exp" (the paper, Eq. 5–6):
    ζ_t = min(ζ_max, 2^(-(log2 ζ0 / T_grow)·t + log2 ζ0)) = min(ζ_max, ζ0^(1 - t/T_grow)),
    "slow then fast": ζ_0 = ζ0 and F_ζ reaches 1 at t = T_grow.
  pace="linear": the fixed-pace ablation (Table 4, Model-5): equal increments,
    ζ_t = min(ζ_max, ζ0 + (1 - ζ0)·t/T_grow).
  pace="all": no curriculum (Table 4, w/o RCL): ζ_t = 1, every sample every epoch.

  Args:
    t: epoch index (scalar, may be traced). zeta0, zeta_max in (0, 1]; t_grow > 0.
  Returns:
    () float32 proportion in (0, 1].
  """
  if pace not in PACES:
    raise ValueError(f"pace must be one of {PACES}, got {pace!r}")
  if t_grow <= 0:
    raise ValueError(f"t_grow must be > 0, got {t_grow}")
  if not (0.0 < zeta0 <= 1.0 and 0.0 < zeta_max <= 1.0):
    raise ValueError(f"zeta0={zeta0} and zeta_max={zeta_max} must be in (0, 1]")
  t = jnp.asarray(t, jnp.float32)
  if pace == "all":
    return jnp.ones((), jnp.float32)
  if pace == "exp":
    log_z0 = jnp.log2(zeta0)
    f = 2.0 ** (-(log_z0 / t_grow) * t + log_z0)  # Eq. 5
  else:
    f = zeta0 + (1.0 - zeta0) * t / t_grow
  return jnp.minimum(zeta_max, f)  # Eq. 6


def select_easy(scores: jax.Array, labels: jax.Array, *, zeta, n_clusters: int) -> jax.Array:
  """Curriculum set indicator v_i^t of Eq. 7 (Algorithm 1): within each cluster C_k the
  samples are sorted by difficulty score δ in descending order (𝒜) and x_i is easy when
  δ_i >= 𝒜[ζ_t·|C_k|] (1-based position ceil(ζ_t·|C_k|); ties kept). D^t = {x_i : v_i = 1}
  (Eq. 8). Selecting per cluster keeps every cluster represented.

  Args:
    scores: (n,) difficulty scores δ (Eq. 2; higher = easier).
    labels: (n,) cluster ids of the previous assignment.
    zeta: scalar proportion ζ_t (may be traced).
  Returns:
    (n,) bool v^t.
  """
  return per_cluster_top_fraction(scores, labels, frac=zeta, n_clusters=n_clusters)


__all__ = ["PACES", "pacing", "select_easy"]
