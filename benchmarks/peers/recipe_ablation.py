"""Issue 15 item 6: which part of the TopK recipe decides held-out FVU at equal tokens.

The demo's data and budget (SmolLM2-135M-Instruct layer-9 resid store as `sae-jax demo` extracts it,
F 2048, k 32, 600 steps of 1,024 tokens, batch order = sae_jax's seed-0 order over the first 90% of
rows), held-out FVU / L0 / dead fraction on the last 10% of rows. Each variant changes ONE thing
from the demo's recipe as it was before this study (``base``: lr pinned to the old 2e-4 rule), mostly
to what EleutherAI sparsify 1.3.3 does; ``a+b`` combines variants; ``defaults`` is the library's
current default (docs/recipe.md). Results are merged into ``--out`` (one key
per variant and seed), so variants can run one process at a time (each under the heavy lock):

    python benchmarks/peers/recipe_ablation.py runs/demo/store/layer9_resid --variants base,lr_x4
    python benchmarks/peers/recipe_ablation.py STORE --dump /tmp/rows   # rows + batch order for recipe_sparsify.py

The sparsify side (its own Trainer.fit on the same rows, same batch order) is recipe_sparsify.py.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
STEPS, BATCH, D_SAE, K = 600, 1024, 2048, 32
# the demo's recipe before this study: warm-up 50, constant lr 2e-4/sqrt(F/2^14), AuxK 1/32 on latents
# silent for 200k tokens, expected-norm input scaling, geometric-median b_dec, W_enc = W_dec^T (unit rows)
BASE_LR = 2e-4 / math.sqrt(D_SAE / 2**14)


def _patch(obj, name, value):
    @contextlib.contextmanager
    def cm():
        old = getattr(obj, name)
        setattr(obj, name, value)
        try:
            yield
        finally:
            setattr(obj, name, old)
    return cm()


def _sparsify_init(key, d_in, d_sae, b_dec):
    """sparsify: nn.Linear's default (Kaiming-uniform, rows of norm ~1/sqrt(3)) encoder, W_dec = its
    rows normalised, zero b_enc."""
    import jax
    import jax.numpy as jnp
    bound = 1 / math.sqrt(d_in)
    w = jax.random.uniform(key, (d_sae, d_in), jnp.float32, -bound, bound)
    return {"W_enc": w.T, "b_enc": jnp.zeros((d_sae,), jnp.float32),
            "W_dec": w / jnp.linalg.norm(w, axis=-1, keepdims=True), "b_dec": jnp.asarray(b_dec, jnp.float32)}


def _scaled_init(scale):
    from sae_jax.sae.base import init_tied_params  # the unpatched one, captured before patching

    def init(key, d_in, d_sae, b_dec):
        p = init_tied_params(key, d_in, d_sae, b_dec)
        return p | {"W_enc": p["W_enc"] * scale}
    return init


def _sparsify_auxk(params, pre, x, x_hat, dead_mask, k_aux, topk, dtype):
    """sparsify's AuxK: squared error of the dead latents' reconstruction of the residual over the
    batch's total variance of x (not of the residual), times min(n_dead / k_aux, 1)."""
    import jax
    import jax.numpy as jnp
    from jax import lax
    from sae_jax import losses
    from sae_jax.sae.base import matmul
    residual = lax.stop_gradient(x - x_hat)
    n_dead = jnp.sum(dead_mask)

    def compute(_):
        dead_pre = jnp.where(dead_mask, pre, -jnp.inf)
        vals, _ = topk(dead_pre, k_aux)
        kth = lax.stop_gradient(jnp.min(vals, axis=1, keepdims=True))
        h_aux = jnp.where(dead_mask & (dead_pre >= kth), jax.nn.relu(pre), 0.0)
        err = jnp.sum(jnp.square(residual - matmul(h_aux, params["W_dec"], dtype)))
        return jnp.minimum(n_dead / k_aux, 1.0) * err / losses.total_variance(x) / x.shape[0]

    return lax.cond(n_dead > 0, compute, lambda _: jnp.zeros((), jnp.float32), None)


