"""Time the real train step over a grid of configurations.

Each configuration: build the step exactly as `sae-jax train` does (assemble -> state ->
make_train_step), compile it once, run `warmup` steps, then time `repeats` steps (each
waited for). FLOPs, utilisation and memory come from the formulas in flops.py, the
compiled executable and a matmul peak measured in the same process.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from sae_jax.bench import flops as F
from sae_jax.bench.config import BenchConfig
from sae_jax.bench.measure import (compiled_bytes, device_peak_bytes, matmul_peak,
                                   process_peak_rss_mib, xla_flops)
from sae_jax.bench.peaks import datasheet_tflops
from sae_jax.bench.report import markdown_table, plot_results
from sae_jax.bench.step import build_step, device_batches, init_state, synthetic_activations
from sae_jax.config import ConfigError, DataConfig, MeshConfig, OptimConfig, SAEConfig, TrainConfig, validate

SMOKE = dict(d_in=(32,), n_latents=(256,), k=(8,), batch=(64,), warmup=1, repeats=2)


def parse_mesh(spec: str) -> tuple[int, int]:
    try:
        data, dict_ = (int(v) for v in spec.lower().split("x"))
    except ValueError:
        raise ConfigError(f"mesh {spec!r} must look like DATAxDICT, e.g. 1x1 or 4x2") from None
    if data < 1 or dict_ < 1:
        raise ConfigError(f"mesh {spec!r}: both axes must be >= 1")
    return data, dict_


def train_config(arch: str, d_in: int, n_latents: int, k: int, batch: int, dtype: str, impl: str,
                 mesh: tuple[int, int], seed: int, topk_method: str = "auto") -> TrainConfig:
    return TrainConfig(
        steps=10**9, seed=seed,
        data=DataConfig(batch_size=batch),
        sae=SAEConfig(architecture=arch, d_sae=n_latents, k=k, compute_dtype=dtype, impl=impl,
                      topk_method=topk_method),
        optim=OptimConfig(warmup_steps=10),
        mesh=MeshConfig(data=mesh[0], dict=mesh[1]),
    )


@dataclasses.dataclass
class _Prepared:
    point: dict
    built: object
    compiled: object
    state: object
    batches: list
    devices: list
    compile_s: float
    times: list
    cpu_times: list
    losses: list
    dense_branch: list = dataclasses.field(default_factory=list)
    """Sparse BatchTopK, per timed step: (1.0 if the dense branch ran, fraction of rows taken whole)."""


def prepare(point: dict, cfg: BenchConfig) -> _Prepared:
    """Build and compile one configuration's real train step and run its warm-up steps."""
    data, dict_ = parse_mesh(point["mesh"])
    n_dev = data * dict_
    tcfg = train_config(point["architecture"], point["d_in"], point["n_latents"], point["k"],
                        point["batch"], point["dtype"], point["impl"], (data, dict_), cfg.seed,
                        point.get("topk_method", "auto"))
    validate(tcfg, point["d_in"], n_dev)
    devices = jax.devices()[:n_dev]
    built = build_step(tcfg, point["d_in"], devices)
    state = init_state(built, tcfg, point["d_in"])
    x = synthetic_activations(3 * point["batch"], point["d_in"], cfg.seed)  # 3 distinct batches, cycled
    batches = device_batches(built, x, point["batch"])
    t0 = time.perf_counter()
    compiled = built.step.lower(state, batches[0]).compile()
    prep = _Prepared(point, built, compiled, state, batches, devices, time.perf_counter() - t0, [], [], [])
    run_steps(prep, cfg.warmup, record=False)
    return prep


def run_steps(prep: _Prepared, n: int, record: bool = True) -> None:
    for _ in range(n):
        b = prep.batches[len(prep.losses) % len(prep.batches)]
        t0, c0 = time.perf_counter(), time.process_time()
        prep.state, metrics = prep.compiled(prep.state, b)
        jax.block_until_ready((prep.state, metrics))
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        prep.losses.append(float(metrics["loss"]))
        if record:
            prep.times.append(dt)
            prep.cpu_times.append(cpu)
            if "btk_dense" in metrics:
                prep.dense_branch.append((float(metrics["btk_dense"]), float(metrics["btk_dense_rows"])))


