"""Layers of unfolded proximal-gradient networks (LargeMvC-Net, Eq. 9-13).

Pure array functions:
  * `soft_threshold`   S_theta(a) = sigma(a - theta) - sigma(-a - theta)        (Eq. 11)
  * `row_shrink`       D_rho(a_i) = sigma(||a_i|| - rho) / ||a_i|| * a_i       (Eq. 12)
                       row-wise (the l2,1 prox) or, as a switch, on the whole matrix
  * `shrink_scale`     the factor sigma(||a_i|| - rho) / ||a_i|| of D_rho from squared norms
  * `procrustes`       P = B C^T from SVD(M) = B Sigma C^T maximizes tr(P^T M)  (Eq. 9-10, 13)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ACTIVATIONS = {"relu": jax.nn.relu, "selu": jax.nn.selu}
SHRINK_MODES = ("row", "matrix")
GRAD_POLICIES = ("stop", "svd")


def _activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
  return ACTIVATIONS[name]


def soft_threshold(a: jax.Array, theta, *, activation: str = "relu",
                   nonnegative: bool = False) -> jax.Array:
  """Learnable soft-thresholding S_theta of Eq. 11, elementwise.

  S_theta(a) = sigma(a - theta) - sigma(-a - theta). With sigma = ReLU this is the
  proximal operator of theta * ||.||_1, sign(a) * max(|a| - theta, 0).
  nonnegative=True keeps only sigma(a - theta): with ReLU the proximal operator of
  theta * ||.||_1 under the constraint H >= 0 of Problems (1)-(3), which Eq. 11 drops.

  Args:
    a: any shape. theta: scalar or broadcastable to a (the threshold alpha / L_p).
    activation: "relu" or "selu".
  Returns:
    array of a's shape.
  """
  sigma = _activation(activation)
  if nonnegative:
    return sigma(a - theta)
  return sigma(a - theta) - sigma(-a - theta)


def _safe_norm(sq: jax.Array) -> jax.Array:
  # sqrt with a zero (not NaN) gradient at 0: a zero row stays zero under shrinkage.
  pos = sq > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def row_shrink(a: jax.Array, rho, *, activation: str = "relu", mode: str = "row",
               row_weight: jax.Array | None = None) -> jax.Array:
  """Shrinkage D_rho of Eq. 12.

  mode="row" (the paper): each row a_i -> sigma(||a_i||_2 - rho) / ||a_i||_2 * a_i if
  ||a_i||_2 > rho, else 0. With sigma = ReLU this is the proximal operator of
  rho * ||.||_{2,1} (sum of row norms), applied to one sample's row at a time.
  mode="matrix" (the public code): the same rule with ||a||_F of the whole matrix, i.e. the
  prox of rho * ||.||_F; the norm is a sum over samples (a reduction when a is sharded).

  Args:
    a: (n, d). rho: scalar threshold (beta / L_q).
    row_weight: optional (n,) 0/1 weights; rows with weight 0 are ignored by the
      whole-matrix norm and returned as 0 in both modes.
  Returns:
    (n, d).
  """
  if a.ndim != 2:
    raise ValueError(f"row_shrink needs (n, d), got shape {a.shape}")
  if mode not in SHRINK_MODES:
    raise ValueError(f"mode must be one of {SHRINK_MODES}, got {mode!r}")
  if row_weight is not None:
    a = a * row_weight[:, None]
  sq = jnp.sum(a * a, axis=1, keepdims=True)
  if mode == "matrix":
    sq = jnp.sum(sq, keepdims=True)
  return shrink_scale(sq, rho, activation=activation) * a


def shrink_scale(sq: jax.Array, rho, *, activation: str = "relu") -> jax.Array:
  """The factor D_rho of Eq. 12 multiplies a row by, from its squared norm.

  D_rho(a) = c a with c = sigma(||a|| - rho) / ||a|| where ||a|| > rho, else 0; c = 0 for a
  zero row too (any factor leaves it zero). Knowing c alone is enough to apply D_rho to a
  row known only through products, as LargeMvC-Net's factored NoiseModule does.

  Args:
    sq: squared norms ||a||^2, any shape (values <= 0 count as 0). rho: scalar or
      broadcastable threshold.
  Returns:
    c, of sq's shape.
  """
  sigma = _activation(activation)
  norm = _safe_norm(sq)
  live = (norm > rho) & (norm > 0)
  return jnp.where(live, sigma(norm - rho) / jnp.where(norm > 0, norm, 1.0), 0.0)


def procrustes(m: jax.Array, *, grad: str = "stop") -> jax.Array:
  """Orthogonal Procrustes solution of Eq. 9: argmax_P tr(P^T M) s.t. P P^T = I.

  With SVD(M) = B Sigma C^T (Eq. 10, thin), P = B C^T (Eq. 13). For k <= d the rows
  of P are orthonormal; for k > d (a view with fewer features than anchors) the
  columns are, and P is the nearest partial isometry.

  Args:
    m: (k, d), e.g. H^T (X_v - E_v) -- a sum over samples.
    grad: "stop" treats P as a constant in backprop (as the public code, which leaves
      the graph for the SVD); "svd" differentiates through the SVD (ill-conditioned
      when singular values nearly coincide).
  Returns:
    (k, d).
  """
  if m.ndim != 2:
    raise ValueError(f"procrustes needs a (k, d) matrix, got shape {m.shape}")
  if grad not in GRAD_POLICIES:
    raise ValueError(f"grad must be one of {GRAD_POLICIES}, got {grad!r}")
  if grad == "stop":
    m = jax.lax.stop_gradient(m)  # policy "stop": no gradient through the SVD
  b, _, ct = jnp.linalg.svd(m, full_matrices=False)
  return b @ ct
