"""Themes among latents: k-means over decoder directions (or TF-IDF of top contexts), and the
share of shifted latents per cluster.

Decoder rows are L2-normalised first, so k-means on them groups by direction (on the unit
sphere, squared Euclidean distance is 2 - 2 cos).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.feature_extraction.text import TfidfVectorizer


def cluster_directions(W_dec: np.ndarray, n_clusters: int, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """Cluster label per latent from k-means over unit-normalised decoder rows."""
    W = np.asarray(W_dec, dtype=np.float64)
    if not 1 <= n_clusters <= W.shape[0]:
        raise ValueError(f"n_clusters must be in [1, {W.shape[0]}] (the number of latents), got {n_clusters}")
    unit = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)
    return KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit_predict(unit)


def cluster_contexts(contexts: Sequence[str], n_clusters: int, seed: int = 0) -> np.ndarray:
    """Cluster label per latent from k-means over TF-IDF of its top contexts joined into one text."""
    if not 1 <= n_clusters <= len(contexts):
        raise ValueError(f"n_clusters must be in [1, {len(contexts)}] (the number of latents), got {n_clusters}")
    X = TfidfVectorizer().fit_transform(contexts)
    return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(X)


def shifted_share(labels: np.ndarray, shifted: np.ndarray) -> list[dict[str, float]]:
    """Per cluster: size, number of shifted latents and their share, largest share first."""
    labels, shifted = np.asarray(labels), np.asarray(shifted, bool)
    if labels.shape != shifted.shape:
        raise ValueError(f"labels and shifted must cover the same latents, got {labels.shape} and {shifted.shape}")
    rows = []
    for c in np.unique(labels):
        member = labels == c
        rows.append({"cluster": int(c), "size": int(member.sum()), "n_shifted": int((member & shifted).sum()),
                     "share_shifted": float((member & shifted).sum() / member.sum())})
    return sorted(rows, key=lambda r: -r["share_shifted"])
