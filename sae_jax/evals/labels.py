"""Labels for latents from their top-activating contexts, and themes among the labels.

- ``keyword_labels`` (the offline default): class-based TF-IDF, each latent's top contexts joined
  into one "class document"; a word scores tf(word, latent) · log(1 + A / tf(word, all latents)),
  A = mean words per latent document, so words frequent for one latent but rare overall win.
- ``LLMLabeller``: asks a local HF chat model for a short label (any model folder; no downloads).
- ``themes``: TF-IDF of the labels + k-means, k chosen by the silhouette score.
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
