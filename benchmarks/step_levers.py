"""The real train step with this repository's CPU speed levers switched off and on, in one process.

    python benchmarks/step_levers.py --config A --repeats 10

Variants (each compiled once, then timed round-robin so they share the machine's state):
  before   the step as it was: encoder matmul over the whole batch, then the top-k; optax Adam chain
  blocks   encoder matmul + native top-k in row blocks (kernels/fused.py ``_ENCODER_ROWS``)
  all      blocks + the one-pass native Adam (optim.fused_adam_update)
The first steps' metrics are printed per variant (they agree to float rounding).
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

import sae_jax.kernels.fused as fused
import sae_jax.train_step as train_step
from sae_jax.bench.run import parse_mesh, train_config
from sae_jax.bench.step import build_step, device_batches, init_state, synthetic_activations

CONFIGS = {"A": (512, 8192), "B": (768, 24576)}
_ROWS, _APPLIES = fused._ENCODER_ROWS, train_step.fused_adam_applies


def _set(blocks: bool, adam: bool) -> None:
    fused._ENCODER_ROWS = _ROWS if blocks else 1 << 30  # rows >= batch: one block
    train_step.fused_adam_applies = _APPLIES if adam else (lambda *a: False)


VARIANTS = {"before": (False, False), "blocks": (True, False), "adam": (False, True), "all": (True, True)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="A", choices=list(CONFIGS))
    p.add_argument("--variants", default="before,blocks,all")
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args()
    d, F = CONFIGS[a.config]
    B = 4096
    cfg = train_config("topk", d, F, 32, B, "float32", "sparse", parse_mesh("1x1"), 0)
    xs = synthetic_activations(2 * B, d, 0)
    names = a.variants.split(",")
    runs = {}
    for n in names:
        _set(*VARIANTS[n])  # read when the step is traced
        built = build_step(cfg, d, jax.devices()[:1])
        state = init_state(built, cfg, d)
        batches = device_batches(built, xs, B)
        runs[n] = [built.step.lower(state, batches[0]).compile(), state, batches]
    _set(True, True)
    for n in names:
        step, state, batches = runs[n]
        for i in range(3):
            state, m = step(state, batches[i % 2])
        runs[n][1] = state
        print(f"{n:8s} step 3 metrics: " + ", ".join(f"{k} {float(m[k]):.7g}" for k in ("loss", "l0", "grad_norm")))
    times = {n: [] for n in names}
    for r in range(a.repeats):
        for n in names:
            step, state, batches = runs[n]
            t0 = time.perf_counter()
            state, m = step(state, batches[r % 2])
            jax.block_until_ready((state, m))
            times[n].append(time.perf_counter() - t0)
            runs[n][1] = state
    print(f"config {a.config} (d {d}, F {F}), batch {B}, k 32; {a.repeats} interleaved rounds, "
          f"1-min load {os.getloadavg()[0]:.1f}")
    base = float(np.median(times[names[0]]))
    for n in names:
        med = float(np.median(times[n]))
        print(f"  {1e3 * med:7.1f} ms (min {1e3 * min(times[n]):.1f})  {B / med:8,.0f} tokens/s  "
              f"{med / base:.3f}x of {names[0]}  {n}")


if __name__ == "__main__":
    main()
