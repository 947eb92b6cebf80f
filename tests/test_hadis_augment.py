"""data/augment.py, the SimCLR-style ops for HaDis: each op redone in NumPy from the parameters
it drew (exposed by its *_params helper), range and shape checks, jit == eager, per-sample
draws, presets, and finiteness on degenerate batches."""

import colorsys
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clustering_jax.data import augment as A

GRAY = np.array([0.299, 0.587, 0.114])


def _images(n=4, h=8, w=8, c=3, seed=0):
  return np.random.default_rng(seed).uniform(size=(n, h, w, c)).astype(np.float32)


def _in_unit_range(x):
  x = np.asarray(x)
  assert x.min() >= -1e-6 and x.max() <= 1 + 1e-6, (x.min(), x.max())


# -- NumPy references -----------------------------------------------------------------------------
def np_resized_crop(img, box, out_hw):
  """Bilinear sampling at the box's pixel centres, one pixel at a time."""
  h, w, _ = img.shape
  y0, x0, ch, cw = (float(v) for v in box)
  out = np.zeros(out_hw + (img.shape[2],), np.float64)
  for i in range(out_hw[0]):
    sy = np.clip(y0 + (i + 0.5) * ch / out_hw[0] - 0.5, 0, h - 1)
    for j in range(out_hw[1]):
      sx = np.clip(x0 + (j + 0.5) * cw / out_hw[1] - 0.5, 0, w - 1)
      a, b = int(np.floor(sy)), int(np.floor(sx))
      fy, fx = sy - a, sx - b
      a1, b1 = min(a + 1, h - 1), min(b + 1, w - 1)
      out[i, j] = ((1 - fy) * (1 - fx) * img[a, b] + (1 - fy) * fx * img[a, b1]
                   + fy * (1 - fx) * img[a1, b] + fy * fx * img[a1, b1])
  return out


def np_gray(img):
  return img @ GRAY if img.shape[-1] == 3 else img.mean(-1)


def np_jitter_op(img, op, f):
  if op == 0:  # brightness
    return np.clip(img * f, 0, 1)
  if op == 1:  # contrast: blend with the mean grey level
    return np.clip(f * img + (1 - f) * np_gray(img).mean(), 0, 1)
  if img.shape[-1] != 3:
    return img
  if op == 2:  # saturation: blend with the grayscale image
    return np.clip(f * img + (1 - f) * np_gray(img)[..., None], 0, 1)
  out = np.empty_like(img)  # hue: rotate in HSV, pixel by pixel with colorsys
  for idx in np.ndindex(img.shape[:-1]):
    hh, ss, vv = colorsys.rgb_to_hsv(*img[idx])
    out[idx] = colorsys.hsv_to_rgb((hh + f) % 1.0, ss, vv)
  return np.clip(out, 0, 1)


def np_jitter(img, apply, factors, order):
  if not apply:
    return img
  for op in order:
    img = np_jitter_op(img, int(op), float(factors[op]))
  return img


def np_blur(img, sigma, k):
  half = (k - 1) / 2
  taps = np.linspace(-half, half, k)
  kern = np.exp(-0.5 * (taps / sigma) ** 2)
  kern /= kern.sum()
  r = k // 2
  pad = np.pad(img, ((r, r), (r, r), (0, 0)), mode="reflect")
  tmp = sum(kern[t] * pad[t:t + img.shape[0], :, :] for t in range(k))
  return sum(kern[t] * tmp[:, t:t + img.shape[1], :] for t in range(k))


