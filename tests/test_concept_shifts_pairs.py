"""Concept-edited sentence pairs: hand-made sentences with known edits."""
import json

import numpy as np
import pytest

from sae_jax.data import concept_pairs as cp
from sae_jax.data.text import load_labelled_pairs


@pytest.mark.parametrize("concept,s1,s2", [
    ("gender", "He said his brother saw him and himself.", "She said her brother saw her and herself."),
    ("tense", "The towns were small and the river was wide.", "The towns are small and the river is wide."),
    ("negation", "The castle was built in 1200 and was restored.", "The castle was not built in 1200 and was restored."),
    ("number", "It is the oldest building in a town in Wales.", "It is the oldest building in two towns in Wales."),
    ("sentiment", "The album was a popular success in France.", "The album was an unpopular success in France."),
])
def test_single_edits(concept, s1, s2):
    assert concept in cp.applicable(s1)
    assert cp.edit(s1, (concept,)) == s2


@pytest.mark.parametrize("concept,s", [
    ("gender", "He met her in Paris."),  # a female pronoun already: not a clean swap
    ("negation", "The bridge was never finished."),  # already negated
    ("negation", "It isn't here at all today."),
    ("number", "A town in Wales is old and small."),  # sentence-initial subject: the verb would disagree
    ("number", "Bohemian Rhapsody is a song by Queen."),  # after a copula: 'is two songs' is wrong
    ("sentiment", "Great Britain voted in the long referendum."),  # a name, not an evaluation
    ("tense", "Is the river wide and deep in spring?"),
])
def test_edits_that_do_not_apply_cleanly_are_skipped(concept, s):
    assert concept not in cp.applicable(s)
    with pytest.raises(ValueError, match=concept):
        cp.edit(s, (concept,))


def test_multi_concept_edit_composes_tense_and_negation_and_gender():
    s1 = "He was a good player for the club."
    assert cp.edit(s1, ("gender", "tense", "negation")) == "She is not a good player for the club."
    assert cp.edit(s1, ("tense", "sentiment")) == "He is a bad player for the club."


def test_split_sentences_and_build_pairs(tmp_path):
    text = ("He was a painter in Rome. His works were popular in a city of Italy, and he was rich. "
            "She lives here. The river was long and was used for trade by the town.")
    sents = cp.split_sentences([text], min_words=4)
    assert sents[0] == "He was a painter in Rome." and "She lives here." not in sents  # 3 words: too short
    single, multi = cp.build_pairs(sents * 1, n_single=10, n_multi=1, seed=0)
    assert len(multi) == 1 and 2 <= len(multi[0].concepts) <= 3
    for p in single + multi:
        assert cp.edit(p.s1, p.concepts) == p.s2 and p.s1 != p.s2
    assert {p.s1 for p in single}.isdisjoint({p.s1 for p in multi})  # each sentence used once
    v = multi[0].label_vector()
    assert v.sum() == len(multi[0].concepts) and v.dtype == np.int8
    assert cp.build_pairs(sents, 10, 1, seed=0) == (single, multi)  # deterministic
    n = cp.write_jsonl(single + multi, tmp_path / "p.jsonl")
    s1, s2, labels = load_labelled_pairs(str(tmp_path / "p.jsonl"))
    assert n == len(s1) and labels[-1] == "+".join(sorted(multi[0].concepts))
    assert json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])["label"] == list(single[0].concepts)
