"""``sae-jax ssae``: train a sparse shift autoencoder on activation differences and export it.

Data: rows that already are differences (``--kind rows``), two aligned sources
(``--kind paired``: Δz = second − first, e.g. z(s2) − z(s1), or chat − base), consecutive
rows of one source (``--kind sequential``), or built-in synthetic multi-concept shifts.
Sources are ``.npy`` files or activation stores (tensorstore folders).

Export (SAELens folder): with whitening and an affine input path (input_norm none/batch) the
whitening is folded into the weights; with the per-row LayerNorm it cannot be, and
``whitening.safetensors`` is written beside the weights (apply it before the LayerNorm).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
from safetensors.numpy import save_file

from sae_jax.data.shifts import DifferenceSource, multi_concept_shifts
from sae_jax.data.source import ActivationSource, npy_source
from sae_jax.sae.ssae import SSAE
from sae_jax.ssae_train import SSAEState, SSAETrainConfig, train_ssae
from sae_jax.whitening import Whitening, fold_into_sae


@dataclass(frozen=True)
class SSAERunConfig:
    """An SSAE run: data, training, export."""

    run_dir: str = "runs/ssae"
    """Output folder: config.json, metrics.jsonl, export/ (SAELens format)."""
    kind: Literal["synthetic", "rows", "paired", "sequential"] = "synthetic"
    """Where Δz comes from: synthetic shifts, rows that are differences, paired sources, consecutive rows."""
    first: str = ""
    """Path (.npy or activation store) of the rows (rows/sequential) or the 'before' side (paired)."""
    second: str = ""
    """Path of the 'after' side (paired: Δz = second − first)."""
    synthetic_d: int = 64
    """Synthetic data: width."""
    synthetic_concepts: int = 16
    """Synthetic data: number of concepts."""
    synthetic_rows: int = 65536
    """Synthetic data: rows."""
    train: SSAETrainConfig = field(default_factory=lambda: SSAETrainConfig(
        ssae=SSAE(target=0.75, warmup=400, schedule=1000), d_sae=16, steps=4000, batch_size=512))
    """Training (the SSAE, its constraint schedule, optimizers, mesh)."""
    export: bool = True
    """Write the SAELens export at the end."""
    export_linear_as: Literal["linear", "split"] = "linear"
    """Signed code: 'linear' (F latents, arch 'linear') or 'split' (SAELens 'standard', 2F latents)."""


def _open(path: str) -> ActivationSource:
    if not path:
        raise ValueError("this --kind needs --first (and --second for paired): a .npy file or an activation store")
    if path.endswith(".npy"):
        return npy_source(path)
    from sae_jax.data.store import open_store  # tensorstore only when a store is used

    return open_store(path)


def open_differences(cfg: SSAERunConfig) -> ActivationSource:
    if cfg.kind == "synthetic":
        return multi_concept_shifts(cfg.synthetic_rows, cfg.synthetic_d, cfg.synthetic_concepts, seed=cfg.train.data_seed)
    if cfg.kind == "rows":
        return _open(cfg.first)
    if cfg.kind == "paired":
        return DifferenceSource(_open(cfg.first), _open(cfg.second), kind="paired")
    if cfg.kind == "sequential":
        return DifferenceSource(_open(cfg.first), kind="sequential")
    raise ValueError(f"unknown --kind {cfg.kind!r}; use synthetic, rows, paired or sequential")


def split_signed(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A linear (signed) code as a ReLU SAE with 2F latents: h = relu(pre) − relu(−pre).

    Latent i keeps the positive part, latent F + i the negative part with negated encoder and
    decoder, so decode(encode(x)) is unchanged and SAELens' 'standard' architecture loads it.
    """
    return {"W_enc": np.concatenate([params["W_enc"], -params["W_enc"]], axis=1),
            "b_enc": np.concatenate([params["b_enc"], -params["b_enc"]]),
            "W_dec": np.concatenate([params["W_dec"], -params["W_dec"]], axis=0),
            "b_dec": params["b_dec"]}


def export_ssae(path: str | Path, ssae: SSAE, state: SSAEState, whitening: Whitening | None = None,
                metadata: dict[str, Any] | None = None, linear_as: Literal["linear", "split"] = "linear") -> Path:
    """Write ``cfg.json`` + ``sae_weights.safetensors`` (+ ``whitening.safetensors`` if not folded).

    A signed (no-ReLU) code is exported as architecture ``linear`` (F latents), or with
    ``linear_as='split'`` as a SAELens ``standard`` SAE with 2F latents (``split_signed``).
    """
    params = {k: np.asarray(v, np.float32) for k, v in
              jax.device_get(ssae.export_params(state.params, state.arch_state)).items()}
    cfg = ssae.export_cfg()
    folded = whitening is not None and cfg["normalize_activations"] == "none"
    if folded:
        params = fold_into_sae(params, whitening)
    if cfg["architecture"] == "linear" and linear_as == "split":
        params, cfg = split_signed(params), cfg | {"architecture": "standard", "signed_split": True}
    elif linear_as not in ("linear", "split"):
        raise ValueError(f"linear_as must be 'linear' or 'split', got {linear_as!r}")
    d_sae, d_in = params["W_dec"].shape
    full_cfg = {"d_in": int(d_in), "d_sae": int(d_sae), "dtype": "float32", "device": "cpu",
                "apply_b_dec_to_input": True, "reshape_activations": "none"} | cfg | {
        "metadata": {"trained_with": "sae_jax", "model": "ssae", "whitening": (
            "folded" if folded else "whitening.safetensors" if whitening is not None else "none"),
            **(metadata or {})}}
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in params.items()}, str(path / "sae_weights.safetensors"))
    if whitening is not None and not folded:
        save_file({k: np.ascontiguousarray(v) for k, v in whitening.to_arrays().items()},
                  str(path / "whitening.safetensors"))
    (path / "cfg.json").write_text(json.dumps(full_cfg, indent=2, sort_keys=True, default=str))
    return path


def run_ssae(cfg: SSAERunConfig) -> dict[str, float]:
    """Train, write metrics and config, export; returns the last logged metrics."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2, sort_keys=True, default=str))
    source = open_differences(cfg)
    run = train_ssae(cfg.train, source)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for row in run.history:
            f.write(json.dumps(row) + "\n")
    if run.whitening is not None:  # kept with the run, whatever the export does with it
        save_file({k: np.ascontiguousarray(v) for k, v in run.whitening.to_arrays().items()},
                  str(run_dir / "whitening.safetensors"))
    last = run.history[-1]
    print(f"step {int(last['step'])}: recon {last['recon']:.4f}  Σ|h|/(B·F) {last['mean_abs_h']:.4f} "
          f"(level {last['level']:.4f})  multiplier {last['multiplier']:.4f}")
    if cfg.export:
        out = export_ssae(run_dir / "export", cfg.train.ssae, run.state, run.whitening,
                          linear_as=cfg.export_linear_as)
        print(f"exported SSAE (SAELens format): {out}")
    return last
