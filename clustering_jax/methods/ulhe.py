"""ULHE-DC: deep clustering with a uniform quasi-low-rank hypersphere embedding (paper 002).

Stage 1 (§3.2): pre-train the autoencoder d-500-500-2000-10-2000-500-500-d on
L_rec + L_norm (Eq. 3). Initialization: spherical (cosine) k-means on the
encoder's embedding gives M^(0) and s^(0) (Algorithm 1, line 3).
Stage 2 (Algorithm 1): per iteration t (one epoch) assignments s^(t) (Eq. 6),
stop test (Eq. 14), running centroid update (Eq. 8), then one epoch of
mini-batch SGD on the encoder with Eq. 13, on the samples of the current
self-paced step (§4.2: three steps, easy to hard).

Every choice the paper leaves open is a Config field and is listed in
docs/methods/ulhe.md.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clustering_jax.data.augment import random_rotate_shift_flat
from clustering_jax.methods.base import FitResult, Views, in_range, one_of
from clustering_jax.nets.mlp import MLPAutoencoder
from clustering_jax.ops import hypersphere as hs
from clustering_jax.ops.kmeans import kmeans
from clustering_jax.train import engine
from clustering_jax.train.batching import epoch_key, epoch_permutation
from clustering_jax.train.run import Run


@dataclasses.dataclass(frozen=True)
class Config:
  """ULHE-DC settings; defaults are the paper's (§4.2) unless marked otherwise."""

  hidden: tuple = (500, 500, 2000)      # §4.2: d-500-500-2000-10, ReLU
  latent: int = 10
  weight_init: str = "torch"            # "torch" (nn.Linear default; paper uses PyTorch) | "flax"
  # Pre-training. Paper (§4.2): SGD, momentum 0.9, lr 0.1, batch 256, 1000 epochs
  # (experiments/configs/ulhe_paper.json). Defaults here are a CPU budget (see
  # docs/methods/ulhe.md): Adam 1e-3, batch 64, 100 epochs.
  pretrain_epochs: int = 100
  pretrain_batch_size: int = 64
  pretrain_optimizer: str = "adam"      # "adam" | "sgd" (paper)
  pretrain_lr: float = 1e-3
  momentum: float = 0.9                 # SGD momentum, both stages (§4.2)
  rec_reduction: str = "mean"           # L_rec per feature "mean" (MSELoss) | "sum" (Eq. 1 literal)
  # Not in the paper: random rotation (±10°) and shift (±H/10) of image inputs, as in
  # DEC-DA / IDCL App. F. Pre-training reconstructs the augmented image; the clustering
  # stage feeds augmented images against the epoch's s and M (from the clean images).
  augment_pretrain: bool = False
  augment_cluster: bool = False
  # Initialization: the project's cosine k-means (Algorithm 1, line 3).
  kmeans_n_init: int = 10
  # Clustering (§4.2): same optimizer and batch, lr 0.002, 300 iterations (epochs).
  epochs: int = 300
  batch_size: int = 256
  lr: float = 0.002
  lambda0: float = 2.00                 # Eq. 13 / Table 1
  lambda1: float = 0.08
  lambda2: float = 0.40
  use_unif: bool = True                 # Table 2 ablations
  use_cmpt: bool = True
  eta: float = 0.001                    # Eq. 14
  spl_steps: int = 3                    # §4.2: three easy-to-hard steps (100 epochs each of 300)
  # When a self-paced step ends (the paper is open on how Eq. 14 meets the schedule):
  # "stop_rule": after epochs/spl_steps epochs, or earlier when Eq. 14 holds before
  # the last step; "fixed": after exactly epochs/spl_steps epochs (§4.2 "updated
  # every 100 epochs"), Eq. 14 tested in the last step only.
  spl_advance: str = "stop_rule"
  unif_eps: float = 1e-6                # clamp of 1 - m_i^T m_j in Eq. 11
  cmpt_normalize: bool = True           # Eq. 12 on z/||z|| (the paper's ||z|| = 1 premise)
  reduction: str = "mean"               # L_unif, L_cmpt: "mean" over pairs | "sum" (Eq. 11-12)
  clip_norm: float = 1.0                # clustering-stage global gradient-norm clip (0: off)
  # Logging only (no effect on training): cluster the pre-training embedding every
  # N epochs so the log shows ACC against pre-training epochs (0: never).
  pretrain_eval_every: int = 0
  embed_block: int = 8192               # rows per block when embedding all samples (memory)

  def validate(self):
    one_of(self, "pretrain_optimizer", ("adam", "sgd"))
    one_of(self, "weight_init", ("torch", "flax"))
    one_of(self, "spl_advance", ("stop_rule", "fixed"))
    one_of(self, "rec_reduction", ("mean", "sum"))
    one_of(self, "reduction", ("mean", "sum"))
    for name in ("spl_steps", "batch_size", "pretrain_batch_size", "kmeans_n_init",
                 "embed_block"):
      in_range(self, name, 1)
    for name in ("pretrain_epochs", "epochs", "clip_norm", "eta", "pretrain_eval_every"):
      in_range(self, name, 0)
    for name in ("lr", "pretrain_lr"):
      in_range(self, name, 0.0, lo_open=True)


