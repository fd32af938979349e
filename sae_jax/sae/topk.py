"""TopK SAE: keep the k largest pre-activations per token, ReLU them (Gao et al. 2024)."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from sae_jax import losses
from sae_jax.sae import base
from sae_jax.sae.auxk import auxk_loss
from sae_jax.topk_select import TopK


@dataclasses.dataclass(frozen=True)
class TopKSAE:
    k: int
    k_aux: int
    auxk_coef: float
    topk: TopK = lax.top_k
    recon_loss: str = "fvu"
    dtype: str = "float32"

    def init_params(self, key, d_in: int, d_sae: int, b_dec) -> base.Params:
        return base.init_tied_params(key, d_in, d_sae, b_dec)

    def init_state(self, d_sae: int, d_in: int | None = None) -> dict[str, jax.Array]:
        return {}

    def codes(self, pre: jax.Array) -> jax.Array:
        """[B, F] ReLU of the k largest pre-activations per row, zeros elsewhere."""
        # Only the k-th value is needed (as a threshold); no gradient flows through top-k.
        vals, _ = self.topk(lax.stop_gradient(pre), self.k)
        kth = jnp.min(vals, axis=1, keepdims=True)  # min, not vals[:, -1:]: slicing top_k output sends XLA:CPU to a ~25x slower sort
        return jnp.where(pre >= kth, jax.nn.relu(pre), 0.0)

    def encode(self, params, state, x):
        return self.codes(base.pre_activations(params, x, self.dtype))

    def decode(self, params, h):
        return base.decode_dense(params, h, self.dtype)

    def loss(self, params, state, x, ctx: base.LossContext):
        pre = base.pre_activations(params, x, self.dtype)
        h = self.codes(pre)
        x_hat = self.decode(params, h)
        recon = losses.recon_loss(self.recon_loss, x, x_hat)
        aux = (auxk_loss(params, pre, x, x_hat, ctx.dead_mask, self.k_aux, self.topk, self.dtype)
               if self.auxk_coef > 0 else jnp.zeros((), jnp.float32))
        loss = recon + self.auxk_coef * aux
        metrics = base.recon_metrics(x, x_hat) | {"l0": losses.l0(h), "auxk": aux}
        return loss, base.LossOutput(fired=base.fired(h), metrics=metrics, state=state)

    def export_params(self, params, state) -> dict[str, Any]:
        return base.tied_export(params)

    def export_cfg(self) -> dict[str, Any]:
        return {"architecture": "topk", "k": self.k}
