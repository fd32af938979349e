"""sae_jax's real train step (sae_jax.bench.step.build_step: the code `sae-jax train` runs)."""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import load_batches, report, worker_args  # noqa: E402


def main() -> None:
    args = worker_args(__doc__)
    import jax

    from sae_jax.bench.run import train_config
    from sae_jax.bench.step import build_step, device_batches, init_state

    x = load_batches(args)
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


if __name__ == "__main__":
    main()
