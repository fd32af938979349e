"""Training losses and batch metrics, exactly as in METRICS.md.

Shapes: x, x_hat [B, d]; h [B, F]. All reductions in float32. These are per-batch values
for training; evaluation accumulates numerators/denominators over a whole set in float64
(``sae_jax.evals``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sq_err(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """[B] squared reconstruction error per token, sum over d."""
    return jnp.sum(jnp.square(x - x_hat), axis=-1)


def mse(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """Scalar: mean over tokens of sum_d (x - x_hat)^2."""
    return jnp.mean(sq_err(x, x_hat))


def total_variance(x: jax.Array, shift: jax.Array | None = None) -> jax.Array:
    """Scalar: mean over tokens of ||x - mean_tokens(x)||^2 (variance around the mean).

    With ``shift`` [d] (a point near the mean, e.g. b_dec): one pass, mean ||x - s||^2 - ||mean(x) - s||^2,
    so that on a mesh the sums travel in one reduction with the loss's instead of a reduction of the
    mean first; the shift keeps the subtraction's cancellation small."""
    if shift is None:
        return jnp.mean(jnp.sum(jnp.square(x - jnp.mean(x, axis=0, keepdims=True)), axis=-1))
    d = x - shift
    return jnp.mean(jnp.sum(jnp.square(d), axis=-1)) - jnp.sum(jnp.square(jnp.mean(d, axis=0)))


def fvu(x: jax.Array, x_hat: jax.Array, shift: jax.Array | None = None) -> jax.Array:
    """Scalar: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (fraction of variance unexplained)."""
    return mse(x, x_hat) / total_variance(x, shift)


def nmse_vs_zero(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """Scalar: sum ||x - x_hat||^2 / sum ||x||^2 (OpenAI's normalised MSE)."""
    return jnp.sum(sq_err(x, x_hat)) / jnp.sum(jnp.square(x))


def l0(h: jax.Array) -> jax.Array:
    """Scalar: mean over tokens of the count of nonzero latents."""
    return jnp.mean(jnp.sum(h != 0, axis=-1).astype(jnp.float32))


def l1(h: jax.Array, decoder_norms: jax.Array | None = None) -> jax.Array:
    """Scalar: mean over tokens of sum_i |h_i| * ||W_dec_i|| (norms default to 1)."""
    a = jnp.abs(h)
    if decoder_norms is not None:
        a = a * decoder_norms
    return jnp.mean(jnp.sum(a, axis=-1))


def auxk_loss(residual: jax.Array, aux_recon: jax.Array) -> jax.Array:
    """Scalar: ||e - e_hat||^2 / ||e - mean(e)||^2 with e = x - x_hat (already stop-gradient)."""
    return mse(residual, aux_recon) / jnp.maximum(total_variance(residual), 1e-12)


def recon_loss(kind: str, x: jax.Array, x_hat: jax.Array, shift: jax.Array | None = None) -> jax.Array:
    """The training reconstruction loss named by the config ('fvu' or 'mse'); ``shift``: see ``total_variance``."""
    if kind == "fvu":
        return fvu(x, x_hat, shift)
    if kind == "mse":
        return mse(x, x_hat)
    raise ValueError(f"unknown reconstruction loss {kind!r}; use 'fvu' or 'mse'")


def dead_fraction(tokens_since_fired: jax.Array, window: int) -> jax.Array:
    """Scalar: share of latents that have not fired within the last ``window`` tokens."""
    return jnp.mean((tokens_since_fired >= window).astype(jnp.float32))
