"""Identifiability: do two runs (or a run and the ground truth) find the same features?

- ``match_directions``: Hungarian matching of two sets of directions (decoder rows, or the
  true dictionary of synthetic data) by |cosine|.
- ``mcc``: mean correlation coefficient (icebeem): |Pearson corr| between two sets of codes,
  Hungarian matching, mean of the matched |corr|. Codes are streamed, so an N x F code
  matrix is never needed at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment


def _unit_rows(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n_directions, d], got shape {a.shape}")
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    # a zero row has no direction: it matches nothing (cosine 0) instead of producing NaN
    return np.divide(a, norms, out=np.zeros_like(a), where=norms > 0)


def _hungarian(score: np.ndarray) -> np.ndarray:
    """assignment[i] = column matched to row i (maximising the total score), -1 if none."""
    rows, cols = linear_sum_assignment(-score)
    assignment = np.full(score.shape[0], -1, dtype=np.int64)
    assignment[rows] = cols
    return assignment


def _matched(score: np.ndarray, assignment: np.ndarray) -> np.ndarray:
    """Matched score for every row of ``score``; unmatched rows (more rows than columns) count 0."""
    out = np.zeros(score.shape[0])
    ok = assignment >= 0
    out[ok] = score[np.nonzero(ok)[0], assignment[ok]]
    return out


def match_directions(A: np.ndarray, B: np.ndarray, threshold: float = 0.9) -> tuple[float, float, np.ndarray]:
    """Match the rows of ``A`` [n_a, d] to rows of ``B`` [n_b, d] one-to-one by |cosine|.

    Pass the reference (e.g. the true dictionary) as ``A``: both numbers are averages over
    the rows of ``A``, and a row of ``A`` left unmatched (only when n_a > n_b) counts as 0.

    Returns ``(mean_abs_cos, share_above_threshold, assignment)`` where ``assignment[i]`` is
    the row of ``B`` matched to row ``i`` of ``A`` (-1 if unmatched).
    """
    a, b = _unit_rows(A, "A"), _unit_rows(B, "B")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"A and B must have the same width, got {a.shape[1]} and {b.shape[1]}")
    cos = np.abs(a @ b.T)
    assignment = _hungarian(cos)
    matched = _matched(cos, assignment)
    return float(matched.mean()), float((matched > threshold).mean()), assignment


@dataclass
class CrossCorrelation:
    """Streaming Pearson correlation between the columns of two code sets.

    Keeps float64 sums (O(k1 * k2) memory), so codes can be fed batch by batch.
    """

    k1: int
    k2: int

    def __post_init__(self):
        self.n = 0
        self.s1 = np.zeros(self.k1)
        self.s2 = np.zeros(self.k2)
        self.ss1 = np.zeros(self.k1)
        self.ss2 = np.zeros(self.k2)
        self.cross = np.zeros((self.k1, self.k2))

    def update(self, z1: np.ndarray, z2: np.ndarray) -> None:
        z1 = np.asarray(z1, dtype=np.float64)
        z2 = np.asarray(z2, dtype=np.float64)
        if z1.ndim != 2 or z2.ndim != 2 or z1.shape[0] != z2.shape[0]:
            raise ValueError(
                f"code batches must be 2-D with the same rows (same tokens), got {z1.shape} and {z2.shape}"
            )
        if z1.shape[1] != self.k1 or z2.shape[1] != self.k2:
            raise ValueError(f"expected widths ({self.k1}, {self.k2}), got ({z1.shape[1]}, {z2.shape[1]})")
        self.n += z1.shape[0]
        self.s1 += z1.sum(0)
        self.s2 += z2.sum(0)
        self.ss1 += (z1 * z1).sum(0)
        self.ss2 += (z2 * z2).sum(0)
        if (z1 != 0).mean() < 0.05 and (z2 != 0).mean() < 0.05:
            # sparse codes: the product costs ~ rows x L0_1 x L0_2 instead of rows x k1 x k2
            prod = (sp.csr_matrix(z1).T @ sp.csr_matrix(z2)).tocoo()
            np.add.at(self.cross, (prod.row, prod.col), prod.data)
        else:
            self.cross += z1.T @ z2

    def corr(self) -> np.ndarray:
        """[k1, k2] Pearson correlations; a constant column correlates 0 with everything."""
        if self.n < 2:
            raise ValueError("need at least 2 rows of codes to compute correlations")
        n = self.n
        cov = self.cross - np.outer(self.s1, self.s2) / n
        v1 = np.maximum(self.ss1 - self.s1**2 / n, 0.0)
        v2 = np.maximum(self.ss2 - self.s2**2 / n, 0.0)
        denom = np.sqrt(np.outer(v1, v2))
        return np.divide(cov, denom, out=np.zeros_like(cov), where=denom > 1e-12 * max(denom.max(), 1.0))


def mcc_from_corr(corr: np.ndarray) -> tuple[float, np.ndarray]:
    """MCC and assignment from a [k1, k2] correlation matrix (averaged over the k1 rows)."""
    cc = np.abs(np.asarray(corr, dtype=np.float64))
    assignment = _hungarian(cc)
    return float(_matched(cc, assignment).mean()), assignment


def mcc(z1: np.ndarray | Iterable[tuple[np.ndarray, np.ndarray]], z2: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Mean correlation coefficient between codes ``z1`` [N, k1] and ``z2`` [N, k2].

    Either two arrays, or one iterable of ``(z1_batch, z2_batch)`` pairs (streaming).
    Returns ``(mcc, assignment)``: ``assignment[i]`` is the column of ``z2`` matched to
    column ``i`` of ``z1`` (-1 if unmatched); MCC averages over the k1 columns of ``z1``.
    """
    acc = None
    batches = [(z1, z2)] if z2 is not None else z1
    for b1, b2 in batches:
        if acc is None:
            acc = CrossCorrelation(np.shape(b1)[1], np.shape(b2)[1])
        acc.update(b1, b2)
    if acc is None:
        raise ValueError("no codes given")
    return mcc_from_corr(acc.corr())
