"""IDCL: deep image clustering with a density curriculum and density-core assignment.

Zheng, Zhang & Wang, ICMR 2024 (papers/003_…). Two stages:
  1. pre-training of the autoencoder on L_rec (Eq. 13), then k-means on its embedding
     (the starting point, `init_labels`);
  2. Algorithm 2: each epoch embed all samples, local density (Eq. 1) with d_c at λ1,
     k-means clusters, density cores (Eq. 9), density-core Student-t assignment Q (Eq. 10–11),
     DEC target P, labels Y = argmax Q, stop when the label change rate is below μ,
     the per-cluster curriculum set (Eq. 5–8), and mini-batch training on
     L = L_rec + α·KL(P‖Q) (Eq. 14).

Shapes never change between epochs: the curriculum set is visited in full batches of a
fixed size (a set smaller than one batch is padded with zero-weight rows), and the density
cores are passed as an (n,) weight mask over the epoch's embedding, so the train step
compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clustering_jax.data.augment import random_rotate_shift
from clustering_jax.data.container import Dataset
from clustering_jax.methods.base import FitResult
from clustering_jax.nets.mlp import MLPAutoencoder
from clustering_jax.nets.transformer import TransformerAutoencoder
from clustering_jax.ops.assignment import (core_similarity, kl_clustering_loss, soft_assignment,
                                           target_distribution)
from clustering_jax.ops.curriculum import PACES, pacing, select_easy
from clustering_jax.ops.density import (cutoff_distance, density_cores, difficulty_scores,
                                        local_density)
from clustering_jax.ops.distances import cluster_sums, map_row_blocks
from clustering_jax.ops.kmeans import KMeansResult, kmeans, lloyd
from clustering_jax.train.batching import batch_matrix, epoch_key, subset_permutation
from clustering_jax.train.run import Run


@dataclasses.dataclass(frozen=True)
class Config:
  """IDCL hyperparameters; defaults are the paper's (§4 "Experimental Setup") unless noted.

  Departures from the paper's defaults, each measured on digits without labels (the
  reconstruction loss, the label change rate) and explained in docs/methods/idcl.md:
  lr = 0.001 (paper 0.01), pre-training for 1000 epochs (paper 100) at a peak pretrain_lr =
  0.001 with a warm-up and a cosine decay to lr (paper: 0.01, no schedule stated; with
  lr = pretrain_lr the decay is flat: a warm-up, then a constant rate),
  reset_optimizer=False, core_reduce="mean",
  norm_first=True. The loss balance is Eq. 16–17's: L_rec per sample summed over pixels
  (Eq. 13, rec_loss="sum") and KL per sample, both averaged over the batch (kl_reduce="mean").

  Attributes:
    backbone: "transformer" (§3 TAE), "mlp" (the same linear block without patches and
      transformer blocks: Table 4 "w/o TB"; always used for vector data) or "auto".
    hidden, latent: the linear block M-512-512-3072-10 (§4).
    depth, num_heads, mlp_ratio, pos_encoding: transformer blocks per side, heads, FFN width
      ratio and absolute position encoding — not given in the paper (our choice; App. F
      says sinusoidal).
    image_size: resize images to this side first; 0 = as the paper: only when the patch
      embedding size C·H/4·W/4 is odd or H, W do not split into 4 (28×28 -> 32×32, App. F).
    lr, pretrain_lr: Adam learning rates of the clustering stage and of pre-training.
      The paper gives 0.01 for both (§4). lr = 0.001 is the largest rate at which no
      clustering epoch's L_rec rose above the pre-training's final L_rec by more than 1.5x
      (digits, seeds 0-2: at most 1.10x) with the pre-training's rate ending at lr. After
      100 epochs annealed to 0, lr 0.001 raised it 73-178x and 0.0002 was the largest
      passing rate (docs/methods/idcl.md, "Clustering-stage rate", "Pre-training length").
    pretrain_schedule: "constant" (pretrain_lr throughout; the paper states no schedule) or
      "warmup_cosine" (default): linear warm-up from 0 to pretrain_lr over the first
      pretrain_warmup fraction of the pre-training steps, then cosine decay to
      pretrain_end_lr at the last step. Chosen with pretrain_lr = 0.001 by the reconstruction loss and by stability
      (a peak of 0.003 collapsed the autoencoder at 10 and at 1000 epochs), without labels
      (experiments/pretrain_schedule.py; docs/methods/idcl.md).
    pretrain_end_lr: the rate the cosine decays to at the last pre-training step. None
      (default): the clustering stage's lr (capped at pretrain_lr), so the rate is continuous
      across the stage boundary (`pretrain_end_rate`). After 1000 epochs annealed to 0, the
      jump to lr = 0.0002 threw the autoencoder off (L_rec 8-15x in the second clustering
      epoch); ending at lr, 1.00-1.02x (1.07-1.10x at lr 0.001; docs/methods/idcl.md,
      "Pre-training length"). 0 anneals to 0 (the schedule of sessions 6-7).
    warmup: linear warm-up of the clustering stage's lr over its first round(warmup · epochs ·
      ⌊n / batch_size⌋) Adam steps (the fraction of the stage's steps had every epoch used all
      samples), from lr/W at its first step to lr. Not in the paper (which states no schedule):
      after the warm-up + cosine pre-training ends at a rate near 0, starting the stage cold at
      lr blew the autoencoder up on digits (L_rec 0.75–1.04 -> 6–184 in the first epoch, with
      or without the KL term). Default 0 (off): no warm-up length passed the label-free
      stage-boundary rule (0.1 left 2-3.5x L_rec spikes; 0.2 and 0.3 made the stop rule fire
      within three epochs) — docs/methods/idcl.md.
    batch_size, epochs: 256 and 200 (§4).
    pretrain_epochs: 1000 (the paper: 100 at lr 0.01; at our peak of 0.001 that is the same
      lr × epochs). Chosen with pretrain_end_lr = lr by a label-free rule: pre-training
      healthy and better on L_rec than 100 epochs, the clustering stage never raising L_rec
      above 1.5x its pre-training value, and under 12 min per digits run on 2 CPU cores
      (docs/methods/idcl.md, "Pre-training length").
    alpha: weight α of the KL term in Eq. 14 (0.1).
    lam1: d_c rank λ1 (2 %); lam2: density-core rank λ2 (5 %).
    zeta0, zeta_max: initial and maximal curriculum proportion ζ0 = 0.6, ζmax = 0.95.
    t_grow: epochs for Eq. 5 to reach 1 — not given in the paper; our default is 100
      (half the 200 training epochs; ζ reaches ζmax = 0.95 at epoch 90).
    pace: "exp" (Eq. 5–6), "linear" (fixed pace ablation, Table 4 Model-5) or "all" (no
      curriculum: every sample every epoch, Table 4 w/o RCL).
    assignment: "core" (density-core Q, Eq. 10–11) or "center" (DEC's Student-t to the
      k-means centers: Table 4 w/o C^core).
    core_reduce: "sum" (Eq. 10 as printed: Σ over the core) or "mean" (divided by the
      core's size, so a cluster's similarity does not grow with its core).
    kl_reduce: "sum" (Eq. 14 as printed: α·Σ_i KL_i over the batch) or "mean" (α times the
      batch mean, the 1/m of Eq. 16–17 applied to both terms).
    reset_optimizer: start the clustering stage with a fresh Adam state (True) or carry the
      pre-training state over (False).
    tol: stopping threshold μ on the label change rate (Algorithm 2) — not given in the
      paper; 0.001 as DEC. Checked from the second clustering epoch on.
    rec_loss: "sum" — Eq. 13 as printed, ‖x - x̂‖² summed over pixels, mean over samples;
      "mean" — additionally averaged over pixels (what an MSELoss computes; with it the KL
      term is 64× stronger on digits, L_rec rises several-fold and the embedding's scale
      d_c runs away — see docs/methods/idcl.md).
    augment: random rotation (±10°) and shift (±H/10 px) of training images (App. F).
    kmeans_n_init: k-means restarts per epoch (k-means default 10).
    kmeans_init: how Algorithm 2 line 6's k-means starts each epoch. "warm" (default since
      session 8) — Lloyd started from the means of the previous epoch's clusters (in the first
      epoch, of the starting point's 10-restart k-means clusters); "restart" — a fresh k-means each
      epoch, its labels aligned to the previous epoch's by Hungarian matching of the two
      partitions (no ground truth) for the change rate; it lets the partition jump between
      k-means optima (median label change 2.6-3.0 % per epoch on digits against 1.4-2.8 %
      warm; docs/methods/idcl.md, "seventh rule");
      "previous" — no k-means after the first epoch: the clusters of Eq. 7 and 9 are the
      previous iteration's Y (Eq. 7: "C_k ... generated from the results of the (t−1)-th
      iteration"; Algorithm 2 line 6 calls k-means's clusters "initial").
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
    """The rate the warm-up + cosine pre-training ends at: pretrain_end_lr, or by default
    the clustering stage's lr (at most pretrain_lr)."""
    if self.pretrain_end_lr is not None:
      return self.pretrain_end_lr
    return min(self.lr, self.pretrain_lr)

  def validate(self):
    if self.backbone not in ("auto", "transformer", "mlp"):
      raise ValueError(f"backbone must be 'auto', 'transformer' or 'mlp', got {self.backbone!r}")
    if self.pace not in PACES:
      raise ValueError(f"pace must be one of {PACES}, got {self.pace!r}")
    if self.assignment not in ("core", "center"):
      raise ValueError(f"assignment must be 'core' or 'center', got {self.assignment!r}")
    if self.rec_loss not in ("sum", "mean"):
      raise ValueError(f"rec_loss must be 'sum' or 'mean', got {self.rec_loss!r}")
    if self.kmeans_init not in ("restart", "warm", "previous"):
      raise ValueError(f"kmeans_init must be 'restart', 'warm' or 'previous', "
                       f"got {self.kmeans_init!r}")
    for name in ("lam1", "lam2", "zeta0", "zeta_max"):
      v = getattr(self, name)
      if not 0.0 < v <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {v}")
    if self.pretrain_schedule not in ("constant", "warmup_cosine"):
      raise ValueError(f"pretrain_schedule must be 'constant' or 'warmup_cosine', "
                       f"got {self.pretrain_schedule!r}")
    if not 0.0 <= self.pretrain_warmup < 1.0:
      raise ValueError(f"pretrain_warmup must be in [0, 1), got {self.pretrain_warmup}")
    if self.pretrain_end_lr is not None and not 0.0 <= self.pretrain_end_lr <= self.pretrain_lr:
      raise ValueError(f"pretrain_end_lr must be None or in [0, pretrain_lr={self.pretrain_lr}], "
                       f"got {self.pretrain_end_lr}")
    if not 0.0 <= self.warmup <= 1.0:
      raise ValueError(f"warmup must be in [0, 1], got {self.warmup}")
    if self.t_grow <= 0 or self.batch_size < 1 or self.lr <= 0:
      raise ValueError("t_grow, batch_size and lr must be positive")
    if self.epochs < 0 or self.pretrain_epochs < 0:
      raise ValueError("epochs and pretrain_epochs must be >= 0")


