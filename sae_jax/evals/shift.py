"""Base vs chat: which latents does fine-tuning shift, and are shifted latents enriched in a group?

- Cohen's d per latent between the codes of the same texts run through the base and the chat
  model (pooled SD), from streamed moments (``stats.ClassMoments``: class 0 = base, 1 = chat).
- Classification: a base-SAE latent present in base and suppressed in chat (d <= -t), amplified
  in chat (d >= +t), unchanged, or absent (never fires on base); a delta-SAE latent (SAE trained
  on chat - base) is "only in the delta SAE" when no base- or chat-SAE decoder row is close to
  its direction.
- Enrichment of a latent group among the shifted latents (share among shifted / share among
  all), with a bootstrap confidence interval over latents (``scipy.stats.bootstrap``).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from sae_jax.evals.stats import ClassMoments
from sae_jax.export import decoder_directions

SUPPRESSED, AMPLIFIED, UNCHANGED, ABSENT = "suppressed_in_chat", "amplified_in_chat", "unchanged", "absent_in_base"


def cohens_d(moments: ClassMoments) -> np.ndarray:
    """(mean_chat - mean_base) / pooled SD per unit; 0 where both classes are constant."""
    n = moments.n.astype(np.float64)
    if (n < 2).any():
        raise ValueError(f"Cohen's d needs at least 2 rows per model, got {moments.n.tolist()}")
    mean = moments.s / n[:, None]
    ss_dev = np.maximum(moments.ss - moments.s**2 / n[:, None], 0)  # sum of squared deviations
    pooled = np.sqrt(ss_dev.sum(0) / (n.sum() - 2))
    diff = mean[1] - mean[0]
    return np.divide(diff, pooled, out=np.zeros_like(diff), where=pooled > 0)


def cohens_d_arrays(base: np.ndarray, chat: np.ndarray) -> np.ndarray:
    """Cohen's d per column between two row sets (chat minus base)."""
    m = ClassMoments(np.shape(base)[1])
    m.update(np.concatenate([base, chat]), np.r_[np.zeros(len(base), int), np.ones(len(chat), int)])
    return cohens_d(m)


def classify_latents(d: np.ndarray, base_frequency: np.ndarray, threshold: float = 0.5,
                     min_frequency: float = 1e-4) -> np.ndarray:
    """Per base-SAE latent: suppressed / amplified in chat, unchanged, or absent in base."""
    d, f = np.asarray(d), np.asarray(base_frequency)
    if d.shape != f.shape:
        raise ValueError(f"d and base_frequency must have the same shape, got {d.shape} and {f.shape}")
    out = np.full(d.shape, UNCHANGED, dtype=object)
    present = f >= min_frequency
    out[present & (d <= -threshold)] = SUPPRESSED
    out[d >= threshold] = AMPLIFIED  # a latent absent in base but firing in chat is amplified
    out[~present & (d < threshold)] = ABSENT
    return out


def max_abs_cosine(A: np.ndarray, B: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """For each row of A, the largest |cosine| with any row of B (chunked: memory chunk x n_b)."""
    a = A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-12)
    b = B / np.maximum(np.linalg.norm(B, axis=1, keepdims=True), 1e-12)
    return np.concatenate([np.abs(a[i:i + chunk] @ b.T).max(1) for i in range(0, len(a), chunk)])


def delta_only(W_delta: np.ndarray, W_base: np.ndarray, W_chat: np.ndarray, cos_threshold: float = 0.7) -> np.ndarray:
    """Delta-SAE latents whose direction has no counterpart (|cos| >= threshold) in base or chat SAE."""
    return np.maximum(max_abs_cosine(W_delta, W_base), max_abs_cosine(W_delta, W_chat)) < cos_threshold


@dataclass
class Enrichment:
    enrichment: float
    """share of the group among shifted latents / share of the group among all latents."""
    ci_low: float
    ci_high: float
    confidence: float
    n_latents: int
    n_group: int
    n_shifted: int
    n_group_shifted: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _enrichment_stat(group, shifted, axis=-1):
    group, shifted = np.asarray(group, float), np.asarray(shifted, float)
    share_shifted = (group * shifted).sum(axis) / shifted.sum(axis)
    return share_shifted / group.mean(axis)


def enrichment(in_group: np.ndarray, shifted: np.ndarray, n_resamples: int = 2000, confidence: float = 0.95,
               seed: int = 0) -> Enrichment:
    """Enrichment of ``in_group`` latents among ``shifted`` ones, percentile bootstrap CI over latents.

    The CI is NaN when resamples leave the statistic undefined (no group or no shifted latent drawn),
    which happens with very few group or shifted latents: too few to say anything with confidence.
    """
    g, s = np.asarray(in_group, bool), np.asarray(shifted, bool)
    if g.shape != s.shape or g.ndim != 1:
        raise ValueError(f"in_group and shifted must be 1-D masks over the same latents, got {g.shape} and {s.shape}")
    if not g.any() or not s.any():
        raise ValueError("enrichment needs at least one group latent and one shifted latent")
    point = float(_enrichment_stat(g, s))
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # NaN CI, documented above
        res = stats.bootstrap((g, s), _enrichment_stat, paired=True, vectorized=True, n_resamples=n_resamples,
                              confidence_level=confidence, method="percentile", random_state=seed)
    ci = res.confidence_interval
    return Enrichment(point, float(ci.low), float(ci.high), confidence, int(g.size), int(g.sum()), int(s.sum()),
                      int((g & s).sum()))


