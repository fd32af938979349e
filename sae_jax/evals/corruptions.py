"""Corruptions of domain texts for causal validation: remove the domain signal three different ways.

- ``string_replacement``: fixed word/phrase → word replacements (e.g. a domain's keywords mapped
  to another domain's), whole words only, case kept (ALL CAPS, Capitalised);
- ``paraphrase_substitution``: each domain keyword replaced by a word drawn from a neutral pool
  (frequent words of general text), paraphrase-like but meaning-destroying for the domain;
- ``counterfactual_swap``: the whole text swapped for a text of another domain of similar length.

``domain_keywords`` picks a domain's keywords by the weighted log-odds ratio with an informative
Dirichlet prior (Monroe et al. 2008): words much more frequent in the domain than elsewhere.
Each corruption returns texts aligned 1:1 with the clean ones and which of them changed.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")


@dataclass
class Corruption:
    texts: list[str]
    changed: np.ndarray


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def domain_keywords(texts: Sequence[str], labels: Sequence[str], domain: str | Sequence[str], n: int = 50,
                    min_count: int = 5, prior: float = 0.01) -> list[str]:
    """The ``n`` words with the largest log-odds z-score for the domain vs the other texts."""
    dom = {domain} if isinstance(domain, str) else set(domain)
    inside, outside = Counter(), Counter()
    for t, lab in zip(texts, labels):
        (inside if lab in dom else outside).update(_words(t))
    if not inside or not outside:
        raise ValueError(f"domain keywords need texts inside and outside the domain {sorted(dom)}")
    vocab = [w for w in set(inside) | set(outside) if inside[w] + outside[w] >= min_count and len(w) > 2]
    a = np.array([inside[w] for w in vocab], float)
    b = np.array([outside[w] for w in vocab], float)
    alpha = prior * (a + b) + 1e-3
    na, nb, a0 = a.sum(), b.sum(), alpha.sum()
    delta = np.log((a + alpha) / (na + a0 - a - alpha)) - np.log((b + alpha) / (nb + a0 - b - alpha))
    z = delta / np.sqrt(1 / (a + alpha) + 1 / (b + alpha))
    order = np.argsort(-z, kind="stable")
    return [vocab[i] for i in order[:n] if z[i] > 0]


def _match_case(source: str, new: str) -> str:
    """``new`` written in the case of ``source``: ALL CAPS, Capitalised or as given."""
    if len(source) > 1 and source.isupper():
        return new.upper()
    return new[:1].upper() + new[1:] if source[:1].isupper() else new


def _replace_words(text: str, pick) -> tuple[str, bool]:
    changed = False

    def sub(m):
        nonlocal changed
        word = m.group(0)
        new = pick(word.lower())
        if new is None:
            return word
        changed = True
        return _match_case(word, new)

    return _WORD.sub(sub, text), changed


def _phrase_pattern(keys: Sequence[str]) -> re.Pattern:
    """Whole-word (or whole-phrase) matches of any key, case-insensitive, longest key first.

    Word boundaries are letters, digits and underscores: ``theorem`` matches in "theorem-like"
    but not in "theorems"; a phrase matches across any run of whitespace."""
    alts = [r"\s+".join(re.escape(part) for part in k.split()) for k in sorted(keys, key=len, reverse=True)]
    return re.compile(r"(?<![A-Za-z0-9_])(?:" + "|".join(alts) + r")(?![A-Za-z0-9_])", re.IGNORECASE)


def string_replacement(texts: Sequence[str], replacements: Mapping[str, str]) -> Corruption:
    """Replace whole words or phrases (case-insensitive) by fixed replacements, keeping their case.

    Keys may be multi-word phrases ("new york"); overlapping keys prefer the longest match.
    """
    table = {}
    for k, v in replacements.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k.strip():
            raise ValueError(f"replacements map non-empty strings to strings, got {k!r} -> {v!r}")
        table[" ".join(k.lower().split())] = v
    if not table:
        raise ValueError("string replacement needs at least one replacement, e.g. {'theorem': 'painting'}")
    pattern = _phrase_pattern(list(table))
    out, changed = [], []
    for t in texts:
        new, n = pattern.subn(lambda m: _match_case(m.group(0), table[" ".join(m.group(0).lower().split())]), t)
        out.append(new)
        changed.append(n > 0 and new != t)
    return Corruption(out, np.array(changed, bool))


def paraphrase_substitution(texts: Sequence[str], domain_words: Sequence[str], pool_words: Sequence[str],
                            seed: int = 0) -> Corruption:
    """Replace each occurrence of a domain word by a random word of ``pool_words``."""
    words = {w.lower() for w in domain_words}
    pool = [w for w in pool_words if w.lower() not in words]
    if not words or not pool:
        raise ValueError("paraphrase substitution needs domain words and a pool of other words")
    rng = np.random.default_rng(seed)
    out = [_replace_words(t, lambda w: pool[rng.integers(len(pool))] if w in words else None) for t in texts]
    return Corruption([t for t, _ in out], np.array([c for _, c in out], bool))


def counterfactual_swap(texts: Sequence[str], other_texts: Sequence[str], seed: int = 0) -> Corruption:
    """Each text swapped for a distinct text of another domain with the closest length (in words)."""
    if len(other_texts) < len(texts):
        raise ValueError(f"counterfactual swap needs at least as many other-domain texts ({len(other_texts)}) "
                         f"as texts ({len(texts)})")
    rng = np.random.default_rng(seed)
    other_len = np.array([len(t.split()) for t in other_texts], float)
    free = np.ones(len(other_texts), bool)
    out = []
    for i in rng.permutation(len(texts)):  # random order: no text always gets the best match
        gap = np.where(free, np.abs(other_len - len(texts[i].split())), np.inf)
        j = int(np.argmin(gap))
        free[j] = False
        out.append((i, other_texts[j]))
    swapped = [t for _, t in sorted(out)]
    return Corruption(swapped, np.array([a != b for a, b in zip(swapped, texts)], bool))


def frequent_words(texts: Sequence[str], n: int = 500, exclude: Sequence[str] = ()) -> list[str]:
    """The ``n`` most frequent words (> 2 letters) of ``texts``, minus ``exclude``: a neutral pool."""
    skip = {w.lower() for w in exclude}
    counts = Counter(w for t in texts for w in _words(t) if len(w) > 2 and w not in skip)
    return [w for w, _ in counts.most_common(n)]
