"""BatchTopK crosscoder for model diffing (Lindsey et al. 2024; BatchTopK variant: Minder et al. 2025).

One latent space read from two models' activations of the same token, with one decoder per model:

    h = BatchTopK(ReLU([x_base | x_tuned] W_enc + b_enc))     x̂_m = h W_dec[:, m] + b_dec[m]

Training rows are [x_base | x_tuned] (``--data.store`` base, ``--data.target`` tuned, aligned row
by row, as from one ``sae-jax extract --chat-model`` pass). Stacking the per-model encoders and
decoders this way makes the crosscoder an SAE on the concatenated row whose decoder row j is
[d_base_j | d_tuned_j]; the loss is the reconstruction of both halves. Latents are selected by
value × (‖d_base_j‖ + ‖d_tuned_j‖), the crosscoder's decoder-norm weighting, so a latent
whose whole row lies in one model competes on equal terms with a shared one (rows are kept at
unit norm over the concatenation, so a shared latent's two halves each have norm < 1).
The relative decoder norm ‖d_tuned‖ / (‖d_base‖ + ‖d_tuned‖) then tells base-only, tuned-only and
shared latents apart (``sae_jax.evals.crosscoder``).

Export: a JumpReLU SAE on concatenated rows (there is no SAELens crosscoder format), with the
per-latent threshold θ / (‖d_base_j‖ + ‖d_tuned_j‖) that reproduces inference, and
``crosscoder_d_model`` in cfg.json to split the decoder rows again.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from sae_jax.sae import base
from sae_jax.sae.batchtopk import BatchTopKSAE


@dataclasses.dataclass(frozen=True)
class CrosscoderSAE(BatchTopKSAE):
    d_model: int = 0
    """Width of one model's activations (rows are [base | tuned], width 2·d_model)."""

    def init_params(self, key, d_in: int, d_sae: int, b_dec) -> base.Params:
        if d_in != 2 * self.d_model:
            raise ValueError(f"crosscoder rows of width {d_in} are not [base {self.d_model} | tuned {self.d_model}]")
        return base.init_tied_params(key, d_in, d_sae, b_dec)

    def norm_weights(self, params) -> jax.Array:
        """[F] ‖d_base_j‖ + ‖d_tuned_j‖."""
        w = params["W_dec"]
        return jnp.linalg.norm(w[:, : self.d_model], axis=-1) + jnp.linalg.norm(w[:, self.d_model:], axis=-1)

    def encode(self, params, state, x):
        pre = base.pre_activations(params, x, self.dtype)
        acts = jax.nn.relu(pre)
        threshold = jnp.maximum(state["threshold"], 0.0)
        return jnp.where(acts * self.norm_weights(params) > threshold, acts, 0.0)

    def select(self, params, pre: jax.Array) -> tuple[jax.Array, jax.Array]:
        """BatchTopK on value × decoder-norm sum; the threshold tracks the weighted values."""
        acts = jax.nn.relu(pre)
        v, _ = self.batch_codes(acts * jax.lax.stop_gradient(self.norm_weights(params)))
        return jnp.where(v > 0, acts, 0.0), v

    def export_params(self, params, state) -> dict[str, Any]:
        theta = jnp.maximum(state["threshold"], 0.0)
        return base.tied_export(params) | {
            "threshold": (theta / jnp.maximum(self.norm_weights(params), 1e-12)).astype(jnp.float32)}

    def export_cfg(self) -> dict[str, Any]:
        return {"architecture": "jumprelu", "crosscoder_d_model": self.d_model}
