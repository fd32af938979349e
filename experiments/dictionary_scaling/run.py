"""How do a TopK SAE's reconstruction, CE-loss recovered, dead latents, speed and memory scale with the
dictionary size F at fixed k?

    python experiments/dictionary_scaling/run.py --preset smoke|cpu|full [--out DIR] [--stages ...]
        [--sizes 2048,4096,...] [--tokens N] [--batch B] [--device cpu|cuda]

Stages (comma-separated; each heavy one can take the shared lock on its own, and finished runs are skipped):

1. ``extract``: residual-stream activations of the preset's model at one layer for the first ``n_texts`` of
   the shuffled shipped Wikipedia leads (``sae_jax.lm.extract``; with ``extract_procs`` > 1 as ``--shard I/N``
   processes). The store's last 10% of rows (whole texts at the end) is the trainer's held-out tail.
2. ``train``: TopK SAEs (k fixed) in four groups, each run in its own process (its peak RSS is its own):
   ``fixed``: every size in ``sizes`` on the same token budget ``tokens``;
   ``matched``: a fixed compute budget ``tokens · sizes[0]`` latent-tokens (cost ∝ F per token), i.e.
   ``tokens · sizes[0] / F`` tokens at each size in ``matched_sizes``;
   ``noauxk``: the sizes in ``auxk_sizes`` again with AuxK off (``--sae.auxk-coef 0``), for dead latents;
   ``mesh``: one size on a ``(data 1, dict D)`` mesh (``--mesh.dict D``; forced host devices when the host
   has fewer accelerators), the same run as ``fixed`` at that size otherwise.
   Per run: held-out FVU, L0 and dead fraction (never fired on the held-out rows), the trainer's dead
   fraction (no firing in the last ``dead_tokens`` training tokens), steady-state tokens/s (from the
   trainer's log, compile excluded), peak RSS of the process, and the device's peak bytes where the
   backend reports them (GPU/TPU).
3. ``eval``: CE-loss recovered (``sae_jax.evals.splice.evaluate_splice``, zero-ablation baseline) on
   ``ce_texts`` texts that were never extracted, the LM loaded once.
4. ``plan``: ``sae-jax plan`` (the compiled step's per-device bytes, nothing allocated) at each run's size,
   batch and mesh: the planner's estimate next to the measured peak.
5. ``report``: power-law fits of held-out FVU against F (``sae_jax.evals.scaling``), plots, and (cpu) the
   README tables, all from ``results.json``; ``readme`` rewrites only the README.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).parent
SMOLLM2_LAYERS = 30
PRESETS = {
    "smoke": dict(model="tiny", layer=1, n_texts=70, context_length=24, ce_texts=4, k=4,
                  sizes=[64, 128, 256], tokens=1536, batch=64, matched_sizes=[256], auxk_sizes=[256],
                  mesh_size=256, mesh_dict=2, dead_tokens=512, eval_rows=2000, extract_procs=1,
                  torch_threads=1, isolate=False, warmup_steps=5, seed=0, plan_all=False, sink_factor=10.0),
    # 2-core CPU: extraction runs at ~500 tokens/s here, so ~300k tokens (~10 min); F = 2^11..2^15 on 2^18
    # tokens each (one pass; the largest run a few minutes)
    "cpu": dict(model="smollm2-135m-instruct", layer=15, n_texts=3300, context_length=128, ce_texts=8, k=32,
                sizes=[2**11, 2**12, 2**13, 2**14, 2**15], tokens=2**18, batch=1024,
                matched_sizes=[2**12, 2**13, 2**14, 2**15], auxk_sizes=[2**12, 2**14], mesh_size=2**14, mesh_dict=2,
                dead_tokens=2**16, eval_rows=50000, extract_procs=2, torch_threads=2, isolate=True,
                warmup_steps=100, seed=0, plan_all=True, sink_factor=10.0),
    # the cpu preset's store and its fixed-budget sizes up to 2^14, with 4x the tokens (~3.4 passes over the rows)
    "cpu_long": dict(model="smollm2-135m-instruct", layer=15, n_texts=3300, context_length=128, ce_texts=8, k=32,
                     sizes=[2**11, 2**12, 2**13, 2**14], tokens=2**20, batch=1024, matched_sizes=[], auxk_sizes=[],
                     mesh_size=2**14, mesh_dict=2, dead_tokens=2**16, eval_rows=50000, extract_procs=2,
                     torch_threads=2, isolate=True, warmup_steps=100, seed=0, plan_all=False),
    # documented GPU/TPU study (not run here): every shipped Wikipedia lead (~1M tokens; several epochs at the
    # larger budgets), F = 2^14..2^24; run `--stages plan` first to see which sizes fit one device
    "full": dict(model="smollm2-135m-instruct", layer=15, n_texts=10000, context_length=128, ce_texts=64, k=32,
                 sizes=[2**i for i in range(14, 25)], tokens=2**23, batch=4096,
                 matched_sizes=[2**i for i in range(15, 25, 2)], auxk_sizes=[2**16, 2**20], mesh_size=2**20,
                 mesh_dict=2, dead_tokens=2**21, eval_rows=100000, extract_procs=1, torch_threads=None,
                 isolate=True, warmup_steps=500, seed=0, plan_all=True, sink_factor=10.0),
}
GROUPS = ("fixed", "matched", "noauxk", "mesh")
SUMMARY = "extract_summary.json"  # beside the store (the store's own extract.json is its manifest)


def log(msg):
    print(msg, flush=True)


def texts_for(p):
    """Shuffled Wikipedia leads: the first n_texts are extracted, the next ce_texts are the CE texts."""
    from sae_jax.data.text import wikipedia

    wiki = wikipedia()
    order = np.random.default_rng(3).permutation(len(wiki.texts))
    need = p["n_texts"] + p["ce_texts"]
    if need > len(order):
        raise ValueError(f"n_texts + ce_texts = {need} exceeds the {len(order)} shipped Wikipedia leads; lower n_texts")
    picked = [wiki.texts[i] for i in order[:need]]
    return picked[: p["n_texts"]], picked[p["n_texts"]:]


def model_path(p, out):
    if p["model"] != "tiny":
        return p["model"]
    from sae_jax.lm.models import tiny_model_folder

    return tiny_model_folder(out / "tiny_model", n_layers=2)


def store_path(p, out):
    return str(out / "store" / f"layer{p['layer']}_resid")


# ---------------------------------------------------------------- stage 1: extraction

def _summary(p, out, wall, n_texts, procs, device, **extra):
    from sae_jax.data.open import open_path

    src = open_path(store_path(p, out), store=True)
    res = {"wall_s": wall, "n_texts": n_texts, "n_tokens": int(src.n_rows), "d_model": int(src.d_in),
           "procs": procs, "device": device, "tokens_per_s": int(src.n_rows) / wall} | extra
    (out / SUMMARY).write_text(json.dumps(res, indent=1))
    log(f"extract: {res['n_tokens']} tokens from {n_texts} texts in {wall:.0f} s "
        f"({res['tokens_per_s']:.0f} tokens/s, {procs} process(es))")
    return res


def stage_extract(p, out, device):
    from sae_jax.data.store import read_json
    from sae_jax.lm.extract import MANIFEST, ExtractConfig, run_extract

    if (out / SUMMARY).exists():
        log("extract: done before, skipped")
        return json.loads((out / SUMMARY).read_text())
    texts, _ = texts_for(p)
    corpus = out / "corpus.jsonl"
    manifest = read_json(str(out / "store"), MANIFEST)
    if manifest is not None and manifest.get("complete") and corpus.exists():
        # the parts finished after their launcher stopped: wall time from the corpus write to the store's commit
        wall = (out / "store" / MANIFEST).stat().st_mtime - corpus.stat().st_mtime
        return _summary(p, out, wall, len(texts), p["extract_procs"], device, wall_from_file_times=True)
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    kw = dict(model=model_path(p, out), out=str(out / "store"), text=str(corpus), layers=(p["layer"],),
              hooks=("resid",), context_length=p["context_length"], device=device, progress=False,
              torch_threads=None if device != "cpu" or not p["torch_threads"] else
              max(1, p["torch_threads"] // p["extract_procs"]))
    t0 = time.perf_counter()
    n = p["extract_procs"]
    if n == 1:
        run_extract(ExtractConfig(**kw))
    else:  # N disjoint parts in parallel processes, the same settings besides --shard
        code = ("import json,sys; from sae_jax.lm.extract import ExtractConfig, run_extract; "
                "c=json.loads(sys.argv[1]); c['layers']=tuple(c['layers']); c['hooks']=tuple(c['hooks']); "
                "run_extract(ExtractConfig(**c))")
        procs = [subprocess.Popen([sys.executable, "-c", code, json.dumps(kw | {"shard": f"{i}/{n}"})])
                 for i in range(n)]
        if any(pr.wait() for pr in procs):
            raise RuntimeError("an extraction part failed; rerun the extract stage to resume it")
    return _summary(p, out, time.perf_counter() - t0, len(texts), n, device)


# ---------------------------------------------------------------- stage 2: training

ROWS = "rows.npy"  # the training/eval rows: the store's rows without the attention-sink outliers


def sink_rows(p, out):
    """Write the store's rows without outlier-norm rows (> ``sink_factor`` × the median norm) to ``rows.npy``.

    SmolLM2's first token of every text is an attention sink whose residual norm is ~100× the others'; those
    ~1% of rows carry ~99% of the variance, so FVU over all rows would measure how well one direction is
    copied. They are dropped here (and left unspliced in the CE eval), as is usual for BOS/sink tokens.
    """
    from sae_jax.data.open import open_path
    from sae_jax.data.store import read_positions

    summary_path = out / "rows_summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    src = open_path(store_path(p, out), store=True)
    norms = np.concatenate([np.linalg.norm(src.read(np.arange(i, min(i + 65536, src.n_rows))), axis=1)
                            for i in range(0, src.n_rows, 65536)])
    threshold = float(p["sink_factor"] * np.median(norms))
    keep = np.flatnonzero(norms <= threshold)
    _, pos = read_positions(str(out / "store"))
    pos = np.asarray(pos)
    arr = np.lib.format.open_memmap(out / ROWS, mode="w+", dtype=np.float32, shape=(len(keep), src.d_in))
    tot = 0.0
    mean = np.zeros(src.d_in)
    for i in range(0, src.n_rows, 65536):  # two passes over the store: copy the kept rows, then variance shares
        rows = np.arange(i, min(i + 65536, src.n_rows))
        x = src.read(rows)
        mean += x.sum(0)
        k = norms[rows] <= threshold
        lo = np.searchsorted(keep, rows[0])
        arr[lo:lo + int(k.sum())] = x[k]
    arr.flush()
    mean /= src.n_rows
    dropped_var = 0.0
    for i in range(0, src.n_rows, 65536):
        rows = np.arange(i, min(i + 65536, src.n_rows))
        d2 = ((src.read(rows) - mean) ** 2).sum(1)
        tot += d2.sum()
        dropped_var += d2[norms[rows] > threshold].sum()
    dropped = np.flatnonzero(norms > threshold)
    res = {"n_rows_store": int(src.n_rows), "n_rows_kept": int(len(keep)), "n_dropped": int(len(dropped)),
           "threshold_norm": threshold, "median_norm": float(np.median(norms)),
           "dropped_median_norm": float(np.median(norms[dropped])) if len(dropped) else None,
           "dropped_share_at_position_0": float((pos[dropped] == 0).mean()) if len(dropped) else None,
           "position_0_share_dropped": float((norms[pos == 0] > threshold).mean()) if (pos == 0).any() else None,
           "dropped_share_of_variance": float(dropped_var / tot) if tot > 0 else None}
    summary_path.write_text(json.dumps(res, indent=1))
    log(f"rows: dropped {res['n_dropped']} outlier rows (norm > {threshold:.0f}; "
        f"{res['dropped_share_of_variance']:.1%} of the variance), kept {res['n_rows_kept']}")
    return res


def run_specs(p):
    """Every run of the study: name, group, F, tokens, AuxK on/off, mesh dict size."""
    s0 = p["seed"]
    specs = [dict(name=f"fixed_F{F}", group="fixed", F=F, tokens=p["tokens"], auxk=True, dict=1, seed=s0)
             for F in p["sizes"]]
    budget = p["tokens"] * p["sizes"][0]  # latent-tokens: the smallest fixed run's compute
    specs += [dict(name=f"matched_F{F}", group="matched", F=F, tokens=max(budget // F, p["batch"]), auxk=True, dict=1,
                  seed=s0)
              for F in p["matched_sizes"]]
    specs += [dict(name=f"noauxk_F{F}", group="noauxk", F=F, tokens=p["tokens"], auxk=False, dict=1, seed=s0)
              for F in p["auxk_sizes"]]
    # the sharded run repeats fixed_F{mesh_size}; a second seed on one device gives the noise to compare with
    specs += [dict(name=f"mesh_F{p['mesh_size']}_dict{p['mesh_dict']}", group="mesh", F=p["mesh_size"],
                   tokens=p["tokens"], auxk=True, dict=p["mesh_dict"], seed=s0),
              dict(name=f"seed{s0 + 1}_F{p['mesh_size']}", group="mesh", F=p["mesh_size"], tokens=p["tokens"],
                   auxk=True, dict=1, seed=s0 + 1)]
    return specs


def run_lr(F):
    """Adam's peak lr of every run here: Gao et al.'s 2e-4 at 2^14 latents, scaled by 1/sqrt(F / 2^14)."""
    return 2e-4 / float(np.sqrt(F / 2**14))


def train_config(p, spec, out):
    from sae_jax.config import (CheckpointConfig, DataConfig, LogConfig, MeshConfig, OptimConfig, SAEConfig,
                                TrainConfig)

    steps = max(1, spec["tokens"] // p["batch"])
    return TrainConfig(
        run_dir=str(out / "runs" / spec["name"]), steps=steps, seed=spec["seed"],
        data=DataConfig(npy=str(out / ROWS), batch_size=p["batch"], seed=spec["seed"]),
        sae=SAEConfig(architecture="topk", d_sae=spec["F"], k=p["k"], dead_tokens=p["dead_tokens"],
                      **({} if spec["auxk"] else {"auxk_coef": 0.0})),
        # lr pinned to the rule these runs were made with (the library default may change): 2e-4/sqrt(F/2^14)
        optim=OptimConfig(lr=run_lr(spec["F"]), warmup_steps=min(p["warmup_steps"], max(steps // 10, 1))),
        mesh=MeshConfig(dict=spec["dict"]),  # data axis: every other device
        checkpoint=CheckpointConfig(every=steps, keep=1),
        log=LogConfig(every=max(1, min(20, steps // 10)), progress=False))


def steady_rate(metrics_path, batch):
    """Tokens/s between the first and the last logged step: the compile and the first steps left out."""
    lines = [json.loads(line) for line in pathlib.Path(metrics_path).read_text().splitlines()]
    lines = [m for m in lines if "tokens_per_s" in m]
    if len(lines) < 2:
        return float("nan")
    t = [m["tokens"] / m["tokens_per_s"] for m in lines]  # the log's rate is cumulative since the loop began
    return (lines[-1]["tokens"] - lines[0]["tokens"]) / (t[-1] - t[0])


def device_peak_bytes():
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def train_one(p, spec, out):
    """Train one run (in this process) and score it on the held-out rows; returns its result dict."""
    import jax

    from sae_jax.data.open import held_out_start_row, open_path
    from sae_jax.evals.core import evaluate_core
    from sae_jax.export import load_sae
    from sae_jax.trainer import train

    cfg = train_config(p, spec, out)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    r = train(cfg)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the eval below adds its own
    dev_peak = device_peak_bytes()
    src = open_path(str(out / ROWS), store=False)
    lo = held_out_start_row(src.n_rows, cfg.data.holdout_fraction)
    rows = np.arange(lo, min(src.n_rows, lo + p["eval_rows"]))
    sae = load_sae(r.export_dir)
    core = evaluate_core(sae, src, rows)
    res = spec | {"steps": cfg.steps, "tokens": cfg.steps * p["batch"], "batch": p["batch"], "k": p["k"],
                  "lr": run_lr(spec["F"]), "wall_s": wall,
                  "tokens_per_s": steady_rate(pathlib.Path(cfg.run_dir) / "metrics.jsonl", p["batch"]),
                  "peak_rss_bytes": rss, "rss_before_train_bytes": rss0, "device_peak_bytes": dev_peak,
                  "backend": jax.default_backend(), "n_devices": jax.device_count(),
                  "fvu": core.fvu, "l0": core.l0, "dead_fraction_heldout": core.dead_fraction,
                  "heldout_rows": int(len(rows)), "dead_fraction_train": r.metrics.get("dead_frac"),
                  "train_fvu_last": r.metrics.get("fvu"), "export": str(r.export_dir)}
    return res


def child_env(spec):
    """The environment of a run's process; None when the run cannot be done on this host.

    A dictionary-sharded run on a CPU host gets forced host devices; on an accelerator host with fewer
    devices than the dict axis it is skipped (forced host devices there would train on the CPU instead).
    """
    env = dict(os.environ)
    if spec["dict"] > 1:
        import jax

        if jax.device_count() < spec["dict"]:
            if jax.default_backend() != "cpu":
                return None
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                                f" --xla_force_host_platform_device_count={spec['dict']}").strip()
            env["JAX_PLATFORMS"] = "cpu"
    return env


def stage_train(p, out, groups):
    sink_rows(p, out)
    results = {}
    for spec in run_specs(p):
        if spec["group"] not in groups:
            continue
        done = out / "runs" / spec["name"] / "result.json"
        if done.exists():
            results[spec["name"]] = json.loads(done.read_text())
            log(f"train {spec['name']}: done before, skipped")
            continue
        log(f"train {spec['name']}: F={spec['F']} tokens={spec['tokens']} auxk={spec['auxk']} dict={spec['dict']}")
        env = child_env(spec)
        if env is None:
            log(f"  skipped: {spec['dict']} devices needed for the dict axis, this accelerator host has fewer")
            continue
        if p["isolate"] or spec["dict"] > 1:  # own process: its peak RSS is its own, and forced host devices need a fresh JAX
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps({"p": p, "spec": spec,
                                                                                     "out": str(out)})],
                                  env=env)
            if proc.returncode:
                raise RuntimeError(f"run {spec['name']} failed (exit {proc.returncode}); rerun the train stage")
            res = json.loads(done.read_text())
        else:
            res = train_one(p, spec, out)
            res["rss_note"] = "not isolated: the process's high-water mark so far"
            done.write_text(json.dumps(res, indent=1, default=float))
        results[spec["name"]] = res
        log(f"  FVU {res['fvu']:.4f} L0 {res['l0']:.1f} dead (held-out) {res['dead_fraction_heldout']:.3f} "
            f"{res['tokens_per_s']:.0f} tokens/s peak RSS {res['peak_rss_bytes'] / 2**30:.2f} GiB "
            f"wall {res['wall_s']:.0f} s")
    return results


# ---------------------------------------------------------------- stage 3: CE-loss recovered

def stage_eval(p, out, runs, device):
    import torch

    from sae_jax.evals import splice as ev
    from sae_jax.evals.run import token_batches
    from sae_jax.export import load_sae
    from sae_jax.lm import splice as lm_splice
    from sae_jax.lm.models import load_model

    _, ce_texts = texts_for(p)
    model, tok = load_model(model_path(p, out))
    model.to(device)
    batches = token_batches(tok, ce_texts, p["context_length"], batch_size=8)
    special = tok.all_special_ids
    threshold = sink_rows(p, out)["threshold_norm"]

    def keep_sinks(transform):  # the attention-sink rows (dropped from training) stay clean in every variant
        def apply(x):
            out_rows = np.asarray(transform(x), dtype=np.float32).copy()
            sink = np.linalg.norm(x, axis=1) > threshold
            out_rows[sink] = x[sink]
            return out_rows
        return apply

    mean = lm_splice.mean_activation(model, batches, p["layer"], "resid", special)
    t0 = time.perf_counter()
    for name, res in runs.items():
        if "ce_loss_recovered" in res:
            continue
        sae = load_sae(res["export"])
        variants = {"spliced": ev.reconstruct(sae), "spliced_with_error": ev.reconstruct_with_error(sae),
                    "zero": ev.zero_ablate(), "mean": ev.mean_ablate(mean)}
        with torch.no_grad():
            s = ev.splice_scores(lm_splice.splice_losses(model, batches, p["layer"], "resid",
                                                         {k: keep_sinks(v) for k, v in variants.items()}, special))
        res |= {"ce_loss_recovered": s.ce_loss_recovered_zero, "ce_clean": s.ce_clean, "ce_spliced": s.ce_spliced,
                "ce_zero": s.ce_zero, "kl_spliced": s.kl_spliced, "ce_tokens": s.n_tokens}
        (out / "runs" / name / "result.json").write_text(json.dumps(res, indent=1, default=float))
        log(f"eval {name}: CE recovered {s.ce_loss_recovered_zero:.3f} (CE clean {s.ce_clean:.3f}, "
            f"spliced {s.ce_spliced:.3f}, zero {s.ce_zero:.3f}; {s.n_tokens} tokens)")
    return time.perf_counter() - t0


# ---------------------------------------------------------------- stage 4: the planner

def plan_one(p, d_in, F, dicts, out_json):
    from sae_jax.bench.config import PlanConfig
    from sae_jax.bench.plan import run_plan

    if pathlib.Path(out_json).exists():
        return json.loads(pathlib.Path(out_json).read_text())
    return run_plan(PlanConfig(architecture="topk", d_in=d_in, n_latents=F, k=p["k"], batch=p["batch"],
                               mesh=tuple(f"1x{d}" for d in dicts), out=str(out_json)))


def stage_plan(p, out, runs, d_in, sizes_only=False):
    """The planner at each run's (F, batch, mesh); with ``sizes_only`` at the preset's sizes (no runs needed)."""
    folder = out / "plans"
    folder.mkdir(exist_ok=True)
    plans = {}
    keys = ({(F, 1) for F in p["sizes"]} | {(p["mesh_size"], p["mesh_dict"])} if sizes_only else
            {(r["F"], r["dict"]) for r in runs.values()})
    if not p["plan_all"]:  # smoke: the largest one-device run and the sharded run only (each plan compiles twice)
        keys = {max(k for k in keys if k[1] == 1)} | {k for k in keys if k[1] > 1}
    for F in sorted({F for F, _ in keys}):  # one planner process per size, every mesh of that size in it
        meshes = sorted(d for G, d in keys if G == F)
        for r in plan_one(p, d_in, F, meshes, folder / f"plan_F{F}_{'_'.join(f'1x{d}' for d in meshes)}.json"):
            d = int(r["mesh"].split("x")[1])
            plans[f"{F}_1x{d}"] = {"F": F, "mesh": r["mesh"], "bytes_per_device": r["bytes_per_device"]["total"],
                                   "temp_bytes": r["bytes_per_device"]["temp"],
                                   "bytes_per_latent": r["bytes_per_latent_per_device"],
                                   "fixed_bytes": r["fixed_bytes_per_device"],
                                   "largest_n_latents_fitting": r["largest_n_latents_fitting"], "impl": r["impl_used"]}
            log(f"plan F={F} mesh {r['mesh']}: {r['bytes_per_device']['total'] / 2**20:.1f} MiB per device")
    return plans


# ---------------------------------------------------------------- stage 5: fits, plots, README

def fits(runs):
    from sae_jax.evals.scaling import fit_power_law, fit_power_law_floor

    out = {}
    for group in ("fixed", "matched"):
        rs = sorted((r for r in runs.values() if r["group"] == group), key=lambda r: r["F"])
        if group == "matched":  # the compute-matched curve starts at the fixed budget's smallest size
            rs = [r for r in runs.values() if r["group"] == "fixed" and r["F"] == min(x["F"] for x in runs.values()
                                                                                     if x["group"] == "fixed")] + rs
        F = [r["F"] for r in rs]
        for metric in ("fvu", "ce_loss_unrecovered"):
            y = [r["fvu"] if metric == "fvu" else 1 - r.get("ce_loss_recovered", np.nan) for r in rs]
            if len(F) < 2 or not np.all(np.isfinite(y)) or min(y) <= 0:
                continue
            entry = {"sizes": F, "values": y, "power_law": fit_power_law(F, y)}
            if len(F) >= 4:
                entry["power_law_floor"] = fit_power_law_floor(F, y, n_boot=500)
            out[f"{group}_{metric}"] = entry
    return out


def mem_slopes(runs, plans):
    """Bytes per latent: least-squares slope of measured peak RSS (fixed runs) against F, next to the planner's."""
    rs = sorted((r for r in runs.values() if r["group"] == "fixed"), key=lambda r: r["F"])
    F = np.array([r["F"] for r in rs], float)
    res = {}
    if len(F) >= 2:
        res["rss_bytes_per_latent"] = float(np.polyfit(F, [r["peak_rss_bytes"] for r in rs], 1)[0])
        dev = [r.get("device_peak_bytes") for r in rs]
        if all(d is not None for d in dev):
            res["device_bytes_per_latent"] = float(np.polyfit(F, dev, 1)[0])
        pl = [plans.get(f"{int(f)}_1x1", {}).get("bytes_per_device") for f in F]
        if all(v is not None for v in pl):
            res["plan_bytes_per_latent"] = float(np.polyfit(F, pl, 1)[0])
        res["tokens_per_s_times_F"] = [r["tokens_per_s"] * r["F"] for r in rs]  # flat if cost ∝ F
    return res


