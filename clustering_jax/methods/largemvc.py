"""LargeMvC-Net: anchor-based deep unfolding network for large-scale multi-view clustering.

Paper: Du et al., ACM MM 2025 (../shared/papers/001_ef64d86f8c4ede99.txt). The network
unfolds L iterations of the alternating solver of Problem (2):

  RepresentModule (Eq. 11)  H <- 1/|V_i| sum_{v present} S_theta(H R + (X_v - E_v) P_v^T U)
  NoiseModule     (Eq. 12)  E_v <- D_rho_v(X_v - H P_v)            (row-wise l2,1 shrinkage)
  AnchorModule    (Eq. 13)  P_v <- B_v C_v^T, SVD(H^T (X_v - E_v)) = B_v S_v C_v^T (Eq. 10)

with trainable R, U (m x m), thresholds theta^(l) and rho_v^(l), trained on the
reconstruction loss of Eq. 14 (full batch, Adam, 100 epochs, lr 0.01: §4.1.2). The start
(H0, P0, E0) is k-means on a spectral embedding of the standardized concatenated views
(one-hot H0, Procrustes P0, E0 = X - H0 P0); final labels are k-means on the final H.

Every sum over samples (H^T (X_v - E_v), the loss, the k-means statistics) is written as a
reduction over the leading sample axis, so with `shard="devices"` the sample axis is split
over all devices (NamedSharding) and n is bounded by their total memory.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clustering_jax import timing
from clustering_jax.methods.base import FitResult, Views, in_range, one_of
from clustering_jax.ops.distances import dot_hi
from clustering_jax.ops.kmeans import kmeans
from clustering_jax.ops.spectral import DENSE_MAX_N, spectral_embedding
from clustering_jax.ops.unfolding import (ACTIVATIONS, GRAD_POLICIES, SHRINK_MODES, procrustes,
                                          row_shrink, shrink_scale, soft_threshold)
from clustering_jax.train import engine
from clustering_jax.train.run import Run

VARIANTS = ("full", "amvc", "rmvc")
SHARD_MODES = ("auto", "none", "devices")


@dataclasses.dataclass(frozen=True)
class Config:
  """LargeMvC-Net hyperparameters; defaults are the paper's where it gives one."""

  epochs: int = 100                  # §4.1.2: 100 epochs
  lr: float = 0.01                   # §4.1.2: learning rate 0.01 (optimizer: Adam, not stated)
  n_layers: int = 2                  # L; §4.3.3: best at 2 layers
  n_anchors: Optional[int] = None    # m; None -> anchor_multiple * c (§4.3.3: best at m = c)
  anchor_multiple: int = 1           # m = anchor_multiple * c when n_anchors is None (§4.1.2: 1-3)
  activation: str = "relu"           # sigma of S_theta and D_rho (Eq. 11-12): relu | selu
  nonnegative: bool = False          # S_theta one-sided (H >= 0 of Problem (3)); Eq. 11 is two-sided
  shrink: str = "row"                # D_rho per sample row (Eq. 12) | "matrix" (public code)
  procrustes_grad: str = "stop"      # "stop" (public code) | "svd" (differentiate the SVD)
  variant: str = "full"              # full | amvc (no NoiseModule) | rmvc (RepresentModule only)
  lipschitz: Union[float, str] = "auto"  # L_p at init: R = I - P P^T / L_p, U = I / L_p (Eq. 5);
                                         # "auto": ||sum_v P_v P_v^T||_2 (= V), that of Eq. 3
  theta_init: float = 0.1            # theta = alpha / L_p at init (alpha not given in the paper)
  rho_init: Union[float, str] = "median"  # rho_v = beta / L_q at init; "median": median residual row norm
  spectral_graph: str = "auto"       # init graph: auto | knn | anchor (ops.spectral)
  init_dims: Optional[int] = 128     # above 2,048 samples the init graph is built on the top
                                     # init_dims principal components; None: on all features
  init_standardize: bool = True      # init features: z-scored, views weighted 1/sqrt(d_v) | as given
  knn_k: int = 10                    # neighbours of the init kNN graph
  kmeans_n_init: int = 10            # restarts of every k-means (init and final)
  shard: str = "auto"                # auto (devices when > 1) | none | devices

  def validate(self):
    one_of(self, "activation", tuple(ACTIVATIONS))
    one_of(self, "shrink", SHRINK_MODES)
    one_of(self, "procrustes_grad", GRAD_POLICIES)
    one_of(self, "variant", VARIANTS)
    one_of(self, "shard", SHARD_MODES)
    in_range(self, "n_layers", 1)
    in_range(self, "epochs", 0)
    in_range(self, "anchor_multiple", 1)
    if self.n_anchors is not None:
      in_range(self, "n_anchors", 1)
    if self.lipschitz != "auto":
      in_range(self, "lipschitz", 0.0, lo_open=True)
    if self.rho_init != "median":
      in_range(self, "rho_init", 0.0)
    if self.init_dims is not None:
      in_range(self, "init_dims", 1)


