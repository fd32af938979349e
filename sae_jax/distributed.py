"""Multi-host start-up: ``jax.distributed.initialize()`` when the environment asks for it."""
from __future__ import annotations

import os

import jax

# Variables that mean "this process is one of several" (explicit JAX, SLURM, Open MPI, Cloud TPU).
_MULTI_PROCESS_HINTS = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def _wants_distributed() -> bool:
    if any(os.environ.get(name) for name in _MULTI_PROCESS_HINTS):
        return True
    for size_var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if int(os.environ.get(size_var, "1") or 1) > 1:
            return True
    return False


def maybe_initialize() -> bool:
    """Initialise JAX's multi-process runtime once if the environment describes a cluster."""
    if not _wants_distributed() or jax.distributed.is_initialized():
        return False
    jax.distributed.initialize()
    return True
