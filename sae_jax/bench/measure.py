"""Timing and memory helpers shared by the bench."""
from __future__ import annotations

import resource
import time

import jax
import jax.numpy as jnp
import numpy as np


def matmul_peak(dtype: str = "float32", n: int = 0, repeats: int = 5) -> float:
    """Achieved FLOP/s of one large n x n x n JAX matmul on the default device (median)."""
    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    a = jnp.ones((n, n), dtype)
    b = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / float(np.median(times))


def process_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def device_peak_bytes(device) -> int | None:
    """Peak bytes in use on an accelerator (None where the backend does not report it, e.g. CPU)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return None if not stats else stats.get("peak_bytes_in_use")


def compiled_bytes(compiled) -> dict[str, int] | None:
    """Per-device argument / output / temporary bytes of a compiled executable."""
    ma = compiled.memory_analysis()
    if ma is None:
        return None
    out = {
        "argument": int(ma.argument_size_in_bytes),
        "output": int(ma.output_size_in_bytes),
        "temp": int(ma.temp_size_in_bytes),
        "alias": int(ma.alias_size_in_bytes),
    }
    # Donated state aliases its output: count it once.
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def xla_flops(compiled) -> float | None:
    """FLOPs XLA's cost model assigns to the executable (per device), if it reports them."""
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(ca, list):
        ca = ca[0] if ca else None
    if not ca or "flops" not in ca:
        return None
    return float(ca["flops"])
