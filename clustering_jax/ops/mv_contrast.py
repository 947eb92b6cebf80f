"""MVSIB hierarchical contrast and stage objectives, paper 000 §3.6.2 (Eq. 39-43) and §3.7
(Eq. 44-52), and the pre-training objective L_re (Eq. 2).

Pure, jittable, fixed-shape array functions; conventions as in `clustering_jax.ops.uncertainty`
(stacked views (V, B, D), weights (B,) with 0 = padding, presence (B, V)). Similarities are
cosines (embeddings are l2-normalized inside, Appendix A.1), divided by the temperature τ.
Every log-ratio is computed in log space from weighted log-sum-exps, so a zero weight removes a
term exactly and an empty set gives a 0 loss instead of nan.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from clustering_jax.ops.distances import dot_hi
from clustering_jax.ops.hypersphere import unit
from clustering_jax.ops.minority import PseudoSamples, batch_cluster_stats
from clustering_jax.ops.routing import (base_denominator_weights, denominator_weights,
                                        fn_mass_ratio, fn_pairs, fn_weight_for_bound,
                                        pseudo_positive_weights, theta_bound_from_batch,
                                        weighted_logsumexp)
from clustering_jax.ops.uncertainty import row_weights, uncertain_ratio, view_row_weights

TAU = 0.5   # §4.4: "the temperature parameter was fixed at 0.5"


def cosine_matrix(a: jax.Array, b: jax.Array) -> jax.Array:
  """cos(a_i, b_j): a (n, D), b (m, D) -> (n, m) (zero rows give 0)."""
  return dot_hi(unit(a), unit(b).T)


def _wmean(x, w):
  tot = jnp.sum(w)
  return jnp.where(tot > 0, jnp.sum(jnp.where(w > 0, w * x, 0.0)) / jnp.where(tot > 0, tot, 1.0),
                   0.0)


# ----------------------------------------------------------------------------- Eq. 2
def reconstruction_loss(views, x_hat, *, weights: Optional[jax.Array] = None,
                        presence: Optional[jax.Array] = None, reduction: str = "sum") -> jax.Array:
  """Eq. 2: L_re = Σ_v ||x^(v) - g(z^(v))||², per row summed ("sum", as written) or averaged
  ("mean") over the features, summed over the present views, averaged over the valid rows.
  views, x_hat: V arrays (B, d_v); weights (B,), presence (B, V) optional. Returns ()."""
  red = {"sum": jnp.sum, "mean": jnp.mean}[reduction]
  per = jnp.stack([red((x - xh) ** 2, -1) for x, xh in zip(views, x_hat)])        # (V, B)
  vw = view_row_weights(weights, presence, len(views), per.shape[1], per.dtype)
  return jnp.sum(per * vw) / jnp.maximum(jnp.sum(row_weights(weights, per.shape[1])), 1.0)


# ----------------------------------------------------------------------------- Eq. 39-43
def cluster_contrast(cons_centers: jax.Array, view_centers: jax.Array, ps: PseudoSamples,
                     cluster_w: jax.Array, *, tau: float = TAU, eps: float = 1e-8) -> jax.Array:
  """Cluster-level contrast with pseudo-sample positives and negatives for one view, Eq. 39-43.

  For each cluster c (with cluster_w_c > 0):
    P_c = exp(cos(u_c, μ_c^(v))/τ) + [c ∈ M] Σ_p exp(cos(u_c, ψ_{c,p})/τ)          (Eq. 39)
    N_c = Σ_{j≠c} exp(cos(u_c, u_j)/τ) + Σ_{j≠c, j∈M} Σ_p exp(cos(u_c, ψ_{j,p})/τ)  (Eq. 40-41)
    ℓ_c = -log(P_c / (P_c + N_c + ε))                                              (Eq. 42)
  L_c^(v) = mean of ℓ_c over the clusters with cluster_w > 0 (Eq. 43's 1/C when all are
  present); only such clusters enter N_c. [c ∈ M] and the sum over p come from ps.weight.

  Args:
    cons_centers: (C, D) u_c^cons (e.g. batch means of z^cons by pseudo-label, Eq. 30);
    view_centers: (C, D) μ_c^(v) (batch means of z^(v)); ps: `minority.pseudo_samples`;
    cluster_w: (C,) weight of each cluster (its presence in the batch).
  Returns:
    () L_c^(v).
  """
  n_clusters, n_pseudo, d = ps.psi.shape
  cw = (cluster_w > 0).astype(cons_centers.dtype)
  s_cv = jnp.sum(unit(cons_centers) * unit(view_centers), -1) / tau                  # (C,)
  s_cc = cosine_matrix(cons_centers, cons_centers) / tau                             # (C, C)
  s_cp = (cosine_matrix(cons_centers, ps.psi.reshape(-1, d)) / tau
          ).reshape(n_clusters, n_clusters, n_pseudo)                                # (C, C, P)
  eye = jnp.eye(n_clusters, dtype=cw.dtype)
  pw = ps.weight * cw[:, None]
  pos = jnp.concatenate([s_cv[:, None], jnp.diagonal(s_cp, 0, 0, 1).T], -1)       # (C, 1 + P)
  pos_w = jnp.concatenate([jnp.ones((n_clusters, 1), cw.dtype), pw], -1)
  neg = jnp.concatenate([s_cc, s_cp.reshape(n_clusters, -1)], -1)
  neg_w = jnp.concatenate([(1.0 - eye) * cw[None, :],
                           ((1.0 - eye)[:, :, None] * pw[None, :, :]).reshape(n_clusters, -1)], -1)
  log_p = weighted_logsumexp(pos, pos_w)
  log_n = weighted_logsumexp(neg, neg_w)
  log_tot = jnp.logaddexp(jnp.logaddexp(log_p, log_n), jnp.log(eps))
  return _wmean(log_tot - log_p, cw)                                                 # Eq. 42-43


def cluster_contrast_views(cons_centers: jax.Array, view_centers: jax.Array, ps: PseudoSamples,
                           cluster_w: jax.Array, *, tau: float = TAU) -> jax.Array:
  """Eq. 43 for every view: view_centers (V, C, D), cluster_w (C,) or (V, C) (a cluster with no
  present member in view v is left out there). Returns (V,)."""
  cw = jnp.broadcast_to(cluster_w, view_centers.shape[:2])
  return jax.vmap(lambda vc, w: cluster_contrast(cons_centers, vc, ps, w, tau=tau))(view_centers,
                                                                                    cw)



def cluster_contrast_batch(zs: jax.Array, labels: jax.Array, ps: PseudoSamples, *,
                           view_weights: Optional[jax.Array] = None,
                           tau: float = TAU) -> jax.Array:
  """Eq. 39-43 on a batch for every view: u_c^cons = ps.means (the batch means of z^cons by
  pseudo-label, Eq. 30) and μ_c^(v) = the batch means of z^(v) over the rows with weight in
  view_weights (V, B) (padding and missing views 0); a cluster without such a row is left out
  in view v. zs (V, B, D), labels (B,). Returns (V,)."""
  n_views, n, _ = zs.shape
  vw = jnp.ones((n_views, n), zs.dtype) if view_weights is None else view_weights
  cnt_v, mu_v = jax.vmap(lambda z, w: batch_cluster_stats(z, labels, ps.means.shape[0],
                                                          weights=w))(zs, vw)
  return cluster_contrast_views(ps.means, mu_v, ps, cnt_v, tau=tau)

# ----------------------------------------------------------------------------- Eq. 44 (SCL)
def feature_contrast(z_view: jax.Array, z_cons: jax.Array, pos_w: jax.Array,
                     denom_w: jax.Array, *, tau: float = TAU,
                     anchor_w: Optional[jax.Array] = None) -> jax.Array:
  """Sample-level contrast of one view, Eq. 44 with the denominator weights of Appendix A.1:

  ℓ_i = -log[ Σ_j w_ij exp(cos(z_i^(v), z_j^cons)/τ) / Σ_r ω_ir exp(cos(z_i^(v), z_r^(v))/τ) ]

  Args:
    z_view: (B, D) z^(v); z_cons: (B, D) z^cons.
    pos_w: (B, B) numerator weights w_ij = y^pse_ij (Eq. 24; includes j = i).
    denom_w: (B, B) ω_ir (A.2; 0 on r = i and on padding / missing-view columns).
    anchor_w: optional (B,) anchor weights (0 = padding or view v missing).
  Returns:
    () the mean of ℓ_i over the anchors with weight > 0 and a non-empty numerator and
    denominator (Eq. 44's 1/N).
  """
  n = z_view.shape[0]
  a = row_weights(anchor_w, n, z_view.dtype)
  log_num = weighted_logsumexp(cosine_matrix(z_view, z_cons) / tau, pos_w)
  log_den = weighted_logsumexp(cosine_matrix(z_view, z_view) / tau, denom_w)
  ok = jnp.isfinite(log_num) & jnp.isfinite(log_den) & (a > 0)
  li = jnp.where(ok, log_den - log_num, 0.0)
  return _wmean(li, a * ok)


class SCL(NamedTuple):
  loss: jax.Array    # (V,) L_feat^(v), Eq. 44
  theta: jax.Array   # (V, B) FN softmax mass ratio θ_i, Eq. 25 (after the bound rule)
  w_fn: jax.Array    # (V, B) FN weight used per anchor (g π_FN, lowered by the bound rule)
  bound: jax.Array   # (V, B) the bound Θ_i in force (1 = none)


def scl_views(zs: jax.Array, z_cons: jax.Array, labels: jax.Array, fn: jax.Array, *,
              tau: float = TAU, pi_fn: float = 0.1, w_fn=0.1, theta_bound=None,
              centers: Optional[jax.Array] = None, weights: Optional[jax.Array] = None,
              presence: Optional[jax.Array] = None) -> SCL:
  """Eq. 44 for every view with the FN handling of §3.5.2 / Appendix A assembled:

  numerator weights y^pse (Eq. 24, π_FN = pi_fn) over z^cons; denominator over z_r^(v), r ≠ i,
  with ω = w_FN on FN(i) (A.2) where w_FN = w_fn (the paper's g·π_FN), lowered per anchor by
  `routing.fn_weight_for_bound` so that θ_i <= Θ_i; θ_i (Eq. 25) is returned for logging.

  Args:
    zs: (V, B, D); z_cons: (B, D); labels: (B,) pseudo-labels; fn: (B,) FN weights (`route`).
    theta_bound: None (no bound), a constant Θ, a (B,) / (V, B) array, or "batch": Θ_i
      estimated from the batch by `routing.theta_bound_from_batch` (Appendix A.11) with the
      anchor's own view-v center centers[v, labels[i]] as the true center.
    centers: (V, C, D) view centers u^(v), needed for theta_bound="batch".
    weights (B,), presence (B, V): optional.
  Returns:
    SCL(loss (V,), theta (V, B), w_fn (V, B), bound (V, B)).
  """
  n_views, n, _ = zs.shape
  w = row_weights(weights, n, zs.dtype)
  vw = view_row_weights(weights, presence, n_views, n, zs.dtype)                  # (V, B)
  pos_w = pseudo_positive_weights(labels, fn, pi_fn=pi_fn, weights=w)              # Eq. 24
  batch_bound = isinstance(theta_bound, str)
  if batch_bound:
    if theta_bound != "batch" or centers is None:
      raise ValueError("theta_bound must be None, a number, an array, or 'batch' with centers")
    bounds = jnp.ones((n_views, n), zs.dtype)
  elif theta_bound is None:
    bounds = jnp.ones((n_views, n), zs.dtype)
  else:
    bounds = jnp.broadcast_to(jnp.asarray(theta_bound, zs.dtype), (n_views, n))
  ctr = jnp.zeros((n_views, 1, zs.shape[2]), zs.dtype) if centers is None else jnp.asarray(centers)

  def one(z, v_w, bound, c):
    logits = cosine_matrix(z, z) / tau
    fp = fn_pairs(labels, fn, weights=v_w)                                         # FN(i), A.3
    if batch_bound:
      base = base_denominator_weights(n, v_w)
      bound = theta_bound_from_batch(z, z_cons, z, c[labels], pos_w * v_w[:, None],
                                     jax.lax.stop_gradient(fp), base)              # A.11
    wf = (jnp.broadcast_to(jnp.asarray(w_fn, zs.dtype), (n,)) if theta_bound is None
          else fn_weight_for_bound(logits, fp, w_fn, bound, weights=v_w))
    den = denominator_weights(fp, wf, weights=v_w)                                 # A.2
    loss = feature_contrast(z, z_cons, pos_w, den, tau=tau, anchor_w=v_w)          # Eq. 44
    theta = fn_mass_ratio(jax.lax.stop_gradient(logits), fp, den)                  # Eq. 25
    on = v_w > 0
    return loss, theta * on, wf * on, jnp.where(on, bound, 1.0)

  return SCL(*jax.vmap(one)(zs, vw, bounds, ctr))


# ----------------------------------------------------------------------------- Eq. 45
def uncertainty_regression(u_hat: jax.Array, u: jax.Array, *,
                           weights: Optional[jax.Array] = None) -> jax.Array:
  """Eq. 45: L_u = (1/N) Σ_i (û_i - u_i)², the target u under stop_gradient (it is a label
  computed from the memberships, not something to move). Mean over valid rows."""
  w = row_weights(weights, u_hat.shape[0], u_hat.dtype)
  return _wmean((u_hat - jax.lax.stop_gradient(u)) ** 2, w)


# ----------------------------------------------------------------------------- Eq. 48-50
def co_membership(labels: jax.Array, memberships: jax.Array, *,
                  weights: Optional[jax.Array] = None) -> jax.Array:
  """Soft co-membership (§3.7.3): S_ij = [y_i = y_j] min(μ_{i,y_i}, μ_{j,y_j}), diagonal 0.

  labels (B,) pseudo-labels, memberships (B, C) (e.g. consensus Gaussian memberships, Eq. 7);
  padding rows and columns 0. No gradient (S is a soft label). Returns (B, B).
  """
  n = labels.shape[0]
  w = row_weights(weights, n, memberships.dtype)
  conf = jnp.take_along_axis(memberships, labels[:, None], axis=1)[:, 0]
  s = (labels[:, None] == labels[None, :]) * jnp.minimum(conf[:, None], conf[None, :])
  s = s * w[:, None] * w[None, :] * (1.0 - jnp.eye(n, dtype=s.dtype))
  return jax.lax.stop_gradient(s)


def normalize_rows(s: jax.Array) -> jax.Array:
  """Eq. 48: Ŝ_ij = S_ij / Σ_l S_il (pass S with a zero diagonal for Σ_{l≠i}); rows with a
  zero sum stay 0."""
  tot = jnp.sum(s, -1, keepdims=True)
  return jnp.where(tot > 0, s / jnp.where(tot > 0, tot, 1.0), 0.0)


def weighted_info_nce(anchors: jax.Array, s: jax.Array, *, tau: float = TAU,
                      candidates: Optional[jax.Array] = None,
                      weights: Optional[jax.Array] = None,
                      exclude_self: bool = True) -> jax.Array:
  """Weighted InfoNCE, Eq. 48-49:

  L = (1/|J|) Σ_{i∈J} [ -Σ_{j≠i} Ŝ_ij log( exp(cos(z_i, z_j)/τ) / Σ_{r≠i} exp(cos(z_i, z_r)/τ) ) ]

  with Ŝ the row-normalized S (Eq. 48) after masking padding (and, with exclude_self, the
  diagonal), J = the valid rows with Σ_{l≠i} S_il > 0.

  Args:
    anchors: (B, D) Z^(v) (or Z^cons).
    s: (B, B) S (`co_membership`), any nonnegative weights; normalized here.
    candidates: optional (B, D); None -> the anchors themselves (Eq. 49). With another view's
      embeddings and exclude_self=False, S = I gives the standard cross-view InfoNCE.
    weights: optional (B,) row weights (padding / missing view -> 0, as anchor and candidate).
    exclude_self: drop r = i and j = i (Eq. 49's j ≠ i, r ≠ i).
  Returns:
    () loss (0 when J is empty).
  """
  n = anchors.shape[0]
  cand = anchors if candidates is None else candidates
  w = row_weights(weights, n, anchors.dtype)
  mask = w[:, None] * w[None, :]
  if exclude_self:
    mask = mask * (1.0 - jnp.eye(n, dtype=mask.dtype))
  logits = cosine_matrix(anchors, cand) / tau
  log_den = weighted_logsumexp(logits, mask)
  logp = logits - jnp.where(jnp.isfinite(log_den), log_den, 0.0)[:, None]
  s_hat = normalize_rows(s * mask)                                                   # Eq. 48
  li = -jnp.sum(jnp.where(s_hat > 0, s_hat * logp, 0.0), -1)                         # Eq. 49
  in_j = (jnp.sum(s * mask, -1) > 0) & jnp.isfinite(log_den)
  return _wmean(li, in_j.astype(li.dtype))


def cross_view_loss(zs: jax.Array, z_cons: jax.Array, s: jax.Array, *, tau: float = TAU,
                    weights: Optional[jax.Array] = None,
                    presence: Optional[jax.Array] = None) -> jax.Array:
  """Eq. 50: L_cross = Σ_v L_wNCE(Z^(v); Ŝ, τ) + L_wNCE(Z^cons; Ŝ, τ).

  zs (V, B, D), z_cons (B, D), s (B, B). In view v only rows present in v take part (Ŝ is
  renormalized over them). Returns ()."""
  n_views, n, _ = zs.shape
  vw = view_row_weights(weights, presence, n_views, n, zs.dtype)
  per_view = jax.vmap(lambda z, w: weighted_info_nce(z, s, tau=tau, weights=w))(zs, vw)
  return jnp.sum(per_view) + weighted_info_nce(z_cons, s, tau=tau, weights=weights)


# ----------------------------------------------------------------------------- Eq. 46-52
def stage1_objective(l_c, l_feat, l_u, *, alpha: float, beta: float,
                     lambda_u: float) -> jax.Array:
  """Eq. 46: L^(1) = Σ_v [α L_c^(v) + β L_feat^(v) + λ_u L_u^(v)].

  Terms are (V,) per-view arrays (or scalars, broadcast over the views of the others: a single
  shared û head's L_u then counts once per view, as Eq. 46 sums it over v)."""
  return jnp.sum(alpha * jnp.asarray(l_c) + beta * jnp.asarray(l_feat)
                 + lambda_u * jnp.asarray(l_u))


def hn_objective(l_push, l_pull, *, gate, lambda_hn: float, lambda_push: float = 1.0,
                 lambda_pull: float = 1.0) -> jax.Array:
  """Eq. 29 and the added term of Eq. 47: Σ_v λ_hn g (λ_push L_push^(v) + λ_pull L_pull^(v)).
  l_push, l_pull (V,); gate g of Eq. 29 (`routing.hn_gate`)."""
  return jnp.sum(lambda_hn * gate * (lambda_push * jnp.asarray(l_push)
                                     + lambda_pull * jnp.asarray(l_pull)))


def stage2_objective(l1, l_push, l_pull, *, gate, lambda_hn: float, lambda_push: float = 1.0,
                     lambda_pull: float = 1.0) -> jax.Array:
  """Eq. 47: L^(2) = L^(1) + Σ_v λ_hn g (L_push^(v) + L_pull^(v))."""
  return l1 + hn_objective(l_push, l_pull, gate=gate, lambda_hn=lambda_hn,
                           lambda_push=lambda_push, lambda_pull=lambda_pull)


def stage3_objective(l2, l_cross, *, gate, beta_p: float) -> jax.Array:
  """Eq. 51: L^(3) = L^(2) + β_p g L_cross (g the progress gate, e.g. `linear_ramp`)."""
  return l2 + beta_p * gate * l_cross


def total_objective(l3, l_imb) -> jax.Array:
  """Eq. 52: L_total = L_imb + L^(3)."""
  return l_imb + l3


def linear_ramp(epoch, start, end) -> jax.Array:
  """clip((e - start)/(end - start), 0, 1): a gate that grows with the epochs (Eq. 51's g)."""
  e = jnp.asarray(epoch, jnp.float32)
  return jnp.clip((e - start) / max(float(end - start), 1.0), 0.0, 1.0)


def stage_flags(epoch, e_w: int, e_c: int):
  """(stage >= 2, stage == 3) as float 0/1 for a 1-based epoch (may be traced): stage 1 for
  e <= E_w, stage 2 for E_w < e <= E_c, stage 3 for e > E_c (§3.7)."""
  e = jnp.asarray(epoch)
  return (e > e_w).astype(jnp.float32), (e > e_c).astype(jnp.float32)


class Schedule(NamedTuple):
  """§3.7's curriculum at one 1-based epoch (every field may be traced)."""
  e_w: jax.Array             # E_w, end of stage 1 (0 with the curriculum off)
  e_c: jax.Array             # E_c, end of stage 2 (0 with the curriculum off)
  phase: jax.Array           # 1, 2 or 3
  p_e: jax.Array             # Eq. 13's uncertain ratio (p_0 with the curriculum off)
  undecided_frac: jax.Array  # §3.5.1's lowest-confidence share while e <= E_c, then 0
  cross_gate: jax.Array      # Eq. 51's g: 0 at E_c to 1 at E (1 with the curriculum off)


def stage_schedule(epoch, n_epochs: int, *, e_w: int, e_c: int, p0: float,
                   undecided_frac: float, curriculum=1.0) -> Schedule:
  """The epoch's stage bounds, phase, p_e (Eq. 13), undecided share and Eq. 51's gate. With
  curriculum = 0 (§4.7's ablation) E_w = E_c = 0: every term from epoch 1, p_e = p_0, no
  undecided set, cross gate 1."""
  cur, e = jnp.asarray(curriculum, jnp.float32), jnp.asarray(epoch, jnp.float32)
  e_w, e_c = e_w * cur, e_c * cur
  s2, s3 = stage_flags(e, e_w, e_c)
  ramp = jnp.clip((e - e_c) / jnp.maximum(n_epochs - e_c, 1.0), 0.0, 1.0)
  return Schedule(e_w, e_c, 1 + s2 + s3, jnp.where(cur > 0, uncertain_ratio(e, n_epochs, p0), p0),
                  jnp.where(e <= e_c, undecided_frac, 0.0), jnp.where(cur > 0, ramp, 1.0))


def mvsib_objective(epoch, *, l_c, l_feat, l_u, l_push, l_pull, l_cross, l_imb, hn_gate,
                    cross_gate, e_w: int, e_c: int, alpha: float, beta: float,
                    lambda_u: float, lambda_hn: float, beta_p: float,
                    lambda_push: float = 1.0, lambda_pull: float = 1.0,
                    imb_from_stage: int = 1):
  """The staged objective of §3.7 in one jittable function (the epoch may be traced, so one
  compiled step serves all three stages): Eq. 46 always, the HN term of Eq. 47 from stage 2,
  the cross-view term of Eq. 51 in stage 3, and L_imb (Eq. 52) from stage `imb_from_stage`.
  Terms of inactive stages are replaced by 0 with jnp.where (a nan there cannot leak).

  Returns (total (), parts dict of the weighted terms: cluster_feat_u, hn, cross, imb).
  """
  s2, s3 = stage_flags(epoch, e_w, e_c)
  s_imb = {1: jnp.float32(1.0), 2: s2, 3: s3}[imb_from_stage]
  l1 = stage1_objective(l_c, l_feat, l_u, alpha=alpha, beta=beta, lambda_u=lambda_u)
  hn = jnp.where(s2 > 0, hn_objective(l_push, l_pull, gate=hn_gate, lambda_hn=lambda_hn,
                                      lambda_push=lambda_push, lambda_pull=lambda_pull), 0.0)
  cross = jnp.where(s3 > 0, beta_p * cross_gate * l_cross, 0.0)
  imb = jnp.where(s_imb > 0, l_imb, 0.0)
  total = total_objective(l1 + hn + cross, imb)
  return total, {"cluster_feat_u": l1, "hn": hn, "cross": cross, "imb": imb}