# -- single ops -----------------------------------------------------------------------------------
def test_random_resized_crop_matches_numpy():
  x = _images(n=3, h=6, w=10, c=2)
  key = jax.random.key(1)
  # One compile for the op and its draws (eager runs compile every primitive on its own).
  out, boxes = jax.jit(lambda k, x: (A.random_resized_crop(k, x, scale=(0.2, 1.0), size=(5, 7)),
                                     A.crop_params(k, 3, 6, 10, scale=(0.2, 1.0))))(key, x)
  out, boxes = np.asarray(out), np.asarray(boxes)
  chex.assert_shape(out, (3, 5, 7, 2))
  for i in range(3):
    y0, x0, ch, cw = boxes[i]
    assert 0 <= y0 and y0 + ch <= 6 + 1e-5 and 0 <= x0 and x0 + cw <= 10 + 1e-5
    assert 0.2 * 60 * 0.99 <= ch * cw or ch == 6 or cw == 10  # area ≥ scale[0]·H·W unless clipped
    np.testing.assert_allclose(out[i], np_resized_crop(x[i], boxes[i], (5, 7)), atol=1e-5)
  _in_unit_range(out)
  # The full box at the input size is the identity.
  full = jnp.asarray([[0.0, 0.0, 6.0, 10.0]] * 3)
  np.testing.assert_allclose(np.asarray(jax.jit(A.apply_resized_crop)(x, full)), x, atol=1e-6)


def test_crop_draws_cover_scale_and_ratio():
  b = np.asarray(jax.jit(A.crop_params, static_argnums=(1, 2, 3))(jax.random.key(2), 2000, 32, 32))
  area = b[:, 2] * b[:, 3] / 1024.0
  ratio = b[:, 3] / b[:, 2]
  unclipped = (b[:, 2] < 32) & (b[:, 3] < 32)
  assert area.min() >= 0.08 - 1e-4 and area.max() <= 1 + 1e-4
  assert np.all((ratio[unclipped] > 0.75 - 1e-4) & (ratio[unclipped] < 4 / 3 + 1e-4))
  assert abs(np.mean(area[unclipped]) - 0.5) < 0.1  # area fraction ~ U(0.08, 1) before clipping
  assert abs(np.median(np.log(ratio[unclipped]))) < 0.05  # log-uniform ratio, centred at 0


def test_flip_and_grayscale_match_numpy():
  x = _images(n=8)
  key = jax.random.key(3)
  out, fl = jax.jit(lambda k, x: (A.random_flip(k, x), A.flip_params(k, 8)))(key, x)
  out, fl = np.asarray(out), np.asarray(fl)
  ref = np.where(fl[:, None, None, None], x[:, :, ::-1], x)
  np.testing.assert_array_equal(out, ref)
  assert 0 < fl.sum() < 8
  out, gr = jax.jit(lambda k, x: (A.random_grayscale(k, x, p=0.5),
                                  A.grayscale_params(k, 8, p=0.5)))(key, x)
  out, gr = np.asarray(out), np.asarray(gr)
  ref = np.where(gr[:, None, None, None], np.repeat((x @ GRAY)[..., None], 3, -1), x)
  np.testing.assert_allclose(out, ref, atol=1e-6)
  assert 0 < gr.sum() < 8
  x1 = x[..., :1]  # one channel: grayscale is the identity
  np.testing.assert_array_equal(np.asarray(A.apply_grayscale(jnp.asarray(x1), gr)), x1)


@pytest.mark.parametrize("channels", [3, 1])
def test_color_jitter_matches_numpy(channels):
  x = _images(n=6, h=4, w=4, c=channels, seed=4)
  key = jax.random.key(5)
  kw = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8)
  out, prm = jax.jit(lambda k, x: (A.color_jitter(k, x, **kw), A.jitter_params(k, 6, **kw)))(key, x)
  out, prm = np.asarray(out), jax.tree.map(np.asarray, prm)
  for i in range(6):
    assert sorted(prm["order"][i]) == [0, 1, 2, 3]
    ref = np_jitter(x[i].astype(np.float64), prm["apply"][i], prm["factors"][i], prm["order"][i])
    np.testing.assert_allclose(out[i], ref, atol=2e-5)
  _in_unit_range(out)
  f = prm["factors"]
  assert np.all((f[:, :3] >= 0.6) & (f[:, :3] <= 1.4)) and np.all(np.abs(f[:, 3]) <= 0.1)
  assert prm["apply"].any()


