"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated SAEs").

Which latents fire and how strongly are decided by two paths that share the encoder
directions (the tied-weights trick: W_mag = W_gate * exp(r_mag) column by column):

    π_gate = (x − b_dec) W_enc + b_gate          f = 1[π_gate > 0] · ReLU(π_mag)
    π_mag  = (x − b_dec) (W_enc · e^{r_mag}) + b_mag     x̂ = f W_dec + b_dec

The step function passes no gradient, so the gate learns only from the L1 penalty on
ReLU(π_gate) and the auxiliary loss: reconstruct x from ReLU(π_gate) through a frozen
(stop-gradient) copy of the decoder, so the gate path is pushed to carry magnitude
information without the decoder bending to it. Parameter names are SAELens' (no b_enc).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from sae_jax import losses
from sae_jax.sae import base

EXPORTED = ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec")


@dataclasses.dataclass(frozen=True)
class GatedSAE:
    recon_loss: str = "fvu"
    dtype: str = "float32"
    decoder_unit_norm: bool = True

    def init_params(self, key, d_in: int, d_sae: int, b_dec) -> base.Params:
        params = base.init_tied_params(key, d_in, d_sae, b_dec)
        del params["b_enc"]
        zeros = jnp.zeros((d_sae,), jnp.float32)
        return params | {"b_gate": zeros, "r_mag": zeros, "b_mag": zeros}

    def init_state(self, d_sae: int, d_in: int | None = None) -> dict[str, jax.Array]:
        return {}

    def paths(self, params, x):
        """([B, F] π_gate, [B, F] π_mag)."""
        centred = x - params["b_dec"]
        pi_gate = base.matmul(centred, params["W_enc"], self.dtype) + params["b_gate"]
        w_mag = params["W_enc"] * jnp.exp(params["r_mag"])
        return pi_gate, base.matmul(centred, w_mag, self.dtype) + params["b_mag"]

    def encode(self, params, state, x):
        pi_gate, pi_mag = self.paths(params, x)
        return jnp.where(pi_gate > 0, jax.nn.relu(pi_mag), 0.0)

    def decode(self, params, h):
        return base.decode_dense(params, h, self.dtype)

    def loss(self, params, state, x, ctx: base.LossContext):
        pi_gate, pi_mag = self.paths(params, x)
        h = jnp.where(pi_gate > 0, jax.nn.relu(pi_mag), 0.0)
        x_hat = self.decode(params, h)
        gate_acts = jax.nn.relu(pi_gate)
        # with free decoder norms the penalty must see them, or W_dec grows to dodge it
        l1 = losses.l1(gate_acts, None if self.decoder_unit_norm else base.decoder_norms(params))
        frozen = {"W_dec": lax.stop_gradient(params["W_dec"]), "b_dec": lax.stop_gradient(params["b_dec"])}
        aux = losses.recon_loss(self.recon_loss, x, base.decode_dense(frozen, gate_acts, self.dtype))
        loss = losses.recon_loss(self.recon_loss, x, x_hat) + ctx.sparsity_coef * l1 + aux
        metrics = base.recon_metrics(x, x_hat) | {"l0": losses.l0(h), "l1": l1, "aux_gate": aux}
        return loss, base.LossOutput(fired=base.fired(h), metrics=metrics, state=state)

    def export_params(self, params, state) -> dict[str, Any]:
        return {name: params[name] for name in EXPORTED}

    def export_cfg(self) -> dict[str, Any]:
        return {"architecture": "gated"}
