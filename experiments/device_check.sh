#!/usr/bin/env bash
# Device check: the test suite on whatever accelerator JAX finds (GPU or TPU; the CPU when
# there is none), then one timed run of the flagship command
#   python experiments/run.py --method idcl --dataset digits --seed 0
# and a short JSON record of both under docs/results/device_checks/.
#
#   bash experiments/device_check.sh
#
# Environment (all optional):
#   SCALE=0        smoke test: the flagship run gets a 2 + 2 epoch schedule and a small
#                  network via --config (for checking this script on a CPU); default 1
#   TESTS="..."    pytest targets (default: the whole suite, `python -m pytest -q -x`)
#   TEST_LIMIT=s   seconds for the tests (default 420); RUN_LIMIT=s for the run (default 600)
#   RECORD_DIR=d   where the record goes (default docs/results/device_checks)
#   WORK=d         scratch folder for the run directory and logs (default: a new temp folder)
#   PY=python      the interpreter
#   HADIS=1        also run the HaDis section: `digits` with experiments/configs/hadis_digits.json
#                  and, when DATA_DIR holds Hdigit.mat, `hdigit-mnist` with
#                  experiments/configs/hadis_cpu.json, for every seed in SEEDS (default "0 1 2"),
#                  and a ResNet-18 speed check (the paper's network, 3 epochs of random RGB images)
#   DATA_DIR=d     the folder holding the .mat files (default ../shared/data)
#   EXTRA_RUNS=f   a file of further runs, one line of `experiments/run.py` arguments each
#   SEEDS="0 1 2" the seeds of the HaDis section
#   JOBS=n         how many of the section's runs share the device at once (default 6)
# The HaDis and EXTRA_RUNS runs go into the record's "runs" list: each run's command, exit
# status, wall time, scores, start scores, epochs, timing and its label-free per-epoch curves
# (`loss`, `label_change`). With SCALE=0 they get 2-epoch schedules (a smoke test).
# JAX_PLATFORMS is set to the empty string, which JAX reads as unset (it picks the accelerator)
# and which keeps tests/conftest.py from pinning the tests to the CPU. Exit status: 0 when the
# tests passed and the run finished, 1 otherwise; the record is written either way.
set -u
cd "$(dirname "$0")/.."
export JAX_PLATFORMS= PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
SCALE=${SCALE:-1}; TEST_LIMIT=${TEST_LIMIT:-420}; RUN_LIMIT=${RUN_LIMIT:-600}
RECORD_DIR=${RECORD_DIR:-docs/results/device_checks}; PY=${PY:-python}
WORK=${WORK:-$(mktemp -d)}; mkdir -p "$WORK" "$RECORD_DIR"

# 1. the tests
t0=$(date +%s%N)
timeout "$TEST_LIMIT" $PY -m pytest -q -x -p no:cacheprovider --junitxml="$WORK/junit.xml" \
  ${TESTS:-} > "$WORK/pytest.log" 2>&1
TEST_RC=$?
TEST_MS=$(( ($(date +%s%N) - t0) / 1000000 ))

# 2. the flagship run (SCALE=0: a short schedule, for a smoke test)
RUN_ARGS=(--method idcl --dataset digits --seed 0)
if [ "$SCALE" = "0" ]; then
  echo '{"pretrain_epochs": 2, "epochs": 2, "hidden": [16, 16, 32], "latent": 4,
         "kmeans_n_init": 2}' > "$WORK/scale0.json"
  RUN_ARGS+=(--config "$WORK/scale0.json")
fi
t0=$(date +%s%N)
timeout "$RUN_LIMIT" $PY experiments/run.py "${RUN_ARGS[@]}" --out "$WORK/flagship" --quiet \
  > "$WORK/run.log" 2>&1
RUN_RC=$?
RUN_MS=$(( ($(date +%s%N) - t0) / 1000000 ))

# 3. the method sections: every run in the background, JOBS at a time, each with RUN_LIMIT
DATA_DIR=${DATA_DIR:-../shared/data}; SEEDS=${SEEDS:-0 1 2}; JOBS=${JOBS:-6}
: > "$WORK/runs.txt"
if [ "${HADIS:-0}" = "1" ]; then
  for s in $SEEDS; do
    echo "--method hadis --dataset digits --seed $s --config experiments/configs/hadis_digits.json" \
      >> "$WORK/runs.txt"
    [ -f "$DATA_DIR/Hdigit.mat" ] && echo "--method hadis --dataset hdigit-mnist --data-dir \
$DATA_DIR --seed $s --config experiments/configs/hadis_cpu.json" >> "$WORK/runs.txt"
  done
  # The ResNet-18 speed check: the paper's network and heads (the defaults for RGB images) for
  # 3 epochs on 5,120 random 32x32 RGB images, 20 steps of batch 256 per epoch: its record
  # holds the compile time, the epoch time and the steps per second. SCALE=0: 64 images and a
  # narrow ResNet.
  $PY - "$WORK/rgb.npz" "$SCALE" <<'EOF'
import sys
import numpy as np
n = 5120 if sys.argv[2] != "0" else 64
x = np.random.default_rng(0).uniform(0, 1, (n, 32, 32, 3)).astype(np.float32)
np.savez(sys.argv[1], X=x)
EOF
  RGB_ARGS="--method hadis --dataset $WORK/rgb.npz --n-clusters 10 --seed 0 --epochs 3"
  if [ "$SCALE" = "0" ]; then
    echo '{"widths": [8, 8, 16, 16], "proj_hidden": 32, "proj_dim": 16, "pred_hidden": 32,
           "batch_size": 16}' > "$WORK/rgb_small.json"
    RGB_ARGS="$RGB_ARGS --config $WORK/rgb_small.json"
  fi
  echo "$RGB_ARGS" >> "$WORK/runs.txt"
