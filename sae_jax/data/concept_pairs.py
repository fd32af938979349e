"""Concept-edited sentence pairs (s1 -> s2) with known labels, for shift autoencoders.

Rule-based and deterministic. Each concept is a word-level edit that applies only where it is
clean (otherwise the sentence is not used for that concept):

- ``gender``: male pronouns -> female (he->she, him->her, his->her, himself->herself), only in
  sentences with no female pronoun already (so s2 has a single referent gender).
- ``tense``: past copula -> present (was->is, were->are), every occurrence.
- ``negation``: "not" inserted after the first copula (is/are/was/were), only in sentences with
  no negation already (not, n't, never, no, nor).
- ``number``: "a/an NOUN" -> "two NOUNs" for a closed list of nouns, only after the third word
  (not a sentence-initial subject, whose verb would have to agree), not after a copula ("is a
  song" would need "are songs"), and only where the noun is followed by a preposition or punctuation.
- ``sentiment``: the first of a closed list of evaluative words -> its antonym (good->bad,
  popular->unpopular, ...).

``build_pairs`` takes sentences (``split_sentences`` of Wikipedia leads, say) and returns single-
concept pairs (a balanced share per concept) and multi-concept pairs (2-3 concepts edited in one
sentence) with a multi-hot label vector.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

CONCEPTS = ("gender", "tense", "negation", "number", "sentiment")

_GENDER = {"he": "she", "him": "her", "his": "her", "himself": "herself"}
_FEMALE = {"she", "her", "hers", "herself"}
_TENSE = {"was": "is", "were": "are"}
_COPULA = {"is", "are", "was", "were"}
_NEGATION = {"not", "never", "no", "nor"}
_NUMBER = {"city": "cities", "town": "towns", "village": "villages", "book": "books", "film": "films",
           "song": "songs", "album": "albums", "game": "games", "river": "rivers", "school": "schools",
           "company": "companies", "team": "teams", "member": "members", "player": "players",
           "church": "churches", "county": "counties", "university": "universities", "species": "species",
           "country": "countries", "state": "states", "group": "groups", "series": "series",
           "novel": "novels", "island": "islands", "station": "stations", "building": "buildings",
           "child": "children", "man": "men", "woman": "women", "person": "people", "bridge": "bridges"}
_AFTER_NOUN = {"of", "in", "on", "at", "for", "with", "from", "by", "to", "near", "and", "or", ",", ".", ";"}
_SENTIMENT = {"good": "bad", "best": "worst", "better": "worse", "successful": "unsuccessful",
              "popular": "unpopular", "positive": "negative", "happy": "unhappy", "favourable": "unfavourable",
              "favorable": "unfavorable", "important": "unimportant", "strong": "weak", "great": "poor"}

_TOKEN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|[0-9]+|[^\sA-Za-z0-9]")


@dataclass(frozen=True)
class ConceptPair:
    """One edited pair: s2 is s1 with the ``concepts`` edits applied."""

    s1: str
    s2: str
    concepts: tuple[str, ...]

    def label_vector(self, concepts: Sequence[str] = CONCEPTS) -> np.ndarray:
        """Multi-hot label over ``concepts``."""
        return np.array([c in self.concepts for c in concepts], dtype=np.int8)


def split_sentences(texts: Iterable[str], min_words: int = 6, max_words: int = 30) -> list[str]:
    """Sentences of ``texts`` (split after . ! ? followed by a space and a capital letter), keeping
    those of ``min_words``..``max_words`` words that end with a full stop, deduplicated in order."""
    seen, out = set(), []
    for text in texts:
        for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z])", " ".join(text.split())):
            n = len(sent.split())
            if min_words <= n <= max_words and sent.endswith(".") and sent not in seen:
                seen.add(sent)
                out.append(sent)
    return out


def _tokens(sentence: str) -> list[tuple[str, str]]:
    """(word, whitespace before it) for each token, so edits rebuild the sentence exactly."""
    out, pos = [], 0
    for m in _TOKEN.finditer(sentence):
        out.append((m.group(), sentence[pos:m.start()]))
        pos = m.end()
    return out


def _join(tokens: list[tuple[str, str]]) -> str:
    return "".join(space + word for word, space in tokens)


def _case_like(word: str, template: str) -> str:
    return word[:1].upper() + word[1:] if template[:1].isupper() else word


def _gender(t):
    words = [w.lower() for w, _ in t]
    if not any(w in _GENDER for w in words) or any(w in _FEMALE for w in words):
        return None
    return [(_case_like(_GENDER[w.lower()], w), s) if w.lower() in _GENDER else (w, s) for w, s in t]


def _tense(t):
    if not any(w in _TENSE for w, _ in t):  # lower-case only: a capitalised 'Was' starts a question
        return None
    return [(_TENSE.get(w, w), s) for w, s in t]


def _negation(t):
    words = [w.lower() for w, _ in t]
    if any(w in _NEGATION or w.endswith("n't") for w in words):
        return None
    i = next((i for i, w in enumerate(words) if w in _COPULA and i > 0), None)
    if i is None:
        return None
    return t[: i + 1] + [("not", " ")] + t[i + 1:]


def _number(t):
    for i in range(3, len(t) - 2):
        det, noun, nxt = t[i][0], t[i + 1][0], t[i + 2][0]
        after_copula = t[i - 1][0].lower() in _COPULA | {"became", "become", "remains"}  # "is a song": predicate
        if det in ("a", "an") and noun in _NUMBER and nxt.lower() in _AFTER_NOUN and not after_copula:
            return t[:i] + [("two", t[i][1]), (_NUMBER[noun], t[i + 1][1])] + t[i + 2:]
    return None


def _sentiment(t):
    for i, (w, s) in enumerate(t):
        if w in _SENTIMENT:  # lower-case only: 'Great Britain', 'Good Friday' are names
            new = _SENTIMENT[w]
            head = t[:i]
            if head and head[-1][0].lower() in ("a", "an"):  # a popular -> an unpopular
                head = head[:-1] + [(_case_like("an" if new[0] in "aeiou" else "a", head[-1][0]), head[-1][1])]
            return head + [(new, s)] + t[i + 1:]
    return None


EDITS: dict[str, Callable] = {"gender": _gender, "tense": _tense, "negation": _negation, "number": _number,
                              "sentiment": _sentiment}


def applicable(sentence: str) -> tuple[str, ...]:
    """The concepts whose edit applies cleanly to ``sentence``."""
    t = _tokens(sentence)
    return tuple(c for c in CONCEPTS if EDITS[c](t) is not None)


def edit(sentence: str, concepts: Sequence[str]) -> str:
    """``sentence`` with the edits of ``concepts`` applied in ``CONCEPTS`` order (each must apply)."""
    bad = [c for c in concepts if c not in EDITS]
    if bad:
        raise ValueError(f"unknown concepts {bad}; choose from {CONCEPTS}")
    t = _tokens(sentence)
    for c in CONCEPTS:
        if c in concepts:
            new = EDITS[c](t)
            if new is None:
                raise ValueError(f"the {c!r} edit does not apply to {sentence!r}; check applicable() first")
            t = new
    return _join(t)


def build_pairs(sentences: Sequence[str], n_single: int, n_multi: int, seed: int = 0,
                concepts: Sequence[str] = CONCEPTS) -> tuple[list[ConceptPair], list[ConceptPair]]:
    """Single-concept pairs (up to ``n_single // len(concepts)`` per concept) and multi-concept pairs
    (up to ``n_multi``, 2 or 3 concepts each), each sentence used at most once. Deterministic in
    ``seed``. Concepts are filled rarest first, so a rare edit is not starved by common ones."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sentences))
    able = {int(i): [c for c in applicable(sentences[i]) if c in concepts] for i in order}
    used: set[int] = set()
    multi: list[ConceptPair] = []
    for i in order:
        if len(multi) >= n_multi:
            break
        if len(able[i]) >= 2:
            size = int(rng.integers(2, min(3, len(able[i])) + 1))
            chosen = tuple(sorted(rng.choice(able[i], size=size, replace=False).tolist(), key=CONCEPTS.index))
            multi.append(ConceptPair(sentences[i], edit(sentences[i], chosen), chosen))
            used.add(int(i))
    per = n_single // max(len(concepts), 1)
    counts = {c: sum(c in v for i, v in able.items() if i not in used) for c in concepts}
    single: list[ConceptPair] = []
    for c in sorted(concepts, key=lambda c: counts[c]):
        taken = 0
        for i in order:
            if taken >= per:
                break
            if int(i) in used or c not in able[int(i)]:
                continue
            single.append(ConceptPair(sentences[i], edit(sentences[i], (c,)), (c,)))
            used.add(int(i))
            taken += 1
    single.sort(key=lambda p: (CONCEPTS.index(p.concepts[0]), p.s1))
    return single, multi


def write_jsonl(pairs: Iterable[ConceptPair], path) -> int:
    """Pairs as ``sae-jax extract --mode pairs`` input: {"s1", "s2", "label": [concepts]} per line."""
    import json

    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps({"s1": p.s1, "s2": p.s2, "label": list(p.concepts)}) + "\n")
            n += 1
    return n
