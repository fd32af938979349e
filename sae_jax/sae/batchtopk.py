"""BatchTopK SAE: the k*B largest activations over the whole batch (Bussmann et al. 2024).

Training selects across the batch, so L0 is k on average. For inference a threshold is
learned as an EMA of the smallest selected activation; the exported SAE is a JumpReLU
with that threshold on every latent (what SAELens does too).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from sae_jax import losses
from sae_jax.sae import base
from sae_jax.sae.auxk import auxk_loss
from sae_jax.topk_select import BatchKth, TopK, batch_kth

_UNSET = -1.0  # threshold before the first batch has been seen


@dataclasses.dataclass(frozen=True)
class BatchTopKSAE:
    k: int
    k_aux: int
    auxk_coef: float
    threshold_lr: float = 0.01
    topk: TopK = lax.top_k
    batch_kth: BatchKth = batch_kth
    """m-th largest of the batch's activations (two-stage over the devices on a sharded mesh)."""
    recon_loss: str = "fvu"
    dtype: str = "float32"

    def init_params(self, key, d_in: int, d_sae: int, b_dec) -> base.Params:
        return base.init_tied_params(key, d_in, d_sae, b_dec)

    def init_state(self, d_sae: int, d_in: int | None = None) -> dict[str, jax.Array]:
        return {"threshold": jnp.full((), _UNSET, jnp.float32)}

    def batch_codes(self, pre: jax.Array) -> tuple[jax.Array, jax.Array]:
        """([B, F] codes keeping the k*B largest ReLU activations of the batch, that k*B-th value)."""
        acts = jax.nn.relu(pre)
        kth = self.batch_kth(lax.stop_gradient(acts), self.k * pre.shape[0])
        return jnp.where((acts >= kth) & (acts > 0), acts, 0.0), kth

    @staticmethod
    def min_positive_selected(h: jax.Array) -> jax.Array:
        """The smallest nonzero kept activation (inf if none): what the inference threshold tracks."""
        return jnp.min(jnp.where(h > 0, h, jnp.inf))

    def encode(self, params, state, x):
        """Inference: JumpReLU with the learned threshold (batch-independent)."""
        pre = base.pre_activations(params, x, self.dtype)
        threshold = jnp.maximum(state["threshold"], 0.0)
        return jnp.where(pre > threshold, jax.nn.relu(pre), 0.0)

    def decode(self, params, h):
        return base.decode_dense(params, h, self.dtype)

    def next_threshold(self, old: jax.Array, h: jax.Array) -> jax.Array:
        """The inference threshold after batch codes ``h``: EMA of the smallest positive selected value."""
        return self.ema_threshold(old, self.min_positive_selected(h))

    def ema_threshold(self, old: jax.Array, m: jax.Array) -> jax.Array:
        """The inference threshold after a batch whose smallest selected value is ``m`` (inf: none)."""
        new = jnp.where(old == _UNSET, m, (1 - self.threshold_lr) * old + self.threshold_lr * m)
        return jnp.where(jnp.isfinite(m), new, old)  # nothing selected: keep the threshold

    def select(self, params, pre: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Training codes and the values whose smallest kept one the inference threshold tracks."""
        h, _ = self.batch_codes(pre)
        return h, h

    def loss(self, params, state, x, ctx: base.LossContext):
        pre = base.pre_activations(params, x, self.dtype)
        h, tracked = self.select(params, pre)
        x_hat = self.decode(params, h)
        recon = losses.recon_loss(self.recon_loss, x, x_hat)
        aux = (auxk_loss(params, pre, x, x_hat, ctx.dead_mask, self.k_aux, self.topk, self.dtype)
               if self.auxk_coef > 0 else jnp.zeros((), jnp.float32))
        new = self.next_threshold(state["threshold"], tracked)
        metrics = base.recon_metrics(x, x_hat) | {"l0": losses.l0(h), "auxk": aux, "threshold": new}
        return recon + self.auxk_coef * aux, base.LossOutput(
            fired=base.fired(h), metrics=metrics, state={"threshold": new})

    def export_params(self, params, state) -> dict[str, Any]:
        d_sae = params["b_enc"].shape[0]
        return base.tied_export(params) | {
            "threshold": jnp.full((d_sae,), jnp.maximum(state["threshold"], 0.0), jnp.float32)}

    def export_cfg(self) -> dict[str, Any]:
        return {"architecture": "jumprelu"}
