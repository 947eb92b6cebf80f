"""Self-distillation losses of HaDis (paper 004, §III, Eq. 1–12): BYOL / diffused alignment,
hardness-aware self-distillation (HSD), batch prototypes and the prototypical contrast (PCL),
and the EMA teacher update.

Conventions:
- t: teacher features (b, d), the EMA network's projector output; always under stop_gradient
  here (the teacher is not trained by gradients: Eq. 12).
- p: student predictions g(z) (b, d), the predictor applied to the (diffused) projector output.
- Features are l2-normalized inside each loss (the paper's "normalized"), with a safe norm so a
  zero row stays finite.
- weights: optional (b,) sample weights; a row of weight 0 (padding of a fixed-shape batch)
  takes no part in any loss, not even as a candidate positive/negative or in a prototype.
- Each loss returns (loss, aux): aux holds scalar diagnostics (floats) for logging.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from clustering_jax.ops.distances import cluster_sums, dot_hi

SPLITS = ("paper", "code")
MISSING = ("mask", "zero")
NEGATIVES = ("teacher", "student")


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows scaled to unit norm, x / max(‖x‖, eps) (PyTorch's F.normalize); the norm is computed
  as sqrt(max(‖x‖², eps²)) so a zero row has a finite (zero) gradient."""
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def _weights(weights, b, dtype):
  if weights is None:
    return jnp.ones((b,), dtype)
  if weights.shape != (b,):
    raise ValueError(f"weights must have shape ({b},), got {weights.shape}")
  return weights.astype(dtype)


def _check_pair(a, b, name):
  if a.ndim != 2 or a.shape != b.shape:
    raise ValueError(f"{name}: needs two (b, d) arrays of one shape, got {a.shape} and {b.shape}")


# -- Eq. 2: diffusion -----------------------------------------------------------------------------
def diffuse(key: jax.Array, z: jax.Array, eps: float) -> jax.Array:
  """Eq. 2: z + eps·δ, δ ~ N(0, I), on the unnormalized projector output f_s(x) (the code adds it
  before the predictor, W:213). eps = 0 returns z. z: (b, d) -> (b, d)."""
  return z + eps * jax.random.normal(key, z.shape, z.dtype)


# -- Eq. 1 / 3: alignment -------------------------------------------------------------------------
def byol_align(p: jax.Array, t: jax.Array, *, weights: Optional[jax.Array] = None):
  """Eq. 1/3: mean_i ‖p̄_i − t̄_i‖² = 2 − 2·cos(p_i, t_i), both rows l2-normalized.

  With p = g(diffuse(key, f_s(x), ε)) this is L_DSA (Eq. 3); with ε = 0 it is BYOL's Eq. 1.
  The code's `-2·cos(...).mean()` (W:218) is this minus 2: same gradients.

  Args:
    p: (b, d) student predictions g(z). t: (b, d) teacher features f_t(x⁺) (stop_gradient).
    weights: optional (b,) sample weights (0 = padding).
  Returns:
    (loss, aux) with aux["cos"] the weighted mean cosine.
  """
  _check_pair(p, t, "byol_align")
  w = _weights(weights, p.shape[0], p.dtype)
  t = jax.lax.stop_gradient(t)  # the teacher gets no gradient (Eq. 12 updates it)
  cos = jnp.sum(l2_normalize(p) * l2_normalize(t), axis=-1)
  denom = jnp.maximum(jnp.sum(w), 1e-12)
  mean_cos = jnp.sum(w * cos) / denom
  return 2.0 - 2.0 * mean_cos, {"cos": mean_cos}


# -- Eq. 4–8: hardness-aware self-distillation ----------------------------------------------------
def pair_distances(a: jax.Array, b: jax.Array) -> jax.Array:
  """D of Eq. 4: (n, m) Euclidean distances between the l2-normalized rows of a and b,
  sqrt(max(‖ā‖² + ‖b̄‖² − 2 āᵀb̄, 1e-12)) as in the code (W:27–35), in full float32."""
  an, bn = l2_normalize(a), l2_normalize(b)
  d2 = (jnp.sum(an * an, -1)[:, None] + jnp.sum(bn * bn, -1)[None, :] - 2.0 * dot_hi(an, bn.T))
  return jnp.sqrt(jnp.maximum(d2, 1e-12))


