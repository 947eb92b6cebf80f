"""MVSIB networks (clustering_jax.nets.multiview) against a NumPy forward pass written from the
parameters, under jax.jit; shapes, the default architecture, missing views and padding rows."""

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clustering_jax.nets.multiview import (MultiViewAutoencoder, MVSIBNet, RouterMLP,
                                           UncertaintyHead, fuse_views, init_params,
                                           join_decoders, split_decoders, view_weights)

DIMS = (7, 4, 9)
HID = (6, 5)


def np_mlp(params, x):
  """Dense layers dense_0..dense_{L-1}, ReLU between them (flax layout: kernel (in, out))."""
  n = len(params)
  for i in range(n):
    x = x @ np.asarray(params[f"dense_{i}"]["kernel"], np.float64) + np.asarray(
      params[f"dense_{i}"]["bias"], np.float64)
    if i < n - 1:
      x = np.maximum(x, 0)
  return x


def np_softmax(w):
  e = np.exp(w - w.max())
  return e / e.sum()


def np_fuse(zs, alpha, presence):
  V, B, D = zs.shape
  out = np.zeros((B, D))
  for i in range(B):
    a = np.array([alpha[v] * presence[i, v] for v in range(V)])
    if a.sum() > 0:
      out[i] = sum(a[v] / a.sum() * zs[v, i] for v in range(V))
  return out


def batch(seed=0, B=5):
  rng = np.random.default_rng(seed)
  return tuple(rng.normal(size=(B, d)).astype(np.float32) for d in DIMS)


