"""Assemble the pieces of a run from its config: mesh, architecture, optimizer, state layout."""
from __future__ import annotations

import dataclasses
from typing import Any

from jax.sharding import Mesh

from sae_jax.config import TrainConfig
from sae_jax.mesh import make_mesh
from sae_jax.optim import make_optimizer
from sae_jax.sae import make_architecture
from sae_jax.train_state import abstract_state


@dataclasses.dataclass(frozen=True)
class Pieces:
    mesh: Mesh
    arch: Any
    optimizer: Any
    """An optax transformation, or a BoundConstrainedOptimizer for constrained training."""
    abstract: Any
    """Abstract TrainState (ShapeDtypeStructs carrying their shardings)."""
    shardings: Any


def assemble(cfg: TrainConfig, d_in: int, devices: list | None = None) -> Pieces:
    mesh = make_mesh(cfg.mesh, devices)
    arch = make_architecture(cfg.sae, d_in, mesh)
    optimizer = make_optimizer(cfg)
    abstract, shardings = abstract_state(arch, optimizer, d_in, cfg.sae.d_sae, mesh, whiten=cfg.data.whiten)
    return Pieces(mesh, arch, optimizer, abstract, shardings)
