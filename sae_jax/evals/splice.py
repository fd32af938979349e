"""CE-loss recovered and KL score: the SAE spliced into the language model.

This module holds the NumPy side: the activation transforms (SAE reconstruction, with the
error term, zero / mean ablation, latent ablation, steering) and the scores of METRICS.md.
The PyTorch forward hook that applies a transform lives in ``sae_jax.lm.splice`` and is
imported only when a model is actually run, so this module stays torch-free.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sae_jax.evals.core import SAELike
from sae_jax.export import decoder_directions


def real_tokens(input_ids: np.ndarray, attention_mask: np.ndarray, special_ids: Iterable[int]) -> np.ndarray:
    """Positions that are attended and not special tokens: where splices act and rows are kept (NumPy)."""
    return np.asarray(attention_mask).astype(bool) & ~np.isin(input_ids, list(special_ids))


def reconstruct(sae: SAELike):
    """x -> x_hat."""
    return lambda x: sae.decode(sae.encode(x))


def reconstruct_with_error(sae: SAELike):
    """x -> x_hat + (x - x_hat): numerically x; checks that the hook changes nothing else."""
    def fn(x):
        x_hat = sae.decode(sae.encode(x))
        return x_hat + (x - x_hat)
    return fn


def zero_ablate():
    return lambda x: np.zeros_like(x)


def mean_ablate(mean: np.ndarray):
    mean = np.asarray(mean, dtype=np.float32)
    return lambda x: np.broadcast_to(mean, x.shape).copy()


def ablate_latents(sae: SAELike, latents: Sequence[int], values: np.ndarray | float | None = 0.0,
                   keep_error: bool = True):
    """Set chosen latents to ``values`` (0 = zero ablation; a [len(latents)] vector = mean ablation).

    ``values`` may also be a callable ``(x, h_selected) -> replacement [n, len(latents)]`` (paired
    replacement). With ``keep_error`` the SAE's error term is kept, so only the ablation changes
    the activation: x' = x + decode(h') - decode(h).
    """
    latents = np.asarray(latents, dtype=np.int64)
    if latents.size and (latents.min() < 0 or latents.max() >= sae.d_sae):
        raise ValueError(f"latent ids must lie in [0, {sae.d_sae}), got {latents.tolist()}")

    def fn(x):
        h = sae.encode(x)
        h2 = h.copy()
        if callable(values):
            h2[:, latents] = values(x, h[:, latents])
        else:
            h2[:, latents] = values
        new = sae.decode(h2)
        return x + (new - sae.decode(h)) if keep_error else new
    return fn


def steer(sae: SAELike, latent: int, alpha: float):
    """x -> x + alpha * W_dec[latent] (the latent's decoder direction, as stored)."""
    if not 0 <= latent < sae.d_sae:
        raise ValueError(f"latent id must lie in [0, {sae.d_sae}), got {latent}")
    direction = decoder_directions(sae)[latent]
    return lambda x: x + alpha * direction


@dataclass
class SpliceMetrics:
    """Next-token CE (nats) and KL over non-special tokens, and the recovery scores."""

    n_tokens: int
    ce_clean: float
    ce_spliced: float
    ce_spliced_with_error: float
    ce_zero: float
    ce_mean: float
    ce_loss_recovered_zero: float
    """(CE_zero - CE_sae) / (CE_zero - CE_clean)."""
    ce_loss_recovered_mean: float
    """(CE_mean - CE_sae) / (CE_mean - CE_clean)."""
    kl_spliced: float
    """Mean over tokens of KL(clean || spliced), summed over the vocabulary."""
    kl_spliced_with_error: float
    kl_zero: float
    kl_mean: float
    kl_score_zero: float
    """(KL_zero - KL_sae) / KL_zero."""
    kl_score_mean: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else float("nan")


def splice_scores(losses: dict[str, Any]) -> SpliceMetrics:
    """Scores from per-variant losses with ``.ce``, ``.kl``, ``.n_tokens`` (keys as in evaluate_splice)."""
    c, s, e, z, m = (losses[k] for k in ("clean", "spliced", "spliced_with_error", "zero", "mean"))
    return SpliceMetrics(
        n_tokens=c.n_tokens,
        ce_clean=c.ce, ce_spliced=s.ce, ce_spliced_with_error=e.ce, ce_zero=z.ce, ce_mean=m.ce,
        ce_loss_recovered_zero=_ratio(z.ce - s.ce, z.ce - c.ce),
        ce_loss_recovered_mean=_ratio(m.ce - s.ce, m.ce - c.ce),
        kl_spliced=s.kl, kl_spliced_with_error=e.kl, kl_zero=z.kl, kl_mean=m.kl,
        kl_score_zero=_ratio(z.kl - s.kl, z.kl),
        kl_score_mean=_ratio(m.kl - s.kl, m.kl),
    )


def evaluate_splice(model, sae: SAELike, batches: Iterable[tuple[np.ndarray, np.ndarray]], layer: int, hook: str,
                    special_ids: Iterable[int], mean: np.ndarray | None = None) -> SpliceMetrics:
    """Splice ``sae`` at ``(layer, hook)`` of the torch ``model`` over token batches.

    ``batches``: ``(input_ids [B, T], attention_mask [B, T])`` int arrays (re-iterable if
    ``mean`` is None, since the mean activation is then computed from them first).
    ``mean``: the dataset-mean activation for mean ablation.
    """
    from sae_jax.lm import splice as lm_splice  # torch only when a model is run

    batches = list(batches)
    special_ids = list(special_ids)
    if mean is None:
        mean = lm_splice.mean_activation(model, batches, layer, hook, special_ids)
    mean = np.asarray(mean)
    if mean.shape != (sae.d_in,):
        raise ValueError(f"mean activation must have shape ({sae.d_in},), got {mean.shape}")
    variants = {
        "spliced": reconstruct(sae),
        "spliced_with_error": reconstruct_with_error(sae),
        "zero": zero_ablate(),
        "mean": mean_ablate(mean),
    }
    losses = lm_splice.splice_losses(model, batches, layer, hook, variants, special_ids)
    return splice_scores(losses)


def evaluate_transcoder_splice(model, transcoder: SAELike, batches: Iterable[tuple[np.ndarray, np.ndarray]],
                               layer: int, special_ids: Iterable[int], mean: np.ndarray | None = None,
                               source_hook: str = "mlp_in", hook: str = "mlp_out") -> SpliceMetrics:
    """Replace the MLP of block ``layer`` by ``transcoder``: ``mlp_out`` := transcoder(``mlp_in``)
    (the skip term included), against zero / mean ablation of ``mlp_out``.

    The scores are those of ``evaluate_splice``; ``*_with_error`` fields are NaN (the error
    term of a transcoder is the whole MLP output minus its prediction: adding it back is the
    clean model by construction).
    """
    from sae_jax.lm import splice as lm_splice  # torch only when a model is run

    batches = list(batches)
    special_ids = list(special_ids)
    if mean is None:
        mean = lm_splice.mean_activation(model, batches, layer, hook, special_ids)
    variants = {"spliced": transcoder, "zero": zero_ablate(), "mean": mean_ablate(np.asarray(mean))}
    losses = lm_splice.splice_losses(model, batches, layer, hook, variants, special_ids, source_hook=source_hook)
    return splice_scores(losses | {"spliced_with_error": lm_splice.VariantLoss()})
