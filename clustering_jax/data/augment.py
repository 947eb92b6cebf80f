"""Image augmentations as pure, jittable JAX functions with explicit keys."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np


def random_rotate_shift(key: jax.Array, x: jax.Array, *, max_degrees: float = 10.0,
                        max_shift: float = 0.1) -> jax.Array:
  """Each image rotated by U(-max_degrees, max_degrees) about its centre and shifted by
  U(-max_shift·H, max_shift·H) pixels per axis (bilinear; neighbours outside the image
  count as 0, scipy's mode="grid-constant").
  IDCL App. F; the same pair DEC-DA/ASPC-DA use for digits. x: (b, H, W, C) -> (b, H, W, C)."""
  b, h, w, _ = x.shape
  k1, k2 = jax.random.split(key)
  theta = jnp.deg2rad(jax.random.uniform(k1, (b,), minval=-max_degrees, maxval=max_degrees))
  shift = jax.random.uniform(k2, (b, 2), minval=-1.0, maxval=1.0) * max_shift * jnp.array([h, w])
  rr, cc = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0

  def one(img, th, sh):
    # Inverse map: output pixel -> source location.
    yy, xx = rr - cy - sh[0], cc - cx - sh[1]
    sy = jnp.cos(th) * yy - jnp.sin(th) * xx + cy
    sx = jnp.sin(th) * yy + jnp.cos(th) * xx + cx
    warp = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [sy, sx], order=1, mode="constant")
    return jax.vmap(warp, in_axes=2, out_axes=2)(img)

  return jax.vmap(one)(x, theta, shift)


def random_rotate_shift_flat(key: jax.Array, x: jax.Array, image_shape: tuple,
                             **kwargs) -> jax.Array:
  """random_rotate_shift on flattened images: x (b, H·W·C) -> (b, H·W·C)."""
  img = jnp.reshape(x, (x.shape[0],) + tuple(image_shape))
  return jnp.reshape(random_rotate_shift(key, img, **kwargs), x.shape)


# ==================================================================================================
# SimCLR-style augmentations for HaDis (paper §IV-A; docs/methods/hadis-decisions.md).
#
# Every op below is pure and jittable and draws with one key per image: a batch op splits its key
# into b keys (`jax.random.split(key, b)`), draws each image's parameters from its own key, and
# applies them with `vmap`. An image's draws are one call `uniform(key_i, (n,))` mapped to the
# parameters (fewer random calls compile much faster on a CPU). Each op `random_X(key, x, ...)`
# equals `apply_X(x, X_params(key, b, ...))`, so a test can take the drawn parameters and redo
# the op in NumPy. Images are NHWC float32 in [0, 1]; every op except `normalize` keeps them in
# [0, 1].
# ==================================================================================================

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, PIL's convert("L")
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR10_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # the HaDis code's values


def _check_images(x: jax.Array, name: str):
  if x.ndim != 4:
    raise ValueError(f"{name}: images must be (b, H, W, C), got shape {x.shape}")


# -- random resized crop --------------------------------------------------------------------------
N_CROP = 4


def _crop_from_uniform(u, h: int, w: int, scale, ratio):
  """One image's box (y0, x0, ch, cw) in pixels, floats, from 4 uniforms: area fraction
  s ~ U(scale), aspect ratio r = cw/ch log-uniform in ratio, ch = sqrt(s·H·W/r),
  cw = sqrt(s·H·W·r), each clipped to [1, side], top-left corner uniform over the positions
  that keep the box inside the image."""
  s = scale[0] + u[0] * (scale[1] - scale[0])
  lo, hi = float(np.log(ratio[0])), float(np.log(ratio[1]))
  r = jnp.exp(lo + u[1] * (hi - lo))
  area = s * h * w
  ch = jnp.clip(jnp.sqrt(area / r), 1.0, float(h))
  cw = jnp.clip(jnp.sqrt(area * r), 1.0, float(w))
  return jnp.stack([u[2] * (h - ch), u[3] * (w - cw), ch, cw])


def _per_image_uniforms(key: jax.Array, b: int, n: int) -> jax.Array:
  """(b, n) uniforms, row i from image i's own key."""
  return jax.vmap(lambda k: jax.random.uniform(k, (n,)))(jax.random.split(key, b))


def crop_params(key: jax.Array, b: int, h: int, w: int, *, scale=(0.08, 1.0),
                ratio=(3 / 4, 4 / 3)) -> jax.Array:
  """The boxes random_resized_crop draws: (b, 4) float32 rows (y0, x0, ch, cw) in pixels."""
  u = _per_image_uniforms(key, b, N_CROP)
  return jax.vmap(lambda v: _crop_from_uniform(v, h, w, scale, ratio))(u)


def _interp_matrix(start, length, n_in: int, n_out: int):
  """(n_out, n_in) bilinear weights sampling [start, start + length) at n_out pixel centres
  (align_corners=False); positions outside [0, n_in - 1] take the edge pixel."""
  pos = start + (jnp.arange(n_out, dtype=jnp.float32) + 0.5) * (length / n_out) - 0.5
  pos = jnp.clip(pos, 0.0, n_in - 1.0)
  i0 = jnp.floor(pos)
  f = (pos - i0)[:, None]
  i0 = i0.astype(jnp.int32)
  i1 = jnp.minimum(i0 + 1, n_in - 1)
  return (1.0 - f) * jax.nn.one_hot(i0, n_in) + f * jax.nn.one_hot(i1, n_in)


def _resized_crop_one(img, box, out_hw):
  h, w, _ = img.shape
  wy = _interp_matrix(box[0], box[2], h, out_hw[0])
  wx = _interp_matrix(box[1], box[3], w, out_hw[1])
  # Separable bilinear resampling; HIGHEST so GPUs do not round to TF32.
  return jnp.einsum("oh,hwc,pw->opc", wy, img, wx, precision=jax.lax.Precision.HIGHEST)


def apply_resized_crop(x: jax.Array, boxes: jax.Array, size: Optional[tuple] = None) -> jax.Array:
  """Crops each image to its box (b, 4) = (y0, x0, ch, cw) and resizes it bilinearly to size
  (default: the input's (H, W)). x: (b, H, W, C) -> (b, *size, C)."""
  _check_images(x, "apply_resized_crop")
  out_hw = tuple(size) if size is not None else x.shape[1:3]
  return jax.vmap(lambda im, bx: _resized_crop_one(im, bx, out_hw))(x, boxes)


def random_resized_crop(key: jax.Array, x: jax.Array, *, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3), size: Optional[tuple] = None) -> jax.Array:
  """RandomResizedCrop without torchvision's rejection loop: one draw of area fraction and
  log-uniform aspect ratio per image, the box clipped to the image (torchvision retries 10
  times and falls back to a centre crop instead). Boxes are sub-pixel; the crop is resampled
  bilinearly at the box's pixel centres. x: (b, H, W, C) -> (b, *size, C)."""
  _check_images(x, "random_resized_crop")
  boxes = crop_params(key, x.shape[0], x.shape[1], x.shape[2], scale=scale, ratio=ratio)
  return apply_resized_crop(x, boxes, size)


