"""PCA as a "dictionary": the top-F principal directions, in the SAE parameter layout.

``W_dec = components`` [F, d] (orthonormal rows), ``W_enc = components.T``, ``b_dec = mean``,
``b_enc = 0``: the code is the projection ``(x − mean) @ components.T`` (no activation, so the
exported cfg's architecture is ``linear``), and ``h @ W_dec + b_dec`` is the rank-F
reconstruction. Signs follow scikit-learn's convention (the largest-|·| entry of each
component is positive), so results are deterministic.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from sae_jax.data.source import ActivationSource


def _params_from_cov(mean: np.ndarray, cov: np.ndarray, n_components: int) -> dict[str, np.ndarray]:
    d = cov.shape[0]
    if not 0 < n_components <= d:
        raise ValueError(f"PCA gives at most d={d} directions; n_components={n_components} must be in [1, {d}] "
                         "(use an SAE for an overcomplete dictionary)")
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][:n_components]
    comps = evecs[:, order].T  # [F, d]
    flip = np.sign(comps[np.arange(n_components), np.argmax(np.abs(comps), axis=1)])
    comps = comps * flip[:, None]
    return {
        "W_enc": comps.T.astype(np.float32),
        "b_enc": np.zeros((n_components,), np.float32),
        "W_dec": comps.astype(np.float32),
        "b_dec": mean.astype(np.float32),
        "explained_variance": np.maximum(evals[order], 0.0).astype(np.float32),
    }


def fit_pca(x: np.ndarray, n_components: int) -> dict[str, np.ndarray]:
    """PCA of a [n, d] array; returns the SAE params plus ``explained_variance`` [F]."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"PCA needs a 2-D array with at least 2 rows, got shape {x.shape}")
    mean = x.mean(axis=0)
    xc = x - mean
    return _params_from_cov(mean, xc.T @ xc / (len(x) - 1), n_components)


def fit_pca_source(source: ActivationSource, n_components: int, n_rows: int | None = None,
                   chunk: int = 16384, seed: int = 0) -> dict[str, np.ndarray]:
    """PCA of (a random subset of ``n_rows`` of) a source, streaming float64 moments."""
    total = source.n_rows if n_rows is None else min(n_rows, source.n_rows)
    rows = np.arange(source.n_rows) if total == source.n_rows else np.sort(
        np.random.default_rng(seed).choice(source.n_rows, total, replace=False))
    if total < 2:
        raise ValueError("PCA needs at least 2 rows")
    # Shift by the first chunk's mean so the second moment is not dominated by a large mean.
    shift = np.asarray(source.read(rows[:chunk]), np.float64).mean(axis=0)
    s = np.zeros(source.d_in)
    ss = np.zeros((source.d_in, source.d_in))
    for start in range(0, total, chunk):
        xb = np.asarray(source.read(rows[start:start + chunk]), np.float64) - shift
        s += xb.sum(axis=0)
        ss += xb.T @ xb
    mean_c = s / total
    cov = (ss - total * np.outer(mean_c, mean_c)) / (total - 1)
    return _params_from_cov(shift + mean_c, cov, n_components)


def export_cfg() -> dict[str, Any]:
    return {"architecture": "linear", "normalize_activations": "none"}
