"""Export a run's latest checkpoint (e.g. of an interrupted run) in SAELens format."""
from __future__ import annotations

import json
from pathlib import Path

from sae_jax.assemble import assemble
from sae_jax.checkpoint import Checkpointer
from sae_jax.config import TrainConfig
from sae_jax.data.open import open_source
from sae_jax.export import export_state


def export_run(run_dir: str, out: str | None = None) -> Path:
    run = Path(run_dir)
    if not (run / "config.json").exists():
        raise FileNotFoundError(f"{run} has no config.json: is it a sae-jax run directory?")
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    pieces = assemble(cfg, open_source(cfg.data).d_in)
    ckpt = Checkpointer(str(run / "checkpoints"), cfg.checkpoint)
    step = ckpt.latest_step()
    if step is None:
        raise FileNotFoundError(f"{run}/checkpoints holds no complete checkpoint")
    state = ckpt.restore(step, pieces.abstract)
    ckpt.close()
    return export_state(Path(out) if out else run / "export", pieces.arch, state,
                        {"config": cfg.to_dict(), "steps": step},
                        layer_norm=cfg.data.normalize == "layernorm")