class Batch(NamedTuple):
  """The start of the network as the paper states it: every array but p0s has the sample
  axis first. `train` turns it into `Consts` (what the factored network reads)."""
  xs: tuple        # V x (n, d_v) float32, zero where missing
  mask: jax.Array  # (n, V) float32, 1 = present
  h0: jax.Array    # (n, m) one-hot initial H
  e0s: tuple       # V x (n, d_v) initial E_v
  p0s: tuple       # V x (m, d_v) initial P_v


class Consts(NamedTuple):
  """Constants of one fit for the factored network; every array but p0s has the sample
  axis first. E_0 enters the network only through t0, so it is never stored."""
  xs: tuple        # V x (n, d_v) float32, zero where missing
  mask: jax.Array  # (n, V) float32, 1 = present
  h0: jax.Array    # (n, m) one-hot initial H
  p0s: tuple       # V x (m, d_v) initial P_v
  xx: jax.Array    # (n, V) squared row norms ||X_v,i||^2 (0 where missing)
  g0: jax.Array    # (n, V, m) X_v P_v,0^T
  t0: jax.Array    # (n, V, m) (X_v - E_v,0) P_v,0^T


def make_consts(xs, mask, h0, p0s, e0s=None) -> Consts:
  """Consts from the views, the mask, H0, P0 and E0: e0s a tuple of (n, d_v) arrays, None
  (E0 = 0), or "residual": E_v,0 = X_v - H0 P_v,0 on present rows, never formed."""
  mask = jnp.asarray(mask, jnp.float32)
  xs = tuple(jnp.asarray(x, jnp.float32) for x in xs)
  h0 = jnp.asarray(h0, jnp.float32)
  xx = mask * jnp.stack([jnp.sum(x * x, axis=1) for x in xs], axis=1)
  g0 = _project_views(xs, p0s)
  if e0s is None:
    t0 = g0
  elif isinstance(e0s, str):
    if e0s != "residual":
      raise ValueError(f"e0s must be arrays, None or 'residual', got {e0s!r}")
    t0 = residual_proj(g0, mask, h0, _cross(p0s, p0s))
  else:
    t0 = _project_views(tuple(x - e for x, e in zip(xs, e0s)), p0s)
  return Consts(xs=xs, mask=mask, h0=h0, p0s=tuple(p0s), xx=xx, g0=g0, t0=t0)


# -- the network on explicit arrays (the paper's equations as written; reference) -----

def represent(h, xs, es, ps, mask, r, u, theta, *, activation="relu", nonnegative=False):
  """RepresentModule, Eq. 11, averaged over the views present for each sample.

  h: (n, m); xs, es: V x (n, d_v) (es may be None: no NoiseModule); ps: V x (m, d_v);
  mask: (n, V) 0/1; r, u: (m, m), or (V, m, m) for per-view R, U; theta: scalar.
  Returns the new H (n, m).
  """
  acc = 0.0
  for v, (x, p) in enumerate(zip(xs, ps)):
    resid = x if es is None else x - es[v]
    rv = r if r.ndim == 2 else r[v]
    uv = u if u.ndim == 2 else u[v]
    acc = acc + mask[:, v:v + 1] * soft_threshold(h @ rv + (resid @ p.T) @ uv, theta,
                                                  activation=activation, nonnegative=nonnegative)
  return acc / jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1.0)  # 1/|V_i| sum_v


