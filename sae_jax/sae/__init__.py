"""SAE architectures behind one interface; ``make_architecture`` picks one from the config."""
from __future__ import annotations

from jax.sharding import Mesh

from sae_jax.config import SAEConfig
from sae_jax.sae.batchtopk import BatchTopKSAE
from sae_jax.sae.jumprelu import JumpReluSAE
from sae_jax.sae.relu import ReluSAE
from sae_jax.sae.topk import TopKSAE
from sae_jax.topk_select import make_topk


def make_architecture(cfg: SAEConfig, d_in: int, mesh: Mesh | None = None):
    """The architecture object for a config (top-k sharded over 'dict' when the mesh says so)."""
    common = {"recon_loss": cfg.recon_loss, "dtype": cfg.compute_dtype}
    k_aux = cfg.k_aux or d_in // 2
    if cfg.architecture == "topk":
        return TopKSAE(k=cfg.k, k_aux=k_aux, auxk_coef=cfg.auxk_coef, topk=make_topk(mesh), **common)
    if cfg.architecture == "batchtopk":
        return BatchTopKSAE(k=cfg.k, k_aux=k_aux, auxk_coef=cfg.auxk_coef,
                            threshold_lr=cfg.batchtopk_threshold_lr, topk=make_topk(mesh), **common)
    if cfg.architecture == "relu":
        return ReluSAE(decoder_unit_norm=cfg.decoder_unit_norm, **common)
    if cfg.architecture == "jumprelu":
        return JumpReluSAE(bandwidth=cfg.jumprelu_bandwidth,
                           init_threshold=cfg.jumprelu_init_threshold, **common)
    raise ValueError(f"unknown architecture {cfg.architecture!r}; use topk, batchtopk, relu or jumprelu")


__all__ = ["BatchTopKSAE", "JumpReluSAE", "ReluSAE", "TopKSAE", "make_architecture"]
