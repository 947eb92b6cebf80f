"""IDCL: deep image clustering with a density curriculum and density-core assignment.

Zheng, Zhang & Wang, ICMR 2024 (papers/003_…). Two stages on `train.engine`:
  1. "pretrain": the autoencoder on L_rec (Eq. 13); k-means on its embedding is the
     starting point (`init_labels`);
  2. "train", Algorithm 2: each epoch embed all samples, local density (Eq. 1) with d_c at
     λ1, k-means clusters, density cores (Eq. 9), density-core Student-t assignment Q
     (Eq. 10–11), DEC target P, labels Y = argmax Q, stop when the label change rate is
     below μ, the per-cluster curriculum set (Eq. 5–8), then one scanned epoch of
     L = L_rec + α·KL(P‖Q) (Eq. 14) over the set (fixed shape: the batches the set does not
     fill have zero weight and are skipped).
Defaults and their departures from the paper: docs/methods/idcl.md; the measurements
behind them: docs/methods/idcl-notes.md.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clustering_jax.data.augment import random_rotate_shift
from clustering_jax.methods.base import FitResult, Views, in_range, one_of
from clustering_jax.nets.mlp import MLPAutoencoder
from clustering_jax.nets.transformer import TransformerAutoencoder
from clustering_jax.ops.assignment import (core_similarity, kl_clustering_loss, soft_assignment,
                                           target_distribution)
from clustering_jax.ops.curriculum import PACES, pacing, select_easy
from clustering_jax.ops.density import (cutoff_distance, density_cores, difficulty_scores,
                                        local_density)
from clustering_jax.ops.distances import cluster_sums, map_row_blocks
from clustering_jax.ops.kmeans import KMeansResult, kmeans, lloyd
from clustering_jax.ops.partitions import align_partitions
from clustering_jax.train import engine
from clustering_jax.train.health import autoencoder_health
from clustering_jax.train.batching import epoch_key, subset_permutation
from clustering_jax.train.run import Run


@dataclasses.dataclass(frozen=True)
class Config:
  """IDCL hyperparameters: the paper's (§4) unless docs/methods/idcl.md lists a departure.

  backbone: "transformer" (TAE), "mlp" (Table 4 "w/o TB"; always for vectors) or "auto".
  hidden, latent: the linear block M-512-512-3072-10. depth, num_heads, mlp_ratio,
    pos_encoding, norm_first: transformer blocks (not given in the paper).
  image_size: resize side; 0 = only when the patch embedding size is odd (28 -> 32, App. F).
  lr, pretrain_lr: Adam rates of the clustering stage and of pre-training (paper 0.01).
  pretrain_schedule: "warmup_cosine" (warm-up over pretrain_warmup of the steps, cosine to
    pretrain_end_lr) or "constant". pretrain_end_lr None = lr (capped at pretrain_lr).
  warmup: linear warm-up of the clustering rate over this fraction of the stage's steps.
  batch_size, epochs, pretrain_epochs: 256, 200 (§4) and 1000 pre-training epochs.
  alpha: α of Eq. 14. lam1: d_c rank λ1. lam2: density-core rank λ2.
  zeta0, zeta_max, t_grow, pace: the curriculum (Eq. 5–6; T_grow is not given);
    pace "linear" is Table 4 Model-5, "all" is "w/o RCL".
  assignment: "core" (Eq. 10–11) or "center" (Table 4 "w/o C^core").
  core_reduce: Eq. 10 as printed ("sum") or divided by the core's size ("mean").
  kl_reduce, rec_loss: Eq. 14's Σ over the batch ("sum") or its mean; Eq. 13 summed over
    pixels ("sum") or averaged ("mean").
  reset_optimizer: a fresh Adam state for the clustering stage.
  tol: μ of Algorithm 2 (not given; DEC's 0.001), from the second clustering epoch on.
  augment: rotation ≤ 10° and shift ≤ H/10 of training images (App. F).
  kmeans_n_init: restarts of the starting k-means (and of "restart").
  kmeans_init: Algorithm 2's per-epoch k-means: "warm" (Lloyd from the previous epoch's
    clusters), "restart" (10 fresh restarts, labels aligned to the previous epoch's) or
    "previous" (the previous Y, no k-means; Eq. 7).
  embed_block: rows per block when embedding all samples (memory only).
  """

  backbone: str = "auto"
  hidden: tuple = (512, 512, 3072)
  latent: int = 10
  depth: int = 1
  num_heads: int = 1
  mlp_ratio: int = 4
  pos_encoding: str = "sinusoidal"
  norm_first: bool = True
  image_size: int = 0
  lr: float = 0.001
  pretrain_lr: float = 0.001
  pretrain_schedule: str = "warmup_cosine"
  pretrain_warmup: float = 0.1
  pretrain_end_lr: Optional[float] = None
  warmup: float = 0.0
  batch_size: int = 256
  pretrain_epochs: int = 1000
  epochs: int = 200
  alpha: float = 0.1
  lam1: float = 0.02
  lam2: float = 0.05
  zeta0: float = 0.6
  zeta_max: float = 0.95
  t_grow: float = 100.0
  pace: str = "exp"
  assignment: str = "core"
  core_reduce: str = "mean"
  kl_reduce: str = "mean"
  reset_optimizer: bool = False
  tol: float = 0.001
  rec_loss: str = "sum"
  augment: bool = True
  kmeans_n_init: int = 10
  kmeans_init: str = "warm"
  embed_block: int = 1024

  @property
  def pretrain_end_rate(self) -> float:
    """Where the warm-up + cosine pre-training ends: pretrain_end_lr or min(lr, pretrain_lr)."""
    return self.pretrain_end_lr if self.pretrain_end_lr is not None else min(self.lr,
                                                                             self.pretrain_lr)

  def validate(self):
    one_of(self, "backbone", ("auto", "transformer", "mlp"))
    one_of(self, "pace", PACES)
    one_of(self, "assignment", ("core", "center"))
    one_of(self, "rec_loss", ("sum", "mean"))
    one_of(self, "kl_reduce", ("sum", "mean"))
    one_of(self, "core_reduce", ("sum", "mean"))
    one_of(self, "kmeans_init", ("restart", "warm", "previous"))
    one_of(self, "pretrain_schedule", ("constant", "warmup_cosine"))
    for name in ("lam1", "lam2", "zeta0", "zeta_max"):
      in_range(self, name, 0.0, 1.0, lo_open=True)
    in_range(self, "pretrain_warmup", 0.0, 1.0, hi_open=True)
    if self.pretrain_end_lr is not None:
      in_range(self, "pretrain_end_lr", 0.0, self.pretrain_lr)
    in_range(self, "warmup", 0.0, 1.0)
    for name in ("t_grow", "lr", "pretrain_lr"):
      in_range(self, name, 0.0, lo_open=True)
    for name in ("batch_size", "kmeans_n_init", "embed_block"):
      in_range(self, name, 1)
    for name in ("epochs", "pretrain_epochs"):
      in_range(self, name, 0)


# --------------------------------------------------------------------------- networks & data
def resize_side(cfg: Config, image_shape) -> Optional[int]:
  """Side to resize square images to, or None to keep them."""
  h, w, c = image_shape
  if cfg.image_size:
    return None if (cfg.image_size == h == w) else int(cfg.image_size)
  if cfg.backbone == "mlp" or (h % 4 == 0 and w % 4 == 0 and (c * h * w // 16) % 2 == 0):
    return None
  return int(-(-max(h, w) // 8) * 8)  # 28 -> 32 as the paper


def prepare_inputs(data: Views, cfg: Config) -> np.ndarray:
  """Model inputs: images (n, H, W, C) (resized when needed) or vectors (n, d), float32."""
  if not data.is_image:
    return data.concat()
  x = np.asarray(data.views[0], np.float32)
  side = resize_side(cfg, x.shape[1:])
  if side is not None:
    x = np.asarray(jax.image.resize(jnp.asarray(x), (x.shape[0], side, side, x.shape[3]),
                                    "bilinear"))
  return x


def make_net(cfg: Config, input_shape):
  """The autoencoder for inputs of shape (n, ...): TAE for images unless backbone="mlp"."""
  hidden = tuple(int(h) for h in cfg.hidden)
  is_image = len(input_shape) == 4
  backbone = cfg.backbone if cfg.backbone != "auto" else ("transformer" if is_image else "mlp")
  if backbone == "transformer":
    if not is_image:
      raise ValueError("backbone='transformer' needs image data (n, H, W, C)")
    return TransformerAutoencoder(tuple(input_shape[1:]), hidden=hidden, latent=cfg.latent,
                                  depth=cfg.depth, num_heads=cfg.num_heads,
                                  mlp_ratio=cfg.mlp_ratio, pos_encoding=cfg.pos_encoding,
                                  norm_first=cfg.norm_first)
  return MLPAutoencoder(int(np.prod(input_shape[1:])), hidden=hidden, latent=cfg.latent)


# --------------------------------------------------------------------------- schedules
def pretrain_schedule(cfg: Config, total_steps: int):
  """Pre-training rate per Adam step: constant, or linear warm-up from 0 over
  round(pretrain_warmup · total_steps) steps and a half cosine to pretrain_end_rate."""
  if cfg.pretrain_schedule == "constant" or total_steps < 1:
    return optax.constant_schedule(cfg.pretrain_lr)
  warm = int(round(cfg.pretrain_warmup * total_steps))
  return optax.warmup_cosine_decay_schedule(0.0, cfg.pretrain_lr, warmup_steps=warm,
                                            decay_steps=max(total_steps, warm + 1),
                                            end_value=cfg.pretrain_end_rate)


def cluster_schedule(cfg: Config, warmup_steps: int):
  """Clustering-stage rate at its s-th step: lr · min(1, (s + 1) / W) (W = 0: lr)."""
  if warmup_steps <= 0:
    return optax.constant_schedule(cfg.lr)
  return lambda s: cfg.lr * jnp.clip((s + 1) / warmup_steps, 0.0, 1.0)


def optimizers(cfg: Config, pretrain_steps: int, warmup_steps: int):
  """(pre-training tx, clustering tx). Without reset_optimizer one Adam runs through both
  stages, its schedule joined at the pre-training's last step."""
  stage2 = cluster_schedule(cfg, warmup_steps)
  both = optax.adam(optax.join_schedules([pretrain_schedule(cfg, pretrain_steps), stage2],
                                         [pretrain_steps]))
  return both, (optax.adam(stage2) if cfg.reset_optimizer else both)


# --------------------------------------------------------------------------- losses and steps
def rec_per_sample(x, x_hat, how):
  """Eq. 13 per sample: ‖x - x̂‖² over all features ("sum") or its mean over features."""
  se = jnp.reshape((x - x_hat) ** 2, (x.shape[0], -1))
  return jnp.sum(se, axis=1) if how == "sum" else jnp.mean(se, axis=1)


def make_steps(net, cfg: Config, n_clusters: int):
  """IDCL's pure pieces for one network: the two train steps (engine signature
  `step(state, consts, idx, w, key) -> (state, metrics)`), `embed` and `assign`."""

  def augment(x, key):
    return random_rotate_shift(key, x) if cfg.augment and x.ndim == 4 else x

  def weighted_rec(params, x, w):
    z, x_hat = net.apply(params, x)
    return jnp.sum(rec_per_sample(x, x_hat, cfg.rec_loss) * w) / jnp.maximum(jnp.sum(w), 1.0), z

  def pretrain_step(state, x_all, idx, w, key):                               # Eq. 13
    x = augment(x_all[idx], key)
    (loss, _), g = jax.value_and_grad(weighted_rec, has_aux=True)(state.params, x, w)
    return state.apply_gradients(grads=g), {"loss_rec": loss}

  def train_step(state, consts, idx, w, key):
    x_all, p_all, anchors, anchor_labels, anchor_w = consts
    x, p = augment(x_all[idx], key), p_all[idx]
    anchors = jax.lax.stop_gradient(anchors)  # Eq. 15 differentiates w.r.t. z_i only

    def loss_fn(params):
      rec, z = weighted_rec(params, x, w)
      q = soft_assignment(core_similarity(z, anchors, anchor_labels, anchor_w,   # Eq. 10-11
                                          n_clusters=n_clusters, reduce=cfg.core_reduce))
      kl = kl_clustering_loss(p, q, weights=w)                                # Eq. 12
      if cfg.kl_reduce == "sum":  # Eq. 14 as printed: Σ_i over the batch
        kl = kl * jnp.sum(w)
      return rec + cfg.alpha * kl, {"loss_rec": rec, "loss_kl": kl}           # Eq. 14

    (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=g), {"loss": loss, **aux}

  def assign(z, key, prev_labels, zeta):
    """Algorithm 2 lines 5–10 plus the curriculum mask (Algorithm 1), one jitted call."""
    k_dc, k_km = jax.random.split(key)
    dc = cutoff_distance(z, k_dc, lam1=cfg.lam1)
    rho = local_density(z, dc)                                                # Eq. 1
    delta = difficulty_scores(rho)                                            # Eq. 2
    if cfg.kmeans_init in ("previous", "warm"):
      prev = prev_labels.astype(jnp.int32)
      counts = jax.ops.segment_sum(jnp.ones_like(z[:, 0]), prev, num_segments=n_clusters)
      means = cluster_sums(z, prev, n_clusters) / jnp.maximum(counts, 1.0)[:, None]
      km = (KMeansResult(prev, means, jnp.float32(0.0), jnp.int32(0))         # Eq. 7
            if cfg.kmeans_init == "previous" else lloyd(z, means))
    else:
      km = kmeans(k_km, z, n_clusters, n_init=cfg.kmeans_n_init)
    if cfg.assignment == "core":
      core = density_cores(rho, km.labels, n_clusters=n_clusters, lam2=cfg.lam2)  # Eq. 9
      anchors, anchor_labels, anchor_w = z, km.labels, core.astype(z.dtype)
    else:
      core = jnp.zeros(z.shape[:1], bool)
      anchors, anchor_labels = km.centers, jnp.arange(n_clusters, dtype=jnp.int32)
      anchor_w = jnp.ones((n_clusters,), z.dtype)
    # Eq. 10-11 in row blocks: with every sample a potential core anchor the kernel is n × n.
    q = map_row_blocks(lambda zb, _: soft_assignment(core_similarity(
        zb, anchors, anchor_labels, anchor_w, n_clusters=n_clusters, reduce=cfg.core_reduce)), z)
    y = jnp.argmax(q, axis=1).astype(jnp.int32)
    return {"dc": dc, "km_labels": km.labels, "core": core, "anchors": anchors,
            "anchor_labels": anchor_labels, "anchor_w": anchor_w,
            "p": target_distribution(q), "y": y,                              # DEC target
            "v": select_easy(delta, y, zeta=zeta, n_clusters=n_clusters)}     # Eq. 7-8

  embed = engine.make_embed(lambda p, rows: net.apply(p, rows, method="encode"),
                            block=cfg.embed_block)
  return {"pretrain_step": pretrain_step, "train_step": train_step, "embed": embed,
          "assign": jax.jit(assign)}


def fit(data: Views, n_clusters: int, config: Config, *, key: jax.Array, run: Run) -> FitResult:
  """Pre-training then Algorithm 2. Returns the final model's labels and embedding."""
  cfg = dataclasses.replace(config, hidden=tuple(int(h) for h in config.hidden))
  cfg.validate()
  k = int(n_clusters)
  x_np = prepare_inputs(data, cfg)
  n = x_np.shape[0]
  x_all = jnp.asarray(x_np)
  net = make_net(cfg, x_np.shape)
  steps = make_steps(net, cfg, k)
  bpe = max(n // cfg.batch_size, 1)  # full batches per epoch (engine.epoch_batches)
  tx_pre, tx_train = optimizers(cfg, cfg.pretrain_epochs * bpe,
                                int(round(cfg.warmup * cfg.epochs * bpe)))
  k_init, k_pre, k_train, k_km0 = jax.random.split(key, 4)
  params = jax.jit(net.init)(k_init, x_all[:2])
  info: dict = {"n_params": int(sum(a.size for a in jax.tree.leaves(params))),
                "input_shape": list(x_np.shape[1:]), "net": type(net).__name__}
  everyone = np.arange(n)

  # ---- stage 1: pre-training on L_rec (Eq. 13) -------------------------------------------
  pre_scan = engine.ScannedEpoch(steps["pretrain_step"])

  def pretrain_epoch(epoch, state):
    idx, w = engine.epoch_batches(subset_permutation(k_pre, epoch, everyone, n), n,
                                  cfg.batch_size)
    state, m = pre_scan(state, x_all, idx, w, epoch_key(k_pre, epoch))
    return engine.Epoch(state, m)

  state, pre_info = engine.run_stage(run, "pretrain", engine.new_state(params, tx_pre),
                                     cfg.pretrain_epochs, pretrain_epoch, scans=(pre_scan,))
  # ---- starting point: k-means on the pre-trained embedding ------------------------------
  z0 = steps["embed"](state.params, x_all)
  last_rec = [r["loss_rec"] for r in run.history if r["stage"] == "pretrain"][-1:]
  health, problems = autoencoder_health(x_np, np.asarray(z0), last_rec[0] if last_rec else None,
                                     cfg.rec_loss)
  info.update(health)
  for msg in problems:
    warnings.warn(msg, RuntimeWarning, stacklevel=2)
  km0 = kmeans(k_km0, z0, k, n_init=cfg.kmeans_n_init)
  init_labels = np.asarray(km0.labels)
  run.log("init", 0, {"inertia": km0.inertia}, labels=init_labels)

  # ---- stage 2: Algorithm 2 ----------------------------------------------------------------
  train_scan = engine.ScannedEpoch(steps["train_step"])

  def clustering_pass(state, epoch, zeta):
    """Algorithm 2 lines 4-10 (+ Algorithm 1's mask); labels aligned to the previous ones."""
    k_assign = jax.random.split(epoch_key(k_train, epoch), 3)[0]
    y_prev = state.extra["y_prev"]
    z = steps["embed"](state.params, x_all)                                   # line 4
    a = steps["assign"](z, k_assign, y_prev, zeta)                            # lines 5-10
    y = np.asarray(a["y"])
    perm = (align_partitions(y, np.asarray(y_prev), k) if cfg.kmeans_init == "restart"
            else np.arange(k, dtype=np.int32))
    return z, a, perm[y].astype(np.int32), perm

  def train_epoch(epoch, state):
    _, k_batch, k_steps = jax.random.split(epoch_key(k_train, epoch), 3)
    zeta = pacing(epoch, zeta0=cfg.zeta0, zeta_max=cfg.zeta_max, t_grow=cfg.t_grow,
                  pace=cfg.pace)                                              # Eq. 5-6
    _, a, y, _ = clustering_pass(state, epoch, zeta)
    v = np.asarray(a["v"])
    metrics = {"label_change": float(np.mean(y != np.asarray(state.extra["y_prev"]))),
               "zeta": float(zeta), "n_curriculum": int(v.sum()), "dc": float(a["dc"]),
               "n_core": int(np.asarray(a["core"]).sum())}
    state = state.replace(extra={"y_prev": jnp.asarray(y)})
    if epoch > 0 and metrics["label_change"] < cfg.tol:                       # lines 11-13
      return engine.Epoch(state, metrics, labels=y, stop=True)
    idx, w = engine.epoch_batches(subset_permutation(k_batch, epoch, np.flatnonzero(v), n), n,
                                  cfg.batch_size)                             # Alg. 1, Eq. 8
    consts = (x_all, a["p"], a["anchors"], a["anchor_labels"], a["anchor_w"])
    state, m = train_scan(state, consts, idx, w, k_steps)                     # lines 15-18
    return engine.Epoch(state, {**m, **metrics}, labels=y)

  start = engine.new_state(state.params, tx_train, extra={"y_prev": jnp.asarray(init_labels,
                                                                              jnp.int32)})
  if not cfg.reset_optimizer:
    start = start.replace(opt_state=state.opt_state, step=state.step)
  state, train_info = engine.run_stage(run, "train", start, cfg.epochs, train_epoch,
                                       scans=(train_scan,))
  rec_stage = [r["loss_rec"] for r in run.history if r["stage"] == "train" and "loss_rec" in r]
  if last_rec and rec_stage and last_rec[0] > 0:
    # Label-free: the clustering stage should refine the autoencoder, not undo it.
    jump = max(rec_stage) / last_rec[0]
    info["cluster_rec_over_pretrain"] = round(float(jump), 4)
    if jump > 2.0:
      warnings.warn(f"IDCL's clustering stage raised L_rec to {jump:.1f}x its value at the end "
                    "of pre-training: the autoencoder was disrupted (a smaller lr or a longer "
                    "warmup may help)", RuntimeWarning, stacklevel=2)

  # ---- the final model's assignment: one more pass with the final parameters -------------
  labels, z, fstate = init_labels, z0, {"params": jax.tree.map(np.asarray, state.params)}
  if cfg.epochs > 0:
    z, a, labels, perm = clustering_pass(state, cfg.epochs, jnp.float32(1.0))
    keep = np.asarray(a["anchor_w"]) > 0
    fstate.update(anchors=np.asarray(a["anchors"])[keep],
                  anchor_labels=perm[np.asarray(a["anchor_labels"])[keep]])  # labels_' ids
  stages = {"pretrain": pre_info, "train": train_info}
  info.update(engine.timing_info(stages), stopped_at_epoch=train_info["stopped_at"])
  return FitResult(labels=np.asarray(labels, np.int64), embedding=np.asarray(z),
                   init_labels=init_labels.astype(np.int64), init_embedding=np.asarray(z0),
                   state=fstate, info=info)


def predict(net, cfg: Config, state: dict, x: np.ndarray, n_clusters: int):
  """Embedding (n, latent) and density-core labels (n,) of new inputs with a fitted state."""
  z = net.apply(state["params"], jnp.asarray(x), method="encode")
  if "anchors" not in state:
    return np.asarray(z), None
  anchors = jnp.asarray(state["anchors"])
  s = core_similarity(z, anchors, jnp.asarray(state["anchor_labels"]),
                      jnp.ones(anchors.shape[:1], z.dtype), n_clusters=n_clusters,
                      reduce=cfg.core_reduce)
  return np.asarray(z), np.asarray(jnp.argmax(s, axis=1))
