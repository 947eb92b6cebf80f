"""MVSIB: multi-view clustering of challenging samples under class imbalance (paper 000).

Zhao et al. (papers/000_…), Algorithm 1 on `train.engine`, two stages:
  1. "pretrain": the view autoencoders on L_re (Eq. 2), Algorithm 1 line 1;
  2. "train": the three-stage objective (§3.7) on the encoders, view weights, û head and
     router (the decoders stay as pre-trained: Eq. 52 has no L_re). Each epoch (the slow time
     scale of §3.6, Theorem C1) embeds every sample once and runs k-means on the consensus and
     on every view (§3.3; view cluster ids matched to the consensus ids, those to the previous
     epoch's), then fixes for the epoch the pseudo-labels, the centers, the bandwidths σ
     (Eq. 6), the minority set S (§3.6.1) and, for n < 10,000, the CSD votes Δd, a (Eq. 15,
     17) on the per-view kNN graph of all samples (per batch above, §4.4). One scanned epoch
     follows; its step computes Eq. 5-52 on the batch, the stage picked from the traced epoch,
     so one compiled program serves all three stages and every ablation switch.
Output (Algorithm 1): the final consensus embedding assigned to the nearest final consensus
center. Missing views (`Views.mask`) are handled: every view-wise term takes presence weights,
and each view's k-means runs on the samples that have the view.
Defaults and choices: docs/methods/mvsib.md.
"""

from __future__ import annotations

import dataclasses
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clustering_jax.methods.base import FitResult, Views, in_range, one_of
from clustering_jax.nets.multiview import MVSIBNet, init_params, join_decoders, split_decoders
from clustering_jax.ops import minority as M
from clustering_jax.ops import mv_contrast as X
from clustering_jax.ops import routing as R
from clustering_jax.ops import uncertainty as U
from clustering_jax.ops.distances import map_row_blocks
from clustering_jax.ops.kmeans import assign, kmeans
from clustering_jax.ops.partitions import align_partitions
from clustering_jax.train import engine
from clustering_jax.train.batching import epoch_key, epoch_permutation
from clustering_jax.train.run import Run

SWITCHES = ("use_ism", "use_routing", "use_scl", "use_curriculum")


@dataclasses.dataclass(frozen=True)
class Config:
  """MVSIB settings: §4.4 and docs/methods/mvsib.md (every default and its source).

  hidden, latent: view autoencoders d_v-500-500-2000-256. rec_loss: Eq. 2 summed ("sum") or
  averaged ("mean") over features. pretrain_epochs, epochs, batch_size, lr, weight_decay:
  200, 100, 256, Adam 1e-4, 0 (§4.4). tau: 0.5 (§4.4). e_w, e_c: stage bounds (§3.7).
  k: kNN neighbours; knn_global_max: global graph below this n (§4.4). knn_graph: one graph
  per view ("views") or one on z^cons ("consensus", §3.3). p0, alpha_sce: Eq. 13, Eq. 11.
  alpha_c, beta_feat, lambda_u: Eq. 46; lambda_hn: Eq. 47; beta_p: Eq. 51.
  undecided_frac, pi_fn, theta_bound ("batch" = Appendix A.11, or a constant Θ; 1 = none),
  margin, mu_start, mu_end, hn_variant: §3.5. rho, n_pseudo, lambda_mmd, lambda_rep, lambda_b:
  §3.6. use_ism, use_routing, use_scl, use_curriculum: the ablations of §4.7 (curriculum off:
  every term from epoch 1, p_e = p0). kmeans_n_init: restarts of each k-means.
  """

  hidden: tuple = (500, 500, 2000)
  latent: int = 256
  rec_loss: str = "sum"
  pretrain_epochs: int = 200
  epochs: int = 100
  batch_size: int = 256
  lr: float = 1e-4
  weight_decay: float = 0.0
  tau: float = 0.5
  e_w: int = 10
  e_c: int = 20
  k: int = 5
  knn_global_max: int = 10000
  knn_graph: str = "views"
  p0: float = 0.3
  alpha_sce: float = 0.5
  alpha_c: float = 0.01
  beta_feat: float = 0.1
  lambda_u: float = 0.1
  lambda_hn: float = 0.1
  beta_p: float = 0.1
  undecided_frac: float = 0.1
  pi_fn: float = 0.1
  theta_bound: Union[str, float] = "batch"
  margin: float = 0.2
  mu_start: float = 0.3
  mu_end: float = 0.7
  hn_variant: str = "paper"
  rho: float = 0.5
  n_pseudo: int = 5
  lambda_mmd: float = 1.0
  lambda_rep: float = 1.0
  lambda_b: float = 0.1
  use_ism: bool = True
  use_routing: bool = True
  use_scl: bool = True
  use_curriculum: bool = True
  kmeans_n_init: int = 10
  embed_block: int = 1024

  def validate(self):
    one_of(self, "rec_loss", ("sum", "mean"))
    one_of(self, "knn_graph", ("views", "consensus"))
    one_of(self, "hn_variant", R.HN_VARIANTS)
    if self.theta_bound != "batch":
      in_range(self, "theta_bound", 0.0, 1.0, lo_open=True)
    for name in ("latent", "batch_size", "k", "n_pseudo", "kmeans_n_init", "embed_block"):
      in_range(self, name, 1)
    for name in ("pretrain_epochs", "epochs", "e_w", "weight_decay", "knn_global_max",
                 "alpha_c", "beta_feat", "lambda_u", "lambda_hn", "beta_p", "lambda_mmd",
                 "lambda_rep", "lambda_b"):
      in_range(self, name, 0)
    in_range(self, "e_c", self.e_w)
    for name in ("lr", "tau"):
      in_range(self, name, 0.0, lo_open=True)
    for name in ("p0", "alpha_sce", "undecided_frac", "pi_fn"):
      in_range(self, name, 0.0, 1.0)
    in_range(self, "rho", 0.0, 1.0, lo_open=True, hi_open=True)
    in_range(self, "mu_end", self.mu_start, lo_open=True)
    for name in SWITCHES:
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")


