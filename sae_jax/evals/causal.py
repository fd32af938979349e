"""Causal validation of candidate latents with anti-illusion controls (model diffing).

Behaviour score of a text: the mean log-probability of its real tokens under the model (for a
planted domain, the tuned model's fit to domain text). For a candidate latent j and a corruption
method m, every position of a clean text gets j's value replaced by j's mean over the corrupted
text's real tokens (the corruption removes the domain signal; positions of the two texts need not
align), keeping the SAE's error term: x' = x + (v − h_j)·w_j with w_j = decode(e_j) − decode(0).
The effect is the drop of the score, clean − patched, per text.

A delta SAE (trained on tuned − base activations) reads ``x − x_ref`` where ``x_ref`` is the
reference (base) model's activation of the same token; its patch still edits the tuned model's
activation, so it removes what latent j contributes to the change.

Then: effect sizes d = mean(drop) / SD(drop) per method; the consistency gate (mean d across
methods > 0.8 and SD across methods < 0.3); one-sided t-test p-values per method, combined by
their maximum (intersection-union: every method must show the effect) and BH-adjusted across
latents; the damage (CE on unrelated text with j zero-ablated, minus clean CE); a combined score
effect × identifiability / damage (like the original study's CCIS); and a pre-registration file
written before the run that later runs may not silently change.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from sae_jax.evals.core import SAELike

Batch = tuple[np.ndarray, np.ndarray]  # (input_ids, attention_mask)


def latent_directions(sae: SAELike, latents: Sequence[int]) -> np.ndarray:
    """w_j = decode(e_j) − decode(0): the change of the reconstruction per unit of latent j."""
    latents = np.asarray(latents, np.int64)
    if latents.size and (latents.min() < 0 or latents.max() >= sae.d_sae):
        raise ValueError(f"latent ids must lie in [0, {sae.d_sae}), got {latents.tolist()}")
    eye = np.zeros((len(latents) + 1, sae.d_sae), np.float32)
    eye[np.arange(1, len(latents) + 1), latents] = 1.0
    dec = np.asarray(sae.decode(eye), np.float64)
    return (dec[1:] - dec[:1]).astype(np.float32)


class _Reader:
    """Forward passes with one hooked activation rewritten (or just recorded)."""

    def __init__(self, model, layer: int, hook: str, special_ids: Sequence[int], reference_model=None, sae=None):
        import torch

        from sae_jax.lm.hooks import hook_module, hook_width

        for m in (model, reference_model):  # bad input fails here, before any forward pass
            if m is not None:
                hook_module(m, layer, hook)
                width = hook_width(m, layer, hook)
                if sae is not None and sae.d_in != width:
                    raise ValueError(f"the SAE reads width {sae.d_in} but {type(m).__name__} has width {width} at "
                                     f"layer {layer} {hook}: use the SAE trained on this model, layer and hook")
        if reference_model is not None and reference_model.get_input_embeddings().weight.shape != \
                model.get_input_embeddings().weight.shape:
            raise ValueError("the reference (base) model has another vocabulary than the model: a delta SAE needs "
                             "the same tokenizer in both")

        self.torch, self.model, self.reference = torch, model, reference_model
        self.layer, self.hook, self.special = layer, hook, list(special_ids)
        self.device = next(model.parameters()).device

    def tensors(self, batch: Batch):
        t = self.torch
        ids = t.as_tensor(np.asarray(batch[0]), dtype=t.long, device=self.device)
        att = t.as_tensor(np.asarray(batch[1]), dtype=t.long, device=self.device)
        return ids, att

    def rows(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Hooked activations at real positions (hook order), minus the reference model's; and the mask."""
        from sae_jax.evals.splice import real_tokens
        from sae_jax.lm.splice import hooked_activations

        mask = real_tokens(batch[0], batch[1], self.special)
        x = next(hooked_activations(self.model, [batch], self.layer, self.hook))[mask]
        if self.reference is not None:
            x = x - next(hooked_activations(self.reference, [batch], self.layer, self.hook))[mask]
        return x, mask

    def scores(self, batch: Batch, transform=None) -> tuple[np.ndarray, np.ndarray]:
        """Per text: summed log-prob of real target tokens and their count, under ``transform``."""
        from sae_jax.lm.splice import _logits, splice_mask, spliced

        t = self.torch
        ids, att = self.tensors(batch)
        with t.no_grad(), spliced(self.model, self.layer, self.hook) as splice:
            splice.mask = splice_mask(ids, att, self.special)
            splice.transform = transform
            lp = t.log_softmax(_logits(self.model, ids, att)[:, :-1], dim=-1)
        ok = splice_mask(ids, att, self.special)[:, 1:] & att[:, :-1].bool()
        tok = lp.gather(2, ids[:, 1:, None]).squeeze(2) * ok
        return tok.sum(1).double().cpu().numpy(), ok.sum(1).cpu().numpy()


def _patch(direction: np.ndarray, delta_rows: np.ndarray):
    """x -> x + delta_rows[:, None] * direction (rows in hook order)."""
    return lambda x: x + delta_rows[:, None].astype(np.float32) * direction[None, :]


