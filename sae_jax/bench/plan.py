"""Dry-run planner: per-device memory of the real train step for meshes this host lacks.

The step is lowered and compiled with abstract arguments (``jax.ShapeDtypeStruct`` with
shardings) on forced CPU host devices, so nothing of the planned size is allocated; the
compiled executable's ``memory_analysis()`` gives per-device argument/output/temp bytes.
Memory is affine in the dictionary size, so two compiles (F and F/2) give the largest F
that fits a device's memory.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from sae_jax.bench.config import PlanConfig
from sae_jax.bench.peaks import CHIPS


def _compile_bytes(cfg: PlanConfig, mesh: str, n_latents: int) -> dict:
    import jax
    import jax.numpy as jnp

    from sae_jax.bench.measure import compiled_bytes
    from sae_jax.bench.run import parse_mesh, train_config
    from sae_jax.bench.step import build_step
    from sae_jax.config import validate
    from sae_jax.mesh import batch_sharding

    data, dict_ = parse_mesh(mesh)
    tcfg = train_config(cfg.architecture, cfg.d_in, n_latents, cfg.k, cfg.batch, cfg.dtype, cfg.impl,
                        (data, dict_), 0)
    validate(tcfg, cfg.d_in, data * dict_)
    built = build_step(tcfg, cfg.d_in, jax.devices()[: data * dict_])
    batch = jax.ShapeDtypeStruct((cfg.batch, cfg.d_in), jnp.float32,
                                 sharding=batch_sharding(built.pieces.mesh))
    compiled = built.step.lower(built.pieces.abstract, batch).compile()
    mem = compiled_bytes(compiled)
    params = 2 * cfg.d_in * n_latents + n_latents + cfg.d_in
    return {"mesh": mesh, "n_latents": n_latents, "impl_used": built.impl, "bytes_per_device": mem,
            "params_bytes_per_device_ideal": 4 * params / dict_}


def gpu_autotune_bytes_per_latent(batch: int, data: int, dict_: int) -> float:
    """Extra device bytes per latent on a GPU: XLA autotunes the encoder GEMM at compile time with one
    [batch/data, F/dict] float32 output buffer live beside the state. Measured on an H200 (d 576,
    batch 4096): peak − compiled step = 3.4 GiB at F 2^18, 14.7 at 2^20, 30 at 2^21, i.e. up to this
    buffer (none with --xla_gpu_autotune_level=0; docs/performance.md). An upper bound."""
    return 4.0 * batch / data / dict_


def _plan_in_process(cfg: PlanConfig) -> list[dict]:
    from sae_jax.bench.run import parse_mesh

    out = []
    for mesh in cfg.mesh:
        data, dict_ = parse_mesh(mesh)
        full = _compile_bytes(cfg, mesh, cfg.n_latents)
        half = _compile_bytes(cfg, mesh, cfg.n_latents // 2)
        b_full, b_half = full["bytes_per_device"]["total"], half["bytes_per_device"]["total"]
        per_latent = (b_full - b_half) / (cfg.n_latents - cfg.n_latents // 2)
        fixed = b_full - per_latent * cfg.n_latents
        gemm = gpu_autotune_bytes_per_latent(cfg.batch, data, dict_)
        fits = {}
        for key, chip in CHIPS.items():
            budget = cfg.headroom * chip.hbm_gib * 2**30
            slope = per_latent + (gemm if chip.name.startswith("NVIDIA") else 0.0)  # GPUs: autotuning headroom
            fits[key] = int(max((budget - fixed) / slope, 0)) if slope > 0 else None
        out.append({**full, "bytes_per_latent_per_device": per_latent, "fixed_bytes_per_device": fixed,
                    "gpu_peak_bytes_per_device": b_full + gemm * cfg.n_latents,
                    "largest_n_latents_fitting": fits, "config": dataclasses.asdict(cfg)})
    return out


def _format(results: list[dict], cfg: PlanConfig) -> str:
    lines = [f"Plan: {cfg.architecture} d_in={cfg.d_in} F={cfg.n_latents:,} k={cfg.k} batch={cfg.batch} "
             f"{cfg.dtype} (headroom {cfg.headroom:.0%})", ""]
    lines.append("| mesh | impl | GiB/device (args+out+temp−alias) | temp GiB | GiB/device on a GPU (+ GEMM autotuning) "
                 "| largest F per device memory: " + ", ".join(CHIPS[k].name for k in CHIPS) + " |")
    lines.append("|---|---|---|---|---|---|")
    for r in results:
        m = r["bytes_per_device"]
        fits = ", ".join(f"{v / 2**20:,.1f}M" if v else "–" for v in r["largest_n_latents_fitting"].values())
        lines.append(f"| {r['mesh']} | {r['impl_used']} | {m['total'] / 2**30:.2f} | {m['temp'] / 2**30:.2f} "
                     f"| {r['gpu_peak_bytes_per_device'] / 2**30:.2f} | {fits} |")
    lines.append("")
    lines.append("Compiled on CPU; on a GPU, XLA's compile-time GEMM autotuning can add one [batch/data, F/dict] "
                 "float32 buffer (included in the GPU column and the GPU chips' largest F; docs/performance.md).")
    return "\n".join(lines)


def run_plan(cfg: PlanConfig) -> list[dict]:
    """Compile the step for each mesh on forced host devices (subprocess) and report memory."""
    from sae_jax.bench.run import host_devices_env, needed_devices

    env = host_devices_env(needed_devices(cfg))
    code = ("import json,sys; from sae_jax.bench.config import PlanConfig; "
            "from sae_jax.bench.plan import _plan_in_process; "
            "c={k:(tuple(v) if isinstance(v,list) else v) for k,v in json.loads(sys.argv[1]).items()}; "
            "print('PLAN '+json.dumps(_plan_in_process(PlanConfig(**c))))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(dataclasses.asdict(cfg))], env=env,
                          capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("PLAN ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"planner subprocess failed:\n{proc.stderr[-4000:]}")
    results = json.loads(lines[-1][5:])
    print(_format(results, cfg))
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(results, indent=2))
    return results