def hsd_select(t: jax.Array, p: jax.Array, *, split: str = "paper",
               weights: Optional[jax.Array] = None, exclude_self: bool = False) -> dict:
  """Eq. 4–6: the positive/negative split, the hardest positive and negative per anchor, and
  their clamped weights. No gradient flows through anything but "nu_p" and "nu_n".

  With dt[i, a] = D(t_i, t_a) (teacher–teacher, the "template relation") and
  nu[i, a] = D(t_i, p_a) (teacher anchor vs. student prediction, ν of Eq. 5):
    split="paper" (Eq. 4): a ∈ G_i^p iff dt[i, a] < nu[i, a], else a ∈ G_i^n;
    split="code"  (W:38):  a ∈ G_i^n iff dt[i, a] > nu[i, i] (the anchor's own teacher–student
                           distance), else a ∈ G_i^p.
  Eq. 5: ν_i^p = max over G_i^p of nu[i, ·] at j^h, ν_i^n = min over G_i^n at m^h (first index on
  ties). Eq. 6: w_i^p = max(ν_i^p − dt[i, j^h], 0), w_i^n = max(dt[i, m^h] − ν_i^n, 0), both under
  stop_gradient (W:50–51). Under split="paper" the clamps never bind. D(t_i, t_i) is taken as
  1e-6, the code's clamp (its float32 expansion gives ~3e-4 of rounding there instead).

  Args:
    t: (b, d) teacher features of one view (stop_gradient). p: (b, d) student predictions of the
      other view. weights: optional (b,); a zero-weight sample is neither anchor nor candidate.
    exclude_self: drop the pair (i, i) (the anchor's own augmented view) from both sets. The
      code keeps it; under either split it is almost always a positive.
  Returns:
    dict of (b,) arrays: nu_p, nu_n (0 where the set is empty), w_p, w_n, j_h, m_h (int32),
    has_pos, has_neg, n_pos, n_neg (set sizes), and (b, b) bool pos, neg.
  """
  _check_pair(p, t, "hsd_select")
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  b = t.shape[0]
  w = _weights(weights, b, t.dtype)
  t = jax.lax.stop_gradient(t)  # teacher features: no gradient
  # D(t_i, t_i) is 0 up to the clamp; the expansion leaves ~1e-7 of rounding in the squared
  # distance, i.e. ~3e-4 after the sqrt, so the diagonal is set to the clamp exactly.
  dt = jnp.where(jnp.eye(b, dtype=bool), 1e-6, pair_distances(t, t))
  nu = pair_distances(t, p)
  nu_sg = jax.lax.stop_gradient(nu)  # the split and the argmax/argmin are not differentiated
  if split == "paper":
    is_neg = dt >= nu_sg  # Eq. 4
  else:
    is_neg = dt > jnp.diagonal(nu_sg)[:, None]  # W:38
  valid = (w > 0)[None, :] & (w > 0)[:, None]
  if exclude_self:
    valid = valid & ~jnp.eye(b, dtype=bool)
  pos = valid & ~is_neg
  neg = valid & is_neg
  has_pos = jnp.any(pos, axis=1)
  has_neg = jnp.any(neg, axis=1)
  j_h = jnp.argmax(jnp.where(pos, nu_sg, -jnp.inf), axis=1).astype(jnp.int32)  # Eq. 5
  m_h = jnp.argmin(jnp.where(neg, nu_sg, jnp.inf), axis=1).astype(jnp.int32)
  take = lambda m, idx: jnp.take_along_axis(m, idx[:, None], axis=1)[:, 0]
  nu_p = jnp.where(has_pos, take(nu, j_h), 0.0)
  nu_n = jnp.where(has_neg, take(nu, m_h), 0.0)
  # Eq. 6; detached as in the code (W:50-51): the weights only scale the hardest pairs.
  w_p = jnp.where(has_pos, jnp.maximum(take(nu_sg, j_h) - take(dt, j_h), 0.0), 0.0)
  w_n = jnp.where(has_neg, jnp.maximum(take(dt, m_h) - take(nu_sg, m_h), 0.0), 0.0)
  return {"nu_p": nu_p, "nu_n": nu_n, "w_p": w_p, "w_n": w_n, "j_h": j_h, "m_h": m_h,
          "has_pos": has_pos, "has_neg": has_neg, "n_pos": jnp.sum(pos, axis=1),
          "n_neg": jnp.sum(neg, axis=1), "pos": pos, "neg": neg}


