"""MVSIB challenging-sample disambiguation (CSD), paper 000 §3.5, Eq. 15-29 and Appendix A.

Pure, jittable, fixed-shape array functions; conventions as in `clustering_jax.ops.uncertainty`
(stacked views (V, B, ...), weights (B,) with 0 = padding, presence (B, V), float 0/1 masks).

Pieces, in the order a train step uses them:
  kNN neighbours -> `neighbour_stats` -> `local_votes` (Δd, a; Eq. 15, 17) and
  `center_similarity` (s; Eq. 16) -> `csd_features` (Eq. 18) -> router MLP (nets, Eq. 19) ->
  `route` (Eq. 20-23, undecided lowest-confidence fraction) -> `pseudo_positive_weights`
  (Eq. 24), `fn_pairs`, `fn_weight_for_bound` + `denominator_weights` + `fn_mass_ratio`
  (Eq. 25 / A.2-A.11) -> `hn_push_pull` (Eq. 26-28) with `hn_gate` (Eq. 29).
Routing metrics of §4.10: `route_codes`, `routing_consistency`, `hn_trigger_rate`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from clustering_jax.ops.distances import dot_hi, knn
from clustering_jax.ops.hypersphere import safe_norm, unit
from clustering_jax.ops.uncertainty import EPS, row_weights, view_row_weights

Scalar = Union[float, jax.Array]


# ----------------------------------------------------------------------------- neighbours
def batch_knn(zs: jax.Array, k: int, *, weights: Optional[jax.Array] = None,
              presence: Optional[jax.Array] = None) -> jax.Array:
  """Per-view kNN graph inside a batch (the paper's choice for n > 10,000, §3.3/§4.4).

  Uses `ops.knn` (Euclidean, self excluded) on each view. Rows that are padding or miss the view
  are first moved to one point farther from every valid row than any two valid rows are from
  each other (norm 3R + 1, R the largest valid norm), so a valid row never takes one of them
  as a neighbour while k valid neighbours exist; any such slot left gets weight 0 in
  `neighbour_stats`. (The global graph for n < 10,000 is `ops.knn` on the whole data set.)

  Args:
    zs: (V, B, D); k: neighbours (k < B); weights (B,), presence (B, V) optional.
  Returns:
    (V, B, k) int32 indices into the batch.
  """
  n_views, n, _ = zs.shape
  vw = view_row_weights(weights, presence, n_views, n, zs.dtype) > 0          # (V, B)
  zs = jax.lax.stop_gradient(zs)

  def one(z, ok):
    r = jnp.max(jnp.where(ok, safe_norm(z), 0.0))
    far = jnp.zeros_like(z[0]).at[0].set(3.0 * r + 1.0)
    return knn(jnp.where(ok[:, None], z, far[None, :]), k)[1]

  return jax.vmap(one)(zs, vw)


class Neighbours(NamedTuple):
  labels: jax.Array    # (V, B, k) cluster labels of the neighbours
  dists: jax.Array     # (V, B, k) Euclidean distances in view v
  weights: jax.Array   # (V, B, k) 0 for a padding / missing-view neighbour or anchor


def neighbour_stats(z_anchor: jax.Array, z_ref: jax.Array, idx: jax.Array,
                    ref_labels: jax.Array, *, ref_weights: Optional[jax.Array] = None,
                    ref_presence: Optional[jax.Array] = None,
                    anchor_weights: Optional[jax.Array] = None,
                    anchor_presence: Optional[jax.Array] = None) -> Neighbours:
  """Labels, distances and weights of each anchor's k neighbours, per view.

  Args:
    z_anchor: (V, B, D) anchor embeddings per view.
    z_ref: (V, n, D) embeddings of the reference set the indices point into (the whole data
      set for the global graph, the batch itself for `batch_knn`).
    idx: (V, B, k) or (1, B, k) int neighbour indices (one graph shared by all views, e.g.
      the global graph on z_cons, is broadcast).
    ref_labels: (n,) int cluster labels of the reference rows.
    ref_weights (n,), ref_presence (n, V): optional; a neighbour that is padding or misses
      view v gets weight 0 in view v. anchor_weights (B,), anchor_presence (B, V): optional.
  Returns:
    Neighbours(labels, dists, weights), each (V, B, k). Distances carry no gradient (the CSD
    features are router inputs, not a loss).
  """
  n_views, n_batch, _ = z_anchor.shape
  idx = jnp.broadcast_to(jnp.asarray(idx), (n_views,) + idx.shape[1:])
  z_anchor = jax.lax.stop_gradient(z_anchor)
  z_ref = jax.lax.stop_gradient(z_ref)
  nbr = jax.vmap(lambda zr, ix: zr[ix])(z_ref, idx)                              # (V, B, k, D)
  dists = safe_norm(z_anchor[:, :, None, :] - nbr)
  rw = view_row_weights(ref_weights, ref_presence, n_views, z_ref.shape[1], z_anchor.dtype)
  aw = view_row_weights(anchor_weights, anchor_presence, n_views, n_batch, z_anchor.dtype)
  w = jax.vmap(lambda r, ix: r[ix])(rw, idx) * aw[:, :, None]
  return Neighbours(jnp.asarray(ref_labels)[idx], dists, w)


class Votes(NamedTuple):
  delta_d: jax.Array      # (B,) Δd_i, Eq. 15
  a: jax.Array            # (B,) a_i, Eq. 17
  delta_d_view: jax.Array  # (V, B)
  a_view: jax.Array        # (V, B)


def local_votes(anchor_labels: jax.Array, nb: Neighbours, *,
                presence: Optional[jax.Array] = None, weights: Optional[jax.Array] = None,
                eps: float = EPS) -> Votes:
  """Local voting difference Δd (Eq. 15) and cross-view distance contrast a (Eq. 17).

  Per view: p = Σ w [same label], q = Σ w [other label] over the k neighbours,
  Δd^(v) = (p - q)/(p + q + ε); d_pos, d_neg = mean distance to same / other-label neighbours,
  a^(v) = (d_neg - d_pos)/(d_neg + d_pos + ε). When one side has no neighbour its mean distance
  is taken as larger than any seen (the limit d -> ∞): a^(v) = +1 with no other-label
  neighbour, -1 with no same-label neighbour, 0 with none. Both are then averaged over the
  present views (1/V Σ_v with all views present); a row with no present view gets 0.

  Args:
    anchor_labels: (B,) int; nb: `neighbour_stats` output; presence (B, V), weights (B,).
  Returns:
    Votes(delta_d (B,), a (B,), delta_d_view (V, B), a_view (V, B)).
  """
  n_views, n, _ = nb.labels.shape
  eq = (nb.labels == anchor_labels[None, :, None]).astype(nb.dists.dtype)
  same, diff = eq * nb.weights, (1.0 - eq) * nb.weights
  p, q = jnp.sum(same, -1), jnp.sum(diff, -1)
  dd_v = (p - q) / (p + q + eps)                                                 # Eq. 15
  d_pos = jnp.sum(same * nb.dists, -1) / jnp.where(p > 0, p, 1.0)
  d_neg = jnp.sum(diff * nb.dists, -1) / jnp.where(q > 0, q, 1.0)
  a_v = (d_neg - d_pos) / (d_neg + d_pos + eps)                                  # Eq. 17
  a_v = jnp.where((p > 0) & (q > 0), a_v, jnp.where(p > 0, 1.0, jnp.where(q > 0, -1.0, 0.0)))
  vw = view_row_weights(weights, presence, n_views, n, nb.dists.dtype) > 0
  cnt = jnp.sum(vw, axis=0)
  mean = lambda x: jnp.where(cnt > 0, jnp.sum(jnp.where(vw, x, 0.0), 0) / jnp.maximum(cnt, 1), 0.0)
  return Votes(mean(dd_v), mean(a_v), jnp.where(vw, dd_v, 0.0), jnp.where(vw, a_v, 0.0))


def csd_votes(zs: jax.Array, labels: jax.Array, k: int, *, z_graph: Optional[jax.Array] = None,
              weights: Optional[jax.Array] = None,
              presence: Optional[jax.Array] = None) -> Votes:
  """Δd and a (Eq. 15, 17) of every row of zs from the kNN graph of those same rows (a batch,
  or the whole data set for the global graph of §4.4): `batch_knn` per view of zs, or one
  graph on z_graph (1, n, D) shared by the views (e.g. z^cons, §3.3), then `neighbour_stats`
  and `local_votes`. zs (V, n, D), labels (n,), weights (n,), presence (n, V)."""
  graph = batch_knn(zs if z_graph is None else z_graph, k, weights=weights,
                    presence=presence if z_graph is None else None)
  nb = neighbour_stats(zs, zs, graph, labels, ref_weights=weights, ref_presence=presence,
                       anchor_weights=weights, anchor_presence=presence)
  return local_votes(labels, nb, presence=presence, weights=weights)


def center_similarity(z_cons: jax.Array, centers: jax.Array, labels: jax.Array) -> jax.Array:
  """Eq. 16: s_i = cos(z_i^cons, u_{l_i}^cons). z_cons (B, D), centers (C, D), labels (B,)."""
  return jnp.sum(unit(z_cons) * unit(centers)[labels], axis=-1)


def csd_features(delta_d: jax.Array, s: jax.Array, a: jax.Array, *,
                 weights: Optional[jax.Array] = None) -> jax.Array:
  """Eq. 18: f_i = [Δd_i, s_i, a_i] -> (B, 3), zero on padding rows, no gradient."""
  f = jnp.stack([delta_d, s, a], axis=-1)
  f = f * row_weights(weights, f.shape[0], f.dtype)[:, None]
  return jax.lax.stop_gradient(jnp.where(jnp.isfinite(f), f, 0.0))


# ----------------------------------------------------------------------------- router
class Route(NamedTuple):
  p_hn: jax.Array       # (B,) Eq. 20
  p_fn: jax.Array       # (B,) Eq. 21
  conf: jax.Array       # (B,) c_i, Eq. 23
  fn: jax.Array         # (B,) FN weight: 1 on routed-FN rows (value), straight-through grad
  hn: jax.Array         # (B,) HN weight: 1 on routed-HN rows (value), straight-through grad
  undecided: jax.Array  # (B,) 1 on the candidates left undecided
  decided: jax.Array    # (B,) candidates - undecided


def route(logits: jax.Array, candidates: jax.Array, *, undecided_frac: Scalar = 0.1,
          straight_through: bool = True) -> Route:
  """Router decisions, Eq. 20-23.

  p = softmax(t) with t = [t_HN, t_FN] (Eq. 20-21); a candidate is FN when p_FN > p_HN, else
  HN (Eq. 22); c = max(p) (Eq. 23). Among the candidates (the uncertain valid rows of the
  batch) the floor(undecided_frac · n_candidates) with the lowest c (ties: lower index first)
  are "undecided" and get weight 0 in both branches; pass undecided_frac = 0 once training is
  past the "early stages" of §3.5.1.

  straight_through: the returned fn / hn weights equal the hard 0/1 decisions in value, and
  carry the gradient of p_FN / p_HN (hard + p - stop_gradient(p)), so the router is trained
  "end-to-end via the chain gradients" of the losses that use them (§3.7.2). Undecided rows
  have no gradient.

  Args:
    logits: (B, 2) router outputs; candidates: (B,) 0/1 weights (U_t · valid).
  Returns:
    Route(p_hn, p_fn, conf, fn, hn, undecided, decided), each (B,).
  """
  p = jax.nn.softmax(logits, axis=-1)
  p_hn, p_fn = p[:, 0], p[:, 1]
  conf = jnp.max(p, axis=-1)
  cand = candidates > 0
  n_cand = jnp.sum(cand)
  n_und = jnp.floor(n_cand.astype(jnp.float32) * undecided_frac).astype(jnp.int32)
  key = jnp.where(cand, jax.lax.stop_gradient(conf), jnp.inf)
  order = jnp.argsort(key, stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))
  und = cand & (rank < n_und)
  dec = (cand & ~und).astype(logits.dtype)
  is_fn = (p_fn > p_hn).astype(logits.dtype)
  fn, hn = dec * is_fn, dec * (1.0 - is_fn)
  if straight_through:
    fn = fn + dec * (p_fn - jax.lax.stop_gradient(p_fn))
    hn = hn + dec * (p_hn - jax.lax.stop_gradient(p_hn))
  return Route(p_hn, p_fn, conf, fn, hn, und.astype(logits.dtype), dec)


# ----------------------------------------------------------------------------- FN handling
def _same_cluster(labels, weights):
  n = labels.shape[0]
  w = row_weights(weights, n)
  same = (labels[:, None] == labels[None, :]).astype(jnp.float32)
  return same * w[:, None] * w[None, :]


def pseudo_positive_weights(labels: jax.Array, fn: jax.Array, *, pi_fn: Scalar = 0.1,
                            weights: Optional[jax.Array] = None) -> jax.Array:
  """Eq. 24: y^pse_ij = 1 (same cluster, neither FN), π_FN (same cluster, i or j FN), 0 else.

  Written as [l_i = l_j] (π + (1 - π)(1 - fn_i)(1 - fn_j)), equal to Eq. 24 for 0/1 fn and
  differentiable in a straight-through fn. The diagonal (the sample with itself, the
  cross-view positive of Eq. 44) follows the same rule. Padding rows and columns are 0.

  labels (B,) int, fn (B,) FN weights -> (B, B).
  """
  same = _same_cluster(labels, weights)
  keep = (1.0 - fn)[:, None] * (1.0 - fn)[None, :]
  return same * (pi_fn + (1.0 - pi_fn) * keep)


def fn_pairs(labels: jax.Array, fn: jax.Array, *,
             weights: Optional[jax.Array] = None) -> jax.Array:
  """FN(i) of Appendix A.3 as a (B, B) weight: 1 where r ≠ i, l_r = l_i and i or r is routed
  FN (same-cluster pairs that the FN soft mask acts on, mirroring Eq. 24's i ∈ FN ∨ j ∈ FN)."""
  same = _same_cluster(labels, weights)
  either = 1.0 - (1.0 - fn)[:, None] * (1.0 - fn)[None, :]
  return same * either * (1.0 - jnp.eye(labels.shape[0], dtype=same.dtype))


def base_denominator_weights(n: int, weights: Optional[jax.Array] = None) -> jax.Array:
  """(B, B) weight of candidate r in anchor i's denominator before FN masking: w_i w_r, r ≠ i
  (A.1 sums over r ≠ i)."""
  w = row_weights(weights, n)
  return w[:, None] * w[None, :] * (1.0 - jnp.eye(n, dtype=w.dtype))


def denominator_weights(fn_pair: jax.Array, w_fn, *,
                        weights: Optional[jax.Array] = None) -> jax.Array:
  """Appendix A.2: ω_ir = w_FN for r ∈ FN(i), 1 otherwise (r ≠ i, valid).

  ω = base · (1 - f + f · w_FN,i), f = fn_pair. w_fn: a scalar (g π_FN) or a per-anchor (B,)
  weight (e.g. from `fn_weight_for_bound`). Returns (B, B).
  """
  base = base_denominator_weights(fn_pair.shape[0], weights)
  w = jnp.broadcast_to(jnp.asarray(w_fn, fn_pair.dtype), (fn_pair.shape[0],))[:, None]
  return base * (1.0 - fn_pair + fn_pair * w)


def weighted_logsumexp(logits: jax.Array, b: jax.Array) -> jax.Array:
  """log Σ_r b_r e^{logits_r} along the last axis, b >= 0; -inf where Σ b = 0. Never nan, in
  value or gradient: a zero weight removes a term exactly, whatever its logit."""
  pos = b > 0
  m = jnp.max(jnp.where(pos, logits, -jnp.inf), axis=-1, keepdims=True)
  m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  x = jnp.where(pos, logits, m)
  s = jnp.sum(jnp.where(pos, b, 0.0) * jnp.exp(x - m), axis=-1)
  return jnp.where(s > 0, jnp.log(jnp.where(s > 0, s, 1.0)) + m[..., 0], -jnp.inf)


def fn_mass_ratio(logits: jax.Array, fn_pair: jax.Array, denom_w: jax.Array) -> jax.Array:
  """Eq. 25 / A.5: θ_i = Σ_{r ∈ FN(i)} ω_ir e^{s_ir} / Σ_r ω_ir e^{s_ir}.

  Args:
    logits: (B, B) s_ir = sim(z_i, z_r)/τ of the InfoNCE denominator.
    fn_pair: (B, B) FN(i) weights (`fn_pairs`); denom_w: (B, B) ω (`denominator_weights`).
  Returns:
    (B,) θ in [0, 1]; 0 for an anchor with no FN pair or an empty denominator.
  """
  num = weighted_logsumexp(logits, denom_w * fn_pair)
  den = weighted_logsumexp(logits, denom_w)
  return jnp.where(jnp.isfinite(num) & jnp.isfinite(den), jnp.exp(num - den), 0.0)


def fn_weight_for_bound(logits: jax.Array, fn_pair: jax.Array, w_fn, bound, *,
                        weights: Optional[jax.Array] = None) -> jax.Array:
  """The rule that keeps θ_i (Eq. 25) under a bound by scaling the FN weight (our choice).

  With ω_ir = w for r ∈ FN(i) and 1 otherwise, A.6 gives θ_i = w / (w + κ_i),
  κ_i = Σ_{r ∉ FN(i)} e^{s_ir} / Σ_{r ∈ FN(i)} e^{s_ir} (A.7). So θ_i <= Θ  <=>
  w <= Θ κ_i / (1 - Θ) (the closed form behind A.11), and the rule is
      w_i = min(w_FN, Θ_i κ_i / (1 - Θ_i))    (w_i = w_FN when Θ_i >= 1; 0 when Θ_i <= 0).
  It only lowers the weight (never raises it above g π_FN), per anchor, and carries no
  gradient (it is a weight, like the masks). Computed in log space.

  Args:
    logits: (B, B) s/τ of the denominator; fn_pair: (B, B); w_fn: scalar or (B,) g π_FN;
    bound: scalar or (B,) Θ (a constant, or `theta_bound_from_batch`); weights: optional (B,).
  Returns:
    (B,) per-anchor FN weights to pass to `denominator_weights`.
  """
  logits = jax.lax.stop_gradient(logits)
  fn_pair = jax.lax.stop_gradient(fn_pair)
  n = logits.shape[0]
  base = base_denominator_weights(n, weights)
  w_fn = jnp.broadcast_to(jnp.asarray(w_fn, logits.dtype), (n,))
  bound = jnp.broadcast_to(jnp.asarray(bound, logits.dtype), (n,))
  log_kappa = (weighted_logsumexp(logits, base * (1.0 - fn_pair))                 # A.7
               - weighted_logsumexp(logits, base * fn_pair))
  b = jnp.clip(bound, 1e-30, 1.0 - 1e-7)
  cap = jnp.exp(jnp.log(b) - jnp.log1p(-b) + log_kappa)     # Θ κ / (1 - Θ); inf with no FN
  w = jnp.minimum(w_fn, jnp.where(jnp.isnan(log_kappa), w_fn, cap))
  w = jnp.where(bound >= 1.0, w_fn, jnp.where(bound <= 0.0, 0.0, w))
  return jax.lax.stop_gradient(w)


def theta_bound_from_batch(anchor: jax.Array, pos_cand: jax.Array, den_cand: jax.Array,
                           center: jax.Array, pos_w: jax.Array, fn_pair: jax.Array,
                           denom_base: jax.Array) -> jax.Array:
  """Batch estimate of the safe bound Θ_i of Appendix A.5-A.11 (optional alternative to a
  constant bound).

  With unit vectors, u = the anchor's own cluster center, s_iu = <z_i, u>, and
  A_i(b) = <b, u> - s_iu <z_i, b> (A.4): μ+ = mean of A_i over the positives (weights pos_w),
  μ_FN = mean over FN(i), μ- = mean over the other denominator terms; the update does not
  move z_i away from u when μ- + θ (μ_FN - μ-) <= μ+ (A.9-A.10). Θ_i is the largest θ in
  [0, 1] with that: 1 if μ_FN <= μ+; 0 if μ- > μ+; else (μ+ - μ-)/(μ_FN - μ-) (A.11).
  Empty sets: no FN or no positive -> Θ = 1; no other term -> μ- = 0 (A.5 has μ- >= 0).

  Args:
    anchor: (B, D) z_i^(v); pos_cand: (B, D) numerator candidates (z^cons in Eq. 44);
    den_cand: (B, D) denominator candidates (z^(v)); center: (B, D) u_{c*} of each anchor;
    pos_w: (B, B) numerator weights; fn_pair: (B, B); denom_base: (B, B) validity of the
    denominator terms (`base_denominator_weights`).
  Returns:
    (B,) Θ in [0, 1], no gradient.
  """
  z, u = unit(anchor), unit(center)
  s_iu = jnp.sum(z * u, -1, keepdims=True)

  def a_of(cand):                                    # A_i(b_r) for all (i, r): (B, B)
    cb = unit(cand)
    return dot_hi(u, cb.T) - s_iu * dot_hi(z, cb.T)

  def mean(a, w):
    tot = jnp.sum(w, -1)
    return jnp.sum(a * w, -1) / jnp.where(tot > 0, tot, 1.0), tot > 0

  mu_p, has_p = mean(a_of(pos_cand), pos_w)
  a_den = a_of(den_cand)
  mu_fn, has_fn = mean(a_den, denom_base * fn_pair)
  mu_m, has_m = mean(a_den, denom_base * (1.0 - fn_pair))
  mu_m = jnp.where(has_m, mu_m, 0.0)
  mid = (mu_p - mu_m) / jnp.where(mu_fn - mu_m > 0, mu_fn - mu_m, 1.0)
  theta = jnp.where(mu_fn <= mu_p, 1.0, jnp.where(mu_m > mu_p, 0.0, mid))
  theta = jnp.where(has_fn & has_p, jnp.clip(theta, 0.0, 1.0), 1.0)
  return jax.lax.stop_gradient(theta)


# ----------------------------------------------------------------------------- HN handling
def hn_gate(u_bar, mu_start: float, mu_end: float) -> jax.Array:
  """Eq. 29: g = clip((ū - μ_start)/(μ_end - μ_start), 0, 1), ū the batch mean uncertainty.
  (The text says g = 0 above μ_end; the equation, followed here, gives 1.)"""
  return jnp.clip((jnp.asarray(u_bar) - mu_start) / (mu_end - mu_start), 0.0, 1.0)


HN_VARIANTS = ("paper", "appendix", "triplet")


class PushPull(NamedTuple):
  push: jax.Array     # () L_push, Eq. 28 (mean over H)
  pull: jax.Array     # () L_pull, Eq. 28
  push_i: jax.Array   # (B,) Eq. 26 per row
  pull_i: jax.Array   # (B,) Eq. 27 per row
  s_plus: jax.Array   # (B,) cos(z_i, u+)
  s_minus: jax.Array  # (B,) cos(z_i, u-)


def hn_push_pull(z: jax.Array, centers: jax.Array, labels: jax.Array, hn: jax.Array, *,
                 margin: float = 0.2, variant: str = "paper",
                 center_weights: Optional[jax.Array] = None) -> PushPull:
  """HN push/pull for one view, Eq. 26-28.

  u+ = u_{l_i} (the assigned center), u- = the different-cluster center with the highest
  cosine to z_i (the nearest in angle; only centers with center_weights > 0 compete).
  variant:
    "paper"    push = max(0, cos(z,u+) - cos(z,u-) + m) (Eq. 26), pull = 1 - cos(z,u+) (Eq. 27);
    "appendix" push as Eq. 26, pull = 1 - cos(z,u-) (Appendix C.3);
    "triplet"  push = max(0, cos(z,u-) - cos(z,u+) + m), pull = 1 - cos(z,u+) (the prose
               reading of §3.5.3: toward u+, away from u-).
  L_push, L_pull = (1/|H|) Σ_{i∈H} (Eq. 28) with H weighted by hn (the router's HN weight, which
  also selects valid rows); |H| carries no gradient. A row with no other center (C = 1) has no
  push term. Both are 0 when H is empty.

  Args:
    z: (B, D) z^(v); centers: (C, D) u^(v); labels: (B,) int; hn: (B,) HN weights.
  Returns:
    PushPull(push, pull, push_i, pull_i, s_plus, s_minus).
  """
  if variant not in HN_VARIANTS:
    raise ValueError(f"variant must be one of {HN_VARIANTS}, got {variant!r}")
  n_clusters = centers.shape[0]
  cos = dot_hi(unit(z), unit(centers).T)                                         # (B, C)
  onehot = jax.nn.one_hot(labels, n_clusters, dtype=cos.dtype)
  s_plus = jnp.sum(cos * onehot, -1)
  cw = jnp.ones((n_clusters,), bool) if center_weights is None else center_weights > 0
  other = (onehot == 0) & cw[None, :]
  has_other = jnp.any(other, -1)
  s_minus = jnp.max(jnp.where(other, cos, -jnp.inf), -1)
  s_minus = jnp.where(has_other, s_minus, 0.0)
  if variant == "triplet":
    push_i = jax.nn.relu(s_minus - s_plus + margin)
  else:
    push_i = jax.nn.relu(s_plus - s_minus + margin)                              # Eq. 26
  push_i = jnp.where(has_other, push_i, 0.0)
  pull_i = 1.0 - (s_minus if variant == "appendix" else s_plus)                 # Eq. 27
  size = jax.lax.stop_gradient(jnp.sum(hn))
  denom = jnp.where(size > 0, size, 1.0)
  return PushPull(jnp.sum(hn * push_i) / denom, jnp.sum(hn * pull_i) / denom,    # Eq. 28
                  push_i, pull_i, s_plus, s_minus)


def hn_push_pull_views(zs: jax.Array, centers: jax.Array, labels: jax.Array, hn: jax.Array,
                       *, presence: Optional[jax.Array] = None, margin: float = 0.2,
                       variant: str = "paper", center_weights: Optional[jax.Array] = None):
  """Eq. 26-28 for every view: zs (V, B, D), centers (V, C, D), labels (B,) (consensus
  pseudo-labels) or (V, B), hn (B,); H in view v is restricted to rows present in v.
  center_weights: optional (V, C). Returns (push (V,), pull (V,))."""
  n_views, n, _ = zs.shape
  labels = jnp.broadcast_to(labels, (n_views, n))
  hv = view_row_weights(None, presence, n_views, n, zs.dtype) * hn[None, :]
  cw = jnp.ones(centers.shape[:2], bool) if center_weights is None else center_weights
  out = jax.vmap(lambda z, c, l, h, w: hn_push_pull(z, c, l, h, margin=margin, variant=variant,
                                                    center_weights=w)[:2])(zs, centers, labels,
                                                                           hv, cw)
  return out[0], out[1]


# ----------------------------------------------------------------------------- §4.10 metrics
def route_codes(fn: jax.Array, hn: jax.Array) -> jax.Array:
  """Routing labels r(i): 1 = FN, 0 = HN, -1 = not routed (certain, undecided or padding)."""
  f, h = jax.lax.stop_gradient(fn) > 0.5, jax.lax.stop_gradient(hn) > 0.5
  return jnp.where(f, 1, jnp.where(h, 0, -1)).astype(jnp.int32)


def routing_consistency(prev: jax.Array, cur: jax.Array):
  """§4.10.1 RC_t: the share of samples routed at both t-1 and t whose label is unchanged.
  prev, cur: (n,) codes of `route_codes`. Returns (rc, n_common); rc = 0 when none."""
  both = (prev >= 0) & (cur >= 0)
  n = jnp.sum(both)
  rc = jnp.sum(both & (prev == cur)) / jnp.maximum(n, 1)
  return jnp.where(n > 0, rc, 0.0), n


def hn_trigger_rate(codes: jax.Array) -> jax.Array:
  """§4.10.1 HN_t = |{routed as HN}| / |routed|; 0 when nothing is routed."""
  routed = codes >= 0
  return jnp.sum(codes == 0) / jnp.maximum(jnp.sum(routed), 1)


def record_codes(codes: jax.Array, idx: jax.Array, weights: jax.Array,
                 batch_codes: jax.Array) -> jax.Array:
  """The epoch's (n,) route codes with a batch's written in: rows idx (B,) with weight > 0 take
  batch_codes (B,); padding rows (weight 0, any index) change nothing."""
  n = codes.shape[0]
  hit = jnp.zeros((n,)).at[idx].add(weights)
  val = jnp.zeros((n,)).at[idx].add(weights * batch_codes)
  return jnp.where(hit > 0, val, codes).astype(jnp.int32)


def routing_summary(prev: jax.Array, cur: jax.Array) -> dict:
  """§4.10.1 for one epoch from its route codes and the previous epoch's: n_fn, n_hn (samples
  routed FN / HN), hn_rate (`hn_trigger_rate`), rc and rc_n (`routing_consistency`)."""
  rc, rc_n = routing_consistency(prev, cur)
  return {"n_fn": jnp.sum(cur == 1), "n_hn": jnp.sum(cur == 0), "hn_rate": hn_trigger_rate(cur),
          "rc": rc, "rc_n": rc_n}
