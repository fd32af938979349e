#!/usr/bin/env bash
# H200 call 3: is the peak above the compiled step's memory XLA's GEMM autotuning at compile time?
set -u
O=$1; mkdir -p $O; export PYTHONUNBUFFERED=1; PY=${PY:-python3}
B1="--d-in 576 --k 32 --warmup 2 --repeats 5 --impl sparse"
for F in 262144 1048576; do
  timeout 100 $PY -m sae_jax.cli bench $B1 --n-latents $F --batch 4096 --out $O/default.jsonl > /dev/null 2>&1; echo default $F rc=$?
  XLA_FLAGS=--xla_gpu_autotune_level=0 timeout 100 $PY -m sae_jax.cli bench $B1 --n-latents $F --batch 4096 --out $O/noautotune.jsonl > /dev/null 2>&1; echo noautotune $F rc=$?
done
$PY -c "
import json
for f in ('default','noautotune'):
  for l in open('$O/'+f+'.jsonl'):
    r=json.loads(l); print(f, r['n_latents'], 'tok/s %.0f'%r['tokens_per_s'], 'peak GiB %.2f'%(r['device_peak_bytes']/2**30), 'compiled GiB %.2f'%(r['compiled_bytes_per_device']['total']/2**30))
"