# -- network ------------------------------------------------------------------
def make_net(cfg: Config, d: int) -> MLPAutoencoder:
  return MLPAutoencoder(out_dim=d, hidden=tuple(cfg.hidden), latent=cfg.latent, act="relu")


def torch_linear_init(key: jax.Array, params):
  """Re-draws every Dense layer as PyTorch's nn.Linear default does:
  W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)). (The flax default, LeCun normal, makes
  SGD at the paper's lr 0.1 diverge in a few steps.)"""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  fan_in = {}
  for path, leaf in leaves:
    if path[-1].key == "kernel":
      fan_in[tuple(p.key for p in path[:-1])] = leaf.shape[0]
  out = []
  for i, (path, leaf) in enumerate(leaves):
    bound = 1.0 / math.sqrt(fan_in[tuple(p.key for p in path[:-1])])
    out.append(jax.random.uniform(jax.random.fold_in(key, i), leaf.shape, leaf.dtype,
                                  -bound, bound))
  return jax.tree_util.tree_unflatten(treedef, out)


def init_params(cfg: Config, key: jax.Array, d: int):
  net = make_net(cfg, d)
  params = jax.jit(net.init)(key, jnp.zeros((1, d), jnp.float32))
  if cfg.weight_init == "torch":
    params = torch_linear_init(jax.random.fold_in(key, 1), params)
  elif cfg.weight_init != "flax":
    raise ValueError(f"weight_init must be 'torch' or 'flax', got {cfg.weight_init!r}")
  return params


def encode(net: MLPAutoencoder, enc_params, x: jax.Array) -> jax.Array:
  """F_w(x) from the encoder's parameter tree alone."""
  return net.apply({"params": {"encoder": enc_params}}, x, method=MLPAutoencoder.encode)


def make_embed(net: MLPAutoencoder, cfg: Config):
  """jitted F_w for all rows of x (n, d), in row blocks: embed(enc_params, x)."""
  return engine.make_embed(lambda p, rows: encode(net, p, rows), block=cfg.embed_block)


def optimizer(name: str, lr: float, momentum: float, clip_norm: float = 0.0):
  if name == "sgd":
    tx = optax.sgd(lr, momentum=momentum)
  elif name == "adam":
    tx = optax.adam(lr)
  else:
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")
  return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm > 0 else tx


# -- steps ----------------------------------------------------------------------------
def augmenter(image_shape):
  """(key, x (b, d)) -> augmented x, or the identity when image_shape is None."""
  if image_shape is None:
    return lambda key, xb: xb
  return lambda key, xb: random_rotate_shift_flat(key, xb, image_shape)


def make_pretrain_step(net: MLPAutoencoder, rec_reduction: str, image_shape=None):
  """Engine step minimizing Eq. 3 on the full autoencoder (pre-training batches are always
  full). image_shape: augment each batch (rotate/shift) and reconstruct the augmented images."""
  aug = augmenter(image_shape)

  def loss_fn(params, xb):
    z, x_hat = net.apply(params, xb)
    rec = hs.rec_loss(xb, x_hat, reduction=rec_reduction)   # Eq. 1
    nrm = hs.norm_loss(z)                                    # Eq. 2
    loss = rec + nrm                                         # Eq. 3
    return loss, {"loss": loss, "rec": rec, "norm": nrm}

  def step(state, x, idx, w, key):
    (_, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params, aug(key, x[idx]))
    return state.apply_gradients(grads=g), aux

  return step