def noise(h, xs, ps, mask, rho, *, activation="relu", mode="row"):
  """NoiseModule, Eq. 12: E_v = D_rho_v(X_v - H P_v); rows of missing views are 0.

  rho: (V,). Returns V x (n, d_v).
  """
  return tuple(row_shrink(x - h @ p, rho[v], activation=activation, mode=mode,
                          row_weight=mask[:, v])
               for v, (x, p) in enumerate(zip(xs, ps)))


def anchor(h, xs, es, mask, *, grad="stop"):
  """AnchorModule, Eq. 9-10, 13: P_v = Procrustes(H^T (X_v - E_v)) over present samples.

  H^T (X_v - E_v) is a sum over samples: a cross-device reduction when sharded.
  """
  out = []
  for v, x in enumerate(xs):
    resid = x if es is None else x - es[v]
    out.append(procrustes(h.T @ (mask[:, v:v + 1] * resid), grad=grad))
  return tuple(out)


def forward_dense(params, xs, mask, h0, e0s, p0s, cfg: Config):
  """L unfolded layers on explicit (n, d_v) arrays: `represent`, `noise`, `anchor` as the
  paper writes them. The reference `forward` is tested against. Returns (H, Es or None, Ps).
  """
  h, ps = h0, p0s
  es = e0s if cfg.variant == "full" else None
  for layer in range(cfg.n_layers):
    h = represent(h, xs, es, ps, mask, params["R"], params["U"], params["theta"][layer],
                  activation=cfg.activation, nonnegative=cfg.nonnegative)       # Eq. 11
    if cfg.variant == "full":
      es = noise(h, xs, ps, mask, params["rho"][layer], activation=cfg.activation,
                 mode=cfg.shrink)                                              # Eq. 12
    if cfg.variant != "rmvc":
      ps = anchor(h, xs, es, mask, grad=cfg.procrustes_grad)                  # Eq. 13
  return h, es, ps


def reconstruction_loss(h, xs, ps, mask):
  """Eq. 14 on explicit arrays: sum_v MSE(X_v, H P_v) over the samples where view v is
  present. h: (n, m); xs: V x (n, d_v); ps: V x (m, d_v); mask: (n, V).
  Returns (loss, per-view MSE (V,)).
  """
  sq = jnp.stack([jnp.sum((x - h @ p) ** 2, axis=1) for x, p in zip(xs, ps)], axis=1)
  return _mse(sq, mask, [x.shape[1] for x in xs])


# -- the network in factored form (what training runs) -----------------------------------
#
# Every E_v the network forms is a row scaling of a residual, E_v = s_v * (X_v - H' P'_v)
# (Eq. 12 with s_v the factor of D_rho, `shrink_scale`; E_v,0 with s_v = 1). Keeping
# (s_v, H', P'_v) instead of E_v turns every (n, d_v) quantity the layers use into
# products with X_v:
#   (X_v - E_v) P_v^T     = (1 - s_v) X_v P_v^T + s_v H' (P'_v P_v^T)                  (n, m)
#   ||X_v,i - H_i P_v||^2 = ||X_v,i||^2 - 2 H_i (X_v P_v^T)_i^T + H_i P_v P_v^T H_i^T   (n,)
#   H^T (X_v - E_v)       = ((1 - s_v) H)^T X_v + ((s_v H)^T H') P'_v                    (m, d_v)
# so a layer reads each X_v twice (H^T X_v, then X_v P_v^T for the new P_v) and never writes
# an (n, d_v) array, and the backward pass (P stopped, the default) reads no X_v at all.
# The (n, m)-sized work is batched over views: arrays (n, V, m), (n, V), (V, m, m).
# The same arithmetic as `forward_dense` up to float rounding (tested, with its gradient).

