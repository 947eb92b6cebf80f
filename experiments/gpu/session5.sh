#!/usr/bin/env bash
# Device calls of session 5 (one H200): GPU correctness (op and method tests on the GPU) and
# the paper's 1000-epoch pre-training budget with augmentation for ULHE, which the 2-core CPU
# cannot afford (28 min per seed). Runs go concurrently on the one GPU; each has its own
# wall-clock limit so the results come back inside one call.
#   PART=a|b  DATA=folder with Hdigit.mat (and prokaryotic.mat)  OUT=folder for the results
#   LIMIT=seconds per run  SCALE=0: smoke test (2 pre-training epochs, 600 samples)
# Call a: DATA=.gpudata OUT=$OUT LIMIT=470 PART=a bash experiments/gpu/session5.sh
# Call b: DATA=.gpudata OUT=$OUT LIMIT=360 PART=b bash experiments/gpu/session5.sh
set -u
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
LIMIT=${LIMIT:-480}; PART=${PART:-a}
R=/tmp/gpu_runs; rm -rf $R; mkdir -p $R
{ nvidia-smi -L; python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"; } > $R/env.txt 2>&1
cat $R/env.txt
C=experiments/configs; EX=""
if [ "${SCALE:-1}" = 0 ]; then
  C=$R/configs; mkdir -p $C; EX="--epochs 2 --max-samples 600"
  for f in ulhe_da1000 ulhe_paper_da; do
    sed 's/"pretrain_epochs": 1000/"pretrain_epochs": 2/; s/"pretrain_eval_every": 100/"pretrain_eval_every": 1/' \
      experiments/configs/$f.json > $C/$f.json
  done
fi
run() {  # name, then run.py arguments
  local n=$1; shift
  ( /usr/bin/time -v timeout $LIMIT python3 experiments/run.py --quiet --out $R/$n "$@" $EX ) > $R/$n.log 2>&1 &
}
gpu_pytest() {  # test files; sharding tests need 8 CPU devices and stay on the CPU
  ( JAX_PLATFORMS=cuda timeout $LIMIT python3 -m pytest -q -p no:cacheprovider "$@" ) > $R/pytest_gpu.log 2>&1 &
}
if [ "$PART" = a ]; then
  for s in 0 1 2; do
    run ulhe_da1000_s$s --method ulhe --dataset hdigit-mnist --data-dir $DATA --seed $s --config $C/ulhe_da1000.json
  done
  run ulhe_paper_da_s0 --method ulhe --dataset hdigit-mnist --data-dir $DATA --seed 0 --config $C/ulhe_paper_da.json
  run idcl_digits_s0 --method idcl --dataset digits --seed 0
  gpu_pytest -x tests/test_distances.py tests/test_kmeans.py tests/test_metrics.py tests/test_augment.py \
    tests/test_ulhe_ops.py tests/test_idcl_ops.py tests/test_largemvc_ops.py \
    tests/test_ulhe_method.py tests/test_idcl_method.py
else
  for s in 3 4 5; do
    run ulhe_da1000_s$s --method ulhe --dataset hdigit-mnist --data-dir $DATA --seed $s --config $C/ulhe_da1000.json
  done
  for s in 0 1 2; do
    run ulhe_usps_da1000_s$s --method ulhe --dataset hdigit-usps --data-dir $DATA --seed $s --config $C/ulhe_da1000.json
  done
  run idcl_mnist_s0 --method idcl --dataset hdigit-mnist --data-dir $DATA --seed 0
  # the tests' real-data fixture reads ../shared/data
  [ -e ../shared/data ] || { mkdir -p ../shared && ln -s "$PWD/$DATA" ../shared/data; }
  gpu_pytest --maxfail=40 tests/test_distances.py tests/test_kmeans.py tests/test_metrics.py \
    tests/test_augment.py tests/test_ulhe_ops.py tests/test_idcl_ops.py tests/test_largemvc_ops.py \
    tests/test_ulhe_method.py tests/test_idcl_method.py tests/test_largemvc_method.py tests/test_api.py \
    tests/test_train.py tests/test_baselines.py
fi
wait
for f in $R/*.log; do echo "== $f"; tail -4 $f; done
python3 - <<'PY'
import glob, json
for f in sorted(glob.glob("/tmp/gpu_runs/*/results.json")):
  r = json.load(open(f))
  print(f.split("/")[-2], "acc", round(r["acc"], 4), "init", round(r["init"]["acc"], 4),
        "nmi", round(r["nmi"], 4), "wall", r.get("wall_time_s"), "info", {k: v for k, v in r["info"].items() if k.endswith(("_s", "per_s", "_run", "stop_epoch"))})
PY
grep -h "passed\|failed" $R/pytest_gpu.log | tail -3
tar czf $OUT/gpu_runs.tar.gz --exclude=checkpoints --exclude='*.png' --exclude=embedding.npy -C /tmp gpu_runs
ls -la $OUT