# -- horizontal flip ------------------------------------------------------------------------------
def flip_params(key: jax.Array, b: int, *, p: float = 0.5) -> jax.Array:
  """(b,) bool: which images random_flip mirrors."""
  return _per_image_uniforms(key, b, 1)[:, 0] < p


def apply_flip(x: jax.Array, flip: jax.Array) -> jax.Array:
  """Mirrors the images with flip[i] left-right. x: (b, H, W, C), flip: (b,) bool."""
  return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


def random_flip(key: jax.Array, x: jax.Array, *, p: float = 0.5) -> jax.Array:
  """RandomHorizontalFlip(p). x: (b, H, W, C) -> same shape."""
  _check_images(x, "random_flip")
  return apply_flip(x, flip_params(key, x.shape[0], p=p))


# -- colour ops on one image (H, W, C), torchvision's functional semantics ------------------------
def rgb_to_grayscale(img: jax.Array) -> jax.Array:
  """(..., H, W, 3) -> (..., H, W, 1) luma; other channel counts: the channel mean."""
  if img.shape[-1] == 3:
    return jnp.tensordot(img, jnp.asarray(GRAY_WEIGHTS, img.dtype), axes=([-1], [0]))[..., None]
  return jnp.mean(img, axis=-1, keepdims=True)