_HI = jax.lax.Precision.HIGHEST   # full float32 products (the expansions above cancel)


def _project_views(xs, ps) -> jax.Array:
  """X_v P_v^T for every view, stacked (n, V, m): one pass over each X_v."""
  return jnp.stack([dot_hi(x, p.T) for x, p in zip(xs, ps)], axis=1)


def _cross(pas, pbs) -> jax.Array:
  """P_a,v P_b,v^T for every view, stacked (V, m, m)."""
  return jnp.stack([dot_hi(pa, pb.T) for pa, pb in zip(pas, pbs)])


def _col(a, v: int):
  """a[:, v] (a cheap slice to trace: it runs once per view and layer)."""
  return jax.lax.index_in_dim(a, v, axis=1, keepdims=False)


def _row(a, i: int):
  """a[i] (as `_col`)."""
  return jax.lax.index_in_dim(a, i, axis=0, keepdims=False)


def residual_proj(g, s, he, k):
  """(X_v - E_v) P_v^T for every view (n, V, m), E_v = s_v * (X_v - he P'_v).

  g: (n, V, m) X_v P_v^T; s: (n, V) or None (E = 0); he: (n, m); k: (V, m, m) P'_v P_v^T.
  """
  if s is None:
    return g
  s = jnp.expand_dims(s, -1)
  return (1.0 - s) * g + s * jnp.tensordot(he, k, axes=((1,), (1,)), precision=_HI)


def residual_sq_norms(xx, g, h, q):
  """||X_v,i - H_i P_v||^2 (n, V) from xx (n, V) = ||X_v,i||^2, g (n, V, m) = X_v P_v^T,
  h (n, m), q (V, m, m) = P_v P_v^T. Clipped at 0 (the expansion can round below it)."""
  hv = jnp.expand_dims(h, 1)
  hq = jnp.tensordot(h, q, axes=((1,), (1,)), precision=_HI)            # (n, V, m)
  return jnp.maximum(xx + jnp.sum((hq - 2.0 * g) * hv, axis=-1), 0.0)


def anchor_inputs(xs, h, mask, s, pes):
  """H^T (mask_v * (X_v - E_v)) (m, d_v) for every view, E_v = s_v * (X_v - h P'_v):
  ((mask_v - s_v) H)^T X_v + ((s_v H)^T H) P'_v. xs: V x (n, d_v); h (n, m); mask (n, V);
  s (n, V), zero where mask is, or None (E = 0); pes: V x (m, d_v). One pass over each X_v."""
  w = mask if s is None else mask - s
  hw = jnp.expand_dims(w, -1) * jnp.expand_dims(h, 1)                      # (n, V, m)
  out = [dot_hi(_col(hw, v).T, x) for v, x in enumerate(xs)]
  if s is None:
    return out
  k = jnp.tensordot(jnp.expand_dims(s, -1) * jnp.expand_dims(h, 1), h, axes=((0,), (0,)),
                    precision=_HI)                                          # (V, m, m)
  return [mv + dot_hi(_row(k, v), pe) for v, (mv, pe) in enumerate(zip(out, pes))]


def _represent(h, t, mask, r, u, theta, *, activation, nonnegative):
  """Eq. 11 from t (n, V, m) = (X_v - E_v) P_v^T: 1/|V_i| sum_v S_theta(H R_v + t_v U_v).

  r, u: (m, m), or (V, m, m) per view.
  """
  hr = (jnp.expand_dims(h @ r, 1) if r.ndim == 2
        else jnp.tensordot(h, r, axes=((1,), (1,))))                        # (n, 1 or V, m)
  tu = t @ u if u.ndim == 2 else jnp.einsum("nvm,vmk->nvk", t, u)
  z = soft_threshold(hr + tu, theta, activation=activation, nonnegative=nonnegative)
  return (jnp.sum(jnp.expand_dims(mask, -1) * z, axis=1)
          / jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1.0))      # 1/|V_i| sum_v


