"""Per-token LayerNorm of SAE inputs, with SAELens' ``normalize_activations='layer_norm'`` semantics.

In: ``x_n = (x − μ) / (σ + eps)`` with μ the row mean and σ the row's *unbiased* standard
deviation (torch's default ``std``); out: ``x̂ = x̂_n σ + μ``. Matching SAELens exactly means
an exported SAE trained with it behaves the same when loaded there. Per-row, so it cannot be
folded into weights: the exported cfg names it and the loader applies it.
(The lead's expected-norm input scale is linear and is folded at export: ``sae_jax.export``.)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

EPS = 1e-5


def _xp(x):
    return jnp if isinstance(x, jax.Array) else np


def layer_norm_in(x, eps: float = EPS):
    """(x_n, μ [.., 1], σ [.., 1]) for a JAX or NumPy array of rows."""
    xp = _xp(x)
    if x.shape[-1] < 2:
        raise ValueError(f"per-token LayerNorm needs at least 2 features per row, got {x.shape[-1]}")
    mu = xp.mean(x, axis=-1, keepdims=True)
    std = xp.std(x, axis=-1, ddof=1, keepdims=True)
    return (x - mu) / (std + eps), mu, std


def layer_norm_out(x_hat_n, mu, std):
    """Back to the input space (SAELens' ``run_time_activation_ln_out``)."""
    return x_hat_n * std + mu
