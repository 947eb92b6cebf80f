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
import time
from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clustering_jax.methods.base import FitResult, Views, in_range, one_of
from clustering_jax.ops.kmeans import kmeans
from clustering_jax.ops.spectral import spectral_embedding
from clustering_jax.ops.unfolding import (ACTIVATIONS, GRAD_POLICIES, SHRINK_MODES, procrustes,
                                          row_shrink, soft_threshold)
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


class Batch(NamedTuple):
  """Constants of one fit; every array but p0 has the sample axis first."""
  xs: tuple        # V x (n, d_v) float32, zero where missing
  mask: jax.Array  # (n, V) float32, 1 = present
  h0: jax.Array    # (n, m) one-hot initial H
  e0s: tuple       # V x (n, d_v) initial E_v
  p0s: tuple       # V x (m, d_v) initial P_v


# -- the network: pure functions ----------------------------------------------------

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


def forward(params, batch: Batch, cfg: Config):
  """L unfolded layers from (H0, E0, P0). Returns (H, E tuple or None, P tuple)."""
  h, ps = batch.h0, batch.p0s
  es = batch.e0s if cfg.variant == "full" else None
  for layer in range(cfg.n_layers):
    h = represent(h, batch.xs, es, ps, batch.mask, params["R"], params["U"],
                  params["theta"][layer], activation=cfg.activation,
                  nonnegative=cfg.nonnegative)                                  # Eq. 11
    if cfg.variant == "full":
      es = noise(h, batch.xs, ps, batch.mask, params["rho"][layer],
                 activation=cfg.activation, mode=cfg.shrink)                   # Eq. 12
    if cfg.variant != "rmvc":
      ps = anchor(h, batch.xs, es, batch.mask, grad=cfg.procrustes_grad)      # Eq. 13
  return h, es, ps


def reconstruction_loss(h, xs, ps, mask):
  """Eq. 14: sum_v MSE(X_v, H P_v) over the samples where view v is present.

  h: (n, m); xs: V x (n, d_v); ps: V x (m, d_v); mask: (n, V).
  Returns (loss, per-view MSE (V,)).
  """
  per_view = []
  for v, (x, p) in enumerate(zip(xs, ps)):
    sq = jnp.sum(mask[:, v:v + 1] * (x - h @ p) ** 2)
    per_view.append(sq / (jnp.maximum(jnp.sum(mask[:, v]), 1.0) * x.shape[1]))
  per_view = jnp.stack(per_view)
  return jnp.sum(per_view), per_view


def loss_fn(params, batch: Batch, cfg: Config):
  h, es, ps = forward(params, batch, cfg)
  loss, per_view = reconstruction_loss(h, batch.xs, ps, batch.mask)
  valid = (jnp.sum(batch.mask, axis=1) > 0).astype(h.dtype)   # not a padding row
  h_zero = jnp.sum(valid[:, None] * (h == 0.0)) / jnp.maximum(jnp.sum(valid) * h.shape[1], 1.0)
  aux = {"loss": loss, "h_zero_frac": h_zero}
  for v in range(len(batch.xs)):
    aux[f"mse_v{v}"] = per_view[v]
    if es is not None:
      present = jnp.maximum(jnp.sum(batch.mask[:, v]), 1.0)
      nz = jnp.sum(batch.mask[:, v] * (jnp.sum(es[v] ** 2, axis=1) > 0))
      aux[f"noise_rows_v{v}"] = nz / present   # fraction of samples whose E_v row is non-zero
  return loss, aux


def make_step(cfg: Config):
  """Engine step: one full-batch Adam step on Eq. 14 (consts = the Batch; idx, w unused)."""
  def step(state, batch, idx, w, key):
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, cfg)
    state = state.apply_gradients(grads=grads)
    aux["theta_mean"] = jnp.mean(state.params["theta"])
    aux["rho_mean"] = jnp.mean(state.params["rho"])
    return state, aux
  return step


# -- initialization --------------------------------------------------------------------