def _blend(a, b, ratio):
  return jnp.clip(ratio * a + (1.0 - ratio) * b, 0.0, 1.0)


def adjust_brightness(img: jax.Array, factor) -> jax.Array:
  """x·factor, clipped to [0, 1]."""
  return _blend(img, jnp.zeros_like(img), factor)


def adjust_contrast(img: jax.Array, factor) -> jax.Array:
  """Blend with the mean grey level of the image (its mean for one channel), clipped."""
  return _blend(img, jnp.mean(rgb_to_grayscale(img)), factor)


def adjust_saturation(img: jax.Array, factor) -> jax.Array:
  """Blend with the image's grayscale version, clipped. Identity unless C = 3."""
  if img.shape[-1] != 3:
    return img
  return _blend(img, rgb_to_grayscale(img), factor)


def _rgb_to_hsv(img):
  r, g, b = img[..., 0], img[..., 1], img[..., 2]
  maxc = jnp.max(img, axis=-1)
  minc = jnp.min(img, axis=-1)
  eqc = maxc == minc
  cr = maxc - minc
  ones = jnp.ones_like(maxc)
  s = cr / jnp.where(eqc, ones, maxc)
  crd = jnp.where(eqc, ones, cr)
  rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
  hr = jnp.where(maxc == r, bc - gc, 0.0)
  hg = jnp.where((maxc == g) & (maxc != r), 2.0 + rc - bc, 0.0)
  hb = jnp.where((maxc != g) & (maxc != r), 4.0 + gc - rc, 0.0)
  h = jnp.mod((hr + hg + hb) / 6.0 + 1.0, 1.0)
  return h, s, maxc


def _hsv_to_rgb(h, s, v):
  # The piecewise-linear form of torchvision's sector table: channel n in (5, 3, 1) is
  # v - v·s·clip(min(k, 4 - k), 0, 1) with k = (n + 6h) mod 6. Same values, fewer ops to compile.
  def chan(n):
    k = jnp.mod(n + 6.0 * h, 6.0)
    return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
  return jnp.stack([chan(5.0), chan(3.0), chan(1.0)], -1)


def adjust_hue(img: jax.Array, factor) -> jax.Array:
  """Rotates the hue by factor (a fraction of the colour circle, in [-0.5, 0.5]) in HSV.
  Identity unless C = 3."""
  if img.shape[-1] != 3:
    return img
  h, s, v = _rgb_to_hsv(img)
  return jnp.clip(_hsv_to_rgb(jnp.mod(h + factor, 1.0), s, v), 0.0, 1.0)


# -- colour jitter --------------------------------------------------------------------------------
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


N_JITTER = 9


def _jitter_from_uniform(u, brightness, contrast, saturation, hue, p):
  """One image's jitter draws from 9 uniforms: apply, 4 factors, 4 sort keys of the order."""
  span = lambda v, s: max(0.0, 1.0 - s) + v * ((1.0 + s) - max(0.0, 1.0 - s))
  factors = jnp.stack([span(u[1], brightness), span(u[2], contrast), span(u[3], saturation),
                       -hue + u[4] * 2.0 * hue])
  order = jnp.argsort(u[5:9]).astype(jnp.int32)
  return {"apply": u[0] < p, "factors": factors, "order": order}


