"""Shift autoencoders on real concept-edited sentence pairs, with a steering test (issue 12 item 1).

Question: trained on Δz = z(s2) − z(s1) of an LM for sentence pairs whose edits are known (pronoun
gender, tense, negation, number, one sentiment word), does a sparse shift autoencoder (SSAE, Joshi et
al. 2025) find one latent per concept — better than TopK / ReLU / JumpReLU SAEs and PCA on the same
Δz — and do the learned directions steer the LM toward s2?

Pipeline (each stage through the library):
1. pairs: ``sae_jax.data.concept_pairs`` edits sentences of the offline Wikipedia leads
   (single-concept pairs, balanced per concept, and 2–3-concept pairs with multi-hot labels);
2. Δz: ``sae_jax.lm.extract.run_extract(mode='pairs')`` — mean-pooled residual stream at one mid
   layer (mean pooling: an edit anywhere in the sentence moves the mean; the last token would see
   it only through attention), the concept labels kept in the store's labels.json;
3. training: the core trainer on the same train split for every method and seed — SSAE with the
   original method's options (input LayerNorm, LayerNorm on the code, relative loss, warm-up then
   linear schedule of the Σ|h|/(B·F) constraint to the target), TopK, ReLU+L1, JumpReLU, and PCA;
4. scores on held-out pairs: MCC of codes against the concept labels (single- and multi-concept
   pairs) with RDC next to it, seed-vs-seed MCC, per-concept k-sparse probe accuracy vs k;
5. steering: each method's latent matched to a concept (on the train split), its decoder direction
   (sign of its correlation with the label) scaled to the mean ‖Δz‖ of that concept's train pairs,
   added at every real token position of held-out s1 at the layer; the score is the mean over
   positions of the next-token log-odds of s2-side vs s1-side words (she/he, is/was, ...), compared
   with a random direction of the same norm, the oracle mean-Δz direction and the other concepts'
   scores; bootstrap CIs over texts.

    python experiments/concept_shifts/run.py --preset smoke|cpu|full [--out DIR] [--stage all|readme]
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import pathlib
import subprocess
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent

PRESETS = {
    # tiny random Llama, a few hundred pairs: proves the wiring, not the science (CI runs it)
    "smoke": dict(model="tiny", layer=1, context_length=128, n_single=150, n_multi=40, d_sae=8, k=2,
                  steps=40, batch=64, seeds=(0, 1, 2), relu_coef=0.01, jumprelu_coef=0.01, steer_texts=6,
                  alphas=(1.0,), n_boot=200, ks=(1, 2, 4), torch_threads=1,
                  methods=("ssae", "topk", "relu", "jumprelu", "pca")),
    # the study on a 2-core CPU: SmolLM2-135M-Instruct (30 blocks), a mid layer
    "cpu": dict(model="smollm2-135m-instruct", layer=15, context_length=64, n_single=2500, n_multi=500,
                d_sae=16, k=3, steps=2000, batch=256, seeds=(0, 1, 2), relu_coef=0.01, jumprelu_coef=0.01,
                steer_texts=48, alphas=(1.0, 4.0), n_boot=2000, ks=(1, 2, 4, 8, 16), torch_threads=2,
                methods=("ssae", "ssae_nocodeln", "topk", "relu", "jumprelu", "pca")),
    # a larger model and more pairs (GPU host with the weights); documented, not run here
    "full": dict(model="HuggingFaceTB/SmolLM2-1.7B-Instruct", layer=12, context_length=64, n_single=10000,
                 n_multi=3000, d_sae=32, k=3, steps=20000, batch=1024, seeds=(0, 1, 2, 3, 4), relu_coef=0.01,
                 jumprelu_coef=0.01, steer_texts=200, alphas=(1.0, 4.0), n_boot=5000, ks=(1, 2, 4, 8, 16, 32),
                 torch_threads=None, methods=("ssae", "ssae_nocodeln", "topk", "relu", "jumprelu", "pca")),
}

# Next-token words on the s2 side (positive) and the s1 side (negative) of each edit.
SCORE_WORDS = {
    "gender": ([" she", " her", " herself", " She", " Her"], [" he", " his", " him", " himself", " He", " His"]),
    "tense": ([" is", " are"], [" was", " were"]),
    "negation": ([" not", " never"], [" a", " an", " the"]),
    "number": ([" two", " several", " many"], [" a", " an", " one"]),
    "sentiment": ([" bad", " worst", " worse", " poor", " negative", " weak"],
                  [" good", " best", " better", " great", " positive", " strong"]),
}
SMOKE_SENTENCES = [  # used only when the Wikipedia package is missing (smoke preset)
    f"In {y} {who} was a {adj} player for a team in {city}, and {p} brother was one too."
    for y, who, adj, city, p in itertools.product(range(1990, 2000), ("he", "John"), ("good", "young"),
                                                  ("Rome", "Paris", "Oslo"), ("his",))
]


def log(msg):
    print(msg, flush=True)


def commit_hash() -> str:
    try:
        return subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


# -- 1. pairs --------------------------------------------------------------------------------
def stage_pairs(p, out):
    from sae_jax.data import concept_pairs as cp

    try:
        from sae_jax.data.text import wikipedia

        sentences, source = cp.split_sentences(wikipedia().texts), "wikipedia leads"
    except FileNotFoundError:
        if p["model"] != "tiny":
            raise
        sentences, source = SMOKE_SENTENCES, "template sentences (Wikipedia package missing)"
    single, multi = cp.build_pairs(sentences, p["n_single"], p["n_multi"], seed=0)
    pairs = single + multi
    path = out / "pairs.jsonl"
    cp.write_jsonl(pairs, path)
    labels = np.stack([q.label_vector() for q in pairs])
    is_multi = np.array([len(q.concepts) > 1 for q in pairs])
    rng = np.random.default_rng(0)
    test = np.zeros(len(pairs), bool)
    test[rng.permutation(len(pairs))[: len(pairs) // 4]] = True  # 25% held out
    counts = {c: int(labels[~is_multi, i].sum()) for i, c in enumerate(cp.CONCEPTS)}
    log(f"pairs: {len(single)} single ({counts}), {len(multi)} multi-concept, from {len(sentences)} {source} sentences")
    return dict(path=path, pairs=pairs, labels=labels, is_multi=is_multi, test=test, source=source,
                n_sentences=len(sentences), single_counts=counts,
                examples=[dict(s1=q.s1, s2=q.s2, concepts=list(q.concepts)) for q in (single[::max(len(single) // 5, 1)] + multi[:3])])


# -- 2. Δz ---------------------------------------------------------------------------------
def stage_extract(p, out, model_name, pairs):
    from sae_jax.data import store as st
    from sae_jax.lm.extract import ExtractConfig, read_labels, run_extract

    root = out / "store"
    t0 = time.perf_counter()
    summary = run_extract(ExtractConfig(model=model_name, out=str(root), text=str(pairs["path"]), mode="pairs",
                                        pooling="mean", layers=(p["layer"],), hooks=("resid",),
                                        context_length=p["context_length"], batch_size=16,
                                        torch_threads=p["torch_threads"], progress=False, overwrite=True))
    dz = st.open_store(str(root)).read(np.arange(summary["n_rows"]))
    stored = read_labels(str(root))
    expected = ["+".join(sorted(q.concepts)) for q in pairs["pairs"]]
    assert stored == expected, "the store's labels.json must hold each pair's concepts"
    log(f"Δz: {dz.shape} at layer {p['layer']} in {time.perf_counter() - t0:.0f} s")
    return dz, time.perf_counter() - t0


def drop_truncated(pairs, dz):
    """Pairs whose edit lies beyond the context length give Δz = 0 exactly (nothing to learn, and a
    zero row has no relative reconstruction error): dropped everywhere, counted."""
    norms = np.linalg.norm(dz, axis=1)
    keep = norms > 1e-6 * max(float(np.median(norms)), 1e-30)
    pairs = dict(pairs, pairs=[q for q, k in zip(pairs["pairs"], keep) if k], labels=pairs["labels"][keep],
                 is_multi=pairs["is_multi"][keep], test=pairs["test"][keep], n_dropped_zero=int((~keep).sum()))
    log(f"dropped {pairs['n_dropped_zero']} pairs with Δz = 0 (edit truncated away)")
    return pairs, dz[keep]


# -- 3. training ---------------------------------------------------------------------------
def planted_level(x, labels, d_sae):
    """The SSAE's constraint target: Σ|h|/(B·F) of the 'true' code — each row's projection on the
    unit mean-Δz direction of each of its concepts, in the SSAE's LayerNorm-ed input space."""
    from sae_jax.normalization import layer_norm_in

    xn = np.asarray(layer_norm_in(x.astype(np.float32))[0], np.float64)
    total = 0.0
    for i in range(labels.shape[1]):
        rows = labels[:, i] == 1
        if rows.sum() < 2:
            continue
        u = xn[rows].mean(0)
        u /= np.linalg.norm(u)
        total += np.abs(xn[rows] @ u).sum()
    return total / (len(x) * d_sae)


