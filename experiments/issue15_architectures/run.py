"""Issue 15: the new architectures on SmolLM2-135M-Instruct activations (the demo's data and budget).

One extraction pass writes the layer-9 resid, mlp_in and mlp_out stores (1,200 Wikipedia
paragraphs, 64 tokens). On resid: TopK, BatchTopK, Matryoshka BatchTopK (k 32) and Gated
(an L1 sweep) with F 2048, 600 steps of 1,024 tokens; held-out FVU and L0 on the last 10% of
rows. On mlp_in -> mlp_out: transcoder and skip-transcoder, held-out FVU of mlp_out, and the
MLP of block 9 replaced by each in the model (CE / KL on held-out paragraphs).

    python experiments/issue15_architectures/run.py [WORK_DIR]     # results.json beside this file
    python experiments/issue15_architectures/run.py WORK_DIR --only gated --l1 0.03 [--steps 200]

``--only gated --l1 X`` trains one Gated SAE on the resid store (extracting only if WORK_DIR has
none) and merges its held-out FVU/L0 into results.json as ``gated_l1_X`` (``gated_l1_X_steps_N``
when ``--steps`` shortens the run: the matched-L0 bisection).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from sae_jax.config import CheckpointConfig, DataConfig, LogConfig, OptimConfig, SAEConfig, TrainConfig
from sae_jax.data.open import held_out_start_row
from sae_jax.data.store import open_store
from sae_jax.export import load_sae
from sae_jax.lm.extract import ExtractConfig, run_extract
from sae_jax.trainer import train

LAYER, MODEL = 9, "smollm2-135m-instruct"
HERE = Path(__file__).parent


def held_out_metrics(sae, x, y=None):
    """FVU (of y for transcoders, skip term included) and L0 on held-out rows."""
    h = sae.encode(x)
    y = x if y is None else y
    y_hat = sae(x) if y is not x else sae.decode(h)
    return {"fvu": float(((y - y_hat) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()),
            "l0": float((h != 0).sum(1).mean()), "dead_frac_heldout": float((h == 0).all(0).mean())}


def extract(work: Path, hooks=("resid", "mlp_in", "mlp_out")) -> None:
    """The demo's extraction (resumes; a no-op when the store is complete)."""
    run_extract(ExtractConfig(model=MODEL, out=str(work / "store"), text="wikipedia", max_texts=1200,
                              layers=(LAYER,), hooks=hooks, context_length=64))