def jitter_params(key: jax.Array, b: int, *, brightness=0.4, contrast=0.4, saturation=0.4,
                  hue=0.1, p=0.8) -> dict:
  """What color_jitter draws per image: apply (b,) bool (RandomApply with p); factors (b, 4)
  for (brightness, contrast, saturation, hue): the first three ~ U(max(0, 1-s), 1+s), hue ~
  U(-hue, hue); order (b, 4) int32, a random permutation of the four ops (JITTER_OPS)."""
  u = _per_image_uniforms(key, b, N_JITTER)
  return jax.vmap(lambda v: _jitter_from_uniform(v, brightness, contrast, saturation, hue, p))(u)


def _jitter_one(img, prm, active):
  """The four ops of one image in its drawn order.

  Under vmap a per-image choice of op evaluates every candidate, so the ops are arranged to
  keep that cheap: brightness, contrast and saturation are one blend clip(f·x + (1 − f)·target)
  whose target (0, the mean grey level, the grey image) is selected per round, and the costly
  hue rotation runs once, between the blends drawn before it and those drawn after it. An op
  whose strength is 0, or that needs colour on a 1-channel image, is the identity (torchvision
  skips it), so it adds no rounding.
  """
  rgb = img.shape[-1] == 3
  on = jnp.asarray([active[0], active[1], active[2] and rgb, False])  # blend ops (hue apart)
  order, factors = prm["order"], prm["factors"]
  hue_on = active[3] and rgb
  pos_h = jnp.argmax(order == 3) if hue_on else 4  # the round at which hue runs

  def blend_round(im, r, take):
    op = order[r]
    g = rgb_to_grayscale(im)
    target = jnp.where(op == 0, 0.0, jnp.where(op == 1, jnp.mean(g), g))
    f = factors[op]
    return jnp.where(take & on[op], jnp.clip(f * im + (1.0 - f) * target, 0.0, 1.0), im)

  out = img
  for r in range(3 if hue_on else 4):  # the blends drawn before hue
    out = blend_round(out, r, r < pos_h)
  if hue_on:
    out = adjust_hue(out, factors[3])
    for r in range(1, 4):  # the blends drawn after hue
      out = blend_round(out, r, r > pos_h)
  return jnp.where(prm["apply"], out, img)


def apply_jitter(x: jax.Array, prm: dict, *, active=(True, True, True, True)) -> jax.Array:
  """Applies drawn jitter parameters (see jitter_params): for each image with apply set, the
  four ops in its order, each with its factor, clipping to [0, 1] after each. active: which
  ops are on (a strength of 0 switches an op off). One-channel images: brightness and contrast
  only. x: (b, H, W, C) -> same shape."""
  _check_images(x, "apply_jitter")
  return jax.vmap(lambda im, pr: _jitter_one(im, pr, tuple(active)))(x, prm)


def color_jitter(key: jax.Array, x: jax.Array, *, brightness=0.4, contrast=0.4, saturation=0.4,
                 hue=0.1, p=0.8) -> jax.Array:
  """RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p): a random order per
  image (torchvision's randperm), each op with its own factor. x: (b, H, W, C) -> same shape."""
  _check_images(x, "color_jitter")
  prm = jitter_params(key, x.shape[0], brightness=brightness, contrast=contrast,
                      saturation=saturation, hue=hue, p=p)
  return apply_jitter(x, prm, active=tuple(s > 0 for s in (brightness, contrast, saturation, hue)))


# -- random grayscale -----------------------------------------------------------------------------
def grayscale_params(key: jax.Array, b: int, *, p: float = 0.2) -> jax.Array:
  """(b,) bool: which images random_grayscale converts."""
  return _per_image_uniforms(key, b, 1)[:, 0] < p


