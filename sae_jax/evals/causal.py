"""Causal validation of candidate latents with anti-illusion controls (model diffing).

Behaviour score of a text (``behaviour_scores``): the mean log-probability of its real tokens
under the model (for a planted domain, the tuned model's fit to domain text), optionally of the
domain's tokens only (``target_ids``) or as the tuned − base difference. For a candidate latent j and a corruption
method m, every position of a clean text gets j's value replaced by j's mean over the corrupted
text's real tokens (the corruption removes the domain signal; positions of the two texts need not
align), keeping the SAE's error term: x' = x + (v − h_j)·w_j with w_j = decode(e_j) − decode(0).
The effect is the drop of the score, clean − patched, per text. ``ablation_effects`` is the
corruption-free control: j zero-ablated on the clean run.

(The opposite direction, restoring j's clean value into the corrupted run, is left out: the
score is the log-prob of the text's own tokens, and a corrupted text no longer has the domain's
tokens to score.)

A delta SAE (trained on tuned − base activations) reads ``x − x_ref`` where ``x_ref`` is the
reference (base) model's activation of the same token; its patch still edits the tuned model's
activation, so it removes what latent j contributes to the change.

Then: effect sizes d = mean(drop) / SD(drop) per method; the consistency gate (mean d across
methods > 0.8 and SD across methods < 0.3); one-sided t-test p-values per method, combined by
their maximum (intersection-union: every method must show the effect) and BH-adjusted across
latents; the damage (CE on unrelated text with j zero-ablated, minus clean CE); a combined score
effect × identifiability / damage (like the original study's CCIS); and a pre-registration file
written before the run that later runs may not silently change. ``causal_ranking`` puts it all in
one table.
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
from sae_jax.evals.stats import bh_adjusted

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

    def _patched_logprobs(self, batch: Batch, transform):
        """The model's next-token log-probabilities [B, T-1, V] under ``transform``, and the batch's tensors."""
        from sae_jax.lm.splice import splice_mask, spliced

        ids, att = self.tensors(batch)
        with spliced(self.model, self.layer, self.hook) as splice:
            splice.mask = splice_mask(ids, att, self.special)
            splice.transform = transform
            return _next_logprobs(self.model, ids, att), ids, att

    def token_logprobs(self, batch: Batch, transform=None, target_ids=None) -> tuple[np.ndarray, np.ndarray]:
        """Per token: log-prob of counted target tokens and the counted mask, under ``transform``."""
        lp, ids, att = self._patched_logprobs(batch, transform)
        return _gathered(lp, ids, _counted(ids, att, self.special, target_ids))

    def reference_logprobs(self, batch: Batch):
        """The reference model's next-token log-probabilities [B, T-1, V] (torch, unpatched)."""
        return _next_logprobs(self.reference, *self.tensors(batch))

    def token_kl(self, batch: Batch, ref_logprobs, transform=None) -> tuple[np.ndarray, np.ndarray]:
        """Per token t+1: KL(model ‖ reference) of the next-token distributions at t (float64, [B, T-1];
        0 where not counted) under ``transform``, and the counted mask (as ``_token_logprobs``)."""
        lp, ids, att = self._patched_logprobs(batch, transform)
        ok = _counted(ids, att, self.special)
        kl = (lp.exp() * (lp - ref_logprobs)).sum(-1) * ok
        return kl.double().cpu().numpy(), ok.cpu().numpy()

    def scores(self, batch: Batch, transform=None, target_ids=None) -> tuple[np.ndarray, np.ndarray]:
        """Per text: summed log-prob of counted target tokens and their count, under ``transform``."""
        lp, ok = self.token_logprobs(batch, transform, target_ids)
        return lp.sum(1), ok.sum(1)


def _next_logprobs(model, ids, att):
    """Next-token log-probabilities [B, T-1, V] (torch, no gradient)."""
    import torch

    from sae_jax.lm.splice import _logits

    with torch.no_grad():
        return torch.log_softmax(_logits(model, ids, att)[:, :-1], dim=-1)


