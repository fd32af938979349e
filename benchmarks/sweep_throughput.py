"""Tokens/s per member: a 4-member sweep (one data pass; alike members stacked in one vmapped step, or
with stack=False stepped in turn) vs the same 4 members trained one after another with `train`. Small CPU sizes (under a minute).

    flock /work/heavy.lock python benchmarks/sweep_throughput.py [--out benchmarks/results_sweep_throughput.json]

Wall times include compilation and input statistics (what a user waits for); tokens_per_s_per_member
= one member's tokens / the wall time to train all members (separate runs run one after another).
`steady` rates are the trainer's own tokens_per_s of the last metrics line while that run or sweep
steps (a separate run has the machine to itself: divide by the member count to compare).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import jax

from sae_jax.config import CheckpointConfig, DataConfig, LogConfig, OptimConfig, SAEConfig, TrainConfig
from sae_jax.data.open import open_source
from sae_jax.sweep import member_configs, train_sweep
from sae_jax.trainer import train


def base(run_dir: str, steps: int) -> TrainConfig:
    return TrainConfig(
        run_dir=run_dir, steps=steps,
        data=DataConfig(batch_size=1024, synthetic_d_in=64, synthetic_n_features=256, synthetic_n_rows=65536,
                        n_stat_rows=4096),
        sae=SAEConfig(architecture="batchtopk", d_sae=512, k=8, dead_tokens=200_000, impl="dense"),  # stackable (as measured)
        optim=OptimConfig(lr=2e-3, warmup_steps=20),
        checkpoint=CheckpointConfig(every=10**6), log=LogConfig(every=50, progress=False))


MEMBERS = [{"seed": 0}, {"seed": 1}, {"seed": 2, "optim.lr": 1e-3}, {"seed": 3, "optim.lr": 4e-3}]


def last_rate(run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["tokens_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results_sweep_throughput.json")))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfgs = member_configs(base(f"{tmp}/sweep", a.steps), MEMBERS)
        source = open_source(cfgs[0].data)  # one in-memory dataset for both (generation not timed)
        t0 = time.perf_counter()
        train_sweep(cfgs, source=source)
        sweep_wall = time.perf_counter() - t0
        sweep_steady = [last_rate(Path(c.run_dir)) for c in cfgs]
        turn = [dataclasses.replace(c, run_dir=f"{tmp}/turn/{i}") for i, c in enumerate(cfgs)]
        t0 = time.perf_counter()
        train_sweep(turn, source=source, stack=False)
        turn_wall = time.perf_counter() - t0
        turn_steady = [last_rate(Path(c.run_dir)) for c in turn]
        solo_wall, solo_steady = 0.0, []
        for i, c in enumerate(cfgs):
            c = dataclasses.replace(c, run_dir=f"{tmp}/solo/{i}")
            t0 = time.perf_counter()
            train(c, source=source)
            solo_wall += time.perf_counter() - t0
            solo_steady.append(last_rate(Path(c.run_dir)))
    tokens = a.steps * cfgs[0].data.batch_size
    n = len(cfgs)
    result = {
        "setup": {"members": MEMBERS, "architecture": "batchtopk", "d_in": 64, "d_sae": 512, "k": 8,
                  "batch_size": 1024, "steps": a.steps, "backend": jax.default_backend(),
                  "devices": jax.device_count(), "cpu_count": os.cpu_count(), "machine": platform.machine()},
        "sweep": {"wall_s": sweep_wall, "tokens_per_s_per_member": tokens / sweep_wall,
                  "steady_tokens_per_s_per_member": sweep_steady},
        "sweep_in_turn": {"wall_s": turn_wall, "tokens_per_s_per_member": tokens / turn_wall,
                          "steady_tokens_per_s_per_member": turn_steady},
        "separate": {"wall_s": solo_wall, "tokens_per_s_per_member": tokens / solo_wall,
                     "steady_tokens_per_s_per_member": solo_steady},
        "speedup_wall": solo_wall / sweep_wall,
    }
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