def apply_grayscale(x: jax.Array, gray: jax.Array) -> jax.Array:
  """Images with gray[i] replaced by their luma repeated over the 3 channels. Identity unless
  C = 3. x: (b, H, W, C), gray: (b,) bool."""
  if x.shape[-1] != 3:
    return x
  g = jnp.broadcast_to(rgb_to_grayscale(x), x.shape)
  return jnp.where(gray[:, None, None, None], g, x)


def random_grayscale(key: jax.Array, x: jax.Array, *, p: float = 0.2) -> jax.Array:
  """RandomGrayscale(p). x: (b, H, W, C) -> same shape."""
  _check_images(x, "random_grayscale")
  return apply_grayscale(x, grayscale_params(key, x.shape[0], p=p))


# -- Gaussian blur --------------------------------------------------------------------------------
def default_blur_kernel(side: int) -> int:
  """An odd kernel of about 10 % of the image side (SimCLR: 23 px at 224), at least 3 and
  small enough for reflect padding (radius < side)."""
  k = max(3, int(round(0.1 * side)) | 1)
  while k // 2 >= side and k > 1:
    k -= 2
  return k


def blur_params(key: jax.Array, b: int, *, sigma=(0.1, 2.0), p: float = 0.5) -> dict:
  """What gaussian_blur draws per image: apply (b,) bool and sigma (b,) ~ U(sigma)."""
  return _blur_from_uniform(_per_image_uniforms(key, b, 2), sigma, p)


def _blur_from_uniform(u, sigma, p):
  return {"apply": u[..., 0] < p, "sigma": sigma[0] + u[..., 1] * (sigma[1] - sigma[0])}


def _blur_matrix(sigma, n: int, ksize: int):
  """(n, n) matrix of a 1-D Gaussian blur (torchvision's kernel: taps at -(k-1)/2..(k-1)/2,
  normalized) with reflect padding ("dcb|abcd|cba") folded in."""
  half = (ksize - 1) / 2.0
  taps = jnp.linspace(-half, half, ksize)
  kern = jnp.exp(-0.5 * (taps / sigma) ** 2)
  kern = kern / jnp.sum(kern)
  src = jnp.arange(n)[:, None] + jnp.arange(ksize)[None, :] - ksize // 2  # (n, k)
  src = jnp.abs(src)
  src = jnp.where(src > n - 1, 2 * (n - 1) - src, src)
  return jnp.einsum("k,ikn->in", kern, jax.nn.one_hot(src, n))


def apply_blur(x: jax.Array, prm: dict, *, kernel_size: Optional[int] = None) -> jax.Array:
  """Separable Gaussian blur of the images with prm["apply"], each with its prm["sigma"]
  (see blur_params). kernel_size: odd, default default_blur_kernel(min(H, W))."""
  _check_images(x, "apply_blur")
  _, h, w, _ = x.shape
  k = kernel_size or default_blur_kernel(min(h, w))
  if k % 2 != 1 or k // 2 >= min(h, w):
    raise ValueError(f"blur kernel_size must be odd with radius < image side, got {k} for {h}x{w}")

  def one(img, pr):
    by, bx = _blur_matrix(pr["sigma"], h, k), _blur_matrix(pr["sigma"], w, k)
    out = jnp.einsum("oh,hwc,pw->opc", by, img, bx, precision=jax.lax.Precision.HIGHEST)
    return jnp.where(pr["apply"], jnp.clip(out, 0.0, 1.0), img)

  return jax.vmap(one)(x, prm)


def gaussian_blur(key: jax.Array, x: jax.Array, *, sigma=(0.1, 2.0), p: float = 0.5,
                  kernel_size: Optional[int] = None) -> jax.Array:
  """RandomApply([GaussianBlur(kernel_size, sigma)], p), one sigma per image for both axes,
  reflect padding. Off in HaDis (§IV-A); here for SimCLR-style presets. x: (b, H, W, C)."""
  _check_images(x, "gaussian_blur")
  return apply_blur(x, blur_params(key, x.shape[0], sigma=sigma, p=p), kernel_size=kernel_size)


