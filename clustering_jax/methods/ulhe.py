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
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clustering_jax.data.augment import random_rotate_shift_flat
from clustering_jax.data.container import Dataset
from clustering_jax.methods.base import FitResult
from clustering_jax.nets.mlp import MLPAutoencoder
from clustering_jax.ops import hypersphere as hs
from clustering_jax.ops.kmeans import kmeans
from clustering_jax.train.batching import batch_matrix, epoch_key, epoch_permutation
from clustering_jax.train.run import Run

EMBED_CHUNK = 8192


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
  cluster_epochs: int = 300
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
  # "stop_rule": after cluster_epochs/spl_steps epochs, or earlier when Eq. 14 holds before
  # the last step; "fixed": after exactly cluster_epochs/spl_steps epochs (§4.2 "updated
  # every 100 epochs"), Eq. 14 tested in the last step only.
  spl_advance: str = "stop_rule"
  unif_eps: float = 1e-6                # clamp of 1 - m_i^T m_j in Eq. 11
  cmpt_normalize: bool = True           # Eq. 12 on z/||z|| (the paper's ||z|| = 1 premise)
  reduction: str = "mean"               # L_unif, L_cmpt: "mean" over pairs | "sum" (Eq. 11-12)
  clip_norm: float = 1.0                # clustering-stage global gradient-norm clip (0: off)
  # Logging only (no effect on training): cluster the pre-training embedding every
  # N epochs so the log shows ACC against pre-training epochs (0: never).
  pretrain_eval_every: int = 0


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


def embed(net: MLPAutoencoder, enc_params, x: jax.Array) -> jax.Array:
  """F_w for all rows of x (n, d), in chunks (at most two compiled shapes)."""
  fn = _embed_fn(net)
  parts = [fn(enc_params, x[s:s + EMBED_CHUNK]) for s in range(0, x.shape[0], EMBED_CHUNK)]
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


_EMBED_CACHE: dict = {}


def _embed_fn(net):
  if net not in _EMBED_CACHE:
    _EMBED_CACHE[net] = jax.jit(lambda p, x: encode(net, p, x))
  return _EMBED_CACHE[net]


def _optimizer(name: str, lr: float, momentum: float, clip_norm: float = 0.0):
  if name == "sgd":
    tx = optax.sgd(lr, momentum=momentum)
  elif name == "adam":
    tx = optax.adam(lr)
  else:
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")
  return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm > 0 else tx


# -- jitted epochs -------------------------------------------------------------
def _augmenter(image_shape):
  """x (b, d) -> augmented x, or the identity when image_shape is None."""
  if image_shape is None:
    return lambda key, xb: xb
  return lambda key, xb: random_rotate_shift_flat(key, xb, image_shape)


def make_pretrain_epoch(net: MLPAutoencoder, tx, rec_reduction: str, image_shape=None):
  """One pre-training epoch as a scan over mini-batches: minimizes Eq. 3.
  image_shape: augment each batch (rotate/shift) and reconstruct the augmented images."""
  aug = _augmenter(image_shape)

  def loss_fn(params, xb):
    z, x_hat = net.apply(params, xb)
    rec = hs.rec_loss(xb, x_hat, reduction=rec_reduction)   # Eq. 1
    nrm = hs.norm_loss(z)                                    # Eq. 2
    loss = rec + nrm                                         # Eq. 3
    return loss, {"loss": loss, "rec": rec, "norm": nrm}

  def epoch(state, x, idx, key):
    def step(st, ib_key):
      ib, k = ib_key
      params, opt = st
      (_, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params, aug(k, x[ib]))
      upd, opt = tx.update(g, opt, params)
      return (optax.apply_updates(params, upd), opt), aux

    state, aux = jax.lax.scan(step, state, (idx, jax.random.split(key, idx.shape[0])))
    return state, jax.tree.map(jnp.mean, aux)

  return jax.jit(epoch)


