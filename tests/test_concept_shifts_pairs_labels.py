"""Concept labels of sentence pairs survive ``extract --mode pairs`` (labels.json, one per pair) and
are what the evaluation's provenance reads (issue 12: they were dropped)."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sae_jax.data import store as st  # noqa: E402
from sae_jax.data import text  # noqa: E402
from sae_jax.evals.provenance import row_labels, store_provenance  # noqa: E402
from sae_jax.lm.extract import ExtractConfig, read_labels, run_extract  # noqa: E402
from sae_jax.lm.models import tiny_model_folder  # noqa: E402

PAIRS = [("he was here", "she was here", "gender"), ("it was good", "it is good", "tense"),
         ("the dog runs", "the dogs run", "number"), ("his cat was", "her cat is", ["tense", "gender"])]


def _write(path, label_key="label"):
    with open(path, "w") as f:
        for a, b, lab in PAIRS:
            f.write(json.dumps({"s1": a, "s2": b, label_key: lab}) + "\n")


def test_load_labelled_pairs_reads_labels_and_joins_multi_concept(tmp_path):
    _write(tmp_path / "p.jsonl")
    s1, s2, labels = text.load_labelled_pairs(str(tmp_path / "p.jsonl"))
    assert s1[0] == "he was here" and s2[1] == "it is good"
    assert labels == ("gender", "tense", "number", "gender+tense")  # a list label: sorted, joined by '+'
    (tmp_path / "p.tsv").write_text("a\tb\tx\nc\td\ty\n")
    assert text.load_labelled_pairs(str(tmp_path / "p.tsv"))[2] == ("x", "y")
    (tmp_path / "q.tsv").write_text("a\tb\n")
    assert text.load_labelled_pairs(str(tmp_path / "q.tsv"))[2] is None
    with pytest.raises(ValueError, match="label field 'concept'"):
        text.load_labelled_pairs(str(tmp_path / "p.jsonl"), label_field="concept")


def test_pairs_store_keeps_labels_and_provenance_reads_them(tmp_path):
    model = tiny_model_folder(tmp_path / "m", n_layers=1)
    _write(tmp_path / "pairs.jsonl")
    out = tmp_path / "store"
    run_extract(ExtractConfig(model=model, out=str(out), text=str(tmp_path / "pairs.jsonl"), mode="pairs",
                              layers=(0,), context_length=16, batch_size=2, progress=False))
    assert read_labels(str(out)) == ["gender", "tense", "number", "gender+tense"]
    source = st.open_store(str(out))
    prov = store_provenance(source)
    assert prov is not None and prov.text_labels == ("gender", "tense", "number", "gender+tense")
    assert prov.pooled and prov.model is None  # rows are pooled differences: nothing to splice into
    y, positive = row_labels(prov, np.arange(4), positive="tense")
    assert positive == "tense" and y.tolist() == [0, 1, 0, 0]
