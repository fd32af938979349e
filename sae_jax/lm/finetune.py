"""A tuned model with a known change: full fine-tuning of a base LM on a labelled slice of text.

Model-diffing studies need a base/tuned pair that shares a tokenizer. Offline there is none, so
we plant the change: fine-tune the base on one or several labels of the offline text (e.g. a
Wikipedia topic) and save the result as a local HF folder that ``sae-jax extract --chat-model``
accepts. The slice's held-out CE must drop while the CE on other labels barely moves; both are
measured before and after and written to the folder's manifest. Full fine-tuning on Wikipedia text also
teaches the model the source's style, which lowers the CE of every topic; ``general_kl`` anchors the
other topics' next-token distributions to the base so the change stays specific to the slice.

The folder is written to ``OUT.tmp`` and renamed when complete, so a half-written folder is never
mistaken for a finished one; a finished folder with the same settings is reused as it is.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae_jax.lm import hooks as lm_hooks
from sae_jax.lm import models as lm_models
from sae_jax.lm.tune import _encode, lm_ce, split_texts, step_texts

MANIFEST = "finetune.json"
PLANTED = "__planted__"


@dataclass(frozen=True)
class FinetuneConfig:
    """Which model to tune on which slice, and how."""

    model: str
    """Base model (short name, HF folder, .gguf)."""
    out: str
    """Output HF folder (model, tokenizer, finetune.json)."""
    domains: tuple[str, ...] = ("Mathematics",)
    """Labels of the text source that form the planted slice."""
    text: str = "wikipedia"
    """Labelled text source: wikipedia, bbc, or a labelled file (see sae_jax.data.text.load_text)."""
    label_field: str = "label"
    """The label's field in a JSON-lines/CSV text file (the named sources carry their own labels)."""
    steps: int = 60
    batch_size: int = 8
    context_length: int = 64
    lr: float = 5e-5
    weight_decay: float = 0.0
    general_kl: float = 0.0
    """Weight of an anchor term: KL(base || tuned) of next-token distributions on texts of the other labels
    (never the general evaluation texts). > 0 keeps general behaviour near the base, so the planted change
    is specific to the slice; each step then also runs the base and the tuned model on a general batch."""
    n_task_eval: int = 32
    """Held-out texts of the slice (never trained on; also excluded from later analysis sets)."""
    n_general_eval: int = 32
    """Texts of the other labels on which the damage is measured."""
    train_upto_block: int | None = None
    """Train only blocks 0..N (embeddings, later blocks, final norm and head stay the base's): the whole
    change then reaches the output through block N's residual stream, so its causal path at that
    depth is known (an SAE there sees all of it). None: full fine-tuning."""
    eval_batch_size: int = 8
    seed: int = 0
    torch_threads: int | None = None
    progress: bool = True
    """Print the CE before/after when done (the settings that do not change the model are not part of key())."""

    def key(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("out", "torch_threads", "eval_batch_size", "progress"):
            d.pop(name)
        d["domains"] = list(d["domains"])
        if not Path(self.text.removeprefix("file:")).exists():
            d.pop("label_field")  # a named source (wikipedia, bbc) ignores it
        if not self.general_kl:
            d.pop("general_kl")  # absent = off: manifests written before the option stay valid
        if self.train_upto_block is None:
            d.pop("train_upto_block")
        return d


def planted_split(texts, labels, domains, n_task_eval: int, n_general_eval: int, seed: int):
    """``split_texts`` with several labels merged into one planted slice."""
    if labels is None:
        raise ValueError("the text source has no labels: a planted domain needs labelled text")
    labels = np.asarray(labels, dtype=object)
    missing = sorted(set(domains) - set(labels.tolist()))
    if missing:
        raise ValueError(f"planted domain label(s) {missing} not in the text source; labels: {sorted(set(labels.tolist()))}")
    merged = np.where(np.isin(labels, list(domains)), PLANTED, labels)
    return split_texts(texts, merged, PLANTED, n_task_eval, n_general_eval, seed)


def _ce(model, tok, texts, cfg: FinetuneConfig, special) -> float:
    device = next(model.parameters()).device
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(texts), cfg.eval_batch_size):
            ids, att = _encode(tok, texts[i:i + cfg.eval_batch_size], cfg.context_length, device)
            s, k = lm_ce(model, ids, att, special)
            total, n = total + float(s.double()), n + k
    return total / n