def variants() -> dict[str, dict]:
    """name -> {'sae': SAEConfig overrides, 'optim': ..., 'data': ..., 'patch': [(module, attr, value)], 'note'}"""
    from sae_jax import trainer
    from sae_jax.sae import base, topk
    mean_b_dec = lambda s: np.asarray(s, np.float64).mean(0)  # noqa: E731
    v = {
        "base": dict(note="sae_jax's recipe before this study (the demo's, `sae-jax demo`)"),
        "defaults": dict(optim=dict(lr=None), note="sae_jax's defaults after this study (what `sae-jax demo` runs now)"),
        "init_sparsify": dict(patch=[(base, "init_tied_params", _sparsify_init)],
                              note="encoder Kaiming-uniform (row norm ~0.58), W_dec = its rows normalised"),
        "enc_scale_0.58": dict(patch=[(base, "init_tied_params", _scaled_init(1 / math.sqrt(3)))],
                               note="W_enc = W_dec^T / sqrt(3): sparsify's encoder scale, our distribution"),
        "b_dec_mean": dict(patch=[(trainer, "geometric_median", mean_b_dec)],
                           note="b_dec init = mean (sparsify: first batch's mean) instead of geometric median"),
        "normalize_none": dict(data=dict(normalize="none"), note="no input scaling (sparsify has none)"),
        "auxk_off": dict(sae=dict(auxk_coef=0.0), note="no AuxK (sparsify's default auxk_alpha=0)"),
        "dead_10M": dict(sae=dict(dead_tokens=10_000_000),
                         note="dead after 10M tokens (sparsify's and our library default): AuxK never acts in 614k"),
        "auxk_sparsify_norm": dict(patch=[(topk, "auxk_loss", _sparsify_auxk)],
                                   note="AuxK normalised by Var(x) and scaled by min(n_dead/k_aux, 1), as sparsify"),
        "warmup_100": dict(optim=dict(warmup_steps=100), note="warm-up 100 steps (the peer harness's sparsify)"),
        "linear_decay": dict(optim=dict(warmup_steps=100, decay="linear"),
                             note="sparsify's Adam schedule: warm-up 100, linear decay to 0"),
        **{f"lr_x{m}": dict(optim=dict(lr=BASE_LR * m), note=f"lr x{m} = {BASE_LR * m:.2e}")
           for m in (2, 3, 4, 6, 8)},
    }
    return v


def spec_of(name: str) -> dict:
    """A variant's spec; 'a+b' combines variants a and b (config overrides merged, patches stacked)."""
    table = variants()
    spec: dict = {"sae": {}, "optim": {}, "data": {}, "patch": [], "note": []}
    for part in name.split("+"):
        if part not in table:
            raise ValueError(f"unknown variant {part!r}; known: {', '.join(table)} (combine with '+')")
        for key in ("sae", "optim", "data"):
            spec[key] |= table[part].get(key, {})
        spec["patch"] += table[part].get("patch", [])
        spec["note"].append(table[part]["note"])
    spec["note"] = "; ".join(spec["note"])
    return spec


def train_variant(store: str, name: str, seed: int, work: Path, spec: dict | None = None) -> dict:
    from sae_jax.config import CheckpointConfig, DataConfig, LogConfig, OptimConfig, SAEConfig, TrainConfig
    from sae_jax.export import load_sae
    from sae_jax.trainer import train

    spec = spec or spec_of(name)
    cfg = TrainConfig(
        run_dir=str(work / f"{name}_s{seed}"), steps=STEPS, seed=seed,
        data=DataConfig(store=store, batch_size=BATCH, seed=seed, **spec.get("data", {})),
        sae=SAEConfig(architecture="topk", d_sae=D_SAE, k=K, **({"dead_tokens": 200_000} | spec.get("sae", {}))),
        # lr pinned to the old rule unless the variant sets it (None: the library's current default)
        optim=OptimConfig(**({"warmup_steps": 50, "lr": BASE_LR} | spec.get("optim", {}))),
        checkpoint=CheckpointConfig(every=10**6, resume=False), log=LogConfig(progress=False))
    t = time.perf_counter()
    with contextlib.ExitStack() as stack:
        for obj, attr, value in spec.get("patch", []):
            stack.enter_context(_patch(obj, attr, value))
        result = train(cfg)
    m = held_out(load_sae(result.export_dir), store)
    return m | {"train_s": time.perf_counter() - t, "note": spec.get("note", ""),
                "train_fvu_last": float(result.metrics.get("fvu", float("nan")))}


