"""Matryoshka BatchTopK SAE: nested prefixes of the dictionary each reconstruct the input
(Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka SAEs"; Nabeshima 2024).

Codes are selected once by BatchTopK over the whole dictionary; level m reconstructs x from
the first m latents only, x̂_m = h[:, :m] W_dec[:m] + b_dec, and the loss is the mean of the
levels' reconstruction losses (the sum of the paper divided by the number of levels: Adam does
not see the constant, and the AuxK coefficient keeps its BatchTopK meaning). Early latents must
then explain the input on their own, which keeps general features from being absorbed into
specific ones. Inference and export are exactly BatchTopK's: a JumpReLU at the learned
threshold, which is what SAELens saves a ``matryoshka_batchtopk`` training SAE as.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from sae_jax import losses
from sae_jax.sae import base
from sae_jax.sae.auxk import auxk_loss
from sae_jax.sae.batchtopk import BatchTopKSAE


def level_reconstructions(params: base.Params, h, widths: tuple[int, ...], dtype: str = "float32"):
    """[L, B, d] reconstructions from the first ``widths[l]`` latents (each group multiplied once)."""
    parts, start = [], 0
    for stop in widths:  # group [start, stop) adds to every level from this one on
        parts.append(base.matmul(h[:, start:stop], params["W_dec"][start:stop], dtype))
        start = stop
    return jnp.cumsum(jnp.stack(parts), axis=0) + params["b_dec"]


@dataclasses.dataclass(frozen=True)
class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    widths: tuple[int, ...] = ()
    """Strictly increasing prefix sizes, the last one d_sae."""

    def loss(self, params, state, x, ctx: base.LossContext):
        pre = base.pre_activations(params, x, self.dtype)
        h, _ = self.batch_codes(pre)
        levels = level_reconstructions(params, h, self.widths, self.dtype)
        x_hat = levels[-1]
        per_level = [losses.recon_loss(self.recon_loss, x, levels[i]) for i in range(len(self.widths))]
        recon = sum(per_level) / len(per_level)
        aux = (auxk_loss(params, pre, x, x_hat, ctx.dead_mask, self.k_aux, self.topk, self.dtype)
               if self.auxk_coef > 0 else jnp.zeros((), jnp.float32))
        new = self.next_threshold(state["threshold"], h)
        metrics = base.recon_metrics(x, x_hat) | {"l0": losses.l0(h), "auxk": aux, "threshold": new}
        metrics |= {f"fvu_prefix_{w}": losses.fvu(x, levels[i]) for i, w in enumerate(self.widths[:-1])}
        return recon + self.auxk_coef * aux, base.LossOutput(
            fired=base.fired(h), metrics=metrics, state={"threshold": new})

    def export_cfg(self) -> dict[str, Any]:
        return {"architecture": "jumprelu"}