def hsd_loss(t: jax.Array, p: jax.Array, *, tau: float = 0.5, split: str = "paper",
             missing: str = "mask", weights: Optional[jax.Array] = None,
             exclude_self: bool = False):
  """Eq. 7–8: L_HSD = mean_i softplus((w_i^p ν_i^p − w_i^n ν_i^n) / τ_h), which is
  −log(e^{w_n ν_n/τ} / (e^{w_n ν_n/τ} + e^{w_p ν_p/τ})). See hsd_select for Eq. 4–6.

  Gradients reach the student only through ν_i^p and ν_i^n (the predictions p_{j^h}, p_{m^h}).

  Args:
    t: (b, d) teacher features (view B). p: (b, d) student predictions (view A).
    tau: τ_h (0.5, §IV-A). split: "paper" (Eq. 4, default) or "code" (W:38); see hsd_select.
    missing: an anchor whose positive or negative set is empty:
      "mask" (default): left out of the mean (Eq. 7 is undefined for it);
      "zero": kept, the missing side's logit set to 0, as the code's 1e5 fill makes it (W:40).
    weights: optional (b,) sample weights (0 = padding); the mean is weighted.
    exclude_self: see hsd_select.
  Returns:
    (loss, aux): aux has the mean positive/negative set sizes, the mean w_p, w_n, ν_p, ν_n over
    used anchors, the fractions of anchors without a positive / without a negative, and the
    number of anchors used.
  """
  if missing not in MISSING:
    raise ValueError(f"missing must be one of {MISSING}, got {missing!r}")
  b = t.shape[0]
  w = _weights(weights, b, t.dtype)
  s = hsd_select(t, p, split=split, weights=weights, exclude_self=exclude_self)
  a = s["w_n"] * s["nu_n"] / tau
  c = s["w_p"] * s["nu_p"] / tau
  ell = jax.nn.softplus(c - a)  # Eq. 7
  anchor = w > 0
  if missing == "mask":
    used = anchor & s["has_pos"] & s["has_neg"]
  else:
    used = anchor
  uw = jnp.where(used, w, 0.0)
  n_used = jnp.sum(uw)
  loss = jnp.sum(uw * ell) / jnp.maximum(n_used, 1e-12)  # Eq. 8 over the anchors used
  n_anchor = jnp.maximum(jnp.sum(anchor), 1)
  mean_used = lambda v: jnp.sum(uw * v) / jnp.maximum(n_used, 1e-12)
  aux = {
      "n_pos": jnp.sum(jnp.where(anchor, s["n_pos"], 0)) / n_anchor,
      "n_neg": jnp.sum(jnp.where(anchor, s["n_neg"], 0)) / n_anchor,
      "frac_no_pos": jnp.sum(anchor & ~s["has_pos"]) / n_anchor,
      "frac_no_neg": jnp.sum(anchor & ~s["has_neg"]) / n_anchor,
      "n_used": jnp.sum(used),
      "w_p": mean_used(s["w_p"]), "w_n": mean_used(s["w_n"]),
      "nu_p": mean_used(jax.lax.stop_gradient(s["nu_p"])),
      "nu_n": mean_used(jax.lax.stop_gradient(s["nu_n"])),
  }
  return loss, aux


# -- Eq. 9–11: prototypes and the prototypical contrast -------------------------------------------
def batch_prototypes(x: jax.Array, labels: jax.Array, n_clusters: int, *,
                     weights: Optional[jax.Array] = None, normalize_inputs: bool = True):
  """Eq. 10–11: u_k = normalize(Σ_i φ(k|x_i) x_i) with one-hot φ from pseudo-labels.

  normalize_inputs: l2-normalize the rows first (the code: normalize, average, normalize,
  W:146–148, 219); False sums the raw features as Eq. 10 is written.
  Args:
    x: (b, d) features. labels: (b,) int pseudo-labels in [0, n_clusters) (a label outside adds
      nowhere). weights: optional (b,) sample weights (0 = padding).
  Returns:
    (protos (n_clusters, d), present (n_clusters,) bool): a cluster with no (weighted) sample in
    the batch is absent and its prototype row is 0.
  """
  if x.ndim != 2 or labels.shape != (x.shape[0],):
    raise ValueError(f"batch_prototypes: x (b, d) and labels (b,), got {x.shape}, {labels.shape}")
  w = _weights(weights, x.shape[0], x.dtype)
  xn = l2_normalize(x) if normalize_inputs else x
  sums = cluster_sums(xn * w[:, None], labels, n_clusters)
  counts = cluster_sums(w[:, None], labels, n_clusters)[:, 0]
  return l2_normalize(sums), counts > 0


