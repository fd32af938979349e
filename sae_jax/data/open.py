"""Open the activation source a DataConfig names (store, .npy, differences of them, or built-in
synthetic data)."""
from __future__ import annotations

from sae_jax.config import DataConfig
from sae_jax.data.paired import PairedSource, synthetic_pairs
from sae_jax.data.shifts import DifferenceSource, multi_concept_shifts
from sae_jax.data.source import ActivationSource, RowRange, npy_source
from sae_jax.data.synthetic import synthetic_source


def held_out_start_row(n_rows: int, holdout_fraction: float) -> int:
    """First row of the held-out tail; training reads rows before it, evaluation from it on."""
    return n_rows - int(n_rows * holdout_fraction)


def training_rows(source: ActivationSource, cfg: DataConfig) -> ActivationSource:
    """The source without its held-out tail (the last ``holdout_fraction`` of rows)."""
    stop = held_out_start_row(source.n_rows, cfg.holdout_fraction)
    return source if stop == source.n_rows else RowRange(source, 0, stop)


def open_path(path: str, store: bool, cast: bool = False, verify: bool = False) -> ActivationSource:
    """An activation store (path or URL; ``verify``: check every shard's digest) or a .npy file
    (``cast``: accept non-float values)."""
    if not store:
        return npy_source(path, cast=cast)
    from sae_jax.data.store import open_store  # tensorstore only when a store is used

    return open_store(path, verify=verify)


def synthetic_shifts(cfg: DataConfig, n_rows: int | None = None, seed: int | None = None, directions=None):
    """The multi-concept shifts ``cfg`` describes; ``n_rows``/``seed``/``directions`` override them
    (a fresh draw of the same concepts)."""
    return multi_concept_shifts(n_rows or cfg.synthetic_n_rows, cfg.synthetic_d_in, cfg.synthetic_n_features,
                                p_active=min(cfg.synthetic_k / cfg.synthetic_n_features, 1.0),
                                noise=cfg.synthetic_noise, seed=cfg.synthetic_seed if seed is None else seed,
                                directions=directions)


def open_source(cfg: DataConfig) -> ActivationSource:
    if cfg.store or cfg.npy:
        first = open_path(cfg.store or cfg.npy, store=bool(cfg.store), cast=cfg.cast, verify=cfg.verify)
        if cfg.target:  # transcoders: [input | target] rows
            return PairedSource(first, open_path(cfg.target, store=bool(cfg.store), cast=cfg.cast, verify=cfg.verify))
        if cfg.difference == "paired":
            if not cfg.second:
                raise ValueError("--data.difference paired needs --data.second (the 'after' source)")
            return DifferenceSource(first, open_path(cfg.second, store=bool(cfg.store), cast=cfg.cast, verify=cfg.verify), kind="paired")
        if cfg.difference == "sequential":
            return DifferenceSource(first, kind="sequential")
        return first
    if cfg.synthetic == "shifts":
        return synthetic_shifts(cfg)
    if cfg.synthetic == "transcoder":
        return synthetic_pairs(cfg.synthetic_n_rows, cfg.synthetic_d_in, cfg.synthetic_n_features, cfg.synthetic_k,
                               cfg.synthetic_noise, skip=cfg.synthetic_skip, seed=cfg.synthetic_seed)
    return synthetic_source(cfg.synthetic_n_rows, cfg.synthetic_d_in, cfg.synthetic_n_features,
                            cfg.synthetic_k, cfg.synthetic_noise, seed=cfg.synthetic_seed)
