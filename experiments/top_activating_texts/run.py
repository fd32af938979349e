"""ReLU+L1 SAEs on per-text (pooled) and per-token activations, early-stopped on a validation split,
and the top-5 texts of their latents.

    python experiments/top_activating_texts/run.py --preset smoke|cpu|full [--out DIR]

1. corpus: Wikipedia leads (shuffled, topic-labelled) -> one token-level extraction of the residual stream
   at one layer; the per-text rows are the mean of each text's token rows (the extractor's ``pooling=mean``
   keeps the same tokens; one forward pass serves both SAEs);
2. SAEs: the ``relu`` preset (ReLU + L1, λ in the usual units: MSE on inputs at E‖x‖ = √d plus
   λ Σ|h|‖W_dec‖), trained in segments on the trainer's training rows; after each segment the export is
   scored on the held-out 10% (validation) with the same objective at the full λ
   (``sae_jax.evals.early_stopping``): training stops after ``patience`` segments without improvement and
   the best segment is kept (early stopping as eval-loss tracking across checkpoints; the trainer itself
   has none);
3. per segment: validation loss, FVU, L0, dead latents and the near-zero sparsity (share of code entries
   <= 1% of their latent's largest value); curves (PNG);
4. a PCA plot of the per-text codes coloured by topic (PNG);
5. top-5 texts per latent (``evals.browser.text_browser``; token SAE: texts ranked by the latent's
   largest activation on any of their tokens), HTML pages; latents that never fire on the corpus are
   listed as dead and never interpreted; topic purity of each latent's top 5 vs random 5-text draws.

``--preset full`` documents a larger study (not run here).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).parent
PRESETS = {
    "smoke": dict(model="tiny", layer=1, n_texts=80, context_length=24, pooled_d_sae=32, token_d_sae=64,
                  pooled_batch=16, token_batch=128, segment_steps=10, max_segments=4, patience=2,
                  n_show=8, torch_threads=1),
    "cpu": dict(model="smollm2-135m-instruct", layer=15, n_texts=1200, context_length=64, pooled_d_sae=1152,
                token_d_sae=2304, pooled_batch=128, token_batch=1024, segment_steps=150, max_segments=6,
                patience=2, n_show=30, torch_threads=2),
    "full": dict(model="meta-llama/Llama-3.1-8B", layer=16, n_texts=200000, context_length=256, pooled_d_sae=16384,
                 token_d_sae=65536, pooled_batch=1024, token_batch=4096, segment_steps=2000, max_segments=50,
                 patience=3, n_show=200, torch_threads=None),
}
NEAR_ZERO = 0.01  # relative threshold: an entry <= 1% of its latent's largest activation counts as ~zero


def log(msg):
    print(msg, flush=True)


def corpus(p, out):
    from sae_jax.data.text import wikipedia

    wiki = wikipedia()
    rng = np.random.default_rng(3)
    pick = rng.permutation(len(wiki.texts))[: p["n_texts"]]  # shuffled: the held-out tail holds every topic
    rows = [{"text": wiki.texts[i], "label": wiki.labels[i]} for i in pick]
    path = out / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, [r["text"] for r in rows], [r["label"] for r in rows]


def extract(p, out, model, path):
    from sae_jax.lm.extract import ExtractConfig, run_extract

    run_extract(ExtractConfig(model=model, out=str(out / "store"), text=str(path), label_field="label",
                              layers=(p["layer"],), hooks=("resid",), context_length=p["context_length"],
                              torch_threads=p["torch_threads"], progress=False))
    return str(out / "store" / f"layer{p['layer']}_resid")


def pool_mean(X, doc_ids, n_texts):
    S = np.zeros((n_texts, X.shape[1]))
    np.add.at(S, doc_ids, X)
    counts = np.bincount(doc_ids, minlength=n_texts)
    if (counts == 0).any():
        raise RuntimeError(f"{int((counts == 0).sum())} texts have no kept tokens")
    return (S / counts[:, None]).astype(np.float32)


def relu_config(run, steps, d_sae, batch, store=None):
    from sae_jax.config import CheckpointConfig, DataConfig, LogConfig, TrainConfig, presets

    base = presets()["relu"][1]
    return TrainConfig(run_dir=str(run), steps=steps,
                       data=DataConfig(store=store, batch_size=batch),
                       sae=base.sae.__class__(**{**base.sae.__dict__, "d_sae": d_sae,
                                                 "sparsity_warmup_steps": steps_warmup(batch),
                                                 "dead_tokens": 200 * batch}),
                       optim=base.optim, checkpoint=CheckpointConfig(every=steps),
                       log=LogConfig(every=10, progress=False))


def steps_warmup(batch):
    return 100  # λ reaches its target after 100 steps (before the first validation of the cpu preset)


def train_early_stopped(p, name, out, d_sae, batch, X_val, scale, array=None, store=None):
    """Segments of training, each scored on the validation rows; stops after ``patience`` segments
    without a lower validation loss, keeps the best export."""
    from sae_jax.data.source import ArraySource
    from sae_jax.evals import early_stopping as E
    from sae_jax.evals.core import evaluate_core
    from sae_jax.export import load_sae
    from sae_jax.trainer import train

    run = out / name
    curve, best = [], None
    for s in range(1, p["max_segments"] + 1):
        steps = s * p["segment_steps"]
        cfg = relu_config(run, steps, d_sae, batch, store)
        train(cfg, source=ArraySource(array) if array is not None else None)
        sae = load_sae(run / "export")
        obj = E.l1_objective(sae, X_val, cfg.sae.sparsity_coef, scale)
        h = sae.encode(X_val)
        core = evaluate_core(sae, ArraySource(X_val))
        curve.append({"step": steps, "val_loss": obj["loss"], "val_mse": obj["mse"], "val_l1": obj["l1"],
                      "fvu": core.fvu, "l0": core.l0, "dead_fraction_val": core.dead_fraction,
                      "near_zero": E.near_zero_fraction(h, NEAR_ZERO, relative=True),
                      "exact_zero": E.near_zero_fraction(h, 0.0)})
        log(f"  {name} step {steps}: val loss {obj['loss']:.2f} FVU {core.fvu:.3f} L0 {core.l0:.1f} "
            f"near-zero {curve[-1]['near_zero']:.3f}")
        b, stop = E.early_stop([c["val_loss"] for c in curve], p["patience"])
        if b == len(curve) - 1:
            best = run / "best_export"
            shutil.rmtree(best, ignore_errors=True)
            shutil.copytree(run / "export", best)
        if len(curve) - 1 - b >= p["patience"]:  # patience segments without a better validation loss
            break
    b, stop = E.early_stop([c["val_loss"] for c in curve], p["patience"])
    train_curve = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"curve": curve, "best_segment": b, "best_step": curve[b]["step"], "stopped_at_step": curve[-1]["step"],
            "early_stopped": len(curve) < p["max_segments"],
            "train_curve": [{"step": m["step"], "loss": m["loss"], "l0": m.get("l0")} for m in train_curve]}, str(best)


def topic_purity(top_texts_idx, labels, rng, n_draws=2000):
    """Share of a latent's top texts from their most common topic; baseline: random draws of as many texts."""
    lab = np.asarray(labels, dtype=object)
    _, codes = np.unique(lab, return_inverse=True)

    def purity(ix):
        return np.bincount(codes[ix]).max() / len(ix)

    got = [purity(np.asarray(ix)) for ix in top_texts_idx if len(ix) == 5]
    base = [purity(rng.choice(len(lab), 5, replace=False)) for _ in range(n_draws)]
    return {"mean_purity": float(np.mean(got)) if got else float("nan"), "n_latents": len(got),
            "random_5_texts_purity": float(np.mean(base))}


