"""EleutherAI sparsify's own Trainer.fit() at the demo's budget, for recipe_ablation.py (run in a venv
with eai-sparsify 1.3.3 and torch; see docs/recipe.md).

Reads the rows recipe_ablation.py --dump wrote (the same training rows in sae_jax's seed-0 batch
order: batch t of sparsify = batch t of sae_jax), trains F 2048, k 32 for 600 steps of 1,024 tokens,
and reports held-out FVU / L0 / never-firing fraction computed exactly as recipe_ablation.held_out.

    python benchmarks/peers/recipe_sparsify.py /tmp/rows --variants own_defaults,adam_constant
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
HERE = Path(__file__).resolve().parent
SEQ = 256  # rows per "sequence" of the one-layer rows model
D_SAE, K, BATCH = 2048, 32, 1024
LR_ADAM = 2e-4 / math.sqrt(D_SAE / 2**14)  # sparsify's own Adam default = sae_jax's default before this study

VARIANTS = {
    "own_defaults": (dict(), "sparsify 1.3.3 defaults: signum (sign SGD, schedule-free, momentum 0.95), "
                     "lr 5e-3/sqrt(F/2^14) = 1.41e-2, no AuxK"),
    "adam_constant": (dict(optimizer="adam", lr_warmup_steps=50, constant=True),
                      "Adam lr 5.66e-4 (= sae_jax's), warm-up 50, then constant (sparsify's decay patched out)"),
    "adam_linear": (dict(optimizer="adam", lr_warmup_steps=100),
                    "Adam lr 5.66e-4, sparsify's own schedule: warm-up 100, linear decay to 0"),
    "own_defaults_auxk": (dict(auxk_alpha=1 / 32, dead_feature_threshold=200_000),
                          "own defaults + AuxK 1/32 on latents silent for 200k tokens"),
}


def run(rows_dir: Path, name: str, seed: int) -> dict:
    import torch
    import transformers
    from datasets import Dataset
    from sparsify import SaeConfig, SparseCoder, TrainConfig, Trainer
    import sparsify.trainer as sp_trainer
    from worker_sparsify import RowsConfig, RowsModel

    torch.set_num_threads(2)
    kw, note = VARIANTS[name]
    kw = dict(kw)
    constant = kw.pop("constant", False)
    acts = torch.from_numpy(np.load(rows_dir / "train_rows.npy"))
    order = np.load(rows_dir / "order.npy")  # [steps, batch]
    ids = torch.from_numpy(order.reshape(-1, SEQ))
    ds = Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")
    model = RowsModel(RowsConfig(hidden_size=acts.shape[1]), acts)
    if constant:  # sparsify always decays linearly to 0 with Adam; this run keeps the lr flat after warm-up
        sp_trainer.get_linear_schedule_with_warmup = (
            lambda opt, warm, total: transformers.get_constant_schedule_with_warmup(opt, warm))
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(SaeConfig(k=K, num_latents=D_SAE), batch_size=BATCH // SEQ, loss_fn="fvu",
                          hookpoints=["layers.0"], log_to_wandb=False, save_every=10**9, save_dir=tmp,
                          init_seeds=[seed], **kw)
        trainer = Trainer(cfg, ds, model)
        trainer.fit()
        saved = SparseCoder.load_from_disk(Path(tmp) / "unnamed" / "layers.0")
    x = torch.from_numpy(np.load(rows_dir / "heldout_rows.npy"))
    rec = held_out(saved, x) | {"train_s": time.perf_counter() - t, "note": note}
    # signum is schedule-free: the checkpoint holds the averaged (eval) weights; the module trained in
    # memory holds the weights the gradients were taken at. Both are reported (they differ only there).
    rec["in_memory"] = held_out(trainer.saes["layers.0"], x)
    return rec


def held_out(sae, x) -> dict:
    """FVU, L0 and never-firing fraction on held-out rows, as recipe_ablation.held_out computes them."""
    import torch
    with torch.no_grad():
        enc = sae.encode(x)
        h = torch.zeros(x.shape[0], D_SAE).scatter_(1, enc.top_indices, enc.top_acts)
        x_hat = h @ sae.W_dec + sae.b_dec
    x, x_hat, h = x.double().numpy(), x_hat.double().numpy(), h.numpy()
    return {"fvu": float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()),
            "l0": float((h != 0).sum(1).mean()), "dead_frac_heldout": float((h == 0).all(0).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rows_dir")
    ap.add_argument("--variants", default="own_defaults")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--out", default=str(HERE / "recipe_results.json"))
    a = ap.parse_args()
    out = Path(a.out)
    for name in a.variants.split(","):
        for seed in (int(s) for s in a.seeds.split(",")):
            rec = run(Path(a.rows_dir), name, seed)
            results = json.loads(out.read_text()) if out.exists() else {}
            results.setdefault("sparsify", {})[f"{name}/seed{seed}"] = rec
            out.write_text(json.dumps(results, indent=2, sort_keys=True))
            print(name, seed, {k: rec[k] for k in ("fvu", "l0", "dead_frac_heldout", "train_s")}, flush=True)


if __name__ == "__main__":
    main()