def standardized_concat(xs, mask) -> np.ndarray:
  """z-scored features over present samples, missing blocks at 0 (the mean), each view
  scaled by 1/sqrt(d_v) so every view weighs the same in the distances. (n, sum d_v)."""
  out = []
  for v, x in enumerate(xs):
    x = np.asarray(x, np.float32)
    pres = mask[:, v] > 0
    mu = x[pres].mean(axis=0)
    sd = x[pres].std(axis=0)
    z = (x - mu) / np.where(sd > 0, sd, 1.0)
    out.append(np.where(pres[:, None], z, 0.0) / np.sqrt(x.shape[1]))
  return np.concatenate(out, axis=1).astype(np.float32)


def initialize(key, xs, mask, n_clusters: int, cfg: Config):
  """Spectral embedding -> k-means -> one-hot H0, P0 = Procrustes(H0^T X), E0 = X - H0 P0.

  Returns (h0 (n, m), e0s, p0s, init_labels (n,), info).
  """
  m = cfg.n_anchors or cfg.anchor_multiple * n_clusters
  k_emb, k_km, k_km2 = jax.random.split(key, 3)
  t0 = time.perf_counter()
  if cfg.init_standardize:
    z = jnp.asarray(standardized_concat(xs, np.asarray(mask)))
  else:  # the (min-max) scaled views side by side, missing blocks at 0
    z = jnp.concatenate([mask[:, v:v + 1] * x for v, x in enumerate(xs)], axis=1)
  emb, evals = spectral_embedding(k_emb, z, n_clusters, method=cfg.spectral_graph, k=cfg.knn_k)
  init = kmeans(k_km, emb, n_clusters, n_init=cfg.kmeans_n_init)
  labels_m = init.labels if m == n_clusters else kmeans(
      k_km2, emb, m, n_init=cfg.kmeans_n_init).labels  # m > c anchors: k-means with m centers
  h0 = jax.nn.one_hot(labels_m, m, dtype=jnp.float32)
  mask = jnp.asarray(mask, jnp.float32)
  p0s = anchor(h0, xs, None, mask, grad="stop")                     # Eq. 13 with E = 0
  if cfg.variant == "full":
    e0s = tuple(mask[:, v:v + 1] * (x - h0 @ p) for v, (x, p) in enumerate(zip(xs, p0s)))
  else:
    e0s = tuple(jnp.zeros_like(x) for x in xs)
  jax.block_until_ready((h0, e0s, p0s))
  info = {"init_time_s": round(time.perf_counter() - t0, 3),
          "spectral_eigenvalues": [round(float(e), 5) for e in np.asarray(evals)]}
  return h0, e0s, p0s, np.asarray(init.labels), info


def lipschitz_constant(ps) -> float:
  """L_p of Eq. 4-5: the Lipschitz constant of grad_H sum_v 1/2 ||X_v - H P_v - E_v||^2 (Eq. 3).

  The gradient is sum_v (H P_v P_v^T - (X_v - E_v) P_v^T), linear in H with operator
  H -> H sum_v P_v P_v^T, so L_p = ||sum_v P_v P_v^T||_2 = V when every P_v has orthonormal
  rows (d_v >= m). A view missing for some samples only lowers their terms: still a bound.
  """
  return float(jnp.linalg.norm(sum(p @ p.T for p in ps), ord=2))


def init_params(p0s, e0s, mask, cfg: Config) -> dict:
  """R = I - mean_v(P_v P_v^T) / L_p and U = I / L_p (the values of Eq. 5), theta^(l), rho_v^(l).

  L_p = cfg.lipschitz, or with "auto" ||sum_v P_v,0 P_v,0^T||_2 (`lipschitz_constant`, = V).
  """
  m = p0s[0].shape[0]
  eye = jnp.eye(m, dtype=jnp.float32)
  ppt = sum(p @ p.T for p in p0s) / len(p0s)   # = I when every d_v >= m
  lp = lipschitz_constant(p0s) if cfg.lipschitz == "auto" else float(cfg.lipschitz)
  if cfg.rho_init == "median":
    rho0 = []
    for v, e in enumerate(e0s):
      norms = np.asarray(jnp.linalg.norm(e, axis=1))[np.asarray(mask[:, v]) > 0]
      rho0.append(float(np.median(norms)) if norms.size else 0.0)
  else:
    rho0 = [float(cfg.rho_init)] * len(p0s)
  return {"R": eye - ppt / lp,
          "U": eye / lp,
          "theta": jnp.full((cfg.n_layers,), cfg.theta_init, jnp.float32),
          "rho": jnp.tile(jnp.asarray(rho0, jnp.float32)[None], (cfg.n_layers, 1))}