def _counted(ids, att, special_ids, target_ids=None):
    """bool [B, T-1]: token t+1 counts where t and t+1 are attended and t+1 is not special (as
    ``splice_losses``), and with ``target_ids`` only tokens in that set (e.g. the planted domain's)."""
    import torch

    from sae_jax.lm.splice import splice_mask

    ok = splice_mask(ids, att, special_ids)[:, 1:] & att[:, :-1].bool()
    if target_ids is not None:
        ok &= torch.isin(ids[:, 1:], torch.as_tensor(np.asarray(list(target_ids)), dtype=ids.dtype, device=ids.device))
    return ok


def _token_logprobs(model, ids, att, special_ids, target_ids=None) -> tuple[np.ndarray, np.ndarray]:
    """Per token t+1: next-token log-prob (float64, [B, T-1]; 0 where not counted, see ``_counted``)
    and the counted mask."""
    return _gathered(_next_logprobs(model, ids, att), ids, _counted(ids, att, special_ids, target_ids))


def _gathered(lp, ids, ok) -> tuple[np.ndarray, np.ndarray]:
    """The log-prob of each actual next token (float64 [B, T-1], 0 where not counted) and the mask."""
    tok = lp.gather(2, ids[:, 1:, None]).squeeze(2) * ok
    return tok.double().cpu().numpy(), ok.cpu().numpy()


def _summed_logprobs(model, ids, att, special_ids, target_ids=None) -> tuple[np.ndarray, np.ndarray]:
    """Per text: summed next-token log-prob of its counted tokens (see ``_token_logprobs``) and their count."""
    lp, ok = _token_logprobs(model, ids, att, special_ids, target_ids)
    return lp.sum(1), ok.sum(1)


