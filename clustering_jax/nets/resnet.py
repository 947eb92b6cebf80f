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
# Below this many input channels the forward pass is im2col too (XLA:CPU's direct convolution
# is slower there: 3.4x on a 1-channel 28x28 stem).
IM2COL_FORWARD_BELOW = 8


def _im2col(lhs, rhs, strides, pads, precision):
  """A 2-D NHWC·HWIO convolution as kh·kw strided slices of the padded input and one matmul."""
  kh, kw_, c, o = rhs.shape
  sh, sw = strides
  (pt, pb), (pl, pr) = pads
  xp = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  oh = (xp.shape[1] - kh) // sh + 1
  ow = (xp.shape[2] - kw_) // sw + 1
  cols = [jax.lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + (oh - 1) * sh + 1,
                                           j + (ow - 1) * sw + 1, c), (1, sh, sw, 1))
          for i in range(kh) for j in range(kw_)]
  patches = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]  # (b, oh, ow, kh·kw·c)
  return jnp.dot(patches, rhs.reshape(kh * kw_ * c, o), precision=precision)


def _direct(lhs, rhs, strides, pads, precision):
  return jax.lax.conv_general_dilated(lhs, rhs, strides, pads, dimension_numbers=_NHWC_DN,
                                      precision=precision)


_NHWC_DN = jax.lax.ConvDimensionNumbers(*_NHWC)


def _kernel_grad(lhs, g, kshape, strides, pads, precision):
  """∂L/∂kernel of the convolution: per tap (i, j), the strided slice of the padded input
  contracted with the output cotangent over batch and positions, (kh, kw, c, o)."""
  kh, kw_, c, o = kshape
  sh, sw = strides
  (pt, pb), (pl, pr) = pads
  xp = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  _, oh, ow, _ = g.shape
  g2 = g.reshape(-1, o)
  taps = [jnp.dot(jax.lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + (oh - 1) * sh + 1,
                                                   j + (ow - 1) * sw + 1, c),
                                (1, sh, sw, 1)).reshape(-1, c).T, g2, precision=precision)
          for i in range(kh) for j in range(kw_)]
  return jnp.stack(taps).reshape(kh, kw_, c, o)


def _input_grad(lhs, rhs, g, strides, pads, precision):
  """∂L/∂input: for stride 1 (and paddings within the kernel) the forward convolution of the
  cotangent with the flipped, transposed kernel; otherwise the gradient of the im2col form."""
  kh, kw_ = rhs.shape[:2]
  if strides == (1, 1) and all(0 <= p <= k - 1 for (a, b), k in zip(pads, (kh, kw_))
                               for p in (a, b)):
    flipped = jnp.transpose(rhs[::-1, ::-1], (0, 1, 3, 2))
    back = tuple((k - 1 - a, k - 1 - b) for (a, b), k in zip(pads, (kh, kw_)))
    return _direct(g, flipped, (1, 1), back, precision)
  return jax.vjp(lambda a: _im2col(a, rhs, strides, pads, precision), lhs)[1](g)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _cpu_conv(lhs, rhs, strides, pads, precision):
  """Forward: XLA's direct convolution (im2col below IM2COL_FORWARD_BELOW input channels).
  Backward: the kernel gradient as one matmul per tap, the input gradient as a direct
  convolution (stride 1) or the gradient of the im2col form."""
  fwd = _im2col if lhs.shape[-1] < IM2COL_FORWARD_BELOW else _direct
  return fwd(lhs, rhs, strides, pads, precision)


def _cpu_conv_fwd(lhs, rhs, strides, pads, precision):
  return _cpu_conv(lhs, rhs, strides, pads, precision), (lhs, rhs)


def _cpu_conv_bwd(strides, pads, precision, res, g):
  lhs, rhs = res
  return (_input_grad(lhs, rhs, g, strides, pads, precision),
          _kernel_grad(lhs, g, rhs.shape, strides, pads, precision))


_cpu_conv.defvjp(_cpu_conv_fwd, _cpu_conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kw):
  """`lax.conv_general_dilated`; on the CPU, a 2-D NHWC·HWIO convolution without dilation or
  groups runs its forward pass as XLA's convolution and its gradient as that of the im2col
  form (kh·kw strided slices of the padded input and one matmul).

  XLA:CPU runs the gradient convolutions of `lax.conv_general_dilated` about 10x slower inside
  a while loop (the engine's scanned epoch) than at top level: there they keep non-canonical
  dimension labels and miss the fast convolution path; slices and matmuls run at full speed in
  both. Its forward convolution stays on the fast path and is 2-4x quicker than the im2col
  matmul (the patch copy), except on inputs with very few channels. Same values up to float
  rounding; the parameters are unchanged.
  """
  dn = dimension_numbers
  plain = (jax.default_backend() == "cpu" and lhs.ndim == 4 and feature_group_count == 1
           and not kw
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and dn is not None and (tuple(dn.lhs_spec), tuple(dn.rhs_spec),
                                   tuple(dn.out_spec)) == _NHWC)
  if not plain:
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        precision=precision, **kw)
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  pads = tuple((int(a), int(b)) for a, b in padding)
  return _cpu_conv(lhs, rhs, tuple(int(s) for s in window_strides), pads, precision)


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
