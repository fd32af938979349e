"""JumpReLU SAE with an L0 penalty (Rajamanoharan et al. 2024, Gemma Scope).

h = z * H(z - theta), theta = exp(log_threshold) per latent. The Heaviside step has no
useful derivative, so theta gets a straight-through pseudo-derivative through a rectangle
kernel of width ``bandwidth``: d/dtheta [z H(z-theta)] ~ -(theta/eps) K((z-theta)/eps) and
d/dtheta H(z-theta) ~ -(1/eps) K((z-theta)/eps); z gets the plain gradient H(z - theta).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from sae_jax import losses
from sae_jax.sae import base


def _rectangle(u: jax.Array) -> jax.Array:
    return (jnp.abs(u) < 0.5).astype(u.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(z: jax.Array, theta: jax.Array, bandwidth: float) -> jax.Array:
    """[B, F] z where z > theta, else 0."""
    return jnp.where(z > theta, z, 0.0)


def _jumprelu_fwd(z, theta, bandwidth):
    return jumprelu(z, theta, bandwidth), (z, theta)


def _jumprelu_bwd(bandwidth, res, g):
    z, theta = res
    dz = jnp.where(z > theta, g, 0.0)
    dtheta = -(theta / bandwidth) * _rectangle((z - theta) / bandwidth) * g
    return dz, jnp.sum(dtheta, axis=0)


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def step(z: jax.Array, theta: jax.Array, bandwidth: float) -> jax.Array:
    """[B, F] Heaviside H(z - theta) as float."""
    return (z > theta).astype(z.dtype)


def _step_fwd(z, theta, bandwidth):
    return step(z, theta, bandwidth), (z, theta)


def _step_bwd(bandwidth, res, g):
    z, theta = res
    dtheta = -(1.0 / bandwidth) * _rectangle((z - theta) / bandwidth) * g
    return jnp.zeros_like(z), jnp.sum(dtheta, axis=0)


step.defvjp(_step_fwd, _step_bwd)


@dataclasses.dataclass(frozen=True)
class JumpReluSAE:
    bandwidth: float = 0.001
    init_threshold: float = 0.001
    recon_loss: str = "fvu"
    dtype: str = "float32"

    def init_params(self, key, d_in: int, d_sae: int, b_dec) -> base.Params:
        params = base.init_tied_params(key, d_in, d_sae, b_dec)
        params["log_threshold"] = jnp.full((d_sae,), jnp.log(self.init_threshold), jnp.float32)
        return params

    def init_state(self, d_sae: int, d_in: int | None = None) -> dict[str, jax.Array]:
        return {}

    def encode(self, params, state, x):
        pre = base.pre_activations(params, x, self.dtype)
        return jumprelu(pre, jnp.exp(params["log_threshold"]), self.bandwidth)

    def decode(self, params, h):
        return base.decode_dense(params, h, self.dtype)

    def loss(self, params, state, x, ctx: base.LossContext):
        pre = base.pre_activations(params, x, self.dtype)
        theta = jnp.exp(params["log_threshold"])
        h = jumprelu(pre, theta, self.bandwidth)
        x_hat = self.decode(params, h)
        l0 = jnp.mean(jnp.sum(step(pre, theta, self.bandwidth), axis=-1))
        loss = losses.recon_loss(self.recon_loss, x, x_hat) + ctx.sparsity_coef * l0
        metrics = base.recon_metrics(x, x_hat) | {"l0": l0}
        return loss, base.LossOutput(fired=base.fired(h), metrics=metrics, state=state)

    def export_params(self, params, state) -> dict[str, Any]:
        return base.tied_export(params) | {"threshold": jnp.exp(params["log_threshold"])}

    def export_cfg(self) -> dict[str, Any]:
        return {"architecture": "jumprelu"}
