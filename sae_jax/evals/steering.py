"""Steering effects and concept recovery of shift codes against concept labels.

- ``steering_effect``: the per-text change of a score (e.g. he→she next-token log-odds) when a
  direction is added, against the change from a control direction of the same norm: means with
  percentile bootstrap CIs over texts (paired for the difference).
- ``concept_recovery``: MCC of codes against (multi-hot) concept labels (Pearson, Hungarian
  matching, ``identifiability.mcc``) with the RDC of every matched pair next to it.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import bootstrap

from sae_jax.evals.dependence import rdc
from sae_jax.evals.identifiability import CrossCorrelation, mcc_from_corr


def mean_ci(values: np.ndarray, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean of ``values`` with a percentile bootstrap CI (resampling the values)."""
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or len(v) < 2:
        raise ValueError(f"mean_ci needs a 1-D array of at least 2 values, got shape {v.shape}")
    if np.ptp(v) == 0:
        return {"mean": float(v[0]), "lo": float(v[0]), "hi": float(v[0]), "n": len(v)}
    ci = bootstrap((v,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                   random_state=np.random.default_rng(seed)).confidence_interval
    return {"mean": float(v.mean()), "lo": float(ci.low), "hi": float(ci.high), "n": len(v)}


def steering_effect(steered: np.ndarray, control: np.ndarray, clean: np.ndarray, n_resamples: int = 2000,
                    confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Scores per text with the direction added (``steered``), with the control direction added
    (``control``) and with nothing added (``clean``). Returns the effect (steered − clean), the
    control's effect (control − clean) and their paired difference, each as mean and CI, plus
    ``passes``: the effect's CI lies above 0 (the score moves toward the target) and so does the
    difference's (more than the control)."""
    s, c, z = (np.asarray(a, np.float64) for a in (steered, control, clean))
    if not s.shape == c.shape == z.shape or s.ndim != 1:
        raise ValueError(f"steered, control and clean must be 1-D scores of the same texts, got {s.shape}, {c.shape}, {z.shape}")
    eff = mean_ci(s - z, n_resamples, confidence, seed)
    ctl = mean_ci(c - z, n_resamples, confidence, seed)
    diff = mean_ci(s - c, n_resamples, confidence, seed)
    return {"effect": eff, "control_effect": ctl, "effect_minus_control": diff,
            "passes": bool(eff["lo"] > 0 and diff["lo"] > 0)}


def concept_recovery(labels: np.ndarray, codes: np.ndarray, concepts: list[str], rdc_k: int = 10) -> dict[str, Any]:
    """MCC of ``codes`` [N, F] against ``labels`` [N, C] (one column per concept), the matched latent
    of each concept, its signed Pearson r and the RDC of the pair."""
    labels, codes = np.asarray(labels, np.float64), np.asarray(codes, np.float64)
    if labels.shape[0] != codes.shape[0] or labels.shape[1] != len(concepts):
        raise ValueError(f"labels {labels.shape} / codes {codes.shape} / {len(concepts)} concepts do not match")
    acc = CrossCorrelation(labels.shape[1], codes.shape[1])
    acc.update(labels, codes)
    corr = acc.corr()
    value, assignment = mcc_from_corr(corr)
    per = {}
    for i, c in enumerate(concepts):
        j = int(assignment[i])
        per[c] = {"latent": j, "r": float(corr[i, j]) if j >= 0 else 0.0,
                  "rdc": rdc(labels[:, i], codes[:, j], k=rdc_k) if j >= 0 else 0.0,
                  "best_abs_r": float(np.abs(corr[i]).max())}
    return {"mcc": value, "rdc_matched": float(np.mean([p["rdc"] for p in per.values()])), "per_concept": per}
