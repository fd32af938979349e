"""Causal checks by patching: ablate a latent (or a set) and measure a target across examples.

The patch keeps the SAE's error term, so only the chosen latents change:
x' = x + decode(h') - decode(h), with h' = h except on the chosen latents, which are set by a
corruption method:

- ``zero``: 0;
- ``mean``: the latent's mean activation over reference tokens;
- ``paired``: the latent's value at the same position of a paired (minimally different) input.

Targets: the log-probability of a label token under the spliced LM (``patch_logprob_effects``),
or a probe's output on the patched activation (``patch_probe_effects``). Per method: the
per-example effect (patched - clean), its mean, the paired effect size d_z = mean / SD, and
Cohen's d between the clean and patched target values (pooled SD). Consistency: whether all
methods move the target the same way, and the correlation of per-example effects between methods.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from sae_jax.evals.core import SAELike
from sae_jax.evals.shift import cohens_d_arrays
from sae_jax.evals.splice import ablate_latents, real_tokens

METHODS = ("zero", "mean", "paired")


@dataclass
class MethodEffect:
    mean_effect: float
    d_z: float
    """mean(effect) / SD(effect): paired effect size across examples."""
    cohens_d: float
    """(mean patched - mean clean) / pooled SD of the two sets of target values."""
    effects: list[float] = field(repr=False)


@dataclass
class PatchResult:
    latents: list[int]
    n_examples: int
    methods: dict[str, MethodEffect]
    same_sign: bool
    """All methods move the target in the same direction (on average)."""
    effect_correlation: dict[str, float]
    """Pearson correlation of per-example effects for each pair of methods."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(clean: np.ndarray, patched: dict[str, np.ndarray], latents: Sequence[int]) -> PatchResult:
    clean = np.asarray(clean, dtype=np.float64)
    methods, effects = {}, {}
    for name, values in patched.items():
        eff = np.asarray(values, dtype=np.float64) - clean
        sd = eff.std(ddof=1) if eff.size > 1 else 0.0
        effects[name] = eff
        methods[name] = MethodEffect(float(eff.mean()), float(eff.mean() / sd) if sd > 0 else 0.0,
                                     float(cohens_d_arrays(clean[:, None], np.asarray(values, float)[:, None])[0]),
                                     eff.tolist())
    signs = {np.sign(m.mean_effect) for m in methods.values()}
    corr = {}
    for a, b in combinations(effects, 2):
        ea, eb = effects[a], effects[b]
        corr[f"{a}~{b}"] = float(np.corrcoef(ea, eb)[0, 1]) if ea.std() > 0 and eb.std() > 0 else float("nan")
    return PatchResult([int(l) for l in latents], int(clean.size), methods, len(signs) == 1 and 0 not in signs, corr)


def _check_methods(methods, have_mean, have_paired):
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown corruption methods {unknown}; choose from {METHODS}")
    if len(methods) < 2:
        raise ValueError("consistency needs at least two corruption methods (e.g. zero and mean)")
    if "paired" in methods and not have_paired:
        raise ValueError("the 'paired' method needs the paired inputs (paired_ids / X_paired)")


def patch_probe_effects(sae: SAELike, X: np.ndarray, probe: Callable[[np.ndarray], np.ndarray], latents: Sequence[int],
                        methods: Sequence[str] = ("zero", "mean"), X_paired: np.ndarray | None = None,
                        mean_codes: np.ndarray | None = None) -> PatchResult:
    """Effect of patching ``latents`` on ``probe(x)`` (e.g. a probe's decision function), one row per example."""
    _check_methods(methods, mean_codes is not None, X_paired is not None)
    latents = np.asarray(latents, dtype=np.int64)
    if mean_codes is None:
        mean_codes = sae.encode(X).mean(0)
    clean = probe(X)
    patched = {}
    for m in methods:
        if m == "paired":
            if X_paired.shape != X.shape:
                raise ValueError(f"X_paired must have the shape of X {X.shape}, got {X_paired.shape}")
            values = sae.encode(X_paired)[:, latents]
            patched[m] = probe(ablate_latents(sae, latents, lambda x, h, v=values: v)(X))
        else:
            values = 0.0 if m == "zero" else np.asarray(mean_codes)[latents]
            patched[m] = probe(ablate_latents(sae, latents, values)(X))
    return summarise(clean, patched, latents)


def patch_logprob_effects(model, sae: SAELike, layer: int, hook: str, input_ids: np.ndarray, attention_mask: np.ndarray,
                          positions: np.ndarray, target_ids: np.ndarray, latents: Sequence[int], special_ids: Sequence[int],
                          methods: Sequence[str] = ("zero", "mean"), paired_ids: np.ndarray | None = None,
                          mean_codes: np.ndarray | None = None) -> PatchResult:
    """Effect of patching ``latents`` (at every real token) on log p(target_ids[i] | prefix up to positions[i])."""
    from sae_jax.lm import splice as lm_splice  # torch only when a model is run

    _check_methods(methods, mean_codes is not None, paired_ids is not None)
    latents = np.asarray(latents, dtype=np.int64)
    mask = real_tokens(input_ids, attention_mask, special_ids)
    if mean_codes is None:
        acts = next(lm_splice.hooked_activations(model, [(input_ids, attention_mask)], layer, hook))
        mean_codes = sae.encode(acts[mask]).mean(0)

    def logprobs(transform):
        return lm_splice.target_logprobs(model, input_ids, attention_mask, positions, target_ids, layer, hook,
                                         transform, special_ids)

    clean = logprobs(None)
    patched = {}
    for m in methods:
        if m == "paired":
            if paired_ids.shape != input_ids.shape or not np.array_equal(
                    real_tokens(paired_ids, attention_mask, special_ids), mask):
                raise ValueError("paired_ids must have the same shape and the same real/special positions as input_ids")
            acts = next(lm_splice.hooked_activations(model, [(paired_ids, attention_mask)], layer, hook))
            values = sae.encode(acts[mask])[:, latents]  # rows in the order the hook sees them
            patched[m] = logprobs(ablate_latents(sae, latents, lambda x, h, v=values: v))
        else:
            values = 0.0 if m == "zero" else np.asarray(mean_codes)[latents]
            patched[m] = logprobs(ablate_latents(sae, latents, values))
    return summarise(clean, patched, latents)