def prototype_contrastive(us: jax.Array, ut: jax.Array, present: jax.Array, *, tau: float = 0.5,
                          negatives: str = "teacher"):
  """Eq. 9: L_PCL = mean over present k of −log softmax_k(logits_k)[k] with
  logits_kk = u_kˢ·u_kᵗ / τ_p and, for j ≠ k,
    negatives="teacher" (Eq. 9, default): u_kˢ·u_jᵗ / τ_p;
    negatives="student" (the code, W:156–159, ProPos's PSL): u_kˢ·u_jˢ / τ_p.
  Absent clusters are dropped as rows and as columns ("nullifying the losses and logits", §III-C);
  the code instead writes −10 into absent columns (W:164–175), which leaves e^−10 of mass each.

  Args:
    us, ut: (K, d) student / teacher prototypes (batch_prototypes); ut under stop_gradient.
    present: (K,) bool, clusters present in the batch.
    tau: τ_p (0.5, §IV-A).
  Returns:
    (loss, aux): 0 when no cluster is present; aux: n_present, pos_sim (mean u_kˢ·u_kᵗ), acc
    (fraction of present k whose own positive has the largest logit).
  """
  if negatives not in NEGATIVES:
    raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
  if us.ndim != 2 or us.shape != ut.shape or present.shape != (us.shape[0],):
    raise ValueError(f"prototype_contrastive: us, ut (K, d) and present (K,), got {us.shape}, "
                     f"{ut.shape}, {present.shape}")
  k = us.shape[0]
  ut = jax.lax.stop_gradient(ut)  # teacher prototypes: no gradient
  pos = jnp.sum(us * ut, axis=-1) / tau
  other = ut if negatives == "teacher" else us
  logits = dot_hi(us, other.T) / tau
  eye = jnp.eye(k, dtype=bool)
  logits = jnp.where(eye, pos[:, None], logits)
  col = jnp.broadcast_to(present[None, :], (k, k))
  # Absent columns dropped; every row keeps its own entry, so an absent row stays finite too.
  lse = jax.nn.logsumexp(jnp.where(col | eye, logits, -jnp.inf), axis=1)
  ell = lse - pos
  n_present = jnp.sum(present)
  loss = jnp.sum(jnp.where(present, ell, 0.0)) / jnp.maximum(n_present, 1)
  masked = jnp.where(col & ~eye, logits, -jnp.inf)
  won = pos >= jnp.max(masked, axis=1)
  aux = {"n_present": n_present,
         "pos_sim": jnp.sum(jnp.where(present, pos * tau, 0.0)) / jnp.maximum(n_present, 1),
         "acc": jnp.sum(present & won) / jnp.maximum(n_present, 1)}
  return loss, aux


# -- Eq. 12: EMA teacher --------------------------------------------------------------------------
def ema_update(teacher, student, momentum):
  """Eq. 12: θ_t ← α θ_t + (1 − α) θ_s, leaf by leaf over two trees of one structure.
  momentum: α (0.996, §IV-A), a float or a traced scalar."""
  return optax.incremental_update(new_tensors=student, old_tensors=teacher,
                                  step_size=1.0 - momentum)


def cosine_momentum(step, total_steps, *, base: float = 0.996):
  """BYOL's momentum ramp, used by the HaDis code for CIFAR-20 (`momentum_increase`):
  α(step) = 1 − (1 − base)·(cos(π·step/total_steps) + 1)/2, from base at step 0 to 1 at
  total_steps (held there after). Jittable in step."""
  total = jnp.maximum(jnp.asarray(total_steps, jnp.float32), 1.0)
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / total, 0.0, 1.0)
  return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * frac) + 1.0) / 2.0
