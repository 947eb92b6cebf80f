"""Sharded (8 emulated CPU devices) and unsharded LargeMvC-Net training agree.

Runs in a subprocess: the device count is fixed when jax initializes, and the main pytest
process already has one CPU device.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import dataclasses, json
import numpy as np, jax
from clustering_jax.data import builtin
from clustering_jax.data.missing import simulate_missing
from clustering_jax.data.scaling import scale_views
from clustering_jax.methods import largemvc as L
from clustering_jax.ops import kmeans
from clustering_jax.train.run import quiet_run

assert jax.device_count() == 8, jax.devices()
# n = 203: not a multiple of 8, so the padded rows must add nothing; 30% views missing.
d = scale_views(builtin.blobs(n_samples=203, n_clusters=4, n_features=6, n_views=3, seed=1),
                "minmax")
# H0 from k-means on the complete views: every anchor keeps samples in every view, so each
# H^T (X_v - E_v) has full rank and Procrustes is unique. (k-means on zero-filled views can
# make a cluster of the samples missing view v; its row of P_v is then arbitrary, and the two
# runs may pick different, equally optimal P_v.)
labels = np.asarray(kmeans(jax.random.key(0), jax.numpy.concatenate(L.prepare(d)[0], 1),
                           4).labels)
d = d.replace(mask=simulate_missing(0, d.n_samples, 3, 0.3))
xs, mask = L.prepare(d)
assert all(((labels == k) & (np.asarray(mask[:, v]) > 0)).any() for k in range(4) for v in range(3))
h0 = jax.nn.one_hot(labels, 4)
p0s = L.anchor(h0, xs, None, mask)
e0s = tuple(mask[:, v:v + 1] * (x - h0 @ p) for v, (x, p) in enumerate(zip(xs, p0s)))
batch = L.Batch(xs, mask, h0, e0s, p0s)
out = {}
for shrink in ["row", "matrix"]:
  res = {}
  for mode in ["none", "devices"]:
    cfg = L.Config(epochs=4, shrink=shrink, shard=mode)
    run = quiet_run()
    params, h, info = L.train(batch, L.init_params(p0s, e0s, mask, cfg), cfg, run=run,
                              n=d.n_samples)
    lab = np.asarray(kmeans(jax.random.key(1), h, 4).labels)
    res[mode] = {"h": np.asarray(h).tolist(), "loss": [r["loss"] for r in run.history]
                 + [info["final_loss"]], "n_devices": info["n_devices"],
                 "labels": lab.tolist(),
                 "sharded": len(getattr(h, "sharding").device_set)}
  out[shrink] = res
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_sharded_equals_unsharded():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, text=True,
                        capture_output=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
  out = json.loads(line[len("RESULT"):])
  import numpy as np
  for shrink, res in out.items():
    a, b = res["none"], res["devices"]
    assert a["n_devices"] == 1 and b["n_devices"] == 8, shrink
    assert b["sharded"] == 8, "H should live on all 8 devices"
    h_a, h_b = np.asarray(a["h"]), np.asarray(b["h"])
    assert h_a.shape == h_b.shape == (203, 4)
    np.testing.assert_allclose(h_b, h_a, atol=1e-4 * max(1.0, np.abs(h_a).max()), err_msg=shrink)
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-4, err_msg=shrink)
    np.testing.assert_array_equal(b["labels"], a["labels"])