def test_hue_roundtrip_and_constant_images():
  x = jnp.asarray(_images(n=2, h=3, w=3, seed=6))
  hue = jax.jit(A.adjust_hue)
  for f in (0.0, 1.0):  # a full turn is no turn
    np.testing.assert_allclose(np.asarray(hue(x, f)), np.asarray(x), atol=1e-5)
  grey = jnp.full((2, 3, 3, 3), 0.4)  # no hue: unchanged, finite
  np.testing.assert_allclose(np.asarray(hue(grey, 0.3)), 0.4, atol=1e-6)


def test_gaussian_blur_matches_numpy():
  x = _images(n=4, h=9, w=7, c=2, seed=7)
  key = jax.random.key(8)
  out, prm = jax.jit(lambda k, x: (A.gaussian_blur(k, x, p=0.5, kernel_size=5),
                                   A.blur_params(k, 4, p=0.5)))(key, x)
  out, prm = np.asarray(out), jax.tree.map(np.asarray, prm)
  for i in range(4):
    ref = np_blur(x[i], prm["sigma"][i], 5) if prm["apply"][i] else x[i]
    np.testing.assert_allclose(out[i], ref, atol=1e-5)
  _in_unit_range(out)
  assert A.default_blur_kernel(224) == 23 and A.default_blur_kernel(8) == 3
  with pytest.raises(ValueError, match="kernel_size"):
    A.apply_blur(jnp.asarray(x), prm, kernel_size=4)


def test_normalize():
  x = _images(n=2)
  out = np.asarray(A.normalize(jnp.asarray(x), (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)))
  np.testing.assert_allclose(out, (x - [0.5, 0.4, 0.3]) / [0.2, 0.25, 0.5], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="channels"):
    A.normalize(jnp.asarray(x), (0.5,), (0.2,))


# -- composed pipeline ----------------------------------------------------------------------------
def _np_pipeline(x, prm, preset, start=None):
  """The preset's stages in NumPy from the drawn parameters (rotation: `start`, if given)."""
  prm = jax.tree.map(np.asarray, {k: v for k, v in prm.items() if k != "rotate_key"})
  x = x if start is None else np.asarray(start)
  out_hw = preset.out_size or x.shape[1:3]
  res = []
  for i in range(x.shape[0]):
    img = np_resized_crop(x[i], prm["crop"][i], tuple(out_hw))
    if preset.flip_p > 0 and prm["flip"][i]:
      img = img[:, ::-1]
    if preset.jitter_p > 0:
      j = {k: v[i] for k, v in prm["jitter"].items()}
      img = np_jitter(img, j["apply"], j["factors"], j["order"])
    if preset.grayscale_p > 0 and prm["gray"][i] and img.shape[-1] == 3:
      img = np.repeat(np_gray(img)[..., None], 3, -1)
    if preset.blur_p > 0 and prm["blur"]["apply"][i]:
      img = np_blur(img, prm["blur"]["sigma"][i], preset.blur_kernel or 3)
    if preset.mean is not None:
      img = (img - np.asarray(preset.mean)) / np.asarray(preset.std)
    res.append(img)
  return np.stack(res)


@jax.jit
def _rgb_case(key, x):
  preset = _RGB_BLUR
  return A.augment(key, x, preset), A.augment_params(key, x.shape[0], x.shape[1:], preset)


_RGB_BLUR = dataclasses.replace(A.RGB_PRESET, blur_p=0.5)


def test_rgb_pipeline_matches_numpy_and_eager():
  preset = _RGB_BLUR
  x = _images(n=4, h=8, w=8, seed=9)
  key = jax.random.key(10)
  out, prm = _rgb_case(key, x)
  out = np.asarray(out)
  chex.assert_shape(out, x.shape)
  np.testing.assert_allclose(out, _np_pipeline(x, prm, preset), atol=1e-4)
  eager = np.asarray(A.augment(key, jnp.asarray(x), preset))
  np.testing.assert_allclose(eager, out, atol=1e-5)  # jit == eager
  _in_unit_range(out * np.asarray(preset.std) + np.asarray(preset.mean))  # before Normalize
  ev = np.asarray(jax.jit(A.eval_view, static_argnums=1)(x, preset))
  np.testing.assert_allclose(ev, (x - np.asarray(preset.mean)) / np.asarray(preset.std),
                             rtol=1e-5, atol=1e-6)


