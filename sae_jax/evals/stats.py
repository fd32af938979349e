"""Per-unit two-sample t-tests between two classes, with multiple-comparison corrections.

Units are neurons (raw activation dimensions) or SAE latents. The tests are computed from
streamed per-class sums (float64), so a large code matrix never sits in memory: Welch's
t-test from the class means, variances and counts (``scipy.stats.ttest_ind_from_stats``).
Corrections: Bonferroni (family-wise) and Benjamini–Hochberg (false discovery rate).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats


class ClassMoments:
    """Streaming per-unit count, sum and sum of squares for each of two classes."""

    def __init__(self, n_units: int):
        self.n = np.zeros(2, dtype=np.int64)
        self.s = np.zeros((2, n_units))
        self.ss = np.zeros((2, n_units))

    def update(self, X: np.ndarray, y: np.ndarray) -> None:
        y = np.asarray(y)
        if not np.isin(y, (0, 1)).all():
            raise ValueError("t-tests compare two classes: labels must be 0 or 1")
        X = np.asarray(X, dtype=np.float64)
        for c in (0, 1):
            sub = X[y == c]
            self.n[c] += sub.shape[0]
            self.s[c] += sub.sum(0)
            self.ss[c] += (sub * sub).sum(0)

    def ttest(self, equal_var: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(t, p) per unit; a unit with zero variance in both classes gets t = 0, p = 1."""
        if (self.n < 2).any():
            raise ValueError(f"each class needs at least 2 examples, got {self.n.tolist()}")
        mean = self.s / self.n[:, None]
        var = np.maximum(self.ss - self.s**2 / self.n[:, None], 0) / (self.n[:, None] - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t, p = stats.ttest_ind_from_stats(mean[1], np.sqrt(var[1]), self.n[1], mean[0], np.sqrt(var[0]),
                                              self.n[0], equal_var=equal_var)
        flat = ~np.isfinite(t)
        return np.where(flat, 0.0, t), np.where(flat, 1.0, p)


def ttests(X: np.ndarray, y: np.ndarray, equal_var: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-column two-sample t-test between rows with y == 1 and y == 0."""
    m = ClassMoments(X.shape[1])
    m.update(X, y)
    return m.ttest(equal_var)


def bonferroni(p: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Rejections controlling the family-wise error rate at ``alpha``."""
    p = np.asarray(p)
    return p <= alpha / p.size


def bh_adjusted(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (via SciPy); a NaN p-value counts as 1 (no evidence)."""
    p = np.nan_to_num(np.asarray(p, dtype=np.float64), nan=1.0)
    return stats.false_discovery_control(p, method="bh") if p.size else p


def benjamini_hochberg(p: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Rejections controlling the false discovery rate at ``alpha`` (BH step-up, via SciPy)."""
    return bh_adjusted(p) <= alpha


@dataclass
class SignificanceCounts:
    n_units: int
    n_uncorrected: int
    n_bonferroni: int
    n_benjamini_hochberg: int
    alpha: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def significance_counts(p: np.ndarray, alpha: float = 0.05) -> SignificanceCounts:
    p = np.asarray(p)
    return SignificanceCounts(int(p.size), int((p <= alpha).sum()), int(bonferroni(p, alpha).sum()),
                              int(benjamini_hochberg(p, alpha).sum()), alpha)


def significant_units(p: np.ndarray, alpha: float = 0.05) -> dict[str, list[int]]:
    """Indices of the units significant at ``alpha``: uncorrected, Bonferroni and Benjamini-Hochberg."""
    p = np.asarray(p)
    return {"uncorrected": np.flatnonzero(p <= alpha).tolist(),
            "bonferroni": np.flatnonzero(bonferroni(p, alpha)).tolist(),
            "benjamini_hochberg": np.flatnonzero(benjamini_hochberg(p, alpha)).tolist()}