def rand_params(net, views, seed=0):
  """Parameters of net's shapes filled with seeded NumPy normals (no initializer to compile:
  the checks below hold for any values)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(net.init, jax.random.key(0), views)
  return jax.tree.map(lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape), s.dtype), shapes)


def test_view_weights_and_fuse_views_match_numpy():
  rng = np.random.default_rng(1)
  w = rng.normal(size=3).astype(np.float32)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  alpha = view_weights(w)
  close(alpha, np_softmax(w.astype(np.float64)))
  close(float(alpha.sum()), 1.0)
  zs = rng.normal(size=(3, 6, 4)).astype(np.float32)
  close(jax.jit(fuse_views)(zs, alpha), np.einsum("v,vbd->bd", np.asarray(alpha), zs))
  pres = np.ones((6, 3), np.float32)
  pres[1, 0] = 0
  pres[2, [0, 2]] = 0
  pres[5] = 0                                            # no view at all (padding)
  fused = jax.jit(fuse_views)(zs, alpha, pres)
  close(fused, np_fuse(zs.astype(np.float64), np.asarray(alpha, np.float64), pres))
  close(fused[2], zs[1, 2])                              # only view 1 present
  assert float(jnp.abs(fused[5]).sum()) == 0.0


def test_default_architecture_is_dv_500_500_2000_256_mirrored():
  net = MultiViewAutoencoder((784, 256))
  views = (jnp.zeros((2, 784)), jnp.zeros((2, 256)))
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), views))["params"]
  for v, d in enumerate((784, 256)):
    enc = shapes[f"view_{v}"]["encoder"]
    dec = shapes[f"view_{v}"]["decoder"]
    assert [enc[f"dense_{i}"]["kernel"].shape for i in range(4)] == [
      (d, 500), (500, 500), (500, 2000), (2000, 256)]
    assert [dec[f"dense_{i}"]["kernel"].shape for i in range(4)] == [
      (256, 2000), (2000, 500), (500, 500), (500, d)]
  assert shapes["view_logits"].shape == (2,)


def test_multiview_autoencoder_forward_matches_numpy():
  net = MultiViewAutoencoder(DIMS, hidden=HID, latent=3)
  views = batch()
  params = rand_params(net, views)
  params["params"]["view_logits"] = jnp.array([0.3, -1.0, 0.5])
  out = jax.jit(net.apply)(params, views)
  chex.assert_shape(out["zs"], (3, 5, 3))
  chex.assert_shape(out["z_cons"], (5, 3))
  assert [x.shape for x in out["x_hat"]] == [(5, d) for d in DIMS]
  p = params["params"]
  alpha = np_softmax(np.array([0.3, -1.0, 0.5]))
  zs = np.stack([np_mlp(p[f"view_{v}"]["encoder"], views[v].astype(np.float64)) for v in range(3)])
  np.testing.assert_allclose(out["alpha"], alpha, rtol=1e-5)
  np.testing.assert_allclose(out["zs"], zs, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["z_cons"], np.einsum("v,vbd->bd", alpha, zs), rtol=1e-4, atol=1e-5)
  for v in range(3):
    np.testing.assert_allclose(out["x_hat"][v], np_mlp(p[f"view_{v}"]["decoder"], zs[v]),
                               rtol=1e-4, atol=1e-5)
  zs2, zc2, _ = jax.jit(partial(net.apply, method="consensus"))(params, views)
  np.testing.assert_allclose(zc2, out["z_cons"], rtol=1e-6)
  np.testing.assert_allclose(jax.jit(partial(net.apply, method="encode"))(params, views), zs2,
                             rtol=1e-6)


def test_normalized_representations_match_numpy():
  """normalize=True (§3.5.3): z^(v) = f(x)/||f(x)||, z_cons = Σ α_v z^(v) (not renormalized),
  x_hat decoded from the encoder outputs f(x), so pre-training is unchanged."""
  net = MultiViewAutoencoder(DIMS, hidden=HID, latent=3, normalize=True)
  views = batch()
  params = rand_params(net, views)
  params["params"]["view_logits"] = jnp.array([0.3, -1.0, 0.5])
  out = jax.jit(net.apply)(params, views)
  p = params["params"]
  alpha = np_softmax(np.array([0.3, -1.0, 0.5]))
  codes = np.stack([np_mlp(p[f"view_{v}"]["encoder"], views[v].astype(np.float64))
                    for v in range(3)])
  zs = codes / np.linalg.norm(codes, axis=-1, keepdims=True)
  chex.assert_tree_all_finite(out)
  np.testing.assert_allclose(np.linalg.norm(out["zs"], axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(out["zs"], zs, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["z_cons"], np.einsum("v,vbd->bd", alpha, zs), rtol=1e-4,
                             atol=1e-5)
  raw = MultiViewAutoencoder(DIMS, hidden=HID, latent=3).apply(params, views)
  for v in range(3):
    np.testing.assert_allclose(out["x_hat"][v], raw["x_hat"][v], rtol=1e-6)
  zs2, zc2, _ = jax.jit(partial(net.apply, method="consensus"))(params, views)
  np.testing.assert_allclose(zs2, out["zs"], rtol=1e-6)
  # a zero encoder output (degenerate input) stays finite
  zero = jax.tree.map(jnp.zeros_like, params)
  chex.assert_tree_all_finite(jax.jit(net.apply)(zero, views))


def test_missing_views_and_padding_rows():
  net = MultiViewAutoencoder(DIMS, hidden=HID, latent=3)
  views = batch(2)
  params = rand_params(net, views, seed=1)
  pres = np.ones((5, 3), np.float32)
  pres[0, 1] = 0
  pres[3, [0, 2]] = 0
  out = jax.jit(net.apply)(params, views, pres)
  alpha = np.asarray(out["alpha"], np.float64)
  np.testing.assert_allclose(out["z_cons"], np_fuse(np.asarray(out["zs"], np.float64), alpha, pres),
                             rtol=1e-5, atol=1e-6)
  # a missing view's input (garbage) changes nothing, and neither does a padding row
  v2 = [x.copy() for x in views]
  v2[1][0] = 1e3
  v2[0][3] = -1e3
  v2[2][4] = 1e3                              # row 4: treat as padding, compare rows 0..3
  out2 = jax.jit(net.apply)(params, tuple(v2), pres)
  np.testing.assert_allclose(out2["z_cons"][:4], out["z_cons"][:4], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out2["zs"][:, 1:3], out["zs"][:, 1:3], rtol=1e-6)
  with pytest.raises(ValueError, match="views"):
    net.apply(params, views[:2])
  with pytest.raises(ValueError, match="view 1"):
    net.apply(params, (views[0], views[0], views[2]))


def test_uncertainty_head_and_router_match_numpy():
  rng = np.random.default_rng(3)
  z = rng.normal(size=(6, 8)).astype(np.float32)
  head = UncertaintyHead()
  hp = rand_params(head, z)
  assert hp["params"]["mlp"]["dense_0"]["kernel"].shape == (8, 4)      # D -> D/2 -> 1
  u = jax.jit(head.apply)(hp, z)
  chex.assert_shape(u, (6,))
  ref = 1 / (1 + np.exp(-np_mlp(hp["params"]["mlp"], z.astype(np.float64))[:, 0]))
  np.testing.assert_allclose(u, ref, rtol=1e-5)
  assert np.all((np.asarray(u) >= 0) & (np.asarray(u) <= 1))
  f = rng.normal(size=(6, 3)).astype(np.float32)
  router = RouterMLP()
  rp = rand_params(router, f, seed=1)
  assert rp["params"]["mlp"]["dense_0"]["kernel"].shape == (3, 64)
  t = jax.jit(router.apply)(rp, f)
  chex.assert_shape(t, (6, 2))
  np.testing.assert_allclose(t, np_mlp(rp["params"]["mlp"], f.astype(np.float64)), rtol=1e-4,
                             atol=1e-5)
  with pytest.raises(ValueError, match="3"):
    router.apply(rp, f[:, :2])


@pytest.fixture(scope="module")
def net_params():
  net = MVSIBNet(DIMS, hidden=HID, latent=4)
  return net, init_params(net, jax.random.key(7), DIMS)


def test_mvsib_net_init_apply_route_and_gradients(net_params):
  net, p1 = net_params
  p2 = init_params(net, jax.random.key(7), DIMS)
  chex.assert_trees_all_equal(p1, p2)                     # one key -> the same parameters
  assert set(p1["params"]) == {"mvae", "u_head", "router"}
  views = batch(4, B=6)
  out = jax.jit(net.apply)(p1, views)
  assert set(out) == {"zs", "x_hat", "z_cons", "alpha", "u_hat"}
  chex.assert_shape(out["u_hat"], (6,))
  np.testing.assert_allclose(
    out["u_hat"],
    jax.jit(UncertaintyHead().apply)({"params": p1["params"]["u_head"]}, out["z_cons"]),
    rtol=1e-6)
  t = jax.jit(partial(net.apply, method="route"))(p1, jnp.ones((6, 3)))
  chex.assert_shape(t, (6, 2))
  zs, zc = jax.jit(partial(net.apply, method="encode"))(p1, views)
  np.testing.assert_allclose(zc, out["z_cons"], rtol=1e-6)

  def loss(p):
    o = net.apply(p, views)
    rec = sum(jnp.mean((x - xh) ** 2) for x, xh in zip(views, o["x_hat"]))
    return rec + jnp.mean(o["u_hat"]) + jnp.sum(net.apply(p, jnp.ones((6, 3)), method="route"))

  g = jax.jit(jax.grad(loss))(p1)
  chex.assert_tree_all_finite(g)
  assert float(jnp.abs(g["params"]["mvae"]["view_logits"]).sum()) > 0


def test_training_tree_without_decoders(net_params):
  net, p = net_params
  tp, dec = split_decoders(p)
  assert set(dec) == {f"view_{v}" for v in range(len(DIMS))}
  for v in range(len(DIMS)):
    assert set(tp["params"]["mvae"][f"view_{v}"]) == {"encoder"}
  n_dec = sum(a.size for a in jax.tree.leaves(dec))
  assert sum(a.size for a in jax.tree.leaves(tp)) + n_dec == sum(a.size for a in jax.tree.leaves(p))
  chex.assert_trees_all_equal(join_decoders(tp, dec), p)
  views = batch(2, B=5)
  full, part = jax.jit(net.apply)(p, views), jax.jit(partial(net.apply, decode=False))(tp, views)
  assert set(part) == {"zs", "z_cons", "alpha", "u_hat"}
  for k in part:
    np.testing.assert_allclose(part[k], full[k], rtol=1e-6)
  with pytest.raises(Exception):        # the decoders are really gone from the tree
    jax.eval_shape(net.apply, tp, views)