def make_cluster_step(net: MLPAutoencoder, cfg: Config, image_shape=None):
  """Engine step minimizing Eq. 13 on the encoder with s, M (`state.extra` "labels",
  "centers") fixed. image_shape: feed rotated/shifted images (targets stay the clean ones')."""
  aug = augmenter(image_shape)

  def loss_fn(enc, xb, centers, sb, w):
    z = encode(net, enc, xb)
    return hs.ulhe_objective(z, centers, sb, lambda0=cfg.lambda0, lambda1=cfg.lambda1,
                             lambda2=cfg.lambda2, use_unif=cfg.use_unif,
                             use_cmpt=cfg.use_cmpt, unif_eps=cfg.unif_eps,
                             cmpt_normalize=cfg.cmpt_normalize, reduction=cfg.reduction,
                             weights=w)

  def step(state, x, idx, w, key):
    # Centers and labels are fixed during the w-step (Algorithm 1: s, M then w).
    centers = jax.lax.stop_gradient(state.extra["centers"])
    labels = jax.lax.stop_gradient(state.extra["labels"])
    (_, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params, aug(key, x[idx]),
                                                             centers, labels[idx], w)
    return state.apply_gradients(grads=g), {**aux, "grad_norm": optax.global_norm(g)}

  return step


# -- fit -----------------------------------------------------------------------
def pretrain(net, cfg: Config, x: jax.Array, key: jax.Array, run: Run, params, *,
             n_clusters: int, kmeans_key: jax.Array, image_shape=None):
  """Stage "pretrain": Eq. 3 on the full autoencoder. Returns (params, stage info).

  n_clusters, kmeans_key: only for the display-only clustering of pretrain_eval_every.
  image_shape: (H, W, C) of the flattened rows; used when cfg.augment_pretrain.
  """
  n = x.shape[0]
  tx = optimizer(cfg.pretrain_optimizer, cfg.pretrain_lr, cfg.momentum)
  scan = engine.ScannedEpoch(make_pretrain_step(
      net, cfg.rec_reduction, image_shape if cfg.augment_pretrain else None))
  embed = make_embed(net, cfg)
  aug_key = jax.random.fold_in(key, 1)

  def epoch_fn(epoch, state):
    idx, w = engine.epoch_batches(epoch_permutation(key, epoch, n), n, cfg.pretrain_batch_size)
    state, m = scan(state, x, idx, w, epoch_key(aug_key, epoch))
    labels, every = None, cfg.pretrain_eval_every
    if every and run.score_fn is not None and ((epoch + 1) % every == 0
                                               or epoch + 1 == cfg.pretrain_epochs):
      # Display only: the init clustering of this epoch's embedding, scored by the API.
      z = embed(state.params["params"]["encoder"], x)
      labels = kmeans(kmeans_key, z, n_clusters, n_init=cfg.kmeans_n_init,
                      metric="cosine").labels
    return engine.Epoch(state, m, labels=labels)

  state, info = engine.run_stage(run, "pretrain", engine.new_state(params, tx),
                                 cfg.pretrain_epochs, epoch_fn, scans=(scan,))
  return state.params, info


