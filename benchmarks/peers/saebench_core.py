"""SAEBench's core eval (sae_bench.evals.core.main.run_evals) on a sae_jax export, offline (docs/saebench.md).

Two steps, two virtualenvs:

1. sae_jax's venv writes the held-out token windows the eval reads (the store's held-out texts,
   tokenized as the extraction did, windows of exactly CONTEXT tokens):

       python benchmarks/peers/saebench_core.py tokens STORE OUT.npy

2. A venv with sae-bench (+ SAELens, TransformerLens, torch) loads the LM from a local HF folder (the
   converted copy `sae_jax.lm.models.load_model` caches under ~/.cache/sae_jax/models/), builds the
   TransformerLens model from it (SmolLM2 is not in TransformerLens' list of named models, so the config
   is written from the HF config and the weights converted with TransformerLens' Llama converter; the
   logits are checked against HF), loads the export with SAELens and runs SAEBench's core eval:

       python benchmarks/peers/saebench_core.py eval EXPORT MODEL_DIR OUT.npy --layer 9 --out core.json

3. sae_jax's venv: its own metrics, and SAEBench's definitions (sae_jax.evals.core.saebench_reconstruction),
   on the store rows of the same windows in the same batches, next to SAEBench's numbers:

       python benchmarks/peers/saebench_core.py compare STORE EXPORT core.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

CONTEXT = 64


def dump_tokens(store: str, out: str, context: int = CONTEXT) -> None:
    """Held-out texts of an extraction store as int64 [n, context] token windows (texts shorter than
    ``context`` tokens are dropped: SAELens' store reads fixed-length windows)."""
    _, _, windows, n_texts = heldout_windows(store, context)
    np.save(out, np.array([w for _, w in windows], np.int64))
    print(f"{len(windows)} of {n_texts} held-out texts have {context} tokens -> {out}")


def heldout_windows(store: str, context: int = CONTEXT):
    """(store, [(doc, token ids)]) of the held-out texts with at least ``context`` tokens, in order."""
    from sae_jax.data.open import held_out_start_row
    from sae_jax.data.store import open_store
    from sae_jax.evals.provenance import heldout_docs, store_provenance
    from sae_jax.lm.models import load_model

    src = open_store(store)
    prov = store_provenance(src)
    rows = np.arange(held_out_start_row(src.n_rows, 0.1), src.n_rows)
    _, tok = load_model(prov.model)
    docs = heldout_docs(prov.doc_ids, rows)
    ids = [tok(prov.texts[i], truncation=True, max_length=context)["input_ids"] for i in docs]
    return src, prov, [(d, w) for d, w in zip(docs, ids) if len(w) == context], len(ids)


def compare(store: str, export: str, saebench_json: str, batch: int) -> dict:
    """sae_jax's core metrics and ``saebench_reconstruction`` on the store rows of the same windows,
    in SAEBench's batches, next to SAEBench's own numbers."""
    from sae_jax.evals.core import CoreAccumulator, saebench_reconstruction
    from sae_jax.export import load_sae

    sb = json.loads(Path(saebench_json).read_text())
    src, prov, windows, _ = heldout_windows(store)
    n = sb["n_batches"] * sb["batch_size_prompts"]
    # SAEBench's variance/sparsity pass reads the windows AFTER those of its CE/KL pass: SAELens 6.54's
    # ActivationsStore.reset_input_dataset does not rewind the sequence iterator get_batch_tokens reads
    sae = load_sae(export)
    xs = [src.read(np.flatnonzero(prov.doc_ids == d)[:CONTEXT]) for d, _ in windows[n:2 * n]]
    if len(xs) < n:
        raise SystemExit(f"{len(windows)} windows: run the eval with n_batches x batch <= {len(windows) // 2}")
    acc, pairs = CoreAccumulator(sae.d_in, sae.d_sae), []
    for i in range(0, n, batch):
        x = np.concatenate(xs[i:i + batch])
        h = sae.encode(x)
        x_hat = np.asarray(sae.decode(h))
        acc.update(x, x_hat, np.asarray(h))
        pairs.append((x, x_hat))
    ours = acc.result().to_dict()
    out = {"sae_jax": {k: ours[k] for k in ("n_tokens", "fvu", "explained_variance", "nmse_vs_zero", "mse",
                                           "cosine_similarity", "l2_ratio", "relative_reconstruction_bias", "l0")},
           "saebench_definitions_in_sae_jax": saebench_reconstruction(pairs),
           "saebench": sb["metrics"]}
    print(json.dumps(out, indent=2, default=float))
    return out


def tl_model(model_dir: str):
    """A HookedTransformer with the weights of the local HF Llama-family model in ``model_dir``."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    c = hf.config
    rope = (getattr(c, "rope_parameters", None) or {}).get("rope_theta") or getattr(c, "rope_theta", 10000.0)
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=2048, d_vocab=c.vocab_size, act_fn="silu",
        n_key_value_heads=c.num_key_value_heads, normalization_type="RMS", positional_embedding_type="rotary",
        rotary_base=rope, rotary_dim=c.head_dim, final_rms=True, gated_mlp=True, eps=c.rms_norm_eps,
        original_architecture="LlamaForCausalLM", tokenizer_prepends_bos=False, default_prepend_bos=False,
        dtype=torch.float32)
    model = HookedTransformer(cfg, tokenizer=tok)
    model.load_and_process_state_dict(convert_llama_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False, refactor_factored_attn_matrices=False)
    model.eval()
    return model, hf


def run_core(export: str, model_dir: str, tokens: str, layer: int, out: str, n_batches: int, batch: int) -> dict:
    import torch
    from datasets import Dataset
    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_bench.evals.core.main import run_evals
    from sae_lens import SAE, ActivationsStore

    torch.set_num_threads(2)
    windows = np.load(tokens)
    model, hf = tl_model(model_dir)
    probe = torch.from_numpy(windows[:2])
    with torch.no_grad():
        gap = (model(probe) - hf(probe).logits).abs().max().item()
        _, cache = model.run_with_cache(probe, names_filter=f"blocks.{layer}.hook_resid_post")
        hs = hf(probe, output_hidden_states=True).hidden_states[layer + 1]
        resid_gap = (cache[f"blocks.{layer}.hook_resid_post"] - hs).abs().max().item()
    print(f"TransformerLens vs HF: max |logit gap| {gap:.2e}, max |resid gap| at layer {layer} {resid_gap:.2e}")
    sae = SAE.load_from_disk(export, device="cpu")
    sae.cfg.metadata.hook_name = f"blocks.{layer}.hook_resid_post"  # a sae_jax export names no hook
    sae.cfg.metadata.model_name = Path(model_dir).name
    sae.cfg.metadata.context_size = windows.shape[1]
    sae.cfg.metadata.prepend_bos = False
    # sae-bench 0.6.0 requires sae_lens >= 6.28 but its core eval still reads the SAELens 5 fields
    # cfg.hook_name / hook_layer / hook_head_index / model_name (6.x keeps them in cfg.metadata): set both
    sae.cfg.hook_name, sae.cfg.hook_layer, sae.cfg.hook_head_index = sae.cfg.metadata.hook_name, layer, None
    sae.cfg.model_name = sae.cfg.metadata.model_name
    ds = Dataset.from_dict({"input_ids": windows.tolist()})
    store = ActivationsStore.from_sae(model, sae, context_size=windows.shape[1], dataset=ds,
                                      store_batch_size_prompts=batch, n_batches_in_buffer=2, device="cpu")
    cfg = CoreEvalConfig(model_name=Path(model_dir).name, batch_size_prompts=batch, context_size=windows.shape[1],
                         n_eval_reconstruction_batches=n_batches, n_eval_sparsity_variance_batches=n_batches,
                         compute_kl=True, compute_ce_loss=True, compute_l2_norms=True,
                         compute_sparsity_metrics=True, compute_variance_metrics=True,
                         exclude_special_tokens_from_reconstruction=True, llm_dtype="float32")
    metrics, _ = run_evals(sae, store, model, cfg)
    rec = {"metrics": metrics, "tl_vs_hf_max_logit_gap": gap, "tl_vs_hf_max_resid_gap": resid_gap,
           "n_windows": int(len(windows)), "n_batches": n_batches, "batch_size_prompts": batch}
    Path(out).write_text(json.dumps(rec, indent=2, default=float))
    print(json.dumps(metrics, indent=2, default=float))
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokens")
    t.add_argument("store")
    t.add_argument("out")
    e = sub.add_parser("eval")
    e.add_argument("export")
    e.add_argument("model_dir")
    e.add_argument("tokens")
    e.add_argument("--layer", type=int, default=9)
    e.add_argument("--out", default="saebench_core.json")
    e.add_argument("--n-batches", type=int, default=4)
    e.add_argument("--batch", type=int, default=8)
    c = sub.add_parser("compare")
    c.add_argument("store")
    c.add_argument("export")
    c.add_argument("saebench_json")
    c.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    if a.cmd == "tokens":
        dump_tokens(a.store, a.out)
    elif a.cmd == "compare":
        compare(a.store, a.export, a.saebench_json, a.batch)
    else:
        run_core(a.export, a.model_dir, a.tokens, a.layer, a.out, a.n_batches, a.batch)


if __name__ == "__main__":
    main()
