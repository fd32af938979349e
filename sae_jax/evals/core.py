"""Core reconstruction and sparsity metrics of an SAE on a held-out split, streamed.

Definitions follow ``METRICS.md``. Every sum is accumulated in float64 on the host over the
whole evaluation set (never averaged per batch); the variance around the mean (FVU's
denominator) is merged across batches with Chan's parallel update, which avoids the
cancellation of E||x||^2 - ||E x||^2. Memory is O(batch x d_sae + d_sae): the N x F code
matrix never exists.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import numpy as np

from sae_jax.data.source import ActivationSource

DENSITY_THRESHOLDS = (1e-5, 1e-6)


class SAELike(Protocol):
    """What evaluations need of an SAE (``sae_jax.export.LoadedSAE`` has these members)."""

    d_in: int
    d_sae: int
    params: dict[str, np.ndarray]

    def encode(self, x: np.ndarray) -> np.ndarray: ...

    def decode(self, h: np.ndarray) -> np.ndarray: ...


@dataclass
class CoreMetrics:
    """Results of ``evaluate_core``; ``frequency`` is the per-latent firing frequency [d_sae]."""

    n_tokens: int
    mse: float
    """Mean over tokens of sum_d (x - x_hat)^2."""
    fvu: float
    """sum ||x - x_hat||^2 / sum ||x - mean(x)||^2."""
    explained_variance: float
    nmse_vs_zero: float
    """sum ||x - x_hat||^2 / sum ||x||^2 (OpenAI's normalised MSE)."""
    cosine_similarity: float
    l2_ratio: float
    relative_reconstruction_bias: float
    """E||x_hat||^2 / E[x . x_hat] (Gated SAE paper, eq. 10); 1 means no shrinkage."""
    l0: float
    alive_fraction: float
    dead_fraction: float
    n_dead: int
    n_density_below_1e5: int
    """Latents firing on fewer than 1e-5 of tokens (dead ones included)."""
    n_density_below_1e6: int
    density_hist_counts: list[int] = field(default_factory=list)
    density_hist_edges: list[float] = field(default_factory=list)
    """Histogram of log10(frequency) of the latents that fired at least once."""
    frequency: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready scalars and the histogram (without the per-latent frequency array)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "frequency":
                continue
            out[f.name] = getattr(self, f.name)
        return out


class CoreAccumulator:
    """Float64 running sums for the core metrics; feed ``(x, x_hat, h)`` batches."""

    def __init__(self, d_in: int, d_sae: int):
        self.d_in, self.d_sae = d_in, d_sae
        self.n = 0
        self.mean = np.zeros(d_in)  # running mean of x
        self.m2 = 0.0  # running sum ||x - mean||^2
        self.sq_err = 0.0
        self.sq_x = 0.0
        self.sq_xhat = 0.0
        self.dot = 0.0
        self.cos = 0.0
        self.l2_ratio = 0.0
        self.l0 = 0
        self.fire_counts = np.zeros(d_sae, dtype=np.int64)

    def update(self, x: np.ndarray, x_hat: np.ndarray, h: np.ndarray) -> None:
        if x.shape != x_hat.shape or x.ndim != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"x and x_hat must both be [batch, {self.d_in}], got {x.shape} and {x_hat.shape}")
        if h.shape != (x.shape[0], self.d_sae):
            raise ValueError(f"codes must be [batch, {self.d_sae}], got {h.shape}")
        x = np.asarray(x, dtype=np.float64)
        x_hat = np.asarray(x_hat, dtype=np.float64)
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_b = x.mean(0)
        m2_b = float(((x - mean_b) ** 2).sum())
        delta = mean_b - self.mean
        total = self.n + n_b
        self.m2 += m2_b + float(delta @ delta) * self.n * n_b / total
        self.mean += delta * (n_b / total)
        self.n = total

        x_norm = np.linalg.norm(x, axis=1)
        xh_norm = np.linalg.norm(x_hat, axis=1)
        dots = np.einsum("nd,nd->n", x, x_hat)
        self.sq_err += float(((x - x_hat) ** 2).sum())
        self.sq_x += float((x_norm**2).sum())
        self.sq_xhat += float((xh_norm**2).sum())
        self.dot += float(dots.sum())
        eps = 1e-12
        self.cos += float((dots / np.maximum(x_norm * xh_norm, eps)).sum())
        self.l2_ratio += float((xh_norm / np.maximum(x_norm, eps)).sum())
        active = h != 0
        self.l0 += int(active.sum())
        self.fire_counts += active.sum(0)

    def result(self, n_bins: int = 50) -> CoreMetrics:
        if self.n == 0:
            raise ValueError("no tokens were evaluated")
        n = self.n
        fvu = self.sq_err / self.m2 if self.m2 > 0 else float("nan")
        freq = self.fire_counts / n
        alive = freq > 0
        log_freq = np.log10(freq[alive])
        if log_freq.size:
            lo = min(np.floor(log_freq.min()), -np.log10(n))
            counts, edges = np.histogram(log_freq, bins=n_bins, range=(lo, 0.0))
        else:
            counts, edges = np.zeros(0, dtype=np.int64), np.zeros(0)
        return CoreMetrics(
            n_tokens=n,
            mse=self.sq_err / n,
            fvu=fvu,
            explained_variance=1.0 - fvu,
            nmse_vs_zero=self.sq_err / self.sq_x if self.sq_x > 0 else float("nan"),
            cosine_similarity=self.cos / n,
            l2_ratio=self.l2_ratio / n,
            relative_reconstruction_bias=self.sq_xhat / self.dot if self.dot != 0 else float("nan"),
            l0=self.l0 / n,
            alive_fraction=float(alive.mean()),
            dead_fraction=float(1.0 - alive.mean()),
            n_dead=int((~alive).sum()),
            n_density_below_1e5=int((freq < DENSITY_THRESHOLDS[0]).sum()),
            n_density_below_1e6=int((freq < DENSITY_THRESHOLDS[1]).sum()),
            density_hist_counts=[int(c) for c in counts],
            density_hist_edges=[float(e) for e in edges],
            frequency=freq,
        )


