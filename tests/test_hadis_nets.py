"""nets/resnet.py: shapes, BatchNorm state in train vs eval mode, ResNet-18 parameter count.

Random init compiles slowly on a small CPU (about 2 s per initializer), so the forward tests
fill the variables from their `eval_shape` with NumPy draws; `init` itself is traced by
eval_shape everywhere and run for real only on the small heads.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clustering_jax.nets import resnet as R


def _host_variables(module, x, seed=0):
  """Variables of module's shapes: He-normal kernels, unit BN scales/variances, zero biases and
  means, drawn with NumPy (no compile)."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False))
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(s.shape[:-1]))
      return jnp.asarray(rng.normal(size=s.shape) * np.sqrt(2.0 / fan_in), s.dtype)
    if name in ("scale", "var"):
      return jnp.ones(s.shape, s.dtype)
    return jnp.zeros(s.shape, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _images(shape, seed=1):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


def test_resnet18_parameter_count():
  x = jnp.zeros((2, 8, 8, 3))
  v = jax.eval_shape(lambda: R.CifarResNet18().init(jax.random.key(0), x, train=False))
  # torchvision resnet18: 11,689,512 parameters; minus the fc layer (512·1000 + 1000) and with
  # a 3×3 instead of a 7×7 stem conv (3·64·9 instead of 3·64·49): 11,168,832.
  assert R.count_params(v["params"]) == 11_689_512 - 513_000 - (9408 - 1728) == 11_168_832
  assert R.count_params(v["batch_stats"]) == 2 * 4800  # running mean and var of 20 BN layers
  assert "stem_conv" in v["params"] and v["params"]["stem_conv"]["kernel"].shape == (3, 3, 3, 64)
  enc = R.make_encoder("resnet18")  # paper heads: 512 → 4096 → 256
  ve = jax.eval_shape(lambda: enc.init(jax.random.key(0), x, train=False))
  head = 512 * 4096 + 4096 + 2 * 4096 + 4096 * 256 + 256
  assert R.count_params(ve["params"]) == 11_168_832 + head


def test_resnet18_forward_and_batch_stats():
  model = R.CifarResNet18()
  x = _images((2, 8, 8, 3))
  v = _host_variables(model, x)
  out, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
  chex.assert_shape(out, (2, 512))
  chex.assert_tree_all_finite(out)
  # Train mode: every running mean/var moves (momentum 0.9 towards the batch statistics).
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), v["batch_stats"], upd["batch_stats"])
  assert all(jax.tree.leaves(moved))
  np.testing.assert_allclose(np.asarray(upd["batch_stats"]["stem_bn"]["mean"]),
                             0.1 * np.asarray(_stem_batch_mean(v, x)), rtol=1e-4, atol=1e-6)
  ev = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)
  chex.assert_shape(ev, (2, 512))


def _stem_batch_mean(v, x):
  k = v["params"]["stem_conv"]["kernel"]
  y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   precision=jax.lax.Precision.HIGHEST)
  return jnp.mean(y, axis=(0, 1, 2))


@pytest.mark.parametrize("side, maps", [(8, [4, 4, 4, 4]), (16, [8, 4, 4, 4]),
                                        (28, [14, 7, 7, 7])])
def test_small_cnn_shapes_and_strides(side, maps):
  model = R.SmallCNN()
  x = _images((3, side, side, 1))
  v = _host_variables(model, x)
  out, state = model.apply(v, x, train=False, capture_intermediates=True, mutable=["intermediates"])
  chex.assert_shape(out, (3, 128))
  got = [state["intermediates"][f"conv{i}"]["__call__"][0].shape[1] for i in range(4)]
  assert got == maps


def test_encoder_train_updates_bn_eval_does_not():
  enc = R.make_encoder("cnn", proj_hidden=32, proj_dim=8, widths=(8, 16))
  x = _images((4, 8, 8, 1))
  v = _host_variables(enc, x)
  fwd = jax.jit(lambda v, x, train: enc.apply(v, x, train=train, mutable=["batch_stats"]),
                static_argnums=2)
  z, upd = fwd(v, x, True)
  chex.assert_shape(z, (4, 8))
  assert set(upd["batch_stats"]) == {"backbone", "projector"}
  assert bool(jnp.any(upd["batch_stats"]["projector"]["bn"]["var"] != 1.0))
  z_eval, same = fwd(v, x, False)
  chex.assert_trees_all_equal(same["batch_stats"], v["batch_stats"])  # eval: no update
  assert not np.allclose(np.asarray(z_eval), np.asarray(z))  # running vs batch statistics
  # Eval mode is per sample: a sample's output does not depend on the rest of the batch (in full
  # float32: a GPU's default TF32 convolutions differ by ~4e-4 between batch sizes).
  with jax.default_matmul_precision("float32"):
    z1, z4 = enc.apply(v, x[:1], train=False), enc.apply(v, x, train=False)
  np.testing.assert_allclose(np.asarray(z1), np.asarray(z4[:1]), rtol=1e-5, atol=1e-6)
  feats = enc.apply(v, x, train=False, method=R.Encoder.features)
  chex.assert_shape(feats, (4, 16))


