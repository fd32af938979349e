"""sae_jax: its real train step (variants default/sparse/dense: sae_jax.bench.step.build_step, the code
`sae-jax train` runs), or its whole public training loop (variant loop: sae_jax.train)."""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import load_batches, report, worker_args  # noqa: E402


def step_only(args, x) -> None:
    import jax

    from sae_jax.bench.run import train_config
    from sae_jax.bench.step import build_step, device_batches, init_state

    impl = "sparse" if args.variant == "default" else args.variant
    cfg = train_config("topk", x.shape[1], args.n_latents, args.k, args.batch, "float32", impl, (1, 1), 0)
    built = build_step(cfg, x.shape[1], jax.devices()[:1])
    state = init_state(built, cfg, x.shape[1])
    batches = device_batches(built, x, args.batch)
    durations, losses = [], []
    for b in batches:  # first steps include compilation: they are the warm-up
        t0 = time.perf_counter()
        state, m = built.step(state, b)
        jax.block_until_ready((state, m))
        durations.append(time.perf_counter() - t0)
        losses.append(float(m["loss"]))
    report(args, f"sae_jax ({built.impl})", durations, losses)


def whole_loop(args, x) -> None:
    """sae_jax.train on the rows in memory: loader thread, metric fetch and checks every step, logging.

    Per-step times come from metrics.jsonl (log.every 1): its tokens_per_s is cumulative since the
    loop started, so the time at step n is tokens_n / tokens_per_s_n; durations are differences."""
    import sae_jax
    from sae_jax.bench.run import train_config
    from sae_jax.data.source import ArraySource

    n_steps = args.warmup + args.steps
    base = train_config("topk", x.shape[1], args.n_latents, args.k, args.batch, "float32", "auto", (1, 1), 0)
    with tempfile.TemporaryDirectory() as tmp:
        d = base.to_dict()
        cfg = sae_jax.TrainConfig.from_dict(d | {
            "steps": n_steps, "run_dir": tmp,
            "data": d["data"] | {"holdout_fraction": 0.0},
            "log": d["log"] | {"every": 1, "progress": False},
            "checkpoint": d["checkpoint"] | {"every": 10**9}})
        sae_jax.train(cfg, ArraySource(x))
        lines = [json.loads(l) for l in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    ends = [r["tokens"] / r["tokens_per_s"] for r in lines]
    durations = [ends[0]] + [b - a for a, b in zip(ends, ends[1:])]
    report(args, "sae_jax (sae_jax.train loop)", durations, [r["loss"] for r in lines])


def main() -> None:
    args = worker_args(__doc__)
    x = load_batches(args)
    whole_loop(args, x) if args.variant == "loop" else step_only(args, x)


if __name__ == "__main__":
    main()
