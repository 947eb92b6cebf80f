"""HaDis's training objective (paper 004, Eq. 2–13): the symmetric student loss of one batch of
two augmented views, and the teacher's forward pass outside any gradient (Eq. 12).

The method (`methods/hadis.py`) builds the step, the schedules and the fit around it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from clustering_jax.ops import selfsup as ss


def teacher_variables(extra) -> dict:
  """The teacher's flax variables from `state.extra`."""
  return {"params": extra["teacher"], "batch_stats": extra["stats"]["teacher"]}


def forward_views(module, variables, x):
  """module in train mode on each of the stacked views x (2, b, ...) -> (2, b, d), with BN
  statistics per view; returns the new running stats averaged over the two updates."""
  def one(v):
    out, upd = module.apply(variables, v, train=True, mutable=["batch_stats"])
    return out, upd["batch_stats"]
  out, stats = jax.vmap(one)(x)
  return out, jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)


def make_losses(enc, pred, cfg, n_clusters: int):
  """(teacher, student_losses, losses):
  teacher(extra, views (2, b, H, W, C)) -> (t (2, b, d), new teacher BN stats), f_t in train
    mode, outside any gradient (Eq. 12: the teacher moves by EMA only);
  student_losses(params, extra, views, t, labels (b,), w (b,), key, eps, pcl_on)
    -> (L (Eq. 13), (metrics, new student/predictor BN stats)), differentiated by the step;
  losses(params, extra, views, labels, w, key, eps, pcl_on): both, with the stats of all three.
  eps, pcl_on: traced scalars (the warm-up gates)."""

  def direction(pa, za, tb, labels, w):
    """The loss terms of one direction: predictions g(z_a), projections f_s(x_a) of view a,
    teacher features f_t(x_b) of view b, each (b, d)."""
    m = {}
    m["loss_dsa"], aux = ss.byol_align(pa, tb, weights=w)                     # Eq. 3
    m["cos"] = aux["cos"]
    if cfg.use_hsd:
      m["loss_hsd"], aux = ss.hsd_loss(tb, pa, tau=cfg.tau_h, split=cfg.split,  # Eq. 4-8
                                       missing=cfg.hsd_missing, weights=w,
                                       exclude_self=cfg.exclude_self)
      m.update({f"hsd_{k}": aux[k] for k in ("n_pos", "n_neg", "w_p", "w_n", "frac_no_pos",
                                             "frac_no_neg", "n_used")})
    if cfg.use_pcl:
      us, present = ss.batch_prototypes(za, labels, n_clusters, weights=w)   # Eq. 10
      ut, _ = ss.batch_prototypes(tb, labels, n_clusters, weights=w)         # Eq. 11
      m["loss_pcl"], aux = ss.prototype_contrastive(us, ut, present, tau=cfg.tau_p,  # Eq. 9
                                                    negatives=cfg.negatives)
      m["pcl_n_present"], m["pcl_acc"] = aux["n_present"], aux["acc"]
    return m

  def teacher(extra, views):
    t, t_stats = forward_views(enc, teacher_variables(extra), views)             # f_t(x)
    return jax.lax.stop_gradient(t), t_stats

  def student_losses(params, extra, views, t, labels, w, key, eps, pcl_on):
    st = extra["stats"]
    z, s_stats = forward_views(enc, {"params": params["student"],
                                     "batch_stats": st["student"]}, views)       # f_s(x)
    zd = ss.diffuse(key, z, eps)                                                 # Eq. 2
    p, p_stats = forward_views(pred, {"params": params["predictor"],
                                      "batch_stats": st["predictor"]}, zd)       # g(z)
    # The two directions (a, b) = (1, 2), (2, 1) of the symmetric loss, vmapped over the stacked
    # views: student side of view a against teacher side of view b, then averaged (Eq. 13).
    m = jax.tree.map(lambda v: jnp.mean(v.astype(jnp.float32)),
                     jax.vmap(lambda pa, za, tb: direction(pa, za, tb, labels, w))(p, z, t[::-1]))
    loss = m["loss_dsa"]                                                         # Eq. 13
    if cfg.use_hsd:
      loss = loss + m["loss_hsd"]
    if cfg.use_pcl:
      loss = loss + cfg.lam * pcl_on * m["loss_pcl"]
    return loss, ({"loss": loss, **m}, {"student": s_stats, "predictor": p_stats})

  def losses(params, extra, views, labels, w, key, eps, pcl_on):
    t, t_stats = teacher(extra, views)
    loss, (m, stats) = student_losses(params, extra, views, t, labels, w, key, eps, pcl_on)
    return loss, (m, {**stats, "teacher": t_stats})

  return teacher, student_losses, losses
