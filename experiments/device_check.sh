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

# 3. the record
RECORD=$($PY - "$WORK" "$RECORD_DIR" "$SCALE" "$TEST_RC" "$TEST_MS" "$RUN_RC" "$RUN_MS" \
  "${TESTS:-}" "${RUN_ARGS[*]}" <<'EOF'
import json, subprocess, sys, time
from pathlib import Path
work, out_dir, scale, test_rc, test_ms, run_rc, run_ms, tests, run_args = sys.argv[1:]
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
}
name = f"{rec['time'].replace(':', '')}_{rec['backend']}_{commit or 'nocommit'}.json"
(Path(out_dir) / name).write_text(json.dumps(rec, indent=1) + "\n")
print(Path(out_dir) / name)
EOF
)
echo "tests: exit $TEST_RC, $(tail -n 1 "$WORK/pytest.log")"
echo "flagship: exit $RUN_RC, $((RUN_MS / 1000)) s wall"
echo "record: $RECORD"
[ "$TEST_RC" = 0 ] && [ "$RUN_RC" = 0 ]
