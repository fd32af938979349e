"""Small builders shared by the core tests."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from sae_jax.assemble import assemble
from sae_jax.config import CheckpointConfig, DataConfig, LogConfig, MeshConfig, OptimConfig, SAEConfig, TrainConfig
from sae_jax.data.loader import BatchLoader
from sae_jax.mesh import batch_sharding
from sae_jax.train_state import create_state
from sae_jax.train_step import make_train_step


def tiny_config(run_dir: str = "/tmp/unused", **sae) -> TrainConfig:
    return TrainConfig(
        run_dir=str(run_dir), steps=20, seed=0,
        data=DataConfig(batch_size=256, synthetic_d_in=16, synthetic_n_features=48, synthetic_k=3,
                        synthetic_n_rows=8192, n_stat_rows=2048),
        sae=SAEConfig(**({"d_sae": 64, "k": 4, "dead_tokens": 100_000} | sae)),
        optim=OptimConfig(lr=3e-3, warmup_steps=5),
        checkpoint=CheckpointConfig(every=10),
        log=LogConfig(every=5, progress=False),
    )


def run_steps(cfg: TrainConfig, source, steps: int, mesh_shape=(1, 1), seed_b_dec=None):
    """Train ``steps`` steps on a mesh built from the first data*dict devices; returns the state."""
    data, dct = mesh_shape
    cfg = dataclasses.replace(cfg, mesh=MeshConfig(data=data, dict=dct))
    pieces = assemble(cfg, source.d_in, devices=jax.devices()[: data * dct])
    b_dec = np.zeros(source.d_in, np.float32) if seed_b_dec is None else seed_b_dec
    state = create_state(pieces.arch, pieces.optimizer, source.d_in, cfg.sae.d_sae, pieces.mesh,
                         cfg.seed, b_dec, 1.0)
    step = make_train_step(cfg, pieces.arch, pieces.optimizer, pieces.mesh, pieces.shardings)
    loader = BatchLoader(source, cfg.data.batch_size, cfg.data.seed, batch_sharding(pieces.mesh))
    metrics = None
    for t in range(steps):
        state, metrics = step(state, loader.device_batch(t))
    return state, jax.device_get(metrics), pieces