def test_heads_init_and_shapes():
  pred = R.make_predictor(hidden=64, dim=16)
  proj = R.MLPHead(hidden=64, out=16)
  x = _images((5, 16))
  vp = jax.jit(lambda k, x: pred.init(k, x, train=False))(jax.random.key(0), x)
  w1 = np.asarray(vp["params"]["fc1"]["kernel"])
  assert w1.shape == (16, 64) and abs(w1.std() - 0.01) < 0.002  # the code's N(0, 0.01)
  np.testing.assert_array_equal(np.asarray(vp["params"]["fc1"]["bias"]), 0.0)
  vq = jax.jit(lambda k, x: proj.init(k, x, train=False))(jax.random.key(1), x)
  w = np.asarray(vq["params"]["fc1"]["kernel"])
  assert np.abs(w).max() <= 1 / np.sqrt(16) + 1e-6  # PyTorch's U(±1/sqrt(fan_in))
  y, upd = pred.apply(vp, x, train=True, mutable=["batch_stats"])
  chex.assert_shape(y, (5, 16))
  assert upd["batch_stats"]["bn"]["mean"].shape == (64,)
  with pytest.raises(ValueError, match="unknown backbone"):
    R.make_backbone("vit")
  with pytest.raises(ValueError, match=r"\(b, d\)"):
    proj.apply(vq, jnp.zeros((2, 4, 4)), train=False)
  assert isinstance(R.make_backbone("cnn", widths=(4, 8)), nn.Module)


def _conv_cases():
  """(channels, kernel, stride, padding): both forward paths (im2col below
  IM2COL_FORWARD_BELOW channels, XLA's convolution above), both input-gradient paths (stride
  1 with paddings inside the kernel: a direct convolution; otherwise im2col), string paddings."""
  few, many = 3, R.IM2COL_FORWARD_BELOW
  return [(few, (3, 3), 2, ((1, 1), (1, 1))), (many, (3, 3), 2, ((1, 1), (1, 1))),
          (many, (3, 3), 1, ((1, 1), (1, 1))), (many, (3, 3), 1, ((0, 2), (2, 1))),
          (many, (3, 3), 1, ((3, 0), (1, 1))), (few, (1, 1), 2, "SAME"),
          (many, (3, 3), 1, "VALID")]


# Two cases (the two forward paths, both input-gradient paths) run by default, the rest as slow.
@pytest.mark.parametrize("case", [pytest.param(c, marks=() if i in (1, 3) else pytest.mark.slow)
                                  for i, c in enumerate(_conv_cases())])
def test_cpu_conv_equals_lax_conv_in_value_and_gradient(case):
  """nets.resnet.conv_general_dilated (every conv of the HaDis networks) equals
  lax.conv_general_dilated in value and in both gradients, jitted, on every path."""
  c, ks, stride, pad = case
  rng = np.random.default_rng(0)
  hi = jax.lax.Precision.HIGHEST
  x = jnp.asarray(rng.normal(size=(2, 7, 6, c)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(*ks, c, 4)), jnp.float32)
  dn = jax.lax.conv_dimension_numbers(x.shape, k.shape, ("NHWC", "HWIO", "NHWC"))
  f = lambda conv: (lambda x, k: conv(x, k, (stride, stride), pad, dimension_numbers=dn,
                                      precision=hi))
  ref, got = f(jax.lax.conv_general_dilated)(x, k), jax.jit(f(R.conv_general_dilated))(x, k)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  loss = lambda conv: (lambda x, k: jnp.sum(jnp.sin(f(conv)(x, k))))
  for a, b in zip(jax.grad(loss(jax.lax.conv_general_dilated), (0, 1))(x, k),
                  jax.jit(jax.grad(loss(R.conv_general_dilated), (0, 1)))(x, k)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


def test_cpu_conv_gradient_has_no_transposed_convolutions():
  """On the CPU the backward pass of a conv has only plain NHWC·HWIO convolutions (no lhs
  dilation, no swapped batch/feature labels): XLA:CPU runs those other gradient convolutions
  about 10x slower inside the engine's scanned epoch."""
  if jax.default_backend() != "cpu":
    pytest.skip("the im2col gradient is CPU-only")
  nhwc = jax.lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))
  for c, ks, stride, pad in _conv_cases():
    x, k = jnp.zeros((2, 7, 6, c)), jnp.zeros((*ks, c, 4))
    loss = lambda x, k: jnp.sum(R.conv_general_dilated(
        x, k, (stride, stride), pad, dimension_numbers=nhwc) ** 2)
    jaxpr = jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, k)
    convs = [e for e in _all_eqns(jaxpr.jaxpr) if e.primitive.name == "conv_general_dilated"]
    for e in convs:
      assert e.params["dimension_numbers"] == nhwc
      assert tuple(e.params["lhs_dilation"]) == (1, 1) and tuple(e.params["rhs_dilation"]) == (1, 1)
    # the forward pass is XLA's convolution from IM2COL_FORWARD_BELOW channels on
    assert (len(convs) > 0) == (c >= R.IM2COL_FORWARD_BELOW)


def _all_eqns(jaxpr):
  for e in jaxpr.eqns:
    yield e
    for sub in _subjaxprs(e):
      yield from _all_eqns(sub)


def _subjaxprs(eqn):
  for v in eqn.params.values():
    for j in (v if isinstance(v, (tuple, list)) else (v,)):
      if hasattr(j, "jaxpr") and hasattr(j.jaxpr, "eqns"):
        yield j.jaxpr
      elif hasattr(j, "eqns"):
        yield j
