"""Matplotlib figures of evaluation results (returned as figures; ``report.figure_png`` inlines them)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sae_jax.evals import report  # noqa: F401  (selects the Agg backend before pyplot)
import matplotlib.pyplot as plt  # noqa: E402


def density_histogram(counts: Sequence[int], edges: Sequence[float], n_dead: int, n_tokens: int):
    fig, ax = plt.subplots(figsize=(7, 3.2))
    if len(counts):
        ax.stairs(counts, edges, fill=True, color="#3b82f6")
    for thr in (-5, -6):
        ax.axvline(thr, color="#ef4444", ls="--", lw=1)
    ax.set_xlabel("log10 firing frequency")
    ax.set_ylabel("latents")
    ax.set_title(f"Feature density over {n_tokens:,} tokens ({n_dead:,} dead latents not shown)")
    return fig


def splice_bars(ce: Mapping[str, float]):
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = list(ce)
    ax.bar(names, [ce[n] for n in names], color=["#16a34a", "#3b82f6", "#94a3b8", "#ef4444", "#f59e0b"][: len(names)])
    vals = [v for v in ce.values() if np.isfinite(v)]
    if vals:  # the differences matter, not the distance from zero
        lo, hi = min(vals), max(vals)
        pad = 0.15 * (hi - lo) or 0.05 * abs(hi) or 1.0
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_ylabel("next-token CE (nats)")
    ax.set_title("Cross-entropy with the hooked activation replaced")
    return fig


def sparse_probing_curve(ks: Sequence[int], curves: Mapping[str, Sequence[float]], dense: Mapping[str, float] | None = None):
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, accs in curves.items():
        ax.plot(ks, accs, marker="o", label=name)
    for name, acc in (dense or {}).items():
        ax.axhline(acc, ls="--", lw=1, color="#64748b")
        ax.annotate(name, (ks[0], acc), textcoords="offset points", xytext=(2, 3), fontsize=8, color="#64748b")
    ax.set_xscale("log")
    ax.set_xticks(list(ks), [str(k) for k in ks])
    ax.set_xlabel("k latents")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("k-sparse probing")
    ax.legend()
    return fig


def pvalue_histograms(pvalues: Mapping[str, np.ndarray]):
    fig, axes = plt.subplots(1, len(pvalues), figsize=(3.6 * len(pvalues), 3), squeeze=False)
    for ax, (name, p) in zip(axes[0], pvalues.items()):
        p = np.asarray(p)
        ax.hist(p[np.isfinite(p)], bins=20, range=(0, 1), color="#3b82f6")
        ax.set_title(name)
        ax.set_xlabel("p-value")
    axes[0][0].set_ylabel("units")
    return fig
