"""ReLU+L1 on real SmolLM2 activations: the preset's λ in the usual units vs the old FVU-unit coefficient.

    python benchmarks/relu_units_smollm2.py STORE [--steps 400] [--d-sae 2048] [--out relu_units.json]

STORE: a SmolLM2-135M residual store from `sae-jax extract` (e.g. experiments/model_diffing's
base/layer6_resid). Prints FVU, L0 and dead fraction on the held-out 10% for each setting.
"""
import argparse
import dataclasses
import json
import tempfile
import time

from sae_jax.config import CheckpointConfig, DataConfig, LogConfig, OptimConfig, presets
from sae_jax.data.open import open_path
from sae_jax.evals.core import evaluate_core, split_rows
from sae_jax.export import load_sae
from sae_jax.trainer import train


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--d-sae", type=int, default=2048)
    ap.add_argument("--out", default="relu_units.json")
    args = ap.parse_args()
    base = presets()["relu"][1]
    settings = {
        "preset: MSE units, lambda=5 (SAELens/Anthropic)": {},
        "preset, lambda=1": {"sparsity_coef": 1.0},
        "preset, lambda=20": {"sparsity_coef": 20.0},
        "old: FVU units, coef=5 (unit-norm decoder)": {"recon_loss": "fvu", "decoder_unit_norm": True},
    }
    src = open_path(args.store, store=True)
    rows = split_rows(src.n_rows, 0.9, 1.0)
    out = {"store": args.store, "steps": args.steps, "d_sae": args.d_sae, "results": {}}
    for name, over in settings.items():
        with tempfile.TemporaryDirectory() as tmp:
            cfg = dataclasses.replace(
                base, run_dir=tmp, steps=args.steps,
                data=DataConfig(store=args.store, batch_size=1024),
                sae=dataclasses.replace(base.sae, d_sae=args.d_sae, sparsity_warmup_steps=args.steps // 4, **over),
                optim=OptimConfig(warmup_steps=args.steps // 10), checkpoint=CheckpointConfig(every=args.steps),
                log=LogConfig(every=args.steps, progress=False))
            t0 = time.perf_counter()
            r = train(cfg)
            m = evaluate_core(load_sae(r.export_dir), src, rows)
            out["results"][name] = {"fvu": m.fvu, "l0": m.l0, "dead_fraction": m.dead_fraction,
                                    "wall_s": time.perf_counter() - t0}
            print(f"{name}: FVU {m.fvu:.3f}  L0 {m.l0:.1f}  dead {100 * m.dead_fraction:.1f}%", flush=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