def gated(sparsity_coef: float, steps: int = 600, seed: int = 0) -> SAEConfig:
    """The Gated SAE of this experiment at L1 coefficient ``sparsity_coef`` (warm-up over the first 1/6)."""
    return SAEConfig(architecture="gated", d_sae=2048, sparsity_coef=sparsity_coef,
                     sparsity_warmup_steps=max(steps // 6, 1), dead_tokens=200_000)


def run_one_gated(work: Path, sparsity_coef: float, steps: int = 600) -> dict:
    """One Gated run on the resid store, merged into results.json."""
    store = work / "store" / f"layer{LAYER}_resid"
    if not store.exists():
        extract(work, hooks=("resid",))
    name = f"gated_l1_{sparsity_coef:g}" + ("" if steps == 600 else f"_steps_{steps}")
    t = time.perf_counter()
    result = train(TrainConfig(run_dir=str(work / name), data=DataConfig(store=str(store), batch_size=1024),
                               sae=gated(sparsity_coef, steps), steps=steps, optim=OptimConfig(warmup_steps=50),
                               checkpoint=CheckpointConfig(every=10**6, resume=False),
                               log=LogConfig(progress=False)))
    src = open_store(str(store))
    held = src.read(np.arange(held_out_start_row(src.n_rows, 0.1), src.n_rows))
    m = held_out_metrics(load_sae(result.export_dir), held) | {
        "train_s": time.perf_counter() - t, "steps": steps, "export": str(result.export_dir)}
    path = HERE / "results.json"
    out = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    out["runs"][name] = m
    path.write_text(json.dumps(out, indent=2))
    print(name, m, flush=True)
    return m


def main(work: Path) -> dict:
    t0 = time.perf_counter()
    extract(work)
    stores = {h: str(work / "store" / f"layer{LAYER}_{h}") for h in ("resid", "mlp_in", "mlp_out")}
    src = {h: open_store(p) for h, p in stores.items()}
    n = src["resid"].n_rows
    rows = np.arange(held_out_start_row(n, 0.1), n)
    held = {h: s.read(rows) for h, s in src.items()}
    out = {"n_rows": n, "heldout_rows": len(rows), "extract_s": time.perf_counter() - t0, "runs": {}}
    common = dict(steps=600, optim=OptimConfig(warmup_steps=50), checkpoint=CheckpointConfig(every=10**6),
                  log=LogConfig(progress=False))
    runs = {
        "topk": (SAEConfig(architecture="topk", d_sae=2048, k=32, dead_tokens=200_000), "resid"),
        "batchtopk": (SAEConfig(architecture="batchtopk", d_sae=2048, k=32, dead_tokens=200_000), "resid"),
        "matryoshka_batchtopk": (SAEConfig(architecture="matryoshka_batchtopk", d_sae=2048, k=32,
                                           dead_tokens=200_000), "resid"),
        **{f"gated_l1_{c}": (gated(c), "resid") for c in (0.003, 0.01)},
        **{f"{a}_l1_{c}": (SAEConfig(architecture=a, d_sae=2048, sparsity_coef=c, sparsity_warmup_steps=100,
                                     dead_tokens=200_000), "transcoder")
           for a in ("transcoder", "skip_transcoder") for c in (0.003,)},
    }
    for name, (sae_cfg, data) in runs.items():
        t = time.perf_counter()
        dcfg = (DataConfig(store=stores["resid"], batch_size=1024) if data == "resid" else
                DataConfig(store=stores["mlp_in"], target=stores["mlp_out"], batch_size=1024))
        result = train(TrainConfig(run_dir=str(work / name), data=dcfg, sae=sae_cfg, **common))
        sae = load_sae(result.export_dir)
        m = (held_out_metrics(sae, held["resid"]) if data == "resid"
             else held_out_metrics(sae, held["mlp_in"], held["mlp_out"]))
        m |= {"train_s": time.perf_counter() - t, "export": str(result.export_dir)}
        out["runs"][name] = m
        print(name, m, flush=True)
        (HERE / "results.json").write_text(json.dumps(out, indent=2))
    # the MLP of block 9 replaced by each transcoder, on held-out paragraphs
    from sae_jax.evals.provenance import heldout_docs, store_provenance
    from sae_jax.evals.run import token_batches
    from sae_jax.evals.splice import evaluate_transcoder_splice
    from sae_jax.lm.models import load_model

    prov = store_provenance(src["mlp_in"])
    docs = heldout_docs(prov.doc_ids, rows)[:32]
    model, tok = load_model(MODEL)
    batches = token_batches(tok, [prov.texts[i] for i in docs], prov.context_length)
    for name in [r for r in runs if "transcoder" in r]:
        t = time.perf_counter()
        m = evaluate_transcoder_splice(model, load_sae(out["runs"][name]["export"]), batches, LAYER,
                                       tok.all_special_ids)
        out["runs"][name]["splice"] = m.to_dict() | {"splice_s": time.perf_counter() - t}
        print(name, "splice", m.to_dict(), flush=True)
        (HERE / "results.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", nargs="?", default="runs/issue15_architectures")
    ap.add_argument("--only", choices=["gated"], help="train only this architecture (one run)")
    ap.add_argument("--l1", type=float, default=0.01, help="--only gated: the L1 coefficient")
    ap.add_argument("--steps", type=int, default=600, help="--only gated: steps (shorter for a bisection)")
    a = ap.parse_args()
    if a.only == "gated":
        run_one_gated(Path(a.work), a.l1, a.steps)
    else:
        main(Path(a.work))
