"""ops/selfsup.py (HaDis Eq. 1–12): hand-computed cases, NumPy references, jit == eager,
gradients where they should (not) flow, and finiteness on degenerate batches."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clustering_jax.ops import selfsup as S

# Jitted once per module (compiles are shared between tests); eager runs only where a test
# compares jit with eager.
hsd_loss = jax.jit(S.hsd_loss, static_argnames=("tau", "split", "missing", "exclude_self"))
hsd_select = jax.jit(S.hsd_select, static_argnames=("split", "exclude_self"))
byol_align = jax.jit(S.byol_align)
batch_prototypes = jax.jit(S.batch_prototypes, static_argnums=2,
                           static_argnames=("normalize_inputs",))
pcl = jax.jit(S.prototype_contrastive, static_argnames=("tau", "negatives"))


def _unit(deg):
  r = np.deg2rad(np.asarray(deg, np.float64))
  return np.stack([np.cos(r), np.sin(r)], -1).astype(np.float32)


def _c(deg):
  """Distance between two unit vectors at an angle of deg degrees: 2 sin(θ/2)."""
  return 2.0 * np.sin(np.deg2rad(deg) / 2.0)


# Four teacher features and four student predictions on the unit circle. D(t_i, t_a): √2 for
# neighbours, 2 for opposite points, 1e-6 for a = i (the code's clamp). ν_ia = D(t_i, p_a).
T_DEG = [0, 90, 180, 270]
P_DEG = [50, 120, 150, 330]
R2 = np.sqrt(2.0)


def _hand_case():
  # Angles between t_i (rows) and p_a (columns):
  #   row 0: 50 120 150  30    row 1: 40  30  60 120
  #   row 2: 130 60  30 150    row 3: 140 150 120  60
  paper = {
      # Eq. 4: a positive iff D(t_i, t_a) < ν_ia.
      "pos": [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 1]],
      "j_h": [1, 1, 3, 0], "m_h": [3, 0, 1, 1],
      "nu_p": [_c(120), _c(30), _c(150), _c(140)],
      "nu_n": [_c(30), _c(40), _c(60), _c(150)],
      # Eq. 6: ν_p − D(t_i, t_j), D(t_i, t_m) − ν_n; under Eq. 4 neither clamp binds.
      "w_p": [_c(120) - R2, _c(30), _c(150) - R2, _c(140) - R2],
      "w_n": [R2 - _c(30), R2 - _c(40), R2 - _c(60), 2.0 - _c(150)],
  }
  code = {
      # W:38: a negative iff D(t_i, t_a) > ν_ii: every D(t_i, t_a≠i) ≥ √2 exceeds the diagonal
      # (c50, c30, c30, c60), so only the anchor itself is positive.
      "pos": np.eye(4, dtype=int).tolist(),
      "j_h": [0, 1, 2, 3], "m_h": [3, 0, 1, 2],
      "nu_p": [_c(50), _c(30), _c(30), _c(60)],
      "nu_n": [_c(30), _c(40), _c(60), _c(120)],
      # Row 3: D(t_3, t_2) − ν_32 = √2 − √3 < 0: the clamp binds, w_n = 0.
      "w_p": [_c(50), _c(30), _c(30), _c(60)],
      "w_n": [R2 - _c(30), R2 - _c(40), R2 - _c(60), 0.0],
  }
  return jnp.asarray(_unit(T_DEG)), jnp.asarray(_unit(P_DEG)), {"paper": paper, "code": code}


@pytest.mark.parametrize("split", ["paper", "code"])
def test_hsd_hand_computed_four_samples(split):
  t, p, expected = _hand_case()
  e = expected[split]
  s = hsd_select(t, p, split=split)
  np.testing.assert_array_equal(np.asarray(s["pos"]).astype(int), e["pos"])
  np.testing.assert_array_equal(np.asarray(s["neg"]).astype(int), 1 - np.asarray(e["pos"]))
  np.testing.assert_array_equal(np.asarray(s["j_h"]), e["j_h"])
  np.testing.assert_array_equal(np.asarray(s["m_h"]), e["m_h"])
  for k in ("nu_p", "nu_n", "w_p", "w_n"):
    np.testing.assert_allclose(np.asarray(s[k]), e[k], atol=1e-5, err_msg=k)
  loss, aux = hsd_loss(t, p, tau=0.5, split=split)
  wp, nup, wn, nun = (np.asarray(e[k]) for k in ("w_p", "nu_p", "w_n", "nu_n"))
  # Eq. 7-8: −log(e^{a} / (e^{a} + e^{c})) with a = w_n ν_n / τ, c = w_p ν_p / τ, then the mean.
  a, c = wn * nun / 0.5, wp * nup / 0.5
  want = np.mean(-np.log(np.exp(a) / (np.exp(a) + np.exp(c))))
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert int(aux["n_used"]) == 4 and float(aux["frac_no_neg"]) == 0.0
  np.testing.assert_allclose(float(aux["n_pos"]), np.mean(np.sum(e["pos"], 1)))


def test_hsd_splits_differ_and_gradient_flows_only_through_hardest_predictions():
  t, p, _ = _hand_case()
  g_t, g_p = jax.grad(lambda t, p: hsd_loss(t, p, split="paper")[0], argnums=(0, 1))(t, p)
  np.testing.assert_array_equal(np.asarray(g_t), 0.0)  # the teacher is under stop_gradient
  # Paper split: the predictions used are j_h ∪ m_h = {0, 1, 3}; p_2 is never a hardest pair.
  used = np.abs(np.asarray(g_p)).sum(1) > 0
  np.testing.assert_array_equal(used, [True, True, False, True])
  lp = float(hsd_loss(t, p, split="paper")[0])
  lc = float(hsd_loss(t, p, split="code")[0])
  assert abs(lp - lc) > 1e-3


def _hsd_numpy(t, p, tau, split, missing):
  """Eq. 4–8 with loops, straight from the text."""
  tn = t / np.linalg.norm(t, axis=1, keepdims=True)
  pn = p / np.linalg.norm(p, axis=1, keepdims=True)
  n = len(t)
  d = lambda a, b: max(np.linalg.norm(a - b), 1e-6)
  ells = []
  for i in range(n):
    dt = np.array([d(tn[i], tn[a]) for a in range(n)])
    nu = np.array([d(tn[i], pn[a]) for a in range(n)])
    neg = dt >= nu if split == "paper" else dt > nu[i]
    P, N = np.flatnonzero(~neg), np.flatnonzero(neg)
    if (len(P) == 0 or len(N) == 0) and missing == "mask":
      continue
    lp = ln = 0.0
    if len(P):
      j = P[np.argmax(nu[P])]
      lp = max(nu[j] - dt[j], 0.0) * nu[j] / tau
    if len(N):
      m = N[np.argmin(nu[N])]
      ln = max(dt[m] - nu[m], 0.0) * nu[m] / tau
    ells.append(np.log1p(np.exp(lp - ln)))
  return float(np.mean(ells)) if ells else 0.0


@pytest.mark.parametrize("split, missing", [("paper", "mask"), ("code", "zero")])
def test_hsd_matches_numpy_reference(split, missing):
  rng = np.random.default_rng(0)
  t = rng.normal(size=(12, 5)).astype(np.float32)
  p = (t + 0.8 * rng.normal(size=t.shape)).astype(np.float32)
  got = float(hsd_loss(t, p, tau=0.5, split=split, missing=missing)[0])
  np.testing.assert_allclose(got, _hsd_numpy(t, p, 0.5, split, missing), rtol=1e-4)
  if split == "paper":  # eager == jit
    eager = S.hsd_loss(t, p, tau=0.5, split=split, missing=missing)[0]
    np.testing.assert_allclose(float(eager), got, rtol=1e-5)


def test_hsd_missing_negative_is_masked_or_zeroed():
  # All teacher features equal: D(t_i, t_a) ≈ 0 < ν_ia, so every pair is positive and no
  # anchor has a negative.
  _, p, _ = _hand_case()
  t = jnp.ones((4, 2))
  loss, aux = hsd_loss(t, p, missing="mask")
  assert float(loss) == 0.0 and int(aux["n_used"]) == 0 and float(aux["frac_no_neg"]) == 1.0
  loss_z, aux_z = hsd_loss(t, p, missing="zero")  # the code: the negative's logit is 0
  np.testing.assert_allclose(float(loss_z), _hsd_numpy(np.asarray(t), np.asarray(p), 0.5, "paper",
                                                       "zero"), rtol=1e-5)
  assert int(aux_z["n_used"]) == 4


def test_hsd_weights_and_exclude_self():
  t, p, _ = _hand_case()
  # A zero-weight sample is neither an anchor nor a candidate: equals dropping it.
  w = jnp.asarray([1.0, 1.0, 0.0, 1.0])
  keep = np.array([0, 1, 3])
  lw, _ = hsd_loss(t, p, split="code", weights=w, missing="zero")
  ld = _hsd_numpy(np.asarray(t)[keep], np.asarray(p)[keep], 0.5, "code", "zero")
  np.testing.assert_allclose(float(lw), ld, rtol=1e-5)
  # Without the self pair, under the code's split no anchor has a positive here.
  loss, aux = hsd_loss(t, p, split="code", exclude_self=True)
  assert float(loss) == 0.0 and float(aux["frac_no_pos"]) == 1.0


# -- alignment, diffusion -------------------------------------------------------------------------
def test_byol_align_and_diffuse():
  rng = np.random.default_rng(2)
  p = rng.normal(size=(6, 4)).astype(np.float32)
  t = rng.normal(size=(6, 4)).astype(np.float32)
  pn = p / np.linalg.norm(p, axis=1, keepdims=True)
  tn = t / np.linalg.norm(t, axis=1, keepdims=True)
  loss, aux = byol_align(p, t)
  np.testing.assert_allclose(float(loss), np.mean(np.sum((pn - tn) ** 2, 1)), rtol=1e-5)  # Eq. 3
  np.testing.assert_allclose(float(loss), 2 - 2 * float(aux["cos"]), rtol=1e-6)  # Eq. 1
  np.testing.assert_allclose(float(S.byol_align(p, t)[0]), float(loss), rtol=1e-6)  # eager
  w = jnp.asarray([1, 1, 0, 0, 1, 1], jnp.float32)
  keep = np.array([0, 1, 4, 5])
  np.testing.assert_allclose(float(byol_align(p, t, weights=w)[0]),
                             np.mean(np.sum((pn[keep] - tn[keep]) ** 2, 1)), rtol=1e-5)
  g_t = jax.grad(lambda t: S.byol_align(p, t)[0])(jnp.asarray(t))
  np.testing.assert_array_equal(np.asarray(g_t), 0.0)
  key = jax.random.key(3)
  z = jnp.asarray(p)
  np.testing.assert_array_equal(np.asarray(S.diffuse(key, z, 0.0)), p)  # ε = 0: Eq. 1
  np.testing.assert_allclose(np.asarray(S.diffuse(key, z, 1e-3)),
                             p + 1e-3 * np.asarray(jax.random.normal(key, p.shape)), atol=1e-7)


# -- prototypes and PCL ---------------------------------------------------------------------------
def _pcl_numpy(us, ut, present, tau, negatives):
  losses = []
  for k in np.flatnonzero(present):
    other = ut if negatives == "teacher" else us
    logits = [us[k] @ ut[k] / tau] + [us[k] @ other[j] / tau for j in np.flatnonzero(present)
                                      if j != k]
    logits = np.asarray(logits)
    losses.append(-logits[0] + np.log(np.sum(np.exp(logits))))
  return float(np.mean(losses)) if losses else 0.0


def test_batch_prototypes_match_numpy_and_mask_absent_clusters():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(10, 3)).astype(np.float32)
  labels = np.array([0, 0, 2, 2, 2, 3, 0, 3, 3, 2])  # cluster 1 absent
  protos, present = batch_prototypes(x, labels, 4)
  eager, _ = S.batch_prototypes(x, labels, 4)
  np.testing.assert_allclose(np.asarray(eager), np.asarray(protos), atol=1e-7)
  np.testing.assert_array_equal(np.asarray(present), [True, False, True, True])
  xn = x / np.linalg.norm(x, axis=1, keepdims=True)
  for k in (0, 2, 3):
    s = xn[labels == k].sum(0)
    np.testing.assert_allclose(np.asarray(protos[k]), s / np.linalg.norm(s), atol=1e-6)
  np.testing.assert_array_equal(np.asarray(protos[1]), 0.0)
  raw, _ = batch_prototypes(x, labels, 4, normalize_inputs=False)  # Eq. 10 as written
  s = x[labels == 0].sum(0)
  np.testing.assert_allclose(np.asarray(raw[0]), s / np.linalg.norm(s), atol=1e-6)
  w = (labels != 3).astype(np.float32)  # zero weight removes cluster 3
  _, pw = batch_prototypes(x, labels, 4, weights=jnp.asarray(w))
  np.testing.assert_array_equal(np.asarray(pw), [True, False, True, False])


@pytest.mark.parametrize("negatives", ["teacher", "student"])
def test_pcl_matches_numpy_with_an_empty_cluster(negatives):
  rng = np.random.default_rng(5)
  us = rng.normal(size=(5, 4)).astype(np.float32)
  ut = rng.normal(size=(5, 4)).astype(np.float32)
  us /= np.linalg.norm(us, axis=1, keepdims=True)
  ut /= np.linalg.norm(ut, axis=1, keepdims=True)
  present = np.array([True, True, False, True, True])
  us[2] = ut[2] = 0.0  # an absent cluster's prototype is 0
  f = lambda us, ut, pr: pcl(us, ut, pr, tau=0.5, negatives=negatives)
  loss, aux = f(us, ut, present)
  np.testing.assert_allclose(float(loss), _pcl_numpy(us, ut, present, 0.5, negatives), rtol=1e-5)
  eager = S.prototype_contrastive(us, ut, present, tau=0.5, negatives=negatives)[0]
  np.testing.assert_allclose(float(eager), float(loss), rtol=1e-6)
  assert int(aux["n_present"]) == 4
  g, g_t = jax.grad(lambda us, ut: f(us, ut, present)[0], argnums=(0, 1))(us, ut)
  np.testing.assert_array_equal(np.asarray(g[2]), 0.0)  # the absent cluster gets nothing
  np.testing.assert_array_equal(np.asarray(g_t), 0.0)


def test_pcl_hand_computed_two_clusters():
  # u^s = u^t = e_k for two orthogonal prototypes: logits [1/τ, 0] per row, τ = 0.5.
  e = jnp.eye(2)
  loss, aux = pcl(e, e, jnp.asarray([True, True]), tau=0.5)
  np.testing.assert_allclose(float(loss), np.log(1 + np.exp(-2.0)), rtol=1e-6)
  assert float(aux["acc"]) == 1.0 and float(aux["pos_sim"]) == pytest.approx(1.0)
  # One present cluster: only its own logit remains, −log 1 = 0.
  loss1, _ = pcl(e, e, jnp.asarray([True, False]), tau=0.5)
  assert float(loss1) == pytest.approx(0.0, abs=1e-7)


# -- degenerate batches ---------------------------------------------------------------------------
@jax.jit
def _all_losses(t, p, labels):
  """Every loss with both switches, summed, and its gradient in p (one compile per shape)."""
  def total(p):
    terms = [S.byol_align(p, t)[0]]
    for split in ("paper", "code"):
      for missing in ("mask", "zero"):
        terms.append(S.hsd_loss(t, p, split=split, missing=missing)[0])
    us, pr = S.batch_prototypes(p, labels, 5)
    ut, _ = S.batch_prototypes(t, labels, 5)
    terms += [S.prototype_contrastive(us, ut, pr, negatives=n)[0] for n in ("teacher", "student")]
    return sum(terms)
  return jax.value_and_grad(total)(p)


@pytest.mark.parametrize("case", ["equal", "one_cluster", "singletons", "batch2", "zeros"])
def test_finite_on_degenerate_batches(case):
  rng = np.random.default_rng(6)
  b, d = 6, 4
  t = rng.normal(size=(b, d)).astype(np.float32)
  p = rng.normal(size=(b, d)).astype(np.float32)
  labels = np.array([0, 0, 1, 1, 3, 3])
  if case == "equal":  # all-equal images: identical features on both sides
    t = np.ones((b, d), np.float32)
    p = np.ones((b, d), np.float32)
  elif case == "one_cluster":
    labels = np.zeros(b, int)
  elif case == "singletons":
    labels = np.array([0, 1, 2, 3, 4, 0])
  elif case == "batch2":
    t, p, labels = t[:2], p[:2], labels[:2]
  elif case == "zeros":  # zero features (dead units): the safe norm keeps everything finite
    t = np.zeros((b, d), np.float32)
    p = np.zeros((b, d), np.float32)
  val, grad = _all_losses(jnp.asarray(t), jnp.asarray(p), jnp.asarray(labels))
  chex.assert_tree_all_finite((val, grad))
  chex.assert_shape(grad, p.shape)


# -- EMA ------------------------------------------------------------------------------------------
def test_ema_update_and_cosine_momentum():
  teacher = {"a": jnp.ones(3), "b": {"c": jnp.full((2, 2), 4.0)}}
  student = {"a": jnp.zeros(3), "b": {"c": jnp.full((2, 2), 2.0)}}
  new = jax.jit(S.ema_update)(teacher, student, 0.996)  # Eq. 12
  np.testing.assert_allclose(np.asarray(new["a"]), 0.996, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(new["b"]["c"]), 0.996 * 4 + 0.004 * 2, rtol=1e-6)
  same = S.ema_update(teacher, student, 1.0)
  chex.assert_trees_all_close(same, teacher)
  m = jax.jit(S.cosine_momentum, static_argnames="base")
  np.testing.assert_allclose(float(m(0, 100)), 0.996, rtol=1e-7)
  np.testing.assert_allclose(float(m(50, 100)), 0.998, rtol=1e-7)
  np.testing.assert_allclose(float(m(100, 100)), 1.0, rtol=1e-7)
  np.testing.assert_allclose(float(m(250, 100)), 1.0, rtol=1e-7)
  np.testing.assert_allclose(float(S.cosine_momentum(25, 100, base=0.99)),
                             1 - 0.01 * (np.cos(np.pi / 4) + 1) / 2, rtol=1e-6)


def test_bad_switches_raise():
  x = jnp.ones((3, 2))
  with pytest.raises(ValueError, match="split"):
    hsd_loss(x, x, split="both")
  with pytest.raises(ValueError, match="missing"):
    hsd_loss(x, x, missing="drop")
  with pytest.raises(ValueError, match="negatives"):
    pcl(x, x, jnp.ones(3, bool), negatives="queue")
  with pytest.raises(ValueError, match="shape"):
    byol_align(x, jnp.ones((3, 3)))
