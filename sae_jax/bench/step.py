"""Build the real jitted train step (the same code `sae-jax train` runs) for a config."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sae_jax.assemble import assemble
from sae_jax.config import TrainConfig
from sae_jax.kernels.batchtopk_sae import SparseBatchTopKSAE
from sae_jax.kernels.topk_sae import SparseTopKSAE
from sae_jax.mesh import batch_sharding
from sae_jax.train_state import create_state
from sae_jax.train_step import make_train_step


@dataclasses.dataclass(frozen=True)
class BuiltStep:
    step: Any
    """The jitted, state-donating train step."""
    pieces: Any
    """sae_jax.assemble.Pieces (mesh, arch, optimizer, abstract state, shardings)."""
    impl: str
    """'dense' or 'sparse': the kernels the architecture actually uses."""


def build_step(cfg: TrainConfig, d_in: int, devices: list | None = None) -> BuiltStep:
    """The same step `sae-jax train` builds (make_architecture applies sae.impl)."""
    pieces = assemble(cfg, d_in, devices)
    impl = "sparse" if isinstance(pieces.arch, (SparseTopKSAE, SparseBatchTopKSAE)) else "dense"
    step = make_train_step(cfg, pieces.arch, pieces.optimizer, pieces.mesh, pieces.shardings)
    return BuiltStep(step, pieces, impl)


def init_state(built: BuiltStep, cfg: TrainConfig, d_in: int):
    p = built.pieces
    return create_state(p.arch, p.optimizer, d_in, cfg.sae.d_sae, p.mesh, cfg.seed,
                        np.zeros((d_in,), np.float32), 1.0)


def synthetic_activations(n_rows: int, d_in: int, seed: int = 0, n_atoms: int | None = None,
                          active: int = 16) -> np.ndarray:
    """[n_rows, d_in] float32: sparse nonnegative combinations of random unit atoms + noise
    (LM-activation-like: a few strong directions per token)."""
    rng = np.random.default_rng(seed)
    n_atoms = n_atoms or 4 * d_in
    atoms = rng.standard_normal((n_atoms, d_in)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    idx = rng.integers(0, n_atoms, (n_rows, active))
    coef = rng.exponential(1.0, (n_rows, active)).astype(np.float32)
    x = np.einsum("na,nad->nd", coef, atoms[idx], optimize=True)
    x += 0.05 * rng.standard_normal((n_rows, d_in)).astype(np.float32)
    return x.astype(np.float32)


def device_batches(built: BuiltStep, x: np.ndarray, batch: int) -> list[jax.Array]:
    """The rows of x cut into batches, placed with the batch sharding."""
    sh = batch_sharding(built.pieces.mesh)
    return [jax.device_put(jnp.asarray(x[i:i + batch]), sh) for i in range(0, len(x) - batch + 1, batch)]
