"""MVSIB: multi-view clustering of challenging samples under class imbalance (paper 000).

Algorithm 1 on `train.engine`: stage "pretrain" fits the view autoencoders on L_re (Eq. 2);
stage "train" optimizes the encoders, view weights, û head and router (Eq. 52 has no L_re: the
decoders stay as pre-trained). Each training epoch (the slow time scale of §3.6) embeds every
sample and runs k-means on z^cons and every z^(v) (§3.3, ids matched across views and epochs),
which fixes the epoch's pseudo-labels, centers, σ (Eq. 6), minority set S (§3.6.1) and, for
n < 10,000, the CSD votes on the kNN graph of all samples (Eq. 15, 17; per batch above, §4.4);
one scanned epoch of steps (Eq. 5-52, the stage picked from the traced epoch: one compile)
follows. Output: the final z^cons assigned to the nearest final consensus center. Missing
views (`Views.mask`) are weighted out everywhere. Defaults and choices: docs/methods/mvsib.md.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clustering_jax.methods.base import FitResult, Views, in_range, one_of
from clustering_jax.nets.multiview import MVSIBNet, init_params, join_decoders, split_decoders
from clustering_jax.ops import minority as M
from clustering_jax.ops import mv_clusters as K
from clustering_jax.ops import mv_contrast as X
from clustering_jax.ops import routing as R
from clustering_jax.ops import uncertainty as U
from clustering_jax.ops.distances import map_row_blocks
from clustering_jax.ops.kmeans import assign
from clustering_jax.train import engine
from clustering_jax.train.batching import epoch_key, epoch_permutation
from clustering_jax.train.run import Run

SWITCHES = ("use_ism", "use_routing", "use_scl", "use_curriculum")


@dataclasses.dataclass(frozen=True)
class Config:
  """MVSIB settings: the paper's values (§4.4, §4.6), else the public code's. Every field with
  its equation, default and source: docs/methods/mvsib.md, "Defaults". use_ism, use_routing,
  use_scl, use_curriculum: the ablations of §4.7 (curriculum off: E_w = E_c = 0, p_e = p_0)."""

  hidden: tuple = (500, 500, 2000)
  latent: int = 256
  normalize: bool = True
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
    for name, options in (("rec_loss", ("sum", "mean")), ("knn_graph", ("views", "consensus")),
                          ("hn_variant", R.HN_VARIANTS)):
      one_of(self, name, options)
    if self.theta_bound != "batch":
      in_range(self, "theta_bound", 0.0, 1.0, lo_open=True)
    for name in ("latent", "batch_size", "k", "n_pseudo", "kmeans_n_init", "embed_block"):
      in_range(self, name, 1)
    for name in ("pretrain_epochs", "epochs", "e_w", "weight_decay", "knn_global_max", "alpha_c",
                 "beta_feat", "lambda_u", "lambda_hn", "beta_p", "lambda_mmd", "lambda_rep",
                 "lambda_b"):
      in_range(self, name, 0)
    for name in ("p0", "alpha_sce", "undecided_frac", "pi_fn"):
      in_range(self, name, 0.0, 1.0)
    in_range(self, "e_c", self.e_w)
    for name in ("lr", "tau"):
      in_range(self, name, 0.0, lo_open=True)
    in_range(self, "rho", 0.0, 1.0, lo_open=True, hi_open=True)
    in_range(self, "mu_end", self.mu_start, lo_open=True)
    for name in SWITCHES + ("normalize",):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")


def make_net(cfg: Config, view_dims) -> MVSIBNet:
  return MVSIBNet(tuple(int(d) for d in view_dims), hidden=tuple(int(h) for h in cfg.hidden),
                  latent=int(cfg.latent), normalize=bool(cfg.normalize))


def optimizer(cfg: Config):
  """Adam with PyTorch's coupled weight decay (Algorithm 1 line 3; 0 by default, §4.4)."""
  return optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.adam(cfg.lr))


