"""Sparse BatchTopK step time vs (row_cap factor, dense-row fraction), dense step alongside; config A sizes.

Run: flock /work/heavy.lock python benchmarks/batchtopk_caps.py > benchmarks/results_batchtopk_caps.jsonl
(one JSON line per variant; steps 2-7 of a fresh state, timed one after another in one process)."""
import json, sys, time
import jax, numpy as np
import sae_jax.kernels.batchtopk as bk
import sae_jax.kernels.batchtopk_sae as bs
from sae_jax.bench.run import train_config
from sae_jax.bench.step import build_step, device_batches, init_state, synthetic_activations
d, F, k, B = 512, 8192, 32, 4096
x = synthetic_activations(3 * B, d, 0)
out = []
for fac, frac, impl in [(None, None, "dense"), (4, 1/16, "sparse"), (8, 1/8, "sparse"), (8, 1/16, "sparse"), (4, 1/8, "sparse"), (16, 1/16, "sparse")]:
    if fac:
        bs.default_row_cap = lambda k, n, factor=4, fac=fac: min(n, fac * k)
        bk.default_dense_rows = lambda b, fraction=1/16, frac=frac: max(1, int(b * frac))
    cfg = train_config("batchtopk", d, F, k, B, "float32", impl, (1, 1), 0)
    built = build_step(cfg, d, jax.devices()[:1])
    state = init_state(built, cfg, d)
    bat = device_batches(built, x, B)
    times, fb, rows = [], [], []
    for t in range(7):
        t0 = time.perf_counter(); state, m = built.step(state, bat[t % 3]); jax.block_until_ready(m)
        if t >= 1:
            times.append(time.perf_counter() - t0)
            fb.append(float(m.get("btk_dense", 0))); rows.append(float(m.get("btk_dense_rows", 0)))
    r = {"impl": impl, "cap_factor": fac, "dense_row_fraction": frac, "step_s_median": float(np.median(times)),
         "step_s": times, "dense_branch": fb, "dense_rows_frac": rows}
    print(json.dumps(r), flush=True); out.append(r)