class _Identity:
    """Precomputed per-text codes served through the encode() interface text_browser expects."""

    def __init__(self, d):
        self.d_sae = d

    def encode(self, x):
        return x


def browse(p, name, codes_source, encoder, rows, texts, labels, out_folder, rng):
    """Top-5 texts of the most frequent alive latents; dead latents listed, never shown."""
    from sae_jax.evals.browser import pick_latents, text_browser

    h = np.concatenate([encoder.encode(codes_source.read(rows[i:i + 4096])) for i in range(0, len(rows), 4096)])
    freq = (h > 0).mean(0)
    dead = np.flatnonzero(freq == 0)
    show = pick_latents(freq, p["n_show"])
    ranked, page = text_browser(encoder, codes_source, rows, texts, rows, show, top_n=5,
                                title=f"Top-5 texts per latent: {name} SAE")
    (out_folder / f"top_texts_{name}.html").write_text(page)
    text_index = {t: i for i, t in enumerate(texts)}
    top_idx = [[text_index[t] for t in ranked[j]] for j in show]
    return {"n_latents": int(h.shape[1]), "n_dead_on_corpus": int(dead.size), "dead_latents": dead.tolist(),
            "frequency_of_shown": [float(freq[j]) for j in show],
            "top5": {str(j): [{"text": texts[i][:200], "topic": labels[i]} for i in ix] for j, ix in zip(show, top_idx)},
            "purity": topic_purity(top_idx, labels, rng), "page": f"top_texts_{name}.html"}