def split_rows(n_rows: int, start: float, stop: float, max_rows: int = 0) -> np.ndarray:
    """Row indices of the fractional range ``[start, stop)`` of a source (optionally the first max_rows)."""
    if not 0.0 <= start < stop <= 1.0:
        raise ValueError(f"held-out split must satisfy 0 <= start < stop <= 1, got start={start}, stop={stop}")
    lo, hi = int(round(start * n_rows)), int(round(stop * n_rows))
    if max_rows > 0:
        hi = min(hi, lo + max_rows)
    if hi <= lo:
        raise ValueError(f"held-out split [{start}, {stop}) of {n_rows} rows is empty; widen it")
    return np.arange(lo, hi, dtype=np.int64)


def iter_batches(source: ActivationSource, rows: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Rows of ``source`` in order, ``batch_size`` at a time (float32)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for i in range(0, len(rows), batch_size):
        yield source.read(rows[i : i + batch_size])


def evaluate_core(sae: SAELike, source: ActivationSource, rows: np.ndarray | None = None,
                  batch_size: int = 2048) -> CoreMetrics:
    """Core metrics of ``sae`` on ``source`` rows (all rows if None), in streaming batches."""
    if source.d_in != sae.d_in:
        raise ValueError(
            f"activation width {source.d_in} does not match the SAE's d_in {sae.d_in}: "
            "evaluate on activations from the same model, layer and hook the SAE was trained on"
        )
    rows = np.arange(source.n_rows, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    acc = CoreAccumulator(sae.d_in, sae.d_sae)
    for x in iter_batches(source, rows, batch_size):
        h = sae.encode(x)
        acc.update(x, sae.decode(h), h)
    return acc.result()


def saebench_reconstruction(batches: Iterator[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """SAEBench 0.6.0's core-eval reconstruction metrics with ITS definitions, for comparing numbers.

    ``batches``: ``(x, x_hat)`` pairs [tokens, d], one per SAEBench eval batch (its values depend on
    the batching). Differs from ``CoreMetrics`` (docs/saebench.md):
    ``explained_variance`` = 1 - mean_t ||x-x̂||² / (mean_t ||x||² - m²), m = mean over batches and
    dimensions of mean_t x_d² (not the variance about the mean: not 1 - FVU);
    ``explained_variance_legacy`` = mean over tokens of 1 - ||x_t-x̂_t||² / ||x_t - mean_batch(x)||²;
    ``mse`` = mean over tokens of ||x_t-x̂_t||² / (tokens in its batch).
    """
    sq, per_dim, rss, legacy, mse = [], [], [], [], []
    for x, x_hat in batches:
        x, x_hat = np.asarray(x, np.float64), np.asarray(x_hat, np.float64)
        if x.shape != x_hat.shape or x.ndim != 2 or len(x) == 0:
            raise ValueError(f"each batch needs x and x_hat of the same [tokens > 0, d] shape, got {x.shape}, {x_hat.shape}")
        r = ((x - x_hat) ** 2).sum(1)
        sq.append((x**2).sum(1).mean())
        per_dim.append((x**2).mean(0))
        rss.append(r.mean())
        legacy.append(1 - r / ((x - x.mean(0)) ** 2).sum(1))
        mse.append(r / len(x))
    if not sq:
        raise ValueError("no batches were given")
    m = np.concatenate(per_dim).mean()
    return {"explained_variance": float(1 - np.mean(rss) / (np.mean(sq) - m**2)),
            "explained_variance_legacy": float(np.concatenate(legacy).mean()),
            "mse": float(np.concatenate(mse).mean())}