fi
[ -n "${EXTRA_RUNS:-}" ] && grep -v '^ *\(#\|$\)' "$EXTRA_RUNS" >> "$WORK/runs.txt"
i=0
while read -r line; do
  i=$((i + 1)); args=($line)
  if [ "$SCALE" = "0" ]; then
    args+=(--epochs 2)
    $PY -c "import sys; from clustering_jax.api import get_estimator as g
sys.exit(getattr(g(sys.argv[1]), 'pretrain_epochs_field', None) is None)" "${args[1]}" \
      && args+=(--pretrain-epochs 2)
  fi
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
  ( t0=$(date +%s%N)
    timeout "$RUN_LIMIT" $PY experiments/run.py "${args[@]}" --out "$WORK/run$i" --quiet \
      > "$WORK/run$i.log" 2>&1
    echo "$? $(( ($(date +%s%N) - t0) / 1000000 )) $line" > "$WORK/run$i.status" ) &
done < "$WORK/runs.txt"
wait

# 4. the record
RECORD=$($PY - "$WORK" "$RECORD_DIR" "$SCALE" "$TEST_RC" "$TEST_MS" "$RUN_RC" "$RUN_MS" \
  "${TESTS:-}" "${RUN_ARGS[*]}" <<'EOF'
import json, subprocess, sys, time
from pathlib import Path
work, out_dir, scale, test_rc, test_ms, run_rc, run_ms, tests, run_args = sys.argv[1:]


def summary(run_dir):
  """Scores, start, epochs, timing and the label-free curves of one run directory (the curves
  also for a run cut by its time limit)."""
  out = {}
  res_file = Path(run_dir) / "results.json"
  if res_file.exists():
    res = json.loads(res_file.read_text())
    out = {k: res[k] for k in ("acc", "nmi", "ari", "fit_time_s", "wall_time_s", "epochs")
           if k in res}
    out["init"] = {k: v for k, v in (res.get("init") or {}).items()
                   if k in ("acc", "nmi", "ari")}
    out["timing"] = (res.get("info") or {}).get("timing")
  curves = {"stage": [], "loss": [], "label_change": []}
  log = Path(run_dir) / "metrics.jsonl"
  for row in (log.read_text().splitlines() if log.exists() else []):
    row = json.loads(row)
    if row.get("stage") not in (None, "init") and "loss" in row:
      for k in curves:
        curves[k].append(round(row[k], 5) if isinstance(row.get(k), float) else row.get(k))
  out["curves"] = curves
  return out


runs = []
for st in sorted(Path(work).glob("run*.status"), key=lambda f: int(f.stem[3:])):
  rc, ms, line = st.read_text().strip().split(" ", 2)
  runs.append({"command": "python experiments/run.py " + line, "exit_status": int(rc),
               "wall_s": round(int(ms) / 1000, 1), **summary(Path(work) / st.stem)})
import jax
dev = jax.devices()[0]
counts = {}
junit = Path(work) / "junit.xml"
if junit.exists():  # a run cut by TEST_LIMIT writes none
  import xml.etree.ElementTree as ET
  suite = ET.parse(junit).getroot()
  suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
  counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
  counts["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                      if c.find("failure") is not None or c.find("error") is not None]
log = (Path(work) / "pytest.log").read_text(errors="replace").strip().splitlines()
res_file = Path(work) / "flagship" / "results.json"
res = json.loads(res_file.read_text()) if res_file.exists() else None
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], text=True,
                        capture_output=True).stdout.strip()
rec = {
    "commit": commit, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    "backend": jax.default_backend(), "device": getattr(dev, "device_kind", str(dev)),
    "device_count": jax.device_count(), "jax_version": jax.__version__, "scale": int(scale),
    "tests": {"command": ("python -m pytest -q -x " + tests).strip(), "exit_status": int(test_rc),
              **counts, "log_tail": log[-3:], "wall_s": round(int(test_ms) / 1000, 1)},
    "flagship": {"command": "python experiments/run.py " + run_args.replace(
                     str(Path(work) / "scale0.json"), "SCALE0_CONFIG"),
                 "exit_status": int(run_rc), "wall_s": round(int(run_ms) / 1000, 1),
                 **({k: res[k] for k in ("acc", "nmi", "fit_time_s", "wall_time_s", "epochs")
                     if k in res} if res else {}),
                 "init_acc": (res.get("init") or {}).get("acc") if res else None,
                 "timing": (res.get("info") or {}).get("timing") if res else None},
    "runs": runs,
}
name = f"{rec['time'].replace(':', '')}_{rec['backend']}_{commit or 'nocommit'}.json"
(Path(out_dir) / name).write_text(json.dumps(rec, indent=1) + "\n")
print(Path(out_dir) / name)
EOF
)
echo "tests: exit $TEST_RC, $(tail -n 1 "$WORK/pytest.log")"
echo "flagship: exit $RUN_RC, $((RUN_MS / 1000)) s wall"
for st in "$WORK"/run*.status; do [ -f "$st" ] && echo "run: exit $(cat "$st")"; done
echo "record: $RECORD"
[ "$TEST_RC" = 0 ] && [ "$RUN_RC" = 0 ] && ! grep -qv '^0 ' "$WORK"/run*.status 2>/dev/null