def _mse(sq, mask, dims):
  """Per-view MSE over present rows from per-row squared errors sq (n, V): (sum, (V,))."""
  per_view = (jnp.sum(mask * sq, axis=0)
              / (jnp.maximum(jnp.sum(mask, axis=0), 1.0) * jnp.asarray(dims, sq.dtype)))
  return jnp.sum(per_view), per_view


def noise_scales(sq, mask, rho, *, activation="relu", mode="row"):
  """Eq. 12 as row factors: E_v = s_v * (X_v - H P_v), s (n, V), from sq (n, V) =
  ||X_v,i - H_i P_v||^2 and rho (V,); zero where mask (n, V) is. mode="matrix": one factor
  per view from its norm over the present rows."""
  sq = mask * sq
  if mode == "matrix":
    sq = jnp.sum(sq, axis=0, keepdims=True)
  return mask * shrink_scale(sq, rho, activation=activation)


class Forward(NamedTuple):
  """The network's output: H (n, m), P_v (m, d_v), g (n, V, m) = X_v P_v^T and the last
  E_v's row factors s (n, V), E_v = s_v * (X_v - H P_v^(L-1)) (None without NoiseModule)."""
  h: jax.Array
  ps: tuple
  g: jax.Array
  s: Optional[jax.Array]


def forward(params, consts: Consts, cfg: Config) -> Forward:
  """L unfolded layers from (H0, E0, P0) (Algorithm 1), factored (see above)."""
  xs, mask = consts.xs, consts.mask
  h, ps, g = consts.h0, consts.p0s, consts.g0
  full = cfg.variant == "full"
  s = he = pes = None
  for layer in range(cfg.n_layers):
    if layer == 0:           # (X - E_0) P_0^T is a constant (E_0 = 0 without NoiseModule)
      t = consts.t0 if full else consts.g0
    else:
      t = residual_proj(g, s, he, _cross(pes, ps) if full else None)
    h = _represent(h, t, mask, params["R"], params["U"], _row(params["theta"], layer),
                   activation=cfg.activation, nonnegative=cfg.nonnegative)      # Eq. 11
    if full:                                                                    # Eq. 12
      s = noise_scales(residual_sq_norms(consts.xx, g, h, _cross(ps, ps)), mask,
                       _row(params["rho"], layer), activation=cfg.activation, mode=cfg.shrink)
      he, pes = h, ps
    if cfg.variant != "rmvc":                                                   # Eq. 13
      ps = tuple(procrustes(m, grad=cfg.procrustes_grad)
                 for m in anchor_inputs(xs, h, mask, s, pes))
      g = _project_views(xs, ps)
  return Forward(h=h, ps=ps, g=g, s=s)


def loss_terms(out: Forward, consts: Consts):
  """Eq. 14 from the factored output: (loss, per-view MSE (V,))."""
  sq = residual_sq_norms(consts.xx, out.g, out.h, _cross(out.ps, out.ps))
  return _mse(sq, consts.mask, [x.shape[1] for x in consts.xs])


def loss_fn(params, consts: Consts, cfg: Config):
  """Eq. 14 and the logged diagnostics: (loss, aux)."""
  out = forward(params, consts, cfg)
  h = out.h
  loss, per_view = loss_terms(out, consts)
  valid = (jnp.sum(consts.mask, axis=1) > 0).astype(h.dtype)   # not a padding row
  h_zero = (jnp.sum(jnp.expand_dims(valid, 1) * (h == 0.0))
            / jnp.maximum(jnp.sum(valid) * h.shape[1], 1.0))
  aux = {"loss": loss, "h_zero_frac": h_zero}
  present = jnp.maximum(jnp.sum(consts.mask, axis=0), 1.0)
  nz = None if out.s is None else jnp.sum(out.s > 0, axis=0) / present  # E_v rows not zero
  for v in range(len(consts.xs)):
    aux[f"mse_v{v}"] = _row(per_view, v)
    if nz is not None:
      aux[f"noise_rows_v{v}"] = _row(nz, v)
  return loss, aux


