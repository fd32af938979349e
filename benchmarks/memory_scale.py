"""Planned vs measured memory of the real TopK train step as the dictionary grows (issue 13 item 2).

For each dictionary size F: the dry-run planner's per-device estimate (``sae-jax plan``:
``sae_jax.bench.plan._plan_in_process``, compiled with abstract arguments, nothing allocated),
then a fresh subprocess that builds the same step, creates the state, runs a few optimizer steps on
synthetic rows (memory does not depend on the data) and reports its peak resident set size from
``resource.getrusage(RUSAGE_SELF).ru_maxrss``, also the RSS after JAX started (before anything of
size F existed): the runtime's own footprint, which the planner does not model.

    flock /work/heavy.lock python benchmarks/memory_scale.py            # 2^15, 2^17, 2^19
    python benchmarks/memory_scale.py --log2-latents 15 --steps 2       # quick

Writes benchmarks/results_memory_scale.json (one record per F; --plan-only sizes are planned, not run).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

GIB = 2**30


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux reports KiB


def measure(d_in: int, n_latents: int, k: int, batch: int, steps: int) -> dict:
    """Run the real step in this process; peak RSS and step times."""
    import jax
    import numpy as np

    from sae_jax.bench.run import train_config
    from sae_jax.bench.step import build_step, device_batches, init_state, synthetic_activations

    jax.numpy.zeros(1).block_until_ready()  # runtime up
    baseline = _rss_gib()
    cfg = train_config("topk", d_in, n_latents, k, batch, "float32", "auto", (1, 1), 0)
    built = build_step(cfg, d_in, jax.devices()[:1])
    batches = device_batches(built, synthetic_activations(2 * batch, d_in, 0), batch)
    state = init_state(built, cfg, d_in)
    jax.block_until_ready(state)
    after_init = _rss_gib()
    times, losses = [], []
    for t in range(steps):
        t0 = time.perf_counter()
        state, m = built.step(state, batches[t % len(batches)])
        losses.append(float(m["loss"]))  # waits for the step
        times.append(time.perf_counter() - t0)
    return {"impl_used": built.impl, "rss_baseline_gib": baseline, "rss_after_init_gib": after_init,
            "peak_rss_gib": _rss_gib(), "step_s": times, "losses": losses,
            "finite": bool(np.all(np.isfinite(losses)))}


def plan(d_in: int, n_latents: int, k: int, batch: int) -> dict:
    """The planner's record for a (1, 1) mesh (its own compile of the step, abstract arguments)."""
    from sae_jax.bench.config import PlanConfig
    from sae_jax.bench.plan import _plan_in_process

    rec = _plan_in_process(PlanConfig(architecture="topk", d_in=d_in, n_latents=n_latents, k=k, batch=batch,
                                      impl="auto", mesh=("1x1",)))[0]
    b = rec["bytes_per_device"]
    return {"planned_gib": b["total"] / GIB, "planned_terms_gib": {key: v / GIB for key, v in b.items()},
            "params_gib": rec["params_bytes_per_device_ideal"] / GIB, "impl_planned": rec["impl_used"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--log2-latents", type=int, nargs="+", default=[15, 17, 19])
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--plan-only", type=int, nargs="*", default=[20],
                    help="log2 sizes that are only planned (known not to fit this machine)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results_memory_scale.json")))
    ap.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # child: measure F = 2^one
    a = ap.parse_args()
    if a.one:
        print("MEASURED " + json.dumps(measure(a.d_in, 2**a.one, a.k, a.batch, a.steps)))
        return
    records = []
    for p in [*a.log2_latents, *a.plan_only]:
        rec = {"n_latents": 2**p, "d_in": a.d_in, "k": a.k, "batch": a.batch, "steps": a.steps,
               **plan(a.d_in, 2**p, a.k, a.batch)}
        if p in a.plan_only:
            records.append(rec | {"fits": None, "measured": False})
            print(json.dumps(rec), flush=True)
            continue
        proc = subprocess.run([sys.executable, __file__, "--one", str(p), "--d-in", str(a.d_in), "--k", str(a.k),
                               "--batch", str(a.batch), "--steps", str(a.steps)], capture_output=True, text=True)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("MEASURED ")]
        if proc.returncode or not lines:  # e.g. killed for memory: record it, go on
            rec |= {"fits": False, "returncode": proc.returncode, "stderr_tail": proc.stderr[-800:]}
        else:
            m = json.loads(lines[-1][9:])
            rec |= {"fits": True, **m, "measured_over_planned": m["peak_rss_gib"] / rec["planned_gib"],
                    "measured_minus_baseline_over_planned":
                        (m["peak_rss_gib"] - m["rss_baseline_gib"]) / rec["planned_gib"]}
        records.append(rec)
        print(json.dumps({k: v for k, v in rec.items() if k not in ("losses", "stderr_tail")}), flush=True)
        Path(a.out).write_text(json.dumps({"rss_source": "resource.getrusage(RUSAGE_SELF).ru_maxrss of the child",
                                           "records": records}, indent=2))


if __name__ == "__main__":
    main()
