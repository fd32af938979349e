"""Model diffing end to end on a tuned model whose change we planted: does the pipeline find it?

    python experiments/model_diffing/run.py --preset smoke|cpu|full [--domain LABEL] [--out DIR]

Stages (each resumable: a finished stage's outputs are reused):

1. finetune: the base model fully fine-tuned on one Wikipedia topic (the planted domain);
   task-slice and general CE before/after (``sae_jax.lm.finetune``);
2. extract: base, tuned and delta (tuned − base) residual streams at three depths, one pass
   (``sae-jax extract --chat-model``) over a topic-stratified corpus (shuffled, labelled);
3. train: TopK+AuxK SAEs on base / tuned / delta at every depth (Run 1), the AuxK ablation at the
   mid depth (Run 2: no AuxK; Run 3: k/2 with 2F) and a BatchTopK crosscoder on [base | tuned];
4. validate: FVU, L0, dead %, CE recovered (base and tuned SAEs spliced into their own model)
   and the validation gates, with pass counts per run;
5. features: Cohen's d with paired bootstrap CIs of the base SAE's latents on base vs tuned
   activations of the same tokens, types A/B/C by decoder direction;
6. labels: c-TF-IDF keyword labels from top contexts for the base and delta SAEs' alive latents,
   themes (k by silhouette), theme enrichment among shifted (A/B) latents; planted truth per
   latent = share of its top contexts from the planted domain (≥ 0.5: a planted-domain latent);
7. causal: pre-registered settings, then for delta-SAE candidates (after the variance and sparsity
   gates) the drop of the tuned model's log-prob of held-out domain texts when the latent's
   contribution is patched to its value on three corruptions; consistency gate; damage on general
   text; combined score; the gate funnel; precision/recall against the planted truth;
8. crosscoder: base-only / shared / tuned-only latents and their planted-domain share.

``--preset full`` documents the original study's scale (Qwen1.5-1.8B vs -Chat, layers 6/12/18,
TopK k=256, F=8192); it needs the weights on the host and was not run here (``--stages plan``
checks its memory with ``sae-jax plan``).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

import numpy as np

PRESETS = {
    "smoke": dict(model="tiny", layers=(0, 1, 2), n_planted=40, n_per_label=8, context_length=32,
                  ft_steps=6, ft_batch=4, ft_lr=3e-3, n_task_eval=8, n_general_eval=8,
                  d_sae=64, k=8, sae_steps=30, sae_batch=256, top_n=5, n_candidates=4, n_boot=100,
                  causal_texts=6, causal_threshold=1e-4, n_keywords=20, labeller_latents=1, max_frequency=0.5,
                  min_texts=2, ft_upto_mid=True, ft_general_kl=1.0, prefix_token="<eos>", causal_score="kl_to_reference", torch_threads=1),
    # Sized for the 2-core machine (SmolLM2-135M forward ≈ 1.6k tokens/s when quiet).
    "cpu": dict(model="smollm2-135m-instruct", layers=(6, 15, 24), n_planted=160, n_per_label=50,
                context_length=64, ft_steps=80, ft_batch=8, ft_lr=5e-5, n_task_eval=32, n_general_eval=32,
                d_sae=2048, k=32, sae_steps=400, sae_batch=1024, top_n=10, n_candidates=60, n_boot=500,
                causal_texts=24, causal_threshold=1e-3, n_keywords=40, labeller_latents=8, max_frequency=0.05,
                min_texts=5, ft_upto_mid=True, ft_general_kl=1.0, prefix_token="<|endoftext|>", causal_score="kl_to_reference",
                torch_threads=2),
    # The original study's sizes; needs Qwen1.5-1.8B and -Chat on the host. Not run here.
    "full": dict(model="Qwen/Qwen1.5-1.8B", tuned_model="Qwen/Qwen1.5-1.8B-Chat", layers=(6, 12, 18),
                 n_planted=2000, n_per_label=500, context_length=256, ft_steps=0, ft_batch=8, ft_lr=0.0,
                 n_task_eval=64, n_general_eval=256, d_sae=8192, k=256, sae_steps=20000, sae_batch=4096,
                 top_n=20, n_candidates=200, n_boot=2000, causal_texts=64, causal_threshold=1e-3,
                 n_keywords=50, labeller_latents=50, max_frequency=0.05, min_texts=10, prefix_token="<|endoftext|>",
                 causal_score="kl_to_reference", torch_threads=None),
}
ROLES = ("base", "chat", "delta")  # the extractor's names; "chat" is the tuned model
VALIDATION_TEXTS = 16


def log(msg):
    print(msg, flush=True)


def tiny_model(out: pathlib.Path) -> str:
    """A tiny random Llama saved to a folder (smoke preset: proves the wiring, not the science)."""
    from sae_jax.lm.models import tiny_model_folder

    return tiny_model_folder(out / "tiny_model", n_layers=3)


# ---------------------------------------------------------------- 1-2: tuned model, stores

def stage_finetune(p, out, model, domain):
    from sae_jax.lm.finetune import FinetuneConfig, run_finetune

    if p.get("tuned_model"):
        return {"tuned_model": p["tuned_model"], "note": "given, not planted"}
    m = run_finetune(FinetuneConfig(model=model, out=str(out / "tuned"), domains=(domain,), steps=p["ft_steps"],
                                    batch_size=p["ft_batch"], context_length=p["context_length"], lr=p["ft_lr"],
                                    n_task_eval=p["n_task_eval"], n_general_eval=p["n_general_eval"],
                                    general_kl=p.get("ft_general_kl", 0.0), torch_threads=p["torch_threads"],
                                    train_upto_block=p["layers"][1] if p.get("ft_upto_mid") else None,
                                    progress=False))
    log(f"  task CE {m['before']['task_ce']:.3f} -> {m['after']['task_ce']:.3f}, general CE "
        f"{m['before']['general_ce']:.3f} -> {m['after']['general_ce']:.3f} ({m['wall_s']:.0f} s)")
    return {k: m[k] for k in ("before", "after", "task_ce_drop", "general_ce_change", "n_train_texts", "wall_s")}


def corpus(p, out, domain, exclude=()):
    """Topic-stratified, shuffled, labelled analysis corpus (never the fine-tune's held-out texts)."""
    from sae_jax.data.text import wikipedia

    path = out / "corpus.jsonl"
    wiki = wikipedia()
    skip = set(exclude)
    if not path.exists():
        rng = np.random.default_rng(11)
        labels = np.asarray(wiki.labels)
        pick = []
        for lab in sorted(set(wiki.labels)):
            idx = [i for i in rng.permutation(np.flatnonzero(labels == lab)) if wiki.texts[i] not in skip]
            pick += idx[:p["n_planted"] if lab == domain else p["n_per_label"]]
        pick = rng.permutation(pick)  # the held-out tail of the stores must hold every topic
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"text": wiki.texts[i], "label": wiki.labels[i]}) + "\n" for i in pick))
        tmp.replace(path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def stage_extract(p, out, model, tuned, domain, task_eval):
    from sae_jax.lm.extract import ExtractConfig, run_extract

    corpus(p, out, domain, exclude=task_eval)
    s = run_extract(ExtractConfig(model=model, chat_model=tuned, out=str(out / "store"), text=str(out / "corpus.jsonl"),
                                  label_field="label", layers=tuple(p["layers"]), hooks=("resid",),
                                  context_length=p["context_length"], torch_threads=p["torch_threads"], progress=False))
    return {"n_rows": s["n_rows"]}


def store(out, role, layer):
    return str(out / "store" / role / f"layer{layer}_resid")


# ---------------------------------------------------------------- 3: SAEs

def sae_runs(p):
    """name -> (role, layer, sae settings, run): Run 1 everywhere, Runs 2-3 and the crosscoder at mid depth."""
    mid = p["layers"][1]
    runs = {}
    for role in ROLES:
        for layer in p["layers"]:
            runs[f"{role}_L{layer}"] = (role, layer, dict(architecture="topk", d_sae=p["d_sae"], k=p["k"]), 1)
        runs[f"{role}_L{mid}_noauxk"] = (role, mid, dict(architecture="topk", d_sae=p["d_sae"], k=p["k"], auxk_coef=0.0), 2)
        runs[f"{role}_L{mid}_k{p['k'] // 2}_F{2 * p['d_sae']}"] = (
            role, mid, dict(architecture="topk", d_sae=2 * p["d_sae"], k=max(p["k"] // 2, 1)), 3)
    runs[f"crosscoder_L{mid}"] = ("base+chat", mid, dict(architecture="crosscoder", d_sae=p["d_sae"], k=p["k"]), 0)
    return runs


def stage_train(p, out):
    from sae_jax.config import CheckpointConfig, DataConfig, LogConfig, OptimConfig, SAEConfig, TrainConfig
    from sae_jax.trainer import train

    exports = {}
    for name, (role, layer, sae, _) in sae_runs(p).items():
        run = out / "sae" / name
        if not (run / "export" / "cfg.json").exists():
            t0 = time.perf_counter()
            data = (DataConfig(store=store(out, "base", layer), target=store(out, "chat", layer), batch_size=p["sae_batch"])
                    if role == "base+chat" else DataConfig(store=store(out, role, layer), batch_size=p["sae_batch"]))
            train(TrainConfig(
                run_dir=str(run), steps=p["sae_steps"], data=data,
                sae=SAEConfig(dead_tokens=min(200_000, p["sae_steps"] * p["sae_batch"] // 2), **sae),
                optim=OptimConfig(warmup_steps=min(50, p["sae_steps"] // 5)),
                checkpoint=CheckpointConfig(every=max(p["sae_steps"] // 2, 1)),
                log=LogConfig(every=max(p["sae_steps"] // 5, 1), progress=False)))
            log(f"  {name}: {time.perf_counter() - t0:.0f} s")
        exports[name] = str(run / "export")
    return exports


def heldout_rows(n_rows):
    from sae_jax.evals.core import split_rows

    return split_rows(n_rows, 0.9, 1.0)  # the trainer's default held-out tail (holdout_fraction 0.1)


def stage_validate(p, out, exports, models, tokenizer, general_texts):
    from sae_jax.data.open import open_path
    from sae_jax.evals import gates as G
    from sae_jax.evals.core import evaluate_core
    from sae_jax.evals.run import token_batches
    from sae_jax.evals.splice import evaluate_splice
    from sae_jax.export import load_sae

    batches = token_batches(tokenizer, general_texts[:VALIDATION_TEXTS], p["context_length"], batch_size=8)
    rows, gate = {}, {}
    for name, (role, layer, sae_cfg, run) in sae_runs(p).items():
        if role == "base+chat":
            continue
        sae = load_sae(exports[name])
        src = open_path(store(out, role, layer), store=True)
        core = evaluate_core(sae, src, heldout_rows(src.n_rows))
        r = {"role": role, "layer": layer, "run": run, "d_sae": sae_cfg["d_sae"], "k": sae_cfg["k"],
             "auxk": sae_cfg.get("auxk_coef", 1) > 0, "fvu": core.fvu, "l0": core.l0,
             "dead_fraction": core.dead_fraction, "ce_recovered": None}
        if role in ("base", "chat"):  # a delta SAE has no model of its own to splice into
            m = evaluate_splice(models[role], sae, batches, layer, "resid", tokenizer.all_special_ids)
            r["ce_recovered"] = m.ce_loss_recovered_zero
        gate[name] = G.validation_gates(r)
        rows[name] = r | {"gates": gate[name]}
        log(f"  {name}: FVU {r['fvu']:.3f} L0 {r['l0']:.1f} dead {100 * r['dead_fraction']:.1f}% "
            f"CE rec {r['ce_recovered'] if r['ce_recovered'] is None else round(r['ce_recovered'], 3)} "
            f"pass {gate[name]['pass']}")
    runs = {f"run{k}": G.pass_counts({n: g for n, g in gate.items() if rows[n]["run"] == k}) for k in (1, 2, 3)}
    return {"saes": rows, "pass_counts": runs, "thresholds": G.ValidationThresholds().__dict__}


def stage_delta_share(p, models, tokenizer, task_eval):
    """Share of the tuned-vs-base gap on held-out domain text that passes through each depth's residual."""
    from sae_jax.evals.causal import layer_delta_share
    from sae_jax.evals.run import token_batches

    batches = token_batches(tokenizer, list(task_eval[:p["causal_texts"]]), p["context_length"], batch_size=8)
    out = {}
    for layer in p["layers"]:
        out[str(layer)] = layer_delta_share(models["chat"], models["base"], layer, "resid", batches,
                                            tokenizer.all_special_ids)
        log(f"  L{layer}: share of the tuned-vs-base gap through the residual {out[str(layer)]['share']:.2f}")
    return out


# ---------------------------------------------------------------- 5-6: features, labels, truth

def _codes(sae, src, rows, batch=4096):
    return np.concatenate([sae.encode(src.read(rows[i:i + batch])) for i in range(0, len(rows), batch)])


def stage_features(p, out, exports, domain):
    from sae_jax.data.open import open_path
    from sae_jax.evals.feature_types import feature_types
    from sae_jax.export import decoder_directions, load_sae

    mid = p["layers"][1]
    sb, sc, sd = (load_sae(exports[f"{r}_L{mid}"]) for r in ROLES)
    base_src, chat_src = open_path(store(out, "base", mid), store=True), open_path(store(out, "chat", mid), store=True)
    rows = heldout_rows(base_src.n_rows)
    ft = feature_types(_codes(sb, base_src, rows), _codes(sb, chat_src, rows), decoder_directions(sb),
                       decoder_directions(sc), decoder_directions(sd), n_boot=p["n_boot"])
    log(f"  types: {ft.counts()}")
    return ft


def latent_contexts(p, out, sae, src_rows_reader, n_rows, tokenizer, texts, positions):
    from sae_jax.evals.labels import token_contexts, top_activating_rows

    top, _ = top_activating_rows(sae.encode, src_rows_reader, np.arange(n_rows), top_n=p["top_n"])
    doc_ids, token_pos = positions
    ctx = token_contexts(tokenizer, texts, doc_ids, token_pos, top, p["context_length"]).copy()
    F = top.shape[0]
    contexts = [[c for c in ctx[j * p["top_n"]:(j + 1) * p["top_n"]] if c] for j in range(F)]
    top_docs = [[int(doc_ids[r]) for r in top[j] if r >= 0] for j in range(F)]
    return contexts, top_docs


def planted_share(top_docs, text_labels, domain):
    lab = np.asarray(text_labels, dtype=object)
    return np.array([np.mean(lab[d] == domain) if d else np.nan for d in top_docs])


# ---------------------------------------------------------------- 7: causal validation

def stage_causal(p, out, exports, models, tokenizer, domain, task_eval, texts, text_labels, delta_info, prereg):
    from sae_jax.evals import causal as C
    from sae_jax.evals import corruptions as K
    from sae_jax.evals.run import token_batches
    from sae_jax.export import load_sae

    mid = p["layers"][1]
    sd = load_sae(exports[f"delta_L{mid}"])
    cand = delta_info["candidates"]
    clean_texts = list(task_eval[:p["causal_texts"]])
    keywords = K.domain_keywords(texts, text_labels, domain, n=p["n_keywords"])
    others = [t for t, l in zip(texts, text_labels) if l != domain]
    other_kw = K.domain_keywords(texts, [("x" if l == domain else "y") for l in text_labels], "y", n=len(keywords))
    corr = {"string_replacement": K.string_replacement(clean_texts, dict(zip(keywords, other_kw))),
            "paraphrase_substitution": K.paraphrase_substitution(clean_texts, keywords,
                                                                 K.frequent_words(others, 500, exclude=keywords)),
            "counterfactual_swap": K.counterfactual_swap(clean_texts, others[:max(len(clean_texts) * 4, 50)])}
    bs = 8
    clean = token_batches(tokenizer, clean_texts, p["context_length"], batch_size=bs)
    corrupted = {m: token_batches(tokenizer, c.texts, p["context_length"], batch_size=bs) for m, c in corr.items()}
    general = token_batches(tokenizer, others[-p["causal_texts"]:], p["context_length"], batch_size=bs)
    if not cand:
        return {"candidates": [], "note": "no candidate passed the variance and sparsity gates"}
    t0 = time.perf_counter()
    drops = C.latent_effects(models["chat"], sd, mid, "resid", clean, corrupted, cand, tokenizer.all_special_ids,
                             reference_model=models["base"], at=prereg["patch_at"], score=prereg["score"])
    damage = C.ablation_damage(models["chat"], sd, mid, "resid", general, cand, tokenizer.all_special_ids,
                               reference_model=models["base"])
    d = {m: C.effect_sizes(v) for m, v in drops.items()}
    cons = C.consistency_gate(d, prereg["consistency_min_mean_d"], prereg["consistency_max_sd"])
    pv = C.p_values(drops)
    with np.errstate(all="ignore"):  # a latent silent on every text has no evidence: NaN, fails the gate
        mean_drop = np.nanmean([np.nanmean(v, 1) for v in drops.values()], axis=0)
    n_evidence = np.min([np.isfinite(v).sum(1) for v in drops.values()], axis=0)
    eta = np.asarray(delta_info["eta2"])[cand]
    score = C.combined_score(np.maximum(np.nan_to_num(cons["mean_d"]), 0), eta, damage, eps=prereg["damage_eps"])  # expected sign only
    return {"candidates": [int(c) for c in cand], "n_texts": len(clean_texts), "keywords": keywords[:15],
            "changed_share": {m: float(c.changed.mean()) for m, c in corr.items()},
            "mean_drop": mean_drop.tolist(), "n_texts_with_evidence": n_evidence.tolist(), "d": {m: v.tolist() for m, v in d.items()},
            "mean_d": cons["mean_d"].tolist(), "sd_d": cons["sd_d"].tolist(), "consistent": cons["pass"].tolist(),
            "p_combined": pv["combined"].tolist(), "p_bh": pv["bh"].tolist(), "damage": damage.tolist(),
            "score": score.tolist(), "wall_s": time.perf_counter() - t0}


# ---------------------------------------------------------------- orchestration per domain

def run_domain(p, out, model, domain, stages):
    import torch

    from sae_jax.evals import gates as G
    from sae_jax.evals.causal import preregister
    from sae_jax.evals.enrichment import base_rate_enrichment
    from sae_jax.evals.labels import LLMLabeller, keyword_labels, themes
    from sae_jax.evals.shift import enrichment
    from sae_jax.data.open import open_path
    from sae_jax.data.store import read_positions
    from sae_jax.evals.crosscoder import classify_crosscoder_latents
    from sae_jax.export import load_sae
    from sae_jax.lm.finetune import read_manifest
    from sae_jax.lm.models import load_model, save_with_prefix_token

    res, times = {"domain": domain}, {}

    def timed(name, fn):
        log(f"[{domain}: {name}]")
        t0 = time.perf_counter()
        value = fn()
        times[name] = time.perf_counter() - t0
        return value

    if p.get("prefix_token"):  # the first-token attention sink moves onto a special token (skipped everywhere)
        model = timed("prefix", lambda: str(save_with_prefix_token(model, out / "base_model", p["prefix_token"])))
    res["finetune"] = timed("finetune", lambda: stage_finetune(p, out, model, domain))
    tuned = p.get("tuned_model") or str(out / "tuned")
    if p.get("tuned_model") and p.get("prefix_token"):
        tuned = str(save_with_prefix_token(tuned, out / "tuned_model", p["prefix_token"]))
    manifest = read_manifest(tuned) or {}
    task_eval = manifest.get("task_eval_texts", [])
    res["extract"] = timed("extract", lambda: stage_extract(p, out, model, tuned, domain, task_eval))
    exports = timed("train", lambda: stage_train(p, out))
    base_model, tok = load_model(model)
    chat_model, _ = load_model(tuned)
    models = {"base": base_model, "chat": chat_model}
    texts, text_labels = corpus(p, out, domain)
    general = [t for t, l in zip(texts, text_labels) if l != domain]
    res["validate"] = timed("validate", lambda: stage_validate(p, out, exports, models, tok, general))
    res["delta_share"] = timed("delta share", lambda: stage_delta_share(p, models, tok, task_eval))
    ft = timed("features", lambda: stage_features(p, out, exports, domain))
    res["features"] = ft.summary() | {"threshold": 0.5}
    mid = p["layers"][1]
    positions = read_positions(str(out / "store"))

    def label_stage():
        out_l = {}
        for role in ("base", "delta"):
            sae = load_sae(exports[f"{role}_L{mid}"])
            src = open_path(store(out, role, mid), store=True)
            ctx, docs = latent_contexts(p, out, sae, src.read, src.n_rows, tok, texts, positions)
            out_l[role] = (ctx, docs, keyword_labels(ctx))
        return out_l

    lab = timed("labels", label_stage)
    base_rate = float(np.mean(np.asarray(text_labels, dtype=object)[positions[0]] == domain))
    share = {r: planted_share(lab[r][1], text_labels, domain) for r in lab}
    # themes over the base SAE's alive latents; enrichment of each theme among shifted (type A/B) latents
    alive_b = np.flatnonzero(np.isfinite(share["base"]))
    th = themes([lab["base"][2][j] for j in alive_b], k_range=range(2, 13))
    shifted = np.isin(ft.types[alive_b], ["A", "B"])
    theme_rows = []
    for c in range(th.k):
        member = th.theme == c
        row = {"theme": c, "words": th.top_words[c], "size": int(member.sum()), "n_shifted": int((member & shifted).sum())}
        if member.any() and shifted.any():
            row |= {"enrichment": enrichment(member, shifted, n_resamples=1000).to_dict()}
        theme_rows.append(row)
    res["themes"] = {"k": th.k, "silhouette": th.silhouette, "themes": theme_rows}
    # planted truth: delta-SAE latents of type C vs all alive base-SAE latents
    c_mask = ft.delta_only & np.isfinite(share["delta"])
    res["truth"] = {"base_rate": base_rate,
                    "delta_type_c": base_rate_enrichment(share["delta"][c_mask], base_rate).to_dict() if c_mask.any() else None,
                    "delta_all_alive": base_rate_enrichment(share["delta"], base_rate).to_dict(),
                    "base_all_alive": base_rate_enrichment(share["base"], base_rate).to_dict()}
    # identifiability gates on the delta SAE's latents (held-out rows: the probe set)
    sd = load_sae(exports[f"delta_L{mid}"])
    dsrc = open_path(store(out, "delta", mid), store=True)
    rows = heldout_rows(dsrc.n_rows)
    codes = _codes(sd, dsrc, rows)
    row_text_label = np.asarray(text_labels, dtype=object)[positions[0][rows]]
    alive = (codes != 0).any(0)
    eta2 = G.between_group_variance(codes, row_text_label)
    var_gate = G.top_fraction(eta2, 0.1, eligible=alive)
    sparse_gate, _ = G.sparsity_gate(codes, max_frequency=p["max_frequency"])
    pre = var_gate & sparse_gate
    cand = [int(j) for j in np.flatnonzero(pre)[np.argsort(-eta2[pre])][:p["n_candidates"]]]
    prereg = {"protocol": 4, "ft_general_kl": p.get("ft_general_kl", 0.0), "domain": domain, "model": model, "sae": f"delta_L{mid}", "candidates": cand,
              "fine_tune_upto_block": mid if p.get("ft_upto_mid") else None, "prefix_token": p.get("prefix_token"),
              "corruptions": ["string_replacement", "paraphrase_substitution", "counterfactual_swap"],
              "score": p["causal_score"],
              "behaviour_score": ("reduction of KL(tuned ‖ base) of the next-token distributions at the held-out "
                                  "planted-domain positions where the latent fires"
                                  if p["causal_score"] == "kl_to_reference" else
                                  "mean log-prob of the held-out planted-domain tokens that follow a position where "
                                  "the latent fires (tuned model)") + "; the latent patched at those positions only",
              "patch_at": "active", "min_texts_with_evidence": p["min_texts"],
              "causal_threshold_nats": p["causal_threshold"], "consistency_min_mean_d": 0.8,
              "consistency_max_sd": 0.3, "damage_eps": 1e-3, "planted_share_cut": 0.5, "n_texts": p["causal_texts"],
              "variance_gate_fraction": 0.1, "sparsity_max_frequency": p["max_frequency"]}
    preregister(out / "preregistered_protocol4.json", prereg)
    delta_info = {"candidates": cand, "eta2": eta2.tolist()}
    causal = timed("causal", lambda: stage_causal(p, out, exports, models, tok, domain, task_eval, texts, text_labels,
                                                   delta_info, prereg))
    F = sd.d_sae
    causal_mask = np.zeros(F, bool)
    consistent_mask = np.zeros(F, bool)
    if causal["candidates"]:
        idx = np.asarray(causal["candidates"])
        causal_mask[idx] = causal_gate_passed(causal, p["causal_threshold"], p["min_texts"])
        consistent_mask[idx] = np.asarray(causal["consistent"])
    cand_mask = np.zeros(F, bool)
    cand_mask[cand] = True
    res["funnel"], final = G.funnel(F, [("alive on held-out rows", alive), ("variance (top decile η²)", var_gate),
                                        (f"sparsity (freq ≤ {p['max_frequency']}, strong)", sparse_gate), (f"top {p['n_candidates']} by η²", cand_mask),
                                        (f"causal (mean drop > {p['causal_threshold']} nats)", causal_mask),
                                        ("consistency (mean d > 0.8, SD < 0.3)", consistent_mask)])
    planted = share["delta"] >= 0.5
    fin = np.flatnonzero(final)
    ranking = []
    if causal["candidates"]:
        pos = {c: i for i, c in enumerate(causal["candidates"])}
        for j in sorted(causal["candidates"], key=lambda c: -causal["score"][pos[c]]):
            i = pos[j]
            ranking.append({"latent": j, "score": causal["score"][i], "mean_d": causal["mean_d"][i],
                            "sd_d": causal["sd_d"][i], "mean_drop": causal["mean_drop"][i], "damage": causal["damage"][i],
                            "p_bh": causal["p_bh"][i], "final": bool(final[j]), "planted_share": float(share["delta"][j]),
                            "type_c": bool(ft.delta_only[j]), "label": lab["delta"][2][j]})
    res["causal"] = causal
    res["prereg"] = prereg
    res["ranking"] = ranking
    res["score"] = {"n_final": int(final.sum()), "precision": float(planted[fin].mean()) if fin.size else None,
                    "recall_of_candidates": float((planted & final).sum() / max((planted & cand_mask).sum(), 1)),
                    "n_planted_alive": int((planted & alive).sum()), "n_planted_candidates": int((planted & cand_mask).sum()),
                    "candidate_precision": float(planted[cand].mean()) if cand else None,
                    "alive_precision": float(planted[alive].mean())}
    # LLM labeller on the top-ranked latents, next to the keyword labels (how good is a small local model?)
    if p["labeller_latents"] and ranking:
        lab_model = LLMLabeller(model)
        res["llm_labels"] = [{"latent": r["latent"], "keywords": r["label"],
                              "llm": lab_model.label(lab["delta"][0][r["latent"]])} for r in ranking[:p["labeller_latents"]]]
    # crosscoder baseline on the same data
    xc = load_sae(exports[f"crosscoder_L{mid}"])
    xsrc_b, xsrc_t = open_path(store(out, "base", mid), store=True), open_path(store(out, "chat", mid), store=True)
    read = lambda r: np.concatenate([xsrc_b.read(r), xsrc_t.read(r)], axis=1)  # noqa: E731
    _, xdocs = latent_contexts(p, out, xc, read, xsrc_b.n_rows, tok, texts, positions)
    xshare = planted_share(xdocs, text_labels, domain)
    cls = classify_crosscoder_latents(np.asarray(xc.params["W_dec"]), xc.cfg["crosscoder_d_model"])
    xrows = {}
    for c in ("base_only", "shared", "tuned_only"):
        m = (cls.classes == c) & np.isfinite(xshare)
        xrows[c] = {"n": int((cls.classes == c).sum()), "n_alive": int(m.sum()),
                    "planted_precision": float((xshare[m] >= 0.5).mean()) if m.any() else None,
                    "enrichment": base_rate_enrichment(xshare[m], base_rate).to_dict() if m.any() else None}
    res["crosscoder"] = {"classes": xrows, "relative_norm_hist": np.histogram(cls.relative_norm, bins=20, range=(0, 1))[0].tolist()}
    res["plots"] = {"d_by_type": {t: ft.d[ft.types == t].tolist() for t in ("A", "B", "-")},
                    "d_ci_low": ft.d_low.tolist(), "d_ci_high": ft.d_high.tolist()}
    res["wall_s"] = times
    del torch
    return res


# ---------------------------------------------------------------- plots and README tables

def plot(res, folder: pathlib.Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tag = res["domain"].split()[0].lower()
    fig, ax = plt.subplots(1, 4, figsize=(18, 3.8))
    dd = res["plots"]["d_by_type"]
    bins = np.linspace(min(min(v, default=0) for v in dd.values()) - 0.1, max(max(v, default=0) for v in dd.values()) + 0.1, 40)
    for t, name in (("-", "other"), ("A", "A: suppressed"), ("B", "B: amplified")):
        if dd[t]:
            ax[0].hist(dd[t], bins=bins, alpha=0.6, label=f"{name} ({len(dd[t])})", log=True)
    ax[0].set_xlabel("Cohen's d (tuned − base), base-SAE latents")
    ax[0].legend(fontsize=7)
    ax[0].set_title("d by type")
    tr = res["truth"]
    names = [k for k in ("delta_type_c", "delta_all_alive", "base_all_alive") if tr[k]]
    vals = [tr[k]["ratio"] for k in names]
    err = [[tr[k]["ratio"] - tr[k]["ci_low"] for k in names], [tr[k]["ci_high"] - tr[k]["ratio"] for k in names]]
    ax[1].bar(range(len(names)), vals, yerr=err, capsize=4)
    ax[1].axhline(1, color="k", lw=0.8, ls="--")
    ax[1].set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=7)
    ax[1].set_ylabel("planted-domain enrichment (95% CI)")
    ax[1].set_title("planted domain among latents")
    fun = res["funnel"]
    ax[2].barh(range(len(fun))[::-1], [max(r["n_left"], 0.8) for r in fun], log=True)  # log axis: 0 drawn at 0.8
    for i, r in enumerate(fun):
        ax[2].text(1.0, len(fun) - 1 - i, f" {r['n_left']}", va="center", fontsize=7, color="white" if r["n_left"] > 3 else "k")
    ax[2].set_yticks(range(len(fun))[::-1], [r["gate"] for r in fun], fontsize=7)
    ax[2].set_title("gate funnel (delta SAE, mid depth)")
    c = res["causal"]
    if c.get("candidates"):
        for m, v in c["d"].items():
            ax[3].plot(range(len(v)), v, "o", label=m, ms=4)
        ax[3].axhline(0.8, color="k", lw=0.8, ls="--")
        ax[3].set_xlabel("candidate (index)")
        ax[3].set_ylabel("effect size d")
        ax[3].legend(fontsize=7)
    ax[3].set_title("consistency across corruptions")
    fig.suptitle(f"planted domain: {res['domain']}")
    fig.tight_layout()
    path = folder / f"model_diffing_{tag}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def causal_gate_passed(causal, threshold, min_texts) -> np.ndarray:
    """bool per candidate of ``causal``: mean drop above ``threshold`` nats in the expected direction, with
    evidence (a firing position) on at least ``min_texts`` texts."""
    from sae_jax.evals.gates import causal_gate

    drop = np.asarray(causal["mean_drop"], float)  # None (no evidence) -> NaN, which fails
    return causal_gate(drop, threshold) & (np.nan_to_num(drop) > 0) & (
        np.asarray(causal["n_texts_with_evidence"]) >= min_texts)


def _wilson(hits, n):
    from scipy.stats import binomtest

    ci = binomtest(int(hits), int(n)).proportion_ci(0.95, method="wilson")
    return ci.low, ci.high


def fmt(v, nd=3):
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "pass" if v else "FAIL"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def tables(res) -> str:
    L = []
    f = res["finetune"]
    if "before" in f:
        L += [f"Fine-tuning on **{res['domain']}** ({f['n_train_texts']} training texts): held-out task CE "
              f"{f['before']['task_ce']:.3f} → {f['after']['task_ce']:.3f} ({-f['task_ce_drop']:+.3f} nats), general CE "
              f"{f['before']['general_ce']:.3f} → {f['after']['general_ce']:.3f} ({f['general_ce_change']:+.3f}).", ""]
    if res.get("delta_share"):
        L += ["Share of the tuned-vs-base gap in mean log-prob on held-out planted-topic text that passes through "
              "each depth's residual stream (`causal.layer_delta_share`): "
              + ", ".join(f"layer {k}: {v['share']:.2f}" for k, v in res["delta_share"].items())
              + f" (gap {next(iter(res['delta_share'].values()))['gap']:.3f} nats/token).", ""]
    L += ["| SAE | run | F | k | AuxK | FVU | L0 | dead % | CE recovered | recon | sparsity | faithful | pass |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["validate"]["saes"].items():
        g = r["gates"]
        L.append(f"| {name} | {r['run']} | {r['d_sae']} | {r['k']} | {'yes' if r['auxk'] else 'no'} | {r['fvu']:.3f} | "
                 f"{r['l0']:.1f} | {100 * r['dead_fraction']:.1f} | {fmt(r['ce_recovered'])} | {fmt(g['reconstruction'])} | "
                 f"{fmt(g['sparsity'])} | {fmt(g.get('faithfulness'))} | {fmt(g['pass'])} |")
    pc = res["validate"]["pass_counts"]
    L += ["", "| run | SAEs | reconstruction | sparsity | faithfulness | all gates |", "|---|---|---|---|---|---|"]
    for k, what in (("run1", "Run 1: TopK + AuxK, 3 depths"), ("run2", "Run 2: no AuxK (mid)"), ("run3", "Run 3: k/2, 2F (mid)")):
        c = pc[k]
        L.append(f"| {what} | {c['n_saes']} | {c.get('reconstruction', 0)} | {c.get('sparsity', 0)} | "
                 f"{c.get('faithfulness', 0)} | {c.get('pass', 0)} |")
    ct = res["features"]["counts"]
    L += ["", f"Feature types (mid depth, |d| ≥ {res['features']['threshold']} with the 95% bootstrap CI excluding 0): "
          f"**A** {ct['A']}, **B** {ct['B']} of {ct['n_base_latents']} base-SAE latents; **C** {ct.get('C', 0)} of "
          f"{ct.get('n_delta_latents', 0)} delta-SAE latents; median |cos| of base latents to their tuned match "
          f"{res['features']['median_match_cos']:.3f}.", ""]
    tr = res["truth"]
    L += [f"Planted-domain enrichment (share of top-{'{'}n{'}'} contexts from {res['domain']} / its share of corpus tokens "
          f"{100 * tr['base_rate']:.1f}%):".replace("{n}", "n"), "", "| latents | n | mean share | enrichment | 95% CI |", "|---|---|---|---|---|"]
    for k in ("delta_type_c", "delta_all_alive", "base_all_alive"):
        e = tr[k]
        if e:
            L.append(f"| {k.replace('_', ' ')} | {e['n_latents']} | {e['mean_share']:.3f} | {e['ratio']:.2f} | "
                     f"[{e['ci_low']:.2f}, {e['ci_high']:.2f}] |")
    L += ["", "| gate | latents left |", "|---|---|"] + [f"| {r['gate']} | {r['n_left']} |" for r in res["funnel"]]
    s = res["score"]
    L += ["", f"Against the planted truth (a latent is planted-domain when ≥ 50% of its top contexts come from "
          f"{res['domain']}): final causal set {s['n_final']} latents, precision **{fmt(s['precision'], 2)}**"
          + (" (95% Wilson CI [{:.2f}, {:.2f}])".format(*_wilson(round(s['precision'] * s['n_final']), s['n_final']))
             if s['n_final'] else "") + "; "
          f"candidates' precision {fmt(s['candidate_precision'], 2)}; all alive delta latents "
          f"{fmt(s['alive_precision'], 2)}; recall of planted candidates {fmt(s['recall_of_candidates'], 2)}.", ""]
    cz = res["causal"]
    if res["ranking"] and "n_texts_with_evidence" in cz:  # precision after the causal gate alone
        share = {r["latent"]: r["planted_share"] for r in res["ranking"]}
        thr, min_texts = res.get("prereg", {}).get("causal_threshold_nats", 1e-3), res.get("prereg", {}).get("min_texts_with_evidence", 5)
        passed = np.asarray(cz["candidates"])[causal_gate_passed(cz, thr, min_texts)]
        if passed.size:
            hits = int(sum(share[j] >= 0.5 for j in passed))
            lo, hi = _wilson(hits, len(passed))
            L += [f"After the causal gate alone (before consistency): {len(passed)} latents, planted precision "
                  f"**{hits / len(passed):.2f}** (95% Wilson CI [{lo:.2f}, {hi:.2f}]; candidates "
                  f"{fmt(s['candidate_precision'], 2)}).", ""]
    if res["ranking"]:
        L += ["| latent | score | mean d | SD d | mean drop (nats) | damage (nats) | p (BH) | final | planted share | C | keywords |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        shown = [r for i, r in enumerate(res["ranking"]) if i < 12 or r["final"]]  # every final latent is listed
        for r in shown:
            L.append(f"| {r['latent']} | {r['score']:.3g} | {r['mean_d']:.2f} | {r['sd_d']:.2f} | {r['mean_drop']:.4f} | "
                     f"{r['damage']:.4f} | {r['p_bh']:.2g} | {'yes' if r['final'] else ''} | {r['planted_share']:.2f} | "
                     f"{'yes' if r['type_c'] else ''} | {r['label'].replace('|', '/')} |")
    x = res["crosscoder"]["classes"]
    L += ["", "| crosscoder latents | n | alive | planted precision | enrichment [95% CI] |", "|---|---|---|---|---|"]
    for c, r in x.items():
        e = r["enrichment"]
        L.append(f"| {c} | {r['n']} | {r['n_alive']} | {fmt(r['planted_precision'], 2)} | "
                 + (f"{e['ratio']:.2f} [{e['ci_low']:.2f}, {e['ci_high']:.2f}] |" if e else "– |"))
    th = res["themes"]
    L += ["", f"Themes of the base SAE's keyword labels: k = {th['k']} (silhouette), enrichment among shifted (A/B) latents:", "",
          "| theme | top words | size | shifted | enrichment [95% CI] |", "|---|---|---|---|---|"]
    for r in th["themes"]:
        e = r.get("enrichment")
        L.append(f"| {r['theme']} | {', '.join(r['words'])} | {r['size']} | {r['n_shifted']} | "
                 + (f"{e['enrichment']:.2f} [{e['ci_low']:.2f}, {e['ci_high']:.2f}] |" if e else "– |"))
    if res.get("llm_labels"):
        L += ["", "| latent | keyword label | LLM label (base model) |", "|---|---|---|"]
        L += [f"| {r['latent']} | {r['keywords']} | {r['llm'].replace('|', '/')} |" for r in res["llm_labels"]]
    return "\n".join(L)


README_HEAD = """# Model diffing on a tuned model whose change we planted

**Question.** When a model is fine-tuned, which of its features does the change create, suppress or
amplify, and can a triple-SAE pipeline (base, tuned and delta = tuned − base SAEs, feature types,
identifiability gates, causal validation) find them? Offline there is no base/chat pair that shares a
tokenizer, so we **plant** the change: SmolLM2-135M-Instruct's blocks 0–15 are fine-tuned on one Wikipedia
topic (blocks 16–29, embeddings and head stay the base's, so the change reaches the output through the
block-15 residual stream, where the causal stage looks), with a KL anchor to the base model on texts of the
other topics so that what changes is the topic and not the style of Wikipedia text, and the pipeline is scored against that known answer (precision of planted-domain latents in its final causal
set, planted-domain enrichment among delta latents), with a BatchTopK crosscoder on the same data as the
field's current baseline.

**Command** (each domain is one run; a finished stage is reused):

    python experiments/model_diffing/run.py --preset cpu --domain Mathematics
    python experiments/model_diffing/run.py --preset cpu --domain "Philosophy and religion"
    python experiments/model_diffing/run.py --preset cpu --stages readme   # this file, from results.json

`--preset smoke` (tiny random Llama, ~40 s) runs in CI; `--preset full` holds the original study's sizes
(Qwen1.5-1.8B vs -Chat, layers 6/12/18, TopK k=256, F=8192, AuxK) and runs unchanged on a host with those
weights (not run here; its memory plan is below).

**Method.** Stage by stage, see the docstring of `run.py`; the analysis lives in `sae_jax/evals/`
(`feature_types`, `gates`, `labels`, `corruptions`, `causal`, `crosscoder`, `enrichment`) and
`sae_jax/lm/finetune.py`, each tested against an independent computation. Definitions used below:

- *planted-domain latent*: at least half of its top-activating contexts (over the whole corpus) come from
  texts of the planted topic; the corpus is topic-stratified (the planted topic over-sampled), so the
  planted topic's share of corpus tokens is the base rate of an enrichment;
- *types*: A/B = base-SAE latents whose Cohen's d (tuned − base activations of the same tokens) is ≤ −0.5 /
  ≥ +0.5 with the 95% paired-bootstrap CI excluding 0; C = delta-SAE latents without a base- or tuned-SAE
  decoder row at |cos| ≥ 0.7;
- *prefix token*: every text starts with the special token `<|endoftext|>` (the model's document
  separator; `sae_jax.lm.models.save_with_prefix_token`). SmolLM2 was trained without a BOS, so without
  it the first real token of every text is an attention sink whose residual norm is ~150× the median at
  layers 15 and 24: under protocols 1–2 those ~1% of rows carried nearly all of a store's variance (the
  FVU ≈ 0.001 of protocol 2's mid-depth SAEs measured how well one direction was copied). With the prefix
  the sink sits on a special token, which stores, splices and patches skip.
- *funnel* (delta SAE, mid depth, held-out 10% of rows as the probe set): alive → top decile of η² (share
  of the latent's variance explained by the text's topic) → rare but strong (fires on ≤ 5% of tokens,
  mean activation ≥ the median) → the 60 with the largest η² (cost) → causal: at the positions where the
  latent fires on a held-out planted-topic text (never trained on), its contribution in the tuned model is
  patched to its mean value on a corrupted version of the text, and the tuned model's next-token
  distribution there moves back toward the base model's: KL(tuned ‖ base) falls by more than the
  threshold (0.001 nats), averaged over three corruptions (keyword string replacement, paraphrase-like
  substitution by frequent general words, counterfactual swap to a text of another topic), with evidence
  (a firing position) on at least 5 texts → consistency: mean d > 0.8 and SD < 0.3 across the three
  corruptions, d = mean / SD over texts of the per-text effect. Settings are written to
  `preregistered_protocol4.json` before the causal stage; a re-run with other settings is refused.
- *protocols*: protocol 4 (this README) is the fourth; each earlier one ended with a final causal set that
  was empty or not mostly planted-domain latents (sections at the end). Protocol 1 tuned every block and
  patched and scored every token; a diagnostic (`causal.layer_delta_share`) showed that under a full
  fine-tune only about a third of the tuned-vs-base gap passes through the mid-depth residual. Protocol 2
  tuned blocks 0–15 only and patched and scored only where a latent fires, with the next token's log-prob
  as the behaviour score: its causal gate kept 20 latents (planted precision 0.80), none passed the
  consistency gate (single-token log-probs are noisy, so per-text effects varied too much for d > 0.8).
  Protocol 3 added the prefix token and replaced the behaviour score by the KL divergence of the whole
  next-token distribution from the base model's (the issue's "tuned-vs-base difference"), which does not
  depend on which token happens to follow: 6 latents passed every gate on each domain, with planted
  precision 0.67 (Mathematics) and 0.17 (Philosophy and religion). Its fine-tunes lowered general-text CE
  by 0.22–0.28 nats, about half to two thirds of the task-CE drop, against the issue's "general-text loss
  barely moves": the model learned the style of Wikipedia leads as much as the topic, and the delta SAE
  spent its latents on that. Protocol 4 adds a KL anchor to the base model on other topics' texts during
  the fine-tune (`ft_general_kl` = 1, `FinetuneConfig.general_kl`); everything else is protocol 3's. It was
  designed after seeing protocol 3's results on both domains and fixed (`preregistered_protocol4.json`)
  before its own runs.
- *score* (like the study's CCIS): max(mean d, 0) × η² / (damage + 0.001), damage = CE increase on
  general text with the latent zero-ablated; p-values: one-sided t-tests per corruption, the largest of
  the three, Benjamini–Hochberg across candidates.
"""


def write_readme(results, here: pathlib.Path):
    lines = [README_HEAD]
    for domain, res in results.get("domains", {}).items():
        w = res["wall_s"]
        lines += [f"## Planted domain: {domain}", "",
                  f"Run {res['date']} at commit `{res['commit']}` on the 2-core CPU machine (no GPU): "
                  f"{res['total_wall_s'] / 60:.1f} min end to end ("
                  + ", ".join(f"{k} {v / 60:.1f}" for k, v in w.items()) + " min).", "",
                  tables(res), "", f"![{domain}]({res['plot']})", ""]
    for n in sorted(SUPERSEDED, reverse=True):
        v = here / f"results_protocol{n}.json"
        if v.exists():
            lines += superseded_section(json.loads(v.read_text()), n)
    v1 = here / "results_protocol1.json"
    if v1.exists():
        lines += protocol1_section(json.loads(v1.read_text()))
    if "full_plan" in results:
        fp = results["full_plan"]
        lines += ["## Full preset: memory plan", "", f"`{fp['command']}` (exit {fp['rc']}):", "", "```",
                  fp["output"].strip(), "```", ""]
    disc = here / "discussion.md"  # the hand-written reading of the tables above
    (here / "README.md").write_text("\n".join(lines) + "\n" + (disc.read_text() if disc.exists() else ""))


SUPERSEDED = {  # protocol -> (title, what differed from the current protocol)
    3: ("Protocol 3 (superseded): fine-tune without a general-text anchor",
        "As protocol 4 but the fine-tune had no KL anchor on general text, so it also learned the style of "
        "Wikipedia leads and lowered the CE of every topic. Full results in `results_protocol3.json` and "
        "`protocol3_*.png`."),
    2: ("Protocol 2 (superseded): no prefix token, next-token log-prob as the behaviour score",
        "Blocks 0–15 tuned, patched and scored where a latent fires, but without the prefix token (the "
        "first-token attention sink was kept in every store), with the log-prob of the next token as the "
        "behaviour score and no general-text anchor. Run on Mathematics only; full results in "
        "`results_protocol2.json` and `protocol2_mathematics.png`."),
}


def superseded_section(v, protocol) -> list[str]:
    """A superseded protocol's outcome in one table (its full tables: results_protocolN.json)."""
    title, text = SUPERSEDED[protocol]
    L = [f"## {title}", "", text, "",
         "| domain | task CE | general CE | delta enrichment [95% CI] | mid-depth FVU base / tuned / delta | "
         "candidates' precision | causal | its precision | consistent | final | its precision |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    pp = v["params"]
    mid = pp["layers"][1]
    for domain, r in v.get("domains", {}).items():
        f, e, s, cz = r["finetune"], r["truth"]["delta_all_alive"], r["score"], r["causal"]
        fvu = " / ".join(f"{r['validate']['saes'][f'{x}_L{mid}']['fvu']:.3f}" for x in ROLES)
        share = {x["latent"]: x["planted_share"] for x in r["ranking"]}
        passed = np.asarray(cz["candidates"])[causal_gate_passed(cz, pp["causal_threshold"], pp["min_texts"])]
        prec = float(np.mean([share[j] >= 0.5 for j in passed])) if passed.size else None
        fun = {x["gate"].split(" ")[0]: x["n_left"] for x in r["funnel"]}
        L.append(f"| {domain} | {f['before']['task_ce']:.3f} → {f['after']['task_ce']:.3f} | "
                 f"{f['before']['general_ce']:.3f} → {f['after']['general_ce']:.3f} | {e['ratio']:.2f} "
                 f"[{e['ci_low']:.2f}, {e['ci_high']:.2f}] | {fvu} | {fmt(s['candidate_precision'], 2)} | "
                 f"{len(passed)} | {fmt(prec, 2)} | {fun.get('consistency')} | {s['n_final']} | {fmt(s['precision'], 2)} |")
    return L + [""]


def protocol1_section(v1) -> list[str]:
    """The first, superseded protocol's outcome (its full tables: results_protocol1.json, protocol1_*.png)."""
    L = ["## Protocol 1 (superseded): full fine-tune, every token scored", "",
         "Run with the same stages but every block tuned, the 20 candidates with the largest η², and each latent "
         "patched and scored on every token. Its full results are in `results_protocol1.json` and "
         "`protocol1_*.png`.", "",
         "| domain | task CE | general CE | delta enrichment [95% CI] | candidates' planted precision | "
         "causal | consistent | final | precision | gap share through the residual (by layer) |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for domain, r in v1.get("domains", {}).items():
        f, e, s = r["finetune"], r["truth"]["delta_all_alive"], r["score"]
        fun = {x["gate"].split(" ")[0]: x["n_left"] for x in r["funnel"]}
        L.append(f"| {domain} | {f['before']['task_ce']:.3f} → {f['after']['task_ce']:.3f} | "
                 f"{f['before']['general_ce']:.3f} → {f['after']['general_ce']:.3f} | {e['ratio']:.2f} "
                 f"[{e['ci_low']:.2f}, {e['ci_high']:.2f}] | {fmt(s['candidate_precision'], 2)} | {fun.get('causal')} | "
                 f"{fun.get('consistency')} | {s['n_final']} | {fmt(s['precision'], 2)} | "
                 + (", ".join(f"{k}: {v['share']:.2f}" for k, v in r["delta_share"].items()) if r.get("delta_share") else "–")
                 + " |")
    return L + ["", "The gap shares (`causal.layer_delta_share` on each run's models, measured after the runs) show why "
                "protocol 1's single-latent effects were tiny: under a full fine-tune most of the change does not "
                "pass through the mid-depth residual stream.", ""]


def full_plan(p):
    """``sae-jax plan`` for the full preset's SAE (Qwen1.5-1.8B: d_model 2048)."""
    proc = subprocess.run([sys.executable, "-m", "sae_jax.cli", "plan", "--d-in", "2048", "--n-latents", str(p["d_sae"]),
                           "--k", str(p["k"]), "--batch", str(p["sae_batch"]), "--mesh", "1x1", "1x2"],
                          capture_output=True, text=True, timeout=600)
    return {"command": f"sae-jax plan --d-in 2048 --n-latents {p['d_sae']} --k {p['k']} --batch {p['sae_batch']} --mesh 1x1 1x2",
            "rc": proc.returncode, "output": proc.stdout[-3000:] + proc.stderr[-1000:]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    ap.add_argument("--domain", default="Mathematics", help="planted domain: a Wikipedia topic label")
    ap.add_argument("--out", default=None, help="work folder (default runs/model_diffing/PRESET/DOMAIN)")
    ap.add_argument("--results", default=None, help="results.json (default: beside this script for cpu)")
    ap.add_argument("--stages", default="run", help="run (the study for --domain), plan (the full preset's memory plan), readme")
    args = ap.parse_args()
    p = dict(PRESETS[args.preset])
    here = pathlib.Path(__file__).parent
    out = pathlib.Path(args.out or f"runs/model_diffing/{args.preset}/{args.domain.replace(' ', '_')}")
    out.mkdir(parents=True, exist_ok=True)
    if p["torch_threads"]:
        import torch

        torch.set_num_threads(p["torch_threads"])
    results_path = pathlib.Path(args.results) if args.results else (
        here / "results.json" if args.preset == "cpu" else out / "results.json")
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["params"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.items()} | {"preset": args.preset}
    stages = args.stages.split(",")
    if "plan" in stages:
        results["full_plan"] = full_plan(PRESETS["full"])
    if "run" in stages:
        if args.preset == "full" and not pathlib.Path(p["model"]).exists():
            sys.exit(f"--preset full needs {p['model']} and {p['tuned_model']} on this host (local folders); "
                     "it documents the original study's sizes")
        model = tiny_model(out) if p["model"] == "tiny" else p["model"]
        t0 = time.perf_counter()
        res = run_domain(p, out, model, args.domain, stages)
        res["total_wall_s"] = time.perf_counter() - t0
        res["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=here).stdout.strip()
        res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        res["plot"] = plot(res, here if args.preset == "cpu" else out)
        results.setdefault("domains", {})[args.domain] = res
        log(tables(res))
    if "readme" in stages:
        if args.preset == "cpu":
            for res in results.get("domains", {}).values():
                res["plot"] = plot(res, here)
        write_readme(results, here)
    if results_path.exists():  # another domain's run may have finished since this one started: keep its entry
        done = json.loads(results_path.read_text()).get("domains", {})
        results["domains"] = done | results.get("domains", {})
    tmp = results_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=float))
    tmp.replace(results_path)
    log(f"results: {results_path}")


if __name__ == "__main__":
    main()
