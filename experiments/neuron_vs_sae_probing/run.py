"""MLP neurons vs SAE latents as units of a binary word property (grammatical/semantic gender).

    python experiments/neuron_vs_sae_probing/run.py --preset smoke|cpu|full [--out DIR] [--alpha 1e-5]

1. words: a closed hand-curated list of male/female counterpart pairs (``words.py``), each word read
   at its last token in 8 template sentences that end with it (one row per sentence, last-token pooling);
2. extract: ``mlp_hidden`` (the MLP's hidden layer: the neurons) of one layer, for those sentences and,
   token by token, for Wikipedia leads (the SAE's training data: general text, never the word list);
3. SAE: TopK on the Wikipedia token activations of the same hook;
4. probes (logistic regression, standardised, L2): train on 6 templates, test on the 2 held-out templates
   (every word in both splits, so a type-level control task is learnable by memorising words); selectivity
   = accuracy − mean accuracy on several random word→label maps (Hewitt & Liang control tasks); also
   held-out *words* (pairs split) and k-sparse probes (units ranked by Cohen's d);
5. per-unit Welch t-tests on per-word mean activations (words are the independent units), at the original
   study's uncorrected α = 1e-5 and at α = 0.05 with Bonferroni and Benjamini-Hochberg; significant unit
   indices; p-value histograms.

``--preset full`` documents a larger study (a bigger model's MLP, 16x expansion); not run here.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))
import words as W  # noqa: E402

PRESETS = {
    "smoke": dict(model="tiny", layer=1, n_wiki=40, context_length=32, d_sae_mult=2, k=8, sae_steps=40,
                  sae_batch=128, n_controls=3, n_pairs=30, ks=(1, 2, 5), torch_threads=1),
    "cpu": dict(model="smollm2-135m-instruct", layer=9, n_wiki=1500, context_length=64, d_sae_mult=2, k=32,
                sae_steps=600, sae_batch=512, n_controls=5, n_pairs=None, ks=(1, 2, 5, 10, 20, 50), torch_threads=2),
    # a larger study; needs the weights on the host (not run here)
    "full": dict(model="meta-llama/Llama-3.1-8B", layer=16, n_wiki=200000, context_length=128, d_sae_mult=16, k=64,
                 sae_steps=50000, sae_batch=4096, n_controls=10, n_pairs=None, ks=(1, 2, 5, 10, 20, 50, 100),
                 torch_threads=None),
}
TRAIN_TEMPLATES = 6  # templates 0-5 train the probes, 6-7 test them
ALPHAS = (1e-5, 0.05)


def log(msg):
    print(msg, flush=True)


def word_rows(p):
    pairs = W.PAIRS[: p["n_pairs"]] if p["n_pairs"] else W.PAIRS
    rows = []
    for pair_id, pair in enumerate(pairs):
        for gender, w in enumerate(pair):  # 0 = male, 1 = female
            for t, tpl in enumerate(W.TEMPLATES):
                rows.append({"text": tpl.format(w=w), "word": w, "label": gender, "template": t, "pair": pair_id})
    return rows


def extract(p, out, model):
    from sae_jax.lm.extract import ExtractConfig, run_extract

    rows = word_rows(p)
    path = out / "word_contexts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    hook = ("mlp_hidden",)
    common = dict(model=model, layers=(p["layer"],), hooks=hook, torch_threads=p["torch_threads"], progress=False)
    run_extract(ExtractConfig(out=str(out / "words_store"), text=str(path), pooling="last",
                              context_length=64, **common))  # room for the byte-level tiny tokenizer
    run_extract(ExtractConfig(out=str(out / "wiki_store"), text="wikipedia", max_texts=p["n_wiki"],
                              context_length=p["context_length"], **common))
    return rows


def arr(out, name, p):
    return str(out / name / f"layer{p['layer']}_mlp_hidden")


def train_sae(p, out, d_ff):
    from sae_jax.config import CheckpointConfig, DataConfig, LogConfig, OptimConfig, SAEConfig, TrainConfig
    from sae_jax.trainer import train

    run = out / "sae"
    if not (run / "export" / "cfg.json").exists():
        train(TrainConfig(run_dir=str(run), steps=p["sae_steps"],
                          data=DataConfig(store=arr(out, "wiki_store", p), batch_size=p["sae_batch"]),
                          sae=SAEConfig(architecture="topk", d_sae=p["d_sae_mult"] * d_ff, k=p["k"],
                                        dead_tokens=min(100_000, p["sae_steps"] * p["sae_batch"] // 2)),
                          optim=OptimConfig(warmup_steps=min(50, p["sae_steps"] // 5)),
                          checkpoint=CheckpointConfig(every=p["sae_steps"]),
                          log=LogConfig(every=max(p["sae_steps"] // 5, 1), progress=False)))
    return str(run / "export")


def per_word_means(X, words):
    uniq, inv = np.unique(words, return_inverse=True)
    S = np.zeros((uniq.size, X.shape[1]))
    np.add.at(S, inv, X)
    return S / np.bincount(inv)[:, None], uniq


def analyse(p, X, rows, alpha_extra):
    """Probes, control tasks, k-sparse curves and t-tests for one unit family (rows x units)."""
    from sae_jax.evals import probing as P
    from sae_jax.evals import stats as S

    y = np.array([r["label"] for r in rows])
    words = np.array([r["word"] for r in rows])
    tpl = np.array([r["template"] for r in rows])
    pair = np.array([r["pair"] for r in rows])
    tr, te = tpl < TRAIN_TEMPLATES, tpl >= TRAIN_TEMPLATES
    sel = P.control_task_selectivity(X[tr], y[tr], words[tr], X[te], y[te], words[te], p["n_controls"], seed=0)
    # generalisation to unseen words: whole pairs held out (every 4th pair)
    wtr, wte = pair % 4 != 0, pair % 4 == 0
    sel["heldout_word_accuracy"] = P.probe_accuracy(X[wtr], y[wtr], X[wte], y[wte])
    sparse = P.sparse_probing(X[tr], y[tr], X[te], y[te], p["ks"])
    sparse_words = P.sparse_probing(X[wtr], y[wtr], X[wte], y[wte], p["ks"])
    M, uniq = per_word_means(X, words)
    word_y = np.array([y[words == w][0] for w in uniq])
    t, pv = S.ttests(M, word_y)
    alive = (X != 0).any(0)
    sig = {}
    for a in sorted(set(ALPHAS) | set(alpha_extra)):
        c = S.significance_counts(pv, a).to_dict()
        c["indices"] = S.significant_units(pv, a)
        sig[f"{a:g}"] = c
    order = np.argsort(pv, kind="stable")[:10]
    return {"probe": sel, "sparse_ks": list(p["ks"]), "sparse_heldout_templates": list(sparse.values()),
            "sparse_heldout_words": list(sparse_words.values()), "n_units": int(X.shape[1]),
            "n_alive_on_words": int(alive.sum()), "significance": sig,
            "top_units": [{"unit": int(i), "t": float(t[i]), "p": float(pv[i])} for i in order],
            "pvalues": pv}


def run(p, out, model, alphas):
    from sae_jax.data.open import open_path
    from sae_jax.evals.core import evaluate_core
    from sae_jax.export import load_sae

    t0 = time.perf_counter()
    rows = extract(p, out, model)
    t1 = time.perf_counter()
    src = open_path(arr(out, "words_store", p), store=True)
    if src.n_rows != len(rows):
        raise RuntimeError(f"{src.n_rows} word rows stored for {len(rows)} sentences")
    X = src.read(np.arange(src.n_rows)).astype(np.float64)
    sae = load_sae(train_sae(p, out, X.shape[1]))
    t2 = time.perf_counter()
    wiki = open_path(arr(out, "wiki_store", p), store=True)
    core = evaluate_core(sae, wiki, np.arange(int(0.9 * wiki.n_rows), wiki.n_rows))  # the trainer's held-out tail
    Z = sae.encode(X.astype(np.float32)).astype(np.float64)
    res = {"n_words": len({r["word"] for r in rows}), "n_rows": len(rows), "n_templates": len(W.TEMPLATES),
           "n_wiki_tokens": int(wiki.n_rows), "d_ff": int(X.shape[1]), "d_sae": int(sae.d_sae),
           "sae_heldout": {"fvu": core.fvu, "l0": core.l0, "dead_fraction": core.dead_fraction},
           "word_codes_l0": float((Z != 0).sum(1).mean())}
    pvals = {}
    for name, F in (("neurons", X), ("sae_latents", Z)):
        r = analyse(p, F, rows, alphas)
        pvals[name] = r.pop("pvalues")
        res[name] = r
        log(f"  {name}: acc {r['probe']['accuracy']:.3f} control {r['probe']['control_accuracy']:.3f} "
            f"sel {r['probe']['selectivity']:.3f} heldout-word {r['probe']['heldout_word_accuracy']:.3f}; "
            f"significant at 1e-5: {r['significance']['1e-05']['n_uncorrected']}/{r['n_units']}")
    res["wall_s"] = {"extract": t1 - t0, "sae": t2 - t1, "analysis": time.perf_counter() - t2}
    return res, pvals


def plots(res, pvals, folder):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sae_jax.evals.plots import pvalue_histograms, sparse_probing_curve

    fig = pvalue_histograms({f"{k} (n={len(v)})": v for k, v in pvals.items()})
    fig.savefig(folder / "pvalue_histograms.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    ks = res["neurons"]["sparse_ks"]
    fig = sparse_probing_curve(ks, {f"{n}, {s}": res[n][f"sparse_{s}"] for n in ("neurons", "sae_latents")
                                    for s in ("heldout_templates", "heldout_words")},
                               dense={n: res[n]["probe"]["accuracy"] for n in ("neurons", "sae_latents")})
    fig.savefig(folder / "sparse_probing.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return ["pvalue_histograms.png", "sparse_probing.png"]


# ---------------------------------------------------------------- README from results.json

def tables(res) -> str:
    fam = ("neurons", "sae_latents")
    L = ["| units | n units | alive on words | probe acc (held-out templates) | control acc (mean ± SD over maps) "
         "| selectivity | probe acc (held-out words) |", "|---|---|---|---|---|---|---|"]
    for n in fam:
        r, pr = res[n], res[n]["probe"]
        L.append(f"| {n} | {r['n_units']} | {r['n_alive_on_words']} | {pr['accuracy']:.3f} | "
                 f"{pr['control_accuracy']:.3f} ± {np.std(pr['control_accuracies']):.3f} | {pr['selectivity']:.3f} | "
                 f"{pr['heldout_word_accuracy']:.3f} |")
    L += ["", "Units significant in per-unit Welch t-tests (per-word means, "
          f"{res['n_words']} words):", "",
          "| units | α | uncorrected | Bonferroni | Benjamini-Hochberg |", "|---|---|---|---|---|"]
    for n in fam:
        for a, c in res[n]["significance"].items():
            L.append(f"| {n} | {a} | {c['n_uncorrected']} ({c['n_uncorrected'] / c['n_units']:.1%}) | "
                     f"{c['n_bonferroni']} | {c['n_benjamini_hochberg']} |")
    L += ["", "k-sparse probes (units ranked by |Cohen's d| on the training split):", "",
          "| units | split | " + " | ".join(f"k={k}" for k in res["neurons"]["sparse_ks"]) + " |",
          "|---|---|" + "---|" * len(res["neurons"]["sparse_ks"])]
    for n in fam:
        for s in ("heldout_templates", "heldout_words"):
            L.append(f"| {n} | {s.replace('_', ' ')} | " + " | ".join(f"{v:.3f}" for v in res[n][f"sparse_{s}"]) + " |")
    L += ["", "Strongest units (smallest p):", ""]
    for n in fam:
        L.append(f"- {n}: " + ", ".join(f"#{u['unit']} (t={u['t']:+.1f}, p={u['p']:.1e})" for u in res[n]["top_units"][:5]))
    L.append("")
    L.append("The significant unit indices are in `results.json` (`<units>.significance.<α>.indices`).")
    return "\n".join(L)


README_HEAD = """# Neurons vs SAE latents for a word property (gender)

