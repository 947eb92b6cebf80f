"""MVSIB networks (paper 000, §3.3-3.5): view autoencoders, softmax view weights and the
consensus embedding (Eq. 1-4), the û regression head (§3.4, Eq. 45) and the CSD router (Eq. 19).

Architecture (the paper says only "fully connected layers" with a 256-d encoder output, §4.4):
each view v has a symmetric MLP autoencoder d_v-500-500-2000-256 (encoder, ReLU between layers,
linear output) mirrored as 256-2000-500-500-d_v (decoder), the hidden sizes of the public MVSIB
code; `hidden` changes them. Views are a Python tuple of (B, d_v) arrays of different widths;
embeddings come back stacked as (V, B, 256). With `normalize` (MVSIB's default) the
representations z^(v) are the ℓ2-normalized encoder outputs ("all representations are
ℓ2-normalized", §3.5.3; Appendix A1, C.1) and the decoders reconstruct from the encoder outputs
themselves (Eq. 2).

Missing views: every call takes an optional (B, V) presence array (1 = view present, 0 =
missing; float weights allowed). The consensus then averages only the present views, with the
softmax weights renormalized over them (Eq. 3-4 restricted to the present views); a row with no
present view (padding) gets a zero consensus embedding. The encoders still run on missing views'
rows (shapes stay fixed); their outputs are simply weighted 0.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from clustering_jax.nets.mlp import MLP, MLPAutoencoder
from clustering_jax.ops.kmeans import normalize as l2_normalize

LATENT = 256            # §4.4: "the encoder's output dimension was 256"
HIDDEN = (500, 500, 2000)


def view_weights(logits: jax.Array) -> jax.Array:
  """Eq. 4: α_v = softmax(w)_v. logits (V,) -> (V,), positive, summing to 1."""
  return jax.nn.softmax(logits)


def fuse_views(zs: jax.Array, alpha: jax.Array,
               presence: Optional[jax.Array] = None) -> jax.Array:
  """Eq. 3: z_cons = Σ_v α_v z^(v), restricted to the present views.

  Args:
    zs: (V, B, D) view embeddings.
    alpha: (V,) view weights (Eq. 4).
    presence: optional (B, V) presence weights; the weights of sample i become
      α_v p_iv / Σ_u α_u p_iu (= α_v when all views are present).
  Returns:
    (B, D); rows with no present view are 0.
  """
  if presence is None:
    return jnp.einsum("v,vbd->bd", alpha, zs)
  a = alpha[None, :] * presence.astype(zs.dtype)                     # (B, V)
  tot = jnp.sum(a, axis=1, keepdims=True)
  a = jnp.where(tot > 0, a / jnp.where(tot > 0, tot, 1.0), 0.0)
  return jnp.einsum("bv,vbd->bd", a, zs)


class MultiViewAutoencoder(nn.Module):
  """One MLP autoencoder per view plus the learnable view logits w (Eq. 1-4).

  `apply(params, views, presence=None)` returns a dict:
    zs (V, B, latent) representations z^(v) (Eq. 1; ℓ2-normalized with `normalize`), x_hat:
    tuple of (B, d_v) reconstructions g(f(x)) from the encoder outputs (for L_re, Eq. 2),
    z_cons (B, latent) = Σ_v α_v z^(v) (Eq. 3), alpha (V,) (Eq. 4).
  `method="encode"` gives the encoder outputs f(x) only, `method="consensus"` gives
  (zs, z_cons, alpha).
  The view logits start at 0 (uniform weights 1/V; the public code's 1/V start is also uniform
  after the softmax).
  """

  view_dims: Sequence[int]
  hidden: Sequence[int] = HIDDEN
  latent: int = LATENT
  act: str = "relu"
  normalize: bool = False

  def setup(self):
    self.autoencoders = [MLPAutoencoder(out_dim=int(d), hidden=tuple(self.hidden),
                                        latent=self.latent, act=self.act, name=f"view_{v}")
                         for v, d in enumerate(self.view_dims)]
    self.view_logits = self.param("view_logits", nn.initializers.zeros, (len(self.view_dims),))

  def _check(self, views):
    if len(views) != len(self.view_dims):
      raise ValueError(f"expected {len(self.view_dims)} views, got {len(views)}")
    for v, (x, d) in enumerate(zip(views, self.view_dims)):
      if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"view {v}: expected (B, {d}), got {x.shape}")

  def encode(self, views: Sequence[jax.Array]) -> jax.Array:
    """Eq. 1 for every view: tuple of (B, d_v) -> (V, B, latent)."""
    self._check(views)
    return jnp.stack([ae.encode(x) for ae, x in zip(self.autoencoders, views)])

  def decode(self, zs: jax.Array):
    """Decoders g^(v): (V, B, latent) -> tuple of (B, d_v)."""
    return tuple(ae.decode(zs[v]) for v, ae in enumerate(self.autoencoders))

  def weights(self) -> jax.Array:
    """Eq. 4: the softmax view weights α (V,)."""
    return view_weights(self.view_logits)

  def represent(self, codes: jax.Array, presence: Optional[jax.Array] = None):
    """(zs, z_cons, alpha) from the encoder outputs (V, B, latent): z^(v) (ℓ2-normalized with
    `normalize`, §3.5.3), Eq. 3 and Eq. 4."""
    zs = l2_normalize(codes) if self.normalize else codes
    alpha = self.weights()
    return zs, fuse_views(zs, alpha, presence), alpha

  def consensus(self, views: Sequence[jax.Array], presence: Optional[jax.Array] = None):
    return self.represent(self.encode(views), presence)

  def __call__(self, views: Sequence[jax.Array], presence: Optional[jax.Array] = None):
    codes = self.encode(views)
    zs, z_cons, alpha = self.represent(codes, presence)
    return {"zs": zs, "x_hat": self.decode(codes), "z_cons": z_cons, "alpha": alpha}


class UncertaintyHead(nn.Module):
  """The û head (§3.4, Eq. 45): D -> hidden -> 1, ReLU, sigmoid output in [0, 1].

  hidden defaults to D // 2 (the public code's size). (B, D) -> (B,).
  """

  hidden: Optional[int] = None
  act: str = "relu"

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    h = self.hidden or max(z.shape[-1] // 2, 1)
    return jax.nn.sigmoid(MLP((h, 1), act=self.act, name="mlp")(z))[..., 0]


class RouterMLP(nn.Module):
  """CSD router, Eq. 19: the two-layer perceptron f_i = [Δd, s, a] (B, 3) -> t_i (B, 2).

  Column 0 is the HN logit, column 1 the FN logit (the order of Eq. 19). Hidden width 64 (the
  public code's size).
  """

  hidden: int = 64
  act: str = "relu"

  @nn.compact
  def __call__(self, f: jax.Array) -> jax.Array:
    if f.shape[-1] != 3:
      raise ValueError(f"router features must be (B, 3) [Δd, s, a], got {f.shape}")
    return MLP((self.hidden, 2), act=self.act, name="mlp")(f)


class MVSIBNet(nn.Module):
  """All trainable parts of MVSIB in one parameter tree: the view autoencoders with the view
  logits, the û head (applied to the consensus embedding, as in the public code) and the
  router.

  `apply(params, views, presence=None)` returns the MultiViewAutoencoder dict plus
  u_hat (B,); `apply(params, f, method="route")` gives the router logits (B, 2).
  Initialize with `net.init(key, views, method="init_all")` so the router is created too
  (`init_params` below does that). `normalize`: unit-norm z^(v) (§3.5.3; MVSIB's Config sets
  it, the module's own default keeps the encoder outputs).
  """

  view_dims: Sequence[int]
  hidden: Sequence[int] = HIDDEN
  latent: int = LATENT
  act: str = "relu"
  head_hidden: Optional[int] = None
  router_hidden: int = 64
  normalize: bool = False

  def setup(self):
    self.mvae = MultiViewAutoencoder(self.view_dims, self.hidden, self.latent, self.act,
                                     self.normalize)
    self.u_head = UncertaintyHead(self.head_hidden, self.act)
    self.router = RouterMLP(self.router_hidden, self.act)

  def __call__(self, views: Sequence[jax.Array], presence: Optional[jax.Array] = None, *,
               decode: bool = True):
    """decode=False leaves out x_hat: the decoders are then neither run nor needed in params
    (the training stage's tree, `split_decoders`)."""
    if decode:
      out = self.mvae(views, presence)
    else:
      zs, z_cons, alpha = self.mvae.consensus(views, presence)
      out = {"zs": zs, "z_cons": z_cons, "alpha": alpha}
    out["u_hat"] = self.u_head(out["z_cons"])
    return out

  def encode(self, views: Sequence[jax.Array], presence: Optional[jax.Array] = None):
    """(zs (V, B, D), z_cons (B, D)) without decoding (for embedding the whole data set)."""
    zs, z_cons, _ = self.mvae.consensus(views, presence)
    return zs, z_cons

  def route(self, f: jax.Array) -> jax.Array:
    return self.router(f)

  def init_all(self, views: Sequence[jax.Array], presence: Optional[jax.Array] = None):
    out = self(views, presence)
    out["route_logits"] = self.route(jnp.zeros((views[0].shape[0], 3), views[0].dtype))
    return out


@functools.partial(jax.jit, static_argnums=0)
def _init_all(net: MVSIBNet, key: jax.Array, views):
  return net.init(key, views, method=MVSIBNet.init_all)


def init_params(net: MVSIBNet, key: jax.Array, view_dims: Sequence[int], *, batch: int = 2):
  """Parameters of every part of `net` from one key (dummy zero inputs of `batch` rows), in one
  compiled program per network (the same values as op by op, where every layer shape compiled
  its own initializer draw)."""
  return _init_all(net, key, tuple(jnp.zeros((batch, int(d)), jnp.float32) for d in view_dims))



def split_decoders(params):
  """(params without the view decoders, the decoders): what the training stage optimizes (Eq.
  52 has no L_re) and what stays as pre-trained. `join_decoders` puts them back."""
  mvae = params["params"]["mvae"]
  dec = {k: v["decoder"] for k, v in mvae.items() if isinstance(v, Mapping) and "decoder" in v}
  kept = {k: ({"encoder": v["encoder"]} if k in dec else v) for k, v in mvae.items()}
  return {**params, "params": {**params["params"], "mvae": kept}}, dec


def join_decoders(params, decoders):
  """Inverse of `split_decoders`: the full parameter tree."""
  mvae = {k: ({**v, "decoder": decoders[k]} if k in decoders else v)
          for k, v in params["params"]["mvae"].items()}
  return {**params, "params": {**params["params"], "mvae": mvae}}
