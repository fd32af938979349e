"""Geometric median by Weiszfeld's algorithm (the b_dec initialisation)."""
from __future__ import annotations

import numpy as np


def geometric_median(points: np.ndarray, max_iter: int = 200, tol: float = 1e-7) -> np.ndarray:
    """The point minimising the sum of Euclidean distances to ``points`` [n, d] (float64 math)."""
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"geometric_median needs a non-empty [n, d] array, got shape {x.shape}")
    y = x.mean(axis=0)
    for _ in range(max_iter):
        dist = np.linalg.norm(x - y, axis=1)
        # A point that coincides with the estimate gets a tiny distance instead of a division by zero.
        w = 1.0 / np.maximum(dist, 1e-12)
        y_new = (w[:, None] * x).sum(axis=0) / w.sum()
        if np.linalg.norm(y_new - y) <= tol * max(1.0, np.linalg.norm(y)):
            return y_new
        y = y_new
    return y
