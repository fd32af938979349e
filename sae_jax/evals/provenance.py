"""What an activation store says about its rows: model, hook point, source texts and labels.

Stores written by ``sae-jax extract`` record the model, layer, hook and extraction config in
their metadata, and the source text of every row (``doc_ids``) at the extraction root. From
these the evaluation finds, without extra flags, the model to splice into, the held-out texts
(those whose rows all lie in the held-out split) and per-row labels (from labelled corpora).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np


@dataclass
class StoreProvenance:
    model: str | None
    """The model as named at extraction (a short name or a path)."""
    model_path: str | None
    """The file or folder actually loaded at extraction."""
    layer: int | None
    hook: str | None
    context_length: int | None
    texts: tuple[str, ...] | None
    """The extraction's texts, in order (None when they cannot be reloaded)."""
    text_labels: tuple[str, ...] | None
    doc_ids: np.ndarray | None
    """Source-text index of every row (None when the extraction root is not found)."""
    pooled: bool = False
    """One row per text (mean/last pooling), not per token."""

    def model_spec(self) -> str | None:
        """What ``sae_jax.lm.models.load_model`` takes: the short name when it is a known one, else the path."""
        from sae_jax.lm.models import known_models

        return self.model if self.model in known_models() else self.model_path

    def heldout_texts(self, rows: np.ndarray, n: int) -> list[str]:
        """The first ``n`` texts whose rows all lie in ``rows`` (empty when texts or doc ids are unknown)."""
        if self.texts is None or self.doc_ids is None:
            return []
        return [self.texts[i] for i in heldout_docs(self.doc_ids, rows)[:n]]


def _root_of(path: str) -> str | None:
    from sae_jax.data import store as st

    p = PurePosixPath(path)
    for root in (p.parent, p.parent.parent):
        if st.read_key(st.join(str(root), "doc_ids"), "zarr.json") is not None:
            return str(root)
    return None


def store_provenance(source: Any) -> StoreProvenance | None:
    """Provenance of an extraction store (None for other sources)."""
    meta = source.metadata if hasattr(source, "metadata") else {}
    ex = meta.get("extract_config")
    if not isinstance(ex, dict):
        return None
    role = meta.get("role", "base")
    # pairs/sequential rows are pooled differences (the extractor pools them even with pooling none)
    pooled = ex.get("pooling", "none") != "none" or ex.get("mode") in ("pairs", "sequential")
    # a pooled store's rows are texts, not a hook's tokens: there is nothing to splice into a model
    model = None if role == "delta" or pooled else meta.get("model")
    texts = labels = doc_ids = None
    if ex.get("mode") == "tokens":  # one row per token, or per text when pooled
        from sae_jax.data.text import load_text

        try:
            data = load_text(ex["text"], field=ex.get("text_field", "text"), label_field=ex.get("label_field")).head(
                ex.get("max_texts"))
            texts, labels = data.texts, data.labels
        except (FileNotFoundError, ValueError):
            pass  # the corpus is not installed here: no texts, the caller says so
        root = _root_of(getattr(source, "path", ""))
        if root is not None:
            from sae_jax.data.store import read_labels, read_positions

            if labels is None:  # the store keeps its texts' labels (labels.json) even without the corpus
                labels = read_labels(root)
            doc_ids = np.asarray(read_positions(root)[0])
            if doc_ids.shape != (source.n_rows,):
                doc_ids = None
    elif ex.get("mode") == "pairs":  # one row per pair; its concept label (if any) is in labels.json
        root = _root_of(getattr(source, "path", ""))
        if root is not None:
            from sae_jax.data.store import read_labels, read_positions

            found = read_labels(root)
            labels = tuple(found) if found is not None else None
            doc_ids = np.asarray(read_positions(root)[0])
            if doc_ids.shape != (source.n_rows,):
                doc_ids = None
    return StoreProvenance(model, meta.get("model_path") if model else None, meta.get("layer"), meta.get("hook"), ex.get("context_length"), texts, labels, doc_ids, pooled)


def heldout_docs(doc_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Indices of the texts all of whose rows lie in ``rows`` (texts seen only in the held-out split)."""
    inside = np.zeros(len(doc_ids), bool)
    inside[rows] = True
    docs = np.unique(doc_ids[rows])
    outside_docs = np.unique(doc_ids[~inside])
    return np.setdiff1d(docs, outside_docs)


def row_labels(prov: StoreProvenance, rows: np.ndarray, positive: str = "") -> tuple[np.ndarray, str] | None:
    """0/1 labels of ``rows``: 1 where the row's text has label ``positive`` (default: the most common)."""
    if prov.text_labels is None or prov.doc_ids is None:
        return None
    per_row = np.asarray(prov.text_labels, dtype=object)[prov.doc_ids[rows]]
    values, counts = np.unique(per_row.astype(str), return_counts=True)
    if not positive:
        positive = str(values[np.argmax(counts)])
    elif positive not in values:
        raise ValueError(f"label class {positive!r} does not occur in the held-out rows; present: {values.tolist()}")
    return (per_row.astype(str) == positive).astype(np.int64), positive
