"""MVSIB ops (clustering_jax.ops.{uncertainty, routing, minority, mv_contrast}) against plain
NumPy references written out with loops, under jax.jit; plus shapes / finiteness (values and
gradients) on degenerate batches, padding invariance, missing views, the θ bound, the router's
undecided fraction, pseudo-sample statistics and InfoNCE special cases."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clustering_jax.nets.multiview import fuse_views
from clustering_jax.ops import minority as M
from clustering_jax.ops import mv_clusters as MC
from clustering_jax.ops import mv_contrast as X
from clustering_jax.ops import routing as R
from clustering_jax.ops import uncertainty as U
from clustering_jax.ops.kmeans import kmeans

RTOL, ATOL = 1e-4, 1e-5
EPS = 1e-12


def close(a, b, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                             rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- data
def make_batch(seed=0, V=2, D=5, sizes=(6, 4, 3, 1)):
  """Clustered multi-view batch with an imbalanced label vector (a singleton cluster)."""
  rng = np.random.default_rng(seed)
  C = len(sizes)
  labels = np.repeat(np.arange(C), sizes)
  rng.shuffle(labels)
  B = len(labels)
  true_c = 2.0 * rng.normal(size=(V, C, D))
  zs = true_c[:, labels] + 0.7 * rng.normal(size=(V, B, D))
  centers = true_c + 0.1 * rng.normal(size=(V, C, D))
  sigma = rng.uniform(0.5, 1.5, (V, C))
  return dict(zs=zs.astype(np.float32), labels=labels.astype(np.int32),
              centers=centers.astype(np.float32), sigma=sigma.astype(np.float32),
              z_cons=zs.mean(0).astype(np.float32), cons_centers=centers.mean(0).astype(np.float32))


def unit_np(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cos_np(a, b):
  return float(unit_np(a) @ unit_np(b))


# ----------------------------------------------------------------------------- Eq. 5-7
def np_memberships(z, c, s):
  B, C = len(z), len(c)
  d = np.zeros((B, C))
  m = np.zeros((B, C))
  for i in range(B):
    for k in range(C):
      d[i, k] = np.sum((z[i] - c[k]) ** 2)
      m[i, k] = math.exp(-d[i, k] / (2 * max(s[k], 1e-3) ** 2))
    m[i] /= m[i].sum()
  return d, m


def test_gaussian_memberships_matches_numpy():
  b = make_batch()
  d, m = jax.jit(U.gaussian_memberships)(b["zs"], b["centers"], b["sigma"])
  chex.assert_shape(m, (2, 14, 4))
  for v in range(2):
    dr, mr = np_memberships(b["zs"][v].astype(np.float64), b["centers"][v], b["sigma"][v])
    close(d[v], dr, rtol=1e-5, atol=1e-4)
    close(m[v], mr)
  # far away from every center: Eq. 7 would be 0/0, the softmax form stays a distribution
  _, mf = U.gaussian_memberships(jnp.full((1, 1, 5), 1e3), b["centers"][:1], b["sigma"][:1])
  chex.assert_tree_all_finite(mf)
  close(mf.sum(-1), 1.0)


def np_bandwidths(z, labels, centers):
  dist = np.linalg.norm(z - centers[labels], axis=1)
  allm = np.sort(dist)[(len(dist) - 1) // 2]
  out = []
  for c in range(len(centers)):
    dc = np.sort(dist[labels == c])
    out.append(max(dc[(len(dc) - 1) // 2] if len(dc) else allm, 1e-3))
  return np.array(out)


def test_cluster_bandwidths_matches_numpy_with_empty_cluster_and_padding():
  b = make_batch(sizes=(6, 5, 3, 0))                       # cluster 3 empty
  z, lab, cen = b["zs"][0], b["labels"], b["centers"][0]
  close(jax.jit(U.cluster_bandwidths)(z, lab, cen), np_bandwidths(z, lab, cen))
  zp = np.concatenate([z, 50 * np.ones((3, 5), np.float32)])
  lp = np.concatenate([lab, np.zeros(3, np.int32)])
  wp = np.r_[np.ones(len(z)), np.zeros(3)].astype(np.float32)
  close(U.cluster_bandwidths(zp, lp, cen, weights=wp), np_bandwidths(z, lab, cen))
  # stacked views with a missing view: view 1 ignores rows 0 and 5
  pres = np.ones((len(z), 2), np.float32)
  pres[[0, 5], 1] = 0
  sv = jax.jit(U.cluster_bandwidths_views)(b["zs"], lab, b["centers"], presence=pres)
  close(sv[0], np_bandwidths(b["zs"][0], lab, b["centers"][0]))
  keep = pres[:, 1] > 0
  close(sv[1], np_bandwidths(b["zs"][1][keep], lab[keep], b["centers"][1]))


# ----------------------------------------------------------------------------- Eq. 8-12
def np_sce(m, alpha, valid):
  V, B, _ = m.shape
  uv = np.zeros((V, B))
  for v in range(V):
    idx = [i for i in range(B) if valid[v, i]]
    if not idx:
      continue
    H = {i: -sum(p * math.log(p + EPS) for p in m[v, i]) for i in idx}
    G = {i: sorted(m[v, i])[-1] - sorted(m[v, i])[-2] for i in idx}
    hmin, hmax = min(H.values()), max(H.values())
    gmin, gmax = min(G.values()), max(G.values())
    for i in idx:
      h = (H[i] - hmin) / (hmax - hmin + EPS)
      dl = (G[i] - gmin) / (gmax - gmin + EPS)
      uv[v, i] = alpha * h + (1 - alpha) * (1 - dl)
  u = np.array([max([uv[v, i] for v in range(V) if valid[v, i]], default=0.0) for i in range(B)])
  return u, uv


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_sample_uncertainty_matches_numpy(alpha):
  b = make_batch(V=3)
  _, m = U.gaussian_memberships(b["zs"], b["centers"], b["sigma"])
  m = np.asarray(m, np.float64)
  out = jax.jit(lambda m: U.sample_uncertainty(m, alpha=alpha))(m.astype(np.float32))
  u, uv = np_sce(m, alpha, np.ones((3, 14), bool))
  close(out.u, u, atol=2e-4)
  close(out.u_view, uv, atol=2e-4)
  assert 0.0 <= float(out.u.min()) and float(out.u.max()) <= 1.0


def test_sample_uncertainty_missing_views_and_padding():
  b = make_batch(V=3)
  _, m = U.gaussian_memberships(b["zs"], b["centers"], b["sigma"])
  m = np.asarray(m)
  pres = np.ones((14, 3), np.float32)
  pres[[0, 3, 5], 1] = 0
  pres[[2, 5], 2] = 0
  w = np.ones(14, np.float32)
  w[7] = 0                                                    # a padding row
  out = jax.jit(lambda m, w, p: U.sample_uncertainty(m, alpha=0.4, weights=w, presence=p))(
    m, w, pres)
  valid = (pres.T > 0) & (w[None] > 0)
  u, uv = np_sce(m.astype(np.float64), 0.4, valid)
  close(out.u, u, atol=2e-4)
  close(out.u_view, uv, atol=2e-4)
  assert float(out.u[7]) == 0.0
  # a missing view's memberships do not matter
  m2 = m.copy()
  m2[1, 0] = np.roll(m2[1, 0], 1)
  m2[2, 5] = np.full(4, 0.25)
  out2 = U.sample_uncertainty(m2, alpha=0.4, weights=w, presence=pres)
  close(out2.u, out.u, atol=1e-6)


def test_batch_minmax_and_uncertain_ratio():
  x = np.array([3.0, 1.0, 2.0, 100.0], np.float32)
  close(jax.jit(U.batch_minmax)(x, np.array([1, 1, 1, 0.0])), [1, 0, 0.5, 0], atol=1e-6)
  close(U.batch_minmax(np.full(4, 2.0, np.float32)), np.zeros(4))       # all equal -> 0
  close(U.batch_minmax(x, np.zeros(4)), np.zeros(4))                     # nothing valid
  E, p0 = 100, 0.3
  for e in (1, 2, 50, 100):
    close(jax.jit(U.uncertain_ratio, static_argnums=(1, 2))(e, E, p0), p0 * (1 - (e - 1) / (E - 1)))
  close(U.uncertain_ratio(1, 1, 0.3), 0.3)
  for n, p in ((256, 0.3), (256, 0.0), (10, 0.05), (0, 0.3)):
    assert int(U.n_uncertain(n, p)) == (min(max(1, math.floor(n * p)), n))


def np_select(scores, p, valid):
  idx = [i for i in range(len(scores)) if valid[i]]
  k = min(max(1, math.floor(len(idx) * p)), len(idx))
  order = sorted(idx, key=lambda i: (-scores[i], i))
  out = np.zeros(len(scores))
  out[order[:k]] = 1
  return out


def test_select_uncertain_matches_numpy_incl_ties_and_padding():
  rng = np.random.default_rng(3)
  s = rng.uniform(size=20).astype(np.float32)
  s[[4, 9]] = s[2]                                           # ties
  w = np.ones(20, np.float32)
  w[[0, 13]] = 0
  for p in (0.0, 0.1, 0.3, 0.55, 1.0):
    got = jax.jit(lambda s, w, p: U.select_uncertain(s, p, weights=w))(s, w, p)
    close(got, np_select(s, p, w > 0))
  close(U.select_uncertain(np.full(8, 0.5, np.float32), 0.25), [1, 1, 0, 0, 0, 0, 0, 0])
  close(U.weighted_mean(np.array([1.0, 3.0, 9.0]), np.array([1.0, 1.0, 0.0])), 2.0)


# ----------------------------------------------------------------------------- Eq. 15-18
def np_knn(z, k, valid):
  out = []
  for i in range(len(z)):
    cand = [j for j in range(len(z)) if j != i and valid[j]]
    cand.sort(key=lambda j: (np.sum((z[i] - z[j]) ** 2), j))
    out.append(cand[:k])
  return np.array(out)


def test_batch_knn_matches_brute_force_and_skips_padding():
  b = make_batch()
  idx = jax.jit(R.batch_knn, static_argnums=1)(b["zs"], 3)
  chex.assert_shape(idx, (2, 14, 3))
  for v in range(2):
    np.testing.assert_array_equal(idx[v], np_knn(b["zs"][v], 3, np.ones(14, bool)))
  zp = np.concatenate([b["zs"], np.zeros((2, 4, 5), np.float32)], 1)   # padding at the origin
  w = np.r_[np.ones(14), np.zeros(4)].astype(np.float32)
  pres = np.ones((18, 2), np.float32)
  pres[3, 1] = 0                                               # row 3 misses view 1
  idxp = R.batch_knn(zp, 3, weights=w, presence=pres)
  np.testing.assert_array_equal(idxp[0, :14], np_knn(zp[0], 3, w > 0)[:14])
  ok1 = (w > 0) & (pres[:, 1] > 0)
  ref1 = np_knn(zp[1], 3, ok1)[:14]
  np.testing.assert_array_equal(np.asarray(idxp[1, :14])[ok1[:14]], ref1[ok1[:14]])


def np_votes(labels, nb_lab, nb_d, nb_w, pres):
  V, B, k = nb_lab.shape
  dd = np.zeros((V, B))
  aa = np.zeros((V, B))
  for v in range(V):
    for i in range(B):
      same = [(nb_d[v, i, t], nb_w[v, i, t]) for t in range(k)
              if nb_lab[v, i, t] == labels[i] and nb_w[v, i, t] > 0]
      diff = [(nb_d[v, i, t], nb_w[v, i, t]) for t in range(k)
              if nb_lab[v, i, t] != labels[i] and nb_w[v, i, t] > 0]
      p, n = sum(w for _, w in same), sum(w for _, w in diff)
      dd[v, i] = (p - n) / (p + n + EPS)
      if same and diff:
        dp = sum(d * w for d, w in same) / p
        dn = sum(d * w for d, w in diff) / n
        aa[v, i] = (dn - dp) / (dn + dp + EPS)
      else:
        aa[v, i] = 1.0 if same else (-1.0 if diff else 0.0)
  d_mean = np.array([np.mean([dd[v, i] for v in range(V) if pres[i, v]]) if pres[i].any() else 0
                     for i in range(B)])
  a_mean = np.array([np.mean([aa[v, i] for v in range(V) if pres[i, v]]) if pres[i].any() else 0
                     for i in range(B)])
  return d_mean, a_mean


def test_neighbour_stats_and_local_votes_match_numpy_global_graph():
  b = make_batch(V=3)
  rng = np.random.default_rng(5)
  n_ref = 30
  z_ref = rng.normal(size=(3, n_ref, 5)).astype(np.float32)
  ref_lab = rng.integers(0, 4, n_ref).astype(np.int32)
  ref_pres = np.ones((n_ref, 3), np.float32)
  ref_pres[[1, 7], 2] = 0
  idx = rng.integers(0, n_ref, (1, 14, 5)).astype(np.int32)    # one shared graph
  pres = np.ones((14, 3), np.float32)
  pres[[0, 4], 0] = 0
  fn = jax.jit(lambda za, zr, ix, rl, rp, ap: R.neighbour_stats(za, zr, ix, rl, ref_presence=rp,
                                                                anchor_presence=ap))
  nb = fn(b["zs"], z_ref, idx, ref_lab, ref_pres, pres)
  chex.assert_shape(nb.dists, (3, 14, 5))
  for v in range(3):
    for i in range(14):
      for t in range(5):
        j = idx[0, i, t]
        assert nb.labels[v, i, t] == ref_lab[j]
        close(nb.dists[v, i, t], np.linalg.norm(b["zs"][v, i] - z_ref[v, j]), atol=1e-5)
        close(nb.weights[v, i, t], ref_pres[j, v] * pres[i, v])
  votes = jax.jit(lambda l, nb, p: R.local_votes(l, nb, presence=p))(b["labels"], nb, pres)
  d_ref, a_ref = np_votes(b["labels"], np.asarray(nb.labels), np.asarray(nb.dists, np.float64),
                          np.asarray(nb.weights), pres > 0)
  close(votes.delta_d, d_ref)
  close(votes.a, a_ref)


def np_csd_votes(zs, labels, k, graph_z=None):
  """Δd, a of every row from the kNN graph of the rows (per view, or one on graph_z)."""
  V, B, _ = zs.shape
  nbr = [np_knn(zs[v] if graph_z is None else graph_z, k, np.ones(B, bool)) for v in range(V)]
  lab = np.stack([labels[n] for n in nbr])
  dist = np.stack([[[np.linalg.norm(zs[v, i] - zs[v, j]) for j in nbr[v][i]] for i in range(B)]
                   for v in range(V)])
  return np_votes(labels, lab, dist, np.ones(lab.shape), np.ones((B, V), bool))


def test_csd_votes_from_the_rows_own_graph():
  b = make_batch(V=2)
  f = jax.jit(lambda zs, l, zg: R.csd_votes(zs, l, 3, z_graph=zg), static_argnums=())
  for zg in (None, b["z_cons"]):
    votes = f(b["zs"], b["labels"], None if zg is None else zg[None])
    d_ref, a_ref = np_csd_votes(b["zs"].astype(np.float64), b["labels"], 3, zg)
    close(votes.delta_d, d_ref)
    close(votes.a, a_ref)


def test_local_votes_one_sided_neighbourhoods():
  labels = np.array([0, 1, 2], np.int32)
  nb = R.Neighbours(labels=np.array([[[0, 0], [0, 0], [0, 0]]], np.int32),
                    dists=np.ones((1, 3, 2), np.float32),
                    weights=np.array([[[1, 1], [1, 1], [0, 0]]], np.float32))
  v = R.local_votes(labels, nb)
  close(v.delta_d, [1.0, -1.0, 0.0], atol=1e-6)
  close(v.a, [1.0, -1.0, 0.0])


def test_center_similarity_and_features():
  b = make_batch()
  s = jax.jit(R.center_similarity)(b["z_cons"], b["cons_centers"], b["labels"])
  close(s, [cos_np(b["z_cons"][i], b["cons_centers"][b["labels"][i]]) for i in range(14)])
  w = np.ones(14, np.float32)
  w[2] = 0
  f = R.csd_features(np.arange(14.0), s, -np.arange(14.0), weights=w)
  chex.assert_shape(f, (14, 3))
  close(f[2], np.zeros(3))
  close(f[3], [3.0, s[3], -3.0])


# ----------------------------------------------------------------------------- Eq. 19-23
def np_route(logits, cand, frac):
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  conf = p.max(1)
  idx = [i for i in range(len(cand)) if cand[i] > 0]
  n_und = math.floor(len(idx) * frac)
  und = sorted(idx, key=lambda i: (conf[i], i))[:n_und]
  fn = np.zeros(len(cand))
  hn = np.zeros(len(cand))
  u = np.zeros(len(cand))
  for i in idx:
    if i in und:
      u[i] = 1
    elif p[i, 1] > p[i, 0]:
      fn[i] = 1
    else:
      hn[i] = 1
  return p, conf, fn, hn, u


@pytest.mark.parametrize("frac", [0.0, 0.1, 0.25])
def test_route_matches_numpy_and_undecided_fraction(frac):
  rng = np.random.default_rng(7)
  logits = rng.normal(size=(60, 2)).astype(np.float32)
  cand = (rng.uniform(size=60) < 0.7).astype(np.float32)
  r = jax.jit(lambda l, c, f: R.route(l, c, undecided_frac=f))(logits, cand, frac)
  p, conf, fn, hn, und = np_route(logits.astype(np.float64), cand, frac)
  close(r.p_hn, p[:, 0])
  close(r.p_fn, p[:, 1])
  close(r.conf, conf)
  close(r.fn, fn, atol=0)
  close(r.hn, hn, atol=0)
  close(r.undecided, und, atol=0)
  n_cand = int(cand.sum())
  assert int(r.undecided.sum()) == math.floor(frac * n_cand)
  assert np.all(np.asarray(r.undecided + r.fn + r.hn) == cand)
  if frac > 0:                       # the undecided are exactly the lowest-confidence candidates
    c = np.asarray(r.conf)
    assert c[np.asarray(r.undecided) > 0].max() <= c[np.asarray(r.decided) > 0].min()


def test_route_straight_through_gradient():
  logits = jnp.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.1]])
  cand = jnp.array([1.0, 1.0, 0.0])
  g = jax.grad(lambda l: jnp.sum(R.route(l, cand, undecided_frac=0.0).fn * jnp.array([1., 2, 3])))(
    logits)
  p = jax.nn.softmax(logits)
  dp = p[:, 1] * (1 - p[:, 1])                            # d p_fn / d t_fn
  close(g[:, 1], [dp[0], 2 * dp[1], 0.0])
  close(g[:, 0], [-dp[0], -2 * dp[1], 0.0])
  hard = R.route(logits, cand, undecided_frac=0.0, straight_through=False)
  close(hard.fn, [1, 0, 0], atol=0)


# ----------------------------------------------------------------------------- Eq. 24-25, A
def np_y_pse(labels, fn, pi):
  B = len(labels)
  y = np.zeros((B, B))
  for i in range(B):
    for j in range(B):
      if labels[i] == labels[j] and not fn[i] and not fn[j]:
        y[i, j] = 1.0
      elif labels[i] == labels[j] and (fn[i] or fn[j]):
        y[i, j] = pi
  return y


def np_theta(logits, labels, fn, w_fn, valid):
  """Eq. 25 with ω of A.2, written out."""
  B = len(labels)
  th = np.zeros(B)
  for i in range(B):
    num = den = 0.0
    for r in range(B):
      if r == i or not valid[r] or not valid[i]:
        continue
      is_fn = labels[r] == labels[i] and (fn[i] or fn[r])
      om = w_fn[i] if is_fn else 1.0
      den += om * math.exp(logits[i, r])
      num += om * math.exp(logits[i, r]) if is_fn else 0.0
    th[i] = num / den if den > 0 else 0.0
  return th


def fn_setup(seed=0, B=16):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 3, B).astype(np.int32)
  fn = (rng.uniform(size=B) < 0.3).astype(np.float32)
  z = rng.normal(size=(B, 4)).astype(np.float32)
  logits = np.asarray(X.cosine_matrix(z, z)) / 0.5
  return labels, fn, z, logits


def test_pseudo_positive_weights_and_fn_pairs_match_eq24():
  labels, fn, _, _ = fn_setup()
  y = jax.jit(lambda l, f: R.pseudo_positive_weights(l, f, pi_fn=0.1))(labels, fn)
  close(y, np_y_pse(labels, fn > 0, 0.1), atol=1e-7)
  fp = R.fn_pairs(labels, fn)
  ref = np_y_pse(labels, fn > 0, 0.5)
  close(fp, (ref == 0.5) * (1 - np.eye(16)), atol=0)
  w = np.ones(16, np.float32)
  w[4] = 0
  y2 = R.pseudo_positive_weights(labels, fn, pi_fn=0.1, weights=w)
  assert float(jnp.abs(y2[4]).sum() + jnp.abs(y2[:, 4]).sum()) == 0.0


def test_fn_mass_ratio_matches_eq25():
  labels, fn, _, logits = fn_setup(1)
  valid = np.ones(16, bool)
  valid[5] = False
  w = valid.astype(np.float32)
  fp = R.fn_pairs(labels, fn, weights=w)
  wf = np.linspace(0.05, 0.5, 16).astype(np.float32)
  den = R.denominator_weights(fp, wf, weights=w)
  th = jax.jit(R.fn_mass_ratio)(logits, fp, den)
  close(th, np_theta(logits.astype(np.float64), labels, fn > 0, wf, valid))


@pytest.mark.parametrize("bound", [0.02, 0.1, 0.3, 0.9, 1.0])
def test_fn_weight_rule_keeps_theta_under_bound(bound):
  for seed in range(4):
    labels, fn, _, logits = fn_setup(seed, B=24)
    logits = logits * (1 + seed)                         # sharper similarities too
    fp = R.fn_pairs(labels, fn)
    w_fn = 0.1 * 0.8                                     # g π_FN
    th0 = R.fn_mass_ratio(logits, fp, R.denominator_weights(fp, w_fn))
    w = jax.jit(R.fn_weight_for_bound)(logits, fp, w_fn, bound)
    th = R.fn_mass_ratio(logits, fp, R.denominator_weights(fp, w))
    assert np.all(np.asarray(th) <= bound + 1e-5)
    assert np.all(np.asarray(w) <= w_fn + 1e-7)
    # only anchors over the bound are changed, and those land on it
    over = np.asarray(th0) > bound
    close(np.asarray(w)[~over], w_fn, atol=1e-7)
    close(np.asarray(th)[over], bound, rtol=1e-3)
    close(th, np_theta(logits.astype(np.float64), labels, fn > 0, np.asarray(w, np.float64),
                       np.ones(24, bool)), rtol=1e-3)
  # per-anchor bounds, and bound 0 = drop FN from the denominator
  w = R.fn_weight_for_bound(logits, fp, 0.1, np.zeros(24, np.float32))
  close(w, np.zeros(24))


def np_theta_bound(anchor, pos_c, den_c, center, pos_w, fp, base):
  B = len(anchor)
  out = np.ones(B)
  for i in range(B):
    z, u = unit_np(anchor[i]), unit_np(center[i])
    s = z @ u
    A = lambda b: unit_np(b) @ u - s * (z @ unit_np(b))
    P = [(A(pos_c[j]), pos_w[i, j]) for j in range(B) if pos_w[i, j] > 0]
    F = [A(den_c[r]) for r in range(B) if base[i, r] > 0 and fp[i, r] > 0]
    N = [A(den_c[r]) for r in range(B) if base[i, r] > 0 and fp[i, r] == 0]
    if not P or not F:
      continue
    mp = sum(a * w for a, w in P) / sum(w for _, w in P)
    mf = np.mean(F)
    mm = np.mean(N) if N else 0.0
    if mf <= mp:
      out[i] = 1.0
    elif mm > mp:
      out[i] = 0.0
    else:
      out[i] = min(max((mp - mm) / (mf - mm), 0.0), 1.0)
  return out


def test_theta_bound_from_batch_matches_appendix_a():
  labels, fn, z, _ = fn_setup(2)
  rng = np.random.default_rng(2)
  zc = z + 0.3 * rng.normal(size=z.shape).astype(np.float32)
  centers = rng.normal(size=(3, 4)).astype(np.float32)
  pos_w = np.asarray(R.pseudo_positive_weights(labels, fn))
  fp = np.asarray(R.fn_pairs(labels, fn))
  base = np.asarray(R.base_denominator_weights(16))
  th = jax.jit(R.theta_bound_from_batch)(z, zc, z, centers[labels], pos_w, fp, base)
  close(th, np_theta_bound(z.astype(np.float64), zc, z, centers[labels], pos_w, fp, base),
        atol=1e-4)
  assert np.all((np.asarray(th) >= 0) & (np.asarray(th) <= 1))


def test_weighted_logsumexp_exact_zero_weights_and_finite_grads():
  x = jnp.array([[1.0, 2.0, 1e4], [0.5, -3.0, 2.0]])
  b = jnp.array([[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
  out = R.weighted_logsumexp(x, b)
  close(out[0], math.log(math.exp(1) + 0.5 * math.exp(2)))
  assert float(out[1]) == -np.inf
  g = jax.grad(lambda x: jnp.sum(jnp.where(jnp.isfinite(R.weighted_logsumexp(x, b)),
                                           R.weighted_logsumexp(x, b), 0.0)))(x)
  chex.assert_tree_all_finite(g)
  assert float(g[0, 2]) == 0.0


# ----------------------------------------------------------------------------- Eq. 26-29
def np_push_pull(z, centers, labels, hn, m, variant):
  pushes, pulls = [], []
  for i in range(len(z)):
    sp = cos_np(z[i], centers[labels[i]])
    others = [cos_np(z[i], centers[c]) for c in range(len(centers)) if c != labels[i]]
    sm = max(others)
    if variant == "triplet":
      pu = max(0.0, sm - sp + m)
    else:
      pu = max(0.0, sp - sm + m)
    pl = 1 - (sm if variant == "appendix" else sp)
    pushes.append(pu)
    pulls.append(pl)
  H = hn.sum()
  return (np.dot(hn, pushes) / H if H else 0.0), (np.dot(hn, pulls) / H if H else 0.0)


@pytest.mark.parametrize("variant", R.HN_VARIANTS)
def test_hn_push_pull_matches_eq26_28(variant):
  b = make_batch()
  hn = (np.arange(14) % 3 == 0).astype(np.float32)
  out = jax.jit(lambda z, c, l, h: R.hn_push_pull(z, c, l, h, margin=0.2, variant=variant))(
    b["zs"][0], b["centers"][0], b["labels"], hn)
  push, pull = np_push_pull(b["zs"][0].astype(np.float64), b["centers"][0], b["labels"], hn, 0.2,
                            variant)
  close(out.push, push)
  close(out.pull, pull)
  # views with presence: view 1 misses rows 0 and 3
  pres = np.ones((14, 2), np.float32)
  pres[[0, 3], 1] = 0
  pv, lv = R.hn_push_pull_views(b["zs"], b["centers"], b["labels"], hn, presence=pres,
                                margin=0.2, variant=variant)
  p1, l1 = np_push_pull(b["zs"][1].astype(np.float64), b["centers"][1], b["labels"],
                        hn * pres[:, 1], 0.2, variant)
  close(pv, [push, p1])
  close(lv, [pull, l1])
  empty = R.hn_push_pull(b["zs"][0], b["centers"][0], b["labels"], np.zeros(14, np.float32))
  assert float(empty.push) == 0.0 and float(empty.pull) == 0.0
  with pytest.raises(ValueError):
    R.hn_push_pull(b["zs"][0], b["centers"][0], b["labels"], hn, variant="other")


def test_hn_gate_eq29():
  for u, g in ((0.1, 0.0), (0.3, 0.0), (0.5, 0.5), (0.7, 1.0), (0.9, 1.0)):
    close(jax.jit(R.hn_gate, static_argnums=(1, 2))(u, 0.3, 0.7), g, atol=1e-6)


def test_routing_metrics():
  prev = jnp.array([1, 0, -1, 1, 0, -1])
  cur = jnp.array([1, 1, 0, 1, -1, -1])
  rc, n = R.routing_consistency(prev, cur)
  assert int(n) == 3 and abs(float(rc) - 2 / 3) < 1e-6
  close(R.hn_trigger_rate(cur), 1 / 4)
  close(R.routing_consistency(jnp.full(3, -1), cur[:3])[0], 0.0)
  codes = R.route_codes(jnp.array([1.0, 0, 0]), jnp.array([0.0, 1, 0]))
  np.testing.assert_array_equal(codes, [1, 0, -1])
  summary = jax.jit(R.routing_summary)(prev, cur)
  assert (int(summary["n_fn"]), int(summary["n_hn"]), int(summary["rc_n"])) == (3, 1, 3)
  close([summary["rc"], summary["hn_rate"]], [2 / 3, 1 / 4])
  # a batch's codes written into the epoch's record; padding rows (weight 0, index 0) do nothing
  rec = jax.jit(R.record_codes)(jnp.full(6, -1), jnp.array([4, 1, 0, 0]),
                                jnp.array([1.0, 1.0, 0.0, 0.0]), jnp.array([1, 0, 1, 1]))
  np.testing.assert_array_equal(rec, [-1, 0, -1, -1, 1, -1])


# ----------------------------------------------------------------------------- Eq. 30-38
def test_minority_and_batch_stats():
  close(M.minority_clusters(np.array([50, 10, 40, 0]), 0.5), [0, 1, 0, 1])
  close(M.minority_clusters(np.array([10, 10, 10]), 0.5), [0, 0, 0])            # no minority
  b = make_batch()
  w = np.ones(14, np.float32)
  w[0] = 0
  cnt, mu = jax.jit(M.batch_cluster_stats, static_argnums=2)(b["z_cons"], b["labels"], 4,
                                                              weights=w)
  for c in range(4):
    rows = [i for i in range(14) if b["labels"][i] == c and w[i] > 0]
    assert float(cnt[c]) == len(rows)
    close(mu[c], b["z_cons"][rows].mean(0) if rows else np.zeros(5), atol=1e-5)


pseudo_samples = jax.jit(M.pseudo_samples, static_argnames="n_pseudo")


def minority_batch(seed=0):
  b = make_batch(seed, sizes=(6, 5, 3, 1))
  minority = np.array([0, 1, 1, 1], np.float32)          # clusters 1, 2 (n >= 2) and 3 (n = 1)
  ps = pseudo_samples(jax.random.key(seed), b["z_cons"], b["labels"], minority,
                      b["cons_centers"], n_pseudo=4)
  return b, minority, ps


def test_pseudo_samples_layout_and_reproducibility():
  b, minority, ps = minority_batch()
  chex.assert_shape(ps.psi, (4, 4, 5))
  close(ps.weight, [[0] * 4, [1] * 4, [1] * 4, [1, 0, 0, 0]], atol=0)
  close(ps.psi[3, 0], b["cons_centers"][3], atol=0)         # n_c = 1: back to the center
  f = lambda k: pseudo_samples(k, b["z_cons"], b["labels"], minority, b["cons_centers"],
                              n_pseudo=4).psi
  np.testing.assert_array_equal(f(jax.random.key(3)), f(jax.random.key(3)))
  assert not np.allclose(f(jax.random.key(3))[1], f(jax.random.key(4))[1])


def test_pseudo_samples_mean_and_amplified_covariance_statistically():
  rng = np.random.default_rng(11)
  D, P = 3, 5
  z = np.concatenate([rng.normal(size=(6, D)) * [1.0, 0.5, 2.0] + 3.0,
                      rng.normal(size=(4, D)) - 3.0]).astype(np.float32)
  labels = np.r_[np.zeros(6), np.ones(4)].astype(np.int32)
  centers = np.stack([z[:6].mean(0), z[6:].mean(0)])
  keys = jax.random.split(jax.random.key(0), 4000)
  draw = jax.jit(jax.vmap(lambda k: M.pseudo_samples(k, z, labels, np.array([1.0, 0.0]), centers,
                                                     n_pseudo=P, eps=1e-6).psi[0]))
  psi = np.asarray(draw(keys), np.float64).reshape(-1, D)          # 20000 draws of cluster 0
  mu = z[:6].astype(np.float64).mean(0)
  sig = np.cov(z[:6].astype(np.float64).T, ddof=1) * 5 / (5 + 1e-6)   # Eq. 31's n_c - 1 + ε
  sig_amp = P / 6 * sig + 1e-6 * np.eye(D)                           # Eq. 32
  n = len(psi)
  se = np.sqrt(np.diag(sig_amp) / n)
  assert np.all(np.abs(psi.mean(0) - mu) < 5 * se)
  emp = np.cov(psi.T)
  # each entry's sampling sd is about sqrt((S_ii S_jj + S_ij^2)/n)
  sd = np.sqrt((np.outer(np.diag(sig_amp), np.diag(sig_amp)) + sig_amp ** 2) / n)
  assert np.all(np.abs(emp - sig_amp) < 5 * sd)
  # the amplification is really P / n_c: the covariance without it would be off
  assert np.abs(np.trace(emp) / np.trace(sig) - P / 6) < 0.05


def test_amplified_cov_max_eig_and_safety_radii():
  b, minority, _ = minority_batch()
  lam = jax.jit(M.amplified_cov_max_eig, static_argnums=2)(b["z_cons"], b["labels"], 4,
                                                            n_pseudo=4)
  for c in range(4):
    zc = b["z_cons"][b["labels"] == c].astype(np.float64)
    if len(zc) < 2:
      assert float(lam[c]) == 0.0
      continue
    cov = (zc - zc.mean(0)).T @ (zc - zc.mean(0)) / (len(zc) - 1 + 1e-6)
    close(lam[c], np.linalg.eigvalsh(4 / len(zc) * cov + 1e-6 * np.eye(5))[-1], rtol=1e-3)
  # gathering each cluster's rows first (max_members) gives the same values for clusters of at
  # most max_members rows, and the first max_members rows' value for a larger one
  few = jax.jit(M.amplified_cov_max_eig, static_argnums=2, static_argnames="max_members")
  lam4 = few(b["z_cons"], b["labels"], 4, n_pseudo=4, max_members=4)    # sizes 6, 5, 3, 1
  close(lam4[2:], lam[2:], rtol=1e-4)
  for c in (0, 1):
    zc = b["z_cons"][b["labels"] == c].astype(np.float64)
    x = zc[:4] - zc.mean(0)
    n_c = len(zc)
    close(lam4[c], 4 / n_c * np.linalg.eigvalsh(x @ x.T)[-1] / (n_c - 1 + 1e-6) + 1e-6, rtol=1e-3)
  rmax, rmin = M.safety_radii(lam, b["cons_centers"], t=0.5, delta=0.1)
  cc = b["cons_centers"].astype(np.float64)
  gamma = min(np.linalg.norm(cc[i] - cc[j]) for i in range(4) for j in range(4) if i != j)
  close(rmax, np.sqrt(np.asarray(lam, np.float64)) * (np.sqrt(5) + 0.5) + 0.1, rtol=1e-4)
  close(rmin, gamma - np.asarray(rmax), rtol=1e-4, atol=1e-4)
  close(M.min_center_gap(b["cons_centers"][:1]), 0.0)


def np_kernel(a, b, s):
  return math.exp(-np.sum((a - b) ** 2) / (2 * s * s))


def np_mmd(z, labels, psi, pw, s):
  C = psi.shape[0]
  out = np.zeros(C)
  for c in range(C):
    real = [z[i] for i in range(len(z)) if labels[i] == c]
    fake = [psi[c, p] for p in range(psi.shape[1]) if pw[c, p] > 0]
    n, P = len(real), len(fake)
    if n < 2 or P < 2:
      continue
    t1 = sum(np_kernel(real[i], real[j], s) for i in range(n) for j in range(n) if i != j)
    t2 = sum(np_kernel(fake[p], fake[q], s) for p in range(P) for q in range(P) if p != q)
    t3 = sum(np_kernel(r, f, s) for r in real for f in fake)
    out[c] = t1 / (n * (n - 1)) + t2 / (P * (P - 1)) - 2 * t3 / (n * P)
  return out


def test_mmd_repulsion_boundary_match_numpy():
  b, minority, ps = minority_batch()
  z = b["z_cons"].astype(np.float64)
  psi, pw = np.asarray(ps.psi, np.float64), np.asarray(ps.weight)
  sigma = float(M.median_bandwidth(b["z_cons"]))
  n = len(z)
  d = [np.linalg.norm(z[i] - z[j]) for i in range(n) for j in range(i + 1, n)]
  close(sigma, max(sorted(d)[(len(d) - 1) // 2], 1e-3), rtol=1e-5)
  mmd = jax.jit(lambda z, l, ps, s: M.mmd_per_cluster(z, l, ps, sigma=s))(b["z_cons"], b["labels"],
                                                                          ps, sigma)
  close(mmd, np_mmd(z, b["labels"], psi, pw, sigma), atol=1e-5)
  # repulsion, Eq. 36
  rep = 0.0
  for c in range(4):
    for c2 in range(4):
      if c != c2:
        for p in range(4):
          for q in range(4):
            if pw[c, p] and pw[c2, q]:
              rep += np_kernel(psi[c, p], psi[c2, q], 1.3)
  close(jax.jit(lambda ps: M.repulsion_loss(ps, sigma_r=1.3))(ps), rep)
  # boundary, Eq. 37, with per-cluster radii
  cen = b["cons_centers"].astype(np.float64)
  rmax, rmin = np.array([0.5, 1.0, 1.5, 0.2]), np.array([3.0, 4.0, 5.0, 6.0])
  lb = 0.0
  for c in range(4):
    for p in range(4):
      if pw[c, p]:
        lb += max(np.linalg.norm(psi[c, p] - cen[c]) - rmax[c], 0)
        lb += max(rmin[c] - min(np.linalg.norm(psi[c, p] - cen[j]) for j in range(4) if j != c), 0)
  bl = jax.jit(lambda ps, c: M.boundary_loss(ps, c, r_max=rmax, r_min=rmin))
  close(bl(ps, b["cons_centers"]),
        lb, rtol=1e-4)
  imb = M.imbalance_loss(jnp.asarray(mmd), 2.0, 3.0, lambda_mmd=0.5, lambda_rep=0.1, lambda_b=2.0)
  close(imb, 0.5 * float(np.sum(mmd)) + 0.2 + 6.0)



def test_ism_losses_assembles_eq30_38():
  b, minority, _ = minority_batch()
  key, z, lab, cen = jax.random.key(2), b["z_cons"], b["labels"], b["cons_centers"]

  @jax.jit
  def both(m):
    out = M.ism_losses(key, z, lab, m, cen, n_pseudo=4, lambda_mmd=0.5, lambda_rep=0.2,
                       lambda_b=3.0, max_members=6)
    ps = M.pseudo_samples(key, z, lab, m, cen, n_pseudo=4)
    sig = M.median_bandwidth(z)
    r_max, r_min = M.safety_radii(M.amplified_cov_max_eig(z, lab, 4, n_pseudo=4), cen)
    ref = (ps.psi, M.mmd_per_cluster(z, lab, ps, sigma=sig), M.repulsion_loss(ps, sigma_r=sig),
           M.boundary_loss(ps, cen, r_max=r_max, r_min=r_min))
    return out, ref

  out, (psi, mmd, rep, bnd) = both(minority)
  close(out.ps.psi, psi)
  close(out.mmd, mmd)
  close([out.rep, out.bnd, out.loss], [rep, bnd, 0.5 * float(np.sum(mmd)) + 0.2 * rep + 3 * bnd])
  assert float(out.loss) > 0
  none, _ = both(np.zeros(4, np.float32))         # no minority cluster: no ISM term at all
  assert float(none.loss) == 0.0 and float(jnp.sum(none.ps.weight)) == 0.0


# ----------------------------------------------------------------------------- Eq. 2
def test_reconstruction_loss_matches_eq2_with_padding_and_missing_views():
  rng = np.random.default_rng(3)
  views = [rng.normal(size=(5, d)).astype(np.float32) for d in (3, 2)]
  x_hat = [rng.normal(size=(5, d)).astype(np.float32) for d in (3, 2)]
  w = np.array([1, 1, 1, 1, 0], np.float32)
  pres = np.ones((5, 2), np.float32)
  pres[1, 0] = 0
  f = jax.jit(lambda v, h, w, p: X.reconstruction_loss(v, h, weights=w, presence=p))
  ref = sum(np.sum((views[v][i] - x_hat[v][i]) ** 2) for v in range(2) for i in range(4)
            if pres[i, v]) / 4
  close(f(views, x_hat, w, pres), ref)
  mean = X.reconstruction_loss(views, x_hat, reduction="mean")
  close(mean, sum(np.mean((views[v] - x_hat[v]) ** 2, 1).sum() for v in range(2)) / 5)

# ----------------------------------------------------------------------------- Eq. 39-43
def np_cluster_contrast(uc, mv, psi, pw, cw, tau, eps=1e-8):
  C = len(uc)
  losses = []
  for c in range(C):
    if not cw[c]:
      continue
    P = math.exp(cos_np(uc[c], mv[c]) / tau)
    P += sum(math.exp(cos_np(uc[c], psi[c, p]) / tau) for p in range(psi.shape[1]) if pw[c, p])
    N = sum(math.exp(cos_np(uc[c], uc[j]) / tau) for j in range(C) if j != c and cw[j])
    N += sum(math.exp(cos_np(uc[c], psi[j, p]) / tau) for j in range(C) if j != c and cw[j]
             for p in range(psi.shape[1]) if pw[j, p])
    losses.append(-math.log(P / (P + N + eps)))
  return np.mean(losses) if losses else 0.0


def test_cluster_contrast_matches_eq39_43():
  b, minority, ps = minority_batch()
  cnt, uc = M.batch_cluster_stats(b["z_cons"], b["labels"], 4)
  mv = np.stack([np.asarray(M.batch_cluster_stats(b["zs"][v], b["labels"], 4)[1])
                 for v in range(2)])
  out = jax.jit(lambda uc, mv, ps, cw: X.cluster_contrast_views(uc, mv, ps, cw, tau=0.5))(
    uc, mv, ps, cnt)
  for v in range(2):
    close(out[v], np_cluster_contrast(np.asarray(uc, np.float64), mv[v].astype(np.float64),
                                      np.asarray(ps.psi, np.float64), np.asarray(ps.weight),
                                      np.asarray(cnt) > 0, 0.5))
  vw = np.ones((2, len(b["labels"])), np.float32)
  vw[1, b["labels"] == 3] = 0                        # cluster 3 absent from view 1
  batch = jax.jit(lambda zs, ps, vw: X.cluster_contrast_batch(zs, b["labels"], ps, view_weights=vw,
                                                              tau=0.5))(b["zs"], ps, vw)
  mv1 = np.asarray(M.batch_cluster_stats(b["zs"][1], b["labels"], 4, weights=vw[1])[1])
  close(batch[0], out[0])
  close(batch[1], np_cluster_contrast(np.asarray(ps.means, np.float64), mv1.astype(np.float64),
                                      np.asarray(ps.psi, np.float64), np.asarray(ps.weight),
                                      np.asarray(cnt) * [1, 1, 1, 0] > 0, 0.5))
  # without pseudo-samples it is a plain centroid InfoNCE; absent clusters are left out
  nops = ps._replace(weight=jnp.zeros_like(ps.weight))
  cw = np.array([1, 1, 0, 1.0])
  close(X.cluster_contrast(uc, mv[0], nops, cw),
        np_cluster_contrast(np.asarray(uc, np.float64), mv[0], np.asarray(ps.psi), np.zeros((4, 4)),
                            cw > 0, 0.5))


# ----------------------------------------------------------------------------- Eq. 44-45
def np_feature_contrast(zv, zc, pos_w, den_w, a, tau):
  losses = []
  for i in range(len(zv)):
    if not a[i]:
      continue
    num = sum(pos_w[i, j] * math.exp(cos_np(zv[i], zc[j]) / tau) for j in range(len(zv)))
    den = sum(den_w[i, r] * math.exp(cos_np(zv[i], zv[r]) / tau) for r in range(len(zv)))
    if num > 0 and den > 0:
      losses.append(-math.log(num / den))
  return np.mean(losses)


def test_feature_contrast_and_scl_views_match_eq44():
  b = make_batch()
  fn = (np.arange(14) % 4 == 1).astype(np.float32)
  pres = np.ones((14, 2), np.float32)
  pres[[2, 6], 1] = 0
  scl = jax.jit(lambda zs, zc, l, f, p: X.scl_views(zs, zc, l, f, tau=0.5, pi_fn=0.1, w_fn=0.08,
                                                    presence=p))
  out = scl(b["zs"], b["z_cons"], b["labels"], fn, pres)
  pos = np_y_pse(b["labels"], fn > 0, 0.1)
  for v in range(2):
    valid = pres[:, v] > 0
    den = np.zeros((14, 14))
    for i in range(14):
      for r in range(14):
        if r != i and valid[r] and valid[i]:
          is_fn = b["labels"][r] == b["labels"][i] and (fn[i] or fn[r])
          den[i, r] = 0.08 if is_fn else 1.0
    ref = np_feature_contrast(b["zs"][v].astype(np.float64), b["z_cons"], pos, den, valid, 0.5)
    close(out.loss[v], ref)
    logits = np.asarray(X.cosine_matrix(b["zs"][v], b["zs"][v]), np.float64) / 0.5
    close(out.theta[v], np_theta(logits, b["labels"], fn > 0, np.full(14, 0.08), valid), atol=1e-5)
  # with a bound the logged θ respects it
  bounded = jax.jit(lambda zs, zc, l, f: X.scl_views(zs, zc, l, f, w_fn=0.5, theta_bound=0.05))(
    b["zs"], b["z_cons"], b["labels"], fn)
  assert float(bounded.theta.max()) <= 0.05 + 1e-5
  # the batch bound of Appendix A.11, per view, with the view's own centers
  bb = jax.jit(lambda zs, zc, l, f, c: X.scl_views(zs, zc, l, f, w_fn=0.5, theta_bound="batch",
                                                   centers=c))(
    b["zs"], b["z_cons"], b["labels"], fn, b["centers"])
  for v in range(2):
    ref = np_theta_bound(b["zs"][v].astype(np.float64), b["z_cons"], b["zs"][v],
                         b["centers"][v][b["labels"]], pos, np.asarray(R.fn_pairs(b["labels"], fn)),
                         1 - np.eye(14))
    close(bb.bound[v], ref, atol=1e-4)
  assert np.all(np.asarray(bb.theta) <= np.asarray(bb.bound) + 1e-5)
  with pytest.raises(ValueError):
    X.scl_views(b["zs"], b["z_cons"], b["labels"], fn, theta_bound="batch")
  # a missing view's embedding does not matter for that view's loss
  zs2 = b["zs"].copy()
  zs2[1, [2, 6]] = 100.0
  out2 = scl(zs2, b["z_cons"], b["labels"], fn, pres)
  close(out2.loss, out.loss, atol=1e-6)


def test_uncertainty_regression_stops_target_gradient():
  u_hat = jnp.array([0.2, 0.5, 0.9])
  u = jnp.array([0.0, 0.5, 0.1])
  w = jnp.array([1.0, 1.0, 0.0])
  close(jax.jit(X.uncertainty_regression)(u_hat, u, weights=w), (0.04 + 0.0) / 2)
  g = jax.grad(lambda t: X.uncertainty_regression(u_hat, t))(u)
  close(g, np.zeros(3), atol=0)


# ----------------------------------------------------------------------------- Eq. 48-50
def np_wnce(z, S, tau, valid):
  B = len(z)
  losses = []
  for i in range(B):
    if not valid[i]:
      continue
    row = {j: S[i, j] for j in range(B) if j != i and valid[j]}
    tot = sum(row.values())
    if tot <= 0:
      continue
    den = sum(math.exp(cos_np(z[i], z[r]) / tau) for r in range(B) if r != i and valid[r])
    losses.append(-sum(s / tot * math.log(math.exp(cos_np(z[i], z[j]) / tau) / den)
                       for j, s in row.items() if s > 0))
  return np.mean(losses) if losses else 0.0


def test_co_membership_and_weighted_info_nce_match_eq48_49():
  b = make_batch()
  _, m = U.gaussian_memberships(b["z_cons"], b["cons_centers"], b["sigma"][0])
  m = np.asarray(m)
  S = jax.jit(X.co_membership)(b["labels"], m)
  for i in range(14):
    for j in range(14):
      li, lj = b["labels"][i], b["labels"][j]
      ref = 0.0 if (i == j or li != lj) else min(m[i, li], m[j, lj])
      close(S[i, j], ref, atol=1e-7)
  Sh = X.normalize_rows(S)
  rows = np.asarray(S).sum(1) > 0
  close(np.asarray(Sh).sum(1)[rows], 1.0)
  w = np.ones(14, np.float32)
  w[[1, 8]] = 0
  got = jax.jit(lambda z, s, w: X.weighted_info_nce(z, s, tau=0.5, weights=w))(b["zs"][0], S, w)
  close(got, np_wnce(b["zs"][0].astype(np.float64), np.asarray(S, np.float64), 0.5, w > 0))
  # Eq. 50 with a missing view: view 1 sees only its present rows
  pres = np.ones((14, 2), np.float32)
  pres[[0, 5], 1] = 0
  cross = jax.jit(lambda zs, zc, s, p: X.cross_view_loss(zs, zc, s, tau=0.5, presence=p))(
    b["zs"], b["z_cons"], S, pres)
  Sn = np.asarray(S, np.float64)
  ref = (np_wnce(b["zs"][0].astype(np.float64), Sn, 0.5, np.ones(14, bool))
         + np_wnce(b["zs"][1].astype(np.float64), Sn, 0.5, pres[:, 1] > 0)
         + np_wnce(b["z_cons"].astype(np.float64), Sn, 0.5, np.ones(14, bool)))
  close(cross, ref)


def test_info_nce_with_identity_s_is_standard_info_nce():
  rng = np.random.default_rng(4)
  a = rng.normal(size=(10, 6)).astype(np.float32)
  p = a + 0.3 * rng.normal(size=(10, 6)).astype(np.float32)
  tau = 0.5
  sim = unit_np(a.astype(np.float64)) @ unit_np(p.astype(np.float64)).T / tau
  std = np.mean([-sim[i, i] + math.log(np.exp(sim[i]).sum()) for i in range(10)])
  got = jax.jit(lambda a, p: X.weighted_info_nce(a, jnp.eye(10), tau=tau, candidates=p,
                                                 exclude_self=False))(a, p)
  close(got, std)
  # within-view form (Eq. 49 as written) on the stacked views with S pairing i <-> i + n is the
  # NT-Xent (SimCLR) loss
  z = np.concatenate([a, p]).astype(np.float64)
  S = np.zeros((20, 20), np.float32)
  S[np.arange(10), np.arange(10) + 10] = 1
  S[np.arange(10) + 10, np.arange(10)] = 1
  s = unit_np(z) @ unit_np(z).T / tau
  nt = []
  for i in range(20):
    j = (i + 10) % 20
    nt.append(-s[i, j] + math.log(sum(math.exp(s[i, r]) for r in range(20) if r != i)))
  close(X.weighted_info_nce(z.astype(np.float32), S, tau=tau), np.mean(nt))


# ----------------------------------------------------------------------------- Eq. 46-52
def test_stage_objectives():
  lc, lf, lu = jnp.array([1.0, 2.0]), jnp.array([0.5, 0.25]), jnp.array([0.1, 0.3])
  l1 = X.stage1_objective(lc, lf, lu, alpha=0.01, beta=0.1, lambda_u=0.5)
  close(l1, 0.01 * 3 + 0.1 * 0.75 + 0.5 * 0.4)
  close(X.stage1_objective(lc, lf, 0.2, alpha=1, beta=1, lambda_u=1), 3 + 0.75 + 0.4)
  push, pull = jnp.array([0.3, 0.1]), jnp.array([0.2, 0.4])
  l2 = X.stage2_objective(l1, push, pull, gate=0.5, lambda_hn=0.1)
  close(l2, l1 + 0.1 * 0.5 * (0.4 + 0.6))
  close(X.hn_objective(push, pull, gate=1.0, lambda_hn=1.0, lambda_push=2.0, lambda_pull=0.0), 0.8)
  l3 = X.stage3_objective(l2, 2.0, gate=0.25, beta_p=0.1)
  close(l3, l2 + 0.05)
  close(X.total_objective(l3, 0.7), l3 + 0.7)
  close(X.linear_ramp(30, 20, 100), 10 / 80)
  close(X.linear_ramp(10, 20, 100), 0.0)
  kw = dict(l_c=lc, l_feat=lf, l_u=lu, l_push=push, l_pull=pull, l_cross=2.0, l_imb=0.7,
            hn_gate=0.5, cross_gate=0.25, e_w=10, e_c=20, alpha=0.01, beta=0.1, lambda_u=0.5,
            lambda_hn=0.1, beta_p=0.1)
  f = jax.jit(lambda e: X.mvsib_objective(e, **kw)[0])
  close(f(5), l1 + 0.7)
  close(f(15), l2 + 0.7)
  close(f(25), l3 + 0.7)
  close(X.mvsib_objective(5, **{**kw, "l_imb": jnp.nan}, imb_from_stage=3)[0], l1)
  s2, s3 = X.stage_flags(20, 10, 20)
  assert float(s2) == 1.0 and float(s3) == 0.0


def test_stage_schedule():
  sched = jax.jit(lambda e, cur: X.stage_schedule(e, 100, e_w=10, e_c=20, p0=0.3,
                                                  undecided_frac=0.1, curriculum=cur))
  for e, phase, und, gate in ((1, 1, 0.1, 0.0), (11, 2, 0.1, 0.0), (20, 2, 0.1, 0.0),
                              (60, 3, 0.0, 40 / 80), (100, 3, 0.0, 1.0)):
    s = sched(e, 1.0)
    close([s.phase, s.undecided_frac, s.cross_gate, s.p_e],
          [phase, und, gate, 0.3 * (1 - (e - 1) / 99)])
  off = sched(60, 0.0)                   # §4.7 without the curriculum: everything from epoch 1
  close([off.e_w, off.e_c, off.phase, off.p_e, off.undecided_frac, off.cross_gate],
        [0, 0, 3, 0.3, 0, 1])


# ----------------------------------------------------------------------------- degenerate
C, P, K = 4, 4, 3


def pipeline(zs, labels, centers, sigma, weights, presence, minority, key):
  """Every op of a train step, on one batch; returns its outputs and d(total)/d(zs)."""

  def total(zs):
    z_cons = fuse_views(zs, jnp.full((zs.shape[0],), 1.0 / zs.shape[0]), presence)
    _, m = U.gaussian_memberships(zs, centers, sigma)
    unc = U.sample_uncertainty(m, alpha=0.5, weights=weights, presence=presence)
    u_hat = jax.nn.sigmoid(z_cons[:, 0])
    sel = U.select_uncertain(u_hat, 0.3, weights=weights)
    idx = R.batch_knn(zs, K, weights=weights, presence=presence)
    nb = R.neighbour_stats(zs, zs, idx, labels, ref_weights=weights, ref_presence=presence,
                           anchor_weights=weights, anchor_presence=presence)
    votes = R.local_votes(labels, nb, presence=presence, weights=weights)
    cons_c = jnp.mean(centers, 0)
    s = R.center_similarity(z_cons, cons_c, labels)
    f = R.csd_features(votes.delta_d, s, votes.a, weights=weights)
    logits = jnp.stack([f[:, 0] + f[:, 2], f[:, 1]], -1)
    rt = R.route(logits, sel * weights, undecided_frac=0.1)
    g = R.hn_gate(U.weighted_mean(unc.u, weights), 0.3, 0.7)
    scl = X.scl_views(zs, z_cons, labels, rt.fn, w_fn=g * 0.1, theta_bound=0.3, weights=weights,
                      presence=presence)
    scl_b = X.scl_views(zs, z_cons, labels, rt.fn, w_fn=jnp.maximum(g, 0.5) * 0.1,
                        theta_bound="batch", centers=centers, weights=weights, presence=presence)
    push, pull = R.hn_push_pull_views(zs, centers, labels, rt.hn * weights, presence=presence)
    ps = M.pseudo_samples(key, z_cons, labels, minority, cons_c, n_pseudo=P, weights=weights)
    sig = M.median_bandwidth(z_cons, weights=weights)
    mmd = M.mmd_per_cluster(z_cons, labels, ps, sigma=sig, weights=weights)
    rep = M.repulsion_loss(ps, sigma_r=sig)
    lam = M.amplified_cov_max_eig(z_cons, labels, C, n_pseudo=P, weights=weights)
    rmax, rmin = M.safety_radii(lam, cons_c)
    lb = M.boundary_loss(ps, cons_c, r_max=rmax, r_min=rmin)
    imb = M.imbalance_loss(mmd, rep, lb)
    cnt, uc = M.batch_cluster_stats(z_cons, labels, C, weights=weights)
    vc = jax.vmap(lambda z, w: M.batch_cluster_stats(z, labels, C, weights=w))(
      zs, U.view_row_weights(weights, presence, zs.shape[0], zs.shape[1]))
    lc = X.cluster_contrast_views(uc, vc[1], ps, vc[0])
    lu = X.uncertainty_regression(u_hat, unc.u, weights=weights)
    _, mc = U.gaussian_memberships(z_cons, cons_c, jnp.mean(sigma, 0))
    S = X.co_membership(labels, mc, weights=weights)
    cross = X.cross_view_loss(zs, z_cons, S, weights=weights, presence=presence)
    tot, parts = X.mvsib_objective(30, l_c=lc, l_feat=scl.loss, l_u=lu, l_push=push, l_pull=pull,
                                   l_cross=cross, l_imb=imb, hn_gate=g, cross_gate=0.5, e_w=10,
                                   e_c=20, alpha=0.01, beta=0.1, lambda_u=0.1, lambda_hn=0.1,
                                   beta_p=0.1)
    out = dict(u=unc.u, sel=sel, f=f, fn=rt.fn, hn=rt.hn, und=rt.undecided, theta=scl.theta,
               l_feat=scl.loss, push=push, pull=pull, psi=ps.psi, psi_w=ps.weight, mmd=mmd,
               rep=rep, lb=lb, lc=lc, lu=lu, cross=cross, total=tot, l_feat_b=scl_b.loss,
               theta_b=scl_b.theta, bound_b=scl_b.bound,
               **{"part_" + k: v for k, v in parts.items()})
    return tot, out

  (_, out), grad = jax.value_and_grad(total, has_aux=True)(zs)
  return out, grad


PER_ROW = ("u", "sel", "f", "fn", "hn", "und")
SCALARS = ("l_feat", "l_feat_b", "push", "pull", "mmd", "rep", "lb", "lc", "lu", "cross", "total")

run_pipeline = jax.jit(pipeline)


def scenario(name):
  b = make_batch(seed=2, sizes=(6, 4, 3, 1))
  zs, labels = b["zs"].copy(), b["labels"].copy()
  B = len(labels)
  w = np.ones(B, np.float32)
  pres = np.ones((B, 2), np.float32)
  minority = np.array([0, 1, 1, 1], np.float32)
  if name == "one_cluster":
    labels[:] = 0
  elif name == "no_minority":
    minority[:] = 0
  elif name == "all_certain":                      # identical rows: every u equal
    zs[:] = zs[:, :1]
  elif name == "constant_view":
    zs[1] = 0.5
  elif name == "huge_norms":
    zs = zs * 1e4
  elif name == "tiny_norms":
    zs = zs * 1e-7
  elif name == "missing_views":
    pres[[0, 4, 9], 1] = 0
    pres[[2], 0] = 0
  return zs, labels, b["centers"], b["sigma"], w, pres, minority


# The two pipeline tests compile every op of a train step with its gradient, at two batch
# shapes (about 15 s each on two cores): slow.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["base", "one_cluster", "no_minority", "all_certain",
                                  "constant_view", "missing_views", "huge_norms", "tiny_norms"])
def test_degenerate_batches_are_finite_with_fixed_shapes(name):
  zs, labels, centers, sigma, w, pres, minority = scenario(name)
  out, grad = run_pipeline(zs, labels, centers, sigma, w, pres, minority, jax.random.key(0))
  chex.assert_tree_all_finite((out, grad))
  B = len(labels)
  chex.assert_shape([out[k] for k in ("u", "sel", "fn", "hn", "und")], (B,))
  chex.assert_shape(out["f"], (B, 3))
  chex.assert_shape(out["psi"], (C, P, 5))
  chex.assert_shape([out["theta"]], (2, B))
  assert np.all(np.asarray(out["theta"]) <= 0.3 + 1e-5)
  assert np.all(np.asarray(out["theta_b"]) <= np.asarray(out["bound_b"]) + 1e-5)
  if name == "all_certain":
    close(out["u"], np.full(B, float(out["u"][0])), atol=0)
    assert int(out["sel"].sum()) == max(1, math.floor(0.3 * B))
  if name == "no_minority":
    assert float(out["psi_w"].sum()) == 0.0 and float(out["mmd"].sum()) == 0.0
    assert float(out["rep"]) == 0.0 and float(out["lb"]) == 0.0
  if name == "one_cluster":
    assert float(out["push"].sum()) >= 0.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["base", "missing_views", "one_cluster"])
def test_padding_rows_change_nothing(name):
  zs, labels, centers, sigma, w, pres, minority = scenario(name)
  out, grad = run_pipeline(zs, labels, centers, sigma, w, pres, minority, jax.random.key(1))
  pad = 5
  rng = np.random.default_rng(0)
  zp = np.concatenate([zs, 1e3 * rng.normal(size=(2, pad, 5)).astype(np.float32)], 1)
  lp = np.concatenate([labels, rng.integers(0, C, pad).astype(np.int32)])
  wp = np.r_[w, np.zeros(pad)].astype(np.float32)
  pp = np.concatenate([pres, np.ones((pad, 2), np.float32)])
  outp, gradp = run_pipeline(zp, lp, centers, sigma, wp, pp, minority, jax.random.key(1))
  chex.assert_tree_all_finite((outp, gradp))
  B = len(labels)
  for k in SCALARS:
    close(outp[k], out[k], rtol=2e-4, atol=2e-5)
  for k in PER_ROW:
    close(np.asarray(outp[k])[:B], out[k], rtol=2e-4, atol=2e-5)
    assert np.all(np.asarray(outp[k])[B:] == 0)
  close(np.asarray(outp["psi"]) * np.asarray(outp["psi_w"])[..., None],
        np.asarray(out["psi"]) * np.asarray(out["psi_w"])[..., None], rtol=2e-4, atol=2e-5)
  for k in ("theta", "theta_b", "bound_b"):
    close(np.asarray(outp[k])[:, :B], out[k], rtol=2e-4, atol=2e-5)
  close(np.asarray(gradp)[:, :B], grad, rtol=1e-3, atol=1e-5)
  assert np.all(np.asarray(gradp)[:, B:] == 0)


def test_small_ops_jit_equals_eager():
  cases = [
    (lambda c: M.minority_clusters(c, 0.5), (np.array([50.0, 10.0, 40.0, 0.0]),)),
    (lambda p, c: R.route_codes(p, c), (np.array([1.0, 0, 0, 1]), np.array([0.0, 1, 0, 0]))),
    (lambda a, b: R.routing_consistency(a, b), (np.array([1, 0, -1, 1]), np.array([1, 1, 0, -1]))),
    (R.hn_trigger_rate, (np.array([1, 0, -1, 0]),)),
    (lambda e: X.linear_ramp(e, 20, 100), (np.float32(37),)),
    (lambda e: X.stage_flags(e, 10, 20), (np.int32(15),)),
    (lambda n, p: U.n_uncertain(n, p), (np.int32(200), np.float32(0.13))),
    (lambda s, v: U.descending_rank(s, v),
     (np.array([0.2, 0.9, 0.5, 0.9]), np.array([1, 1, 0, 1]) > 0)),
    (lambda a, b: X.cosine_matrix(a, b),
     (np.eye(3, 4, dtype=np.float32), np.ones((2, 4), np.float32))),
    (lambda f: R.fn_pairs(np.array([0, 0, 1, 1]), f), (np.array([1.0, 0, 0, 0]),)),
    (lambda s: X.normalize_rows(s), (np.array([[0.0, 2, 2], [0, 0, 0], [1, 3, 0]]),)),
  ]
  for fn, args in cases:
    chex.assert_trees_all_close(jax.jit(fn)(*args), fn(*args))
  close(U.descending_rank(np.array([0.2, 0.9, 0.5, 0.9]), np.array([1, 1, 0, 1]) > 0), [2, 0, 3, 1])
  close(X.normalize_rows(np.array([[0.0, 2, 2], [0, 0, 0], [1, 3, 0]])),
        [[0, 0.5, 0.5], [0, 0, 0], [0.25, 0.75, 0]])


# ----------------------------------------------------------------------------- §3.3 per epoch
def test_match_ids_aligns_consensus_to_previous_and_views_to_consensus():
  prev = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
  cons = np.array([2, 2, 2, 0, 0, 1, 1, 1, 0])          # prev's clusters under other names
  view = np.array([1, 1, 0, 2, 2, 0, 0, 0, 0])
  lab, order = MC.match_ids(np.stack([cons, view]), prev, 3)
  np.testing.assert_array_equal(lab, [0, 0, 0, 1, 1, 2, 2, 2, 1])
  # orders move per-cluster arrays into the matched ids: here the sums of the row numbers
  rowsum = lambda l: np.bincount(l, weights=np.arange(9), minlength=3)
  np.testing.assert_array_equal(rowsum(cons)[order[0]], rowsum(lab))
  np.testing.assert_array_equal(rowsum(view)[order[1]], [1, 7, 28])  # view 1, 2, 0 -> 0, 1, 2
  lab0, order0 = MC.match_ids(np.stack([cons, view]), None, 3)    # no previous pass: kept
  np.testing.assert_array_equal(lab0, cons)
  np.testing.assert_array_equal(order0[0], [0, 1, 2])
  rows = [np.array([0, 1, 3, 4, 5])]                    # the view only on the rows that have it
  _, order_r = MC.match_ids(np.stack([cons, np.where(np.arange(9) < 6, view, 2)]), prev, 3, rows)
  np.testing.assert_array_equal(order_r[1], order[1])


@pytest.mark.slow   # two k-means compiles (12 and 11 rows): ~3 s; the fits cover it too
def test_view_clusters_match_kmeans_per_embedding_and_missing_view_rows():
  rng = np.random.default_rng(0)
  z = np.concatenate([rng.normal(size=(3, 6, 2)), rng.normal(size=(3, 6, 2)) + 6], 1)
  z = z.astype(np.float32)
  key, rows = jax.random.key(4), [np.arange(12), np.arange(1, 12)]   # view 2 misses sample 0
  km = MC.view_clusters(key, z, 2, n_init=2, rows_of=rows)  # eager: kmeans' own jit, 2 shapes
  for r, (k, x) in enumerate(zip(jax.random.split(key, 3), [z[0], z[1], z[2, 1:]])):
    ref = kmeans(k, x, 2, n_init=2)
    np.testing.assert_array_equal(km.labels[r, 12 - len(x):], ref.labels)
    close(km.centers[r], ref.centers)
  assert int(km.labels[2, 0]) == int(km.labels[0, 0])    # a missing row carries the consensus id
