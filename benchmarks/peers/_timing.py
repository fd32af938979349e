"""Shared by the workers (stdlib + NumPy only: each worker runs in its own virtualenv)."""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def worker_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", required=True, help=".npy float32 [rows, d_in] activations")
    p.add_argument("--batch", type=int, default=4096, help="tokens per step")
    p.add_argument("--steps", type=int, default=6, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps (compile, allocator)")
    p.add_argument("--n-latents", type=int, required=True)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--variant", default="default", help="peer-specific variant name")
    return p.parse_args()


def load_batches(args: argparse.Namespace) -> np.ndarray:
    """The first (warmup + steps) batches of the shared data file, loaded into RAM."""
    x = np.load(args.data, mmap_mode="r")
    n = (args.warmup + args.steps) * args.batch
    if x.shape[0] < n:
        raise SystemExit(f"{args.data} has {x.shape[0]} rows; need {n} (warmup+steps)*batch")
    return np.ascontiguousarray(x[:n], dtype=np.float32)


class StepClock:
    """Records the wall time at the end of each step; durations are consecutive differences."""

    def __init__(self) -> None:
        self.marks = [time.perf_counter()]

    def tick(self) -> None:
        self.marks.append(time.perf_counter())

    def durations(self) -> list[float]:
        return list(np.diff(self.marks))


def peak_rss_mib() -> float:
    """This process's peak RSS. Linux: VmHWM, which starts afresh at exec (ru_maxrss carries the parent's
    peak across fork + exec, so a harness that had just generated the data reported its own peak)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def report(args: argparse.Namespace, impl: str, durations: list[float], losses: list[float]) -> None:
    timed = durations[args.warmup:]
    print("RESULT " + json.dumps({
        "impl": impl, "variant": args.variant, "batch": args.batch, "n_latents": args.n_latents,
        "k": args.k, "step_s": timed, "warmup_s": durations[:args.warmup],
        "peak_rss_mib": peak_rss_mib(), "losses": losses,
    }), flush=True)