def make_net(cfg: Config, view_dims) -> MVSIBNet:
  return MVSIBNet(tuple(int(d) for d in view_dims), hidden=tuple(int(h) for h in cfg.hidden),
                  latent=int(cfg.latent))


def optimizer(cfg: Config):
  """Adam with PyTorch's coupled weight decay (Algorithm 1 line 3; 0 by default, §4.4)."""
  return optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.adam(cfg.lr))


def make_embed(net: MVSIBNet, block: int):
  """jitted embed(params, views, presence) -> (zs (V, n, D), z_cons (n, D)) in row blocks."""

  def embed(params, views, presence):
    def rows(ids, _):
      zs, zc = net.apply(params, tuple(x[ids] for x in views),
                         None if presence is None else presence[ids], method="encode")
      return jnp.swapaxes(zs, 0, 1), zc

    zs, zc = map_row_blocks(rows, jnp.arange(views[0].shape[0]), block=block)
    return jnp.swapaxes(zs, 0, 1), zc

  return jax.jit(embed)


def make_steps(net: MVSIBNet, cfg: Config, n_clusters: int, n: int, global_graph: bool):
  """The engine steps: pre-training (Eq. 2) and training (Eq. 5-52)."""
  C, E = int(n_clusters), int(cfg.epochs)
  max_members = int(cfg.rho * n / C) + 1        # a minority cluster has < ρ n / C members

  def pretrain_step(state, consts, idx, w, key):
    views, pres = tuple(x[idx] for x in consts["views"]), consts["presence"]
    pres = None if pres is None else pres[idx]

    def loss_fn(params):                                                      # Eq. 2
      x_hat = net.apply(params, views, pres)["x_hat"]
      red = jnp.sum if cfg.rec_loss == "sum" else jnp.mean
      per = jnp.stack([red((x - xh) ** 2, -1) for x, xh in zip(views, x_hat)])  # (V, B)
      vw = U.view_row_weights(w, pres, len(views), w.shape[0])
      return jnp.sum(per * vw) / jnp.maximum(jnp.sum(w), 1.0)

    loss, g = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=g), {"loss_rec": loss}

  def train_step(state, c, idx, w, key):
    views, labels = tuple(x[idx] for x in c["views"]), c["labels"][idx]
    pres = None if c["presence"] is None else c["presence"][idx]
    e, sw = c["epoch"].astype(jnp.float32), c["switch"]                  # e is 1-based
    e_w, e_c = cfg.e_w * sw["use_curriculum"], cfg.e_c * sw["use_curriculum"]
    s2, _ = X.stage_flags(e, e_w, e_c)
    vw = U.view_row_weights(w, pres, len(views), w.shape[0])

    def loss_fn(params):
      out = net.apply(params, views, pres, decode=False)
      zs, zc, u_hat = out["zs"], out["z_cons"], out["u_hat"]
      _, m = U.gaussian_memberships(zs, c["centers_v"], c["sigma_v"])        # Eq. 5-7
      unc = U.sample_uncertainty(m, alpha=cfg.alpha_sce, weights=w, presence=pres)  # Eq. 8-12
      p_e = jnp.where(sw["use_curriculum"] > 0, U.uncertain_ratio(e, E, cfg.p0), cfg.p0)
      sel = U.select_uncertain(u_hat, p_e, weights=w)                     # Eq. 13-14, U_t
      if global_graph:                                                    # this epoch's votes
        dd, a = c["delta_d"][idx], c["a"][idx]
      else:                                                               # Eq. 15, 17 per batch
        votes = R.csd_votes(zs, labels, cfg.k, weights=w, presence=pres,
                            z_graph=None if cfg.knn_graph == "views" else zc[None])
        dd, a = votes.delta_d, votes.a
      s = R.center_similarity(zc, c["centers_c"], labels)                 # Eq. 16
      f = R.csd_features(dd, s, a, weights=w)                             # Eq. 18
      rt = R.route(net.apply(params, f, method="route"),                  # Eq. 19-23
                   sel * w * s2 * sw["use_routing"],
                   undecided_frac=jnp.where(e <= e_c, cfg.undecided_frac, 0.0))
      u_bar = U.weighted_mean(unc.u, w)
      g = R.hn_gate(u_bar, cfg.mu_start, cfg.mu_end)                      # Eq. 29
      scl = X.scl_views(zs, zc, labels, rt.fn, tau=cfg.tau, pi_fn=cfg.pi_fn,   # Eq. 24-25, 44
                        w_fn=g * cfg.pi_fn, theta_bound=cfg.theta_bound, centers=c["centers_v"],
                        weights=w, presence=pres)
      push, pull = R.hn_push_pull_views(zs, c["centers_v"], labels, rt.hn * w,  # Eq. 26-28
                                        presence=pres, margin=cfg.margin,
                                        variant=cfg.hn_variant)
      ism = M.ism_losses(key, zc, labels, c["minority"] * sw["use_ism"],  # Eq. 30-38
                         c["centers_c"], n_pseudo=cfg.n_pseudo, weights=w,
                         lambda_mmd=cfg.lambda_mmd, lambda_rep=cfg.lambda_rep,
                         lambda_b=cfg.lambda_b, max_members=max_members)
      cnt_v, mu_v = jax.vmap(lambda z, wv: M.batch_cluster_stats(z, labels, C, weights=wv))(zs, vw)
      l_c = X.cluster_contrast_views(ism.ps.means, mu_v, ism.ps, cnt_v, tau=cfg.tau)  # Eq. 39-43
      l_u = X.uncertainty_regression(u_hat, unc.u, weights=w)             # Eq. 45
      _, m_cons = U.gaussian_memberships(zc, c["centers_c"], c["sigma_c"])
      s_co = X.co_membership(labels, m_cons, weights=w)                   # §3.7.3 S
      cross = X.cross_view_loss(zs, zc, s_co, tau=cfg.tau, weights=w, presence=pres)  # Eq. 48-50
      ramp = jnp.clip((e - e_c) / jnp.maximum(E - e_c, 1.0), 0.0, 1.0)     # Eq. 51's g
      l_feat = scl.loss * sw["use_scl"]
      total, parts = X.mvsib_objective(                                   # Eq. 46-47, 51-52
          e, l_c=l_c, l_feat=l_feat, l_u=l_u, l_push=push, l_pull=pull, l_cross=cross,
          l_imb=ism.loss, hn_gate=g, cross_gate=jnp.where(sw["use_curriculum"] > 0, ramp, 1.0),
          e_w=e_w, e_c=e_c, alpha=cfg.alpha_c, beta=cfg.beta_feat, lambda_u=cfg.lambda_u,
          lambda_hn=cfg.lambda_hn, beta_p=cfg.beta_p)
      has_fn = (jnp.sum(R.fn_pairs(labels, rt.fn, weights=w), 1) > 0) * vw   # FN(i) non-empty
      aux = {"loss": total, "l_c": jnp.sum(l_c), "l_feat": jnp.sum(l_feat), "l_u": l_u,
             "l_push": jnp.sum(push), "l_pull": jnp.sum(pull), "l_cross": cross,
             "l_imb": ism.loss, "mmd": jnp.sum(ism.mmd), "rep": ism.rep, "bnd": ism.bnd,
             "gate_hn": g, "u_bar": u_bar, **{"term_" + k: v for k, v in parts.items()},
             "n_uncertain": jnp.sum(sel), "n_undecided": jnp.sum(rt.undecided),
             "theta_sum": jnp.sum(scl.theta * has_fn), "theta_cnt": jnp.sum(has_fn),
             "n_pseudo": jnp.sum(ism.ps.weight),
             "n_minority_batch": jnp.sum(jnp.max(ism.ps.weight, 1))}
      return total, (aux, R.route_codes(rt.fn, rt.hn), jnp.max(scl.theta * has_fn))

    (_, (aux, codes, t_max)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    ex = state.extra                                   # this epoch's route codes (§4.10)
    hit = jnp.zeros(ex["codes"].shape).at[idx].add(w)
    val = jnp.zeros(ex["codes"].shape).at[idx].add(w * codes)
    ex = {**ex, "codes": jnp.where(hit > 0, val, ex["codes"]).astype(jnp.int32),
          "theta_max": jnp.maximum(ex["theta_max"], t_max)}
    return state.apply_gradients(grads=grads).replace(extra=ex), aux

  return pretrain_step, train_step


def make_cluster_pass(net: MVSIBNet, cfg: Config, n_clusters: int, mask, global_graph: bool):
  """`run(params, views, presence, key, prev_labels)`: one clustering pass (§3.3) with its
  epoch constants: σ (Eq. 6), S (§3.6.1) and the global CSD votes (Eq. 15, 17)."""
  C, n_init = int(n_clusters), cfg.kmeans_n_init
  embed = make_embed(net, cfg.embed_block)
  rows_of = None if mask is None else [np.flatnonzero(mask[:, v]) for v in range(mask.shape[1])]

  @jax.jit
  def cluster(params, views, presence, key):   # k-means of z^cons (row 0) and of every z^(v)
    zs, zc = embed(params, views, presence)
    keys = jax.random.split(key, len(views) + 1)
    if rows_of is None:                        # one k-means program, run V + 1 times
      km = jax.lax.map(lambda a: kmeans(a[0], a[1], C, n_init=n_init),
                       (keys, jnp.concatenate([zc[None], zs])))
      return zs, zc, km.labels, km.centers, km.inertia[0]
    km = kmeans(keys[0], zc, C, n_init=n_init)  # each view on the samples that have it
    labs, cens = [km.labels], [km.centers]
    for v, rows in enumerate(rows_of):
      kv = kmeans(keys[v + 1], zs[v][rows], C, n_init=n_init)
      labs, cens = labs + [km.labels.at[rows].set(kv.labels)], cens + [kv.centers]
    return zs, zc, jnp.stack(labs), jnp.stack(cens), km.inertia

  @jax.jit
  def constants(zs, zc, labels, centers_c, lab_v, centers_v, presence):
    out = {"sigma_v": U.cluster_bandwidths_views(zs, lab_v, centers_v, presence=presence),
           "sigma_c": U.cluster_bandwidths(zc, labels, centers_c)}               # Eq. 6
    out["minority"] = M.minority_clusters(jnp.zeros((C,)).at[labels].add(1.0), cfg.rho)  # S
    if global_graph:                                  # §3.3 / §4.4: the graph of all samples
      votes = R.csd_votes(zs, labels, cfg.k, presence=presence,
                          z_graph=None if cfg.knn_graph == "views" else zc[None])
      out.update(delta_d=votes.delta_d, a=votes.a)
    return out

  def run(params, views, presence, key, prev_labels):
    """Cluster ids aligned to prev_labels and the views' to the consensus (host Hungarian)."""
    zs, zc, labs, cens, inertia = cluster(params, views, presence, key)
    labs, cens = jax.device_get((labs, cens))                       # the pass's host sync
    perm = align_partitions(labs[0], prev_labels, C) if prev_labels is not None else np.arange(C)
    lab = perm[labs[0]].astype(np.int32)
    cen, cen_v, lab_v = cens[0][np.argsort(perm)], [], []
    for v in range(len(views)):
      rows = slice(None) if rows_of is None else rows_of[v]
      pv = align_partitions(labs[v + 1][rows], lab[rows], C)         # view ids -> consensus ids
      cen_v.append(cens[v + 1][np.argsort(pv)])
      lab_v.append(pv[labs[v + 1]] if mask is None else np.where(mask[:, v], pv[labs[v + 1]], lab))
    cen_v, lab_v = jnp.asarray(np.stack(cen_v)), jnp.asarray(np.stack(lab_v), jnp.int32)
    k = constants(zs, zc, jnp.asarray(lab), jnp.asarray(cen), lab_v, cen_v, presence)
    return {"labels": lab, "centers_c": jnp.asarray(cen), "centers_v": cen_v, "z_cons": zc,
            "inertia": inertia, **k}

  return run


def fit(data: Views, n_clusters: int, config: Config, *, key: jax.Array, run: Run) -> FitResult:
  """Pre-training, then Algorithm 1. Returns the final model's labels and consensus embedding."""
  cfg = dataclasses.replace(config, hidden=tuple(int(h) for h in config.hidden))
  cfg.validate()
  if data.is_image:
    raise ValueError("MVSIB takes multi-view vectors; flatten images into a view first")
  C = int(n_clusters)
  xs = tuple(jnp.asarray(x, jnp.float32) for x in data.flat_views())
  n, dims = xs[0].shape[0], [x.shape[1] for x in xs]
  mask = None if data.mask is None or data.mask.all() else np.asarray(data.mask, bool)
  presence = None if mask is None else jnp.asarray(mask, jnp.float32)
  global_graph = n < cfg.knn_global_max
  if cfg.k >= (n if global_graph else min(cfg.batch_size, n)):
    raise ValueError(f"k={cfg.k} needs more samples per graph (n={n}, batch={cfg.batch_size})")
  net = make_net(cfg, dims)
  pretrain_step, train_step = make_steps(net, cfg, C, n, global_graph)
  cluster_pass = make_cluster_pass(net, cfg, C, mask, global_graph)
  k_init, k_pre, k_km0, k_train = jax.random.split(key, 4)
  params = init_params(net, k_init, dims)
  info: dict = {"n_params": int(sum(a.size for a in jax.tree.leaves(params))),
                "global_knn_graph": bool(global_graph), "missing_views": mask is not None}

  # ---- stage 1: pre-training on L_re (Eq. 2; Algorithm 1 line 1) -------------------------
  pre_scan = engine.ScannedEpoch(pretrain_step)
  pre_consts = {"views": xs, "presence": presence}

  def pretrain_epoch(epoch, state):
    idx, w = engine.epoch_batches(epoch_permutation(k_pre, epoch, n), n, cfg.batch_size)
    state, m = pre_scan(state, pre_consts, idx, w, epoch_key(k_pre, epoch))
    return engine.Epoch(state, m)

  state, pre_info = engine.run_stage(run, "pretrain", engine.new_state(params, optimizer(cfg)),
                                     cfg.pretrain_epochs, pretrain_epoch, scans=(pre_scan,))
  # ---- starting point: k-means on the consensus embedding (Algorithm 1 line 2) -------------
  init = cluster_pass(state.params, xs, presence, k_km0, None)
  run.log("init", 0, {"inertia": init["inertia"]}, labels=init["labels"])

  # ---- stage 2: Algorithm 1 lines 4-16 (the decoders stay out: Eq. 52 has no L_re) ----------
  scan = engine.ScannedEpoch(train_step)
  switch = {s: jnp.float32(getattr(cfg, s)) for s in SWITCHES}
  params, decoders = split_decoders(state.params)

  def train_epoch(epoch, state):
    k_km, k_batch, k_steps = jax.random.split(epoch_key(k_train, epoch), 3)
    ex = state.extra
    cl = cluster_pass(state.params, xs, presence, k_km, np.asarray(ex["labels"]))  # line 5
    consts = {"views": xs, "presence": presence, "labels": jnp.asarray(cl["labels"]),
              "epoch": jnp.int32(epoch + 1), "switch": switch,
              **{k: cl[k] for k in ("centers_c", "centers_v", "sigma_c", "sigma_v", "minority")},
              **({"delta_d": cl["delta_d"], "a": cl["a"]} if global_graph else {})}
    state = state.replace(extra={"labels": consts["labels"], "prev_codes": ex["codes"],
                                 "codes": jnp.full((n,), -1, jnp.int32),
                                 "theta_max": jnp.float32(0.0)})
    idx, w = engine.epoch_batches(epoch_permutation(k_batch, epoch, n), n, cfg.batch_size)
    state, m = scan(state, consts, idx, w, k_steps)                            # lines 6-15
    codes, prev, t_max = jax.device_get((state.extra["codes"], state.extra["prev_codes"],
                                         state.extra["theta_max"]))
    rc, rc_n = R.routing_consistency(prev, codes)                                # §4.10
    e, curr, nb = epoch + 1, cfg.use_curriculum, idx.shape[0]
    theta_sum, theta_cnt = m.pop("theta_sum"), m.pop("theta_cnt")
    metrics = {**m, "phase": 1 + int(e > cfg.e_w * curr) + int(e > cfg.e_c * curr),
               "p_e": float(U.uncertain_ratio(e, cfg.epochs, cfg.p0)) if curr else cfg.p0,
               "n_fn": int(np.sum(codes == 1)), "n_hn": int(np.sum(codes == 0)),
               "hn_rate": float(R.hn_trigger_rate(codes)), "rc": float(rc), "rc_n": int(rc_n),
               "theta_mean": theta_sum / max(theta_cnt, 1e-12), "theta_max": float(t_max),
               "n_minority": int(np.sum(cl["minority"])), "n_pseudo": m["n_pseudo"] * nb,
               "n_uncertain": m["n_uncertain"] * nb,
               "label_change": float(np.mean(cl["labels"] != np.asarray(ex["labels"])))}
    return engine.Epoch(state, metrics, labels=cl["labels"])

  extra = {"labels": jnp.asarray(init["labels"]), "codes": jnp.full((n,), -1, jnp.int32),
           "prev_codes": jnp.full((n,), -1, jnp.int32), "theta_max": jnp.float32(0.0)}
  state, train_info = engine.run_stage(run, "train", engine.new_state(params, optimizer(cfg),
                                                                      extra),
                                       cfg.epochs, train_epoch, scans=(scan,))

  # ---- output: the final consensus embedding hardened to the final consensus centers -------
  final = cluster_pass(state.params, xs, presence, jax.random.fold_in(k_train, cfg.epochs),
                       np.asarray(state.extra["labels"]))
  labels = np.asarray(assign(final["z_cons"], final["centers_c"])[0])
  alpha = jax.nn.softmax(state.params["params"]["mvae"]["view_logits"])
  info.update(engine.timing_info({"pretrain": pre_info, "train": train_info}),
              view_weights=[round(float(a), 4) for a in alpha])
  fstate = {"params": jax.tree.map(np.asarray, join_decoders(state.params, decoders)),
            "view_dims": dims, "centers": np.asarray(final["centers_c"])}
  return FitResult(labels=labels.astype(np.int64), embedding=np.asarray(final["z_cons"]),
                   init_labels=init["labels"].astype(np.int64),
                   init_embedding=np.asarray(init["z_cons"]), state=fstate, info=info)


def transform(cfg: Config, state: dict, views, presence=None) -> np.ndarray:
  """Consensus embeddings z^cons (n, D) of new samples (Eq. 1, 3) with a fitted state."""
  net = make_net(cfg, state["view_dims"])
  xs = tuple(jnp.asarray(x, jnp.float32) for x in views)
  pres = None if presence is None else jnp.asarray(presence, jnp.float32)
  return np.asarray(make_embed(net, cfg.embed_block)(state["params"], xs, pres)[1])


def predict(cfg: Config, state: dict, views, presence=None) -> np.ndarray:
  """Nearest final consensus center of each new sample (Algorithm 1's output rule)."""
  z = transform(cfg, state, views, presence)
  return np.asarray(assign(jnp.asarray(z), jnp.asarray(state["centers"]))[0]).astype(np.int64)
