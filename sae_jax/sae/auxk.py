"""AuxK: dead latents reconstruct what the live ones missed (Gao et al. 2024).

The target is the residual e = x - x_hat with stop-gradient; the auxiliary reconstruction
uses the top-k_aux dead latents' decoder rows *without* b_dec (two public libraries added
b_dec twice here); the loss is normalised by the residual's variance.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from sae_jax import losses
from sae_jax.sae.base import Params, matmul
from sae_jax.topk_select import TopK


def auxk_loss(
    params: Params, pre: jax.Array, x: jax.Array, x_hat: jax.Array, dead_mask: jax.Array,
    k_aux: int, topk: TopK, dtype: str,
) -> jax.Array:
    """Scalar AuxK loss (0 when no latent is dead; the dense work is skipped then)."""
    residual = lax.stop_gradient(x - x_hat)

    def compute(_):
        dead_pre = jnp.where(dead_mask, pre, -jnp.inf)
        vals, _ = topk(dead_pre, k_aux)
        kth = lax.stop_gradient(jnp.min(vals, axis=1, keepdims=True))
        h_aux = jnp.where(dead_mask & (dead_pre >= kth), jax.nn.relu(pre), 0.0)
        return losses.auxk_loss(residual, matmul(h_aux, params["W_dec"], dtype))

    return lax.cond(jnp.any(dead_mask), compute, lambda _: jnp.zeros((), jnp.float32), None)
