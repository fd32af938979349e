"""ReLU SAE with an L1 penalty weighted by decoder row norms (SAELens 'standard')."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from sae_jax import losses
from sae_jax.sae import base


@dataclasses.dataclass(frozen=True)
class ReluSAE:
    recon_loss: str = "fvu"
    dtype: str = "float32"
    decoder_unit_norm: bool = True

    def init_params(self, key, d_in: int, d_sae: int, b_dec) -> base.Params:
        return base.init_tied_params(key, d_in, d_sae, b_dec)

    def init_state(self, d_sae: int, d_in: int | None = None) -> dict[str, jax.Array]:
        return {}

    def encode(self, params, state, x):
        return jax.nn.relu(base.pre_activations(params, x, self.dtype))

    def decode(self, params, h):
        return base.decode_dense(params, h, self.dtype)

    def loss(self, params, state, x, ctx: base.LossContext):
        h = self.encode(params, state, x)
        x_hat = self.decode(params, h)
        # With unit-norm rows the weights are 1; otherwise the penalty must see the norms,
        # or the SAE shrinks h and grows W_dec to dodge it.
        norms = None if self.decoder_unit_norm else base.decoder_norms(params)
        l1 = losses.l1(h, norms)
        loss = losses.recon_loss(self.recon_loss, x, x_hat) + ctx.sparsity_coef * l1
        metrics = base.recon_metrics(x, x_hat) | {"l0": losses.l0(h), "l1": l1}
        return loss, base.LossOutput(fired=base.fired(h), metrics=metrics, state=state)

    def export_params(self, params, state) -> dict[str, Any]:
        return base.tied_export(params)

    def export_cfg(self) -> dict[str, Any]:
        return {"architecture": "standard"}