def held_out(sae, store: str) -> dict:
    """FVU, L0 and the fraction of latents that never fire on the held-out 10% of rows."""
    from sae_jax.data.open import held_out_start_row
    from sae_jax.data.store import open_store
    src = open_store(store)
    x = src.read(np.arange(held_out_start_row(src.n_rows, 0.1), src.n_rows))
    h = np.asarray(sae.encode(x))
    x_hat = np.asarray(sae.decode(h))
    return {"fvu": float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()),
            "l0": float((h != 0).sum(1).mean()), "dead_frac_heldout": float((h == 0).all(0).mean())}


def dump(store: str, out: Path) -> None:
    """train_rows.npy (the first 90% of rows), heldout_rows.npy and order.npy ([STEPS, BATCH] row indices
    into train_rows, sae_jax's seed-0 batch order) for the sparsify worker."""
    from sae_jax.data.loader import global_batch_rows
    from sae_jax.data.open import held_out_start_row
    from sae_jax.data.store import open_store
    src = open_store(store)
    start = held_out_start_row(src.n_rows, 0.1)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "train_rows.npy", src.read(np.arange(start)))
    np.save(out / "heldout_rows.npy", src.read(np.arange(start, src.n_rows)))
    np.save(out / "order.npy", np.stack([global_batch_rows(0, s, BATCH, start) for s in range(STEPS)]))


def table(results: dict) -> str:
    """Markdown rows: library, variant, held-out FVU (mean over seeds, with each), L0, dead %, note;
    sae_jax rows in the order of variants() (combinations last), then the sparsify rows."""
    order = list(variants())
    rank = lambda n: (order.index(n) if n in order else len(order), n)  # noqa: E731
    lines = ["| library | variant | held-out FVU | L0 | dead % (held-out) | seeds | what changes |",
             "|---|---|---|---|---|---|---|"]
    rows = []
    for lib, runs in results.items():
        for name in sorted(dict.fromkeys(k.split("/")[0] for k in runs), key=rank):
            recs = [runs[k] for k in sorted(runs) if k.split("/")[0] == name]
            rows.append((lib, name, recs, recs[0].get("note", "")))
            if any("in_memory" in r and r["in_memory"]["fvu"] != r["fvu"] for r in recs):  # schedule-free only
                rows.append((lib, name + " (in-memory weights)", [r["in_memory"] for r in recs],
                             "the same run, evaluated with the weights the gradients were taken at"))
    for lib, name, recs, note in rows:
        fvu = np.mean([r["fvu"] for r in recs])
        each = "" if len(recs) == 1 else " (" + ", ".join(f"{r['fvu']:.4f}" for r in recs) + ")"
        lines.append(f"| {lib} | {name} | {fvu:.4f}{each} | {np.mean([r['l0'] for r in recs]):.1f} | "
                     f"{100 * np.mean([r['dead_frac_heldout'] for r in recs]):.2f} | {len(recs)} | {note} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("--variants", default="base")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--work", default="/tmp/recipe_ablation")
    ap.add_argument("--out", default=str(HERE / "recipe_results.json"))
    ap.add_argument("--dump", default="")
    ap.add_argument("--table", action="store_true", help="print --out as a Markdown table and exit")
    a = ap.parse_args()
    if a.table:
        return print(table(json.loads(Path(a.out).read_text())))
    if a.dump:
        return dump(a.store, Path(a.dump))
    out = Path(a.out)
    for name in a.variants.split(","):
        for seed in (int(s) for s in a.seeds.split(",")):
            rec = train_variant(a.store, name, seed, Path(a.work))
            results = json.loads(out.read_text()) if out.exists() else {}
            results.setdefault("sae_jax", {})[f"{name}/seed{seed}"] = rec
            out.write_text(json.dumps(results, indent=2, sort_keys=True))
            print(name, seed, {k: rec[k] for k in ("fvu", "l0", "dead_frac_heldout", "train_s")}, flush=True)


if __name__ == "__main__":
    main()