def run(p, out, model):
    from sae_jax.data.open import open_path
    from sae_jax.data.source import ArraySource
    from sae_jax.data.store import read_positions
    from sae_jax.evals import early_stopping as E
    from sae_jax.evals.core import split_rows
    from sae_jax.export import load_sae

    timing = {}
    t = time.perf_counter()
    path, texts, labels = corpus(p, out)
    arr = extract(p, out, model, path)
    timing["extract"] = time.perf_counter() - t
    src = open_path(arr, store=True)
    doc_ids, _ = read_positions(str(out / "store"))
    X_tok = src.read(np.arange(src.n_rows))
    pooled = pool_mean(X_tok, np.asarray(doc_ids), len(texts))
    res = {"n_texts": len(texts), "n_tokens": int(src.n_rows), "d_model": int(X_tok.shape[1]),
           "topics": sorted(set(labels))}
    rng = np.random.default_rng(0)

    t = time.perf_counter()
    val_p = split_rows(len(pooled), 0.9, 1.0)  # the trainer's held-out tail (holdout_fraction 0.1)
    scale_p = E.input_scale(pooled[: val_p[0]])
    res["pooled"], best_p = train_early_stopped(p, "pooled", out, p["pooled_d_sae"], p["pooled_batch"],
                                                pooled[val_p], scale_p, array=pooled)
    timing["pooled_sae"] = time.perf_counter() - t
    t = time.perf_counter()
    val_t = split_rows(src.n_rows, 0.9, 1.0)
    scale_t = E.input_scale(X_tok[rng.choice(val_t[0], min(20000, val_t[0]), replace=False)])
    res["token"], best_t = train_early_stopped(p, "token", out, p["token_d_sae"], p["token_batch"],
                                               X_tok[val_t], scale_t, store=arr)
    timing["token_sae"] = time.perf_counter() - t

    t = time.perf_counter()
    folder = HERE if p["model"] != "tiny" else out
    sae_p, sae_t = load_sae(best_p), load_sae(best_t)
    codes_p = sae_p.encode(pooled)
    res["pooled"]["browser"] = browse(p, "pooled", ArraySource(pooled), sae_p, np.arange(len(texts)), texts, labels,
                                      folder, rng)
    # token SAE: each text's largest activation per latent over its tokens
    tmax = np.zeros((len(texts), sae_t.d_sae), np.float32)
    for i in range(0, len(X_tok), 8192):
        np.maximum.at(tmax, np.asarray(doc_ids[i:i + 8192]), sae_t.encode(X_tok[i:i + 8192]))
    res["token"]["browser"] = browse(p, "token", ArraySource(tmax), _Identity(sae_t.d_sae), np.arange(len(texts)),
                                     texts, labels, folder, rng)
    res["pca_plot"] = pca_plot(codes_p, labels, folder, val_p)
    res["curves_plot"] = curves_plot(res, folder)
    timing["analysis"] = time.perf_counter() - t
    res["wall_s"] = timing
    return res


