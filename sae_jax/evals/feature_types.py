"""Feature types of a base / tuned / delta SAE triple (model diffing).

Per base-SAE latent, its codes on the base model's and the tuned model's activations of the same
tokens give activation statistics and Cohen's d (tuned − base) with a paired bootstrap CI (rows
resampled jointly, since row i of both sets is the same token). Types:

- A: present in base, suppressed after tuning (d ≤ −t and the CI below 0);
- B: present in base, amplified after tuning (d ≥ +t and the CI above 0);
- C: a delta-SAE latent (SAE on tuned − base) whose decoder direction has no counterpart
  (|cos| ≥ ``cos_threshold``) among the base- or tuned-SAE decoder rows.

Each base latent is also matched to its closest tuned-SAE latent by decoder direction (|cos|).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sae_jax.evals.shift import max_abs_cosine

TYPE_A, TYPE_B, NONE = "A", "B", "-"


def _unit(W: np.ndarray) -> np.ndarray:
    W = np.asarray(W, np.float64)
    return W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)


def _d_from_sums(n_b, s_b, ss_b, n_t, s_t, ss_t):
    """Cohen's d (t − b, pooled SD) from per-group sums and sums of squares (any leading shape)."""
    dev = np.maximum(ss_b - s_b**2 / n_b, 0) + np.maximum(ss_t - s_t**2 / n_t, 0)
    pooled = np.sqrt(dev / (n_b + n_t - 2))
    diff = s_t / n_t - s_b / n_b
    return np.divide(diff, pooled, out=np.zeros_like(diff), where=pooled > 0)


def cohens_d_ci(base: np.ndarray, tuned: np.ndarray, n_boot: int = 1000, confidence: float = 0.95,
                seed: int = 0, paired: bool | None = None, chunk: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cohen's d (tuned − base) per column with a percentile bootstrap CI.

    ``paired`` (default: when both sets have the same rows count) resamples row indices jointly;
    otherwise rows are resampled within each set. Resamples are multinomial row weights, so each
    bootstrap batch is a matrix product (fast for thousands of latents).
    """
    b, t = np.asarray(base, np.float64), np.asarray(tuned, np.float64)
    if b.ndim != 2 or t.ndim != 2 or b.shape[1] != t.shape[1]:
        raise ValueError(f"base and tuned must be [rows, latents] with the same latents, got {b.shape} and {t.shape}")
    if len(b) < 2 or len(t) < 2:
        raise ValueError("Cohen's d needs at least 2 rows per set")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    paired = len(b) == len(t) if paired is None else paired
    if paired and len(b) != len(t):
        raise ValueError(f"paired bootstrap needs row-aligned sets, got {len(b)} and {len(t)} rows")
    nb, nt = len(b), len(t)
    d = _d_from_sums(nb, b.sum(0), (b * b).sum(0), nt, t.sum(0), (t * t).sum(0))
    rng = np.random.default_rng(seed)
    b2, t2 = b * b, t * t
    boots = []
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        wb = rng.multinomial(nb, np.full(nb, 1 / nb), size=m).astype(np.float64)
        wt = wb if paired else rng.multinomial(nt, np.full(nt, 1 / nt), size=m).astype(np.float64)
        boots.append(_d_from_sums(nb, wb @ b, wb @ b2, nt, wt @ t, wt @ t2))
    boots = np.concatenate(boots)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha], axis=0)
    return d, lo, hi


@dataclass
class FeatureTypes:
    d: np.ndarray
    d_low: np.ndarray
    d_high: np.ndarray
    frequency_base: np.ndarray
    frequency_tuned: np.ndarray
    mean_base: np.ndarray
    mean_tuned: np.ndarray
    types: np.ndarray
    """Per base-SAE latent: 'A', 'B' or '-'."""
    match_tuned: np.ndarray
    """Per base-SAE latent: index of the tuned-SAE latent with the closest decoder direction."""
    match_cos: np.ndarray
    delta_only: np.ndarray = field(default=None)
    """Per delta-SAE latent: type C (no base/tuned counterpart)."""
    delta_max_cos: np.ndarray = field(default=None)

    def counts(self) -> dict[str, int]:
        out = {"A": int((self.types == TYPE_A).sum()), "B": int((self.types == TYPE_B).sum()),
               "n_base_latents": int(self.types.size)}
        if self.delta_only is not None:
            out |= {"C": int(self.delta_only.sum()), "n_delta_latents": int(self.delta_only.size)}
        return out

    def summary(self) -> dict[str, Any]:
        return {"counts": self.counts(), "median_match_cos": float(np.median(self.match_cos))}


def best_match(W_a: np.ndarray, W_b: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For each row of W_a, the row of W_b with the largest |cosine|, and that |cosine|."""
    a, b = _unit(W_a), _unit(W_b)
    idx, cos = [], []
    for i in range(0, len(a), chunk):
        c = np.abs(a[i:i + chunk] @ b.T)
        j = c.argmax(1)
        idx.append(j)
        cos.append(c[np.arange(len(j)), j])
    return np.concatenate(idx), np.concatenate(cos)


def feature_types(codes_base: np.ndarray, codes_tuned: np.ndarray, W_base: np.ndarray, W_tuned: np.ndarray,
                  W_delta: np.ndarray | None = None, threshold: float = 0.5, cos_threshold: float = 0.7,
                  min_frequency: float = 1e-3, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> FeatureTypes:
    """Types A/B of the base SAE's latents and type C of the delta SAE's (see the module doc).

    ``codes_base``/``codes_tuned``: the base SAE's codes of the base / tuned model's activations of
    the same tokens, [rows, F]. ``W_*``: decoder rows [F, d] of the three SAEs.
    """
    cb, ct = np.asarray(codes_base), np.asarray(codes_tuned)
    if cb.shape != ct.shape:
        raise ValueError(f"codes of base and tuned activations must be row-aligned, got {cb.shape} and {ct.shape}")
    if np.shape(W_base)[0] != cb.shape[1]:
        raise ValueError(f"W_base has {np.shape(W_base)[0]} rows but the codes have {cb.shape[1]} latents")
    if np.shape(W_base)[1] != np.shape(W_tuned)[1]:
        raise ValueError(f"base and tuned decoders have different widths {np.shape(W_base)[1]} and {np.shape(W_tuned)[1]}")
    d, lo, hi = cohens_d_ci(cb, ct, n_boot=n_boot, confidence=confidence, seed=seed, paired=True)
    fb, ft = (cb != 0).mean(0), (ct != 0).mean(0)
    present = fb >= min_frequency
    types = np.full(d.shape, NONE, dtype=object)
    types[present & (d <= -threshold) & (hi < 0)] = TYPE_A
    types[present & (d >= threshold) & (lo > 0)] = TYPE_B
    match, mcos = best_match(W_base, W_tuned)
    out = FeatureTypes(d, lo, hi, fb, ft, cb.mean(0), ct.mean(0), types, match, mcos)
    if W_delta is not None:
        if np.shape(W_delta)[1] != np.shape(W_base)[1]:
            raise ValueError(f"the delta SAE's width {np.shape(W_delta)[1]} differs from the base SAE's {np.shape(W_base)[1]}")
        mx = np.maximum(max_abs_cosine(W_delta, W_base), max_abs_cosine(W_delta, W_tuned))
        out.delta_only, out.delta_max_cos = mx < cos_threshold, mx
    return out
