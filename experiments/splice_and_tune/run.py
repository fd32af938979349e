"""Splice-and-tune: fine-tune an LM through an SAE spliced into it, read what moved, sweep the layer.

Stages (each resumable: a finished stage's outputs are reused):

1. extract: residual stream of ``--layers`` on Wikipedia paragraphs (``sae-jax extract``);
2. train: one TopK SAE per layer (``sae_jax.train``), the main one at ``--layer``;
3. sweep: CE with the main SAE spliced at every block (the SAE's own layer should be best) and
   CE recovered by each per-layer SAE at its own layer; ``layer_sweep.png``;
4. tune: ``sae-jax tune`` (c,d only vs one MLP vs full fine-tuning) on one Wikipedia topic, and the
   same c,d tuning on the other topics (``cd_control``);
5. read: the latents whose pre-activation input moved most beyond the control (E|Δpre_task| −
   E|Δpre_control| over a topic-stratified corpus; other rankings as secondary), their top contexts
   and keywords, and the share of those contexts from the tuning topic against random latents
   (bootstrap CI, permutation p).

    python experiments/splice_and_tune/run.py --preset smoke|cpu [--out DIR]
    python experiments/splice_and_tune/run.py --preset cpu --stages tune,read --methods cd,cd_control \
        --variant NAME --set tune_steps=120 --set lr_cd=0.0025      # a re-run of tune + read, kept beside

``--preset full`` documents the original study's scale (Pythia-70M; Pythia-6.9B in the README);
it runs unchanged on a host that has the weights, and was not run here.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time
from collections import Counter

import numpy as np

PRESETS = {
    "smoke": dict(model="tiny", layers=(0, 1), layer=1, max_texts=60, context_length=32, d_sae=64, k=8,
                  sae_steps=30, sae_batch=256, label="Mathematics", tune_steps=4, tune_batch=4, n_task_eval=8,
                  n_general_eval=8, lr_cd=1e-2, lr_mlp=1e-4, lr_full=1e-5, sweep_texts=8, read_per_label=4,
                  top_moved=8, n_random=20, top_n=5, torch_threads=1),
    # Sized for a shared 2-core machine where SmolLM2's forward ran at ~30-100 tokens/s (load 7-10).
    # Layers 0, 3, ..., 27, 29 (one extraction pass), one SAE each; layer 9 is the tuned one.
    "cpu": dict(model="smollm2-135m-instruct", layers=(0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29), layer=9, max_texts=600,
                context_length=64, d_sae=2048, k=32, sae_steps=400, sae_batch=1024, label="Mathematics",
                tune_steps=30, tune_batch=4, n_task_eval=24, n_general_eval=24, lr_cd=1e-2, lr_mlp=1e-4,
                lr_full=1e-5, sweep_texts=16, sweep_blocks=(0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29),
                read_per_label=20, top_moved=20, n_random=200, top_n=10, torch_threads=2),
    # The original study's scale: Pythia-70M (6 blocks, d 512), all layers, 32k-latent TopK SAEs.
    # Pythia-70M is not packaged offline: point --model at a local HF folder of EleutherAI/pythia-70m-deduped.
    "full": dict(model="EleutherAI/pythia-70m-deduped", layers=(0, 1, 2, 3, 4, 5), layer=3, max_texts=None,
                 context_length=128, d_sae=32768, k=64, sae_steps=30000, sae_batch=4096, label="Mathematics",
                 tune_steps=2000, tune_batch=32, n_task_eval=64, n_general_eval=256, lr_cd=1e-2, lr_mlp=1e-4,
                 lr_full=1e-5, sweep_texts=256, read_per_label=200, top_moved=50, n_random=1000, top_n=20,
                 torch_threads=None),
}


def tiny_model(out: pathlib.Path) -> str:
    """A tiny random Llama saved to a folder (smoke preset: proves the wiring, not the science)."""
    from sae_jax.lm.models import tiny_model_folder

    return tiny_model_folder(out / "tiny_model", n_layers=2)


def stage_extract(p, out, model):
    from sae_jax.lm.extract import ExtractConfig, run_extract

    return run_extract(ExtractConfig(model=model, out=str(out / "store"), text="wikipedia", max_texts=p["max_texts"],
                                     layers=tuple(p["layers"]), hooks=("resid",), context_length=p["context_length"],
                                     torch_threads=p["torch_threads"], progress=False))


def stage_train(p, out, layers) -> dict[int, str]:
    from sae_jax.config import CheckpointConfig, DataConfig, LogConfig, OptimConfig, SAEConfig, TrainConfig
    from sae_jax.trainer import train

    exports = {}
    for layer in layers:
        run = out / "sae" / f"layer{layer}"
        export = run / "export"
        if not (export / "cfg.json").exists():
            t0 = time.perf_counter()
            train(TrainConfig(
                run_dir=str(run), steps=p["sae_steps"],
                data=DataConfig(store=str(out / "store" / f"layer{layer}_resid"), batch_size=p["sae_batch"]),
                sae=SAEConfig(architecture="topk", d_sae=p["d_sae"], k=p["k"], dead_tokens=200_000),
                optim=OptimConfig(warmup_steps=min(50, p["sae_steps"] // 5)),
                checkpoint=CheckpointConfig(every=max(p["sae_steps"] // 2, 1)),
                log=LogConfig(every=max(p["sae_steps"] // 5, 1), progress=False)))
            print(f"  SAE layer {layer}: {time.perf_counter() - t0:.0f} s", flush=True)
        exports[layer] = str(export)
    return exports


def _held_out_texts(p, n):
    """Wikipedia paragraphs after the ones the SAEs were trained on."""
    from sae_jax.data.text import wikipedia

    texts = wikipedia().texts
    start = p["max_texts"] or 0
    return list(texts[start:start + n])


def stage_sweep(p, out, model_name, exports):
    from sae_jax.evals import splice as ev
    from sae_jax.evals.run import token_batches
    from sae_jax.export import load_sae
    from sae_jax.lm import splice as lm_splice
    from sae_jax.lm.hooks import num_blocks
    from sae_jax.lm.models import load_model

    model, tok = load_model(model_name)
    batches = token_batches(tok, _held_out_texts(p, p["sweep_texts"]), p["context_length"], batch_size=16)
    special = tok.all_special_ids
    main = load_sae(exports[p["layer"]])
    insert = []
    t0 = time.perf_counter()
    for layer in p.get("sweep_blocks") or range(num_blocks(model)):  # the main SAE at every (chosen) block
        r = lm_splice.splice_losses(model, batches, layer, "resid", {"spliced": ev.reconstruct(main),
                                                                     "zero": ev.zero_ablate()}, special)
        insert.append({"layer": layer, "ce_clean": r["clean"].ce, "ce_spliced": r["spliced"].ce,
                       "ce_zero": r["zero"].ce, "kl_spliced": r["spliced"].kl, "n_tokens": r["clean"].n_tokens})
        print(f"  main SAE (layer {p['layer']}) at block {layer}: CE {r['spliced'].ce:.3f} "
              f"(clean {r['clean'].ce:.3f})", flush=True)
    own = []
    for layer, path in sorted(exports.items()):  # each layer's own SAE at its own layer
        m = ev.evaluate_splice(model, load_sae(path), batches, layer, "resid", special)
        own.append({"layer": layer, **m.to_dict()})
        print(f"  own SAE at layer {layer}: CE recovered {m.ce_loss_recovered_zero:.3f}", flush=True)
    return {"insertion": insert, "own_layer": own, "main_layer": p["layer"], "n_texts": p["sweep_texts"],
            "wall_s": time.perf_counter() - t0}


def plot_sweep(sweep, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    ins = sweep["insertion"]
    x = [r["layer"] for r in ins]
    a.plot(x, [r["ce_spliced"] for r in ins], "o-", label=f"layer-{sweep['main_layer']} SAE spliced here")
    a.plot(x, [r["ce_clean"] for r in ins], "k--", label="clean")
    own = sweep["own_layer"]
    a.plot([r["layer"] for r in own], [r["ce_spliced"] for r in own], "s-", ms=4, label="each layer's own SAE")
    a.axvline(sweep["main_layer"], color="grey", lw=0.8)
    a.set_yscale("log")
    a.set_xlabel("insertion block")
    a.set_ylabel("next-token CE (nats, log scale)")
    a.set_title("SAEs spliced at every block")
    a.legend(fontsize=8)
    b.plot([r["layer"] for r in own], [r["ce_loss_recovered_zero"] for r in own], "o-", label="vs zero ablation")
    b.plot([r["layer"] for r in own], [r["ce_loss_recovered_mean"] for r in own], "s-", label="vs mean ablation")
    b.legend(fontsize=8)
    b.set_xlabel("layer (SAE trained and spliced there)")
    b.set_ylabel("CE loss recovered")
    b.set_title("per-layer SAEs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def stage_tune(p, out, model_name, exports, methods=("cd", "cd_control", "mlp", "full"), tune_dir=None):
    from sae_jax.lm.tune import TuneConfig, run_tune

    return run_tune(TuneConfig(
        sae=exports[p["layer"]], out=str(tune_dir or out / "tune"), model=model_name, layer=p["layer"], hook="resid",
        label=p["label"], methods=tuple(methods), steps=p["tune_steps"], batch_size=p["tune_batch"], context_length=p["context_length"],
        n_task_eval=p["n_task_eval"], n_general_eval=p["n_general_eval"], lr_cd=p["lr_cd"], lr_mlp=p["lr_mlp"],
        lr_full=p["lr_full"], checkpoint_every=max(p["tune_steps"] // 4, 1), torch_threads=p["torch_threads"]))


# Latent rankings for the reading stage. The first two were the first (negative) attempt; the
# "beyond control" ones subtract the same c,d tuning on other topics (cd_control), so latents that
# every tune moves (frequent generic ones) drop out. PRIMARY was chosen before looking at its result.
RANKINGS = {
    "shift": "E|(c−1)·pre + d| (first attempt)",
    "c": "|c − 1| (first attempt)",
    "shift_minus_control": "E|Δpre_task| − E|Δpre_control|",
    "c_minus_control": "|c_task − 1| − |c_control − 1|",
    "d_minus_control": "|d_task| − |d_control|",
}
PRIMARY = "shift_minus_control"


def _load_cd(folder: pathlib.Path):
    from safetensors.torch import load_file

    f = folder / "scale_shift.safetensors"
    if not f.exists():
        return None
    cd = load_file(str(f))
    return cd["c"].double().numpy(), cd["d"].double().numpy()


def stage_read(p, out, model_name, exports, tune_dir=None):
    import torch

    from sae_jax.data.text import wikipedia
    from sae_jax.evals.browser import collect
    from sae_jax.evals.enrichment import enrichment, slice_shares
    from sae_jax.evals.run import token_batches
    from sae_jax.evals.splice import real_tokens
    from sae_jax.export import load_sae
    from sae_jax.lm.models import load_model
    from sae_jax.lm.sae_torch import TorchSAE
    from sae_jax.lm.splice import hooked_activations

    tune_dir = pathlib.Path(tune_dir or out / "tune")
    sae = load_sae(exports[p["layer"]])
    c, d = _load_cd(tune_dir / "cd")
    control = _load_cd(tune_dir / "cd_control")
    # a topic-stratified corpus, disjoint from the tuning run's texts only by chance: it reads latents, not CE
    wiki = wikipedia()
    rng = np.random.default_rng(7)
    labels = np.asarray(wiki.labels)
    pick = np.concatenate([rng.permutation(np.flatnonzero(labels == lab))[:p["read_per_label"]]
                           for lab in sorted(set(wiki.labels))])
    texts, text_labels = [wiki.texts[i] for i in pick], labels[pick].tolist()
    model, tok = load_model(model_name)
    batches = token_batches(tok, texts, p["context_length"], batch_size=16)
    acts = list(hooked_activations(model, batches, p["layer"], "resid"))
    masks = [real_tokens(ids, att, tok.all_special_ids) for ids, att in batches]
    rows = np.concatenate([a[m] for a, m in zip(acts, masks)])
    tsae = TorchSAE(sae)
    with torch.no_grad():
        pre = tsae.pre_activations(torch.as_tensor(rows)).double().numpy()
    shift = np.abs((c - 1) * pre + d).mean(0)  # E|Δ pre-activation| per latent, all topics
    scores = {"shift": shift, "c": np.abs(c - 1)}
    if control is not None:  # the same corpus and pre-activations for both tunes: only c, d differ
        cc, dc = control
        scores |= {"shift_minus_control": shift - np.abs((cc - 1) * pre + dc).mean(0),
                   "c_minus_control": np.abs(c - 1) - np.abs(cc - 1), "d_minus_control": np.abs(d) - np.abs(dc)}
    fired = (sae.encode(rows) > 0).sum(0)
    alive = np.flatnonzero(fired > 0)
    ranked = {name: [int(i) for i in np.argsort(-score, kind="stable") if fired[i] > 0][:p["top_moved"]]
              for name, score in scores.items()}
    random_latents = [int(i) for i in rng.choice(alive, min(p["n_random"], len(alive)), replace=False)]
    latents = sorted(set(random_latents).union(*ranked.values()))
    cards = {card.latent: card for card in collect(sae, acts, masks, latents, top_n=p["top_n"])}
    seq_label = text_labels  # sequences are numbered in batch order = text order

    def top_labels(j):
        return [seq_label[s] for _, s, _ in cards[j].top]

    ids_all = [ids for ids, _ in batches]
    seq_ids = [row for ids in ids_all for row in ids]

    def keywords(j, n=5):
        toks = Counter(tok.decode([int(seq_ids[s][pos])]).strip() for _, s, pos in cards[j].top)
        return [t for t, _ in toks.most_common(n)]

    def context(j, width=10):
        _, s, pos = cards[j].top[0]
        row = seq_ids[s]
        return tok.decode([int(t) for t in row[max(1, pos - width):pos]]) + " [[" + tok.decode([int(row[pos])]) + "]]"

    label = p["label"]
    share = slice_shares([top_labels(j) for j in latents], label)
    share_of = dict(zip(latents, share))
    random_shares = np.array([share_of[j] for j in random_latents])
    rankings = {}
    for seed, (name, chosen) in enumerate(ranked.items()):
        enr = enrichment(np.array([share_of[j] for j in chosen]), random_shares, seed=seed)
        rows_ = []
        for j in chosen:
            row = {"latent": j, "score": float(scores[name][j]), "shift": float(shift[j]), "c": float(c[j]),
                   "d": float(d[j]), "share_from_slice": float(share_of[j]), "keywords": keywords(j),
                   "top_context": context(j), "top_labels": Counter(top_labels(j)).most_common(3)}
            if control is not None:
                row |= {"c_control": float(control[0][j]), "d_control": float(control[1][j])}
            rows_.append(row)
        rankings[name] = {"what": RANKINGS[name], "enrichment": enr.to_dict(), "top": rows_}
    base_rate = float(np.mean(np.asarray(text_labels) == label))
    # Adam moves a parameter with a sign-consistent gradient by ~lr per step: how many hit that ceiling
    ceiling = p["lr_cd"] * p["tune_steps"]
    saturated = {"task": float(np.mean(np.abs(c - 1) > 0.8 * ceiling))}
    if control is not None:
        saturated["control"] = float(np.mean(np.abs(control[0] - 1) > 0.8 * ceiling))
    return {"label": label, "n_texts": len(texts), "base_rate": base_rate, "n_alive": int(len(alive)),
            "n_random": len(random_latents), "primary": PRIMARY if control is not None else "shift",
            "rankings": rankings, "enrichment_by_shift": rankings["shift"]["enrichment"],
            "enrichment_by_c": rankings["c"]["enrichment"], "top_moved": rankings["shift"]["top"],
            "c_abs_dev_max": float(np.abs(c - 1).max()), "d_abs_max": float(np.abs(d).max()),
            "adam_ceiling": ceiling, "share_c_near_ceiling": saturated}


def _read_lines(r) -> list[str]:
    lines = []
    rankings = r.get("rankings") or {"shift": {"what": RANKINGS["shift"], "enrichment": r["enrichment_by_shift"],
                                               "top": r["top_moved"]},
                                     "c": {"what": RANKINGS["c"], "enrichment": r["enrichment_by_c"], "top": []}}
    for name, rk in rankings.items():
        e = rk["enrichment"]
        tag = " **(primary)**" if name == r.get("primary") and name != "shift" else ""
        lines.append(f"- top {e['n_chosen']} latents by {rk['what']}{tag}: {100 * e['mean_chosen']:.1f}% of their top "
                     f"contexts from {r['label']} vs {100 * e['mean_random']:.1f}% for {e['n_random']} random "
                     f"alive latents (corpus base rate {100 * r['base_rate']:.1f}%); difference "
                     f"{100 * e['difference']:+.1f} points, 95% bootstrap CI [{100 * e['ci_low']:+.1f}, "
                     f"{100 * e['ci_high']:+.1f}], permutation p = {e['p_permutation']:.4f}")
    if "share_c_near_ceiling" in r:
        sat = ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["share_c_near_ceiling"].items())
        lines.append(f"- share of latents with |c − 1| > 0.8 × steps × lr = {0.8 * r['adam_ceiling']:.3f} "
                     f"(Adam's sign-consistent ceiling): {sat}")
    for name in ([r["primary"]] if r.get("primary", "shift") != "shift" else []) + ["shift"]:
        rk = rankings[name]
        ctl = "c_control" in (rk["top"][0] if rk["top"] else {})
        lines += ["", f"Top latents by {rk['what']}:", "",
                  "| latent | score | c | d |" + (" c control | d control |" if ctl else "") +
                  " share from slice | keywords (top-context tokens) | strongest context |",
                  "|---|---|---|---|" + ("---|---|" if ctl else "") + "---|---|---|"]
        for row in rk["top"][:10]:
            ctx = row["top_context"].replace("|", "\\|").replace("\n", " ")
            kw = ", ".join(f"`{k}`" for k in row["keywords"] if k) or "(space)"
            extra = f" {row['c_control']:.3f} | {row['d_control']:+.3f} |" if ctl else ""
            lines.append(f"| {row['latent']} | {row.get('score', row['shift']):.3f} | {row['c']:.3f} | {row['d']:+.3f} |"
                         f"{extra} {100 * row['share_from_slice']:.0f}% | {kw} | {ctx} |")
    lines.append("")
    return lines


def tables(results) -> str:
    """The README's tables, rendered from results.json (no number is typed by hand)."""
    from sae_jax.lm.tune import format_table

    lines = []
    if "tune" in results:
        t = results["tune"]
        b = t["before"]
        lines += [f"Tuning slice: Wikipedia topic **{t['label']}** ({t['n_train_texts']} training texts; task CE on "
                  f"{t['n_task_eval']} held-out texts of the topic, {b['task']['n_tokens']} tokens; general CE on "
                  f"{t['n_general_eval']} texts of other topics, {b['general']['n_tokens']} tokens"
                  + (f"; cd_control: c, d tuned on {t['n_control_texts']} texts of other topics"
                     if t.get("n_control_texts") else "") + f"). SAE "
                  f"{t['sae_architecture']} with {t['sae_d_sae']} latents at layer {t['layer']} {t['hook']}, error "
                  f"term {'on' if t['error_term'] else 'off'}. Clean model: task CE {b['task_clean']['ce']:.4f}, "
                  f"general CE {b['general_clean']['ce']:.4f}; model parameters {t['total_params']:,}.", "",
                  format_table(t), ""]
    if "read" in results:
        lines += _read_lines(results["read"])
    for name, v in (results.get("variants") or {}).items():
        lines += [f"Variant **{name}** ({', '.join(f'{k} = {x}' for k, x in v['set'].items())}):", ""]
        if "tune" in v:
            lines += [format_table(v["tune"]), ""]
        if "read" in v:
            lines += _read_lines(v["read"])
    if "sweep" in results:
        sw = results["sweep"]
        best = min(sw["insertion"], key=lambda r: r["ce_spliced"])
        lines += [f"Insertion sweep ({sw['n_texts']} held-out paragraphs): the layer-{sw['main_layer']} SAE is "
                  f"best spliced at block {best['layer']} (CE {best['ce_spliced']:.3f}, clean {best['ce_clean']:.3f}).",
                  "", "| block | CE clean | CE spliced (layer-%d SAE) | CE zero-ablated | own SAE: CE spliced | "
                  "own SAE: CE recovered (vs zero) | own SAE: CE recovered (vs mean) |" % sw["main_layer"],
                  "|---|---|---|---|---|---|---|"]
        own = {r["layer"]: r for r in sw["own_layer"]}
        for r in sw["insertion"]:
            o = own.get(r["layer"])
            o = (f"{o['ce_spliced']:.3f} | {o['ce_loss_recovered_zero']:.3f} | {o['ce_loss_recovered_mean']:.3f}"
                 if o else " | | ")
            lines.append(f"| {r['layer']} | {r['ce_clean']:.3f} | {r['ce_spliced']:.3f} | {r['ce_zero']:.3f} | {o} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    ap.add_argument("--out", default=None, help="work folder (default runs/splice_and_tune/PRESET)")
    ap.add_argument("--model", default=None, help="override the preset's model")
    ap.add_argument("--stages", default="extract,train,sweep,tune,read")
    ap.add_argument("--results", default=None, help="results.json path (default: beside this script for cpu)")
    ap.add_argument("--merge", default=None, help="copy the stages found in another results.json (a stage run in "
                    "a separate process, e.g. the sweep) into this one")
    ap.add_argument("--methods", default="cd,cd_control,mlp,full",
                    help="tune methods, in order (a finished one is reused)")
    ap.add_argument("--variant", default=None, help="a named re-run of the tune and read stages with --set "
                    "overrides, in OUT/tune_NAME and results['variants'][NAME] (the main results stay)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a preset value (JSON value, e.g. tune_steps=120 lr_cd=0.003)")
    args = ap.parse_args()
    p = dict(PRESETS[args.preset])
    if args.model:
        p["model"] = args.model
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in p:
            ap.error(f"--set {item}: no preset value {key!r}")
        overrides[key] = json.loads(value)
    if overrides and not args.variant:
        ap.error("--set needs --variant (the main results keep the preset's values)")
    p |= overrides
    here = pathlib.Path(__file__).parent
    out = pathlib.Path(args.out or f"runs/splice_and_tune/{args.preset}")
    out.mkdir(parents=True, exist_ok=True)
    if p["torch_threads"]:
        import torch

        torch.set_num_threads(p["torch_threads"])
    model = tiny_model(out) if p["model"] == "tiny" else p["model"]
    results_path = pathlib.Path(args.results) if args.results else (
        here / "results.json" if args.preset == "cpu" else out / "results.json")
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.items()}
    if args.variant:
        unsupported = set(args.stages.split(",")) - {"tune", "read"}
        if unsupported:
            ap.error(f"a variant re-runs only the tune and read stages, not {sorted(unsupported)}")
        target = results.setdefault("variants", {}).setdefault(args.variant, {})
        target["set"] = overrides
    else:
        results |= {"preset": args.preset, "params": params}
        target = results
    tune_dir = out / ("tune" if not args.variant else f"tune_{args.variant}")
    if args.merge:
        other = json.loads(pathlib.Path(args.merge).read_text())
        results |= {k: other[k] for k in ("extract", "sweep", "tune", "read") if k in other}
        results.setdefault("wall_s", {}).update(other.get("wall_s", {}))
    stages = args.stages.split(",")
    times = target.setdefault("wall_s", {})
    exports = {}
    # the main layer's SAE, tuning and reading first; the other layers' SAEs only for the sweep
    for stage in ("extract", "train_main", "tune", "read", "train_all", "sweep"):
        if stage.startswith("train"):
            needs = {"train_main": ("tune", "read", "sweep"), "train_all": ("sweep",)}[stage]
            if not set(needs) & set(stages):
                continue
        elif stage not in stages:
            continue
        t0 = time.perf_counter()
        print(f"[{stage}]", flush=True)
        if stage == "extract":
            s = stage_extract(p, out, model)
            results["extract"] = {"n_rows": s["n_rows"]}
        elif stage == "train_main":
            exports |= stage_train(p, out, [p["layer"]])
        elif stage == "train_all":
            exports |= stage_train(p, out, p["layers"])
        elif stage == "sweep":
            results["sweep"] = stage_sweep(p, out, model, exports)
            plot_sweep(results["sweep"], (here if args.preset == "cpu" else out) / "layer_sweep.png")
        elif stage == "tune":
            r = stage_tune(p, out, model, exports, args.methods.split(","), tune_dir)
            target["tune"] = {k: v for k, v in r.items() if k != "sae"}
        elif stage == "read":
            target["read"] = stage_read(p, out, model, exports, tune_dir)
        times[stage] = time.perf_counter() - t0
        results_path.write_text(json.dumps(results, indent=2, default=float))
    (results_path.parent / "tables.md").write_text(tables(results) + "\n")
    print(tables(results))
    return results


if __name__ == "__main__":
    main()