def make_step(cfg: Config):
  """Engine step: one full-batch Adam step on Eq. 14 (consts = the Consts; idx, w unused)."""
  def step(state, consts, idx, w, key):
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, consts, cfg)
    state = state.apply_gradients(grads=grads)
    aux["theta_mean"] = jnp.mean(state.params["theta"])
    aux["rho_mean"] = jnp.mean(state.params["rho"])
    return state, aux
  return step


# Programs that run once per fit are compiled at XLA's backend optimization level 0: about
# half the compile time, the same run time (their work is in library matmuls and SVDs).
ONE_SHOT = {"xla_backend_optimization_level": 0}


@functools.partial(jax.jit, static_argnames="cfg", compiler_options=ONE_SHOT)
def final_output(params, consts: Consts, cfg: Config):
  """(H (n, m), Eq. 14 loss) of the trained network: one compiled call."""
  out = forward(params, consts, cfg)
  return out.h, loss_terms(out, consts)[0]


# -- initialization --------------------------------------------------------------------

@jax.jit
def standardized_concat(xs, mask) -> jax.Array:
  """z-scored features over present samples, missing blocks at 0 (the mean), each view
  scaled by 1/sqrt(d_v) so every view weighs the same in the distances. (n, sum d_v)."""
  out = []
  for v, x in enumerate(xs):
    w = jnp.asarray(mask, jnp.float32)[:, v:v + 1]
    cnt = jnp.maximum(jnp.sum(w), 1.0)
    mu = jnp.sum(w * x, axis=0) / cnt
    sd = jnp.sqrt(jnp.sum(w * (x - mu) ** 2, axis=0) / cnt)
    out.append(w * (x - mu) / jnp.where(sd > 0, sd, 1.0) / np.sqrt(x.shape[1]))
  return jnp.concatenate(out, axis=1)


@functools.partial(jax.jit, static_argnames=("m", "cfg"), compiler_options=ONE_SHOT)
def start(xs, mask, labels, *, m: int, cfg: Config):
  """From the initial partition: (Consts, params). One-hot H0, P_v,0 = Procrustes(H0^T X_v)
  (Eq. 13 with E = 0), E_v,0 = X_v - H0 P_v,0 (full model; E = 0 in the ablations), never
  formed, and `init_params`."""
  h0 = jax.nn.one_hot(labels, m, dtype=jnp.float32)
  p0s = tuple(procrustes(m) for m in anchor_inputs(xs, h0, mask, None, None))
  full = cfg.variant == "full"
  consts = make_consts(xs, mask, h0, p0s, "residual" if full else None)
  e0_norms = (mask * jnp.sqrt(residual_sq_norms(consts.xx, consts.g0, h0, _cross(p0s, p0s)))
              if full else jnp.zeros_like(mask))
  return consts, init_params(p0s, e0_norms, mask, cfg)


@jax.jit
def _fold_in_3(key):
  """fold_in(key, 0), fold_in(key, 1), fold_in(key, 2) in one compiled call (op by op, each
  fold_in and the tuple unpacking are programs of their own)."""
  return tuple(jax.random.fold_in(key, i) for i in range(3))


@jax.jit
def _split_2(key):
  """jax.random.split(key) as a pair, in one compiled call."""
  k = jax.random.split(key)
  return k[0], k[1]


