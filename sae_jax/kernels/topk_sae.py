"""TopK SAE trained through the sparse kernels: same parameters, loss and metrics as
``sae_jax.sae.topk.TopKSAE``, computed without the dense [B, F] code or dense backward.

Selected by ``sae.impl = "sparse"`` (or "auto" off TPU) on any ('data', 'dict') mesh: the
step runs ``sharded.sharded_autoencode`` (two-stage top-k, per-shard gathered decoder and
sparse backward under ``shard_map``). Without a mesh (custom loops, tests) it runs the
single-device kernel that every shard runs.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh

from sae_jax import losses
from sae_jax.kernels.fused import sparse_autoencode
from sae_jax.kernels.sharded import sharded_autoencode
from sae_jax.kernels.sparse_topk import sparse_encode
from sae_jax.sae import base
from sae_jax.sae.topk import TopKSAE


@dataclasses.dataclass(frozen=True)
class SparseTopKSAE(TopKSAE):
    """``TopKSAE`` whose training loss runs on gathered rows (see module docstring)."""

    topk_method: str = "auto"
    mesh: Mesh | None = None
    """The training mesh (``make_architecture`` passes it); None: one device, no shard_map."""

    def sparse_codes(self, params, x):
        """(vals [B, k], idx [B, k]): the nonzero part of ``encode``."""
        return sparse_encode(x, params["W_enc"], params["b_enc"], self.k, b_dec=params["b_dec"],
                             topk_method=self.topk_method, compute_dtype=self.dtype)

    def loss(self, params, state, x, ctx: base.LossContext):
        k_aux = self.k_aux if self.auxk_coef > 0 else 0
        kw = dict(dead_mask=ctx.dead_mask, k_aux=k_aux, topk_method=self.topk_method, compute_dtype=self.dtype)
        if self.mesh is None:
            x_hat, vals, idx, e_hat, aux_on = sparse_autoencode(x, params, self.k, **kw)
        else:
            x_hat, vals, idx, e_hat, aux_on = sharded_autoencode(x, params, self.k, self.mesh, **kw)
        # the variance's one-pass form around b_dec: on a mesh its sums join the loss's reduction
        shift = lax.stop_gradient(params["b_dec"])
        recon = losses.recon_loss(self.recon_loss, x, x_hat, shift)
        if k_aux:
            # residual with stop-gradient; e_hat uses decoder rows without b_dec (auxk.py). Under a
            # cond: while no latent is dead, none of its passes (or reductions over the mesh) run.
            residual = lax.stop_gradient(x - x_hat)
            aux = lax.cond(aux_on, losses.auxk_loss, lambda r, e: jnp.zeros((), jnp.float32), residual, e_hat)
        else:
            aux = jnp.zeros((), jnp.float32)
        active = vals > 0
        n_latents = params["W_enc"].shape[1]
        fired = jnp.zeros((n_latents,), bool).at[idx.reshape(-1)].max(active.reshape(-1))
        metrics = base.recon_metrics(x, x_hat, shift) | {
            "l0": jnp.mean(jnp.sum(active, axis=-1).astype(jnp.float32)),
            "auxk": aux,
        }
        return recon + self.auxk_coef * aux, base.LossOutput(fired=fired, metrics=metrics, state=state)

    @classmethod
    def from_dense(cls, arch: TopKSAE, topk_method: str = "auto", mesh: Mesh | None = None) -> "SparseTopKSAE":
        """The sparse twin of a dense TopKSAE (same hyperparameters), trained on ``mesh``."""
        fields = {f.name: getattr(arch, f.name) for f in dataclasses.fields(TopKSAE)}
        return cls(**fields, topk_method=topk_method, mesh=mesh)
