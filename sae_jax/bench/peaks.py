"""Datasheet peaks (dense, no structured sparsity) and memory of common accelerators."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    bf16_tflops: float
    f32_tflops: float
    """float32 matmuls at JAX's default precision: TF32 on NVIDIA Ampere+, one bf16 pass on TPU."""
    hbm_gib: float


# Dense (no 2:4 sparsity) per-chip peaks from the vendor datasheets: NVIDIA H100/H200 SXM,
# A100 SXM; Google Cloud TPU v4/v5e/v5p/v6e system-architecture pages.
CHIPS: dict[str, Chip] = {
    "h100": Chip("NVIDIA H100 SXM 80GB", 989.0, 494.0, 80.0),
    "h200": Chip("NVIDIA H200 SXM 141GB", 989.0, 494.0, 141.0),
    "a100": Chip("NVIDIA A100 SXM 80GB", 312.0, 156.0, 80.0),
    "tpu_v4": Chip("TPU v4", 275.0, 275.0, 32.0),
    "tpu_v5e": Chip("TPU v5e", 197.0, 197.0, 16.0),
    "tpu_v5p": Chip("TPU v5p", 459.0, 459.0, 95.0),
    "tpu_v6e": Chip("TPU v6e (Trillium)", 918.0, 918.0, 32.0),
}


def chip_for(device_kind: str) -> Chip | None:
    """The datasheet entry for a jax Device.device_kind string, None when unknown (e.g. CPU)."""
    kind = device_kind.lower()
    table = [("h200", "h200"), ("h100", "h100"), ("a100", "a100"), ("v6 lite", "tpu_v6e"),
             ("v6e", "tpu_v6e"), ("v5 lite", "tpu_v5e"), ("v5e", "tpu_v5e"), ("v5p", "tpu_v5p"),
             ("tpu v5", "tpu_v5p"), ("tpu v4", "tpu_v4")]
    for needle, key in table:
        if needle in kind:
            return CHIPS[key]
    return None


def datasheet_tflops(device_kind: str, dtype: str) -> float | None:
    chip = chip_for(device_kind)
    if chip is None:
        return None
    return chip.bf16_tflops if dtype == "bfloat16" else chip.f32_tflops
