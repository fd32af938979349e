"""Synthetic activations with a known sparse dictionary: x = s @ D + noise.

D has more unit-norm atoms than dimensions; s is sparse and non-negative. An SAE trained on
it should recover the rows of D (tests and the no-download quick start use this).
"""
from __future__ import annotations

import numpy as np

from sae_jax.data.source import ArraySource


def ground_truth_dictionary(n_features: int, d: int, seed: int = 0) -> np.ndarray:
    """[n_features, d] random unit-norm atoms."""
    rng = np.random.default_rng([seed, 1])
    atoms = rng.standard_normal((n_features, d))
    return (atoms / np.linalg.norm(atoms, axis=1, keepdims=True)).astype(np.float32)


def sparse_codes(n_rows: int, n_features: int, k: float, seed: int = 0) -> np.ndarray:
    """[n_rows, n_features] codes: each atom on with probability k/n_features, magnitude in [0.5, 1.5]."""
    rng = np.random.default_rng([seed, 2])
    on = rng.random((n_rows, n_features)) < k / n_features
    return (on * rng.uniform(0.5, 1.5, (n_rows, n_features))).astype(np.float32)


def synthetic_source(n_rows: int, d: int, n_features: int, k: float, noise: float = 0.01,
                     seed: int = 0) -> ArraySource:
    """An ArraySource of x = s @ D + noise; the true dictionary is in ``metadata['dictionary']``."""
    if n_features <= 0 or d <= 0 or n_rows <= 0:
        raise ValueError(f"synthetic data needs positive sizes, got n_rows={n_rows} d={d} n_features={n_features}")
    dictionary = ground_truth_dictionary(n_features, d, seed)
    rng = np.random.default_rng([seed, 3])
    x = np.empty((n_rows, d), np.float32)
    chunk = 16384  # bounded memory for the dense code matrix
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        codes = sparse_codes(stop - start, n_features, k, seed + start)
        x[start:stop] = codes @ dictionary + noise * rng.standard_normal((stop - start, d))
    return ArraySource(x, {"source": "synthetic", "dictionary": dictionary,
                           "n_features": n_features, "k": k, "noise": noise, "seed": seed})
