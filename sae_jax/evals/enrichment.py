"""Are chosen latents (e.g. the ones fine-tuning moved most) enriched for a text slice?

Per latent, the share of its top-activating contexts that come from texts with the slice's
label; the chosen latents' mean share against randomly drawn latents' mean share, with a
bootstrap CI of the difference (latents resampled within each group) and a one-sided
permutation p-value (group labels shuffled over the pooled latents).

``base_rate_enrichment``: the chosen latents' mean share over the share of the slice in the
corpus itself (1 = no enrichment), with a bootstrap CI over latents.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


def slice_shares(top_labels: Sequence[Sequence[str]], label: str) -> np.ndarray:
    """Per latent, the share of its top contexts labelled ``label`` (NaN for a latent with no context)."""
    return np.array([np.mean([lab == label for lab in labs]) if len(labs) else np.nan for labs in top_labels])


@dataclass
class Enrichment:
    n_chosen: int
    n_random: int
    mean_chosen: float
    """Mean share of the chosen latents' top contexts from the slice."""
    mean_random: float
    difference: float
    ci_low: float
    """Bootstrap percentile CI of the difference (level ``ci``)."""
    ci_high: float
    ci: float
    ratio: float
    """mean_chosen / mean_random (inf when the random share is 0)."""
    p_permutation: float
    """One-sided: P(difference ≥ observed) with the group labels shuffled."""

    def to_dict(self):
        return asdict(self)


def enrichment(chosen: np.ndarray, random: np.ndarray, n_boot: int = 5000, n_perm: int = 5000, ci: float = 0.95,
               seed: int = 0) -> Enrichment:
    """Compare the per-latent shares of chosen latents with those of random latents (NaNs dropped)."""
    a = np.asarray(chosen, np.float64)
    b = np.asarray(random, np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) == 0 or len(b) == 0:
        raise ValueError("both groups need at least one latent with top contexts")
    rng = np.random.default_rng(seed)
    diff = a.mean() - b.mean()
    boots = rng.choice(a, (n_boot, len(a))).mean(1) - rng.choice(b, (n_boot, len(b))).mean(1)
    lo, hi = np.quantile(boots, [(1 - ci) / 2, (1 + ci) / 2])
    pooled = np.concatenate([a, b])
    perm = np.array([(lambda p: p[:len(a)].mean() - p[len(a):].mean())(rng.permutation(pooled)) for _ in range(n_perm)])
    p = (1 + np.sum(perm >= diff - 1e-12)) / (1 + n_perm)
    ratio = a.mean() / b.mean() if b.mean() > 0 else float("inf")
    return Enrichment(len(a), len(b), float(a.mean()), float(b.mean()), float(diff), float(lo), float(hi), ci,
                      float(ratio), float(p))


@dataclass
class BaseRateEnrichment:
    n_latents: int
    mean_share: float
    base_rate: float
    ratio: float
    """mean_share / base_rate."""
    ci_low: float
    ci_high: float
    ci: float

    def to_dict(self):
        return asdict(self)


def base_rate_enrichment(shares: np.ndarray, base_rate: float, n_boot: int = 5000, ci: float = 0.95,
                         seed: int = 0) -> BaseRateEnrichment:
    """Mean per-latent share of top contexts from the slice / the slice's share of the corpus (NaNs dropped)."""
    a = np.asarray(shares, np.float64)
    a = a[np.isfinite(a)]
    if not 0 < base_rate <= 1:
        raise ValueError(f"base_rate must be in (0, 1], got {base_rate}")
    if len(a) == 0:
        raise ValueError("no latent with top contexts to score")
    boots = np.random.default_rng(seed).choice(a, (n_boot, len(a))).mean(1) / base_rate
    lo, hi = np.quantile(boots, [(1 - ci) / 2, (1 + ci) / 2])
    return BaseRateEnrichment(len(a), float(a.mean()), float(base_rate), float(a.mean() / base_rate),
                              float(lo), float(hi), ci)