def _rows(views, presence, idx):
  """Rows idx of every view and of the presence mask (None: every view present)."""
  return tuple(x[idx] for x in views), None if presence is None else presence[idx]


def make_embed(net: MVSIBNet, block: int):
  """jitted embed(params, views, presence) -> (zs (V, n, D), z_cons (n, D)) in row blocks."""

  def embed(params, views, presence):
    def block_fn(ids, _):
      zs, zc = net.apply(params, *_rows(views, presence, ids), method="encode")
      return jnp.swapaxes(zs, 0, 1), zc

    zs, zc = map_row_blocks(block_fn, jnp.arange(views[0].shape[0]), block=block)
    return jnp.swapaxes(zs, 0, 1), zc

  return jax.jit(embed)


def make_steps(net: MVSIBNet, cfg: Config, n_clusters: int, n: int, global_graph: bool):
  """The engine steps: pre-training (Eq. 2) and training (Eq. 5-52)."""
  C, E = int(n_clusters), int(cfg.epochs)
  max_members = int(cfg.rho * n / C) + 1        # a minority cluster has < ρ n / C members

  def pretrain_step(state, c, idx, w, key):
    views, pres = _rows(c["views"], c["presence"], idx)
    loss, g = jax.value_and_grad(lambda p: X.reconstruction_loss(                # Eq. 2
        views, net.apply(p, views, pres)["x_hat"], weights=w, presence=pres,
        reduction=cfg.rec_loss))(state.params)
    return state.apply_gradients(grads=g), {"loss_rec": loss}

  def train_step(state, c, idx, w, key):
    (views, pres), labels = _rows(c["views"], c["presence"], idx), c["labels"][idx]
    e, sw = c["epoch"], c["switch"]                                      # e is 1-based
    sch = X.stage_schedule(e, E, e_w=cfg.e_w, e_c=cfg.e_c, p0=cfg.p0,         # §3.7, Eq. 13
                           undecided_frac=cfg.undecided_frac, curriculum=sw["use_curriculum"])
    vw = U.view_row_weights(w, pres, len(views), w.shape[0])

    def loss_fn(params):
      out = net.apply(params, views, pres, decode=False)
      zs, zc, u_hat = out["zs"], out["z_cons"], out["u_hat"]
      _, m = U.gaussian_memberships(zs, c["centers_v"], c["sigma_v"])        # Eq. 5-7
      unc = U.sample_uncertainty(m, alpha=cfg.alpha_sce, weights=w, presence=pres)  # Eq. 8-12
      sel = U.select_uncertain(u_hat, sch.p_e, weights=w)                 # Eq. 13-14, U_t
      if global_graph:                                                    # this epoch's votes
        dd, a = c["delta_d"][idx], c["a"][idx]
      else:                                                               # Eq. 15, 17 per batch
        votes = R.csd_votes(zs, labels, cfg.k, weights=w, presence=pres,
                            z_graph=None if cfg.knn_graph == "views" else zc[None])
        dd, a = votes.delta_d, votes.a
      s = R.center_similarity(zc, c["centers_c"], labels)                 # Eq. 16
      f = R.csd_features(dd, s, a, weights=w)                             # Eq. 18
      rt = R.route(net.apply(params, f, method="route"),                  # Eq. 19-23
                   sel * w * (sch.phase > 1) * sw["use_routing"],
                   undecided_frac=sch.undecided_frac)
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
      l_c = X.cluster_contrast_batch(zs, labels, ism.ps, view_weights=vw, tau=cfg.tau)  # Eq. 39-43
      l_u = X.uncertainty_regression(u_hat, unc.u, weights=w)             # Eq. 45
      _, m_cons = U.gaussian_memberships(zc, c["centers_c"], c["sigma_c"])
      s_co = X.co_membership(labels, m_cons, weights=w)                   # §3.7.3 S
      cross = X.cross_view_loss(zs, zc, s_co, tau=cfg.tau, weights=w, presence=pres)  # Eq. 48-50
      l_feat = scl.loss * sw["use_scl"]
      total, parts = X.mvsib_objective(                                   # Eq. 46-47, 51-52
          e, l_c=l_c, l_feat=l_feat, l_u=l_u, l_push=push, l_pull=pull, l_cross=cross,
          l_imb=ism.loss, hn_gate=g, cross_gate=sch.cross_gate, e_w=sch.e_w, e_c=sch.e_c,
          alpha=cfg.alpha_c, beta=cfg.beta_feat, lambda_u=cfg.lambda_u, lambda_hn=cfg.lambda_hn,
          beta_p=cfg.beta_p)
      has_fn = (jnp.sum(R.fn_pairs(labels, rt.fn, weights=w), 1) > 0) * vw   # FN(i) non-empty
      aux = {"loss": total, "l_c": jnp.sum(l_c), "l_feat": jnp.sum(l_feat), "l_u": l_u,
             "l_push": jnp.sum(push), "l_pull": jnp.sum(pull), "l_cross": cross,
             "l_imb": ism.loss, "mmd": jnp.sum(ism.mmd), "rep": ism.rep, "bnd": ism.bnd,
             "gate_hn": g, "u_bar": u_bar, **{"term_" + k: v for k, v in parts.items()},
             "n_uncertain": jnp.sum(sel), "n_undecided": jnp.sum(rt.undecided),
             "theta_sum": jnp.sum(scl.theta * has_fn), "theta_cnt": jnp.sum(has_fn),
             "n_pseudo": jnp.sum(ism.ps.weight), "n_minority_batch": jnp.sum(jnp.max(ism.ps.weight, 1))}
      return total, (aux, R.route_codes(rt.fn, rt.hn), jnp.max(scl.theta * has_fn))

    (_, (aux, codes, t_max)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    ex = {**state.extra, "codes": R.record_codes(state.extra["codes"], idx, w, codes),  # §4.10
          "theta_max": jnp.maximum(state.extra["theta_max"], t_max)}
    return state.apply_gradients(grads=grads).replace(extra=ex), aux

  return pretrain_step, train_step


class ClusterPass(NamedTuple):
  labels: np.ndarray   # (n,) consensus pseudo-labels, ids matched to the previous pass's
  consts: dict         # the epoch's constants for the step: labels, centers, σ, S, votes
  z_cons: jax.Array    # (n, D) the consensus embedding clustered
  inertia: jax.Array   # () k-means inertia on z^cons


def make_cluster_pass(net: MVSIBNet, cfg: Config, n_clusters: int, mask, global_graph: bool):
  """`run(params, views, presence, key, prev_labels) -> ClusterPass`: one clustering pass."""
  C, embed = int(n_clusters), make_embed(net, cfg.embed_block)
  rows_of = None if mask is None else [np.flatnonzero(mask[:, v]) for v in range(mask.shape[1])]

  @jax.jit
  def cluster(params, views, presence, key):
    """k-means (§3.3) of z^cons and every z^(v), each cluster's σ (Eq. 6), S (§3.6.1) and the
    global CSD votes (Eq. 15, 17; invariant to renaming clusters), in the k-means' own ids."""
    zs, zc = embed(params, views, presence)
    z_all = jnp.concatenate([zc[None], zs])
    km = K.view_clusters(key, z_all, C, n_init=cfg.kmeans_n_init, rows_of=rows_of)
    pres = None if presence is None else jnp.pad(presence, ((0, 0), (1, 0)), constant_values=1)
    out = {"sigma": U.cluster_bandwidths_views(z_all, km.labels, km.centers, presence=pres),
           "minority": M.minority_clusters(jnp.zeros((C,)).at[km.labels[0]].add(1.0), cfg.rho)}
    if global_graph:                                  # §3.3 / §4.4: the graph of all samples
      votes = R.csd_votes(zs, km.labels[0], cfg.k, presence=presence,
                          z_graph=None if cfg.knn_graph == "views" else zc[None])
      out.update(delta_d=votes.delta_d, a=votes.a)
    return zc, km.labels, km.centers, km.inertia[0], out

  def run(params, views, presence, key, prev_labels) -> ClusterPass:
    """The pass with its cluster ids matched across views and to prev_labels (host side)."""
    zc, labs, cens, inertia, out = cluster(params, views, presence, key)
    labs, cens, sigma, minority = jax.device_get((labs, cens, out.pop("sigma"),
                                                  out.pop("minority")))  # the host sync
    lab, order = K.match_ids(labs, prev_labels, C, rows_of)
    cens, sigma = (np.stack([x[o] for x, o in zip(a, order)]) for a in (cens, sigma))
    consts = {"labels": lab, "centers_c": cens[0], "centers_v": cens[1:], "sigma_c": sigma[0],
              "sigma_v": sigma[1:], "minority": minority[order[0]]}
    return ClusterPass(lab, {**jax.tree.map(jnp.asarray, consts), **out}, zc, inertia)

  return run


def fit(data: Views, n_clusters: int, config: Config, *, key: jax.Array, run: Run) -> FitResult:
  """Pre-training, then Algorithm 1. Returns the final model's labels and consensus embedding."""
  cfg = dataclasses.replace(config, hidden=tuple(int(h) for h in config.hidden))
  cfg.validate()
  if data.is_image:
    raise ValueError("MVSIB takes multi-view vectors; flatten images into a view first")
  xs = tuple(jnp.asarray(x, jnp.float32) for x in data.flat_views())
  n, dims = xs[0].shape[0], [x.shape[1] for x in xs]
  mask = None if data.mask is None or data.mask.all() else np.asarray(data.mask, bool)
  presence = None if mask is None else jnp.asarray(mask, jnp.float32)
  global_graph = n < cfg.knn_global_max
  if cfg.k >= (n if global_graph else min(cfg.batch_size, n)):
    raise ValueError(f"k={cfg.k} needs more samples per graph (n={n}, batch={cfg.batch_size})")
  net = make_net(cfg, dims)
  pretrain_step, train_step = make_steps(net, cfg, n_clusters, n, global_graph)
  cluster_pass = make_cluster_pass(net, cfg, n_clusters, mask, global_graph)
  k_init, k_pre, k_km0, k_train = jax.random.split(key, 4)
  params = init_params(net, k_init, dims)
  info: dict = {"n_params": int(sum(a.size for a in jax.tree.leaves(params))),
                "global_knn_graph": bool(global_graph), "missing_views": mask is not None}

  # ---- stage 1: pre-training on L_re (Eq. 2; Algorithm 1 line 1) -------------------------
  pre_scan = engine.ScannedEpoch(pretrain_step)

  def pretrain_epoch(epoch, state):
    idx, w = engine.epoch_batches(epoch_permutation(k_pre, epoch, n), n, cfg.batch_size)
    state, m = pre_scan(state, {"views": xs, "presence": presence}, idx, w,
                        epoch_key(k_pre, epoch))
    return engine.Epoch(state, m)

  state, pre_info = engine.run_stage(run, "pretrain", engine.new_state(params, optimizer(cfg)),
                                     cfg.pretrain_epochs, pretrain_epoch, scans=(pre_scan,))
  # ---- starting point: k-means on the consensus embedding (Algorithm 1 line 2) -------------
  init = cluster_pass(state.params, xs, presence, k_km0, None)
  run.log("init", 0, {"inertia": init.inertia}, labels=init.labels)

  # ---- stage 2: Algorithm 1 lines 4-16 (the decoders stay out: Eq. 52 has no L_re) ----------
  scan = engine.ScannedEpoch(train_step)
  switch = {s: jnp.float32(getattr(cfg, s)) for s in SWITCHES}
  params, decoders = split_decoders(state.params)

  summary = jax.jit(R.routing_summary)                                # §4.10, once per epoch
  schedule = jax.jit(lambda e: X.stage_schedule(e, cfg.epochs, e_w=cfg.e_w, e_c=cfg.e_c, p0=cfg.p0,
                     undecided_frac=0.0, curriculum=float(cfg.use_curriculum)))

  def extra(labels):   # the epoch's record: pseudo-labels, route codes (§4.10), θ max
    return {"labels": labels, "codes": jnp.full((n,), -1, jnp.int32), "theta_max": jnp.float32(0)}

  def train_epoch(epoch, state):
    k_km, k_batch, k_steps = jax.random.split(epoch_key(k_train, epoch), 3)
    prev, prev_codes = jax.device_get((state.extra["labels"], state.extra["codes"]))
    cl = cluster_pass(state.params, xs, presence, k_km, prev)                   # line 5
    state = state.replace(extra=extra(cl.consts["labels"]))
    idx, w = engine.epoch_batches(epoch_permutation(k_batch, epoch, n), n, cfg.batch_size)
    state, m = scan(state, {"views": xs, "presence": presence, "epoch": jnp.int32(epoch + 1),
                            "switch": switch, **cl.consts}, idx, w, k_steps)   # lines 6-15
    codes, t_max = jax.device_get((state.extra["codes"], state.extra["theta_max"]))
    sch, routing = jax.device_get((schedule(epoch + 1), summary(prev_codes, codes)))
    theta_mean, nb = m.pop("theta_sum") / max(m.pop("theta_cnt"), 1e-12), idx.shape[0]
    metrics = {**m, **{k: v.item() for k, v in routing.items()}, "phase": int(sch.phase),
               "p_e": float(sch.p_e), "theta_mean": theta_mean, "theta_max": float(t_max),
               "n_minority": int(np.sum(cl.consts["minority"])), "n_pseudo": m["n_pseudo"] * nb,
               "n_uncertain": m["n_uncertain"] * nb, "label_change": float(np.mean(cl.labels != prev))}
    return engine.Epoch(state, metrics, labels=cl.labels)

  state, train_info = engine.run_stage(
      run, "train", engine.new_state(params, optimizer(cfg), extra(jnp.asarray(init.labels))),
      cfg.epochs, train_epoch, scans=(scan,))

  # ---- output: the final consensus embedding hardened to the final consensus centers -------
  final = cluster_pass(state.params, xs, presence, jax.random.fold_in(k_train, cfg.epochs),
                       np.asarray(state.extra["labels"]))
  centers = np.asarray(final.consts["centers_c"])
  alpha = jax.nn.softmax(state.params["params"]["mvae"]["view_logits"])
  info.update(engine.timing_info({"pretrain": pre_info, "train": train_info}),
              view_weights=[round(float(a), 4) for a in alpha])
  fstate = {"params": jax.tree.map(np.asarray, join_decoders(state.params, decoders)),
            "view_dims": dims, "centers": centers}
  return FitResult(labels=np.asarray(assign(final.z_cons, centers)[0]).astype(np.int64),
                   embedding=np.asarray(final.z_cons), init_labels=init.labels.astype(np.int64),
                   init_embedding=np.asarray(init.z_cons), state=fstate, info=info)


def transform(cfg: Config, state: dict, views, presence=None) -> np.ndarray:
  """Consensus embeddings z^cons (n, D) of new samples (Eq. 1, 3) with a fitted state."""
  embed = make_embed(make_net(cfg, state["view_dims"]), cfg.embed_block)
  xs = tuple(jnp.asarray(x, jnp.float32) for x in views)
  pres = None if presence is None else jnp.asarray(presence, jnp.float32)
  return np.asarray(embed(state["params"], xs, pres)[1])


def predict(cfg: Config, state: dict, views, presence=None) -> np.ndarray:
  """Nearest final consensus center of each new sample (Algorithm 1's output rule)."""
  z = transform(cfg, state, views, presence)
  return np.asarray(assign(jnp.asarray(z), jnp.asarray(state["centers"]))[0]).astype(np.int64)