def initialize(key, xs, mask, n_clusters: int, cfg: Config):
  """Spectral embedding -> k-means -> one-hot H0, P0 = Procrustes(H0^T X), E0 = X - H0 P0.

  Returns (consts, params, init_labels (n,), info).
  """
  m = cfg.n_anchors or cfg.anchor_multiple * n_clusters
  k_emb, k_km, k_km2 = _fold_in_3(key)
  t0 = time.perf_counter()
  if cfg.init_standardize:
    z = standardized_concat(xs, mask)
  else:  # the (min-max) scaled views side by side, missing blocks at 0
    z = jnp.concatenate([mask[:, v:v + 1] * x for v, x in enumerate(xs)], axis=1)
  # Up to DENSE_MAX_N samples the graph is exact (all features, dense eigensolver) and cheap;
  # above, it is built on the top init_dims principal components (the O(n^2 d) kNN search).
  n_dims = cfg.init_dims if z.shape[0] > DENSE_MAX_N else None
  # The k-means programs of the start and the read-out compile (or load) in the background
  # while the spectral embedding compiles and runs.
  for pts, k in dict.fromkeys([((z.shape[0], n_clusters), n_clusters),
                               ((z.shape[0], n_clusters), m), ((z.shape[0], m), n_clusters)]):
    kmeans.prefetch(k_km, jax.ShapeDtypeStruct(pts, jnp.float32), k, n_init=cfg.kmeans_n_init)
  emb, evals = spectral_embedding(k_emb, z, n_clusters, method=cfg.spectral_graph, k=cfg.knn_k,
                                  n_dims=n_dims)
  init = kmeans(k_km, emb, n_clusters, n_init=cfg.kmeans_n_init)
  labels_m = init.labels if m == n_clusters else kmeans(
      k_km2, emb, m, n_init=cfg.kmeans_n_init).labels  # m > c anchors: k-means with m centers
  consts, params = start(xs, mask, labels_m, m=m, cfg=cfg)
  labels, evals = jax.device_get((init.labels, evals))
  info = {"init_time_s": round(time.perf_counter() - t0, 3),
          "spectral_eigenvalues": [round(float(e), 5) for e in evals]}
  return consts, params, np.asarray(labels), info


def lipschitz_constant(ps) -> jax.Array:
  """L_p of Eq. 4-5: the Lipschitz constant of grad_H sum_v 1/2 ||X_v - H P_v - E_v||^2 (Eq. 3).

  The gradient is sum_v (H P_v P_v^T - (X_v - E_v) P_v^T), linear in H with operator
  H -> H sum_v P_v P_v^T, so L_p = ||sum_v P_v P_v^T||_2 = V when every P_v has orthonormal
  rows (d_v >= m). A view missing for some samples only lowers their terms: still a bound.
  """
  return jnp.linalg.norm(sum(p @ p.T for p in ps), ord=2)


def init_params(p0s, e0_norms, mask, cfg: Config) -> dict:
  """R = I - mean_v(P_v P_v^T) / L_p and U = I / L_p (the values of Eq. 5), theta^(l), rho_v^(l).

  L_p = cfg.lipschitz, or with "auto" ||sum_v P_v,0 P_v,0^T||_2 (`lipschitz_constant`, = V).
  e0_norms: (n, V) row norms of E_v,0 (or the V (n, d_v) arrays E_v,0 themselves), whose
  median over present samples is rho_v,0 with rho_init="median" (0 for a view with none).
  """
  if isinstance(e0_norms, (tuple, list)):
    e0_norms = jnp.stack([jnp.linalg.norm(e, axis=1) for e in e0_norms], axis=1)
  m = p0s[0].shape[0]
  eye = jnp.eye(m, dtype=jnp.float32)
  ppt = sum(p @ p.T for p in p0s) / len(p0s)   # = I when every d_v >= m
  lp = lipschitz_constant(p0s) if cfg.lipschitz == "auto" else float(cfg.lipschitz)
  if cfg.rho_init == "median":
    med = jnp.nanmedian(jnp.where(jnp.asarray(mask) > 0, e0_norms, jnp.nan), axis=0)
    rho0 = jnp.where(jnp.isnan(med), 0.0, med).astype(jnp.float32)
  else:
    rho0 = jnp.full((len(p0s),), float(cfg.rho_init), jnp.float32)
  return {"R": eye - ppt / lp,
          "U": eye / lp,
          "theta": jnp.full((cfg.n_layers,), cfg.theta_init, jnp.float32),
          "rho": jnp.tile(rho0[None], (cfg.n_layers, 1))}


# -- sharding ----------------------------------------------------------------------------

