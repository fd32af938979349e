"""Labels for latents from their top-activating contexts, and themes among the labels.

- ``keyword_labels`` (the offline default): class-based TF-IDF, each latent's top contexts joined
  into one "class document"; a word scores tf(word, latent) · log(1 + A / tf(word, all latents)),
  A = mean words per latent document, so words frequent for one latent but rare overall win.
- ``LLMLabeller``: asks a local HF chat model for a short label (any model folder; no downloads).
- ``themes``: TF-IDF of the labels + k-means, k chosen by the silhouette score.

``top_activating_rows`` streams codes over store rows and keeps each latent's strongest rows;
``token_contexts`` turns rows of an extraction store (text, token position) into text windows.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.metrics import silhouette_score


def ctfidf(documents: Sequence[str], stop_words: str | None = "english") -> tuple[np.ndarray, np.ndarray]:
    """c-TF-IDF matrix [n_documents, n_words] and the vocabulary (words ≥ 2 letters)."""
    vec = CountVectorizer(stop_words=stop_words, token_pattern=r"(?u)\b[^\W\d_]{2,}\b", lowercase=True)
    try:
        tf = vec.fit_transform(documents).toarray().astype(np.float64)
    except ValueError:  # empty vocabulary: no document has a word
        return np.zeros((len(documents), 0)), np.array([], dtype=object)
    A = tf.sum() / max(len(documents), 1)
    idf = np.log1p(A / np.maximum(tf.sum(0), 1e-12))
    return tf * idf, vec.get_feature_names_out()


def keyword_labels(contexts_per_latent: Sequence[Sequence[str]], n_words: int = 3) -> list[str]:
    """One label per latent: its ``n_words`` highest c-TF-IDF words joined by ' / ' ('' if none)."""
    docs = [" ".join(c) for c in contexts_per_latent]
    scores, vocab = ctfidf(docs)
    labels = []
    for row in scores:
        top = [i for i in np.argsort(-row, kind="stable")[:n_words] if row[i] > 0]
        labels.append(" / ".join(vocab[i] for i in top))
    return labels


def top_activating_rows(encode, read, rows: np.ndarray, top_n: int = 10, batch_size: int = 4096,
                        latents: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per latent, the ``top_n`` rows (store row ids) with the largest activation, strongest first,
    and those activations; -1 / 0 where a latent fired on fewer rows. Memory O(F · (top_n + batch))."""
    rows = np.asarray(rows, np.int64)
    best_v = best_r = None
    for i in range(0, len(rows), batch_size):
        r = rows[i:i + batch_size]
        h = np.asarray(encode(read(r)), np.float32)
        if latents is not None:
            h = h[:, latents]
        if best_v is None:
            best_v = np.zeros((h.shape[1], 0), np.float32)
            best_r = np.zeros((h.shape[1], 0), np.int64)
        v = np.concatenate([best_v, h.T], axis=1)
        rr = np.concatenate([best_r, np.broadcast_to(r, (h.shape[1], len(r)))], axis=1)
        keep = np.argsort(-v, axis=1, kind="stable")[:, :top_n]
        best_v, best_r = np.take_along_axis(v, keep, 1), np.take_along_axis(rr, keep, 1)
    if best_v is None:
        raise ValueError("no rows to rank")
    best_r = np.where(best_v > 0, best_r, -1)
    return best_r, np.where(best_v > 0, best_v, 0)


def token_contexts(tokenizer, texts: Sequence[str], doc_ids: np.ndarray, token_pos: np.ndarray, rows: np.ndarray,
                   context_length: int, before: int = 8, after: int = 2) -> list[str]:
    """The text window around each store row's token (tokenised as the extractor did; '' for row -1)."""
    cache: dict[int, list[int]] = {}
    out = []
    for r in np.asarray(rows).ravel():
        if r < 0:
            out.append("")
            continue
        doc, pos = int(doc_ids[r]), int(token_pos[r])
        if doc not in cache:
            cache[doc] = tokenizer(texts[doc], truncation=True, max_length=context_length)["input_ids"]
        ids = cache[doc]
        out.append(tokenizer.decode(ids[max(0, pos - before):pos + after + 1], skip_special_tokens=True))
    return out


class LLMLabeller:
    """Label a latent with a local HF chat model from its top contexts (greedy decoding).

    Small models label weakly (SmolLM2-135M-Instruct often repeats a context word); any local
    chat model folder can be passed instead.
    """

    PROMPT = ("Here are text snippets where one feature of a language model is most active:\n{contexts}\n"
              "In at most five words, what topic or pattern do they share? Answer with the label only.")

    def __init__(self, model_path: str, max_new_tokens: int = 12, max_contexts: int = 8, context_chars: int = 200):
        from sae_jax.lm.models import load_model

        self.model, self.tokenizer = load_model(model_path)
        self.max_new_tokens, self.max_contexts, self.context_chars = max_new_tokens, max_contexts, context_chars

    def prompt(self, contexts: Sequence[str]) -> str:
        body = "\n".join(f"- {c[:self.context_chars]}" for c in list(contexts)[:self.max_contexts])
        text = self.PROMPT.format(contexts=body)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return text + "\nLabel:"

    def label(self, contexts: Sequence[str]) -> str:
        import torch

        enc = self.tokenizer(self.prompt(contexts), return_tensors="pt", add_special_tokens=False)
        device = next(self.model.parameters()).device
        with torch.no_grad():
            out = self.model.generate(**{k: v.to(device) for k, v in enc.items()}, max_new_tokens=self.max_new_tokens,
                                      do_sample=False, pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        text = self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return " ".join(text.split()).strip(" .\"'")


@dataclass
class Themes:
    theme: np.ndarray
    """Theme id per label (-1 for an empty label)."""
    k: int
    silhouette: dict[int, float]
    top_words: dict[int, list[str]]


def themes(labels: Sequence[str], k_range: Sequence[int] = range(2, 11), seed: int = 0, n_top_words: int = 3) -> Themes:
    """Cluster labels into themes: TF-IDF + k-means, k with the best silhouette (cosine)."""
    labels = list(labels)
    keep = np.array([bool(l.strip()) for l in labels])
    theme = np.full(len(labels), -1)
    if keep.sum() < 3:
        raise ValueError(f"themes need at least 3 non-empty labels, got {int(keep.sum())}")
    vec = TfidfVectorizer(token_pattern=r"(?u)\b[^\W\d_]{2,}\b")
    X = vec.fit_transform([l for l, k in zip(labels, keep) if k])
    n = X.shape[0]
    ks = [k for k in k_range if 2 <= k < n]
    if not ks:
        raise ValueError(f"no k in {list(k_range)} fits {n} labels (need 2 <= k < n)")
    sil, fits = {}, {}
    for k in ks:
        pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(X)
        if len(set(pred)) < 2:
            continue
        sil[k], fits[k] = float(silhouette_score(X, pred, metric="cosine")), pred
    if not sil:
        raise ValueError("k-means found fewer than two distinct themes for every k (labels too similar)")
    best = max(sil, key=lambda k: (sil[k], -k))
    theme[keep] = fits[best]
    vocab = vec.get_feature_names_out()
    top = {}
    for c in range(best):
        centroid = np.asarray(X[fits[best] == c].mean(0)).ravel()
        top[c] = [str(vocab[i]) for i in np.argsort(-centroid)[:n_top_words] if centroid[i] > 0]
    return Themes(theme, best, sil, top)
