"""Image encoders and heads for self-distillation methods (HaDis).

- `CifarResNet18`: the "BigResNet-18" of ProPos / HaDis (§IV-A): torchvision's ResNet-18 with a
  3×3 stride-1 stem, no max-pool, and the classifier replaced by global average pooling → 512-d.
- `SmallCNN`: a cheap backbone for small grayscale images (CPU budget; hadis.md §5).
- `MLPHead`: Linear–BN–ReLU–Linear, the projector and the predictor of BYOL / HaDis.
- `Encoder`: backbone + projector, the student f_s and (with another parameter tree) the
  teacher f_t of the paper.

BatchNorm state is explicit: every module takes `train`; in train mode BN normalizes with batch
statistics and updates the running averages in the "batch_stats" collection, so call
`apply(variables, x, train=True, mutable=["batch_stats"])` and keep the returned stats; in eval
mode (`train=False`) it reads the running averages and nothing is mutable. BN momentum 0.9 and
epsilon 1e-5 are PyTorch's defaults (its momentum 0.1 is flax's 0.9).
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_MOMENTUM = 0.9
BN_EPS = 1e-5

# torchvision's ResNet init: kaiming_normal_(mode="fan_out", nonlinearity="relu") for convs.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default nn.Linear weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


_NHWC = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))  # flax's 2-D dimension numbers: NHWC, HWIO


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kw):
  """`lax.conv_general_dilated`; on the CPU, a 2-D NHWC·HWIO convolution without dilation or
  groups runs as kh·kw strided slices of the padded input and one matmul (im2col) instead.

  XLA:CPU runs the gradient convolutions of `lax.conv_general_dilated` about 10x slower inside
  a while loop (the engine's scanned epoch) than at top level: there they keep non-canonical
  dimension labels and miss the fast convolution path. Slices and a matmul run at full speed
  in both. Same values up to float rounding; the parameters are unchanged.
  """
  dn = dimension_numbers
  plain = (jax.default_backend() == "cpu" and lhs.ndim == 4 and feature_group_count == 1
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and dn is not None and (tuple(dn.lhs_spec), tuple(dn.rhs_spec),
                                   tuple(dn.out_spec)) == _NHWC)
  if not plain:
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        precision=precision, **kw)
  kh, kw_, c, o = rhs.shape
  sh, sw = window_strides
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], (kh, kw_), window_strides, padding)
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  oh = (xp.shape[1] - kh) // sh + 1
  ow = (xp.shape[2] - kw_) // sw + 1
  cols = [jax.lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + (oh - 1) * sh + 1,
                                           j + (ow - 1) * sw + 1, c), (1, sh, sw, 1))
          for i in range(kh) for j in range(kw_)]
  patches = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]  # (b, oh, ow, kh·kw·c)
  return jnp.dot(patches, rhs.reshape(kh * kw_ * c, o), precision=precision)


# Every convolution of this module goes through `conv_general_dilated` above.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


def _bn(train: bool, name: Optional[str] = None, scale_init=nn.initializers.ones):
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                      scale_init=scale_init, name=name)


class BasicBlock(nn.Module):
  """Two 3×3 conv–BN layers with a residual connection (ResNet-18/34 block). A 1×1 strided
  conv–BN projects the shortcut when the shape changes."""

  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    s = (self.stride, self.stride)
    y = Conv(self.features, (3, 3), s, padding=1, use_bias=False, kernel_init=conv_init,
                name="conv1")(x)
    y = nn.relu(_bn(train, "bn1")(y))
    y = Conv(self.features, (3, 3), padding=1, use_bias=False, kernel_init=conv_init,
                name="conv2")(y)
    y = _bn(train, "bn2")(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = Conv(self.features, (1, 1), s, use_bias=False, kernel_init=conv_init,
                  name="down_conv")(x)
      x = _bn(train, "down_bn")(x)
    return nn.relu(x + y)


class CifarResNet18(nn.Module):
  """ResNet-18 for small images (ProPos/HaDis "BigResNet-18", `network/resnet.py`): a 3×3
  stride-1 64-channel stem conv–BN–ReLU, no max-pool, four stages of two BasicBlocks with
  widths (64, 128, 256, 512) and strides (1, 2, 2, 2), global average pooling.
  x: (b, H, W, C) -> (b, 512). About 11.17M parameters for C = 3."""

  widths: Sequence[int] = (64, 128, 256, 512)
  blocks: Sequence[int] = (2, 2, 2, 2)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"CifarResNet18 needs (b, H, W, C) images, got shape {x.shape}")
    x = Conv(self.widths[0], (3, 3), padding=1, use_bias=False, kernel_init=conv_init,
                name="stem_conv")(x)
    x = nn.relu(_bn(train, "stem_bn")(x))
    for i, (f, n) in enumerate(zip(self.widths, self.blocks)):
      for j in range(n):
        x = BasicBlock(f, stride=(2 if (i > 0 and j == 0) else 1), name=f"layer{i + 1}_{j}")(
            x, train=train)
    return jnp.mean(x, axis=(1, 2))


class SmallCNN(nn.Module):
  """A small CNN for small grayscale images (8×8 digits, 16×16 USPS, 28×28 MNIST).

  One 3×3 conv–BN–ReLU per entry of `widths`; a block has stride 2 while the feature map's
  smaller side is at least 2·min_side (so 28 → 14 → 7, 16 → 8 → 4, 8 → 4), else stride 1;
  then global average pooling. x: (b, H, W, C) -> (b, widths[-1]). Defaults: widths
  (16, 32, 64, 128), the CPU backbone timed in hadis.md §5.
  """

  widths: Sequence[int] = (16, 32, 64, 128)
  min_side: int = 4

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"SmallCNN needs (b, H, W, C) images, got shape {x.shape}")
    for i, f in enumerate(self.widths):
      s = 2 if min(x.shape[1], x.shape[2]) >= 2 * self.min_side else 1
      x = Conv(f, (3, 3), (s, s), padding=1, use_bias=False, kernel_init=conv_init,
                  name=f"conv{i}")(x)
      x = nn.relu(_bn(train, f"bn{i}")(x))
    return jnp.mean(x, axis=(1, 2))


class MLPHead(nn.Module):
  """Linear(hidden)–BN–ReLU–Linear(out): the BYOL/HaDis projector and predictor.

  kernel_std: None gives PyTorch's default Linear init (the HaDis projector); a number gives
  N(0, kernel_std²) weights (the HaDis predictor uses 0.01). Biases start at 0.
  x: (b, d) -> (b, out).
  """

  hidden: int = 4096
  out: int = 256
  kernel_std: Optional[float] = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if x.ndim != 2:
      raise ValueError(f"MLPHead needs (b, d) inputs, got shape {x.shape}")
    init = (torch_linear_init if self.kernel_std is None
            else nn.initializers.normal(self.kernel_std))
    x = nn.Dense(self.hidden, kernel_init=init, name="fc1")(x)
    x = nn.relu(_bn(train, "bn")(x))
    return nn.Dense(self.out, kernel_init=init, name="fc2")(x)


class Encoder(nn.Module):
  """Backbone then projector: the student f_s (and, with an EMA parameter tree, the teacher
  f_t) of HaDis. `__call__` returns the projector output (b, out), unnormalized;
  `method=Encoder.features` returns the backbone output."""

  backbone: nn.Module
  projector: MLPHead

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.projector(self.backbone(x, train=train), train=train)

  def features(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.backbone(x, train=train)


BACKBONES = ("resnet18", "cnn")


def make_backbone(kind: str, *, widths: Optional[Sequence[int]] = None) -> nn.Module:
  """"resnet18" → CifarResNet18 (512-d); "cnn" → SmallCNN (widths[-1]-d, default 128).
  widths: the stage widths (resnet18: four; default the paper's)."""
  if kind == "resnet18":
    return CifarResNet18() if widths is None else CifarResNet18(widths=tuple(widths))
  if kind == "cnn":
    return SmallCNN() if widths is None else SmallCNN(widths=tuple(widths))
  raise ValueError(f"unknown backbone {kind!r}; choose from {BACKBONES}")


def make_encoder(kind: str, *, proj_hidden: int = 4096, proj_dim: int = 256,
                 widths: Optional[Sequence[int]] = None) -> Encoder:
  """The student/teacher network: make_backbone(kind, widths=widths) + MLPHead(proj_hidden,
  proj_dim). Paper: resnet18, 4096/256 (§IV-A, the code's W:93–98)."""
  return Encoder(backbone=make_backbone(kind, widths=widths),
                 projector=MLPHead(hidden=proj_hidden, out=proj_dim))


def make_predictor(*, hidden: int = 4096, dim: int = 256, kernel_std: float = 0.01) -> MLPHead:
  """The predictor g: dim → hidden → dim with N(0, 0.01²) weights, zero biases (W:102–118)."""
  return MLPHead(hidden=hidden, out=dim, kernel_std=kernel_std)


def count_params(tree) -> int:
  """Number of scalars in a parameter tree."""
  return int(sum(x.size for x in jax.tree.leaves(tree)))
