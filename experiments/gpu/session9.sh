#!/usr/bin/env bash
# The device call of session 9 (one H200, one call): where IDCL's clustering epoch spends its
# time on a GPU, IDCL with its defaults on the three image sets (3 seeds each: digits, and the
# 10k Hdigit views the 2-core CPU can only run on a 10 + 10 epoch budget), and the op and
# method tests on the GPU (k-means determinism after ops.cluster_sums).
#   DATA=folder with Hdigit.mat  OUT=folder for the results  LIMIT=seconds per run in phase 2
#   SCALE=0: smoke test on the CPU (2 + 2 epochs, 600 samples, one test file)
# Device: DATA=.gpudata OUT=$OUT LIMIT=420 bash experiments/gpu/session9.sh
set -u
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
LIMIT=${LIMIT:-420}; PLIMIT=${PLIMIT:-110}
R=/tmp/gpu_runs9; rm -rf $R; mkdir -p $R
PY=${PY:-python3}
{ nvidia-smi -L 2>/dev/null; $PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"; nproc; } > $R/env.txt 2>&1
cat $R/env.txt
EX=""; PROF="--pretrain-epochs 5 --epochs 12"; TESTS="tests/test_distances.py tests/test_kmeans.py \
  tests/test_idcl_ops.py tests/test_ulhe_ops.py tests/test_train.py tests/test_augment.py \
  tests/test_metrics.py tests/test_idcl_method.py tests/test_ulhe_method.py \
  tests/test_largemvc_ops.py tests/test_largemvc_method.py tests/test_api.py tests/test_baselines.py"
if [ "${SCALE:-1}" = 0 ]; then
  echo '{"pretrain_epochs": 2}' > $R/smoke.json
  EX="--epochs 2 --max-samples 600 --config $R/smoke.json"; PROF="--pretrain-epochs 1 --epochs 2 --reps 1"
  TESTS="tests/test_distances.py"
fi
# Phase 1, nothing else on the card: the epoch profile on digits and on a 10k view.
timeout $PLIMIT $PY experiments/idcl_epoch_profile.py --dataset digits $PROF \
  --out $R/idcl_epoch_profile.json > $R/profile_digits.log 2>&1 &
timeout $PLIMIT $PY experiments/idcl_epoch_profile.py --dataset hdigit-mnist --data-dir $DATA $PROF \
  --out $R/idcl_epoch_profile_mnist.json > $R/profile_mnist.log 2>&1 &
wait
# Phase 2: the runs and the tests together on the one card (timings are upper bounds).
run() {  # name, then run.py arguments
  local n=$1; shift
  ( /usr/bin/time -v timeout $LIMIT $PY experiments/run.py --quiet --out $R/$n "$@" $EX ) > $R/$n.log 2>&1 &
}
for s in 0 1 2; do
  run idcl_digits_s$s --method idcl --dataset digits --seed $s
  run idcl_mnist_s$s --method idcl --dataset hdigit-mnist --data-dir $DATA --seed $s
  run idcl_usps_s$s --method idcl --dataset hdigit-usps --data-dir $DATA --seed $s
done
[ -e ../shared/data ] || { mkdir -p ../shared && ln -s "$PWD/$DATA" ../shared/data; }
( JAX_PLATFORMS=${TEST_PLATFORM:-cuda} timeout $LIMIT $PY -m pytest -vv -p no:cacheprovider \
    --maxfail=40 $TESTS ) > $R/pytest_gpu.log 2>&1 &
wait
for f in $R/*.log; do echo "== $f"; tail -3 $f; done
$PY - <<'PY'
import glob, json
for f in sorted(glob.glob("/tmp/gpu_runs9/*/results.json")):
  r = json.load(open(f))
  print(f.split("/")[-2], "acc", round(r["acc"], 4), "init", round(r["init"]["acc"], 4),
        "nmi", round(r["nmi"], 4), "wall", r.get("wall_time_s"),
        {k: v for k, v in r["info"].items() if k.endswith(("_s", "per_s", "stopped_at_epoch"))})
PY
grep -c PASSED $R/pytest_gpu.log; grep -E "FAILED|ERROR|passed|failed" $R/pytest_gpu.log | tail -20
tar czf $OUT/gpu_runs9.tar.gz --exclude=checkpoints --exclude='*.png' --exclude='*embedding*.npy' -C /tmp gpu_runs9
cp $R/pytest_gpu.log $R/*.json $OUT/ 2>/dev/null
ls -la $OUT