def fit(data: Views, n_clusters: int, config: Config, *, key: jax.Array,
        run: Run) -> FitResult:
  """Runs ULHE-DC on data (images are flattened, views concatenated)."""
  cfg = config
  cfg.validate()
  if (cfg.augment_pretrain or cfg.augment_cluster) and not data.is_image:
    raise ValueError("augment_pretrain/augment_cluster need image data (n, H, W, C)")
  image_shape = data.image_shape
  k = int(n_clusters)
  x = jnp.asarray(data.concat(), jnp.float32)
  n, d = x.shape
  k_init, k_pre, k_km, k_clu = jax.random.split(key, 4)
  net = make_net(cfg, d)
  embed = make_embed(net, cfg)

  # Stage 1: pre-training (Eq. 3).
  params = init_params(cfg, k_init, d)
  params, pre_info = pretrain(net, cfg, x, k_pre, run, params, n_clusters=k, kmeans_key=k_km,
                              image_shape=image_shape)
  enc = params["params"]["encoder"]

  # Initialization: cosine k-means on F_w(x) -> M^(0), s^(0) (Algorithm 1, line 3).
  z = embed(enc, x)
  km = kmeans(k_km, z, k, n_init=cfg.kmeans_n_init, metric="cosine")
  init_labels = np.asarray(km.labels)
  init_embedding = np.asarray(hs.unit(z))
  run.log("init", 0, {"inertia": km.inertia, "n_iter": km.n_iter}, labels=init_labels)

  # Stage 2: clustering (Algorithm 1, lines 6-13), one epoch per iteration t.
  tx = optimizer("sgd", cfg.lr, cfg.momentum, cfg.clip_norm)   # §4.2: SGD, lr 0.002
  scan = engine.ScannedEpoch(make_cluster_step(net, cfg,
                                               image_shape if cfg.augment_cluster else None))
  aug_key = jax.random.fold_in(k_clu, 1)
  step_len = max(1, math.ceil(cfg.epochs / cfg.spl_steps))
  advances = []

  def epoch_fn(epoch, state):
    ex = state.extra
    z = embed(state.params, x)
    labels, dist = hs.assign_cosine(z, ex["centers"])             # Eq. 6
    rate = float(hs.change_rate(ex["labels"], labels))             # Eq. 14
    step, step_start = int(ex["spl_step"]), int(ex["step_start"])
    stop = epoch > step_start and rate < cfg.eta
    last_step = step == cfg.spl_steps - 1
    if stop and last_step:                                         # Eq. 14: stop
      ex = {**ex, "labels": labels}
      return engine.Epoch(state.replace(extra=ex), {"change_rate": rate}, labels=labels,
                          stop=True)
    # Self-paced schedule (§4.2): a new step every step_len epochs, or (spl_advance
    # "stop_rule") as soon as the current step's assignments are stable (Eq. 14).
    early = stop and cfg.spl_advance == "stop_rule"
    if epoch == 0 or (not last_step and (early or epoch - step_start >= step_len)):
      if epoch > 0:
        step, step_start = step + 1, epoch
        advances.append({"epoch": epoch, "step": step, "by_stop_rule": bool(early)})
      select = hs.easiest_per_cluster(dist, labels, (step + 1) / cfg.spl_steps, k)
      ex = {**ex, "select": select, "spl_step": jnp.asarray(step, jnp.int32),
            "step_start": jnp.asarray(step_start, jnp.int32)}
    sel = np.flatnonzero(np.asarray(ex["select"]))
    centers = hs.update_centroids(ex["centers"], z[sel], labels[sel])     # Eq. 8
    order = sel[epoch_permutation(k_clu, epoch, len(sel))]
    idx, w = engine.epoch_batches(order, n, cfg.batch_size)
    state = state.replace(extra={**ex, "centers": centers, "labels": labels})
    state, m = scan(state, x, idx, w, epoch_key(aug_key, epoch))
    return engine.Epoch(state, {**m, "change_rate": rate, "spl_step": step,
                                "n_train": len(sel)}, labels=labels)

  extra = {"centers": km.centers, "labels": km.labels.astype(jnp.int32),
           "select": jnp.ones((n,), bool), "spl_step": jnp.asarray(0, jnp.int32),
           "step_start": jnp.asarray(0, jnp.int32)}
  state, info = engine.run_stage(run, "train", engine.new_state(enc, tx, extra=extra),
                                 cfg.epochs, epoch_fn, scans=(scan,))

  # Final model: embedding and Eq. 6 assignments with the final w and M.
  z = embed(state.params, x)
  labels, _ = hs.assign_cosine(z, state.extra["centers"])
  out = {**engine.timing_info({"pretrain": pre_info, "train": info}, done=labels),
         "stopped_by_rule": info["stopped_at"] is not None, "stop_epoch": info["stopped_at"],
         "spl_advances": advances}
  params = {"params": {"encoder": state.params, "decoder": params["params"]["decoder"]}}
  return FitResult(labels=np.asarray(labels), embedding=np.asarray(hs.unit(z)),
                   init_labels=init_labels, init_embedding=init_embedding,
                   state={"params": jax.device_get(params),
                          "centers": np.asarray(state.extra["centers"])},
                   info=out)


def predict(cfg: Config, state, x: np.ndarray) -> np.ndarray:
  """Eq. 6 assignments of new samples (n, d) with the fitted encoder and centroids."""
  net = make_net(cfg, x.shape[1])
  z = make_embed(net, cfg)(state["params"]["params"]["encoder"], jnp.asarray(x, jnp.float32))
  return np.asarray(hs.assign_cosine(z, jnp.asarray(state["centers"]))[0])


def transform(cfg: Config, state, x: np.ndarray) -> np.ndarray:
  """Unit-norm embeddings F_w(x) / ||F_w(x)|| of new samples (n, d)."""
  net = make_net(cfg, x.shape[1])
  z = make_embed(net, cfg)(state["params"]["params"]["encoder"], jnp.asarray(x, jnp.float32))
  return np.asarray(hs.unit(z))
