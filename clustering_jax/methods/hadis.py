"""HaDis: hardness-aware deep image clustering by self-distillation (paper 004, §III).

A BYOL-style student–teacher pair on two augmented views of each image (Fig. 1):
  - student f_s = backbone + projector, then the predictor g; both trained by SGD;
  - teacher f_t = an EMA copy of backbone + projector (Eq. 12), a separate parameter tree
    (and BatchNorm state) in `state.extra`, never touched by gradients.
Per step, for the views (a, b) = (1, 2) and (2, 1), averaged (Eq. 13, symmetric as the code):
  z = f_s(x_a) + εδ (Eq. 2), p = g(z), t = f_t(x_b);
  L_DSA = ‖p̄ − t̄‖² (Eq. 3); L_HSD over the batch's hardest positive/negative (Eq. 4–8);
  L_PCL on batch prototypes of f_s(x_a) and f_t(x_b) under k-means pseudo-labels (Eq. 9–11);
  L = L_DSA + L_HSD + λ·L_PCL (Eq. 13), PCL (and ε) switched on after the warm-up.
Pseudo-labels: cosine k-means on the teacher's ℓ2-normalized projector output of every
(unaugmented) image, from the random teacher before training and after every epoch; the
final labels are those of the final teacher (Algorithm 1, "testing").

One stage, "train", on `train.engine`; the per-batch objective (Eq. 2–13) is in
`methods/hadis_loss.py`. Defaults and departures: docs/methods/hadis.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clustering_jax.data.augment import (DIGITS_PRESET, AugmentPreset, eval_view, preset_for,
                                         two_views)
from clustering_jax.methods.base import FitResult, Views, in_range, one_of
from clustering_jax.methods.hadis_loss import make_losses, teacher_variables
from clustering_jax.nets.resnet import count_params, make_encoder, make_predictor
from clustering_jax.ops import selfsup as ss
from clustering_jax.ops.kmeans import assign, kmeans
from clustering_jax.ops.partitions import align_partitions
from clustering_jax.train import engine
from clustering_jax.train.batching import epoch_key, epoch_permutation
from clustering_jax.train.run import Run

BACKBONES = ("auto", "resnet18", "cnn")
AUGMENTS = ("auto", "rgb", "digits")


@dataclasses.dataclass(frozen=True)
class Config:
  """HaDis settings: the paper's (§IV-A) and its code's unless docs/methods/hadis.md says not.

  backbone: "resnet18" (the paper's CIFAR ResNet-18), "cnn" (`nets.resnet.SmallCNN`) or "auto"
    (resnet18 for 3-channel images, the small CNN otherwise). widths: the backbone's stage
    widths; () = its default. proj_hidden, proj_dim, pred_hidden: projector 512→4096→256 and
    predictor 256→4096→256 (W:93–118).
  augment: "auto" (`data.augment.preset_for` the image shape), "rgb" (the paper's SimCLR
    transform without blur) or "digits" (no flip, crop 0.5–1, brightness/contrast only);
    rotate_shift adds a random rotation (±10°) and shift (±10 %) first.
  epochs, batch_size: 1000 and 256 (§IV-A; 128 for STL-10 and the ImageNet subsets).
  lr: base rate, scaled to lr·B/256; linear warm-up from 0 over warmup_epochs, then cosine
    to 0 at the last step. warmup_epochs None: 0.05·epochs rounded half up (the paper's 50
    of 1000).
  momentum, weight_decay: SGD momentum 0.9, decay 5e-4 on every parameter (the code).
  predictor_lr_mult: the predictor's rate ×10 (§IV-A).
  ema, ema_schedule: α of Eq. 12 (0.996); "constant" or "cosine" (BYOL's ramp to 1, the
    code's CIFAR-20 setting).
  lam, eps, tau_h, tau_p: λ of Eq. 13, ε of Eq. 2, τ_h of Eq. 7, τ_p of Eq. 9 (§IV-A).
  split: HSD positive/negative rule, "paper" (Eq. 4) or "code" (W:38). hsd_missing: an anchor
    with an empty positive or negative set, "mask" (left out) or "zero" (the code's fill).
    exclude_self: drop the anchor's own other view from its candidates (the code keeps it).
  negatives: PCL negatives u_kˢ·u_jᵗ ("teacher", Eq. 9) or u_kˢ·u_jˢ ("student", the code).
  use_hsd, use_pcl: the ablations of Table III; eps = 0 is Table IV's first row.
  gate_eps: ε is 0 during the warm-up, as PCL (the code, B:92–99).
  kmeans_n_init: restarts of every pseudo-label k-means (the code: 10, max 300 iterations).
  embed_block: rows per block when embedding all images (memory only).
  """

  backbone: str = "auto"
  widths: tuple = ()
  proj_hidden: int = 4096
  proj_dim: int = 256
  pred_hidden: int = 4096
  augment: str = "auto"
  rotate_shift: bool = False
  epochs: int = 1000
  batch_size: int = 256
  lr: float = 0.05
  warmup_epochs: Optional[int] = None
  momentum: float = 0.9
  weight_decay: float = 5e-4
  predictor_lr_mult: float = 10.0
  ema: float = 0.996
  ema_schedule: str = "constant"
  lam: float = 0.1
  eps: float = 0.001
  tau_h: float = 0.5
  tau_p: float = 0.5
  split: str = "paper"
  hsd_missing: str = "mask"
  exclude_self: bool = False
  negatives: str = "teacher"
  use_hsd: bool = True
  use_pcl: bool = True
  gate_eps: bool = True
  kmeans_n_init: int = 10
  embed_block: int = 1024

  def validate(self):
    one_of(self, "backbone", BACKBONES)
    one_of(self, "augment", AUGMENTS)
    one_of(self, "ema_schedule", ("constant", "cosine"))
    one_of(self, "split", ss.SPLITS)
    one_of(self, "hsd_missing", ss.MISSING)
    one_of(self, "negatives", ss.NEGATIVES)
    for name in ("proj_hidden", "proj_dim", "pred_hidden", "batch_size", "kmeans_n_init",
                 "embed_block"):
      in_range(self, name, 1)
    for name in ("epochs", "weight_decay", "lam", "eps"):
      in_range(self, name, 0)
    for name in ("lr", "tau_h", "tau_p", "predictor_lr_mult"):
      in_range(self, name, 0.0, lo_open=True)
    in_range(self, "momentum", 0.0, 1.0, hi_open=True)
    in_range(self, "ema", 0.0, 1.0)
    if self.warmup_epochs is not None:
      in_range(self, "warmup_epochs", 0)
    if any(not isinstance(w, (int, np.integer)) or w < 1 for w in self.widths):
      raise ValueError(f"widths must be positive integers, got {self.widths!r}")

  @property
  def warmup(self) -> int:
    """Warm-up epochs: warmup_epochs, or 0.05·epochs rounded half up when it is None."""
    if self.warmup_epochs is None:
      return int(math.floor(0.05 * self.epochs + 0.5))
    return int(self.warmup_epochs)


# -- networks and augmentation -----------------------------------------------------------
def backbone_kind(cfg: Config, image_shape) -> str:
  """"auto": the paper's ResNet-18 for 3-channel images, the small CNN for grayscale ones."""
  if cfg.backbone != "auto":
    return cfg.backbone
  return "resnet18" if int(image_shape[-1]) == 3 else "cnn"


def make_nets(cfg: Config, image_shape):
  """(encoder f = backbone + projector, predictor g) for images of shape (H, W, C)."""
  enc = make_encoder(backbone_kind(cfg, image_shape), proj_hidden=cfg.proj_hidden,
                     proj_dim=cfg.proj_dim, widths=tuple(cfg.widths) or None)
  pred = make_predictor(hidden=cfg.pred_hidden, dim=cfg.proj_dim)
  return enc, pred


def augment_preset(cfg: Config, image_shape) -> AugmentPreset:
  """The augmentation pipeline of the two views (§IV-A: SimCLR's without blur)."""
  c = int(image_shape[-1])
  if cfg.augment == "rgb" and c != 3:
    raise ValueError(f"augment='rgb' needs 3-channel images, got shape {tuple(image_shape)}")
  p = DIGITS_PRESET if cfg.augment == "digits" else preset_for(image_shape)
  if cfg.rotate_shift:
    p = dataclasses.replace(p, rotate_degrees=10.0, rotate_shift=0.1)
  return p


def init_variables(enc, pred, cfg: Config, key: jax.Array, image_shape):
  """(params, stats): trained params {"student", "predictor"} and their BatchNorm state."""
  k1, k2 = jax.random.split(key)
  ve = jax.jit(lambda k, x: enc.init(k, x, train=False))(k1, jnp.zeros((2, *image_shape)))
  vp = jax.jit(lambda k, z: pred.init(k, z, train=False))(k2, jnp.zeros((2, cfg.proj_dim)))
  return ({"student": ve["params"], "predictor": vp["params"]},
          {"student": ve["batch_stats"], "predictor": vp["batch_stats"]})


def make_teacher_embed(enc, preset: AugmentPreset, block: int):
  """jitted embed(variables, x (n, H, W, C)) -> (n, proj_dim): the ℓ2-normalized projector
  output in eval mode (running BN statistics) of the unaugmented images (the test transform)."""
  def fn(variables, rows):
    return ss.l2_normalize(enc.apply(variables, eval_view(rows, preset), train=False))
  return engine.make_embed(fn, block=block)


# -- optimizer and schedules ---------------------------------------------------------------
def lr_schedule(peak: float, warmup_steps: int, total_steps: int):
  """Linear warm-up from 0 to `peak` over warmup_steps, then cosine decay to 0 at total_steps
  (the code's warm-up + cosine, T:454–466, with the cosine ending at 0)."""
  total = max(int(total_steps), int(warmup_steps) + 1)
  if warmup_steps <= 0:
    return optax.cosine_decay_schedule(peak, total)
  return optax.warmup_cosine_decay_schedule(0.0, peak, int(warmup_steps), total, end_value=0.0)


def make_optimizer(cfg: Config, schedule):
  """SGD with momentum and L2 weight decay added to the gradient of every parameter (PyTorch's
  SGD(weight_decay=...), the code), the predictor's rate ×predictor_lr_mult (§IV-A)."""
  def sgd(mult):
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                       optax.sgd(lambda c: mult * schedule(c), momentum=cfg.momentum))
  labels = lambda p: {g: jax.tree.map(lambda _: g, p[g]) for g in p}
  return optax.multi_transform({"student": sgd(1.0), "predictor": sgd(cfg.predictor_lr_mult)},
                               labels)


def ema_momentum(cfg: Config, step, total_steps: int):
  """α of Eq. 12 at optimizer step `step` (0-based): constant, or BYOL's cosine ramp."""
  if cfg.ema_schedule == "cosine":
    return ss.cosine_momentum(step, total_steps, base=cfg.ema)
  return jnp.asarray(cfg.ema, jnp.float32)


# -- the step ---------------------------------------------------------------------------------
def make_step(enc, pred, cfg: Config, preset: AugmentPreset, n_clusters: int,
              total_steps: int):
  """The engine step: step(state, consts, idx (b,), w (b,), key) -> (state, metrics).

  consts: {"x": all images (n, H, W, C), "eps": ε now, "pcl_on": 1.0 after the warm-up}.
  state.params: {"student", "predictor"}; state.extra: {"teacher", "stats" (BN state of
  student, predictor and teacher), "labels" (n,) pseudo-labels, "centers" (K, d)}.
  """
  teacher, student_losses, _ = make_losses(enc, pred, cfg, n_clusters)
  grad_fn = jax.value_and_grad(student_losses, has_aux=True)

  def step(state, consts, idx, w, key):
    k_aug, k_noise = jax.random.split(key)
    views = jnp.stack(two_views(k_aug, consts["x"][idx], preset))           # aug(x) twice
    labels = state.extra["labels"][idx]
    t, t_stats = teacher(state.extra, views)                 # no gradient through the teacher
    (_, (metrics, stats)), g = grad_fn(state.params, state.extra, views, t, labels, w, k_noise,
                                       consts["eps"], consts["pcl_on"])
    alpha = ema_momentum(cfg, state.step, total_steps)
    state = state.apply_gradients(grads=g)
    teacher_p = ss.ema_update(state.extra["teacher"], state.params["student"], alpha)  # Eq. 12
    state = state.replace(extra={**state.extra, "teacher": teacher_p,
                                 "stats": {**stats, "teacher": t_stats}})
    return state, {**metrics, "ema": alpha}

  return step


# -- fit --------------------------------------------------------------------------------------
def pseudo_labels(key: jax.Array, z: jax.Array, n_clusters: int, cfg: Config):
  """Cosine k-means++ (kmeans_n_init restarts, ≤ 300 Lloyd steps) on teacher features."""
  return kmeans(key, z, n_clusters, n_init=cfg.kmeans_n_init, metric="cosine")


def images_of(data: Views) -> np.ndarray:
  if not data.is_image or data.n_views != 1:
    raise ValueError("HaDis needs one view of images (n, H, W, C)")
  x = np.asarray(data.views[0], np.float32)
  if x.ndim != 4:
    raise ValueError(f"HaDis needs images (n, H, W, C), got shape {x.shape}")
  return x


def fit(data: Views, n_clusters: int, config: Config, *, key: jax.Array,
        run: Run) -> FitResult:
  """Trains HaDis on the images of `data`; labels: k-means on the final teacher's features."""
  config.validate()
  cfg = dataclasses.replace(config, widths=tuple(int(w) for w in config.widths))
  x_np = images_of(data)
  n, shape, k = x_np.shape[0], x_np.shape[1:], int(n_clusters)
  enc, pred = make_nets(cfg, shape)
  preset = augment_preset(cfg, shape)
  b = max(min(cfg.batch_size, n), 1)             # engine.epoch_batches: B and full batches
  steps_per_epoch = max(n // b, 1)
  total_steps, warm = cfg.epochs * steps_per_epoch, cfg.warmup
  peak = cfg.lr * b / 256.0                      # §IV-A: 0.05·B/256
  schedule = lr_schedule(peak, warm * steps_per_epoch, total_steps)
  tx = make_optimizer(cfg, schedule)
  k_init, k_order, k_train, k_km = jax.random.split(key, 4)
  params, stats = init_variables(enc, pred, cfg, k_init, shape)
  x = jnp.asarray(x_np)
  embed = make_teacher_embed(enc, preset, cfg.embed_block)

  # The teacher starts as a copy of the student (own buffers: the student's are donated).
  copy = lambda t: jax.tree.map(jnp.copy, t)
  extra = {"teacher": copy(params["student"]),
           "stats": {**stats, "teacher": copy(stats["student"])}}
  # Pseudo-labels of epoch 0 and init_labels: k-means on the random teacher (T:382).
  z0 = embed(teacher_variables(extra), x)
  km0 = pseudo_labels(jax.random.fold_in(k_km, 0), z0, k, cfg)
  init_labels = np.asarray(km0.labels)
  run.log("init", 0, {"inertia": km0.inertia, "n_iter": km0.n_iter}, labels=init_labels)
  extra.update(labels=km0.labels.astype(jnp.int32), centers=km0.centers)

  scan = engine.ScannedEpoch(make_step(enc, pred, cfg, preset, k, total_steps))

  def epoch_fn(epoch, state):
    on = epoch >= warm                           # PCL (and ε) after the warm-up (§III-C)
    eps, pcl_on = (cfg.eps if (on or not cfg.gate_eps) else 0.0), float(on and cfg.use_pcl)
    consts = {"x": x, "eps": jnp.float32(eps), "pcl_on": jnp.float32(pcl_on)}
    idx, w = engine.epoch_batches(epoch_permutation(k_order, epoch, n), n, b)
    state, m = scan(state, consts, idx, w, epoch_key(k_train, epoch))
    # Pseudo-labels for the next epoch, from this epoch's teacher (T:398–406); ids aligned to
    # the previous ones so the change rate counts moved samples, not renamed clusters.
    z = embed(teacher_variables(state.extra), x)
    km = pseudo_labels(jax.random.fold_in(k_km, epoch + 1), z, k, cfg)
    old = np.asarray(state.extra["labels"])
    perm = align_partitions(np.asarray(km.labels), old, k)
    labels = perm[np.asarray(km.labels)].astype(np.int32)
    centers = km.centers[jnp.asarray(np.argsort(perm))]      # row perm[j] <- center j
    step = int(state.step)
    metrics = {**m, "lr": float(schedule(max(step - 1, 0))), "pcl_on": pcl_on, "eps": eps,
               "label_change": float(np.mean(labels != old)), "kmeans_inertia": float(km.inertia)}
    state = state.replace(extra={**state.extra, "labels": jnp.asarray(labels),
                                 "centers": centers})
    return engine.Epoch(state, metrics, labels=labels)

  state, info = engine.run_stage(run, "train", engine.new_state(params, tx, extra=extra),
                                 cfg.epochs, epoch_fn, scans=(scan,))

  # Testing (Algorithm 1): the final teacher's features and their k-means labels.
  teacher = jax.device_get(teacher_variables(state.extra))
  z = embed(teacher, x)
  out = {**engine.timing_info({"train": info}),
         "backbone": backbone_kind(cfg, shape), "augment": preset.name,
         "n_params": count_params(state.params), "warmup_epochs": warm,
         "steps_per_epoch": steps_per_epoch, "peak_lr": peak}
  return FitResult(labels=np.asarray(state.extra["labels"]).astype(np.int64),
                   embedding=np.asarray(z), init_labels=init_labels.astype(np.int64),
                   init_embedding=np.asarray(z0),
                   state={"teacher": teacher, "centers": np.asarray(state.extra["centers"])},
                   info=out)


# -- new data -------------------------------------------------------------------------------
def transform(cfg: Config, state: dict, x: np.ndarray) -> np.ndarray:
  """ℓ2-normalized teacher features (n, proj_dim) of images x (n, H, W, C)."""
  x = np.asarray(x, np.float32)
  enc, _ = make_nets(cfg, x.shape[1:])
  embed = make_teacher_embed(enc, augment_preset(cfg, x.shape[1:]), cfg.embed_block)
  return np.asarray(embed(state["teacher"], jnp.asarray(x)))


def predict(cfg: Config, state: dict, x: np.ndarray) -> np.ndarray:
  """Nearest final k-means center (cosine) of each image's teacher feature, (n,)."""
  z = transform(cfg, state, x)
  labels, _ = assign(jnp.asarray(z), jnp.asarray(state["centers"]), metric="cosine")
  return np.asarray(labels).astype(np.int64)