# -- normalize ------------------------------------------------------------------------------------
def normalize(x: jax.Array, mean, std) -> jax.Array:
  """(x - mean) / std per channel (torchvision Normalize). x: (..., C); mean, std: (C,)."""
  mean = jnp.asarray(mean, x.dtype)
  std = jnp.asarray(std, x.dtype)
  if mean.shape != (x.shape[-1],) or std.shape != (x.shape[-1],):
    raise ValueError(f"normalize: mean {mean.shape} / std {std.shape} do not match "
                     f"{x.shape[-1]} channels")
  return (x - mean) / std


# -- presets and the composed pipeline ------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AugmentPreset:
  """A fixed augmentation pipeline, applied in this order: rotate/shift (if rotate_degrees or
  rotate_shift > 0; `random_rotate_shift`) → random resized crop → horizontal flip (flip_p) →
  colour jitter (jitter_p; strengths brightness/contrast/saturation/hue, 0 = off) → random
  grayscale (grayscale_p) → Gaussian blur (blur_p) → normalize (if mean is set).

  Hashable, so it can be a static argument of a jitted function.
  """

  name: str = "custom"
  crop_scale: tuple = (0.08, 1.0)
  crop_ratio: tuple = (3 / 4, 4 / 3)
  out_size: Optional[tuple] = None  # (H, W) of the views; None: the input's
  flip_p: float = 0.5
  jitter_p: float = 0.8
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.4
  hue: float = 0.1
  grayscale_p: float = 0.2
  blur_p: float = 0.0
  blur_sigma: tuple = (0.1, 2.0)
  blur_kernel: Optional[int] = None  # None: default_blur_kernel(min(H, W))
  rotate_degrees: float = 0.0
  rotate_shift: float = 0.0
  mean: Optional[tuple] = None
  std: Optional[tuple] = None

  @property
  def jitter_active(self) -> tuple:
    return tuple(s > 0 for s in (self.brightness, self.contrast, self.saturation, self.hue))


# The paper's (§IV-A) and the public code's SimCLR transform without blur: RandomResizedCrop
# (scale 0.08-1), flip 0.5, ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, RandomGrayscale 0.2,
# Normalize (the code's default statistics, also its STL-10 / ImageNet ones).
RGB_PRESET = AugmentPreset(name="simclr-rgb", mean=IMAGENET_MEAN_STD[0], std=IMAGENET_MEAN_STD[1])

# Small grayscale images (digits, MNIST, USPS): no flip (digits are not mirror-symmetric), crop
# scale 0.5-1 (0.08 of an 8x8 image is about 2x2 pixels), brightness and contrast only, no
# grayscale, no normalization. Rotation/shift is off by default; switch it on with
# dataclasses.replace(DIGITS_PRESET, rotate_degrees=10.0, rotate_shift=0.1).
DIGITS_PRESET = AugmentPreset(name="digits", crop_scale=(0.5, 1.0), flip_p=0.0, saturation=0.0,
                              hue=0.0, grayscale_p=0.0)


def preset_for(image_shape) -> AugmentPreset:
  """The preset for images of shape (H, W, C), from the channel count and size only.

  C = 3: RGB_PRESET, its smallest crop raised for tiny images so a crop covers at least about
  8×8 source pixels: scale[0] = clip(64 / (H·W), 0.08, 0.5) (0.08 for 32×32 and larger).
  Any other C: DIGITS_PRESET (brightness and contrast only).
  """
  if len(image_shape) != 3:
    raise ValueError(f"preset_for needs (H, W, C), got {tuple(image_shape)}")
  h, w, c = (int(s) for s in image_shape)
  if c == 3:
    lo = float(min(max(64.0 / (h * w), 0.08), 0.5))
    return dataclasses.replace(RGB_PRESET, crop_scale=(lo, 1.0))
  return DIGITS_PRESET


