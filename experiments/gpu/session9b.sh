#!/usr/bin/env bash
# Second device call of session 9: the flagship IDCL command after the scanned pre-training
# epoch (digits, seed 0) beside IDCL on hdigit-mnist (seed 0), two runs on the card.
#   DATA=folder with Hdigit.mat  OUT=folder for the results  LIMIT=seconds per run
set -u
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
LIMIT=${LIMIT:-110}; PY=${PY:-python3}
R=/tmp/gpu_runs9b; rm -rf $R; mkdir -p $R
( /usr/bin/time -f "%e s wall" timeout $LIMIT $PY experiments/run.py --quiet --out $R/idcl_digits_s0 \
    --method idcl --dataset digits --seed 0 ${EX:-} ) > $R/idcl_digits_s0.log 2>&1 &
( /usr/bin/time -f "%e s wall" timeout $LIMIT $PY experiments/run.py --quiet --out $R/idcl_mnist_s0 \
    --method idcl --dataset hdigit-mnist --data-dir $DATA --seed 0 ${EX:-} ) > $R/idcl_mnist_s0.log 2>&1 &
wait
tail -n 12 $R/*.log
tar czf $OUT/gpu_runs9b.tar.gz --exclude='*.png' --exclude='*embedding*.npy' -C /tmp gpu_runs9b
