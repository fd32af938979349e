"""Sparse shift autoencoder (SSAE, Joshi et al. 2025, arXiv 2502.12179).

Trained on activation *differences* Δz. Sparsity is a hard constraint, not a penalty:

    minimise   recon(x_n, x̂)      subject to   Σ|h| / (B·F) <= level(step)

solved by the primal–dual ``sae_jax.constraints.ConstrainedOptimizer`` (``problem`` below
is the constrained problem it consumes; ``sae_jax.train_step`` wires the two for
``sae-jax train ssae``).

Forward pass (x is one Δz row):
  1. input normalisation: ``layernorm`` (per row, no affine, SAELens 'layer_norm' semantics:
     ``(x − μ)/(σ_unbiased + eps)``; the default), ``batch``
     (per-feature batch statistics, running averages at inference) or ``none``;
  2. ``pre = (x_n − b_dec) @ W_enc + b_enc``;
  3. optional code normalisation (``layernorm`` over latents with affine code_gamma/code_beta,
     as the reference's nn.LayerNorm(hid); ``batchnorm`` per latent with running stats;
     ``none``), then optional ReLU (off by default: shifts are signed);
  4. ``x̂ = h @ W_dec + b_dec`` with unit-norm decoder rows (tangent-space gradient +
     projection, ``sae_jax.decoder_norm``).

The reconstruction is compared with the *normalised* input: ``relative`` loss
``mean_b ‖x_n − x̂‖² / ‖x_n‖²`` (scale-invariant per row) or ``absolute`` MSE (mean over
all elements). Level schedule: no constraint for ``warmup`` steps while the dense level
(EMA of Σ|h|/(B·F)) is measured, then a linear decrease from that level to ``target`` over
``schedule`` steps.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from sae_jax import losses
from sae_jax.config import SSAEConfig
from sae_jax.constraints import CMPOutput
from sae_jax.normalization import layer_norm_in
from sae_jax.sae import base


@dataclasses.dataclass(frozen=True)
class SSAE(SSAEConfig):
    """The architecture; its hyperparameters (and their checks) are ``SSAEConfig``'s."""

    dtype: str = "float32"
    """Matmul input dtype."""

    # -- parameters and state ---------------------------------------------------------
    def init_params(self, key, d_in: int, d_sae: int, b_dec=None) -> base.Params:
        # Encoder initialised as the transpose of the unit-norm decoder (copy, not tied).
        params = base.init_tied_params(key, d_in, d_sae, jnp.zeros((d_in,)) if b_dec is None else b_dec)
        if self.code_norm != "none":
            params["code_gamma"] = jnp.ones((d_sae,), jnp.float32)
            params["code_beta"] = jnp.zeros((d_sae,), jnp.float32)
        return params

    def init_state(self, d_sae: int, d_in: int | None = None) -> dict[str, jax.Array]:
        state = {"dense_level": jnp.zeros((), jnp.float32)}
        if self.input_norm == "batch":
            if d_in is None:
                raise ValueError("SSAE(input_norm='batch') keeps per-feature running statistics: "
                                 "call init_state(d_sae, d_in=...)")
            state |= {"in_mean": jnp.zeros((d_in,), jnp.float32), "in_var": jnp.ones((d_in,), jnp.float32)}
        if self.code_norm == "batchnorm":
            state |= {"code_mean": jnp.zeros((d_sae,), jnp.float32), "code_var": jnp.ones((d_sae,), jnp.float32)}
        return state

    # -- forward ----------------------------------------------------------------------
    def _ema(self, old, new):
        return (1 - self.momentum) * old + self.momentum * jax.lax.stop_gradient(new)

    def normalize_input(self, state, x, train: bool):
        """(x_n, (shift, scale) such that x = x_n * scale + shift, new state)."""
        new = dict(state)
        if self.input_norm == "layernorm":  # SAELens 'layer_norm' semantics, so exports match
            x_n, mu, std = layer_norm_in(x, self.eps)
            return x_n, (mu, std), new
        if self.input_norm == "batch":
            if train:
                mu, var = jnp.mean(x, axis=0), jnp.var(x, axis=0)
                new["in_mean"], new["in_var"] = self._ema(state["in_mean"], mu), self._ema(state["in_var"], var)
            else:
                mu, var = state["in_mean"], state["in_var"]
            std = jnp.sqrt(var + self.eps)
        else:
            return x, (jnp.zeros((), x.dtype), jnp.ones((), x.dtype)), new
        return (x - mu) / std, (mu, std), new

    def _code(self, params, state, x_n, train: bool):
        if self.code_norm == "batchnorm":
            # The batch mean cancels b_enc exactly; its gradient is pure round-off, which Adam
            # would blow up to full-size steps, so b_enc is frozen (it is folded at export).
            pre = base.matmul(x_n - params["b_dec"], params["W_enc"], self.dtype)
            pre = pre + jax.lax.stop_gradient(params["b_enc"])
        else:
            pre = base.pre_activations(params, x_n, self.dtype)
        new = dict(state)
        if self.code_norm == "layernorm":
            mu = jnp.mean(pre, axis=-1, keepdims=True)
            var = jnp.var(pre, axis=-1, keepdims=True)
            pre = (pre - mu) / jnp.sqrt(var + self.eps) * params["code_gamma"] + params["code_beta"]
        elif self.code_norm == "batchnorm":
            if train:
                mu, var = jnp.mean(pre, axis=0), jnp.var(pre, axis=0)
                new["code_mean"] = self._ema(state["code_mean"], mu)
                new["code_var"] = self._ema(state["code_var"], var)
            else:
                mu, var = state["code_mean"], state["code_var"]
            pre = (pre - mu) / jnp.sqrt(var + self.eps) * params["code_gamma"] + params["code_beta"]
        h = jax.nn.relu(pre) if self.relu else pre
        return h, new

    def encode(self, params, state, x):
        """[B, F] codes at inference (running statistics, no state update)."""
        x_n, _, _ = self.normalize_input(state, x, train=False)
        return self._code(params, state, x_n, train=False)[0]

    def decode(self, params, h):
        """[B, d] reconstruction in the normalised input space."""
        return base.decode_dense(params, h, self.dtype)

    def reconstruct(self, params, state, x):
        """[B, d] reconstruction of x in the input space (normalisation undone)."""
        x_n, (shift, scale), _ = self.normalize_input(state, x, train=False)
        h, _ = self._code(params, state, x_n, train=False)
        return self.decode(params, h) * scale + shift

    def recon(self, x_n, x_hat):
        if self.loss_type == "relative":
            num = jnp.sum(jnp.square(x_n - x_hat), axis=-1)
            return jnp.mean(num / jnp.maximum(jnp.sum(jnp.square(x_n), axis=-1), 1e-12))
        return jnp.mean(jnp.square(x_n - x_hat))

    def level(self, dense_level, step):
        """Constraint level at ``step``: dense level, then linear decrease to target."""
        t = jnp.clip((step - self.warmup) / max(self.schedule, 1), 0.0, 1.0)
        return dense_level + t * (self.target - dense_level)

    # -- the constrained problem ------------------------------------------------------
    def problem(self, params, state, x, step) -> CMPOutput:
        """Loss and the one inequality violation Σ|h|/(B·F) − level (0 during warm-up)."""
        x_n, _, new_state = self.normalize_input(state, x, train=True)
        h, new_state = self._code(params, new_state, x_n, train=True)
        x_hat = self.decode(params, h)
        recon = self.recon(x_n, x_hat)
        mean_abs = jnp.mean(jnp.abs(h))  # Σ|h| / (B·F)
        active = jnp.mean((h != 0).astype(jnp.float32))  # share of nonzero latents
        measured = mean_abs if self.constraint == "l1" else active
        measuring = step < max(self.warmup, 1)
        seen = jnp.where(step == 0, jax.lax.stop_gradient(measured), self._ema(state["dense_level"], measured))
        new_state["dense_level"] = jnp.where(measuring, seen, state["dense_level"])
        level = self.level(new_state["dense_level"], step)
        on = step >= self.warmup
        violation = jnp.where(on, measured - level, 0.0 * mean_abs)
        metrics = base.recon_metrics(x_n, x_hat) | {
            "recon": recon, "mean_abs_h": mean_abs, "active_share": active, "level": level,
            "l0": losses.l0(h), "violation": violation,
        }
        aux = base.LossOutput(fired=base.fired(h), metrics=metrics, state=new_state)
        if self.constraint == "l0":
            # The primal differentiates the L1 surrogate; the dual sees the true L0 violation.
            surrogate = jnp.where(on, mean_abs, 0.0 * mean_abs)
            return CMPOutput(loss=recon, ineq=surrogate[None], strict_ineq=violation[None], aux=aux)
        return CMPOutput(loss=recon, ineq=violation[None], aux=aux)

    def loss(self, params, state, x, ctx: base.LossContext):
        """The architecture-interface loss: reconstruction + ctx.sparsity_coef · Σ|h|/(B·F).

        With a fixed coefficient this is an L1-penalised SAE of the same architecture (the
        comparison baseline); constrained training uses ``problem`` instead.
        """
        out = self.problem(params, state, x, jnp.asarray(self.warmup, jnp.int32))
        loss = out.loss + ctx.sparsity_coef * out.aux.metrics["mean_abs_h"]
        return loss, out.aux

    # -- export -----------------------------------------------------------------------
    def export_params(self, params, state) -> dict[str, Any]:
        """SAELens-named weights with every affine normalisation folded in.

        Folded: per-feature batch input statistics (into W_enc, W_dec, b_dec) and the
        batch-norm code (into W_enc, b_enc). Not folded: the per-row input LayerNorm, which
        is the runtime ``normalize_activations='layer_norm'`` of the exported cfg, and the
        LayerNorm over the code (``code_gamma``/``code_beta`` exported beside, architecture
        'code_layernorm': sae_jax.load reads it, SAELens refuses it).
        """
        w_enc, b_enc = params["W_enc"], params["b_enc"]
        w_dec, b_dec = params["W_dec"], params["b_dec"]
        if self.code_norm == "batchnorm":
            g = params["code_gamma"] / jnp.sqrt(state["code_var"] + self.eps)
            w_enc, b_enc = w_enc * g, (b_enc - state["code_mean"]) * g + params["code_beta"]
        if self.input_norm == "batch":
            # x_n = (x - m) / s: pre = (x - (m + s b_dec)) @ (W_enc / s) + b_enc and
            # x = x̂_n * s + m = h @ (W_dec * s) + (m + s b_dec).
            s = jnp.sqrt(state["in_var"] + self.eps)
            b_dec = state["in_mean"] + s * b_dec
            w_enc, w_dec = w_enc / s[:, None], w_dec * s
        out = {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec}
        if self.code_norm == "layernorm":  # not linear: kept as is, applied after the linear pre-code
            out |= {"code_gamma": params["code_gamma"], "code_beta": params["code_beta"]}
        return out

    def export_cfg(self) -> dict[str, Any]:
        norm = {"normalize_activations": "layer_norm" if self.input_norm == "layernorm" else "none"}
        if self.code_norm == "layernorm":
            # h = [relu](LayerNorm_latents(pre) * code_gamma + code_beta): sae_jax's own architecture name,
            # so SAELens refuses the folder instead of silently dropping the code LayerNorm.
            return {"architecture": "code_layernorm", "code_relu": bool(self.relu), "code_norm_eps": self.eps} | norm
        return {"architecture": "standard" if self.relu else "linear"} | norm