def _place(consts: Consts, n: int, cfg: Config):
  """Pads the sample axis to a multiple of the device count and shards it ('data' axis).

  Padded rows have an all-zero mask, so they add nothing to any sum. Returns (consts, mesh).
  """
  mesh = engine.data_mesh() if cfg.shard != "none" else None
  if mesh is None:
    return consts, None
  pad = (-n) % mesh.size
  padrows = lambda a: jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1)) if pad else a
  rows = engine.shard_rows(jax.tree.map(padrows, consts._replace(p0s=())), mesh)
  return rows._replace(p0s=engine.replicate(consts.p0s, mesh)), mesh


# -- fit ---------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames="lr")
def _new_state(params, lr: float):
  """The engine's train state with Adam, built in one compiled call (not op by op)."""
  return engine.new_state(params, optax.adam(lr))


def train(batch: Union[Consts, Batch], params: dict, cfg: Config, *, run: Run, n: int):
  """Full-batch training on the unfolded network (Algorithm 1), stage "train".

  One step per epoch, as the paper; no per-epoch randomness. Returns (params, H, info);
  info["stages"] holds the engine's stage infos (for `engine.timing_info` at the fit's end).
  """
  consts = batch if isinstance(batch, Consts) else make_consts(
      batch.xs, batch.mask, batch.h0, batch.p0s, batch.e0s if cfg.variant == "full" else None)
  consts, mesh = _place(consts, n, cfg)
  scan = engine.ScannedEpoch(make_step(cfg))
  one = jax.device_put((np.zeros((1, 1), np.int32), np.ones((1, 1), np.float32)))
                                                # one full-batch step, on the device once
  key = jax.random.key(0)                                           # unused: no randomness

  def epoch_fn(epoch, state):
    return engine.Epoch(*scan(state, consts, *one, key))

  state, info = engine.run_stage(run, "train", _new_state(params, cfg.lr), cfg.epochs,
                                 epoch_fn, scans=(scan,))
  h, loss = final_output(state.params, consts, cfg)
  stages = {"train": info}
  info = {**engine.timing_info(stages, done=h), "n_devices": 1 if mesh is None else mesh.size,
          "final_loss": float(loss), "stages": stages}
  return state.params, (h if h.shape[0] == n else h[:n]), info


def prepare(data: Views):
  """Views as float32 jnp arrays with missing rows zeroed, and the (n, V) float mask."""
  xs = [np.asarray(v, np.float32) for v in data.flat_views()]
  n, nv = xs[0].shape[0], len(xs)
  mask = np.ones((n, nv), bool) if data.mask is None else np.asarray(data.mask, bool)
  xs = tuple(np.where(mask[:, v:v + 1], x, np.float32(0.0)) for v, x in enumerate(xs))
  return jax.device_put((xs, mask.astype(np.float32)))     # a copy, no compiled program


def fit(data: Views, n_clusters: int, config: Config, *, key, run: Run) -> FitResult:
  """Initialization, full-batch training, k-means on the final H."""
  config.validate()
  t0, start = time.perf_counter(), timing.now()
  xs, mask = prepare(data)
  n = data.n_samples
  k_init, k_final = _split_2(key)
  consts, params, init_labels, info = initialize(k_init, xs, mask, n_clusters, config)
  info["lipschitz"] = round(float(1.0 / np.asarray(params["U"])[0, 0]), 5)   # L_p used
  h0 = consts.h0
  params, h, tinfo = train(consts, params, config, run=run, n=n)
  final = kmeans(k_final, h, n_clusters, n_init=config.kmeans_n_init)
  labels = np.asarray(final.labels)
  run.log("final", 0, {"loss": tinfo["final_loss"], "kmeans_inertia": final.inertia},
          labels=labels)
  info.update(tinfo)
  info.update(engine.timing_info(info.pop("stages"), start=start))   # read-out included
  info.update({"n_anchors": int(h0.shape[1]), "variant": config.variant,
               "theta": np.asarray(params["theta"]).round(5).tolist(),
               "rho": np.asarray(params["rho"]).round(5).tolist(),
               "total_time_s": round(time.perf_counter() - t0, 3)})
  return FitResult(labels=labels, embedding=np.asarray(h), init_labels=init_labels,
                   init_embedding=np.asarray(h0),
                   state={"params": jax.tree.map(np.asarray, params)}, info=info)
