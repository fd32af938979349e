"""Per-op profile of the real train step on this machine (XLA's own trace events).

    python benchmarks/profile_step.py --config A --impl sparse [--mesh 1x4]

Times a few steps, then records two with jax.profiler and sums the duration of each
HLO instruction (fusions, custom calls, loops, and the instructions inside loop bodies,
marked), labelled with the JAX operation it came from. What docs/performance.md quotes as "the profile".
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import sys
import time

if __name__ == "__main__" and "--mesh" in sys.argv:  # host devices must be forced before jax starts
    _data, _dict = sys.argv[sys.argv.index("--mesh") + 1].lower().split("x")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={int(_data) * int(_dict)}")

import jax
import numpy as np

from sae_jax.bench.run import parse_mesh, train_config
from sae_jax.bench.step import build_step, device_batches, init_state, synthetic_activations

CONFIGS = {"A": (512, 8192), "B": (768, 24576)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="A", choices=list(CONFIGS))
    p.add_argument("--impl", default="sparse", choices=["sparse", "dense"])
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--mesh", default="1x1", help="DATAxDICT on forced host devices (times summed over devices)")
    a = p.parse_args()
    d, F = CONFIGS[a.config]
    mesh = parse_mesh(a.mesh)
    cfg = train_config("topk", d, F, a.k, a.batch, "float32", a.impl, mesh, 0)
    built = build_step(cfg, d, jax.devices()[: mesh[0] * mesh[1]])
    state = init_state(built, cfg, d)
    batches = device_batches(built, synthetic_activations(2 * a.batch, d, 0), a.batch)
    step = built.step.lower(state, batches[0]).compile()
    times = []
    for i in range(5):
        t0 = time.perf_counter()
        state, m = step(state, batches[i % 2])
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t0)
    print(f"config {a.config} impl {built.impl}: step {1e3 * np.median(times[2:]):.0f} ms "
          f"({a.batch / np.median(times[2:]):,.0f} tokens/s), 1-min load {os.getloadavg()[0]:.1f}")
    hlo = step.as_text()
    entry = hlo[hlo.index("\nENTRY"):]
    entry = entry[:entry.index("\n}\n")]
    label, entry_lines = {}, set(entry.splitlines())
    # every computation: instructions inside loop bodies (the blocked encoder) run as their own
    # events; those outside ENTRY are marked "(in loop/cond)"
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+)", line)
        if m:
            op = re.search(r'op_name="([^"]*)"', line)
            where = "" if line in entry_lines else "(in loop/cond) "
            label[m.group(1)] = f"{m.group(2)[:40]:40s} {where}{op.group(1) if op else ''}"
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp)
        for i in range(2):
            state, m = step(state, batches[i % 2])
            jax.block_until_ready((state, m))
        jax.profiler.stop_trace()
        trace = sorted(glob.glob(f"{tmp}/**/*.trace.json.gz", recursive=True))[-1]
        events = json.load(gzip.open(trace))["traceEvents"]
    total = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in label:
            total[e["name"]] += e["dur"] / 2 / 1e3
    print(f"{'ms/step':>8}  instruction / shape / JAX op   (all events: {sum(total.values()):.1f} ms/step)")
    for name, ms in total.most_common(a.top):
        print(f"{ms:8.1f}  {name[:30]:30s} {label[name][:140]}")


if __name__ == "__main__":
    main()