# --------------------------------------------------------------------------- networks & data
def _image_size(cfg: Config, image_shape) -> Optional[int]:
  """Side to resize square images to, or None to keep them."""
  h, w, c = image_shape
  if cfg.image_size:
    return None if (cfg.image_size == h == w) else int(cfg.image_size)
  if cfg.backbone == "mlp" or (h % 4 == 0 and w % 4 == 0 and (c * h * w // 16) % 2 == 0):
    return None
  return int(-(-max(h, w) // 8) * 8)  # 28 -> 32 as the paper


def prepare_inputs(data: Dataset, cfg: Config) -> np.ndarray:
  """Model inputs: images (n, H, W, C) (resized when needed) or vectors (n, d), float32."""
  if data.kind != "image":
    return data.concat().astype(np.float32)
  x = np.asarray(data.views[0], np.float32)
  side = _image_size(cfg, x.shape[1:])
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


# --------------------------------------------------------------------------- losses and steps
class TrainState(NamedTuple):
  params: Any
  opt_state: Any


def _rec_per_sample(x, x_hat, how):
  """Eq. 13 per sample: ‖x - x̂‖² over all features ("sum") or its mean over features."""
  se = jnp.reshape((x - x_hat) ** 2, (x.shape[0], -1))
  return jnp.sum(se, axis=1) if how == "sum" else jnp.mean(se, axis=1)


def pretrain_lr_factor(cfg: Config, total_steps: int):
  """Multiplier of pretrain_lr as a function of the Adam step count (0-based), or None for a
  constant rate. "warmup_cosine": 0 -> 1 linearly over round(pretrain_warmup · total_steps)
  steps, then a half cosine down to pretrain_end_rate / pretrain_lr at total_steps (optax's
  warmup-cosine schedule; by default the end rate is lr, so at lr = pretrain_lr it stays 1)."""
  if cfg.pretrain_schedule == "constant" or total_steps < 1:
    return None
  warm = int(round(cfg.pretrain_warmup * total_steps))
  return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=warm,
                                            decay_steps=max(total_steps, warm + 1),
                                            end_value=cfg.pretrain_end_rate / cfg.pretrain_lr)


@functools.lru_cache(maxsize=16)
def make_steps(net, cfg: Config, n_clusters: int, pretrain_steps: int = 0,
               warmup_steps: int = 0):
  """The jitted pieces of IDCL for one network and config.

  Returns a dict of pure functions:
    pretrain_step(state, x_all, idx, w, key) -> (state, metrics)        L_rec (Eq. 13)
    train_step(state, x_all, p_all, anchors, anchor_labels, anchor_w, idx, w, key)
        -> (state, metrics)                                           Eq. 14
    embed(params, x_all) -> z (n, latent)
    assign(z, key, prev_labels, zeta) -> dict of the epoch's clustering quantities
        (Alg. 2 lines 5–10 and Algorithm 1's mask)
  pretrain_steps: the number of pre-training steps (the length of pretrain_schedule).
  warmup_steps: length W of the clustering stage's linear warm-up (0: none); the stage's
    s-th step (0-based, counted by Adam from the stage's start) is scaled by min(1, (s+1)/W).
  Cached per (net, config, k, pretrain_steps, warmup_steps), so repeated fits reuse the
  compiled steps.
  """
  tx = optax.adam(cfg.lr)                 # clustering stage
  tx_pre = optax.adam(cfg.pretrain_lr)    # pre-training (same state structure)
  lr_factor = pretrain_lr_factor(cfg, pretrain_steps)
  stage_start = 0 if cfg.reset_optimizer else pretrain_steps  # Adam's count at the stage start

  def augment(x, key):
    if cfg.augment and x.ndim == 4:
      return random_rotate_shift(key, x)
    return x

  def _rec_loss(params, x, w):
    z, x_hat = net.apply(params, x)
    rec = _rec_per_sample(x, x_hat, cfg.rec_loss)
    return jnp.sum(rec * w) / jnp.maximum(jnp.sum(w), 1.0), z

  def pretrain_step(state, x_all, idx, w, key):
    x = augment(x_all[idx], key)
    (loss, _), g = jax.value_and_grad(_rec_loss, has_aux=True)(state.params, x, w)
    upd, opt_state = tx_pre.update(g, state.opt_state, state.params)
    if lr_factor is not None:  # the schedule reads Adam's own step count (checkpointed)
      f = lr_factor(state.opt_state[0].count)
      upd = jax.tree.map(lambda u: u * f, upd)
    return TrainState(optax.apply_updates(state.params, upd), opt_state), {"loss_rec": loss}

  def pretrain_epoch(state, x_all, idx, w, key):
    """A whole pre-training epoch, idx and w (n_batches, B), as one lax.scan of
    pretrain_step: one dispatch per epoch instead of one per step (the GPU ran the TAE's
    steps at 137/s one by one). Batch b's key is fold_in(key, b), as `_run_steps` gives it.
    Returns the state and the per-batch metrics, stacked."""
    keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(idx.shape[0]))
    return jax.lax.scan(lambda st, xs: pretrain_step(st, x_all, *xs), state, (idx, w, keys))

  def train_step(state, x_all, p_all, anchors, anchor_labels, anchor_w, idx, w, key):
    x = augment(x_all[idx], key)
    p = p_all[idx]
    # Cores are constants of the epoch (Eq. 15 differentiates w.r.t. z_i only).
    anchors = jax.lax.stop_gradient(anchors)

    def loss_fn(params):
      z, x_hat = net.apply(params, x)
      rec = jnp.sum(_rec_per_sample(x, x_hat, cfg.rec_loss) * w) / jnp.maximum(jnp.sum(w), 1.0)
      q = soft_assignment(core_similarity(z, anchors, anchor_labels, anchor_w,   # Eq. 10-11
                                          n_clusters=n_clusters, reduce=cfg.core_reduce))
      kl = kl_clustering_loss(p, q, weights=w)                                # Eq. 12
      if cfg.kl_reduce == "sum":  # Eq. 14 as printed: Σ_i over the batch, not the mean
        kl = kl * jnp.sum(w)
      return rec + cfg.alpha * kl, {"loss_rec": rec, "loss_kl": kl}           # Eq. 14

    (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    upd, opt_state = tx.update(g, state.opt_state, state.params)
    if warmup_steps > 0:  # Config.warmup: read from Adam's own (checkpointed) step count
      s = state.opt_state[0].count - stage_start
      f = jnp.clip((s + 1) / warmup_steps, 0.0, 1.0)
      upd = jax.tree.map(lambda u: u * f, upd)
    return TrainState(optax.apply_updates(state.params, upd), opt_state), {"loss": loss, **aux}

  def embed(params, x_all):
    enc = lambda rows, _: net.apply(params, rows, method="encode")
    return map_row_blocks(enc, x_all, block=cfg.embed_block)

  def assign(z, key, prev_labels, zeta):
    """One pass of Algorithm 2 lines 5–10 plus the curriculum mask (Algorithm 1)."""
    k_dc, k_km = jax.random.split(key)
    dc = cutoff_distance(z, k_dc, lam1=cfg.lam1)
    rho = local_density(z, dc)                                                # Eq. 1
    delta = difficulty_scores(rho)                                            # Eq. 2
    if cfg.kmeans_init in ("previous", "warm"):
      prev = prev_labels.astype(jnp.int32)
      counts = jax.ops.segment_sum(jnp.ones_like(z[:, 0]), prev, num_segments=n_clusters)
      means = cluster_sums(z, prev, n_clusters)
      means = means / jnp.maximum(counts, 1.0)[:, None]
      if cfg.kmeans_init == "previous":  # Eq. 7: C_k from the results of iteration t-1
        km = KMeansResult(prev, means, jnp.float32(0.0), jnp.int32(0))
      else:                              # Lloyd started from the previous clusters' means
        km = lloyd(z, means)
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
    p = target_distribution(q)                                                # DEC target
    y = jnp.argmax(q, axis=1).astype(jnp.int32)
    v = select_easy(delta, y, zeta=zeta, n_clusters=n_clusters)              # Eq. 7-8
    return {"z": z, "dc": dc, "rho": rho, "km_labels": km.labels, "core": core,
            "anchors": anchors, "anchor_labels": anchor_labels, "anchor_w": anchor_w,
            "p": p, "y": y, "v": v}

  return {"tx": tx,
          "pretrain_step": jax.jit(pretrain_step, donate_argnums=0),
          "pretrain_epoch": jax.jit(pretrain_epoch, donate_argnums=0),
          "train_step": jax.jit(train_step, donate_argnums=0),
          "embed": jax.jit(embed),
          "assign": jax.jit(assign)}


def alignment(new: np.ndarray, old: np.ndarray, n_clusters: int) -> np.ndarray:
  """Permutation `perm` (k,) such that perm[new] matches `old` as well as possible: Hungarian
  matching on the contingency table of two predicted partitions (no ground truth involved)."""
  from scipy.optimize import linear_sum_assignment
  cont = np.zeros((n_clusters, n_clusters), np.int64)
  np.add.at(cont, (np.asarray(new), np.asarray(old)), 1)
  r, c = linear_sum_assignment(-cont)
  perm = np.arange(n_clusters)
  perm[r] = c
  return perm.astype(np.int32)


def _epoch_batches(key, epoch, members: np.ndarray, batch_size: int, n: int):
  """Index batches (idx, w) of a fixed size over a shuffled member set (indices into the n
  samples): full batches only (the remainder is dropped; the order is reshuffled every
  epoch), except that a set smaller than one batch forms one batch padded with zero-weight
  rows. The shuffle has the shape (n,) whatever the set's size (`subset_permutation`), so a
  growing curriculum set does not compile a new one every epoch."""
  order = subset_permutation(key, epoch, members, n)
  if len(order) >= batch_size:
    for idx in batch_matrix(order, batch_size):
      yield idx, np.ones(batch_size, np.float32)
  elif len(order):
    pad = batch_size - len(order)
    yield (np.concatenate([order, np.zeros(pad, order.dtype)]),
           np.concatenate([np.ones(len(order)), np.zeros(pad)]).astype(np.float32))


class _Timer:
  def __init__(self):
    self.compile_s = 0.0          # compile time of the step (this process)
    self.compile_this_fit = 0.0   # part of this fit's wall time spent compiling
    self.step_s = 0.0
    self.steps = 0


#: (jitted step, argument signature) -> (compiled executable, seconds it took to compile).
_COMPILED: dict = {}


def _compiled(step_fn, timer, *args):
  """Ahead-of-time compiled step for these argument shapes (compiled once per process; the
  compile time is recorded apart from the step time)."""
  sig = tuple((np.shape(a), str(a.dtype)) for a in jax.tree.leaves(args))
  key = (step_fn, sig, jax.tree.structure(args))
  if key not in _COMPILED:
    tc = time.perf_counter()
    _COMPILED[key] = (step_fn.lower(*args).compile(), time.perf_counter() - tc)
    timer.compile_this_fit = _COMPILED[key][1]
  exe, secs = _COMPILED[key]
  if timer.compile_s == 0.0:
    timer.compile_s = secs
  return exe


def _run_steps(step_fn, compiled, timer, state, batches, *args, key):
  """Runs jitted steps over batches; one host sync at the end (metrics averaged)."""
  metrics_sum, n = None, 0
  t0 = time.perf_counter()
  for b, (idx, w) in enumerate(batches):
    idx, w = jnp.asarray(idx, jnp.int32), jnp.asarray(w)
    k = jax.random.fold_in(key, b)
    if compiled[0] is None:
      compiled[0] = _compiled(step_fn, timer, state, *args, idx, w, k)
      t0 = time.perf_counter()
    state, m = compiled[0](state, *args, idx, w, k)
    metrics_sum = m if metrics_sum is None else jax.tree.map(jnp.add, metrics_sum, m)
    n += 1
  if n:
    metrics_sum = jax.tree.map(lambda a: float(a) / n, metrics_sum)  # one host sync per epoch
  timer.step_s += time.perf_counter() - t0
  timer.steps += n
  return state, (metrics_sum or {}), n


def _run_scanned(epoch_fn, compiled, timer, state, batches, *args, key):
  """As `_run_steps`, with the whole epoch in one jitted scan (`pretrain_epoch`): the same
  keys, the same updates, and the per-batch metrics summed in batch order in float32 as
  `_run_steps` sums them; one host sync per epoch."""
  batches = list(batches)
  if not batches:
    return state, {}, 0
  idx = jnp.asarray(np.stack([b[0] for b in batches]), jnp.int32)
  w = jnp.asarray(np.stack([b[1] for b in batches]))
  if compiled[0] is None:
    compiled[0] = _compiled(epoch_fn, timer, state, *args, idx, w, key)
  t0 = time.perf_counter()
  state, per_batch = compiled[0](state, *args, idx, w, key)
  metrics = {}
  for name, v in per_batch.items():
    v = np.asarray(v, np.float32)
    total = v[0]
    for x in v[1:]:
      total = np.float32(total + x)
    metrics[name] = float(total) / len(batches)
  timer.step_s += time.perf_counter() - t0
  timer.steps += len(batches)
  return state, metrics, len(batches)


def pretrain_health(x: np.ndarray, z: np.ndarray, last_rec: Optional[float],
                    rec_loss: str = "sum") -> tuple[dict, list]:
  """Label-free checks of a pre-trained autoencoder: (values for fit_info_, warnings).

  rec_over_variance: the last pre-training L_rec (per sample, summed over features) over the
    data's total variance — an autoencoder that outputs the mean image scores 1.
  embedding_spread: RMS distance of the embedding from its mean, relative to its RMS norm —
    0 when the encoder maps every input to one point.
  Both failures were seen: a 10-epoch warm-up on hdigit-mnist (ratio 0.94) and a 1000-epoch
  schedule at peak 0.003 on digits (every embedding identical).
  """
  n = x.shape[0]
  info, problems = {}, []
  total_var = float(np.sum(np.var(x.reshape(n, -1), axis=0, dtype=np.float64)))
  if last_rec is not None and total_var > 0:
    ratio = last_rec * (1 if rec_loss == "sum" else x[0].size) / total_var
    info["pretrain_rec_over_variance"] = round(float(ratio), 4)
    if ratio > 0.9:
      problems.append(
          f"IDCL pre-training ended with L_rec at {ratio:.0%} of the data's total variance "
          "(reconstructing the mean image scores 100%): the autoencoder may be untrained or "
          "collapsed; pre-train for more epochs or try another seed")
  zc = z.astype(np.float64)
  spread = float(np.sqrt(np.mean(np.sum((zc - zc.mean(0)) ** 2, axis=1))))
  scale = float(np.sqrt(np.mean(np.sum(zc ** 2, axis=1))))
  info["embedding_spread"] = round(spread / scale, 6) if scale > 0 else 0.0
  if n > 1 and spread <= 1e-6 * max(scale, 1e-12):
    problems.append("IDCL pre-training collapsed the embedding: every input maps to the same "
                    "point, so k-means and the density cores are meaningless; pre-train with "
                    "another seed or a smaller pretrain_lr")
  return info, problems


def fit(data: Dataset, config: Config, *, key: jax.Array, run: Run) -> FitResult:
  """Pre-training then Algorithm 2. Returns the final model's labels and embedding."""
  cfg = dataclasses.replace(config, hidden=tuple(int(h) for h in config.hidden))
  cfg.validate()
  k = int(data.n_clusters)
  x_np = prepare_inputs(data, cfg)
  n = x_np.shape[0]
  x_all = jnp.asarray(x_np)
  net = make_net(cfg, x_np.shape)
  batches_per_epoch = max(n // cfg.batch_size, 1)  # as _epoch_batches: full batches only
  steps = make_steps(net, cfg, k, cfg.pretrain_epochs * batches_per_epoch,
                     int(round(cfg.warmup * cfg.epochs * batches_per_epoch)))
  tx = steps["tx"]
  k_init, k_pre, k_train, k_km0 = jax.random.split(key, 4)
  params = jax.jit(net.init)(k_init, x_all[:2])
  info: dict = {"n_params": int(sum(a.size for a in jax.tree.leaves(params))),
                "input_shape": list(x_np.shape[1:]), "net": type(net).__name__}
  members_all = np.arange(n)

  # ---- stage 1: pre-training on L_rec (Eq. 13) -------------------------------------------
  state = TrainState(params, tx.init(params))  # optax.adam states do not depend on the lr
  restored = run.restore("pretrain", state)
  state, start = restored if restored else (state, 0)
  pre_timer, pre_compiled = _Timer(), [None]
  t_stage = time.perf_counter()
  for epoch in run.epochs("pretrain", start, cfg.pretrain_epochs):
    bs = _epoch_batches(k_pre, epoch, members_all, cfg.batch_size, n)
    state, m, _ = _run_scanned(steps["pretrain_epoch"], pre_compiled, pre_timer, state, bs,
                               x_all, key=epoch_key(k_pre, epoch))
    run.log("pretrain", epoch, m)
    run.save("pretrain", epoch, state)
  pre_epochs = max(cfg.pretrain_epochs - start, 0)
  pre_wall = time.perf_counter() - t_stage - pre_timer.compile_this_fit
  params = state.params
  # ---- starting point: k-means on the pre-trained embedding ------------------------------
  z0 = steps["embed"](params, x_all)
  last_rec = [r["loss_rec"] for r in run.history if r["stage"] == "pretrain"][-1:]
  health, problems = pretrain_health(x_np, np.asarray(z0), last_rec[0] if last_rec else None,
                                     cfg.rec_loss)
  info.update(health)
  for msg in problems:
    warnings.warn(msg, RuntimeWarning, stacklevel=2)
  km0 = kmeans(k_km0, z0, k, n_init=cfg.kmeans_n_init)
  init_labels = np.asarray(km0.labels)
  run.log("init", 0, {"inertia": km0.inertia}, labels=init_labels)

  # ---- stage 2: Algorithm 2 ----------------------------------------------------------------
  tstate = {"params": params,
            "opt_state": tx.init(params) if cfg.reset_optimizer else state.opt_state,
            "y_prev": jnp.asarray(init_labels, jnp.int32)}
  restored = run.restore("train", tstate)
  tstate, start = restored if restored else (tstate, 0)
  tstate = jax.tree.map(jnp.asarray, tstate)
  state = TrainState(tstate["params"], tstate["opt_state"])
  y_prev = np.asarray(tstate["y_prev"], np.int32)
  tr_timer, tr_compiled = _Timer(), [None]
  assign_s, assign_first_s, n_assign, stopped_at, epochs_run = 0.0, 0.0, 0, None, 0
  a, y, perm, z = None, init_labels, np.arange(k, dtype=np.int32), z0

  def clustering_pass(params, ek, zeta):
    """Algorithm 2 lines 4-10 (+ Algorithm 1's mask); labels aligned to the previous ones."""
    z = steps["embed"](params, x_all)                                         # line 4
    a = steps["assign"](z, ek, jnp.asarray(y_prev), zeta)                     # lines 5-10
    y = np.asarray(a["y"])
    perm = alignment(y, y_prev, k) if cfg.kmeans_init == "restart" else np.arange(k)
    return z, a, perm[y].astype(np.int32), perm

  t_stage = time.perf_counter()
  for epoch in run.epochs("train", start, cfg.epochs):
    k_assign, k_batch, k_steps = jax.random.split(epoch_key(k_train, epoch), 3)
    zeta = pacing(epoch, zeta0=cfg.zeta0, zeta_max=cfg.zeta_max, t_grow=cfg.t_grow,
                  pace=cfg.pace)                                              # Eq. 5-6
    ta = time.perf_counter()
    z, a, y, perm = clustering_pass(state.params, k_assign, zeta)
    change = float(np.mean(y != y_prev))
    v = np.asarray(a["v"])
    if n_assign == 0:
      assign_first_s = time.perf_counter() - ta  # includes compiling the assignment pass
    else:
      assign_s += time.perf_counter() - ta
    n_assign += 1
    metrics = {"label_change": change, "zeta": float(zeta), "n_curriculum": int(v.sum()),
               "dc": float(a["dc"]), "n_core": int(np.asarray(a["core"]).sum())}
    if epoch > 0 and change < cfg.tol:                                        # lines 11-13
      stopped_at = epoch
      run.log("train", epoch, {**metrics, "stopped": 1}, labels=y)
      break
    bs = _epoch_batches(k_batch, epoch, np.flatnonzero(v), cfg.batch_size, n)  # Alg. 1, Eq. 8
    state, m, _ = _run_steps(steps["train_step"], tr_compiled, tr_timer, state, bs, x_all,
                             a["p"], a["anchors"], a["anchor_labels"], a["anchor_w"],
                             key=k_steps)                                     # lines 15-18
    y_prev = y
    epochs_run += 1
    run.log("train", epoch, {**m, **metrics}, labels=y)
    run.save("train", epoch, {"params": state.params, "opt_state": state.opt_state,
                              "y_prev": jnp.asarray(y_prev)})
  train_wall = (time.perf_counter() - t_stage - tr_timer.compile_this_fit
                - max(assign_first_s - assign_s / max(n_assign - 1, 1), 0.0))
  rec_stage = [r["loss_rec"] for r in run.history if r["stage"] == "train" and "loss_rec" in r]
  if last_rec and rec_stage and last_rec[0] > 0:
    # Label-free: the clustering stage should refine the autoencoder, not undo it.
    jump = max(rec_stage) / last_rec[0]
    info["cluster_rec_over_pretrain"] = round(float(jump), 4)
    if jump > 2.0:
      warnings.warn(f"IDCL's clustering stage raised L_rec to {jump:.1f}x its value at the end "
                    "of pre-training: the autoencoder was disrupted (a smaller lr or a longer "
                    "warmup may help)", RuntimeWarning, stacklevel=2)

  # ---- the final model's assignment -------------------------------------------------------
  if cfg.epochs > 0 and stopped_at is None:
    # After the last training epoch: one more pass with the final parameters (ζ unused).
    k_assign = jax.random.split(epoch_key(k_train, cfg.epochs), 3)[0]
    z, a, y, perm = clustering_pass(state.params, k_assign, jnp.float32(1.0))
  labels = y

  def per_epoch(total, count):
    return round(total / count, 4) if count else None

  info.update({
      "epochs": epochs_run,
      "epochs_per_stage": {"pretrain": pre_epochs, "train": epochs_run},
      "stopped_at_epoch": stopped_at,
      # Stage wall time per epoch without compilation (embed + assign + steps + logging).
      "time_per_epoch_s": {"pretrain": per_epoch(pre_wall, pre_epochs),
                           "train": per_epoch(train_wall, n_assign)},
      "assign_s_per_epoch": per_epoch(assign_s, n_assign - 1),
      "assign_first_epoch_s": round(assign_first_s, 3),
      "compile_s": {"pretrain_step": round(pre_timer.compile_s, 3),
                    "train_step": round(tr_timer.compile_s, 3)},
      "steps_per_s": {"pretrain": per_epoch(pre_timer.steps, pre_timer.step_s),
                      "train": per_epoch(tr_timer.steps, tr_timer.step_s)},
      "steps": {"pretrain": pre_timer.steps, "train": tr_timer.steps},
  })
  # The same timings as flat scalars (what the benchmark table collects).
  for stage in ("pretrain", "train"):
    info[f"{stage}_time_per_epoch_s"] = info["time_per_epoch_s"][stage]
    info[f"{stage}_steps_per_s"] = info["steps_per_s"][stage]
    info[f"{stage}_step_compile_s"] = info["compile_s"][f"{stage}_step"]
  fstate = {"params": jax.tree.map(np.asarray, state.params)}
  if a is not None:
    keep = np.asarray(a["anchor_w"]) > 0
    fstate.update(anchors=np.asarray(a["anchors"])[keep],
                  anchor_labels=perm[np.asarray(a["anchor_labels"])[keep]])  # labels_' ids
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