def anchor_kl(logits: torch.Tensor, base_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions in ``mask`` of KL(base || tuned) between next-token distributions."""
    lp = torch.log_softmax(logits[mask].float(), -1)
    lq = torch.log_softmax(base_logits[mask].float(), -1)
    return (lq.exp() * (lq - lp)).sum(-1).mean()


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def base_fingerprint(model: str) -> dict[str, str]:
    """Name, path and a fingerprint of the base model's weight files (the extractor's provenance)."""
    from sae_jax.lm.extract import _model_revision

    info = lm_models.resolve_model(model)
    return info | {"revision": _model_revision(info)}


def _trainable(model: torch.nn.Module, upto: int | None) -> list[torch.nn.Parameter]:
    """Unfreeze all weights, or only those of blocks 0..upto; return the trainable parameters."""
    if upto is None:
        model.requires_grad_(True)
        return list(model.parameters())
    blocks = lm_hooks.decoder_blocks(model)
    if not 0 <= upto < len(blocks):
        raise ValueError(f"train_upto_block {upto} is out of range: {type(model).__name__} has {len(blocks)} blocks "
                         f"(0..{len(blocks) - 1})")
    model.requires_grad_(False)
    for block in blocks[:upto + 1]:
        block.requires_grad_(True)
    return [q for q in model.parameters() if q.requires_grad]


def run_finetune(cfg: FinetuneConfig, texts=None, labels=None) -> dict[str, Any]:
    """Fine-tune (or reuse a finished folder with the same settings and base model); return the manifest."""
    out = Path(cfg.out)
    done = read_manifest(out)
    if done is not None:
        if done["config"] != cfg.key():
            raise ValueError(f"{out} holds a model tuned with other settings ({done['config']}); "
                             "choose another --out or delete the folder")
        old = done.get("base_model", {}).get("revision")  # manifests before the fingerprint have none
        if old is not None and old != base_fingerprint(cfg.model)["revision"]:
            raise ValueError(f"{out} was tuned from another version of base model {cfg.model!r} (its weight files "
                             "changed since); delete the folder to tune again")
        return done
    if out.exists():
        raise ValueError(f"{out} exists but is not a finished fine-tune (no {MANIFEST}); delete it or choose another --out")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.lr <= 0 or cfg.general_kl < 0:
        raise ValueError("steps and batch_size must be positive, lr > 0 and general_kl >= 0")
    if texts is None:
        from sae_jax.data.text import load_text
        ds = load_text(cfg.text, label_field=cfg.label_field)
        texts, labels = ds.texts, ds.labels
    data = planted_split(texts, labels, cfg.domains, cfg.n_task_eval, cfg.n_general_eval, cfg.seed)
    held = set(data.general_eval)
    anchor = [t for t, lab in zip(texts, labels) if lab not in cfg.domains and t not in held]
    if cfg.general_kl and not anchor:
        raise ValueError("general_kl > 0 needs texts of other labels beyond the general evaluation set; "
                         "lower n_general_eval")
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    model, tok = lm_models.load_model(cfg.model)
    model.train()
    trainable = _trainable(model, cfg.train_upto_block)  # load_model freezes weights for inference
    device = next(model.parameters()).device
    special = torch.tensor(sorted(set(tok.all_special_ids)), device=device)
    before = {"task_ce": _ce(model, tok, data.task_eval, cfg, special),
              "general_ce": _ce(model, tok, data.general_eval, cfg, special)}
    base = copy.deepcopy(model).eval().requires_grad_(False) if cfg.general_kl else None
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    t0, losses = time.perf_counter(), []
    for step in range(cfg.steps):
        batch = [data.train[i] for i in step_texts(len(data.train), cfg.batch_size, step, cfg.seed)]
        ids, att = _encode(tok, batch, cfg.context_length, device)
        s, k = lm_ce(model, ids, att, special)
        loss = ce = s / k
        if base is not None:
            gbatch = [anchor[i] for i in step_texts(len(anchor), cfg.batch_size, step, cfg.seed + 1)]
            gids, gatt = _encode(tok, gbatch, cfg.context_length, device)
            with torch.no_grad():
                base_logits = base(input_ids=gids, attention_mask=gatt, use_cache=False).logits
            logits = model(input_ids=gids, attention_mask=gatt, use_cache=False).logits
            loss = loss + cfg.general_kl * anchor_kl(logits, base_logits, gatt.bool())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(ce.detach()))  # the slice's CE (without the anchor term)
    wall = time.perf_counter() - t0
    model.eval()
    after = {"task_ce": _ce(model, tok, data.task_eval, cfg, special),
             "general_ce": _ce(model, tok, data.general_eval, cfg, special)}
    manifest = {
        "config": cfg.key(),
        "base_model": base_fingerprint(cfg.model),
        "before": before, "after": after,
        "task_ce_drop": before["task_ce"] - after["task_ce"],
        "general_ce_change": after["general_ce"] - before["general_ce"],
        "n_train_texts": len(data.train), "train_loss": losses, "wall_s": wall,
        "task_eval_texts": list(data.task_eval),
    }
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # a previous interrupted write: never reused
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out)
    if cfg.progress:
        print(f"fine-tuned {cfg.model} on {list(cfg.domains)} ({cfg.steps} steps, {wall:.0f} s): held-out task CE "
              f"{before['task_ce']:.3f} -> {after['task_ce']:.3f}, general CE {before['general_ce']:.3f} -> "
              f"{after['general_ce']:.3f}; saved {out}", flush=True)
    return manifest
