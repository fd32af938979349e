"""Splice-and-tune: fine-tune an LM through an SAE spliced into it, read what moved, sweep the layer.

Stages (each resumable: a finished stage's outputs are reused):

1. extract: residual stream of ``--layers`` on Wikipedia paragraphs (``sae-jax extract``);
2. train: one TopK SAE per layer (``sae_jax.train``), the main one at ``--layer``;
3. sweep: CE with the main SAE spliced at every block (the SAE's own layer should be best) and
   CE recovered by each per-layer SAE at its own layer; ``layer_sweep.png``;
4. tune: ``sae-jax tune`` (c,d only vs one MLP vs full fine-tuning) on one Wikipedia topic;
5. read: the latents whose pre-activation input moved most (E|(c−1)·pre + d| over a topic-stratified
   corpus), their top contexts and keywords, and the share of those contexts from the tuning topic
   against random latents (bootstrap CI, permutation p).

    python experiments/splice_and_tune/run.py --preset smoke|cpu [--out DIR]

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
    "cpu": dict(model="smollm2-135m-instruct", layers=(9,), layer=9, max_texts=600,
                context_length=64, d_sae=2048, k=32, sae_steps=400, sae_batch=1024, label="Mathematics",
                tune_steps=30, tune_batch=4, n_task_eval=24, n_general_eval=24, lr_cd=1e-2, lr_mlp=1e-4,
                lr_full=1e-5, sweep_texts=4, sweep_blocks=(0, 4, 9, 14, 19, 24, 29),
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
    a.axvline(sweep["main_layer"], color="grey", lw=0.8)
    a.set_yscale("log")
    a.set_xlabel("insertion block")
    a.set_ylabel("next-token CE (nats, log scale)")
    a.set_title("one SAE spliced at every block")
    a.legend(fontsize=8)
    own = sweep["own_layer"]
    b.plot([r["layer"] for r in own], [r["ce_loss_recovered_zero"] for r in own], "o-")
    b.set_xlabel("layer (SAE trained and spliced there)")
    b.set_ylabel("CE loss recovered (vs zero ablation)")
    b.set_title("per-layer SAEs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def stage_tune(p, out, model_name, exports, methods=("cd", "mlp", "full")):
    from sae_jax.lm.tune import TuneConfig, run_tune

    return run_tune(TuneConfig(
        sae=exports[p["layer"]], out=str(out / "tune"), model=model_name, layer=p["layer"], hook="resid",
        label=p["label"], methods=tuple(methods), steps=p["tune_steps"], batch_size=p["tune_batch"], context_length=p["context_length"],
        n_task_eval=p["n_task_eval"], n_general_eval=p["n_general_eval"], lr_cd=p["lr_cd"], lr_mlp=p["lr_mlp"],
        lr_full=p["lr_full"], checkpoint_every=max(p["tune_steps"] // 4, 1), torch_threads=p["torch_threads"]))


def stage_read(p, out, model_name, exports):
    import torch
    from safetensors.torch import load_file

    from sae_jax.data.text import wikipedia
    from sae_jax.evals.browser import collect
    from sae_jax.evals.enrichment import enrichment, slice_shares
    from sae_jax.evals.run import token_batches
    from sae_jax.evals.splice import real_tokens
    from sae_jax.export import load_sae
    from sae_jax.lm.models import load_model
    from sae_jax.lm.sae_torch import TorchSAE
    from sae_jax.lm.splice import hooked_activations

    sae = load_sae(exports[p["layer"]])
    cd = load_file(str(out / "tune" / "cd" / "scale_shift.safetensors"))
    c, d = cd["c"].double().numpy(), cd["d"].double().numpy()
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
    fired = (sae.encode(rows) > 0).sum(0)
    alive = np.flatnonzero(fired > 0)
    moved = [int(i) for i in np.argsort(-shift) if fired[i] > 0][:p["top_moved"]]
    random_latents = [int(i) for i in rng.choice(alive, min(p["n_random"], len(alive)), replace=False)]
    by_c = [int(i) for i in np.argsort(-np.abs(c - 1)) if fired[i] > 0][:p["top_moved"]]
    latents = sorted(set(moved) | set(random_latents) | set(by_c))
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
    enr = enrichment(np.array([share_of[j] for j in moved]), np.array([share_of[j] for j in random_latents]))
    enr_c = enrichment(np.array([share_of[j] for j in by_c]), np.array([share_of[j] for j in random_latents]), seed=1)
    base_rate = float(np.mean(np.asarray(text_labels) == label))
    table = [{"latent": j, "shift": float(shift[j]), "c": float(c[j]), "d": float(d[j]),
              "share_from_slice": float(share_of[j]), "keywords": keywords(j), "top_context": context(j),
              "top_labels": Counter(top_labels(j)).most_common(3)} for j in moved]
    return {"label": label, "n_texts": len(texts), "base_rate": base_rate, "n_alive": int(len(alive)),
            "enrichment_by_shift": enr.to_dict(), "enrichment_by_c": enr_c.to_dict(), "top_moved": table,
            "c_abs_dev_max": float(np.abs(c - 1).max()), "d_abs_max": float(np.abs(d).max())}


def tables(results) -> str:
    """The README's tables, rendered from results.json (no number is typed by hand)."""
    from sae_jax.lm.tune import format_table

    lines = []
    if "tune" in results:
        t = results["tune"]
        b = t["before"]
        lines += [f"Tuning slice: Wikipedia topic **{t['label']}** ({t['n_train_texts']} training texts; task CE on "
                  f"{t['n_task_eval']} held-out texts of the topic, {b['task']['n_tokens']} tokens; general CE on "
                  f"{t['n_general_eval']} texts of other topics, {b['general']['n_tokens']} tokens). SAE "
                  f"{t['sae_architecture']} with {t['sae_d_sae']} latents at layer {t['layer']} {t['hook']}, error "
                  f"term {'on' if t['error_term'] else 'off'}. Clean model: task CE {b['task_clean']['ce']:.4f}, "
                  f"general CE {b['general_clean']['ce']:.4f}; model parameters {t['total_params']:,}.", "",
                  format_table(t), ""]
    if "read" in results:
        r = results["read"]
        for key, what in (("enrichment_by_shift", "E|(c−1)·pre + d|"), ("enrichment_by_c", "|c − 1|")):
            e = r[key]
            lines.append(f"- top {e['n_chosen']} latents by {what}: {100 * e['mean_chosen']:.1f}% of their top "
                         f"contexts from {r['label']} vs {100 * e['mean_random']:.1f}% for {e['n_random']} random "
                         f"alive latents (corpus base rate {100 * r['base_rate']:.1f}%); difference "
                         f"{100 * e['difference']:+.1f} points, 95% bootstrap CI [{100 * e['ci_low']:+.1f}, "
                         f"{100 * e['ci_high']:+.1f}], permutation p = {e['p_permutation']:.4f}")
        lines += ["", "| latent | E\|Δpre\| | c | d | share from slice | keywords (top-context tokens) | "
                      "strongest context |", "|---|---|---|---|---|---|---|"]
        for row in r["top_moved"][:10]:
            ctx = row["top_context"].replace("|", "\\|").replace("\n", " ")
            kw = ", ".join(f"`{k}`" for k in row["keywords"] if k) or "(space)"
            lines.append(f"| {row['latent']} | {row['shift']:.3f} | {row['c']:.3f} | {row['d']:+.3f} | "
                         f"{100 * row['share_from_slice']:.0f}% | {kw} | {ctx} |")
        lines.append("")
    if "sweep" in results:
        sw = results["sweep"]
        best = min(sw["insertion"], key=lambda r: r["ce_spliced"])
        lines += [f"Insertion sweep ({sw['n_texts']} held-out paragraphs): the layer-{sw['main_layer']} SAE is "
                  f"best spliced at block {best['layer']} (CE {best['ce_spliced']:.3f}, clean {best['ce_clean']:.3f}).",
                  "", "| block | CE spliced (layer-%d SAE) | CE zero-ablated | own SAE: CE recovered |" % sw["main_layer"],
                  "|---|---|---|---|"]
        own = {r["layer"]: r["ce_loss_recovered_zero"] for r in sw["own_layer"]}
        for r in sw["insertion"]:
            o = f"{own[r['layer']]:.3f}" if r["layer"] in own else ""
            lines.append(f"| {r['layer']} | {r['ce_spliced']:.3f} | {r['ce_zero']:.3f} | {o} |")
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
    ap.add_argument("--methods", default="cd,mlp,full", help="tune methods, in order (a finished one is reused)")
    args = ap.parse_args()
    p = dict(PRESETS[args.preset])
    if args.model:
        p["model"] = args.model
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
    results |= {"preset": args.preset, "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.items()}}
    if args.merge:
        other = json.loads(pathlib.Path(args.merge).read_text())
        results |= {k: other[k] for k in ("extract", "sweep", "tune", "read") if k in other}
        results.setdefault("wall_s", {}).update(other.get("wall_s", {}))
    stages = args.stages.split(",")
    times = results.setdefault("wall_s", {})
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
            r = stage_tune(p, out, model, exports, args.methods.split(","))
            results["tune"] = {k: v for k, v in r.items() if k != "sae"}
        elif stage == "read":
            results["read"] = stage_read(p, out, model, exports)
        times[stage] = time.perf_counter() - t0
        results_path.write_text(json.dumps(results, indent=2, default=float))
    (results_path.parent / "tables.md").write_text(tables(results) + "\n")
    print(tables(results))
    return results


if __name__ == "__main__":
    main()