def pca_plot(codes, labels, folder, val_rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    Z = PCA(n_components=2, random_state=0).fit_transform(codes)
    fig, ax = plt.subplots(figsize=(7, 5))
    lab = np.asarray(labels, dtype=object)
    for topic in sorted(set(labels)):
        m = lab == topic
        ax.scatter(Z[m, 0], Z[m, 1], s=6, alpha=0.6, label=topic)
    ax.set_xlabel("PC 1 of per-text SAE codes")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=6, markerscale=2, loc="best")
    fig.savefig(folder / "pca_codes.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "pca_codes.png"


def curves_plot(res, folder):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for row, name in enumerate(("pooled", "token")):
        r = res[name]
        st = [c["step"] for c in r["curve"]]
        ax = axes[row, 0]
        tc = r["train_curve"]
        ax.plot([m["step"] for m in tc], [m["loss"] for m in tc], lw=0.8, label="train (λ ramped)")
        ax.plot(st, [c["val_loss"] for c in r["curve"]], "o-", label="validation (full λ)")
        ax.axvline(r["best_step"], color="k", ls=":", label="kept")
        ax.set_title(f"{name}: loss")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax = axes[row, 1]
        ax.plot(st, [c["near_zero"] for c in r["curve"]], "o-", label=f"near-zero (≤{NEAR_ZERO:g}·max)")
        ax.plot(st, [c["exact_zero"] for c in r["curve"]], "s--", label="exactly zero")
        ax.set_title(f"{name}: sparsity of codes (validation)")
        ax.legend(fontsize=7)
        ax = axes[row, 2]
        ax.plot(st, [c["fvu"] for c in r["curve"]], "o-", label="FVU")
        ax2 = ax.twinx()
        ax2.plot(st, [c["l0"] for c in r["curve"]], "s--", color="C3", label="L0")
        ax.set_title(f"{name}: FVU (o) and L0 (s, right)")
        for a in axes[row]:
            a.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(folder / "curves.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "curves.png"


# ---------------------------------------------------------------- README from results.json

def tables(res, params) -> str:
    L = ["| SAE | rows (train+val) | latents | kept step (stopped at) | val loss | val FVU | val L0 | near-zero share "
         "| exactly zero | dead on corpus | top-5 topic purity (random 5) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, rows in (("pooled", res["n_texts"]), ("token", res["n_tokens"])):
        r = res[name]
        c = r["curve"][r["best_segment"]]
        b = r["browser"]
        L.append(f"| {name} | {rows} | {b['n_latents']} | {r['best_step']} ({r['stopped_at_step']}"
                 f"{', early' if r['early_stopped'] else ', max'}) | {c['val_loss']:.2f} | {c['fvu']:.3f} | {c['l0']:.1f} | "
                 f"{c['near_zero']:.3f} | {c['exact_zero']:.3f} | {b['n_dead_on_corpus']} "
                 f"({b['n_dead_on_corpus'] / b['n_latents']:.0%}) | {b['purity']['mean_purity']:.2f} "
                 f"({b['purity']['random_5_texts_purity']:.2f}) |")
    L += ["", "Validation curve per segment:", "", "| SAE | step | val loss | FVU | L0 | near-zero | exactly zero |",
          "|---|---|---|---|---|---|---|"]
    for name in ("pooled", "token"):
        for c in res[name]["curve"]:
            L.append(f"| {name} | {c['step']} | {c['val_loss']:.2f} | {c['fvu']:.3f} | {c['l0']:.1f} | "
                     f"{c['near_zero']:.3f} | {c['exact_zero']:.3f} |")
    for name in ("pooled", "token"):
        L += ["", f"Top-5 texts of the {name} SAE's most frequent alive latents (first 6 shown; all in "
              f"`{res[name]['browser']['page']}`; first 90 characters, topic in brackets):", ""]
        for j, items in list(res[name]["browser"]["top5"].items())[:6]:
            L.append(f"- latent {j}: " + " · ".join(f"[{it['topic']}] {it['text'][:90]!r}" for it in items))
        sets = [tuple(it["text"] for it in items) for items in res[name]["browser"]["top5"].values()]
        largest = max(sets.count(t) for t in set(sets)) if sets else 0
        L += ["", f"Distinct top-5 text sets among these {len(sets)} latents: {len(set(sets))} (the largest group of "
              f"latents sharing one set: {largest})."]
    return "\n".join(L)


README_HEAD = """# Top-activating texts of ReLU+L1 SAEs (per-text and per-token), early-stopped

**Question.** Trained with the usual ReLU + L1 objective on a small model's residual stream, what do SAE
latents pick out when each *text* is one row (mean-pooled) versus when each token is one row, and how
sparse are the codes (exact zeros vs near-zero entries)? Latents that never fire are flagged as dead and
never interpreted.

**Command.**

    python experiments/top_activating_texts/run.py --preset cpu      # the run below; writes this README

`--preset smoke` (tiny random Llama, seconds) is a CI test; `--preset full` (an 8B model, 200k texts) is
documented only and was **not run** here.

**Method.** See the docstring of `run.py`. λ is the `relu` preset's (usual units: per-token Σ_d(x − x̂)²
on inputs scaled to E‖x‖ = √d, plus λ Σ_i |h_i|‖W_dec,i‖, decoder norms free; see the main README).
Early stopping: the trainer has none, so training runs in segments (the same run resumed) and each
segment's export is scored on the held-out 10% with the full-λ objective
(`sae_jax.evals.early_stopping.l1_objective`); training stops after `patience` segments without a lower
validation loss and the best segment is kept (`early_stop`). *Near-zero share*: the fraction of code
entries at most 1% of their latent's largest value on the validation rows
(`early_stopping.near_zero_fraction(codes, 0.01, relative=True)`); *exactly zero*: entries equal to 0.
*Topic purity*: share of a latent's 5 top texts from their most common Wikipedia topic, averaged over the
shown latents, next to the same for 5 random texts (a baseline, not a label).
"""


def write_readme(results):
    if "cpu" not in results:  # no run yet: the README says so instead of showing numbers
        (HERE / "README.md").write_text(README_HEAD + "\n## Results (cpu preset)\n\n**Not run yet.** The cpu preset "
                                        "has not been run on this branch; run the command above (under the shared "
                                        "lock) to write `results.json`, the plots and this section.\n")
        return
    res, params = results["cpu"], results["params"]
    lines = [README_HEAD, "## Results (cpu preset)", "",
             f"Run {res['date']} at commit `{res['commit']}` on the 2-core CPU machine: "
             f"{res['total_wall_s'] / 60:.1f} min ({', '.join(f'{k} {v / 60:.1f}' for k, v in res['wall_s'].items())} min). "
             f"SmolLM2-135M-Instruct, residual stream after block {params['layer']}, {res['n_texts']} Wikipedia leads "
             f"({len(res['topics'])} topics), {res['n_tokens']} tokens.", "",
             tables(res, params), "", "![curves](curves.png)", "", "![PCA of per-text codes](pca_codes.png)", ""]
    disc = HERE / "discussion.md"
    (HERE / "README.md").write_text("\n".join(lines) + "\n" + (disc.read_text() if disc.exists() else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    ap.add_argument("--out", default=None, help="work folder (default runs/top_activating_texts/PRESET)")
    ap.add_argument("--stages", default="run", help="run, readme (cpu only), or run,readme")
    args = ap.parse_args()
    p = dict(PRESETS[args.preset])
    out = pathlib.Path(args.out or f"runs/top_activating_texts/{args.preset}")
    out.mkdir(parents=True, exist_ok=True)
    if p["torch_threads"]:
        import torch

        torch.set_num_threads(p["torch_threads"])
    folder = HERE if args.preset == "cpu" else out
    results_path = folder / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    stages = args.stages.split(",")
    if "run" in stages:
        if args.preset == "full" and not pathlib.Path(p["model"]).exists():
            sys.exit(f"--preset full needs {p['model']} on this host (a local folder); it documents a larger study")
        results["params"] = dict(p) | {"preset": args.preset}
        if p["model"] == "tiny":
            from sae_jax.lm.models import tiny_model_folder

            model = tiny_model_folder(out / "tiny_model", n_layers=2)
        else:
            model = p["model"]
        t0 = time.perf_counter()
        res = run(p, out, model)
        res["total_wall_s"] = time.perf_counter() - t0
        res["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=HERE).stdout.strip()
        res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results[args.preset] = res
        log(tables(res, p))
        tmp = results_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1, default=float))
        tmp.replace(results_path)
    if "readme" in stages or (args.preset == "cpu" and "run" in stages):
        write_readme(results)
    log(f"results: {results_path}")


if __name__ == "__main__":
    main()