def train_method(p, out, method, seed, x, target):
    from sae_jax.config import (CheckpointConfig, DataConfig, LogConfig, OptimConfig, SAEConfig, SSAEConfig,
                                TrainConfig)
    from sae_jax.data.source import ArraySource
    from sae_jax.export import load_sae
    from sae_jax.trainer import train

    run = out / "runs" / f"{method}_s{seed}"
    steps = p["steps"]
    data = DataConfig(batch_size=min(p["batch"], len(x)), holdout_fraction=0.0, seed=seed, n_stat_rows=len(x))
    if method.startswith("ssae"):
        sae = SAEConfig(architecture="ssae", d_sae=p["d_sae"], ssae=SSAEConfig(
            target=target, warmup=steps // 10, schedule=steps // 2, input_norm="layernorm",
            code_norm="none" if method == "ssae_nocodeln" else "layernorm", loss_type="relative"))
        data = dataclasses.replace(data, normalize="none")
    elif method == "topk":
        sae = SAEConfig(architecture="topk", d_sae=p["d_sae"], k=p["k"], auxk_coef=0.0)
    else:
        sae = SAEConfig(architecture=method, d_sae=p["d_sae"],
                        sparsity_coef=p["relu_coef"] if method == "relu" else p["jumprelu_coef"])
    if not (run / "export" / "cfg.json").exists():
        cfg = TrainConfig(run_dir=str(run), steps=steps, seed=seed, data=data, sae=sae,
                          optim=OptimConfig(lr=1e-3, warmup_steps=min(50, steps // 10)),
                          checkpoint=CheckpointConfig(every=10 ** 9), log=LogConfig(every=max(steps // 10, 1), progress=False))
        train(cfg, source=ArraySource(x.astype(np.float32)))
    return load_sae(run / "export")


def fit_all(p, out, dz, pairs):
    from sae_jax.baselines.pca import fit_pca

    train_rows = ~pairs["test"]
    x = dz[train_rows]
    target = planted_level(x, pairs["labels"][train_rows], p["d_sae"])
    log(f"SSAE target level (planted-truth Σ|h|/(B·F)): {target:.4f}")
    models, seconds, last = {}, {}, {}
    for method in p["methods"]:
        for seed in p["seeds"]:
            t0 = time.perf_counter()
            if method == "pca":
                if seed != p["seeds"][0]:
                    continue  # deterministic: one fit
                pca = fit_pca(x, min(p["d_sae"], x.shape[1]))
                models[(method, seed)] = pca
            else:
                models[(method, seed)] = train_method(p, out, method, seed, x, target)
            seconds[f"{method}_s{seed}"] = time.perf_counter() - t0
            metrics = out / "runs" / f"{method}_s{seed}" / "metrics.jsonl"
            if metrics.exists():  # the trainer's last logged step (SSAE: level, Σ|h|/(B·F), violation)
                last[f"{method}_s{seed}"] = json.loads(metrics.read_text().splitlines()[-1])
            log(f"  {method} seed {seed}: {seconds[f'{method}_s{seed}']:.0f} s")
    return models, target, seconds, last


def encode(model, x):
    if isinstance(model, dict):  # PCA
        return (x - model["b_dec"]) @ model["W_enc"]
    return model.encode(x)


def directions(model):
    from sae_jax.export import decoder_directions

    return np.asarray(model["W_dec"] if isinstance(model, dict) else decoder_directions(model), np.float64)


def fvu(model, x):
    if isinstance(model, dict):
        x_hat = encode(model, x) @ model["W_dec"] + model["b_dec"]
    else:
        x_hat = model(x)
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


# -- 4. scores -------------------------------------------------------------------------------
def stage_scores(p, dz, pairs, models):
    from sae_jax.data.concept_pairs import CONCEPTS
    from sae_jax.evals.identifiability import mcc
    from sae_jax.evals.probing import sparse_probing
    from sae_jax.evals.steering import concept_recovery

    test, labels, multi = pairs["test"], pairs["labels"], pairs["is_multi"]
    concepts = list(CONCEPTS)
    present = [i for i, c in enumerate(concepts) if labels[test & ~multi, i].sum() >= 2]
    cs = [concepts[i] for i in present]
    rows = {}
    for (method, seed), model in models.items():
        codes = encode(model, dz)
        r = {"method": method, "seed": seed, "fvu_test": fvu(model, dz[test]),
             "l0_test": float((np.abs(codes[test]) > 1e-8).sum(1).mean())}
        for name, sel in (("single", test & ~multi), ("multi", test & multi), ("all", test)):
            if sel.sum() > 3:
                r[name] = concept_recovery(labels[sel][:, present], codes[sel], cs)
        # the latent matched to each concept on the train split (used for steering)
        r["train_match"] = concept_recovery(labels[~test][:, present], codes[~test], cs)["per_concept"]
        rows[f"{method}_s{seed}"] = r
        log(f"  {method} s{seed}: MCC single={r.get('single', {}).get('mcc', float('nan')):.3f} "
            f"multi={r.get('multi', {}).get('mcc', float('nan')):.3f} FVU={r['fvu_test']:.3f} L0={r['l0_test']:.1f}")
    cross = {}
    for method in p["methods"]:
        seeds = [s for (m, s) in models if m == method]
        pairs_ = list(itertools.combinations(seeds, 2))
        if pairs_:
            vals = [mcc(encode(models[(method, a)], dz[test]), encode(models[(method, b)], dz[test]))[0]
                    for a, b in pairs_]
            cross[method] = {"mean": float(np.mean(vals)), "values": [float(v) for v in vals]}
    # k-sparse probes: concept c vs rest, on all held-out pairs, raw Δz as the baseline
    probes = {}
    first = {m: models[(m, s)] for (m, s) in models if s == p["seeds"][0]}
    spaces = {"raw Δz": lambda x: x} | {m: (lambda x, mod=mod: encode(mod, x)) for m, mod in first.items()}
    for name, f in spaces.items():
        feats = f(dz)
        probes[name] = {}
        for i, c in zip(present, cs):
            y = labels[:, i]
            ks = [k for k in p["ks"] if k <= feats.shape[1]]
            acc = sparse_probing(feats[~test], y[~test], feats[test], y[test], ks=ks)
            probes[name][c] = {"ks": ks, "accuracy": [acc[k] for k in ks], "majority": float(max(y[test].mean(), 1 - y[test].mean()))}
    return dict(concepts=cs, rows=rows, cross_seed_mcc=cross, probes=probes)


def summarise(p, scores):
    out = {}
    for method in p["methods"]:
        rs = [r for r in scores["rows"].values() if r["method"] == method]
        row = {}
        for part in ("single", "multi", "all"):
            vals = [r[part]["mcc"] for r in rs if part in r]
            rdcs = [r[part]["rdc_matched"] for r in rs if part in r]
            if vals:
                row[f"mcc_{part}"] = float(np.mean(vals))
                row[f"mcc_{part}_sd"] = float(np.std(vals))
                row[f"rdc_{part}"] = float(np.mean(rdcs))
        row["fvu_test"] = float(np.mean([r["fvu_test"] for r in rs]))
        row["l0_test"] = float(np.mean([r["l0_test"] for r in rs]))
        row["cross_seed_mcc"] = scores["cross_seed_mcc"].get(method, {}).get("mean")
        row["n_seeds"] = len(rs)
        out[method] = row
    return out


# -- 5. steering -----------------------------------------------------------------------------
def word_ids(tok, words):
    ids = []
    for w in words:
        enc = tok.encode(w, add_special_tokens=False)
        if len(enc) == 1:
            ids.append(enc[0])
    return sorted(set(ids))


def stage_steering(p, model_name, dz, pairs, models, scores):
    import torch

    from sae_jax.evals.steering import steering_effect
    from sae_jax.lm.models import load_model
    from sae_jax.lm.splice import token_set_logodds

    if p["torch_threads"]:
        torch.set_num_threads(p["torch_threads"])
    lm, tok = load_model(model_name)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    test, labels, multi = pairs["test"], pairs["labels"], pairs["is_multi"]
    concepts = scores["concepts"]
    from sae_jax.data.concept_pairs import CONCEPTS

    col = {c: CONCEPTS.index(c) for c in concepts}
    words = {c: (word_ids(tok, SCORE_WORDS[c][0]), word_ids(tok, SCORE_WORDS[c][1])) for c in concepts}
    scored = [c for c in concepts if words[c][0] and words[c][1]]
    special = tok.all_special_ids
    rng = np.random.default_rng(0)
    out = {"scored_concepts": scored, "words": {c: [tok.convert_ids_to_tokens(w) for w in words[c]] for c in scored},
           "per_concept": {}}
    seed0 = p["seeds"][0]
    sources = [m for m in p["methods"]]
    d = dz.shape[1]
    t0 = time.perf_counter()
    for c in concepts:
        i = col[c]
        train_c = (~test) & (~multi) & (labels[:, i] == 1)
        held = np.flatnonzero(test & ~multi & (labels[:, i] == 1))[: p["steer_texts"]]
        if len(held) < 2 or train_c.sum() < 2:
            continue
        norm = float(np.linalg.norm(dz[train_c], axis=1).mean())
        dirs = {}
        oracle = dz[train_c].mean(0)
        dirs["oracle mean Δz"] = oracle / np.linalg.norm(oracle)
        for m in sources:
            match = scores["rows"][f"{m}_s{seed0}"]["train_match"][c]
            if match["latent"] < 0:
                continue
            v = directions(models[(m, seed0)])[match["latent"]]
            dirs[m] = np.sign(match["r"] or 1.0) * v / np.linalg.norm(v)
        r = rng.normal(size=d)
        dirs["random"] = r / np.linalg.norm(r)
        texts = [pairs["pairs"][j].s1 for j in held]
        enc = tok(texts, padding=True, truncation=True, max_length=p["context_length"], return_tensors="np")
        ids, att = enc["input_ids"], enc["attention_mask"]

        def score_all(transform):  # chunks of 16 texts: the [B, T, vocab] log-probs stay small
            parts = [token_set_logodds(lm, ids[b:b + 16], att[b:b + 16], p["layer"], "resid", transform, special,
                                       {s: words[s] for s in scored}) for b in range(0, len(ids), 16)]
            return {s: np.concatenate([q[s] for q in parts]) for s in scored}

        clean = score_all(None)
        res = {"n_texts": len(held), "norm": norm, "cos_with_oracle": {}, "alphas": {}}
        for name, v in dirs.items():
            res["cos_with_oracle"][name] = float(v @ dirs["oracle mean Δz"])
        for alpha in p["alphas"]:
            steered = {name: score_all(lambda x, v=v: x + (alpha * norm * v).astype(np.float32))
                       for name, v in dirs.items()}
            per = {}
            for name in dirs:
                per[name] = {}
                for s in scored:
                    eff = steering_effect(steered[name][s], steered["random"][s], clean[s], n_resamples=p["n_boot"])
                    per[name][s] = eff
            res["alphas"][str(alpha)] = per
        out["per_concept"][c] = res
        log(f"  steering {c}: {len(held)} texts, ‖Δz‖={norm:.2f} ({time.perf_counter() - t0:.0f} s so far)")
    out["seconds"] = time.perf_counter() - t0
    return out


# -- plots and README ------------------------------------------------------------------------
def plots(res, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    summ = res["summary"]
    methods = list(summ)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    w = 0.38
    for j, part in enumerate(("single", "multi")):
        vals = [summ[m].get(f"mcc_{part}", np.nan) for m in methods]
        sds = [summ[m].get(f"mcc_{part}_sd", 0) for m in methods]
        ax.bar(np.arange(len(methods)) + (j - 0.5) * w, vals, w, yerr=sds, label=f"{part}-concept pairs", capsize=3)
    ax.set_xticks(range(len(methods)), methods, rotation=20)
    ax.set_ylabel("MCC vs concept labels (held-out)")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("Concept recovery (mean ± SD over seeds)")
    fig.tight_layout()
    fig.savefig(out / "mcc.png", dpi=110)
    plt.close(fig)
    files["mcc"] = "mcc.png"

    probes = res["scores"]["probes"]
    cs = res["scores"]["concepts"]
    fig, axes = plt.subplots(1, len(cs), figsize=(3 * len(cs), 3), sharey=True, squeeze=False)
    for ax, c in zip(axes[0], cs):
        for name, per in probes.items():
            ax.plot(per[c]["ks"], per[c]["accuracy"], marker="o", label=name)
        ax.axhline(per[c]["majority"], color="grey", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_title(c)
        ax.set_xlabel("k")
    axes[0][0].set_ylabel("held-out accuracy")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "probes.png", dpi=110)
    plt.close(fig)
    files["probes"] = "probes.png"

    st = res.get("steering", {}).get("per_concept", {})
    if st:
        alpha = str(res["preset"]["alphas"][0])
        cs_s = list(st)
        names = list(next(iter(st.values()))["alphas"][alpha])
        fig, ax = plt.subplots(figsize=(8, 3.5))
        w = 0.8 / len(names)
        for j, name in enumerate(names):
            m, lo, hi = [], [], []
            for c in cs_s:
                e = st[c]["alphas"][alpha][name].get(c, {}).get("effect") if name in st[c]["alphas"][alpha] else None
                m.append(e["mean"] if e else np.nan)
                lo.append(e["mean"] - e["lo"] if e else 0)
                hi.append(e["hi"] - e["mean"] if e else 0)
            ax.bar(np.arange(len(cs_s)) + (j - len(names) / 2 + 0.5) * w, m, w, yerr=[lo, hi], label=name, capsize=2)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(cs_s)), cs_s)
        ax.set_ylabel("Δ target log-odds (steered − clean)")
        ax.set_title(f"Steering at α={alpha}×mean‖Δz‖ (95% bootstrap CI over texts)")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out / "steering.png", dpi=110)
        plt.close(fig)
        files["steering"] = "steering.png"
    return files


def fmt(v, nd=3):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def passes(e):
    """The done criterion, from the stored CIs: the target's log-odds move toward s2 (CI above 0) and
    more than with the random direction (paired CI above 0)."""
    return e["effect"]["lo"] > 0 and e["effect_minus_control"]["lo"] > 0


def write_readme(res, out):
    p, summ = res["preset"], res["summary"]
    L = ["# Shift autoencoders on concept-edited sentence pairs, with steering (issue 12 item 1)", "",
         "*Generated by `run.py` from `results.json`; every number below comes from that run. "
         "The discussion is hand-written in [discussion.md](discussion.md).*", "",
         "**Question.** Trained on Δz = z(s2) − z(s1) for sentence pairs whose edits are known, does a sparse "
         "shift autoencoder (SSAE) give one latent per concept — better than TopK / ReLU / JumpReLU SAEs and "
         "PCA on the same Δz — and do its directions steer the LM toward s2?", "",
         "## Run", "",
         f"`python experiments/concept_shifts/run.py --preset {res['preset_name']}` — model `{p['model']}`, "
         f"layer {p['layer']} residual stream, mean-pooled over each sentence's tokens; commit `{res['commit']}`, "
         f"{res['date']}, wall time {res['wall_s']:.0f} s on {res['hardware']}.", "",
         f"Pairs: {len(res['pairs']['is_multi'])} from {res['pairs']['n_sentences']} {res['pairs']['source']} "
         f"sentences — single-concept per concept {res['pairs']['single_counts']}, "
         f"{sum(res['pairs']['is_multi'])} multi-concept (2–3 edits); 25% held out "
         f"({res['pairs']['n_test']} pairs); {res['pairs']['n_dropped_zero']} pairs whose edit fell beyond the {p['context_length']}-token context (Δz = 0) were dropped. Every method is trained on the same {res['pairs']['n_train']} train "
         f"rows: d_sae={p['d_sae']}, {p['steps']} steps, batch {p['batch']}, seeds {list(p['seeds'])}; TopK k={p['k']}, "
         f"ReLU λ={p['relu_coef']}, JumpReLU λ={p['jumprelu_coef']}. SSAE: input LayerNorm, "
         f"{'LayerNorm on the code, ' if 'ssae' in p['methods'] else ''}relative loss, "
         f"{p['steps'] // 10} warm-up steps, then the Σ|h|/(B·F) level falls linearly over {p['steps'] // 2} steps "
         f"to the target {res['ssae_target']:.4f} (the planted-truth level: each row's projection on its "
         "concepts' unit mean-Δz directions, in the SSAE's LayerNorm-ed space — set from the labels, as in "
         "`experiments/ssae_identifiability`). `ssae_nocodeln` is the same SSAE without the code LayerNorm.", "",
         "Example pairs:", ""]
    for e in res["pairs"]["examples"]:
        L.append(f"- `{'+'.join(e['concepts'])}`: {e['s1']} → {e['s2']}")
    L += ["", "## Concept recovery (held-out pairs)", "",
          "MCC: |Pearson r| between each concept's 0/1 label and its Hungarian-matched latent, averaged over "
          "concepts; RDC of the same matched pairs next to it; mean (± SD) over seeds. Cross-seed: MCC between "
          "two seeds' codes (all latents).", "",
          "| method | MCC single | MCC multi | MCC all | RDC single | RDC multi | cross-seed MCC | FVU | L0 |",
          "|---|---|---|---|---|---|---|---|---|"]
    for m, r in summ.items():
        L.append(f"| {m} | {fmt(r.get('mcc_single'))} ± {fmt(r.get('mcc_single_sd'), 2)} | "
                 f"{fmt(r.get('mcc_multi'))} ± {fmt(r.get('mcc_multi_sd'), 2)} | {fmt(r.get('mcc_all'))} | "
                 f"{fmt(r.get('rdc_single'))} | {fmt(r.get('rdc_multi'))} | {fmt(r.get('cross_seed_mcc'))} | "
                 f"{fmt(r['fvu_test'])} | {fmt(r['l0_test'], 1)} |")
    L += ["", "Per concept (seed " + str(p["seeds"][0]) + ", single-concept held-out pairs): signed r of the matched latent.", "",
          "| method | " + " | ".join(res["scores"]["concepts"]) + " |", "|---|" + "---|" * len(res["scores"]["concepts"])]
    for m in p["methods"]:
        row = res["scores"]["rows"].get(f"{m}_s{p['seeds'][0]}", {}).get("single")
        if row:
            L.append(f"| {m} | " + " | ".join(f"{row['per_concept'][c]['r']:+.2f} (#{row['per_concept'][c]['latent']})"
                                            for c in res["scores"]["concepts"]) + " |")
    L += ["", "![MCC](mcc.png)", "", "## k-sparse probes (concept vs rest, held-out pairs)", "",
          "Units ranked by standardised class difference on the train split (`sae_jax.evals.probing`), "
          "logistic regression on the top k; seed " + str(p["seeds"][0]) + ".", ""]
    probes = res["scores"]["probes"]
    for c in res["scores"]["concepts"]:
        ks = next(iter(probes.values()))[c]["ks"]
        L += [f"**{c}** (majority rate {next(iter(probes.values()))[c]['majority']:.3f})", "",
              "| features | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
        for name, per in probes.items():
            L.append(f"| {name} | " + " | ".join(f"{a:.3f}" for a in per[c]["accuracy"]) + " |")
        L.append("")
    L += ["![probes](probes.png)", "", "## Steering", ""]
    st = res.get("steering", {})
    if st.get("per_concept"):
        L += ["Direction added at every real token position of held-out s1 at the layer, scaled to α × the "
              "concept's mean ‖Δz‖; score = mean over positions of the next-token log-odds log Σp(s2-side words) − "
              "log Σp(s1-side words); effect = steered − clean, per text; 95% percentile bootstrap CI over texts. "
              "'passes' = the effect's CI lies above 0 (toward s2) **and** the paired (direction − random) CI lies above 0. "
              "Score words (single tokens of the model; Ġ = a leading space): " + "; ".join(
                  f"{c}: {'/'.join(w[0])} vs {'/'.join(w[1])}" for c, w in st["words"].items()) + ".", ""]
        names = list(next(iter(st["per_concept"].values()))["alphas"][str(p["alphas"][0])])
        L += ["Concepts whose steering passes, per direction source:", "",
              "| direction | " + " | ".join(f"α={a}" for a in p["alphas"]) + " |", "|---|" + "---|" * len(p["alphas"])]
        for name in names:
            cells = []
            for alpha in p["alphas"]:
                ok = [c for c, rc in st["per_concept"].items() if c in st["scored_concepts"]
                      and name in rc["alphas"][str(alpha)] and passes(rc["alphas"][str(alpha)][name][c])]
                cells.append(f"{len(ok)}/{len(st['per_concept'])} ({', '.join(ok) or '–'})")
            L.append(f"| {name} | " + " | ".join(cells) + " |")
        L.append("")
        for alpha in p["alphas"]:
            a = str(alpha)
            L += [f"### α = {alpha}", "", "Target concept's own score:", "",
                  "| concept | n | direction | cos with oracle | effect [95% CI] | random [95% CI] | direction − random [95% CI] | passes |",
                  "|---|---|---|---|---|---|---|---|"]
            for c, rc in st["per_concept"].items():
                if c not in st["scored_concepts"]:
                    continue
                for name, per in rc["alphas"][a].items():
                    e = per[c]
                    L.append(f"| {c} | {rc['n_texts']} | {name} | {rc['cos_with_oracle'][name]:+.2f} | "
                             f"{e['effect']['mean']:+.3f} [{e['effect']['lo']:+.3f}, {e['effect']['hi']:+.3f}] | "
                             f"{e['control_effect']['mean']:+.3f} [{e['control_effect']['lo']:+.3f}, {e['control_effect']['hi']:+.3f}] | "
                             f"{e['effect_minus_control']['mean']:+.3f} [{e['effect_minus_control']['lo']:+.3f}, "
                             f"{e['effect_minus_control']['hi']:+.3f}] | {'yes' if passes(e) else 'no'} |")
            L += ["", f"Specificity (SSAE direction of the row concept; mean effect on each concept's score, α={alpha}):", "",
                  "| steered \\ score | " + " | ".join(st["scored_concepts"]) + " |", "|---|" + "---|" * len(st["scored_concepts"])]
            for c, rc in st["per_concept"].items():
                per = rc["alphas"][a].get("ssae")
                if per:
                    L.append(f"| {c} | " + " | ".join(f"{per[s]['effect']['mean']:+.3f}" for s in st["scored_concepts"]) + " |")
            L.append("")
        L += ["![steering](steering.png)", ""]
    L += ["## Presets", "",
          "- `smoke`: tiny random Llama, a few hundred pairs (~40 s, CI: `tests/test_experiment_concept_shifts.py`). Wiring only.",
          "- `cpu`: the run above.",
          f"- `full`: `{PRESETS['full']['model']}` layer {PRESETS['full']['layer']}, {PRESETS['full']['n_single']} single + "
          f"{PRESETS['full']['n_multi']} multi pairs, d_sae={PRESETS['full']['d_sae']}, {PRESETS['full']['steps']} steps, "
          f"{len(PRESETS['full']['seeds'])} seeds — documented, **not run** (needs the weights and a GPU host; the "
          "Wikipedia leads give only ~500 clean 'number' edits, so that concept stays smaller).", "",
          "## Discussion", "", "See [discussion.md](discussion.md).", ""]
    (out / "README.md").write_text("\n".join(L))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    ap.add_argument("--out", default=None, help="output folder (default: beside run.py for cpu, else a work dir)")
    ap.add_argument("--stage", choices=["all", "readme"], default="all",
                    help="readme: rewrite README.md and the plots from results.json")
    args = ap.parse_args()
    out = pathlib.Path(args.out) if args.out else (HERE if args.preset == "cpu" else HERE / f"_{args.preset}")
    out.mkdir(parents=True, exist_ok=True)
    if args.stage == "readme":
        res = json.loads((out / "results.json").read_text())
        plots(res, out)
        write_readme(res, out)
        return
    p = PRESETS[args.preset]
    work = out / "work"
    work.mkdir(exist_ok=True)
    t_start = time.perf_counter()
    if p["torch_threads"]:
        import torch

        torch.set_num_threads(p["torch_threads"])
    if p["model"] == "tiny":
        from sae_jax.lm.models import tiny_model_folder

        model_name = tiny_model_folder(work / "tiny_model", n_layers=2)
    else:
        model_name = p["model"]
    pairs = stage_pairs(p, work)
    dz, extract_s = stage_extract(p, work, model_name, pairs)
    pairs, dz = drop_truncated(pairs, dz)
    models, target, train_s, last_metrics = fit_all(p, work, dz, pairs)
    scores = stage_scores(p, dz, pairs, models)
    steering = stage_steering(p, model_name, dz, pairs, models, scores)
    import jax
    import platform

    res = {"preset_name": args.preset, "preset": p, "commit": commit_hash(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "hardware": f"{platform.processor() or platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s)",
           "pairs": {"source": pairs["source"], "n_sentences": pairs["n_sentences"], "single_counts": pairs["single_counts"],
                     "is_multi": pairs["is_multi"].tolist(), "n_test": int(pairs["test"].sum()),
                     "n_train": int((~pairs["test"]).sum()), "examples": pairs["examples"],
                     "n_dropped_zero": pairs["n_dropped_zero"]},
           "ssae_target": target, "last_train_metrics": last_metrics, "seconds": {"extract": extract_s, "train": train_s, "steering": steering["seconds"]},
           "scores": scores, "summary": summarise(p, scores), "steering": steering}
    res["wall_s"] = time.perf_counter() - t_start
    (out / "results.json").write_text(json.dumps(res, indent=1, default=float))
    res["plots"] = plots(res, out)
    write_readme(res, out)
    log(json.dumps(res["summary"], indent=1))
    log(f"wrote {out / 'results.json'} ({res['wall_s']:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