@dataclass
class ShiftResult:
    n_tokens: int
    threshold: float
    counts: dict[str, int]
    """Base-SAE latents per class (suppressed / amplified / unchanged / absent)."""
    top_suppressed: list[tuple[int, float]]
    top_amplified: list[tuple[int, float]]
    n_delta_only: int | None
    delta_only_latents: list[int] | None
    enrichment: dict[str, Any] | None
    """Enrichment of group latents (firing group_ratio x more on the labelled text group) among shifted ones."""
    d: np.ndarray = field(repr=False, default=None)
    classes: np.ndarray = field(repr=False, default=None)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("d")
        out.pop("classes")
        return out


def evaluate_shift(sae, base_source, chat_source, rows: np.ndarray, batch_size: int = 2048, threshold: float = 0.5,
                   min_frequency: float = 1e-4, chat_sae=None, delta_sae=None, cos_threshold: float = 0.7,
                   row_group: np.ndarray | None = None, group_ratio: float = 2.0, n_top: int = 20,
                   n_resamples: int = 2000, seed: int = 0) -> ShiftResult:
    """Shifts of the (base) ``sae``'s latents between base and chat activations of the same tokens.

    ``base_source`` and ``chat_source`` must be aligned row by row (same texts, same tokens).
    ``row_group``: optional 0/1 per row of ``rows`` (text in the labelled group) for enrichment.
    """
    if base_source.n_rows != chat_source.n_rows or base_source.d_in != chat_source.d_in:
        raise ValueError(f"base and chat activations must be aligned row by row: ({base_source.n_rows}, "
                         f"{base_source.d_in}) vs ({chat_source.n_rows}, {chat_source.d_in})")
    F = sae.d_sae
    moments = ClassMoments(F)
    fired = np.zeros(F, dtype=np.int64)
    group_sum, group_n = np.zeros((2, F)), np.zeros(2)
    rows = np.asarray(rows, dtype=np.int64)
    if row_group is not None and len(row_group) != len(rows):
        raise ValueError(f"row_group needs one entry per evaluated row ({len(rows)}), got {len(row_group)}")
    for i in range(0, len(rows), batch_size):
        r = rows[i:i + batch_size]
        hb, hc = sae.encode(base_source.read(r)), sae.encode(chat_source.read(r))
        moments.update(hb, np.zeros(len(r), int))
        moments.update(hc, np.ones(len(r), int))
        fired += (hb != 0).sum(0)
        if row_group is not None:
            g = np.asarray(row_group[i:i + batch_size], bool)
            for k, sel in ((1, g), (0, ~g)):
                group_sum[k] += hb[sel].sum(0, dtype=np.float64) + hc[sel].sum(0, dtype=np.float64)
                group_n[k] += 2 * sel.sum()
    d = cohens_d(moments)
    classes = classify_latents(d, fired / len(rows), threshold, min_frequency)
    counts = {c: int((classes == c).sum()) for c in (SUPPRESSED, AMPLIFIED, UNCHANGED, ABSENT)}
    order = np.argsort(d)
    top_sup = [(int(j), float(d[j])) for j in order[:n_top] if classes[j] == SUPPRESSED]
    top_amp = [(int(j), float(d[j])) for j in order[::-1][:n_top] if classes[j] == AMPLIFIED]
    n_delta = delta_lat = None
    if delta_sae is not None and chat_sae is not None:
        mask = delta_only(decoder_directions(delta_sae), decoder_directions(sae), decoder_directions(chat_sae), cos_threshold)
        n_delta, delta_lat = int(mask.sum()), [int(j) for j in np.nonzero(mask)[0][:100]]
    enrich = None
    if row_group is not None:
        if group_n.min() == 0:
            raise ValueError("row_group must contain rows both in and outside the group")
        mean_in, mean_out = group_sum[1] / group_n[1], group_sum[0] / group_n[0]
        in_group = (mean_in > 0) & (mean_in > group_ratio * mean_out)
        shifted = (classes == SUPPRESSED) | (classes == AMPLIFIED)
        if in_group.any() and shifted.any():
            enrich = enrichment(in_group, shifted, n_resamples=n_resamples, seed=seed).to_dict()
    return ShiftResult(len(rows), threshold, counts, top_sup, top_amp, n_delta, delta_lat, enrich, d, classes)
