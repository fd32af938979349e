"""Held-out objective, early stopping across checkpoints, and the near-zero sparsity of codes.

The trainer has no early stopping; an experiment trains in segments (resuming the same run), scores
each segment's export on a validation split with ``l1_objective`` and keeps the best by
``early_stop`` (eval-loss tracking across checkpoints).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sae_jax.export import decoder_directions


def input_scale(x: np.ndarray) -> float:
    """The factor that puts rows at E‖x‖ = √d (the trainer's normalisation, where papers' λ apply)."""
    x = np.asarray(x, np.float64)
    norm = np.linalg.norm(x, axis=1).mean()
    if not norm > 0:
        raise ValueError("rows are all zero: no scale to estimate")
    return float(np.sqrt(x.shape[1]) / norm)


def l1_objective(sae, x: np.ndarray, l1_coef: float, scale: float, batch_size: int = 4096) -> dict[str, float]:
    """The ReLU+L1 training objective on held-out rows, in the usual units: per row
    Σ_d (c·x − c·x̂)² + λ Σ_i |h_i| ‖W_dec,i‖ · c, with c = ``scale`` (inputs at E‖x‖ = √d; a latent's
    contribution h_i·W_dec,i scales by c however an export splits it between h and W_dec)."""
    if l1_coef < 0 or not scale > 0:
        raise ValueError(f"l1_coef must be >= 0 and scale > 0, got {l1_coef}, {scale}")
    norms = np.linalg.norm(decoder_directions(sae), axis=1).astype(np.float64)
    mse = l1 = 0.0
    x = np.asarray(x, np.float32)
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        h = np.asarray(sae.encode(xb), np.float64)
        err = xb.astype(np.float64) - np.asarray(sae.decode(h.astype(np.float32)), np.float64)
        mse += (err * err).sum()
        l1 += (np.abs(h) * norms).sum()
    n = len(x)
    mse, l1 = scale * scale * mse / n, scale * l1 / n
    return {"loss": mse + l1_coef * l1, "mse": mse, "l1": l1}


def early_stop(losses: Sequence[float], patience: int) -> tuple[int, int]:
    """(best index, index where training stops): stop once ``patience`` evaluations in a row fail to
    beat the best so far (or at the end); the best is the first minimum seen up to the stop."""
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    if not len(losses):
        raise ValueError("no evaluations to choose from")
    best, since = 0, 0
    for i in range(1, len(losses)):
        if losses[i] < losses[best]:
            best, since = i, 0
        else:
            since += 1
            if since >= patience:
                return best, i
    return best, len(losses) - 1


def near_zero_fraction(codes: np.ndarray, threshold: float = 1e-3, relative: bool = False) -> float:
    """Share of code entries with |h| <= ``threshold`` (a sparsity measure that also counts tiny,
    not-quite-zero activations). ``relative``: the threshold is a fraction of each latent's largest |h|
    over these rows (scale-free; a latent that never fires counts all its entries)."""
    h = np.abs(np.asarray(codes, np.float64))
    if h.ndim != 2:
        raise ValueError(f"codes must be [rows, latents], got shape {h.shape}")
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    tau = threshold * h.max(0, keepdims=True) if relative else threshold
    return float((h <= tau).mean())
