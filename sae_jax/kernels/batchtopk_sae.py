"""BatchTopK SAE trained through the sparse kernels: same parameters, loss, metrics and inference
threshold as ``sae_jax.sae.batchtopk.BatchTopKSAE``, without the dense [B, F] codes or backward.

Selected by ``sae.impl = "sparse"`` (or "auto" off TPU) on any ('data', 'dict') mesh; the step
runs ``batchtopk.sharded_batchtopk_autoencode``. Rows whose selection does not fit ``row_cap``
slots are taken whole (metric ``btk_dense_rows``: their fraction of the batch); a step with more
of them than the kernel's ``dense_rows`` runs its exact dense branch (metric ``btk_dense`` = 1).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh

from sae_jax import losses
from sae_jax.kernels.batchtopk import default_row_cap, sharded_batchtopk_autoencode
from sae_jax.sae import base
from sae_jax.sae.batchtopk import BatchTopKSAE


@dataclasses.dataclass(frozen=True)
class SparseBatchTopKSAE(BatchTopKSAE):
    """``BatchTopKSAE`` whose training loss runs on gathered rows (see module docstring)."""

    topk_method: str = "auto"
    mesh: Mesh | None = None
    """The training mesh (``make_architecture`` passes it); None: one device."""
    row_cap_factor: int = 4
    """Slots per row = row_cap_factor * k (at most F); rows needing more are taken whole."""

    def loss(self, params, state, x, ctx: base.LossContext):
        k_aux = self.k_aux if self.auxk_coef > 0 else 0
        cap = default_row_cap(self.k, params["W_enc"].shape[1], self.row_cap_factor)
        out = sharded_batchtopk_autoencode(x, params, self.k, self.mesh, row_cap=cap, dead_mask=ctx.dead_mask,
                                           k_aux=k_aux, topk_method=self.topk_method, compute_dtype=self.dtype)
        recon = losses.recon_loss(self.recon_loss, x, out.x_hat)
        if k_aux:
            # residual with stop-gradient; e_hat uses decoder rows without b_dec (auxk.py)
            residual = lax.stop_gradient(x - out.x_hat)
            aux = jnp.where(out.aux_on, losses.auxk_loss(residual, out.e_hat), 0.0)
        else:
            aux = jnp.zeros((), jnp.float32)
        new = self.ema_threshold(state["threshold"], out.min_selected)
        metrics = base.recon_metrics(x, out.x_hat) | {
            "l0": out.n_active / x.shape[0], "auxk": aux, "threshold": new,
            "btk_dense": 1.0 - out.exact_sparse.astype(jnp.float32), "btk_dense_rows": out.dense_rows / x.shape[0]}
        return recon + self.auxk_coef * aux, base.LossOutput(
            fired=out.fired, metrics=metrics, state={"threshold": new})

    @classmethod
    def from_dense(cls, arch: BatchTopKSAE, topk_method: str = "auto", mesh: Mesh | None = None,
                   row_cap_factor: int = 4) -> "SparseBatchTopKSAE":
        """The sparse twin of a dense BatchTopKSAE (same hyperparameters), trained on ``mesh``."""
        fields = {f.name: getattr(arch, f.name) for f in dataclasses.fields(BatchTopKSAE)}
        return cls(**fields, topk_method=topk_method, mesh=mesh, row_cap_factor=row_cap_factor)