def _per_text_means(codes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean code per text over its real tokens, [n_texts, n_latents] (0 for a text with none)."""
    text_of_row = np.nonzero(mask)[0]
    n = np.bincount(text_of_row, minlength=len(mask)).astype(np.float64)
    sums = np.zeros((len(mask), codes.shape[1]))
    np.add.at(sums, text_of_row, codes)
    return sums / np.maximum(n, 1)[:, None]


def latent_effects(model, sae: SAELike, layer: int, hook: str, clean: Sequence[Batch],
                   corrupted: Mapping[str, Sequence[Batch]], latents: Sequence[int], special_ids: Sequence[int],
                   reference_model=None) -> dict[str, np.ndarray]:
    """Per method: drop of the behaviour score (mean log-prob per token), [n_latents, n_texts].

    ``clean`` and each ``corrupted[m]`` are batches of the same texts in the same order (text i of
    a corrupted batch is the corruption of clean text i); the batches need not share token lengths.
    """
    latents = np.asarray(latents, np.int64)
    W = latent_directions(sae, latents)
    reader = _Reader(model, layer, hook, special_ids, reference_model, sae)
    out = {m: [] for m in corrupted}
    for m, batches in corrupted.items():
        if len(batches) != len(clean) or any(len(a[0]) != len(b[0]) for a, b in zip(clean, batches)):
            raise ValueError(f"corruption {m!r} must have one text per clean text, batched the same way")
    for b, batch in enumerate(clean):
        x, mask = reader.rows(batch)
        h = sae.encode(x)[:, latents]
        s0, n = reader.scores(batch)
        base = s0 / np.maximum(n, 1)
        text_of_row = np.nonzero(mask)[0]
        for m, batches in corrupted.items():
            xc, mc = reader.rows(batches[b])
            target = _per_text_means(sae.encode(xc)[:, latents], mc)  # [n_texts, L]
            drops = np.empty((len(latents), len(base)))
            for i in range(len(latents)):
                s, _ = reader.scores(batch, _patch(W[i], target[text_of_row, i] - h[:, i]))
                drops[i] = base - s / np.maximum(n, 1)
            out[m].append(drops)
    return {m: np.concatenate(v, axis=1) for m, v in out.items()}


def ablation_damage(model, sae: SAELike, layer: int, hook: str, batches: Sequence[Batch], latents: Sequence[int],
                    special_ids: Sequence[int], reference_model=None) -> np.ndarray:
    """Per latent: CE per token on ``batches`` with the latent zero-ablated minus clean CE (nats)."""
    latents = np.asarray(latents, np.int64)
    W = latent_directions(sae, latents)
    reader = _Reader(model, layer, hook, special_ids, reference_model, sae)
    clean_sum, patched_sum, n_tok = 0.0, np.zeros(len(latents)), 0
    for batch in batches:
        x, _ = reader.rows(batch)
        h = sae.encode(x)[:, latents]
        s0, n = reader.scores(batch)
        clean_sum += s0.sum()
        n_tok += n.sum()
        for i in range(len(latents)):
            patched_sum[i] += reader.scores(batch, _patch(W[i], -h[:, i]))[0].sum()
    return (clean_sum - patched_sum) / max(n_tok, 1)


def effect_sizes(drops: np.ndarray) -> np.ndarray:
    """d = mean / SD (ddof=1) of per-text drops, per latent (rows); 0 where the SD is 0."""
    e = np.asarray(drops, np.float64)
    sd = e.std(axis=1, ddof=1)
    mean = e.mean(axis=1)
    return np.divide(mean, sd, out=np.zeros_like(mean), where=sd > 0)


def consistency_gate(d_by_method: Mapping[str, np.ndarray], min_mean: float = 0.8, max_sd: float = 0.3) -> dict[str, np.ndarray]:
    """Per latent: mean and SD (ddof=0) of d across methods, and pass = mean > min_mean and SD < max_sd."""
    if len(d_by_method) < 2:
        raise ValueError("the consistency gate needs at least two corruption methods")
    D = np.stack([np.asarray(v, np.float64) for v in d_by_method.values()])
    mean, sd = D.mean(0), D.std(0)
    return {"mean_d": mean, "sd_d": sd, "pass": (mean > min_mean) & (sd < max_sd)}


def p_values(drops_by_method: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One-sided one-sample t-test (drop > 0) per method; combined = max over methods; BH-adjusted."""
    per = {m: stats.ttest_1samp(np.asarray(v, np.float64), 0.0, axis=1, alternative="greater").pvalue
           for m, v in drops_by_method.items()}
    combined = np.nan_to_num(np.max(np.stack(list(per.values())), axis=0), nan=1.0)
    return {"per_method": per, "combined": combined, "bh": stats.false_discovery_control(combined, method="bh")}


def combined_score(effect: np.ndarray, identifiability: np.ndarray, damage: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """effect × identifiability / (max(damage, 0) + eps): large, specific, harmless effects rank first."""
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    return np.asarray(effect, float) * np.asarray(identifiability, float) / (np.maximum(np.asarray(damage, float), 0) + eps)


def _settings_hash(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def preregister(path: str | os.PathLike, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Write the analysis settings before any result exists; a re-run must use the same ones.

    An existing file with other settings is an error (change them by pre-registering a new run in
    another folder), never silently overwritten.
    """
    path = Path(path)
    record = {"settings": json.loads(json.dumps(dict(settings), default=str)), "sha256_16": _settings_hash(settings)}
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("sha256_16") != record["sha256_16"]:
            raise ValueError(f"{path} pre-registered other settings ({old.get('settings')}); a run may not change "
                             "them after the fact: use a new output folder to pre-register new settings")
        return old
    record["registered_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return record

