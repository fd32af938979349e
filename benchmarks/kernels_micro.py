"""Micro-benchmarks behind the kernel choices in sae_jax/kernels (docs/performance.md).

    python benchmarks/kernels_micro.py --config A

Each candidate formulation is jitted alone and timed interleaved with the others (median
of --repeats after a warm-up), on the shapes of a TopK step: batch 4096, k 32.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sae_jax.kernels import cpu_kernels
from sae_jax.kernels.sparse_topk import _gather_combine, _gather_dot, _scatter_outer, topk

CONFIGS = {"A": (512, 8192), "B": (768, 24576)}


def interleaved(cands: dict, args: dict, repeats: int) -> dict:
    fns = {n: jax.jit(f) for n, f in cands.items()}
    for n, f in fns.items():
        jax.block_until_ready(f(*args[n]))
    times = {n: [] for n in fns}
    for _ in range(repeats):
        for n, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args[n]))
            times[n].append(time.perf_counter() - t0)
    return {n: 1e3 * float(np.median(t)) for n, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="A", choices=list(CONFIGS))
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    d, F = CONFIGS[a.config]
    B, k = 4096, 32
    key = jax.random.split(jax.random.PRNGKey(0), 5)
    pre = jax.random.normal(key[0], (B, F))
    bias = jax.random.normal(key[1], (F,))
    W = jax.random.normal(key[2], (F, d))
    idx = jax.random.randint(key[3], (B, k), 0, F)
    vals = jax.random.uniform(key[4], (B, k))
    g = jax.random.normal(key[0], (B, d))
    x = jax.random.normal(key[1], (B, d))
    W_enc = jax.random.normal(key[2], (d, F))

    groups = {
        "encoder matmul x @ W_enc": ({"x @ W_enc": lambda x, w: x @ w}, (x, W_enc)),
        "top-k of pre + b_enc": ({
            "lax.top_k": lambda p, b: lax.top_k(p + b, k),
            "chunked (pure JAX)": lambda p, b: topk(p, k, method="chunked", bias=b),
            **({"native (C++ FFI)": lambda p, b: topk(p, k, method="native", bias=b)}
               if cpu_kernels.available() else {}),
        }, (pre, bias)),
        **({"encoder matmul + top-k (the forward's selection)": ({
            "matmul, then top-k of the whole [B, F]": lambda x, w, b: topk(x @ w, k, method="native", bias=b),
            "512-row blocks, each selected while cached (used)": lambda x, w, b: tuple(
                o.reshape(B, k) for o in lax.map(lambda xs: topk(xs @ w, k, method="native", bias=b),
                                                 x.reshape(B // 512, 512, d))),
        }, (x, W_enc, bias))} if cpu_kernels.available() else {}),
        "decoder sum_j v[:,j] W[idx[:,j]]": ({
            "gather (B,k,d) + einsum": lambda v, i, w: jnp.einsum("bk,bkd->bd", v, w[i]),
            "scan over k": lambda v, i, w: lax.scan(
                lambda acc, s: (acc + s[0][:, None] * w.at[s[1]].get(mode="promise_in_bounds"), None),
                jnp.zeros((B, d)), (v.T, i.T))[0],
            "unrolled k-loop (used)": _gather_combine,
        }, (vals, idx, W)),
        "values' gradient <g, W[idx]>": ({
            "gather (B,k,d) + einsum": lambda g, i, w: jnp.einsum("bd,bkd->bk", g, w[i]),
            "batch blocks (used)": _gather_dot,
        }, (g, idx, W)),
        "row scatter-add W[idx] += v g": ({
            "flat scatter (B*k rows)": lambda v, i, g: jnp.zeros((F, d)).at[i.reshape(-1)].add(
                (v[..., None] * g[:, None]).reshape(-1, d)),
            "scan over k": lambda v, i, g: lax.scan(
                lambda acc, s: (acc.at[s[1]].add(s[0][:, None] * g, mode="promise_in_bounds"), None),
                jnp.zeros((F, d)), (v.T, i.T))[0],
            "batch blocks (used)": lambda v, i, g: _scatter_outer(v, i, g, F),
        }, (vals, idx, g)),
    }
    gvd = jnp.zeros((B, k))

    def xla_bwd(g, gvd, v, i, xc, w):
        gp = jnp.where(v > 0, _gather_dot(g, i, w) + gvd, 0.0)
        return _scatter_outer(gp, i, xc, F).T, _scatter_outer(v, i, g, F), gp

    bwd = {"pure JAX: gather-dot + 2 block scatters + transpose": xla_bwd}
    if cpu_kernels.available():
        bwd["native (C++ FFI, used on CPU)"] = cpu_kernels.sparse_bwd_native
    groups["whole sparse backward (values' gradient, dW_enc, dW_dec)"] = (bwd, (g, gvd, vals, idx, x, W))
    print(f"config {a.config} (d {d}, F {F}), batch {B}, k {k}; backend {jax.default_backend()}, "
          f"1-min load {os.getloadavg()[0]:.1f}")
    for title, (cands, args) in groups.items():
        res = interleaved(cands, {n: args for n in cands}, a.repeats)
        print(f"\n{title}")
        for n, ms in res.items():
            print(f"  {ms:8.1f} ms  {n}")


if __name__ == "__main__":
    main()
