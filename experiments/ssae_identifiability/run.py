"""SSAE identifiability on synthetic multi-concept shifts, over 3 seeds, with baselines.

Data: Δz = Σ_j c_j a_j + noise (``sae_jax.data.shifts.multi_concept_shifts``), unit concept
directions a_j with pairwise cosine ≈ --concept-cos, each concept shifting with probability
--p-active, signed magnitudes U[0.5, 1.5]. One data set; SSAEs trained from 3 init seeds
(and 3 batch orders). The constraint target is the ground-truth level Σ|c̃|/(B·F) of the true
code in the SSAE's LayerNorm-ed input space (the "target sparsity").

Reports, per seed: mean matched |cos| of decoder rows vs the true directions (Hungarian),
share above 0.9, MCC of codes vs true codes (held-out rows), achieved Σ|h|/(B·F) on held-out
rows vs the target, the final multiplier; across seeds: MCC between the seeds' codes.
Baselines: the same model with a fixed L1 coefficient (λ*/10 and 10λ*, λ* = the multiplier
the dual found), and PCA. Every SSAE is trained by the core trainer (``sae-jax train ssae``'s
loop, on all local devices) and its codes come from its SAELens-format export.

    python experiments/ssae_identifiability/run.py            # writes results.json beside it
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import pathlib
import time

import tempfile

import jax
import numpy as np

from sae_jax.baselines.pca import fit_pca
from sae_jax.config import (CheckpointConfig, DataConfig, DualConfig, LogConfig, OptimConfig, SAEConfig, SSAEConfig,
                            TrainConfig)
from sae_jax.data.shifts import multi_concept_shifts
from sae_jax.evals.identifiability import match_directions, mcc
from sae_jax.export import load_sae
from sae_jax.trainer import train
from sae_jax.whitening import Whitening, fit_zca


def model_space(x: np.ndarray, codes: np.ndarray, directions: np.ndarray, whitening: Whitening | None,
                input_norm: str, eps: float = 1e-5):
    """(rows, concept directions, true codes) as the SSAE sees them: after optional whitening
    (x -> (x - μ) W, a_j -> a_j W) and its input normalisation. LayerNorm centres each row (the
    directions become a_j − mean(a_j)) and divides it by σ_row + eps, which rescales the codes."""
    x = x.astype(np.float64)
    d = directions.astype(np.float64)
    if whitening is not None:
        x, d = whitening.apply(x).astype(np.float64), d @ whitening.matrix
    if input_norm == "layernorm":
        d = d - d.mean(1, keepdims=True)
        scale = 1.0 / (x.std(1, ddof=1) + eps)
    elif input_norm == "none":
        scale = np.ones(len(x))
    else:
        raise ValueError("the experiment handles input_norm 'layernorm' and 'none'")
    return x.astype(np.float32), d, codes * np.linalg.norm(d, axis=1) * scale[:, None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--n-concepts", type=int, default=16)
    ap.add_argument("--d-sae", type=int, default=0, help="latents (0 = n_concepts)")
    ap.add_argument("--p-active", type=float, default=0.15)
    ap.add_argument("--concept-cos", type=float, default=0.2)
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--n-rows", type=int, default=65536)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dual-lr", type=float, default=1e-2)
    ap.add_argument("--dual-optimizer", choices=["sgd", "adam"], default="sgd")
    ap.add_argument("--scheme", choices=["simultaneous", "alternating", "extragradient"], default="simultaneous")
    ap.add_argument("--whiten", action="store_true", help="ZCA-whiten the data (fitted on the training rows)")
    ap.add_argument("--whiten-eps", type=float, default=1e-5, help="eigenvalue floor of the whitening")
    ap.add_argument("--input-norm", choices=["layernorm", "none"], default="layernorm")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(pathlib.Path(__file__).with_name("results.json")))
    args = ap.parse_args()

    d_sae = args.d_sae or args.n_concepts
    gen = dict(d=args.d, n_concepts=args.n_concepts, p_active=args.p_active, noise=args.noise,
               concept_cos=args.concept_cos, seed=123)
    src = multi_concept_shifts(args.n_rows, **gen)
    A = src.metadata["directions"]
    held = multi_concept_shifts(8192, **(gen | {"seed": 456}), directions=A)  # held-out rows, same concepts
    x_held, held_codes = held.read(np.arange(held.n_rows)), held.metadata["codes"]
    x_train = src.read(np.arange(src.n_rows))
    work = pathlib.Path(tempfile.mkdtemp(prefix="ssae_identifiability_"))
    base = TrainConfig(
        steps=args.steps,
        data=DataConfig(batch_size=args.batch_size, normalize="none", holdout_fraction=0.0, whiten=args.whiten,
                        whiten_eps=args.whiten_eps, n_stat_rows=args.n_rows),
        sae=SAEConfig(architecture="ssae", d_sae=d_sae,
                      ssae=SSAEConfig(target=1.0, warmup=args.steps // 10, schedule=args.steps // 4,
                                      input_norm=args.input_norm)),
        optim=OptimConfig(lr=args.lr, warmup_steps=0),
        dual=DualConfig(lr=args.dual_lr, optimizer=args.dual_optimizer, scheme=args.scheme),
        checkpoint=CheckpointConfig(every=10**9), log=LogConfig(every=max(args.steps // 20, 1), progress=False))

    def run(name, cfg, target):
        cfg = dataclasses.replace(cfg, run_dir=str(work / name), sae=dataclasses.replace(
            cfg.sae, ssae=dataclasses.replace(cfg.sae.ssae, target=target)))
        return train(cfg, source=src)

    def whitening_of(result) -> Whitening | None:
        w = jax.device_get(result.state.whitening)
        return Whitening.from_arrays(w) if w else None

    # With every row in the statistics sample the trainer fits this same whitening for every seed.
    whitening = fit_zca(x_train, eps=args.whiten_eps) if args.whiten else None
    _, A_m, train_codes_m = model_space(x_train, src.metadata["codes"], A, whitening, args.input_norm)
    _, _, held_codes_m = model_space(x_held, held_codes, A, whitening, args.input_norm)
    target = float(np.abs(train_codes_m).sum() / (len(x_train) * d_sae))  # the true code's Σ|h|/(B·F)
    print(f"data: d={args.d} concepts={args.n_concepts} d_sae={d_sae} p={args.p_active} "
          f"mean |cos| between true directions={np.abs(A @ A.T)[np.triu_indices(len(A), 1)].mean():.3f} "
          f"target level={target:.4f}")

    def evaluate(result, name):
        W = np.asarray(result.state.params["W_dec"])
        if whitening is not None:  # the trainer's whitening (fitted on all rows) is the one used for the target
            np.testing.assert_allclose(whitening_of(result).matrix, whitening.matrix, rtol=1e-4, atol=1e-4)
        codes = load_sae(result.export_dir).encode(x_held)  # the exported SAE on raw held-out rows
        cos_ln, share_ln, _ = match_directions(A_m, W)
        W_raw = W @ whitening.inverse if whitening is not None else W  # decoder rows in raw activation space
        cos_raw, _, _ = match_directions(A, W_raw)
        achieved = float(np.mean(np.abs(codes)))
        last = [json.loads(line) for line in (pathlib.Path(result.run_dir) / "metrics.jsonl").open()][-1]
        row = {"name": name, "mean_cos": cos_ln, "share_above_0.9": share_ln, "mean_cos_raw_directions": cos_raw,
               "mcc_vs_truth": mcc(held_codes, codes)[0], "mcc_vs_truth_ln": mcc(held_codes_m, codes)[0],
               "achieved_level": achieved, "target_level": target, "achieved_over_target": achieved / target,
               "multiplier": float(result.state.opt_state.multipliers.ineq[0]), "final_recon": last["recon"]}
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
        return row, codes

    rows, codes = [], {}
    for seed in args.seeds:
        cfg = dataclasses.replace(base, seed=seed, data=dataclasses.replace(base.data, seed=seed))
        t0 = time.time()
        row, codes[seed] = evaluate(run(f"seed{seed}", cfg, target), f"ssae seed={seed}")
        row["seconds"] = time.time() - t0
        rows.append(row)

    cross = {f"{a}-{b}": mcc(codes[a], codes[b])[0] for a, b in itertools.combinations(args.seeds, 2)}
    lam = float(np.mean([r["multiplier"] for r in rows]))
    baselines = []
    for i, fixed in enumerate((lam / 10, lam * 10)):
        cfg = dataclasses.replace(base, dual=dataclasses.replace(base.dual, fixed_multiplier=fixed),
                                  sae=dataclasses.replace(base.sae, ssae=dataclasses.replace(base.sae.ssae, warmup=0)))
        row, _ = evaluate(run(f"l1-{i}", cfg, target), f"L1 penalty λ={fixed:.4g}")
        baselines.append(row)
    if d_sae <= args.d:
        pca = fit_pca(x_train, d_sae)
        pca_cos, pca_share, _ = match_directions(A, pca["W_dec"])
        pca_codes = (x_held - pca["b_dec"]) @ pca["W_enc"]
        baselines.append({"name": "PCA", "mean_cos_raw_directions": pca_cos, "share_above_0.9_raw": pca_share,
                          "mcc_vs_truth": mcc(held_codes, pca_codes)[0], "mcc_vs_truth_ln": mcc(held_codes_m, pca_codes)[0]})
    else:
        baselines.append({"name": "PCA", "skipped": f"d_sae={d_sae} > d={args.d}: PCA has at most d directions"})
    print(json.dumps(baselines[-1]))

    summary = {
        "ssae_mean_cos": float(np.mean([r["mean_cos"] for r in rows])),
        "ssae_mcc_vs_truth": float(np.mean([r["mcc_vs_truth"] for r in rows])),
        "ssae_mcc_vs_truth_ln": float(np.mean([r["mcc_vs_truth_ln"] for r in rows])),
        "ssae_mcc_across_seeds": float(np.mean(list(cross.values()))),
        "ssae_achieved_over_target": [r["achieved_over_target"] for r in rows],
    }
    print("summary", json.dumps(summary, indent=1))
    out = {"args": vars(args), "target_level": target, "ssae": rows, "cross_seed_mcc": cross,
           "baselines": baselines, "summary": summary, "devices": jax.device_count()}
    pathlib.Path(args.out).write_text(json.dumps(out, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
