"""Configs of `sae-jax bench` and of the dry-run memory planner."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchConfig:
    """A grid of train-step configurations to time (every combination is run)."""

    architecture: tuple[str, ...] = ("topk",)
    """Architectures: topk, batchtopk, relu, jumprelu."""
    d_in: tuple[int, ...] = (512,)
    """Input widths."""
    n_latents: tuple[int, ...] = (8192,)
    """Dictionary sizes F."""
    k: tuple[int, ...] = (32,)
    """Active latents per token (topk/batchtopk)."""
    batch: tuple[int, ...] = (4096,)
    """Tokens per step."""
    dtype: tuple[str, ...] = ("float32",)
    """Matmul input dtypes (float32, bfloat16)."""
    impl: tuple[str, ...] = ("sparse", "dense")
    """TopK / BatchTopK kernels: sparse, dense or auto (other architectures are always dense)."""
    topk_method: tuple[str, ...] = ("auto",)
    """Top-k selection of the sparse kernels: auto, lax, chunked, native (sae.topk_method)."""
    mesh: tuple[str, ...] = ("1x1",)
    """Mesh shapes 'DATAxDICT'; on CPU, host devices are forced in a subprocess when needed."""
    warmup: int = 2
    """Untimed steps after compilation."""
    repeats: int = 5
    """Timed steps per configuration and round (median and min-max are reported)."""
    rounds: int = 1
    """Rounds over the whole grid; >1 keeps every configuration compiled and in memory and
    alternates between them, so load changes on a shared machine hit all configurations alike."""
    seed: int = 0
    """Seed of the synthetic activations and the parameters."""
    out: str = "bench/results.jsonl"
    """JSON-lines output (one line per configuration, appended); a .md table is written beside it."""
    plot: bool = False
    """Also draw tokens/s vs n_latents and vs device count (PNG beside the output)."""
    smoke: bool = False
    """Tiny grid that runs in seconds (CI): checks the bench end to end, numbers are meaningless."""
    matmul_n: int = 0
    """Size n of the n x n x n matmul that measures the device's peak; 0 picks per backend."""


@dataclass(frozen=True)
class PlanConfig:
    """Dry run: compile the train step for a config too large for this machine, allocate nothing."""

    architecture: str = "topk"
    """Architecture to plan."""
    d_in: int = 4096
    """Input width."""
    n_latents: int = 2**24
    """Dictionary size F."""
    k: int = 64
    """Active latents per token."""
    batch: int = 8192
    """Global tokens per step."""
    dtype: str = "float32"
    """Matmul input dtype."""
    impl: str = "auto"
    """TopK kernels: sparse, dense or auto (sparse on CPU/GPU, dense on TPU), on any mesh."""
    mesh: tuple[str, ...] = ("8x8", "16x16")
    """Mesh shapes 'DATAxDICT' to plan for (host devices are forced in a subprocess)."""
    headroom: float = 0.9
    """Fraction of device memory the plan may use when solving for the largest dictionary."""
    out: str = ""
    """Optional JSON output path."""
