"""ZCA whitening fitted on a sample, and folding it into exported SAE weights.

``x_w = (x − μ) @ W`` with ``W = U diag((λ + ε)^−½) Uᵀ`` from the eigendecomposition of
the sample covariance (symmetric, so the whitened data stay as close as possible to the
original axes). ``undo``: ``x = x_w @ W⁻¹ + μ`` with ``W⁻¹ = U diag((λ + ε)^½) Uᵀ``.

Folding (``fold_into_sae``): an SAE trained on whitened inputs with an affine input path,
``pre = (x_w − b_dec) @ W_enc + b_enc`` and ``x̂_w = h @ W_dec + b_dec``, is exactly the SAE
on raw inputs with

    W_enc' = W @ W_enc,   W_dec' = W_dec @ W⁻¹,   b_dec' = μ + b_dec @ W⁻¹,   b_enc' = b_enc

(its reconstruction is returned in raw space). Nothing needs storing beside it. When a
non-linear step sits between whitening and the encoder (e.g. a per-row LayerNorm), nothing
can be folded: store ``mean`` and ``matrix`` beside the weights (``to_arrays``) and apply
them before the SAE's own normalisation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Whitening:
    mean: np.ndarray
    """[d] sample mean μ."""
    matrix: np.ndarray
    """[d, d] symmetric ZCA matrix W."""
    inverse: np.ndarray
    """[d, d] W⁻¹ (the colouring matrix)."""
    eps: float
    """Eigenvalue floor added before the inverse square root."""

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.mean) @ self.matrix).astype(np.float32)

    def undo(self, x_w: np.ndarray) -> np.ndarray:
        return (np.asarray(x_w, np.float64) @ self.inverse + self.mean).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """What to store beside an SAE when the whitening cannot be folded."""
        return {"whitening_mean": self.mean.astype(np.float32), "whitening_matrix": self.matrix.astype(np.float32),
                "whitening_inverse": self.inverse.astype(np.float32),
                "whitening_eps": np.asarray([self.eps], np.float32)}

    @staticmethod
    def array_shapes(d: int) -> dict[str, tuple[int, ...]]:
        """The shapes of ``to_arrays()`` for a d-dimensional whitening (abstract train states)."""
        return {"whitening_mean": (d,), "whitening_matrix": (d, d), "whitening_inverse": (d, d), "whitening_eps": (1,)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "Whitening":
        return cls(mean=np.asarray(arrays["whitening_mean"], np.float64),
                   matrix=np.asarray(arrays["whitening_matrix"], np.float64),
                   inverse=np.asarray(arrays["whitening_inverse"], np.float64),
                   eps=float(np.asarray(arrays["whitening_eps"]).reshape(-1)[0]))


def fit_zca(sample: np.ndarray, eps: float = 1e-5) -> Whitening:
    """ZCA whitening from a [n, d] sample (covariance with the n−1 normaliser, as np.cov)."""
    x = np.asarray(sample, np.float64)
    if x.ndim != 2:
        raise ValueError(f"whitening sample must be 2-D [n, d], got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError("whitening needs at least 2 sample rows")
    if eps <= 0:
        raise ValueError(f"eps must be > 0 (it keeps near-zero eigenvalues invertible), got {eps}")
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False)
    evals, evecs = np.linalg.eigh(np.atleast_2d(cov))
    evals = np.maximum(evals, 0.0)  # round-off can make tiny eigenvalues negative
    matrix = (evecs / np.sqrt(evals + eps)) @ evecs.T
    inverse = (evecs * np.sqrt(evals + eps)) @ evecs.T
    return Whitening(mean=mean, matrix=matrix, inverse=inverse, eps=float(eps))


def fold_into_sae(params: dict[str, np.ndarray], whitening: Whitening) -> dict[str, np.ndarray]:
    """SAELens params acting on raw inputs from params trained on whitened inputs."""
    w, w_inv = whitening.matrix, whitening.inverse
    out = {k: np.asarray(v, np.float32) for k, v in params.items()}
    w_enc = np.asarray(params["W_enc"], np.float64)
    w_dec = np.asarray(params["W_dec"], np.float64)
    b_dec = np.asarray(params["b_dec"], np.float64)
    if w_enc.shape[0] != w.shape[0]:
        raise ValueError(f"W_enc has d_in={w_enc.shape[0]} but the whitening is {w.shape[0]}-dimensional")
    out["W_enc"] = (w @ w_enc).astype(np.float32)
    out["W_dec"] = (w_dec @ w_inv).astype(np.float32)
    out["b_dec"] = (whitening.mean + b_dec @ w_inv).astype(np.float32)
    return out