def make_cluster_epoch(net: MLPAutoencoder, tx, cfg: Config, image_shape=None):
  """One clustering epoch over the selected samples: minimizes Eq. 13 with s, M fixed.
  image_shape: feed rotated/shifted images (targets s, M stay those of the clean images)."""
  aug = _augmenter(image_shape)

  def loss_fn(enc, xb, centers, sb):
    z = encode(net, enc, xb)
    return hs.ulhe_objective(z, centers, sb, lambda0=cfg.lambda0, lambda1=cfg.lambda1,
                             lambda2=cfg.lambda2, use_unif=cfg.use_unif,
                             use_cmpt=cfg.use_cmpt, unif_eps=cfg.unif_eps,
                             cmpt_normalize=cfg.cmpt_normalize, reduction=cfg.reduction)

  def epoch(state, x, idx, centers, labels, key):
    # Centers and labels are fixed during the w-step (Algorithm 1: s, M then w).
    centers, labels = jax.lax.stop_gradient(centers), jax.lax.stop_gradient(labels)

    def step(st, ib_key):
      ib, k = ib_key
      enc, opt = st
      (_, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(enc, aug(k, x[ib]), centers,
                                                               labels[ib])
      upd, opt = tx.update(g, opt, enc)
      return (optax.apply_updates(enc, upd), opt), {**aux, "grad_norm": optax.global_norm(g)}

    state, aux = jax.lax.scan(step, state, (idx, jax.random.split(key, idx.shape[0])))
    return state, jax.tree.map(jnp.mean, aux)

  return jax.jit(epoch)


class _Compiled:
  """AOT-compiles a jitted epoch once per index shape and records the compile time."""

  def __init__(self, fn):
    self.fn, self.cache, self.compile_s = fn, {}, 0.0

  def __call__(self, *args):
    shape = args[2].shape
    if shape not in self.cache:
      t = time.perf_counter()
      self.cache[shape] = self.fn.lower(*args).compile()
      self.compile_s += time.perf_counter() - t
    return self.cache[shape](*args)


def _median(ts):
  return float(np.median(ts)) if ts else None


# -- fit -----------------------------------------------------------------------
def pretrain(net, cfg: Config, x: jax.Array, key: jax.Array, run: Run, params, *,
             n_clusters: int, kmeans_key: jax.Array, image_shape=None):
  """Stage 1: Eq. 3 on the full autoencoder. Returns (params, info).

  n_clusters, kmeans_key: only for the display-only clustering of pretrain_eval_every.
  image_shape: (H, W, C) of the flattened rows; used when cfg.augment_pretrain.
  """
  n = x.shape[0]
  tx = _optimizer(cfg.pretrain_optimizer, cfg.pretrain_lr, cfg.momentum)
  state = (params, tx.init(params))
  restored = run.restore("pretrain", state)
  state, start = restored if restored else (state, 0)
  epoch_fn = _Compiled(make_pretrain_epoch(
      net, tx, cfg.rec_reduction, image_shape if cfg.augment_pretrain else None))
  aug_key = jax.random.fold_in(key, 1)
  times = []
  for epoch in run.epochs("pretrain", start, cfg.pretrain_epochs):
    t0 = time.perf_counter()
    idx = batch_matrix(epoch_permutation(key, epoch, n), cfg.pretrain_batch_size)
    c0 = epoch_fn.compile_s
    state, m = epoch_fn(state, x, jnp.asarray(idx), epoch_key(aug_key, epoch))
    m = jax.device_get(m)                            # one host sync per epoch
    times.append(time.perf_counter() - t0 - (epoch_fn.compile_s - c0))
    labels = None
    every = cfg.pretrain_eval_every
    if every and run.score_fn is not None and ((epoch + 1) % every == 0
                                               or epoch + 1 == cfg.pretrain_epochs):
      # Display only: the init clustering of this epoch's embedding, scored by the API.
      z = embed(net, state[0]["params"]["encoder"], x)
      labels = kmeans(kmeans_key, z, n_clusters, n_init=cfg.kmeans_n_init,
                      metric="cosine").labels
    run.log("pretrain", epoch, m, labels=labels)
    run.save("pretrain", epoch, state, force=epoch + 1 == cfg.pretrain_epochs)
  info = {"pretrain_epochs": int(cfg.pretrain_epochs), "pretrain_epochs_run": len(times),
          "pretrain_epoch_s": _median(times), "pretrain_compile_s": epoch_fn.compile_s,
          "pretrain_steps_per_s": (int(batch_matrix(np.arange(n), cfg.pretrain_batch_size)
                                       .shape[0]) / _median(times)) if times else None}
  return state[0], info


def fit(data: Dataset, config: Config, *, key: jax.Array, run: Run) -> FitResult:
  """Runs ULHE-DC on data (images are flattened, views concatenated)."""
  cfg = config
  if cfg.spl_steps < 1:
    raise ValueError(f"spl_steps must be >= 1, got {cfg.spl_steps}")
  if cfg.spl_advance not in ("stop_rule", "fixed"):
    raise ValueError(f"spl_advance must be 'stop_rule' or 'fixed', got {cfg.spl_advance!r}")
  if (cfg.augment_pretrain or cfg.augment_cluster) and data.kind != "image":
    raise ValueError(f"augment_pretrain/augment_cluster need image data; dataset "
                     f"{data.name!r} is {data.kind!r}")
  image_shape = tuple(data.image_shape or data.views[0].shape[1:]) if data.kind == "image" \
      else None
  k = int(data.n_clusters)
  x = jnp.asarray(data.concat(), jnp.float32)
  n, d = x.shape
  k_init, k_pre, k_km, k_clu = jax.random.split(key, 4)
  net = make_net(cfg, d)
  t_start = time.perf_counter()

  # Stage 1: pre-training (Eq. 3).
  params = init_params(cfg, k_init, d)
  params, info = pretrain(net, cfg, x, k_pre, run, params, n_clusters=k, kmeans_key=k_km,
                          image_shape=image_shape)
  enc = params["params"]["encoder"]

  # Initialization: cosine k-means on F_w(x) -> M^(0), s^(0) (Algorithm 1, line 3).
  t0 = time.perf_counter()
  z = embed(net, enc, x)
  km = kmeans(k_km, z, k, n_init=cfg.kmeans_n_init, metric="cosine")
  init_labels = np.asarray(km.labels)
  init_embedding = np.asarray(hs.unit(z))
  info["kmeans_s"] = time.perf_counter() - t0
  run.log("init", 0, {"inertia": km.inertia, "n_iter": km.n_iter}, labels=init_labels)

  # Stage 2: clustering (Algorithm 1, lines 6-13).
  tx = _optimizer("sgd", cfg.lr, cfg.momentum, cfg.clip_norm)   # §4.2: SGD, lr 0.002
  state = {"enc": enc, "opt": tx.init(enc), "centers": km.centers,
           "labels": km.labels.astype(jnp.int32), "select": jnp.ones((n,), bool),
           "spl_step": jnp.asarray(0, jnp.int32), "step_start": jnp.asarray(0, jnp.int32),
           "done": jnp.asarray(False)}
  restored = run.restore("cluster", state)
  state, start = restored if restored else (state, 0)
  state = jax.tree.map(jnp.asarray, state)
  epoch_fn = _Compiled(make_cluster_epoch(net, tx, cfg,
                                          image_shape if cfg.augment_cluster else None))
  aug_key = jax.random.fold_in(k_clu, 1)
  step_len = max(1, math.ceil(cfg.cluster_epochs / cfg.spl_steps))
  times, stop_epoch, advances = [], None, []
  for epoch in run.epochs("cluster", start, cfg.cluster_epochs):
    if bool(state["done"]):
      break
    t0 = time.perf_counter()
    c0 = epoch_fn.compile_s
    z = embed(net, state["enc"], x)
    labels, dist = hs.assign_cosine(z, state["centers"])          # Eq. 6
    rate = hs.change_rate(state["labels"], labels)                 # Eq. 14
    step, step_start = int(state["spl_step"]), int(state["step_start"])
    trained_in_step = epoch > step_start
    stop = trained_in_step and float(rate) < cfg.eta
    last_step = step == cfg.spl_steps - 1
    if stop and last_step:                                         # Eq. 14: stop
      stop_epoch = epoch
      state = {**state, "labels": labels, "done": jnp.asarray(True)}
      run.log("cluster", epoch, {"change_rate": rate, "stopped": 1}, labels=labels)
      run.save("cluster", epoch, state, force=True)
      break
    # Self-paced schedule (§4.2): a new step every step_len epochs, or (spl_advance
    # "stop_rule") as soon as the current step's assignments are stable (Eq. 14).
    early = stop and cfg.spl_advance == "stop_rule"
    if epoch == 0 or (not last_step and (early or epoch - step_start >= step_len)):
      if epoch > 0:
        step, step_start = step + 1, epoch
        advances.append({"epoch": epoch, "step": step, "by_stop_rule": bool(early)})
      frac = (step + 1) / cfg.spl_steps
      select = hs.easiest_per_cluster(dist, labels, frac, k)
      state = {**state, "select": select, "spl_step": jnp.asarray(step, jnp.int32),
               "step_start": jnp.asarray(step_start, jnp.int32)}
    sel = np.flatnonzero(np.asarray(state["select"]))
    centers = hs.update_centroids(state["centers"], z[sel], labels[sel])     # Eq. 8
    order = sel[epoch_permutation(k_clu, epoch, len(sel))]
    idx = jnp.asarray(batch_matrix(order, cfg.batch_size))
    (enc_p, opt), m = epoch_fn((state["enc"], state["opt"]), x, idx, centers, labels,
                               epoch_key(aug_key, epoch))
    m = jax.device_get(m)
    state = {**state, "enc": enc_p, "opt": opt, "centers": centers, "labels": labels}
    times.append(time.perf_counter() - t0 - (epoch_fn.compile_s - c0))
    run.log("cluster", epoch, {**m, "change_rate": rate, "spl_step": step,
                               "n_train": len(sel)}, labels=labels)
    run.save("cluster", epoch, state)

  # Final model: embedding and Eq. 6 assignments with the final w and M.
  z = embed(net, state["enc"], x)
  labels, _ = hs.assign_cosine(z, state["centers"])
  if stop_epoch is None and bool(state["done"]):
    stop_epoch = -1                                    # stopped in a resumed run
  info.update({
      "cluster_epochs": int(cfg.cluster_epochs), "cluster_epochs_run": len(times),
      "stopped_by_rule": stop_epoch is not None, "stop_epoch": stop_epoch,
      "spl_advances": advances, "cluster_epoch_s": _median(times),
      "cluster_compile_s": epoch_fn.compile_s,
      "compile_s": epoch_fn.compile_s + info["pretrain_compile_s"],
      "total_s": time.perf_counter() - t_start,
      "epochs": {"pretrain": info["pretrain_epochs_run"], "cluster": len(times)}})
  params = {"params": {"encoder": state["enc"], "decoder": params["params"]["decoder"]}}
  return FitResult(labels=np.asarray(labels), embedding=np.asarray(hs.unit(z)),
                   init_labels=init_labels, init_embedding=init_embedding,
                   state={"params": jax.device_get(params),
                          "centers": np.asarray(state["centers"])},
                   info=info)


def predict(cfg: Config, state, x: np.ndarray) -> np.ndarray:
  """Eq. 6 assignments of new samples (n, d) with the fitted encoder and centroids."""
  net = make_net(cfg, x.shape[1])
  z = embed(net, state["params"]["params"]["encoder"], jnp.asarray(x, jnp.float32))
  return np.asarray(hs.assign_cosine(z, jnp.asarray(state["centers"]))[0])


def transform(cfg: Config, state, x: np.ndarray) -> np.ndarray:
  """Unit-norm embeddings F_w(x) / ||F_w(x)|| of new samples (n, d)."""
  net = make_net(cfg, x.shape[1])
  z = embed(net, state["params"]["params"]["encoder"], jnp.asarray(x, jnp.float32))
  return np.asarray(hs.unit(z))