def record(prep: _Prepared, peak: float) -> dict:
    """The JSON record of a timed configuration."""
    point, times = prep.point, prep.times
    n_dev = len(prep.devices)
    med = float(np.median(times))
    b, d, n, k = point["batch"], point["d_in"], point["n_latents"], point["k"]
    model = F.model_flops(point["architecture"], b, d, n)
    executed = F.executed_flops(point["architecture"], prep.built.impl, b, d, n, k)
    dev = prep.devices[0]
    sheet = datasheet_tflops(dev.device_kind, point["dtype"])
    return {
        **point,
        "impl_used": prep.built.impl,
        "n_devices": n_dev,
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "tokens_per_s": b / med,
        "tokens_per_s_min": b / max(times),
        "tokens_per_s_max": b / min(times),
        "step_ms": 1e3 * med,
        # CPU seconds of this process (all its threads) per step: on a shared host less
        # sensitive to other jobs than wall time (forced host devices run as threads here)
        "process_cpu_ms_per_step": 1e3 * float(np.median(prep.cpu_times)),
        "timed_steps": len(times),
        "compile_s": prep.compile_s,
        "model_flops": model,
        "executed_flops": executed,
        "xla_flops_per_device": xla_flops(prep.compiled),
        "achieved_model_tflops": model / med / 1e12,
        "achieved_executed_tflops": executed / med / 1e12,
        "matmul_peak_tflops": peak / 1e12,
        # per-device peak x devices: on forced CPU host devices they share the same cores
        "util_vs_measured_peak": executed / med / (peak * n_dev),
        "util_vs_datasheet": (executed / med / (sheet * 1e12 * n_dev)) if sheet else None,
        "compiled_bytes_per_device": compiled_bytes(prep.compiled),
        "device_peak_bytes": device_peak_bytes(dev),
        "process_peak_rss_mib": process_peak_rss_mib(),
        "loss_first": prep.losses[0],
        "loss_last": prep.losses[-1],
        # sparse BatchTopK: share of timed steps on the dense branch, mean share of rows taken whole
        "btk_dense_fraction": float(np.mean([s[0] for s in prep.dense_branch])) if prep.dense_branch else None,
        "btk_dense_rows_fraction": float(np.mean([s[1] for s in prep.dense_branch])) if prep.dense_branch else None,
        "machine_load_1min": os.getloadavg()[0],
    }


def bench_one(point: dict, cfg: BenchConfig, peak: float) -> dict:
    """Time one configuration; returns the JSON record."""
    prep = prepare(point, cfg)
    run_steps(prep, cfg.repeats)
    return record(prep, peak)


def grid(cfg: BenchConfig) -> list[dict]:
    keys = ("architecture", "d_in", "n_latents", "k", "batch", "dtype", "impl", "topk_method", "mesh")
    points = []
    for values in itertools.product(*(getattr(cfg, key) for key in keys)):
        p = dict(zip(keys, values))
        if p["architecture"] not in ("topk", "batchtopk") and (p["impl"], p["topk_method"]) != (cfg.impl[0],
                                                                                        cfg.topk_method[0]):
            continue  # impl and top-k method only change TopK and BatchTopK; run other architectures once
        if p["impl"] == "dense" and p["topk_method"] != cfg.topk_method[0]:
            continue  # the dense kernels do not use the sparse top-k
        points.append(p)
    return points


def needed_devices(cfg) -> int:
    """Devices the largest mesh of a BenchConfig or PlanConfig needs."""
    return max(a * b for a, b in (parse_mesh(m) for m in cfg.mesh))


def host_devices_env(n: int) -> dict[str, str]:
    """Environment for a fresh Python with n forced CPU host devices (XLA reads the flag at start-up)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _respawn_with_host_devices(cfg: BenchConfig, n: int) -> list[dict]:
    """Re-run in a subprocess with n forced CPU host devices."""
    env = host_devices_env(n)
    code = ("import json,sys; from sae_jax.bench.config import BenchConfig; "
            "from sae_jax.bench.run import run_bench; "
            "c={k:(tuple(v) if isinstance(v,list) else v) for k,v in json.loads(sys.argv[1]).items()}; "
            "run_bench(BenchConfig(**c))")
    subprocess.run([sys.executable, "-c", code, json.dumps(dataclasses.asdict(cfg))], env=env, check=True)
    out = Path(cfg.out)
    return [json.loads(line) for line in out.read_text().splitlines()[-len(grid(cfg)):]]


def run_bench(cfg: BenchConfig) -> list[dict]:
    """Run the grid, append JSON lines to cfg.out, write the Markdown table (and plot)."""
    if cfg.smoke:
        cfg = dataclasses.replace(cfg, **SMOKE)
    for m in cfg.mesh:
        parse_mesh(m)
    need = needed_devices(cfg)
    if need > len(jax.devices()):
        if jax.default_backend() != "cpu":
            raise ConfigError(f"mesh needs {need} devices, this host has {len(jax.devices())}")
        return _respawn_with_host_devices(cfg, need)
    peaks = {dt: matmul_peak(dt, cfg.matmul_n) for dt in cfg.dtype}
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    points = grid(cfg)
    if cfg.rounds > 1:
        # Every configuration stays compiled and in memory; rounds alternate between them so
        # a change of machine load hits all of them alike.
        preps = [prepare(p, cfg) for p in points]
        for _ in range(cfg.rounds):
            for prep in preps:
                run_steps(prep, cfg.repeats)
        records = [record(prep, peaks[prep.point["dtype"]]) for prep in preps]
    else:
        records = [bench_one(p, cfg, peaks[p["dtype"]]) for p in points]
    with out.open("a") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
            p = {key: rec[key] for key in points[0]}
            print(f"{p} -> {rec['tokens_per_s']:,.0f} tokens/s ({rec['step_ms']:.1f} ms/step)", flush=True)
    table = markdown_table(records)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    if cfg.plot:
        plot_results(records, out.with_suffix(".png"))
    return records
