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
    """Initialise JAX's multi-process runtime once if the environment describes a cluster.

    Explicit: JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES, JAX_PROCESS_ID (any machine).
    Otherwise JAX's own detection (SLURM, Open MPI, Cloud TPU) fills them in.
    """
    if not _wants_distributed() or jax.distributed.is_initialized():
        return False
    explicit = {}
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        missing = [v for v in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if not os.environ.get(v)]
        if missing:
            raise RuntimeError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not; set all three "
                               "(or none, on SLURM/MPI/Cloud TPU, to let JAX detect them)")
        explicit = {"coordinator_address": os.environ["JAX_COORDINATOR_ADDRESS"],
                    "num_processes": int(os.environ["JAX_NUM_PROCESSES"]),
                    "process_id": int(os.environ["JAX_PROCESS_ID"])}
    jax.distributed.initialize(**explicit)
    return True