# -- sharding ----------------------------------------------------------------------------

def _place(batch: Batch, n: int, cfg: Config):
  """Pads the sample axis to a multiple of the device count and shards it ('data' axis).

  Padded rows have an all-zero mask, so they add nothing to any sum. Returns (batch, mesh).
  """
  mesh = engine.data_mesh() if cfg.shard != "none" else None
  if mesh is None:
    return batch, None
  pad = (-n) % mesh.size
  padrows = lambda a: jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1)) if pad else a
  rows = engine.shard_rows(Batch(xs=tuple(map(padrows, batch.xs)), mask=padrows(batch.mask),
                                 h0=padrows(batch.h0), e0s=tuple(map(padrows, batch.e0s)),
                                 p0s=()), mesh)
  return rows._replace(p0s=engine.replicate(batch.p0s, mesh)), mesh


# -- fit ---------------------------------------------------------------------------------

def train(batch: Batch, params: dict, cfg: Config, *, run: Run, n: int):
  """Full-batch training on the unfolded network (Algorithm 1), stage "train".

  One step per epoch, as the paper; no per-epoch randomness. Returns (params, H, info).
  """
  batch, mesh = _place(batch, n, cfg)
  scan = engine.ScannedEpoch(make_step(cfg))
  one = (np.zeros((1, 1), np.int32), np.ones((1, 1), np.float32))  # one full-batch step
  key = jax.random.key(0)                                           # unused: no randomness

  def epoch_fn(epoch, state):
    return engine.Epoch(*scan(state, batch, *one, key))

  state, info = engine.run_stage(run, "train", engine.new_state(params, optax.adam(cfg.lr)),
                                 cfg.epochs, epoch_fn, scans=(scan,))
  h, _, ps = jax.jit(lambda p, b: forward(p, b, cfg))(state.params, batch)
  info = {**engine.timing_info({"train": info}), "n_devices": 1 if mesh is None else mesh.size,
          "final_loss": float(reconstruction_loss(h, batch.xs, ps, batch.mask)[0])}
  return state.params, h[:n], info


def prepare(data: Views):
  """Views as float32 jnp arrays with missing rows zeroed, and the (n, V) float mask."""
  xs = [np.asarray(v, np.float32) for v in data.flat_views()]
  n, nv = xs[0].shape[0], len(xs)
  mask = np.ones((n, nv), bool) if data.mask is None else np.asarray(data.mask, bool)
  xs = tuple(jnp.asarray(np.where(mask[:, v:v + 1], x, 0.0)) for v, x in enumerate(xs))
  return xs, jnp.asarray(mask, jnp.float32)


def fit(data: Views, n_clusters: int, config: Config, *, key, run: Run) -> FitResult:
  """Initialization, full-batch training, k-means on the final H."""
  config.validate()
  t0 = time.perf_counter()
  xs, mask = prepare(data)
  n = data.n_samples
  k_init, k_final = jax.random.split(key)
  h0, e0s, p0s, init_labels, info = initialize(k_init, xs, mask, n_clusters, config)
  params = init_params(p0s, e0s, mask, config)
  info["lipschitz"] = round(float(1.0 / np.asarray(params["U"])[0, 0]), 5)   # L_p used
  batch = Batch(xs=xs, mask=mask, h0=h0, e0s=e0s, p0s=p0s)
  params, h, tinfo = train(batch, params, config, run=run, n=n)
  final = kmeans(k_final, h, n_clusters, n_init=config.kmeans_n_init)
  labels = np.asarray(final.labels)
  run.log("final", 0, {"loss": tinfo["final_loss"], "kmeans_inertia": final.inertia},
          labels=labels)
  info.update(tinfo)
  info.update({"n_anchors": int(h0.shape[1]), "variant": config.variant,
               "theta": np.asarray(params["theta"]).round(5).tolist(),
               "rho": np.asarray(params["rho"]).round(5).tolist(),
               "total_time_s": round(time.perf_counter() - t0, 3)})
  return FitResult(labels=labels, embedding=np.asarray(h), init_labels=init_labels,
                   init_embedding=np.asarray(h0),
                   state={"params": jax.tree.map(np.asarray, params)}, info=info)
