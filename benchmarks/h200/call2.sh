#!/usr/bin/env bash
# H200 call 2: sparse step with chunk-pruned top-k (now auto off TPU) vs lax.top_k; memory planned vs measured; whole loop.
# Ran 2026-12-04 on a lent H200 after sparse_topk.auto_method (chunk-pruned top-k on GPU). Each call first installed
# tyro, docstring_parser, typeguard and gguf wheels (absent from that image) and set PYTHONPATH to the checkout.
set -u
O=$1; S=${2:-}
mkdir -p $O
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
if [ -z "$S" ]; then
  FS="65536 262144 1048576"; AB=262144; B=4096; BIG="2097152:4096 4194304:1024"; TR=1048576; TSTEPS=300; NR=500000
else
  FS="1024 4096"; AB=4096; B=256; BIG="8192:128"; TR=4096; TSTEPS=20; NR=20000
fi
T0=$(date +%s); t() { echo "== $(( $(date +%s) - T0 ))s: $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tail -1
B1="--d-in 576 --k 32 --warmup 2 --repeats 5"
for F in $FS; do
  t plan+bench F=$F
  timeout 120 $PY -m sae_jax.cli plan --d-in 576 --n-latents $F --k 32 --batch $B --mesh 1x1 --out $O/plan_$F.json > $O/plan_$F.log 2>&1 || tail -3 $O/plan_$F.log
  timeout 150 $PY -m sae_jax.cli bench $B1 --n-latents $F --batch $B --impl sparse --out $O/bench_f.jsonl > $O/bench_$F.log 2>&1 || tail -3 $O/bench_$F.log
done
for FB in $BIG; do F=${FB%:*}; BB=${FB#*:}
  t largest F=$F batch $BB
  timeout 120 $PY -m sae_jax.cli plan --d-in 576 --n-latents $F --k 32 --batch $BB --mesh 1x1 --out $O/plan_$F.json > $O/plan_$F.log 2>&1 || tail -3 $O/plan_$F.log
  $PY -c "import json,sys;p=json.load(open('$O/plan_$F.json'))[0]['bytes_per_device']['total'];print('planned GiB',p/2**30);sys.exit(p>125*2**30)" && timeout 150 $PY -m sae_jax.cli bench $B1 --n-latents $F --batch $BB --impl sparse --out $O/bench_f.jsonl > $O/bench_$F.log 2>&1 || tail -3 $O/bench_$F.log
done
t A/B top-k lax vs chunked, bf16, dense at F=$AB
timeout 200 $PY -m sae_jax.cli bench $B1 --n-latents $AB --batch $B --impl sparse dense --topk-method chunked lax --dtype float32 bfloat16 --out $O/bench_ab.jsonl > $O/bench_ab.log 2>&1 || tail -3 $O/bench_ab.log
t whole loop F=$TR
$PY -c "import numpy as np;np.save('/tmp/rows.npy',np.random.default_rng(0).standard_normal(($NR,576),dtype=np.float32))"
timeout 200 $PY -m sae_jax.cli train topk --run-dir /tmp/loop --steps $TSTEPS --sae.d-sae $TR --sae.k 32 --data.batch-size $B --data.npy /tmp/rows.npy --log.every 50 --checkpoint.every 100000 --log.no-progress > $O/train.log 2>&1; echo rc=$?; tail -4 $O/train.log
cp /tmp/loop/metrics.jsonl $O/train_metrics.jsonl 2>/dev/null
cd $O && mkdir -p p && mv plan_* p/ 2>/dev/null; tar czf logs.tgz *.log p; rm -rf p *.log
t done
