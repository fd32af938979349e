"""Small builders shared by the core tests."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from sae_jax.assemble import assemble
from sae_jax.config import (CheckpointConfig, DataConfig, DualConfig, LogConfig, MeshConfig, OptimConfig, SAEConfig,
                            SSAEConfig, TrainConfig)
from sae_jax.data.loader import BatchLoader
from sae_jax.mesh import batch_sharding
from sae_jax.train_state import create_state
from sae_jax.trainer import input_statistics
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


def ssae_config(run_dir, target: float, warmup: int = 5, schedule: int = 10, steps: int = 20, d_sae: int = 8,
                batch_size: int = 256, dual: DualConfig = DualConfig(), lr: float = 1e-3, data: dict | None = None,
                **ssae) -> TrainConfig:
    """A `sae-jax train ssae` config for tests: no held-out tail, no lr warm-up, rare checkpoints."""
    return TrainConfig(
        run_dir=str(run_dir), steps=steps, seed=0,
        data=DataConfig(**({"batch_size": batch_size, "normalize": "none", "holdout_fraction": 0.0,
                            "n_stat_rows": 4096} | (data or {}))),
        sae=SAEConfig(architecture="ssae", d_sae=d_sae,
                      ssae=SSAEConfig(target=target, warmup=warmup, schedule=schedule, **ssae)),
        optim=OptimConfig(lr=lr, warmup_steps=0), dual=dual,
        checkpoint=CheckpointConfig(every=10**6), log=LogConfig(every=50, progress=False),
    )


def run_steps(cfg: TrainConfig, source, steps: int, mesh_shape=(1, 1), seed_b_dec=None, trainer_init=False):
    """Train ``steps`` steps on a mesh built from the first data*dict devices; returns the state.

    The state starts from b_dec = ``seed_b_dec`` (zeros), scale 1 and no whitening, or with
    ``trainer_init`` from the trainer's own input statistics (b_dec, scale, whitening)."""
    data, dct = mesh_shape
    cfg = dataclasses.replace(cfg, mesh=MeshConfig(data=data, dict=dct))
    pieces = assemble(cfg, source.d_in, devices=jax.devices()[: data * dct])
    b_dec = np.zeros(source.d_in, np.float32) if seed_b_dec is None else seed_b_dec
    scale, whitening = 1.0, None
    if trainer_init:
        b_dec, scale, whitening = input_statistics(source, cfg, pieces.arch)
    state = create_state(pieces.arch, pieces.optimizer, source.d_in, cfg.sae.d_sae, pieces.mesh,
                         cfg.seed, b_dec, scale, whitening)
    step = make_train_step(cfg, pieces.arch, pieces.optimizer, pieces.mesh, pieces.shardings)
    loader = BatchLoader(source, cfg.data.batch_size, cfg.data.seed, batch_sharding(pieces.mesh))
    metrics = None
    for t in range(steps):
        state, metrics = step(state, loader.device_batch(t))
    return state, jax.device_get(metrics), pieces