def _save_panels(fig, axes, folder, name):
    """Log-2 F axis, legend on every panel; write the PNG and close the figure. Returns its name."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("latents F")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / name, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return name


def plots(res, folder, longer=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sae_jax.evals.scaling import power_law

    runs = res["runs"]
    by = {g: sorted((r for r in runs.values() if r["group"] == g), key=lambda r: r["F"]) for g in GROUPS}
    by["seed"] = [r for r in by["mesh"] if r["dict"] == 1]  # the one-device second-seed replicate
    by["mesh"] = [r for r in by["mesh"] if r["dict"] > 1]
    names = []

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for g, m in (("fixed", "o"), ("matched", "s"), ("noauxk", "^"), ("mesh", "D"), ("seed", "x")):
        pts = by[g] if g != "matched" or not by["fixed"] else by["fixed"][:1] + by[g]  # matched starts at the same run
        if pts:
            ax.plot([r["F"] for r in pts], [r["fvu"] for r in pts], m + ("-" if g in ("fixed", "matched") else ""),
                    label={"fixed": f"same tokens ({res['params']['tokens']:,})", "matched": "compute-matched",
                           "noauxk": "no AuxK", "mesh": "dict-sharded mesh", "seed": "second seed"}[g])
    if longer and longer.get("runs"):  # the cpu_long preset: same store, 4x the tokens
        pts = sorted((r for r in longer["runs"].values() if r["group"] == "fixed"), key=lambda r: r["F"])
        ax.plot([r["F"] for r in pts], [r["fvu"] for r in pts], "v-", label=f"same tokens ({longer['params']['tokens']:,})")
    for key, ls in (("fixed_fvu", "--"), ("matched_fvu", ":")):
        if key in res["fits"]:
            f = res["fits"][key]
            grid = np.geomspace(min(f["sizes"]), max(f["sizes"]), 50)
            fl = f["power_law"]
            ax.plot(grid, power_law(grid, fl), ls, color="gray",
                    label=f"{key.split('_')[0]} fit: α={fl['alpha']:.3f} [{fl['alpha_ci'][0]:.3f}, {fl['alpha_ci'][1]:.3f}]")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("latents F")
    ax.set_ylabel("held-out FVU")
    ax.set_title(f"TopK k={res['params']['k']}: FVU vs dictionary size")
    ax.legend(fontsize=7)
    fig.savefig(folder / "fvu_vs_F.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    names.append("fvu_vs_F.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for g, m in (("fixed", "o-"), ("matched", "s-"), ("noauxk", "^"), ("mesh", "D"), ("seed", "x")):
        pts = [(r["F"], r["ce_loss_recovered"]) for r in by[g] if "ce_loss_recovered" in r]
        if pts:
            axes[0].plot(*zip(*pts), m, label=g)
        axes[1].plot([r["F"] for r in by[g]], [r["dead_fraction_train"] for r in by[g]], m, label=g)
    axes[0].set_ylabel("CE-loss recovered (zero ablation)")
    axes[1].set_ylabel(f"dead fraction (no firing in the last {res['params']['dead_tokens']:,} training tokens)")
    names.append(_save_panels(fig, axes, folder, "ce_dead_vs_F.png"))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    fx = by["fixed"]
    F = [r["F"] for r in fx]
    axes[0].plot(F, [r["tokens_per_s"] for r in fx], "o-", label="tokens/s (steady state)")
    axes[0].plot(F, [fx[0]["tokens_per_s"] * fx[0]["F"] / f for f in F], ":", color="gray", label="∝ 1/F from the smallest")
    if by["mesh"]:
        axes[0].plot([r["F"] for r in by["mesh"]], [r["tokens_per_s"] for r in by["mesh"]], "D",
                     label=f"dict-sharded ({by['mesh'][0]['dict']} devices)")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("tokens/s")
    axes[1].plot(F, [r["peak_rss_bytes"] / 2**30 for r in fx], "o-", label="peak RSS (measured)")
    if any(r.get("device_peak_bytes") for r in fx):
        axes[1].plot(F, [(r.get("device_peak_bytes") or np.nan) / 2**30 for r in fx], "s-", label="device peak (measured)")
    pl = [res["plans"].get(f"{f}_1x1", {}).get("bytes_per_device", np.nan) / 2**30 for f in F]
    axes[1].plot(F, pl, "^--", label="planner: step bytes per device")
    axes[1].set_ylabel("GiB")
    names.append(_save_panels(fig, axes, folder, "speed_memory_vs_F.png"))
    return names


def gib(b):
    return "–" if b is None or not np.isfinite(b) else f"{b / 2**30:.3f}"


def tables(res) -> str:
    runs, plans = res["runs"], res["plans"]
    L = ["| run | F | tokens | steps | held-out FVU | L0 | CE recovered | dead (train window) | dead (held-out) "
         "| tokens/s | wall s | peak RSS GiB | device peak GiB | planner GiB/device |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {g: i for i, g in enumerate(GROUPS)}
    for r in sorted(runs.values(), key=lambda r: (order[r["group"]], r["F"])):
        pl = plans.get(f"{r['F']}_1x{r['dict']}", {}).get("bytes_per_device")
        ce = r.get("ce_loss_recovered")
        L.append(f"| {r['name']} | {r['F']:,} | {r['tokens']:,} | {r['steps']} | {r['fvu']:.4f} | {r['l0']:.1f} | "
                 f"{'–' if ce is None else f'{ce:.3f}'} | {r['dead_fraction_train']:.3f} | "
                 f"{r['dead_fraction_heldout']:.3f} | {r['tokens_per_s']:,.0f} | {r['wall_s']:.0f} | "
                 f"{gib(r['peak_rss_bytes'])} | {gib(r.get('device_peak_bytes'))} | {gib(pl)} |")
    L += ["", "Power-law fits (`sae_jax.evals.scaling`; 95% CI of α: t interval of the log-log slope; with a floor "
          "c: residual bootstrap):", "", "| curve | points | α (a·F^−α) | 95% CI | R² | α with floor | 95% CI | floor c |",
          "|---|---|---|---|---|---|---|---|"]
    for key, f in res["fits"].items():
        a, fl = f["power_law"], f.get("power_law_floor")
        L.append(f"| {key} | {a['n']} | {a['alpha']:.3f} | [{a['alpha_ci'][0]:.3f}, {a['alpha_ci'][1]:.3f}] | "
                 f"{a['r2']:.3f} | " + (f"{fl['alpha']:.3f} | [{fl['alpha_ci'][0]:.3f}, {fl['alpha_ci'][1]:.3f}] | "
                                        f"{fl['floor']:.4f} |" if fl else "– | – | – |"))
    m = res["memory"]
    if m:
        big = max((r for r in runs.values() if r["group"] == "fixed"), key=lambda r: r["F"])
        big_plan = plans.get(f"{big['F']}_1x1", {}).get("bytes_per_device")
        L += ["", "Memory and cost per latent (least-squares slopes over the `fixed` runs):", "",
              f"- measured peak RSS: {m['rss_bytes_per_latent']:,.0f} bytes per latent"
              + (f"; device peak: {m['device_bytes_per_latent']:,.0f}" if "device_bytes_per_latent" in m else "")
              + (f"; planner (compiled step, args + outputs + temporaries): {m['plan_bytes_per_latent']:,.0f}"
                 if "plan_bytes_per_latent" in m else ""),
              f"- the largest run ({big['name']}): peak RSS {gib(big['peak_rss_bytes'])} GiB = "
              f"{gib(big['rss_before_train_bytes'])} GiB before `train` was called (Python and JAX) + "
              f"{gib(big['peak_rss_bytes'] - big['rss_before_train_bytes'])} GiB during it (rows, state, step); device peak {gib(big.get('device_peak_bytes'))} GiB; the planner's "
              f"compiled step {gib(big_plan)} GiB per device",
              "- tokens/s × F (constant when the cost per token grows linearly in F): "
              + ", ".join(f"{v:.3g}" for v in m["tokens_per_s_times_F"])]
    return "\n".join(L)


def plan_table(res) -> str:
    L = ["| F | mesh | planner GiB/device | temp GiB | bytes/latent | largest F fitting (90% of): "
         + ", ".join(next(iter(res["full_plans"]["plans"].values()))["largest_n_latents_fitting"]) + " |",
         "|---|---|---|---|---|---|"]
    for v in sorted(res["full_plans"]["plans"].values(), key=lambda v: (v["F"], v["mesh"])):
        fits_ = ", ".join(f"{x / 2**20:,.1f}M" if x else "–" for x in v["largest_n_latents_fitting"].values())
        L.append(f"| {v['F']:,} | {v['mesh']} | {gib(v['bytes_per_device'])} | {gib(v['temp_bytes'])} | "
                 f"{v['bytes_per_latent']:,.0f} | {fits_} |")
    return "\n".join(L)


README_HEAD = """# Dictionary scaling of TopK SAEs (fixed k) on SmolLM2-135M

