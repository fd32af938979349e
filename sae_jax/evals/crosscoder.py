"""Reading a crosscoder: which latents belong to the base model, the tuned model, or both.

Per latent, the relative decoder norm r = ‖d_tuned‖ / (‖d_base‖ + ‖d_tuned‖): near 0 the latent
only reconstructs the base model (base-only), near 1 only the tuned model (tuned-only), in between
both (shared; their two decoder halves' cosine says whether the direction changed).

The crosscoder trains with one input scale on both halves, so if the tuned model's activations are
larger (common after chat tuning) a latent the two models share reconstructs a larger tuned half and r
drifts above 0.5. Passing ``model_norms`` (each model's mean activation norm, ``activation_norms``)
measures each half in units of its own model's activations, as per-model normalisation does
(Lindsey et al. 2024 scale each model's activations to one norm).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BASE_ONLY, TUNED_ONLY, SHARED = "base_only", "tuned_only", "shared"


def split_decoder(W_dec: np.ndarray, d_model: int) -> tuple[np.ndarray, np.ndarray]:
    """[F, 2·d_model] decoder rows -> (base half, tuned half)."""
    W = np.asarray(W_dec, np.float64)
    if W.ndim != 2 or W.shape[1] != 2 * d_model:
        raise ValueError(f"a crosscoder decoder over [base | tuned] rows of width {2 * d_model} is [F, {2 * d_model}], "
                         f"got {W.shape}")
    return W[:, :d_model], W[:, d_model:]


@dataclass
class CrosscoderLatents:
    relative_norm: np.ndarray
    classes: np.ndarray
    cosine: np.ndarray
    """cos(d_base, d_tuned) per latent (NaN where a half is zero)."""

    def counts(self) -> dict[str, int]:
        return {c: int((self.classes == c).sum()) for c in (BASE_ONLY, SHARED, TUNED_ONLY)}


def activation_norms(rows: np.ndarray, d_model: int) -> tuple[float, float]:
    """Mean ‖x_base‖ and mean ‖x_tuned‖ over [base | tuned] rows (for ``model_norms``)."""
    b, t = split_decoder(rows, d_model)
    return float(np.linalg.norm(b, axis=1).mean()), float(np.linalg.norm(t, axis=1).mean())


def classify_crosscoder_latents(W_dec: np.ndarray, d_model: int, low: float = 0.1, high: float = 0.9,
                                model_norms: tuple[float, float] | None = None) -> CrosscoderLatents:
    """Base-only (r < low), tuned-only (r > high) or shared, from the decoder halves (each divided by
    its model's mean activation norm when ``model_norms`` = (base, tuned) is given)."""
    if not 0 <= low < high <= 1:
        raise ValueError(f"need 0 <= low < high <= 1, got low={low} high={high}")
    b, t = split_decoder(W_dec, d_model)
    if model_norms is not None:
        nb_model, nt_model = (float(v) for v in model_norms)
        if not (np.isfinite([nb_model, nt_model]).all() and nb_model > 0 and nt_model > 0):
            raise ValueError(f"model_norms must be two positive mean activation norms (base, tuned), got "
                             f"{model_norms}; compute them with activation_norms(rows, d_model)")
        b, t = b / nb_model, t / nt_model
    nb, nt = np.linalg.norm(b, axis=1), np.linalg.norm(t, axis=1)
    total = nb + nt
    r = np.divide(nt, total, out=np.full_like(total, 0.5), where=total > 0)
    classes = np.full(r.shape, SHARED, dtype=object)
    classes[r < low] = BASE_ONLY
    classes[r > high] = TUNED_ONLY
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (b * t).sum(1) / (nb * nt)
    return CrosscoderLatents(r, classes, np.where((nb > 0) & (nt > 0), cos, np.nan))