**Question.** Is a binary word property — male vs female reference — carried by individual MLP neurons
or by individual SAE latents, and is a linear probe on either *selective* (does it read the property, or
just memorise word identity)?

**Data.** `words.py`: a closed, hand-curated list of male/female counterpart pairs (pronouns, kinship
terms, titles and roles, animals, frequent given names; see its source note — no clean offline list ships
in the installed packages), each word read at its last token at the end of 8 template sentences.

**Command.**

    python experiments/neuron_vs_sae_probing/run.py --preset cpu            # the run below (writes this README)
    python experiments/neuron_vs_sae_probing/run.py --preset cpu --stages readme

`--preset smoke` (tiny random Llama, seconds) is a CI test; `--preset full` holds a larger study's sizes
(an 8B model's MLP, 16x expansion) and was **not run** here.

**Method.** Units: the MLP hidden layer (`mlp_hidden`, the down projection's input: the neurons) of one
layer of SmolLM2-135M-Instruct, and the latents of a TopK SAE trained on the same hook's token activations
of Wikipedia leads (general text, not the word list). Probes: standardised L2 logistic regression
(`sae_jax.evals.probing`), trained on 6 templates and tested on the 2 held-out templates; every word
occurs in both splits, so the Hewitt & Liang control tasks (random word → label maps at the real task's
class frequencies, several maps; `probing.control_task_selectivity`) are learnable by memorising words,
and selectivity = accuracy − mean control accuracy. A second split holds out whole word pairs
(generalisation to unseen words). t-tests: Welch, per unit, on per-word mean activations (words, not
sentences, are the independent observations; `sae_jax.evals.stats`), at the original study's uncorrected
α = 1e-5 and at α = 0.05 with Bonferroni and Benjamini-Hochberg.
"""


def conclusion(res) -> str:
    """The study's answer in one paragraph, numbers filled in from results.json."""
    n, z = res["neurons"], res["sae_latents"]
    s = lambda r, a, k: r["significance"][a][k]  # noqa: E731
    better = "neurons" if n["probe"]["heldout_word_accuracy"] > z["probe"]["heldout_word_accuracy"] else "SAE latents"
    return (
        f"**Conclusion.** On this layer, gender is read better from {better}. Probes on held-out templates reach "
        f"{n['probe']['accuracy']:.3f} (neurons) and {z['probe']['accuracy']:.3f} (SAE latents), but random word→label "
        f"maps reach {n['probe']['control_accuracy']:.3f} and {z['probe']['control_accuracy']:.3f}: selectivity is "
        f"{n['probe']['selectivity']:.3f} and {z['probe']['selectivity']:.3f}, i.e. with every word seen in training both "
        f"probes mostly memorise word identity. On unseen words the probes reach {n['probe']['heldout_word_accuracy']:.3f} "
        f"(neurons) vs {z['probe']['heldout_word_accuracy']:.3f} (latents); the best single unit "
        f"{n['sparse_heldout_words'][0]:.3f} vs {z['sparse_heldout_words'][0]:.3f}. At the original study's uncorrected "
        f"α = 1e-5, {s(n, '1e-05', 'n_uncorrected')} of {n['n_units']} neurons and {s(z, '1e-05', 'n_uncorrected')} of "
        f"{z['n_units']} latents separate the classes; at α = 0.05, {s(n, '0.05', 'n_uncorrected')} neurons / "
        f"{s(z, '0.05', 'n_uncorrected')} latents uncorrected, {s(n, '0.05', 'n_bonferroni')} / "
        f"{s(z, '0.05', 'n_bonferroni')} after Bonferroni and {s(n, '0.05', 'n_benjamini_hochberg')} / "
        f"{s(z, '0.05', 'n_benjamini_hochberg')} after Benjamini-Hochberg.")


def write_readme(results, here):
    res = results["cpu"]
    sae = res["sae_heldout"]
    lines = [README_HEAD, "## Results (cpu preset)", "",
             f"Run {res['date']} at commit `{res['commit']}` on the 2-core CPU machine: "
             f"{res['total_wall_s'] / 60:.1f} min ({', '.join(f'{k} {v / 60:.1f}' for k, v in res['wall_s'].items())} min). "
             f"Layer {results['params']['layer']}, {res['n_words']} words × {res['n_templates']} templates = "
             f"{res['n_rows']} rows; {res['d_ff']} neurons; SAE {res['d_sae']} latents (k={results['params']['k']}) "
             f"trained on {res['n_wiki_tokens']} Wikipedia tokens: held-out FVU {sae['fvu']:.3f}, "
             f"L0 {sae['l0']:.1f}, dead {100 * sae['dead_fraction']:.1f}%; "
             f"L0 on the word rows {res['word_codes_l0']:.1f}.", "",
             conclusion(res), "", tables(res), "", "![p-values](pvalue_histograms.png)", "", "![k-sparse](sparse_probing.png)", ""]
    disc = here / "discussion.md"
    (here / "README.md").write_text("\n".join(lines) + "\n" + (disc.read_text() if disc.exists() else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    ap.add_argument("--out", default=None, help="work folder (default runs/neuron_vs_sae_probing/PRESET)")
    ap.add_argument("--alpha", type=float, action="append", default=[],
                    help="extra significance level(s) besides 1e-5 and 0.05 (repeatable)")
    ap.add_argument("--stages", default="run", help="run, readme (cpu only), or run,readme")
    args = ap.parse_args()
    p = dict(PRESETS[args.preset])
    for a in args.alpha:
        if not 0 < a < 1:
            ap.error(f"--alpha {a}: a significance level is in (0, 1), e.g. 1e-5 or 0.05")
    out = pathlib.Path(args.out or f"runs/neuron_vs_sae_probing/{args.preset}")
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
        results["params"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.items()} | {"preset": args.preset}
        if p["model"] == "tiny":
            from sae_jax.lm.models import tiny_model_folder

            model = tiny_model_folder(out / "tiny_model", n_layers=2)
        else:
            model = p["model"]
        t0 = time.perf_counter()
        res, pvals = run(p, out, model, args.alpha)
        res["total_wall_s"] = time.perf_counter() - t0
        res["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=HERE).stdout.strip()
        res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        res["plots"] = plots(res, pvals, folder)
        results[args.preset] = res
        log(tables(res))
        tmp = results_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1, default=float))
        tmp.replace(results_path)
    if "readme" in stages or (args.preset == "cpu" and "run" in stages):
        write_readme(results, HERE)
    log(f"results: {results_path}")


if __name__ == "__main__":
    main()