**Question.** At fixed k, how do held-out FVU and CE-loss recovered fall as the number of latents F grows
(power-law exponent α of FVU(F) = a·F^−α, compared with the published exponent for TopK SAEs), how many
latents die with and without AuxK, and do speed and memory grow linearly in F, also on a
dictionary-sharded mesh?

**Command.** Each heavy stage under the shared lock, in turn:

    P="python experiments/dictionary_scaling/run.py --preset cpu"
    flock /work/heavy.lock $P --stages extract
    flock /work/heavy.lock $P --stages train      # all groups; or one at a time: --groups fixed (matched, noauxk, mesh)
    flock /work/heavy.lock $P --stages eval,plan
    $P --stages report                                            # fits, plots, this README

`--preset smoke` (tiny random Llama, ~30 s) is a test (`pytest -m slow tests/test_experiment_dictionary_scaling.py`). `--preset full` (F = 2^14…2^24 on a GPU/TPU host)
is documented, with its planner output below, and was **not run** here; the same script runs it unchanged
(`--device cuda` for the extraction; `--sizes`, `--tokens`, `--batch` override the preset).

**Method.** See the docstring of `run.py`. TopK (ReLU after the top-k), decoder rows unit-norm, AuxK
(k_aux = d/2, coefficient 1/32) unless marked, Adam at the library's default lr 2e-4/√(F/2^14) with warm-up,
no decay; inputs scaled to E‖x‖ = √d (the trainer's `expected_norm`). One pass over the token budget (no
repeated rows at the cpu budget). Rows whose norm exceeds 10× the median (SmolLM2's attention sink on the
first token of every text) are dropped before training and left unspliced in the CE eval (numbers below). FVU on the store's held-out tail (last 10% of rows, whole texts);
CE-loss recovered = (CE_zero − CE_SAE)/(CE_zero − CE_clean) on texts never extracted. *Dead (train window)*:
no firing in the last `dead_tokens` training tokens (the trainer's counter); *dead (held-out)*: no firing on
the held-out rows (grows with F at a fixed number of rows: a latent with frequency < 1/rows looks dead).
"""


def write_readme(results):
    if "cpu" not in results:
        (HERE / "README.md").write_text(README_HEAD + "\n## Results (cpu preset)\n\n**Not run yet.**\n")
        return
    res = results["cpu"]
    p = res["params"]
    ex = res["extract"]
    wall = res.get("wall_s", {})
    lines = [README_HEAD, "## Results (cpu preset)", "",
             f"Stages run {res.get('date', '?')} at commit `{res.get('commit', '?')}` on the 2-core CPU machine "
             f"(JAX backend {next(iter(res['runs'].values()))['backend']}): "
             + ", ".join(f"{k} {v / 60:.1f} min" for k, v in wall.items()) + ". "
             f"SmolLM2-135M-Instruct, residual stream after block {p['layer']}, {ex['n_texts']} Wikipedia leads "
             f"≤ {p['context_length']} tokens → {ex['n_tokens']:,} tokens (d = {ex['d_model']}), extracted at "
             f"{ex['tokens_per_s']:,.0f} tokens/s ({ex['procs']} process(es)). TopK k = {p['k']}, batch {p['batch']}, "
             f"compute budget of the matched runs: {p['tokens'] * p['sizes'][0]:,} latent-tokens.", "",
             f"Attention-sink rows dropped before training (norm > {p['sink_factor']:g}× the median "
             f"{res['rows']['median_norm']:.0f}): {res['rows']['n_dropped']:,} of {res['rows']['n_rows_store']:,} rows "
             f"({res['rows']['dropped_share_at_position_0']:.0%} of them the first token of a text, median norm "
             f"{res['rows']['dropped_median_norm']:,.0f}), carrying {res['rows']['dropped_share_of_variance']:.1%} of "
             f"the variance; {res['rows']['n_rows_kept']:,} rows remain (last 10% held out). In the CE eval these "
             "rows are left unspliced in every variant.", "",
             tables(res), "", "![FVU vs F](fvu_vs_F.png)", "", "![CE recovered and dead latents vs F](ce_dead_vs_F.png)",
             "", "![speed and memory vs F](speed_memory_vs_F.png)", ""]
    if results.get("cpu_long", {}).get("runs"):
        lg = results["cpu_long"]
        lines += ["## Longer budget (`--preset cpu_long`)", "",
                  f"The same store and settings, {lg['params']['tokens']:,} tokens per run (~"
                  f"{lg['params']['tokens'] / res['rows']['n_rows_kept']:.1f} passes over the training rows), "
                  f"F = 2^11…2^14 (run {lg.get('date', '?')} at commit `{lg.get('commit', '?')}`; "
                  + ", ".join(f"{k} {v / 60:.1f} min" for k, v in lg.get("wall_s", {}).items()) + "):", "",
                  tables(lg), ""]
    full = json.loads((HERE / "full_plan.json").read_text()) if (HERE / "full_plan.json").exists() else {}
    if full.get("full_plans"):
        fp = full["full_plans"]
        lines += ["## The `full` preset: planner output (not run)", "",
                  f"`sae-jax plan` for the full preset's sizes (TopK k={fp['params']['k']}, d_in={fp['d_in']}, "
                  f"batch {fp['params']['batch']}, fp32 Adam; compiled on forced host devices, nothing allocated), "
                  f"written by `--preset full --stages plan` on {full['date']} (`full_plan.json`):", "", plan_table(full), ""]
    disc = HERE / "discussion.md"
    (HERE / "README.md").write_text("\n".join(lines) + "\n" + (disc.read_text() if disc.exists() else ""))


# ---------------------------------------------------------------- driver

def load_runs(p, out):
    runs = {}
    for spec in run_specs(p):
        f = out / "runs" / spec["name"] / "result.json"
        if f.exists():
            runs[spec["name"]] = json.loads(f.read_text())
    return runs


def main():
    # GPU: no preallocation, so each run's process holds only what it uses (and reports it as its peak)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    ap.add_argument("--out", default=None, help="work folder (default runs/dictionary_scaling/PRESET)")
    ap.add_argument("--stages", default="extract,train,eval,plan,report",
                    help="comma-separated: extract, train, eval, plan, report, readme")
    ap.add_argument("--groups", default=",".join(GROUPS), help="train groups: " + ", ".join(GROUPS))
    ap.add_argument("--sizes", default=None, help="comma-separated dictionary sizes (overrides the preset)")
    ap.add_argument("--tokens", type=int, default=None, help="training tokens per fixed-budget run")
    ap.add_argument("--batch", type=int, default=None, help="tokens per step")
    ap.add_argument("--n-texts", type=int, default=None, help="texts to extract")
    ap.add_argument("--extract-procs", type=int, default=None, help="parallel extraction processes (--shard I/N)")
    ap.add_argument("--device", default=None, help="torch device for extraction and CE eval (default: cuda if any)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # one training run in its own process
        c = json.loads(args.child)
        res = train_one(c["p"], c["spec"], pathlib.Path(c["out"]))
        (pathlib.Path(c["out"]) / "runs" / c["spec"]["name"] / "result.json").write_text(
            json.dumps(res, indent=1, default=float))
        return
    p = dict(PRESETS[args.preset])
    if args.sizes:
        p["sizes"] = [int(s) for s in args.sizes.split(",")]
    for key in ("tokens", "batch", "n_texts", "extract_procs"):
        if getattr(args, key) is not None:
            p[key] = getattr(args, key)
    if any(F < p["k"] for F in p["sizes"]):
        raise ValueError(f"every size must be >= k = {p['k']}; got {p['sizes']}")
    stages = args.stages.split(",")
    groups = args.groups.split(",")
    for s in stages:
        if s not in ("extract", "train", "eval", "plan", "report", "readme"):
            raise ValueError(f"unknown stage {s!r}; choose from extract, train, eval, plan, report, readme")
    for g in groups:
        if g not in GROUPS:
            raise ValueError(f"unknown train group {g!r}; choose from {', '.join(GROUPS)}")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if p["torch_threads"]:
        torch.set_num_threads(p["torch_threads"])
    out = pathlib.Path(args.out or f"runs/dictionary_scaling/{args.preset}")
    out.mkdir(parents=True, exist_ok=True)
    folder = HERE if args.preset in ("cpu", "cpu_long", "full") and not args.out else out
    results_path = folder / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    res = results.get(args.preset, {})
    res["params"] = p | {"preset": args.preset}
    wall = res.setdefault("wall_s", {})

    def timed(name, fn):
        t0 = time.perf_counter()
        value = fn()
        wall[name] = wall.get(name, 0.0) + time.perf_counter() - t0
        return value

    if args.preset == "full" and "plan" in stages and not (out / SUMMARY).exists():
        # the documented study: plan its sizes without any data (d_in = SmolLM2-135M's 576)
        d_in = 576
        plans = stage_plan(p, out, {}, d_in, sizes_only=True)
        full = {"full_plans": {"params": p, "d_in": d_in, "plans": plans}, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        (folder / "full_plan.json").write_text(json.dumps(full, indent=1, default=float))
        log(plan_table(full))
        return
    if "extract" in stages:
        res["extract"] = stage_extract(p, out, device)
        wall["extract"] = res["extract"]["wall_s"]  # the extraction's own time (a skipped rerun adds nothing)
    if "train" in stages:
        timed("train", lambda: stage_train(p, out, groups))
    if (out / "rows_summary.json").exists():
        res["rows"] = json.loads((out / "rows_summary.json").read_text())
    runs = load_runs(p, out)
    if "eval" in stages:
        timed("eval", lambda: stage_eval(p, out, runs, device))
        runs = load_runs(p, out)
    if "plan" in stages:
        res["plans"] = timed("plan", lambda: stage_plan(p, out, runs, res["extract"]["d_model"]))
    res["runs"] = runs
    if "report" in stages:
        res.setdefault("plans", {})
        res["fits"] = fits(runs)
        res["memory"] = mem_slopes(runs, res["plans"])
        # cpu_long's curve is drawn in the cpu preset's FVU plot (rerun `--preset cpu --stages report`)
        res["plots"] = [] if args.preset == "cpu_long" else plots(res, folder, results.get("cpu_long"))
        res["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=HERE).stdout.strip()
        res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        log(tables(res))
    results[args.preset] = res
    tmp = results_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=float))
    tmp.replace(results_path)
    if args.preset in ("cpu", "cpu_long") and ("report" in stages or "readme" in stages) and folder == HERE:
        write_readme(results)
    log(f"results: {results_path}")


if __name__ == "__main__":
    main()
