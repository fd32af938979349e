"""Export a run's latest checkpoint (e.g. of an interrupted run) in SAELens format."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from sae_jax.assemble import assemble
from sae_jax.checkpoint import Checkpointer
from sae_jax.config import TrainConfig
from sae_jax.data.open import open_source
from sae_jax.export import export_state
from sae_jax.train_state import restore_state
from sae_jax.trainer import IN_MEMORY


def export_run(run_dir: str, out: str | None = None, unit_norm: bool = False) -> Path:
    run = Path(run_dir)
    if not (run / "config.json").exists():
        raise FileNotFoundError(f"{run} has no config.json: is it a sae-jax run directory?")
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    width = run / "data_width.json"  # written at the start of every run (also one trained on in-memory rows)
    info = json.loads(width.read_text()) if width.exists() else {"d_in": open_source(cfg.data).d_in}
    pieces = assemble(cfg, info["d_in"])
    ckpt = Checkpointer(str(run / "checkpoints"), cfg.checkpoint)
    if ckpt.latest_step() is None:
        raise FileNotFoundError(f"{run}/checkpoints holds no complete checkpoint")
    state, step = ckpt.restore_latest(lambda s: restore_state(ckpt, s, pieces.abstract), lambda st: st.params)
    ckpt.close()
    if step < cfg.steps:
        print(f"note: exporting step {step} of a run whose target is {cfg.steps} steps (unfinished)", file=sys.stderr)
    return export_state(Path(out) if out else run / "export", pieces.arch, state,
                        {"config": cfg.to_dict(), "steps": step, "target_steps": cfg.steps}
                        | (IN_MEMORY if info.get("in_memory_source") else {}),
                        layer_norm=cfg.data.normalize == "layernorm", unit_norm=unit_norm)
