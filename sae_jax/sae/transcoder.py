"""Transcoders and skip-transcoders: a sparse code of one hook's activations that reconstructs
another's (Dunefsky et al. 2024; skip term as in Paulo et al. 2025, sparsify).

    h = ReLU(x W_enc + b_enc)            ŷ = h W_dec + b_dec  [+ x W_skipᵀ]

x (width d_in) is e.g. the MLP input, y (width d_out) the MLP output. An MLP's output is often
far smaller than its input, so the one input scale of the trainer (on whole [x | y] rows) is
followed by a target scale t (state, set from the first batch so that E||t·y|| = sqrt(d_out),
like BatchTopK's threshold; checkpointed) and the model predicts t·y; the export divides the
output-side weights by t. There is no input bias:
b_dec lives in the output space (SAELens refuses apply_b_dec_to_input for transcoders). The
loss is the reconstruction of y plus the decoder-norm-weighted L1 of h (SAELens 'transcoder' /
'skip_transcoder' are ReLU encoders). Training rows are [x | y]; the split is ``d_in``.
W_skip [d_out, d_in] starts at zero, as in SAELens.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from sae_jax import losses
from sae_jax.sae import base

_UNSET = -1.0  # target scale before the first batch has been seen


@dataclasses.dataclass(frozen=True)
class TranscoderSAE:
    d_in: int
    """Width of the input part of a training row."""
    d_out: int
    """Width of the target part (the rest of the row)."""
    skip: bool = False
    """Add the linear skip term x W_skipᵀ (skip-transcoder)."""
    recon_loss: str = "fvu"
    dtype: str = "float32"
    decoder_unit_norm: bool = True

    def split(self, rows: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[B, d_in + d_out] training rows -> (x [B, d_in], y [B, d_out])."""
        return rows[:, : self.d_in], rows[:, self.d_in:]

    def init_params(self, key, d_row: int, d_sae: int, b_dec) -> base.Params:
        """``d_row`` is the width of whole [x | y] rows (``b_dec``, of those rows, is not used: see b_dec)."""
        if d_row != self.d_in + self.d_out:
            raise ValueError(f"training rows of width {d_row} are not [input {self.d_in} | target {self.d_out}]")
        d_out = self.d_out
        k_dec, k_enc = jax.random.split(key)
        w_dec = jax.random.normal(k_dec, (d_sae, d_out), jnp.float32)
        w_enc = jax.random.normal(k_enc, (self.d_in, d_sae), jnp.float32)
        params = {
            "W_enc": w_enc / jnp.linalg.norm(w_enc, axis=0, keepdims=True),  # unit columns, like tied init
            "b_enc": jnp.zeros((d_sae,), jnp.float32),
            "W_dec": w_dec / jnp.linalg.norm(w_dec, axis=-1, keepdims=True),
            "b_dec": jnp.zeros((d_out,), jnp.float32),  # in units of t·y, t unknown before the first batch
        }
        if self.skip:
            params["W_skip"] = jnp.zeros((d_out, self.d_in), jnp.float32)
        return params

    def init_state(self, d_sae: int, d_in: int | None = None) -> dict[str, jax.Array]:
        return {"target_scale": jnp.full((), _UNSET, jnp.float32)}

    def target_scale(self, state, y: jax.Array) -> jax.Array:
        """t: the stored one, or on the first batch sqrt(d_out) / mean ||y||."""
        first = jnp.sqrt(jnp.float32(self.d_out)) / jnp.maximum(jnp.mean(jnp.linalg.norm(y, axis=-1)), 1e-12)
        return jnp.where(state["target_scale"] == _UNSET, first, state["target_scale"])

    def encode(self, params, state, x):
        """[B, F] codes of input rows x [B, d_in] (or of whole [x | y] rows: the target is ignored)."""
        x = x[:, : self.d_in]
        return jax.nn.relu(base.matmul(x, params["W_enc"], self.dtype) + params["b_enc"])

    def decode(self, params, h):
        """The sparse part of the prediction of t·y, h W_dec + b_dec (no skip term, as SAELens' decode)."""
        return base.decode_dense(params, h, self.dtype)

    def predict(self, params, x, h):
        """The prediction of t·y from inputs x [B, d_in] and their codes h, skip term included."""
        y_hat = self.decode(params, h)
        return y_hat + base.matmul(x, params["W_skip"].T, self.dtype) if self.skip else y_hat

    def forward(self, params, state, x):
        """ŷ [B, d_out] in the units of the training rows (divided by the target scale t)."""
        return self.predict(params, x, self.encode(params, state, x)) / state["target_scale"]

    def loss(self, params, state, rows, ctx: base.LossContext):
        x, y = self.split(rows)
        t = self.target_scale(state, y)
        y = y * t
        h = self.encode(params, state, x)
        y_hat = self.predict(params, x, h)
        l1 = losses.l1(h, None if self.decoder_unit_norm else base.decoder_norms(params))
        loss = losses.recon_loss(self.recon_loss, y, y_hat) + ctx.sparsity_coef * l1
        metrics = base.recon_metrics(y, y_hat) | {"l0": losses.l0(h), "l1": l1, "target_scale": t}
        return loss, base.LossOutput(fired=base.fired(h), metrics=metrics, state={"target_scale": t})

    def export_params(self, params, state) -> dict[str, Any]:
        """Weights predicting y itself: the output side divided by the target scale t."""
        t = state["target_scale"]
        out = {"W_enc": params["W_enc"], "b_enc": params["b_enc"], "W_dec": params["W_dec"] / t,
               "b_dec": params["b_dec"] / t}
        return out | ({"W_skip": params["W_skip"] / t} if self.skip else {})

    def export_cfg(self) -> dict[str, Any]:
        return {"architecture": "skip_transcoder" if self.skip else "transcoder", "d_in": self.d_in,
                "d_out": self.d_out, "apply_b_dec_to_input": False}
