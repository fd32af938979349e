#!/usr/bin/env bash
# H200 call 1: environment probe, planner vs measured device memory, step speed vs F, whole loop on synthetic data.
# Ran 2026-12-04 on a lent H200 at commit 82a1985, when sae.impl=auto on GPU used lax.top_k (the "before" rows).
# Usage: bash .gpu/call1.sh OUTDIR [small]   (small = local CPU dry run)
set -u
O=$1; S=${2:-}
mkdir -p $O
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
if [ -z "$S" ]; then
  FS="65536 262144 1048576"; BIG=4194304; B=4096; BB=1024; TR=1048576; TSTEPS=400; NR=500000
else
  FS="1024 4096"; BIG=8192; B=256; BB=128; TR=4096; TSTEPS=20; NR=20000
fi
T0=$(date +%s); t() { echo "== $(( $(date +%s) - T0 ))s: $*"; }
t env
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tail -2
$PY -c "import jax,flax,optax,orbax.checkpoint as oc,tensorstore,tyro;print('jax',jax.__version__,jax.devices(),'flax',flax.__version__,'optax',optax.__version__)" 2>&1 | tail -3
for F in $FS; do
  t plan+bench F=$F
  timeout 120 $PY -m sae_jax.cli plan --d-in 576 --n-latents $F --k 32 --batch $B --impl sparse --mesh 1x1 --out $O/plan_$F.json > $O/plan_$F.log 2>&1 || tail -5 $O/plan_$F.log
  timeout 150 $PY -m sae_jax.cli bench --d-in 576 --n-latents $F --k 32 --batch $B --impl sparse --dtype float32 --warmup 2 --repeats 5 --out $O/bench.jsonl > $O/bench_$F.log 2>&1 || tail -5 $O/bench_$F.log
done
t dense vs sparse, bf16
timeout 200 $PY -m sae_jax.cli bench --d-in 576 --n-latents $TR --k 32 --batch $B --impl dense sparse --dtype float32 bfloat16 --warmup 2 --repeats 5 --out $O/bench_impl.jsonl > $O/bench_impl.log 2>&1 || tail -5 $O/bench_impl.log
t largest F=$BIG batch $BB
timeout 120 $PY -m sae_jax.cli plan --d-in 576 --n-latents $BIG --k 32 --batch $BB --impl sparse --mesh 1x1 --out $O/plan_$BIG.json > $O/plan_$BIG.log 2>&1 || tail -5 $O/plan_$BIG.log
$PY -c "import json,sys;p=json.load(open('$O/plan_$BIG.json'))[0]['bytes_per_device']['total'];print('planned GiB',p/2**30);sys.exit(p>125*2**30)" && timeout 150 $PY -m sae_jax.cli bench --d-in 576 --n-latents $BIG --k 32 --batch $BB --impl sparse --dtype float32 --warmup 2 --repeats 5 --out $O/bench_big.jsonl > $O/bench_big.log 2>&1 || tail -5 $O/bench_big.log
t whole loop
$PY -c "import numpy as np;np.save('/tmp/rows.npy',np.random.default_rng(0).standard_normal(($NR,576),dtype=np.float32))"
timeout 200 $PY -m sae_jax.cli train topk --run-dir /tmp/loop --steps $TSTEPS --sae.d-sae $TR --sae.k 32 --data.batch-size $B --data.npy /tmp/rows.npy --log.every 100 --checkpoint.every 100000 --log.no-progress > $O/train.log 2>&1; echo rc=$?; tail -8 $O/train.log
cp /tmp/loop/metrics.jsonl $O/train_metrics.jsonl 2>/dev/null
t done
