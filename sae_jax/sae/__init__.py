"""SAE architectures behind one interface; ``make_architecture`` picks one from the config."""
from __future__ import annotations

import dataclasses

from jax.sharding import Mesh

from sae_jax.config import TRANSCODERS, ConfigError, SAEConfig
from sae_jax.sae.batchtopk import BatchTopKSAE
from sae_jax.sae.crosscoder import CrosscoderSAE
from sae_jax.sae.gated import GatedSAE
from sae_jax.sae.jumprelu import JumpReluSAE
from sae_jax.sae.matryoshka import MatryoshkaBatchTopKSAE
from sae_jax.sae.relu import ReluSAE
from sae_jax.sae.ssae import SSAE
from sae_jax.sae.topk import TopKSAE
from sae_jax.sae.transcoder import TranscoderSAE
from sae_jax.topk_select import make_batch_kth, make_topk


def make_architecture(cfg: SAEConfig, d_in: int, mesh: Mesh | None = None):
    """The architecture object for a config (top-k sharded over 'dict' when the mesh says so).

    ``d_in`` is the width of a training row: for transcoders that is input + target."""
    common = {"recon_loss": cfg.recon_loss, "dtype": cfg.compute_dtype}
    k_aux = cfg.k_aux or d_in // 2
    if cfg.architecture == "topk":
        arch = TopKSAE(k=cfg.k, k_aux=k_aux, auxk_coef=cfg.auxk_coef, topk=make_topk(mesh), **common)
        # sae.impl: the sparse kernels run on any mesh (shard_map over 'data' and 'dict').
        from sae_jax.kernels import choose_impl  # lazy: kernels.topk_sae imports this package

        if choose_impl(cfg.impl) == "sparse":
            from sae_jax.kernels.topk_sae import SparseTopKSAE

            arch = SparseTopKSAE.from_dense(arch, topk_method=cfg.topk_method, mesh=mesh)
        return arch
    if cfg.architecture == "batchtopk":
        arch = BatchTopKSAE(k=cfg.k, k_aux=k_aux, auxk_coef=cfg.auxk_coef,
                            threshold_lr=cfg.batchtopk_threshold_lr, topk=make_topk(mesh),
                            batch_kth=make_batch_kth(mesh), **common)
        from sae_jax.kernels import choose_impl  # lazy, as for topk

        if choose_impl(cfg.impl) == "sparse":  # batch-level selection on the same kernels
            from sae_jax.kernels.batchtopk_sae import SparseBatchTopKSAE

            arch = SparseBatchTopKSAE.from_dense(arch, topk_method=cfg.topk_method, mesh=mesh)
        return arch
    if cfg.architecture == "crosscoder":
        return CrosscoderSAE(k=cfg.k, k_aux=k_aux, auxk_coef=cfg.auxk_coef, threshold_lr=cfg.batchtopk_threshold_lr,
                             topk=make_topk(mesh), batch_kth=make_batch_kth(mesh), d_model=d_in // 2, **common)
    if cfg.architecture == "relu":
        return ReluSAE(decoder_unit_norm=cfg.decoder_unit_norm, **common)
    if cfg.architecture == "jumprelu":
        return JumpReluSAE(bandwidth=cfg.jumprelu_bandwidth,
                           init_threshold=cfg.jumprelu_init_threshold, **common)
    if cfg.architecture == "matryoshka_batchtopk":
        return MatryoshkaBatchTopKSAE(k=cfg.k, k_aux=k_aux, auxk_coef=cfg.auxk_coef,
                                      threshold_lr=cfg.batchtopk_threshold_lr, topk=make_topk(mesh),
                                      widths=cfg.matryoshka_levels, **common)
    if cfg.architecture == "gated":
        return GatedSAE(decoder_unit_norm=cfg.decoder_unit_norm, **common)
    if cfg.architecture in TRANSCODERS:
        d_out = cfg.d_out or d_in // 2
        return TranscoderSAE(d_in=d_in - d_out, d_out=d_out, skip=cfg.architecture == "skip_transcoder",
                             decoder_unit_norm=cfg.decoder_unit_norm, **common)
    if cfg.architecture == "ssae":
        return SSAE(**dataclasses.asdict(cfg.ssae), dtype=cfg.compute_dtype)
    raise ValueError(f"unknown architecture {cfg.architecture!r}; use topk, batchtopk, relu, jumprelu, ssae, "
                     "matryoshka_batchtopk, gated, transcoder, skip_transcoder or crosscoder")


__all__ = ["BatchTopKSAE", "GatedSAE", "JumpReluSAE", "MatryoshkaBatchTopKSAE", "ReluSAE", "SSAE", "TopKSAE",
           "TranscoderSAE", "make_architecture"]
