"""Gates of a model-diffing study: is an SAE good enough to read, and which latents survive.

SAE validation gates (one pass/fail per criterion): reconstruction (FVU), sparsity (L0 and dead
fraction) and faithfulness (CE-loss recovered when spliced). Identifiability gates per latent:

- variance: the share of a latent's activation variance explained by the text condition (η², the
  between-group sum of squares over the total; scale-free, so latents of different SAEs compare),
  keeping the top fraction (default: the top decile);
- sparsity: rare but strong — fires on at most ``max_frequency`` of held-out probe tokens and its
  mean nonzero activation is at least the ``strength_quantile`` of the alive latents';
- causal: |effect| above a threshold (effects come from ``sae_jax.evals.causal``).

``funnel`` counts the latents left after each gate, in order.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ValidationThresholds:
    max_fvu: float = 0.2
    """Reconstruction: fraction of variance unexplained at most this (explained variance ≥ 0.8)."""
    max_l0: float = 128.0
    """Sparsity: mean active latents per token at most this."""
    max_dead: float = 0.1
    """Sparsity: at most this fraction of latents never fires on the evaluation tokens."""
    min_ce_recovered: float = 0.8
    """Faithfulness: CE-loss recovered when spliced at least this (skipped when not measured)."""


def validation_gates(metrics: Mapping[str, float], th: ValidationThresholds = ValidationThresholds()) -> dict[str, Any]:
    """Pass/fail per criterion for one SAE (``metrics``: fvu, l0, dead_fraction, optional ce_recovered)."""
    missing = [k for k in ("fvu", "l0", "dead_fraction") if k not in metrics]
    if missing:
        raise ValueError(f"validation gates need the metrics {missing}")
    out = {"reconstruction": bool(metrics["fvu"] <= th.max_fvu),
           "sparsity": bool(metrics["l0"] <= th.max_l0 and metrics["dead_fraction"] <= th.max_dead)}
    ce = metrics.get("ce_recovered")
    if ce is not None and np.isfinite(ce):
        out["faithfulness"] = bool(ce >= th.min_ce_recovered)
    out["pass"] = all(out.values())
    return out


def pass_counts(gates: Mapping[str, Mapping[str, bool]]) -> dict[str, int]:
    """Number of SAEs passing each criterion and overall (the study's Runs table)."""
    keys = sorted({k for g in gates.values() for k in g})
    return {k: int(sum(bool(g.get(k, False)) for g in gates.values())) for k in keys} | {"n_saes": len(gates)}


def between_group_variance(codes: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """η² per latent: between-group sum of squares / total sum of squares (0 for constant latents)."""
    X = np.asarray(codes, np.float64)
    g = np.asarray(groups)
    if X.ndim != 2 or g.shape != (len(X),):
        raise ValueError(f"codes must be [rows, latents] with one group per row, got {X.shape} and {g.shape}")
    _, inv = np.unique(g, return_inverse=True)
    if inv.max() < 1:
        raise ValueError("the variance gate needs at least two groups (text conditions)")
    n = np.bincount(inv).astype(np.float64)
    sums = np.zeros((len(n), X.shape[1]))
    np.add.at(sums, inv, X)
    mean = X.mean(0)
    between = (sums**2 / n[:, None]).sum(0) - len(X) * mean**2
    total = (X**2).sum(0) - len(X) * mean**2
    return np.divide(between, total, out=np.zeros_like(total), where=total > 1e-12 * np.maximum(1, (X**2).sum(0)))


def top_fraction(scores: np.ndarray, fraction: float = 0.1, eligible: np.ndarray | None = None) -> np.ndarray:
    """Mask of the top ``fraction`` of eligible entries by score (at least one when any is eligible)."""
    s = np.asarray(scores, np.float64)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ok = np.ones(s.shape, bool) if eligible is None else np.asarray(eligible, bool)
    keep = np.zeros(s.shape, bool)
    idx = np.flatnonzero(ok)
    if idx.size:
        n = max(1, int(round(fraction * idx.size)))
        keep[idx[np.argsort(-s[idx], kind="stable")[:n]]] = True
    return keep


def sparsity_gate(codes: np.ndarray, max_frequency: float = 0.05, strength_quantile: float = 0.5) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Rare but strong latents on held-out probe rows (see the module doc); also their statistics."""
    X = np.asarray(codes)
    fired = X != 0
    freq = fired.mean(0)
    n_fired = fired.sum(0)
    strength = np.divide(np.abs(X).sum(0), n_fired, out=np.zeros(X.shape[1]), where=n_fired > 0)
    alive = n_fired > 0
    cut = np.quantile(strength[alive], strength_quantile) if alive.any() else np.inf
    keep = alive & (freq <= max_frequency) & (strength >= cut)
    return keep, {"frequency": freq, "strength": strength}


def causal_gate(effects: np.ndarray, threshold: float) -> np.ndarray:
    """|effect| strictly above ``threshold`` (NaN effects fail)."""
    e = np.asarray(effects, np.float64)
    return np.nan_to_num(np.abs(e), nan=-np.inf) > threshold


@dataclass
class FunnelStage:
    gate: str
    n_left: int


def funnel(n_latents: int, gates: Sequence[tuple[str, np.ndarray]]) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Latents left after each gate applied in order (masks over all latents); and the final mask."""
    left = np.ones(n_latents, bool)
    rows = [asdict(FunnelStage("all latents", n_latents))]
    for name, mask in gates:
        m = np.asarray(mask, bool)
        if m.shape != (n_latents,):
            raise ValueError(f"gate {name!r} mask has shape {m.shape}, expected ({n_latents},)")
        left &= m
        rows.append(asdict(FunnelStage(name, int(left.sum()))))
    return rows, left
