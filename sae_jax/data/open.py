"""Open the activation source a DataConfig names (store, .npy, or built-in synthetic data)."""
from __future__ import annotations

from sae_jax.config import DataConfig
from sae_jax.data.source import ActivationSource, RowRange, npy_source
from sae_jax.data.synthetic import synthetic_source


def held_out_start_row(n_rows: int, holdout_fraction: float) -> int:
    """First row of the held-out tail; training reads rows before it, evaluation from it on."""
    return n_rows - int(n_rows * holdout_fraction)


def training_rows(source: ActivationSource, cfg: DataConfig) -> ActivationSource:
    """The source without its held-out tail (the last ``holdout_fraction`` of rows)."""
    stop = held_out_start_row(source.n_rows, cfg.holdout_fraction)
    return source if stop == source.n_rows else RowRange(source, 0, stop)


def open_source(cfg: DataConfig) -> ActivationSource:
    if cfg.store:
        from sae_jax.data.store import open_store  # tensorstore only when a store is used

        return open_store(cfg.store)
    if cfg.npy:
        return npy_source(cfg.npy)
    return synthetic_source(cfg.synthetic_n_rows, cfg.synthetic_d_in, cfg.synthetic_n_features,
                            cfg.synthetic_k, cfg.synthetic_noise, seed=cfg.seed)