def augment_params(key: jax.Array, b: int, image_shape, preset: AugmentPreset) -> dict:
  """Everything augment draws, per image (leading axis b). Image i draws one vector of uniforms
  from its own key, in fixed slots per stage (crop, flip, jitter, grayscale, blur), so a stage's
  draws do not depend on which other stages are on; rotation, when on, uses a key folded from
  the image's key."""
  h, w, _ = image_shape
  p = preset
  keys = jax.random.split(key, b)
  n = N_CROP + 1 + N_JITTER + 1 + 2
  u = jax.vmap(lambda k: jax.random.uniform(k, (n,)))(keys)
  c0, c1 = 0, N_CROP
  j0 = c1 + 1
  g0 = j0 + N_JITTER
  prm = {
      "crop": jax.vmap(lambda v: _crop_from_uniform(v, h, w, p.crop_scale, p.crop_ratio))(
          u[:, c0:c1]),
      "flip": u[:, c1] < p.flip_p,
      "jitter": jax.vmap(lambda v: _jitter_from_uniform(v, p.brightness, p.contrast,
                                                        p.saturation, p.hue, p.jitter_p))(
                                                            u[:, j0:g0]),
      "gray": u[:, g0] < p.grayscale_p,
      "blur": _blur_from_uniform(u[:, g0 + 1:g0 + 3], p.blur_sigma, p.blur_p),
  }
  if p.rotate_degrees > 0 or p.rotate_shift > 0:
    prm["rotate_key"] = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
  return prm


def apply_augment(x: jax.Array, prm: dict, preset: AugmentPreset) -> jax.Array:
  """The preset's pipeline with drawn parameters (see augment_params). Stages that the preset
  switches off are skipped statically. x: (b, H, W, C) -> (b, *out_size, C)."""
  _check_images(x, "apply_augment")
  p = preset
  if p.rotate_degrees > 0 or p.rotate_shift > 0:
    rot = lambda k, im: random_rotate_shift(k, im[None], max_degrees=p.rotate_degrees,
                                            max_shift=p.rotate_shift)[0]
    x = jax.vmap(rot)(prm["rotate_key"], x)
  x = apply_resized_crop(x, prm["crop"], p.out_size)
  if p.flip_p > 0:
    x = apply_flip(x, prm["flip"])
  if p.jitter_p > 0 and any(p.jitter_active):
    x = apply_jitter(x, prm["jitter"], active=p.jitter_active)
  if p.grayscale_p > 0:
    x = apply_grayscale(x, prm["gray"])
  if p.blur_p > 0:
    x = apply_blur(x, prm["blur"], kernel_size=p.blur_kernel)
  if p.mean is not None:
    x = normalize(x, p.mean, p.std)
  return x


def augment(key: jax.Array, x: jax.Array, preset: AugmentPreset) -> jax.Array:
  """One random view of each image: apply_augment(x, augment_params(key, b, ...), preset).
  Pure; jit it with preset static (or close over it). x: (b, H, W, C) in [0, 1]."""
  _check_images(x, "augment")
  return apply_augment(x, augment_params(key, x.shape[0], x.shape[1:], preset), preset)


def two_views(key: jax.Array, x: jax.Array, preset: AugmentPreset):
  """Two independently augmented views of the batch (HaDis Fig. 1 / Algorithm 1 `aug(x)`
  twice): (augment(k1, x), augment(k2, x)) with (k1, k2) = split(key)."""
  views = jax.vmap(lambda k: augment(k, x, preset))(jax.random.split(key))  # one traced body
  return views[0], views[1]


def eval_view(x: jax.Array, preset: AugmentPreset) -> jax.Array:
  """The images as the encoder sees them at evaluation (the code's test transform): only the
  preset's normalization. x: (b, H, W, C) -> same shape."""
  if preset.mean is None:
    return x
  return normalize(x, preset.mean, preset.std)
