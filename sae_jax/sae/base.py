"""What every SAE architecture shares: parameters, the encoder pre-activation, decoding.

An architecture is a frozen dataclass of hyperparameters with pure methods
``init_params / init_state / encode / decode / loss / export_params``; parameters are a
dict pytree with SAELens names (W_enc [d_in, F], b_enc [F], W_dec [F, d_in], b_dec [d_in]).
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from sae_jax import losses

Params = dict[str, jax.Array]


@flax.struct.dataclass
class LossContext:
    """Per-step inputs of a loss that are not parameters."""

    dead_mask: jax.Array
    """[F] bool: latents that have not fired within the dead window."""
    sparsity_coef: jax.Array
    """Scalar: current L1/L0 coefficient (after warm-up)."""


@flax.struct.dataclass
class LossOutput:
    """What a loss returns besides the scalar."""

    fired: jax.Array
    """[F] bool: latents that fired on this batch."""
    metrics: dict[str, jax.Array]
    """Scalars to log."""
    state: dict[str, jax.Array]
    """Updated non-trainable architecture state."""


def matmul(a: jax.Array, b: jax.Array, dtype: str) -> jax.Array:
    """a @ b with inputs cast to ``dtype`` and float32 accumulation."""
    return jnp.dot(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def pre_activations(params: Params, x: jax.Array, dtype: str = "float32") -> jax.Array:
    """[B, F] encoder pre-activations with the decoder bias subtracted first."""
    return matmul(x - params["b_dec"], params["W_enc"], dtype) + params["b_enc"]


def decode_dense(params: Params, h: jax.Array, dtype: str = "float32") -> jax.Array:
    """[B, d] reconstruction h @ W_dec + b_dec."""
    return matmul(h, params["W_dec"], dtype) + params["b_dec"]


def init_tied_params(key: jax.Array, d_in: int, d_sae: int, b_dec: jax.Array) -> Params:
    """Unit-norm random decoder rows, encoder = decoder transpose, zero b_enc."""
    w_dec = jax.random.normal(key, (d_sae, d_in), jnp.float32)
    w_dec = w_dec / jnp.linalg.norm(w_dec, axis=-1, keepdims=True)
    return {
        "W_enc": w_dec.T,
        "b_enc": jnp.zeros((d_sae,), jnp.float32),
        "W_dec": w_dec,
        "b_dec": jnp.asarray(b_dec, jnp.float32),
    }


def recon_metrics(x: jax.Array, x_hat: jax.Array, shift: jax.Array | None = None) -> dict[str, jax.Array]:
    return {"mse": losses.mse(x, x_hat), "fvu": losses.fvu(x, x_hat, shift),
            "nmse": losses.nmse_vs_zero(x, x_hat)}


def fired(h: jax.Array) -> jax.Array:
    """[F] bool: latents nonzero on any token of the batch."""
    return jnp.any(h != 0, axis=0)


def decoder_norms(params: Params) -> jax.Array:
    return jnp.linalg.norm(params["W_dec"], axis=-1)


def tied_export(params: Params) -> dict[str, Any]:
    return {name: params[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