def _masked_mean(lp: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """Mean per text of the counted tokens' log-probs; NaN for a text with none."""
    return _mean((lp * counted).sum(1), counted.sum(1))


def _check_targets(target_ids, model) -> np.ndarray | None:
    if target_ids is None:
        return None
    t = np.unique(np.asarray(list(target_ids), np.int64))
    vocab = model.get_input_embeddings().weight.shape[0]
    if t.size == 0 or t.min() < 0 or t.max() >= vocab:
        raise ValueError(f"target_ids must be a non-empty set of token ids in [0, {vocab}) (e.g. the tokens of the "
                         f"domain keywords), got {t.tolist()[:10]}")
    return t


def _mean(total: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Mean per text; NaN for a text with no counted token (it carries no evidence)."""
    return np.divide(total, n, out=np.full(len(total), np.nan), where=n > 0)


def behaviour_scores(model, batches: Sequence[Batch], special_ids: Sequence[int], target_ids=None,
                     reference_model=None) -> np.ndarray:
    """Behaviour score per text: mean next-token log-prob of its real tokens under ``model``.

    ``target_ids``: count only these tokens (the planted domain's tokens); a text with none gets
    NaN. ``reference_model``: the score is the difference model − reference (the tuned-vs-base
    log-prob difference of the same tokens: how much the fine-tune raised the text's likelihood).
    """
    import torch

    if reference_model is not None and reference_model.get_input_embeddings().weight.shape[0] != \
            model.get_input_embeddings().weight.shape[0]:
        raise ValueError("the reference (base) model has another vocabulary than the model: a tuned-vs-base "
                         "difference needs the same tokenizer in both")
    targets = _check_targets(target_ids, model)
    out = []
    for ids_np, att_np in batches:
        parts = []
        for m in (model, reference_model):
            if m is None:
                continue
            dev = next(m.parameters()).device
            ids = torch.as_tensor(np.asarray(ids_np), dtype=torch.long, device=dev)
            att = torch.as_tensor(np.asarray(att_np), dtype=torch.long, device=dev)
            parts.append(_mean(*_summed_logprobs(m, ids, att, list(special_ids), targets)))
        out.append(parts[0] - parts[1] if len(parts) == 2 else parts[0])
    return np.concatenate(out) if out else np.zeros(0)


def layer_delta_share(model, reference_model, layer: int, hook: str, batches: Sequence[Batch],
                      special_ids: Sequence[int]) -> dict[str, float]:
    """How much of the model-vs-reference gap in mean log-prob passes through one activation.

    The model's activation at (``layer``, ``hook``) is replaced by the reference model's on every
    real token (special tokens, which activation stores drop, keep the model's own; pass
    ``special_ids=[]`` to replace every attended position); share = (model − patched) / (model − reference), in mean log-prob per token. 1: the
    whole change flows through that activation (an SAE there can explain all of it); 0: none.
    """
    reader = _Reader(model, layer, hook, special_ids, reference_model)
    tot = {"model": 0.0, "reference": 0.0, "patched": 0.0}
    n_tok = 0
    for batch in batches:
        delta, _ = reader.rows(batch)  # model − reference at real positions
        tot["model"] += reader.scores(batch)[0].sum()
        s, n = reader.scores(batch, lambda x, d=delta: x - d)
        tot["patched"] += s.sum()
        n_tok += n.sum()
        ids, att = reader.tensors(batch)
        tot["reference"] += _summed_logprobs(reference_model, ids, att, list(special_ids))[0].sum()
    m = {k: v / max(n_tok, 1) for k, v in tot.items()}
    gap = m["model"] - m["reference"]
    return m | {"gap": gap, "share": (m["model"] - m["patched"]) / gap if gap else float("nan")}


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


def _active(mask: np.ndarray, fires: np.ndarray) -> np.ndarray:
    """bool [B, T]: the real positions (``mask``) where a latent fires (``fires``, one per real row)."""
    out = np.zeros(mask.shape, bool)
    out[mask] = fires
    return out


def latent_effects(model, sae: SAELike, layer: int, hook: str, clean: Sequence[Batch],
                   corrupted: Mapping[str, Sequence[Batch]], latents: Sequence[int], special_ids: Sequence[int],
                   reference_model=None, target_ids=None, at: str = "all", score: str = "logprob"
                   ) -> dict[str, np.ndarray]:
    """Per method: drop of the behaviour score (mean per scored token), [n_latents, n_texts].

    ``clean`` and each ``corrupted[m]`` are batches of the same texts in the same order (text i of
    a corrupted batch is the corruption of clean text i); the batches need not share token lengths.
    ``target_ids``: score only these tokens (see ``behaviour_scores``); NaN for a text with none.
    ``at``: ``"all"`` patches every real position and scores every counted token; ``"active"``
    patches only the positions where the latent fires on the clean text and scores only the
    tokens that follow them (the latent's own effect, not diluted by the tokens it never touches
    nor mixed with what the corrupted text's value adds where it was silent); a text where it never
    fires gets NaN.
    ``score``: ``"logprob"``, the log-prob of the text's next tokens; ``"kl_to_reference"``, the
    KL divergence of the model's next-token distribution from the reference model's (what the
    fine-tune changed at that position), so the drop is how much of that change the patch undoes.
    It reads whole distributions, so it does not depend on which token happens to come next.
    """
    if at not in ("all", "active"):
        raise ValueError(f"at must be 'all' or 'active', got {at!r}")
    if score not in ("logprob", "kl_to_reference"):
        raise ValueError(f"score must be 'logprob' or 'kl_to_reference', got {score!r}")
    if score == "kl_to_reference" and (reference_model is None or target_ids is not None):
        raise ValueError("score='kl_to_reference' needs reference_model (the base model) and reads every token: "
                         "drop target_ids")
    latents = np.asarray(latents, np.int64)
    W = latent_directions(sae, latents)
    reader = _Reader(model, layer, hook, special_ids, reference_model, sae)
    targets = _check_targets(target_ids, model)
    out = {m: [] for m in corrupted}
    for m, batches in corrupted.items():
        if len(batches) != len(clean) or any(len(a[0]) != len(b[0]) for a, b in zip(clean, batches)):
            raise ValueError(f"corruption {m!r} must have one text per clean text, batched the same way")
    for b, batch in enumerate(clean):
        x, mask = reader.rows(batch)
        h = sae.encode(x)[:, latents]
        if score == "kl_to_reference":
            ref_lp = reader.reference_logprobs(batch)
            # its drop (clean KL − patched KL) is how much closer to the reference the patch brings the model
            score_of = lambda transform: reader.token_kl(batch, ref_lp, transform)  # noqa: E731
        else:
            score_of = lambda transform: reader.token_logprobs(batch, transform, targets)  # noqa: E731
        lp0, ok = score_of(None)
        text_of_row = np.nonzero(mask)[0]
        # per latent: the positions patched and the tokens scored (those after a firing position, or all)
        where = [h[:, i] > 0 if at == "active" else np.ones(len(h), bool) for i in range(len(latents))]
        counted = [ok & _active(mask, w)[:, :-1] if at == "active" else ok for w in where]
        for m, batches in corrupted.items():
            xc, mc = reader.rows(batches[b])
            target = _per_text_means(sae.encode(xc)[:, latents], mc)  # [n_texts, L]
            drops = np.full((len(latents), len(ok)), np.nan)
            for i in range(len(latents)):
                if not counted[i].any():
                    continue
                delta = np.where(where[i], target[text_of_row, i] - h[:, i], 0.0)
                lp, _ = score_of(_patch(W[i], delta))
                drops[i] = _masked_mean(lp0, counted[i]) - _masked_mean(lp, counted[i])
            out[m].append(drops)
    return {m: np.concatenate(v, axis=1) for m, v in out.items()}


def ablation_effects(model, sae: SAELike, layer: int, hook: str, batches: Sequence[Batch], latents: Sequence[int],
                     special_ids: Sequence[int], reference_model=None, target_ids=None) -> np.ndarray:
    """Drop of the behaviour score per text when each latent is zero-ablated, [n_latents, n_texts].

    The corruption-free control: x' = x − h_j·w_j on every real token (the SAE's error kept), so a
    latent that never fires on a text has exactly zero effect on it.
    """
    latents = np.asarray(latents, np.int64)
    W = latent_directions(sae, latents)
    reader = _Reader(model, layer, hook, special_ids, reference_model, sae)
    targets = _check_targets(target_ids, model)
    out = []
    for batch in batches:
        x, _ = reader.rows(batch)
        h = sae.encode(x)[:, latents]
        s0, n = reader.scores(batch, target_ids=targets)
        drops = np.empty((len(latents), len(n)))
        for i in range(len(latents)):
            drops[i] = _mean(s0, n) - _mean(reader.scores(batch, _patch(W[i], -h[:, i]), targets)[0], n)
        out.append(drops)
    return np.concatenate(out, axis=1) if out else np.zeros((len(latents), 0))


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


def _moments(drops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, NaN texts left out: count, mean (0 if none) and SD (ddof=1; 0 if fewer than 2)."""
    e = np.asarray(drops, np.float64)
    if e.ndim != 2:
        raise ValueError(f"drops must be [n_latents, n_texts], got shape {e.shape}")
    n = np.sum(~np.isnan(e), axis=1)
    mean = np.divide(np.nansum(e, axis=1), n, out=np.zeros(len(e)), where=n > 0)
    ss = np.nansum((e - mean[:, None]) ** 2, axis=1)
    return n, mean, np.sqrt(np.divide(ss, n - 1, out=np.zeros(len(e)), where=n > 1))


def effect_sizes(drops: np.ndarray) -> np.ndarray:
    """d = mean / SD (ddof=1) of per-text drops, per latent (rows), NaN texts left out; 0 where the SD is 0."""
    _, mean, sd = _moments(drops)
    return np.divide(mean, sd, out=np.zeros_like(mean), where=sd > 0)


def _ttest_p(drops: np.ndarray, alternative: str) -> np.ndarray:
    """One-sample t-test of each row against 0 (NaN texts left out); p = 1 where it is undefined."""
    e = np.asarray(drops, np.float64)
    if e.ndim != 2:
        raise ValueError(f"drops must be [n_latents, n_texts], got shape {e.shape}")
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.asarray(stats.ttest_1samp(e, 0.0, axis=1, alternative=alternative, nan_policy="omit").pvalue, float)
    return np.nan_to_num(p, nan=1.0)


def effect_size(drops: np.ndarray, alternative: str = "greater") -> dict[str, np.ndarray]:
    """Per latent (rows of ``drops`` [n_latents, n_texts]): Cohen's d of the per-text effects
    (mean / SD, ddof=1), the one-sample t-test p-value against 0 (SciPy; ``alternative`` as
    there, default: the latent supports the behaviour), and BH-adjusted p across latents."""
    n, mean, sd = _moments(drops)
    p = _ttest_p(drops, alternative)
    return {"d": np.divide(mean, sd, out=np.zeros_like(mean), where=sd > 0), "mean": mean, "sd": sd, "n": n,
            "p": p, "p_bh": bh_adjusted(p)}


def consistency_gate(d_by_method: Mapping[str, np.ndarray], min_mean: float = 0.8, max_sd: float = 0.3,
                     absolute: bool = False) -> dict[str, np.ndarray]:
    """Per latent: mean and SD (ddof=0) of d across methods, and pass = mean > min_mean and SD < max_sd.

    ``absolute``: the mean is of |d| (a latent whose removal consistently *raises* the score also
    passes); the SD is always of the signed d, so effects of opposite signs never look consistent.
    """
    if len(d_by_method) < 2:
        raise ValueError("the consistency gate needs at least two corruption methods")
    D = np.stack([np.asarray(v, np.float64) for v in d_by_method.values()])
    mean, sd = (np.abs(D) if absolute else D).mean(0), D.std(0)
    return {"mean_d": mean, "sd_d": sd, "pass": (mean > min_mean) & (sd < max_sd)}


def p_values(drops_by_method: Mapping[str, np.ndarray], alternative: str = "greater") -> dict[str, np.ndarray]:
    """One-sided one-sample t-test (drop > 0) per method; combined = max over methods; BH-adjusted."""
    per = {m: _ttest_p(v, alternative) for m, v in drops_by_method.items()}
    combined = np.max(np.stack(list(per.values())), axis=0)
    return {"per_method": per, "combined": combined, "bh": bh_adjusted(combined)}


def damage_gate(damage: np.ndarray, bound: float) -> np.ndarray:
    """Per latent: does ablating it raise CE on unrelated text by at most ``bound`` nats/token?"""
    if not np.isfinite(bound) or bound < 0:
        raise ValueError(f"the damage bound is a CE increase in nats per token, >= 0; got {bound}")
    d = np.asarray(damage, np.float64)
    return np.isfinite(d) & (d <= bound)


def combined_score(effect: np.ndarray, identifiability: np.ndarray, damage: np.ndarray,
                   eps: float = 1e-3) -> np.ndarray:
    """effect × identifiability / (max(damage, 0) + eps): large, specific, harmless effects rank first."""
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    harm = np.maximum(np.asarray(damage, float), 0) + eps
    return np.asarray(effect, float) * np.asarray(identifiability, float) / harm


def causal_ranking(latents: Sequence[int], drops_by_method: Mapping[str, np.ndarray], identifiability: np.ndarray,
                   damage: np.ndarray, min_mean: float = 0.8, max_sd: float = 0.3, damage_bound: float | None = None,
                   eps: float = 1e-3) -> list[dict[str, Any]]:
    """The final table: one row per latent, best combined score first.

    Effect = mean d across methods (the expected sign only: negative counts as 0); score =
    effect × identifiability / damage (``combined_score``); p = the combined one-sided p-value
    (every method must show the effect) and its BH adjustment across these latents; ``final``
    = consistent across methods, BH p <= 0.05, and damage within ``damage_bound`` (if given).
    """
    latents = [int(j) for j in latents]
    n = len(latents)
    ident, dmg = np.asarray(identifiability, np.float64), np.asarray(damage, np.float64)
    for name, v in [("identifiability", ident), ("damage", dmg),
                    *((f"drops[{m!r}]", np.asarray(v)) for m, v in drops_by_method.items())]:
        if len(v) != n:
            raise ValueError(f"{name} has {len(v)} entries but there are {n} latents: give one row per latent")
    d = {m: effect_sizes(v) for m, v in drops_by_method.items()}
    gate = consistency_gate(d, min_mean, max_sd)
    p = p_values(drops_by_method)
    harmless = damage_gate(dmg, damage_bound) if damage_bound is not None else np.isfinite(dmg)
    score = combined_score(np.maximum(gate["mean_d"], 0), ident, dmg, eps)
    rows = [{"latent": j, "score": float(score[i]), "mean_d": float(gate["mean_d"][i]), "sd_d": float(gate["sd_d"][i]),
             **{f"d_{m}": float(v[i]) for m, v in d.items()}, "identifiability": float(ident[i]),
             "damage": float(dmg[i]), "p": float(p["combined"][i]), "p_bh": float(p["bh"][i]),
             "consistent": bool(gate["pass"][i]), "harmless": bool(harmless[i]),
             "final": bool(gate["pass"][i] and p["bh"][i] <= 0.05 and harmless[i])} for i, j in enumerate(latents)]
    return sorted(rows, key=lambda r: -r["score"])


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

