"""Activation differences Δz for shift autoencoders, and synthetic multi-concept shifts.

``DifferenceSource`` turns activation sources into a source of differences (same
``n_rows / d_in / read / metadata`` interface as every source):

- ``paired``: two aligned sources (z(s1), z(s2)) -> Δz = z(s2) − z(s1);
- ``sequential``: one source, Δz_i = z_{i+1} − z_i;
- ``model_delta``: the same tokens through two models (base, chat) -> chat − base
  (the same arithmetic as ``paired``; named separately for provenance).

``multi_concept_shifts`` generates Δz = Σ_j c_j a_j + noise with a known ground truth.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np

from sae_jax.data.source import ActivationSource, ArraySource


class DifferenceSource:
    """Rows of activation differences, read lazily from one or two sources."""

    def __init__(self, first: ActivationSource, second: ActivationSource | None = None,
                 kind: Literal["paired", "sequential", "model_delta"] = "paired"):
        if kind in ("paired", "model_delta"):
            if second is None:
                raise ValueError(f"kind={kind!r} needs two sources (first = before / base, second = after / chat)")
            if first.n_rows != second.n_rows or first.d_in != second.d_in:
                raise ValueError(
                    f"paired sources must be aligned row by row: got ({first.n_rows}, {first.d_in}) and "
                    f"({second.n_rows}, {second.d_in})")
            self.n_rows = first.n_rows
        elif kind == "sequential":
            if second is not None:
                raise ValueError("kind='sequential' takes one source (Δz_i = z_{i+1} - z_i)")
            if first.n_rows < 2:
                raise ValueError("a sequential difference source needs at least 2 rows")
            self.n_rows = first.n_rows - 1
        else:
            raise ValueError(f"unknown difference kind {kind!r}; use paired, sequential or model_delta")
        self.d_in = first.d_in
        self.kind = kind
        self._first, self._second = first, second

    @property
    def metadata(self) -> dict[str, Any]:
        return {"difference": self.kind, "first": dict(self._first.metadata)}

    def read(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise IndexError(f"row indices must be in [0, {self.n_rows}), got [{rows.min()}, {rows.max()}]")
        if self.kind == "sequential":
            return self._first.read(rows + 1) - self._first.read(rows)
        return self._second.read(rows) - self._first.read(rows)


def multi_concept_shifts(n_rows: int, d: int, n_concepts: int, p_active: float = 0.2,
                         noise: float = 0.01, seed: int = 0, signed: bool = True,
                         concept_cos: float = 0.0, directions: np.ndarray | None = None) -> ArraySource:
    """Δz = c @ A + noise with unit concept directions A [n_concepts, d] and sparse c.

    Each concept shifts with probability ``p_active`` (a row with none gets one at random,
    since a pair of identical inputs has no shift to explain); a shift has magnitude
    U[0.5, 1.5] and, if ``signed``, a random sign (the concept turned on or off).
    ``concept_cos`` > 0 makes the directions correlated (pairwise cosine ≈ that value).
    ``directions`` reuses given unit directions (e.g. a held-out set for the same concepts).
    Ground truth in metadata: ``directions`` [n_concepts, d], ``codes`` [n_rows, n_concepts].
    """
    if n_rows <= 0 or d <= 0 or n_concepts <= 0:
        raise ValueError(f"need positive sizes, got n_rows={n_rows}, d={d}, n_concepts={n_concepts}")
    if not 0 < p_active <= 1:
        raise ValueError(f"p_active must be in (0, 1], got {p_active}")
    if not 0 <= concept_cos < 1:
        raise ValueError(f"concept_cos must be in [0, 1), got {concept_cos}")
    rng = np.random.default_rng([seed, 41])
    raw = rng.standard_normal((n_concepts, d))
    if concept_cos > 0:  # a shared component gives every pair the same expected cosine
        shared = rng.standard_normal(d)
        raw = np.sqrt(1 - concept_cos) * raw + np.sqrt(concept_cos) * shared
    if directions is None:
        directions = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    else:
        directions = np.asarray(directions, np.float64)
        if directions.shape != (n_concepts, d):
            raise ValueError(f"directions must have shape (n_concepts, d)=({n_concepts}, {d}), got {directions.shape}")
    on = rng.random((n_rows, n_concepts)) < p_active
    empty = ~on.any(axis=1)
    on[np.nonzero(empty)[0], rng.integers(0, n_concepts, int(empty.sum()))] = True
    mag = rng.uniform(0.5, 1.5, (n_rows, n_concepts))
    if signed:
        mag *= rng.choice([-1.0, 1.0], (n_rows, n_concepts))
    codes = on * mag
    x = codes @ directions + noise * rng.standard_normal((n_rows, d))
    return ArraySource(x.astype(np.float32), {
        "source": "multi_concept_shifts", "directions": directions.astype(np.float32),
        "codes": codes.astype(np.float32), "p_active": p_active, "noise": noise, "seed": seed})
