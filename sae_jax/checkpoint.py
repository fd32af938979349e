"""Orbax checkpoints of the train state: async saves, keep-last-N, sharded restore.

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a
half-written checkpoint is never listed as a step to restore.
"""
from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp

from sae_jax.config import CheckpointConfig


class Checkpointer:
    def __init__(self, directory: str, cfg: CheckpointConfig):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep, create=True, enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any) -> None:
        """Start an async save of ``state`` as ``step`` (returns once the arrays are copied)."""
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def restore(self, step: int, abstract_state: Any) -> Any:
        """The state saved at ``step``, placed with the shardings carried by ``abstract_state``."""
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
