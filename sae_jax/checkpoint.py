"""Orbax checkpoints of the train state: async saves, keep-last-N, sharded restore, and proof
that what is restored is what was saved.

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a
half-written checkpoint is never listed as a step to restore; leftover temporary folders are
removed at start. A step folder that lost its files (a run killed while orbax deleted an old
checkpoint) is moved aside at start. Every save first records a bit-exact fingerprint of the
state (``sae_jax.fingerprint``) beside the checkpoints; ``restore_latest`` checks it, and the
parameters' finiteness, and falls back to the newest intact checkpoint when the latest is damaged.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from sae_jax.config import CheckpointConfig
from sae_jax.errors import CheckpointError
from sae_jax.fingerprint import tree_fingerprint

# Files every finished orbax step folder holds (StandardSave under the default item name).
_COMPLETE = ("_CHECKPOINT_METADATA", "default/_METADATA")


def all_finite(tree) -> bool:
    """True when no array leaf of ``tree`` holds NaN/Inf (what a checkpoint may hold as parameters)."""
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))


def _quiet_abandoned_reads() -> None:
    """When orbax's restore fails on a damaged file, tensorstore later completes the abandoned reads
    on the closed event loop; each reports "Event loop is closed" through sys.unraisablehook. Those
    are noise once the failure is handled: drop them (every other report still goes through)."""
    previous = sys.unraisablehook
    if getattr(previous, "_sae_jax_quiet", False):
        return

    def hook(unraisable):
        if unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed":
            return
        previous(unraisable)

    hook._sae_jax_quiet = True
    sys.unraisablehook = hook


class Checkpointer:
    def __init__(self, directory: str, cfg: CheckpointConfig):
        if cfg.keep < 1:
            raise CheckpointError(f"checkpoint.keep={cfg.keep} would keep no checkpoint to resume from; use >= 1")
        self.directory = Path(os.path.abspath(directory))
        self.fingerprints_path = self.directory.with_name(self.directory.name + ".fingerprints.json")
        self.damaged_dir = self.directory.with_name(self.directory.name + ".damaged")
        if jax.process_index() == 0 and self.directory.is_dir():
            for child in self.directory.iterdir():
                if child.name.isdigit() and not all((child / f).exists() for f in _COMPLETE):
                    target = self._set_aside(int(child.name))
                    print(f"warning: checkpoint step {child.name} is incomplete (a run was killed while orbax "
                          f"wrote or deleted it); moved it to {target}", file=sys.stderr)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep, create=True, enable_async_checkpointing=True, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(str(self.directory), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        """Record the state's fingerprint, then start an async save of it as ``step``."""
        prints = tree_fingerprint(state)
        if jax.process_index() == 0:
            table = self._fingerprints()
            table[str(step)] = prints
            tmp = self.fingerprints_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(table))
            os.replace(tmp, self.fingerprints_path)  # never a half-written table
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def restore(self, step: int, abstract_state: Any) -> Any:
        """The state saved at ``step``, placed with the shardings carried by ``abstract_state``."""
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def damage(self, step: int, state: Any, params: Any) -> str | None:
        """Why the restored ``state`` is not the one saved at ``step`` (None when it is)."""
        if not all_finite(params):
            return "its parameters hold NaN/Inf"
        expected = self._fingerprints().get(str(step))
        if expected is None:
            return None  # saved before fingerprints were recorded: nothing to compare with
        actual = tree_fingerprint(state)
        changed = [name for name, value in expected.items() if actual.get(name, value) != value]
        return f"its contents differ from what was saved ({', '.join(changed[:3])})" if changed else None

    def restore_latest(self, restore: Callable[[int], Any], params_of: Callable[[Any], Any]) -> tuple[Any, int]:
        """(state, step) of the newest intact checkpoint. ``restore(step)`` reads one; a damaged
        newer one is moved to ``<dir>.damaged/`` (never deleted) and the fallback is reported."""
        problems: list[tuple[int, str]] = []
        _quiet_abandoned_reads()  # installed before: a failing read reports them while it fails
        for step in reversed(self.all_steps()):
            try:
                state = restore(step)
                why = self.damage(step, state, params_of(state))
            except Exception as err:  # any unreadable file: try an older checkpoint
                why = f"cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
            if why is None:
                for bad, _ in problems:
                    self._set_aside(bad)
                if problems:
                    self.manager.reload()  # forget the steps moved away (their numbers are saved again)
                if problems:
                    print(f"warning: checkpoint step {problems[0][0]}: {problems[0][1]}; moved to {self.damaged_dir}; "
                          f"resuming from step {step}, the newest intact checkpoint", file=sys.stderr)
                return state, step
            problems.append((step, why))
        detail = "; ".join(f"step {s}: {why}" for s, why in problems)
        raise CheckpointError(f"no checkpoint in {self.directory} can be restored ({detail}); "
                              "start over with a new --run-dir (the damaged checkpoints are left as they are)")

    def _fingerprints(self) -> dict[str, dict[str, str]]:
        try:
            return json.loads(self.fingerprints_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _set_aside(self, step: int) -> Path | None:
        if jax.process_index() != 0:
            return None
        self.damaged_dir.mkdir(exist_ok=True)
        target = self.damaged_dir / str(step)
        n = 1
        while target.exists():
            target, n = self.damaged_dir / f"{step}.{n}", n + 1
        shutil.move(str(self.directory / str(step)), str(target))
        return target

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