_DIGITS_ROT = dataclasses.replace(A.DIGITS_PRESET, rotate_degrees=10.0, rotate_shift=0.1)


@jax.jit
def _digits_case(key, x):
  """A view, its draws, and the images after the rotation stage (the existing, scipy-tested op)."""
  prm = A.augment_params(key, x.shape[0], x.shape[1:], _DIGITS_ROT)
  rot = lambda k, im: A.random_rotate_shift(k, im[None], max_degrees=10.0, max_shift=0.1)[0]
  return A.augment(key, x, _DIGITS_ROT), prm, jax.vmap(rot)(prm["rotate_key"], x)


def test_digits_pipeline_with_rotation_and_views():
  preset = _DIGITS_ROT
  x = _images(n=4, h=8, w=8, c=1, seed=11)
  key = jax.random.key(12)
  out, prm, rotated = _digits_case(key, x)
  out = np.asarray(out)
  np.testing.assert_allclose(out, _np_pipeline(x, prm, preset, start=rotated), atol=1e-4)
  _in_unit_range(out)
  v1, v2 = jax.jit(A.two_views, static_argnames="preset")(key, x, preset=preset)
  k1, k2 = jax.random.split(key)
  np.testing.assert_allclose(np.asarray(v1), np.asarray(_digits_case(k1, x)[0]), atol=1e-6)
  np.testing.assert_allclose(np.asarray(v2), np.asarray(_digits_case(k2, x)[0]), atol=1e-6)
  assert not np.allclose(np.asarray(v1), np.asarray(v2))
  same = np.broadcast_to(x[:1], x.shape)  # one key per image: copies get different views
  outs = np.asarray(_digits_case(key, same)[0])
  assert not np.allclose(outs[0], outs[1])


@pytest.mark.parametrize("case", ["constant", "zeros", "ones"])
def test_pipeline_finite_and_in_range_on_degenerate_images(case):
  x = {"constant": np.full((4, 8, 8, 3), 0.3, np.float32),
       "zeros": np.zeros((4, 8, 8, 3), np.float32),
       "ones": np.ones((4, 8, 8, 3), np.float32)}[case]
  out, _ = _rgb_case(jax.random.key(13), x)  # the compile of the RGB test
  chex.assert_tree_all_finite(out)
  chex.assert_shape(out, x.shape)
  raw = np.asarray(out) * np.asarray(_RGB_BLUR.std) + np.asarray(_RGB_BLUR.mean)
  _in_unit_range(raw)
  if case == "zeros":
    np.testing.assert_allclose(raw, 0.0, atol=1e-6)


def test_preset_for_uses_shape_only():
  assert A.preset_for((8, 8, 1)) is A.DIGITS_PRESET
  assert A.preset_for((28, 28, 1)) is A.DIGITS_PRESET
  p = A.preset_for((32, 32, 3))
  assert p.name == "simclr-rgb" and p.crop_scale == (0.08, 1.0) and p.flip_p == 0.5
  assert (p.brightness, p.contrast, p.saturation, p.hue, p.jitter_p, p.grayscale_p) == (
      0.4, 0.4, 0.4, 0.1, 0.8, 0.2)
  assert p.blur_p == 0.0  # the paper drops SimCLR's blur (§IV-A)
  assert A.preset_for((96, 96, 3)).crop_scale == (0.08, 1.0)
  assert A.preset_for((16, 16, 3)).crop_scale == (0.25, 1.0)
  assert A.preset_for((8, 8, 3)).crop_scale == (0.5, 1.0)
  d = A.DIGITS_PRESET
  assert (d.flip_p, d.crop_scale, d.saturation, d.hue, d.grayscale_p) == (0.0, (0.5, 1.0), 0.0,
                                                                          0.0, 0.0)
  with pytest.raises(ValueError, match="H, W, C"):
    A.preset_for((8, 8))
  hash(p)  # usable as a static jit argument
