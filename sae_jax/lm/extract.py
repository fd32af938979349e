"""Extract activations from a HuggingFace model into activation stores (``sae-jax extract``).

One forward pass per batch records every requested (layer, hook) and stops after the last
requested block. Rows go to one zarr3 array per (role, layer, hook) under ``cfg.out``::

    OUT/extract.json                manifest: config, arrays, progress, completion
    OUT/layer9_resid/               one array (base model only), or with a chat model:
    OUT/base/layer9_resid/, OUT/chat/layer9_resid/, OUT/delta/layer9_resid/   (delta = chat - base)
    OUT/doc_ids/, OUT/token_pos/    int32 per row: source text index and token position
    OUT/labels.json                 per-text (per-pair) labels, when the text source has them

Batches are fixed (texts ``[b*B, (b+1)*B)``) and rows are written in full shards with the
progress recorded after each, so a rerun of the same command resumes at the last written shard
and produces the same bytes as an uninterrupted run.

Parallel extraction (``--shard I/N``): process I writes the whole write shards
``[I*S//N, (I+1)*S//N)`` of every array (S shards in all), so no two processes write the same
file, and records its progress in ``OUT/parts/I-of-N.json``. Text windows are the same as in a
single-process run (a window straddling two parts is computed by both, each keeping its own
rows), so every stored byte equals the single-process one. A finished part marks itself done;
the process that finds all N parts done commits (statistics sample, digests, ``sae_jax.json``,
``COMMIT``). The commit is a deterministic function of the finished arrays, so two parts finishing
at the same moment and both committing write identical files (each written atomically); a crash
during the commit is finished by rerunning any part. Until then every array lacks its ``COMMIT``
marker and opening it fails, naming the unfinished parts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

import ml_dtypes
import numpy as np
import torch

from sae_jax.data import integrity
from sae_jax.data import store as st
from sae_jax.data import text as text_sources
from sae_jax.errors import ConfigError
from sae_jax.lm import hooks as lm_hooks
from sae_jax.lm import models as lm_models

MANIFEST = "extract.json"


from sae_jax.data.store import read_labels, read_positions  # noqa: E402,F401  (torch-free home)


@dataclass(frozen=True)
class ExtractConfig:
    """What to extract, from which model and text, and how to store it."""

    model: str = "smollm2-135m-instruct"
    """Model: a short name (smollm2-135m-instruct), a local folder with config.json, or a .gguf file."""
    out: str = "stores/smollm2-l9"
    """Output root: a local folder or a tensorstore kvstore URL (gs://, s3://, memory://)."""
    text: str = "wikipedia"
    """Text source: wikipedia, bbc, multiemo, a file (.txt/.jsonl/.csv/.parquet, or a BIG-bench task.json); with mode=pairs a .jsonl (s1, s2) or 2-column .tsv file."""
    text_field: str = "text"
    """Column holding the text in .jsonl/.csv/.parquet files."""
    label_field: str | None = None
    """Column holding labels in .jsonl/.csv/.parquet files (stored in labels.json); with mode=pairs the pair's label field (default: 'label' when every pair has one; a list of concepts is stored as 'a+b')."""
    max_texts: int | None = None
    """Use only the first N texts (or pairs) of the source."""
    layers: tuple[int, ...] = (9,)
    """Blocks to record (0-based; the forward pass stops after the last one)."""
    hooks: tuple[str, ...] = ("resid",)
    """Hook points per layer: resid (block output), attn_out, mlp_out, mlp_hidden (MLP hidden layer: the down projection's input)."""
    context_length: int = 128
    """Tokens per text after truncation (special tokens included)."""
    batch_size: int = 16
    """Texts per forward pass."""
    sort_window: int = 16
    """Batches per window whose texts are sorted by length before batching (less padding); rows are stored in text order regardless."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Element type in the store (rows are always read back as float32)."""
    mode: Literal["tokens", "pairs", "sequential"] = "tokens"
    """tokens: one row per kept token (or per text with pooling); pairs: z(s2) - z(s1) per sentence pair; sequential: z(text[i+1]) - z(text[i])."""
    pooling: Literal["none", "mean", "last"] = "none"
    """Pool each text's kept tokens into one row: mean, or the last token (pairs/sequential default to mean)."""
    chat_model: str | None = None
    """A fine-tuned model with the same tokenizer: stores base/, chat/ and delta/ (= chat - base per token, computed in float32 before any bfloat16 rounding)."""
    keep_special_tokens: bool = False
    """Keep BOS/EOS/other special tokens (padding is always dropped)."""
    shard_rows: int | None = None
    """Rows per write shard (default: about 128 MiB per shard)."""
    chunk_rows: int = 1
    """Rows per read chunk inside a shard (1 = cheapest random row reads)."""
    sample_size: int = 4096
    """Rows sampled into the metadata for the geometric median / whitening."""
    seed: int = 0
    """Seed of the statistics sample."""
    device: str = "cpu"
    """Torch device for the forward pass (cpu, cuda, cuda:1, mps)."""
    torch_threads: int | None = None
    """torch.set_num_threads for CPU extraction (default: torch's choice)."""
    overwrite: bool = False
    """Delete an existing store at out started with a different configuration."""
    progress: bool = True
    """Show a progress bar with tokens/s."""
    shard: str | None = None
    """I/N: this process writes part I (0-based) of N disjoint ranges of whole write shards; the
    process that finishes last commits the store (run every I in 0..N-1 with otherwise identical
    settings and --out, on one host or many sharing the folder / gs:// root)."""

    def part(self) -> tuple[int, int]:
        """``(I, N)`` of ``shard`` (``(0, 1)``: a single process)."""
        if self.shard is None:
            return 0, 1
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(self.shard))
        if not m:
            raise ConfigError(f"--shard must be I/N with integers 0 <= I < N (e.g. --shard 0/4), got {self.shard!r}")
        i, n = int(m.group(1)), int(m.group(2))
        if n < 1 or not 0 <= i < n:
            raise ConfigError(f"--shard {self.shard}: need N >= 1 and 0 <= I < N (parts are numbered 0..N-1)")
        return i, n

    @property
    def pool(self) -> str:
        if self.mode in ("pairs", "sequential") and self.pooling == "none":
            return "mean"
        return self.pooling

    def validate(self) -> None:
        if not self.layers:
            raise ValueError("give at least one layer (--layers 9)")
        bad = [h for h in self.hooks if h not in lm_hooks.HOOKS]
        if bad or not self.hooks:
            raise ValueError(f"hooks {bad or '()'} invalid; choose from {lm_hooks.HOOKS}")
        if self.context_length < 1 or self.batch_size < 1 or self.sort_window < 1:
            raise ValueError("context_length, batch_size and sort_window must be positive")
        if self.dtype not in st.DTYPES:
            raise ValueError(f"dtype must be one of {st.DTYPES}, got {self.dtype!r}")
        if self.mode not in ("tokens", "pairs", "sequential"):
            raise ValueError(f"mode must be tokens, pairs or sequential, got {self.mode!r}")
        if self.pooling not in ("none", "mean", "last"):
            raise ValueError(f"pooling must be none, mean or last, got {self.pooling!r}")
        if self.chat_model is not None and self.mode != "tokens":
            raise ValueError("chat_model (paired base/chat runs) works with mode=tokens only")
        if self.part()[1] > 1 and self.overwrite:
            raise ConfigError("--overwrite cannot be combined with --shard (one part would delete the others' "
                              "rows): delete the old --out folder first, then start every part")

    def content_key(self) -> str:
        """Hash of every field that changes the stored bytes (a resumed run must match it)."""
        fields = dataclasses.asdict(self)
        for name in ("out", "overwrite", "progress", "torch_threads", "shard"):
            fields.pop(name)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _Plan:
    """Tokenized inputs and the row layout, fixed before any forward pass."""

    units: list[list[list[int]]]  # per unit (text, pair or sequential step): token id lists forwarded
    keep: list[list[np.ndarray]]  # per unit: boolean keep mask per forwarded text
    unit_rows: np.ndarray  # rows each unit produces
    doc_ids: np.ndarray
    token_pos: np.ndarray
    n_input_tokens: int

    @property
    def n_rows(self) -> int:
        return int(self.unit_rows.sum())


def _array_names(cfg: ExtractConfig) -> list[str]:
    base = [f"layer{layer}_{hook}" for layer in cfg.layers for hook in cfg.hooks]
    if cfg.chat_model is None:
        return base
    return [f"{role}/{name}" for role in ("base", "chat", "delta") for name in base]


def _tokenize(tokenizer, texts, cfg: ExtractConfig) -> tuple[list[list[int]], list[np.ndarray]]:
    enc = tokenizer(list(texts), truncation=True, max_length=cfg.context_length, add_special_tokens=True)
    ids = [list(map(int, x)) for x in enc["input_ids"]]
    special = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
    keep = []
    for x in ids:
        arr = np.asarray(x, dtype=np.int64)
        keep.append(np.ones(arr.size, bool) if cfg.keep_special_tokens else ~np.isin(arr, special))
    return ids, keep


def _plan(cfg: ExtractConfig, tokenizer) -> tuple[_Plan, tuple[str, ...] | None, str]:
    pooled = cfg.pool != "none"
    if cfg.mode == "pairs":
        s1, s2, labels = text_sources.load_labelled_pairs(cfg.text, label_field=cfg.label_field)
        if cfg.max_texts is not None:
            s1, s2 = s1[: cfg.max_texts], s2[: cfg.max_texts]
            labels = None if labels is None else labels[: cfg.max_texts]
        ids1, keep1 = _tokenize(tokenizer, s1, cfg)
        ids2, keep2 = _tokenize(tokenizer, s2, cfg)
        units = [[a, b] for a, b in zip(ids1, ids2)]
        keeps = [[a, b] for a, b in zip(keep1, keep2)]
        source = f"pairs:{cfg.text}"
    else:
        data = text_sources.load_text(cfg.text, field=cfg.text_field, label_field=cfg.label_field).head(cfg.max_texts)
        ids, keep = _tokenize(tokenizer, data.texts, cfg)
        labels, source = data.labels, data.source
        if cfg.mode == "sequential":
            units = [[ids[i], ids[i + 1]] for i in range(len(ids) - 1)]
            keeps = [[keep[i], keep[i + 1]] for i in range(len(ids) - 1)]
        else:
            units = [[x] for x in ids]
            keeps = [[k] for k in keep]
    if not units:
        raise ValueError(f"text source {cfg.text!r} gave nothing to extract")
    empty = [i for i, ks in enumerate(keeps) if any(not k.any() for k in ks)]
    if pooled and empty:
        raise ValueError(
            f"{len(empty)} texts have no tokens left after dropping special tokens (first: {empty[:5]}); "
            "remove empty texts or set keep_special_tokens"
        )
    if pooled:
        unit_rows = np.ones(len(units), np.int64)
        doc_ids = np.arange(len(units), dtype=np.int32)
        token_pos = np.full(len(units), -1, np.int32)
    else:
        unit_rows = np.array([int(ks[0].sum()) for ks in keeps], np.int64)
        doc_ids = np.repeat(np.arange(len(units), dtype=np.int32), unit_rows)
        token_pos = np.concatenate([np.flatnonzero(ks[0]).astype(np.int32) for ks in keeps]) if units else np.zeros(0, np.int32)
    if unit_rows.sum() == 0:
        raise ValueError("no tokens left to store (all texts empty after dropping special tokens)")
    n_input = sum(len(x) for u in units for x in u)
    return _Plan(units, keeps, unit_rows, doc_ids, token_pos, n_input), labels, source


def _pool(acts: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """[B, T, d] activations, [B, T] keep mask -> [B, d]."""
    if how == "mean":
        m = mask.to(acts.dtype).unsqueeze(-1)
        return (acts * m).sum(1) / m.sum(1)
    # last kept token
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, -1).max(dim=1).values
    return acts[torch.arange(acts.shape[0], device=acts.device), last]


class _Extractor:
    """Runs forward passes for a batch of units and returns rows per array name."""

    def __init__(self, cfg: ExtractConfig, model, chat, tokenizer):
        self.cfg, self.model, self.chat = cfg, model, chat
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.specs = [(layer, hook) for layer in cfg.layers for hook in cfg.hooks]

    def _forward(self, model, seqs: list[list[int]], keeps: list[np.ndarray]) -> tuple[dict, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        keep = torch.zeros((len(seqs), width), dtype=torch.bool)
        for i, (s, k) in enumerate(zip(seqs, keeps)):
            ids[i, : len(s)] = torch.tensor(s)
            attn[i, : len(s)] = 1
            keep[i, : len(s)] = torch.from_numpy(k)
        device = self.cfg.device
        acts = lm_hooks.forward_activations(
            model, {"input_ids": ids.to(device), "attention_mask": attn.to(device)}, self.specs
        )
        return {spec: a.float() for spec, a in acts.items()}, keep.to(device)

    def rows(self, units: list[list[list[int]]], keeps: list[list[np.ndarray]]) -> dict[str, np.ndarray]:
        cfg, pool = self.cfg, self.cfg.pool
        out: dict[str, np.ndarray] = {}
        if cfg.mode == "tokens" and pool == "none":
            seqs, ks = [u[0] for u in units], [k[0] for k in keeps]
            acts, keep = self._forward(self.model, seqs, ks)
            chat_acts = self._forward(self.chat, seqs, ks)[0] if self.chat is not None else None
            for layer, hook in self.specs:
                name = f"layer{layer}_{hook}"
                base = acts[(layer, hook)][keep]
                if chat_acts is None:
                    out[name] = base.cpu().numpy()
                else:
                    chat = chat_acts[(layer, hook)][keep]
                    out[f"base/{name}"] = base.cpu().numpy()
                    out[f"chat/{name}"] = chat.cpu().numpy()
                    out[f"delta/{name}"] = (chat - base).cpu().numpy()
            return out
        if cfg.mode == "tokens":
            seqs, ks = [u[0] for u in units], [k[0] for k in keeps]
            acts, keep = self._forward(self.model, seqs, ks)
            chat_acts = self._forward(self.chat, seqs, ks)[0] if self.chat is not None else None
            for layer, hook in self.specs:
                name = f"layer{layer}_{hook}"
                base = _pool(acts[(layer, hook)], keep, pool)
                if chat_acts is None:
                    out[name] = base.cpu().numpy()
                else:
                    chat = _pool(chat_acts[(layer, hook)], keep, pool)
                    out[f"base/{name}"] = base.cpu().numpy()
                    out[f"chat/{name}"] = chat.cpu().numpy()
                    out[f"delta/{name}"] = (chat - base).cpu().numpy()
            return out
        # pairs / sequential: delta of pooled vectors, second minus first
        first, first_keep = self._forward(self.model, [u[0] for u in units], [k[0] for k in keeps])
        second, second_keep = self._forward(self.model, [u[1] for u in units], [k[1] for k in keeps])
        for layer, hook in self.specs:
            a = _pool(first[(layer, hook)], first_keep, pool)
            b = _pool(second[(layer, hook)], second_keep, pool)
            out[f"layer{layer}_{hook}"] = (b - a).cpu().numpy()
        return out


def _run_window(extractor: _Extractor, plan: _Plan, u0: int, u1: int, batch_size: int) -> dict[str, np.ndarray]:
    """Rows of units ``[u0, u1)`` in unit order, computed in length-sorted batches."""
    longest = {i: max(len(x) for x in plan.units[i]) for i in range(u0, u1)}
    order = sorted(range(u0, u1), key=lambda i: (-longest[i], i))
    per_unit: dict[str, dict[int, np.ndarray]] = {}
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        rows = extractor.rows([plan.units[i] for i in idx], [plan.keep[i] for i in idx])
        offsets = np.concatenate([[0], np.cumsum(plan.unit_rows[idx])])
        for name, block in rows.items():
            slot = per_unit.setdefault(name, {})
            for j, i in enumerate(idx):
                slot[i] = block[offsets[j] : offsets[j + 1]]
    return {name: np.concatenate([slot[i] for i in range(u0, u1)]) for name, slot in per_unit.items()}


def _default_shard_rows(d_model: int, dtype: str, chunk_rows: int) -> int:
    itemsize = 4 if dtype == "float32" else 2
    rows = 2 ** int(math.floor(math.log2(max(1, (128 << 20) // (d_model * itemsize)))))
    return max(chunk_rows, rows - rows % chunk_rows)


def _model_revision(info: dict[str, str]) -> str:
    """A fingerprint of the loaded weights' files (name, size), for provenance."""
    from pathlib import Path

    path = Path(info["path"])
    files = [path] if path.is_file() else sorted(p for p in path.glob("*") if p.suffix in (".json", ".safetensors", ".bin", ".gguf"))
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def _write_positions(root: str, plan: _Plan, shared: bool = False) -> None:
    """``doc_ids`` and ``token_pos`` arrays (``shared``: parallel parts all write the same bytes,
    so open-or-create without deleting what another part wrote)."""
    for name, values in (("doc_ids", plan.doc_ids), ("token_pos", plan.token_pos)):
        spec = {
            "driver": "zarr3",
            "kvstore": st.kvstore_spec(st.join(root, name)),
            "metadata": {
                "shape": [values.size],
                "data_type": "int32",
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [min(values.size, 1 << 20)]}},
                "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "zstd", "configuration": {"level": 3}}],
            },
        }
        import tensorstore as ts

        arr = (st._open_or_create(spec, st.join(root, name)) if shared
               else ts.open(spec, create=True, delete_existing=True, context=st.context()).result())
        arr.write(values).result()


def _part_rows(n_rows: int, shard_rows: int, index: int, num_parts: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of part ``index`` of ``num_parts``: a contiguous range of whole shards."""
    n_shards = -(-n_rows // shard_rows)
    s0, s1 = index * n_shards // num_parts, (index + 1) * n_shards // num_parts
    return min(s0 * shard_rows, n_rows), min(s1 * shard_rows, n_rows)


def run_extract(cfg: ExtractConfig, stop_after_shards: int | None = None) -> dict[str, Any]:
    """Extract (or resume extracting) activations; returns a summary with throughput.

    ``stop_after_shards`` returns early after that many shard flushes, leaving a resumable,
    uncommitted store (time-boxed runs; tests of resumption). With ``cfg.shard = "I/N"`` only
    part I's rows are written; the part that completes the set commits the store.
    """
    cfg.validate()
    part, n_parts = cfg.part()
    parallel = n_parts > 1
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    root = cfg.out
    key = cfg.content_key()
    manifest = st.read_json(root, MANIFEST)
    if manifest is not None and manifest.get("content_key") != key and not cfg.overwrite:
        raise st.StoreError(
            f"{root} holds an extraction with a different configuration (key {manifest.get('content_key')} != {key}); "
            "rerun with the original settings to resume it, choose another --out, or pass --overwrite"
            + (" (every part of a parallel extraction needs identical settings besides --shard)" if parallel else "")
        )
    same = manifest is not None and manifest.get("content_key") == key
    if same and not manifest.get("complete") and int(manifest.get("parts", 1)) != n_parts:
        started = int(manifest.get("parts", 1))
        how = f"--shard I/{started} for I in 0..{started - 1}" if started > 1 else "no --shard (one process)"
        raise st.StoreError(
            f"{root} is an unfinished extraction started with {how}, but this run uses "
            f"{'--shard ' + cfg.shard if parallel else 'no --shard'}; resume it as it was started, or delete the folder")
    repair = None
    if same and manifest.get("complete"):
        if parallel:  # a full re-read per part would multiply the cost N times: repair is a one-process job
            return _report(cfg, {"out": root, "arrays": manifest["arrays"], "n_rows": manifest["n_rows"],
                                 "already_complete": True, "unverified": True})
        repair = _needs_repair(root, manifest["arrays"])
        if not repair:
            return _report(cfg, {"out": root, "arrays": manifest["arrays"], "n_rows": manifest["n_rows"],
                                 "already_complete": True})

    model, tokenizer = lm_models.load_model(cfg.model)
    chat = None
    if cfg.chat_model is not None:
        chat, chat_tok = lm_models.load_model(cfg.chat_model)
        if chat_tok.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"chat model {cfg.chat_model!r} has a different tokenizer than {cfg.model!r}; paired runs need the same one")
        chat = chat.to(cfg.device)
    model = model.to(cfg.device)
    n_blocks = lm_hooks.num_blocks(model)
    bad_layers = [layer for layer in cfg.layers if not 0 <= layer < n_blocks]
    if bad_layers:
        raise ValueError(f"layers {bad_layers} out of range: {cfg.model} has {n_blocks} blocks (0..{n_blocks - 1})")

    plan, labels, source = _plan(cfg, tokenizer)
    names = _array_names(cfg)
    # row width per array: the hidden size, or the MLP width for mlp_hidden
    widths = {name: lm_hooks.hook_width(model, *_layer_hook(name)) for name in names}
    n_rows = plan.n_rows
    shard_rows = cfg.shard_rows or _default_shard_rows(max(widths.values()), cfg.dtype, cfg.chunk_rows)
    if shard_rows % cfg.chunk_rows:
        raise ValueError(f"shard_rows={shard_rows} must be a multiple of chunk_rows={cfg.chunk_rows}")

    if repair:
        return _report(cfg, _repair(cfg, _Extractor(cfg, model, chat, tokenizer), plan, repair))
    resume = same
    if resume and (manifest.get("n_rows") != n_rows or manifest.get("arrays") != names):
        raise st.StoreError(f"{root}: the text source changed since the extraction started (row count differs); use a new --out")
    lo, hi = _part_rows(n_rows, shard_rows, part, n_parts) if parallel else (0, n_rows)
    part_key = st.part_key(part, n_parts)
    if parallel:
        state = st.read_json(root, part_key) if resume else None
        if state is not None and (state.get("content_key"), state.get("rows")) != (key, [lo, hi]):
            raise st.StoreError(f"{st.join(root, part_key)} belongs to another extraction; delete the folder and start again")
        rows_done = int(state["rows_done"]) if state else lo
    else:
        rows_done = int(manifest["progress"]["rows_done"]) if resume else 0
    arrays = {}
    for name in names:
        path = st.join(root, name)
        if resume and not parallel:
            st.uncommit(path)
        arrays[name] = st.create_array(path, n_rows, widths[name], cfg.dtype, shard_rows, cfg.chunk_rows,
                                       resume=resume, shared=parallel)
    if not resume:
        manifest = {
            "format": "sae_jax.extract/1",
            "content_key": key,
            "config": dataclasses.asdict(dataclasses.replace(cfg, shard=None)),
            "arrays": names,
            "n_rows": n_rows,
            "n_texts": len(plan.units),
            "shard_rows": shard_rows,
            "complete": False,
            "progress": {"rows_done": 0},
        }
        if parallel:  # every part writes these same bytes, in any order
            manifest["parts"] = n_parts
        _write_positions(root, plan, shared=parallel)
        if labels is not None:
            st.write_json(root, "labels.json", list(labels))
        st.write_json(root, MANIFEST, manifest)

    def save_progress(done: int, finished: bool = False) -> None:
        if parallel:
            st.write_json(root, part_key, {"content_key": key, "part": part, "parts": n_parts, "rows": [lo, hi],
                                           "rows_done": done, "done": finished})
        else:
            manifest["progress"] = {"rows_done": done}
            st.write_json(root, MANIFEST, manifest)

    # Work goes in fixed windows of texts; restart from the window holding the first unwritten row.
    unit_end = np.cumsum(plan.unit_rows)
    unit_start = unit_end - plan.unit_rows
    n_units = len(plan.units)
    window = cfg.batch_size * cfg.sort_window
    batches = [(b, e) for b, e in ((b, min(b + window, n_units)) for b in range(0, n_units, window))
               if unit_end[e - 1] > rows_done and unit_start[b] < hi and rows_done < hi]
    skip = rows_done - int(unit_start[batches[0][0]]) if batches else 0

    extractor = _Extractor(cfg, model, chat, tokenizer)
    np_dtype = np.float32 if cfg.dtype == "float32" else ml_dtypes.bfloat16
    buffers: dict[str, list[np.ndarray]] = {name: [] for name in names}
    buffered = 0
    written = rows_done
    flushes = 0
    tokens_seen = 0
    started = time.perf_counter()

    def flush(final: bool) -> None:
        nonlocal buffered, written, flushes
        n_write = buffered if final else (buffered // shard_rows) * shard_rows
        if n_write == 0:
            return
        futures = []
        for name in names:
            block = np.concatenate(buffers[name]) if len(buffers[name]) > 1 else buffers[name][0]
            futures.append(arrays[name][written : written + n_write].write(block[:n_write].astype(np_dtype)))
            buffers[name] = [block[n_write:]] if n_write < block.shape[0] else []
        for f in futures:
            f.result()
        written += n_write
        buffered -= n_write
        flushes += 1
        save_progress(written)

    bar = None
    if cfg.progress and batches:
        from tqdm.auto import tqdm

        total = sum(len(x) for u in plan.units[batches[0][0]:batches[-1][1]] for x in u)
        desc = f"extract {cfg.model}" + (f" part {part}/{n_parts}" if parallel else "")
        bar = tqdm(total=total, unit="tok", unit_scale=True, desc=desc, dynamic_ncols=True)
    try:
        for b0, b1 in batches:
            rows = _run_window(extractor, plan, b0, b1, cfg.batch_size)
            expected = int(unit_end[b1 - 1] - unit_start[b0])
            take = min(int(unit_end[b1 - 1]), hi) - int(unit_start[b0])  # a window past hi is the next part's
            for name in names:
                block = rows[name]
                assert block.shape == (expected, widths[name]), (name, block.shape, expected)
                buffers[name].append(block[skip:take])
            buffered += take - skip
            skip = 0
            n_tok = sum(len(x) for u in plan.units[b0:b1] for x in u)
            tokens_seen += n_tok
            if bar is not None:
                bar.update(n_tok)
            if buffered >= shard_rows:
                flush(final=False)
                if stop_after_shards is not None and flushes >= stop_after_shards:
                    where = {"part": part, "parts": n_parts, "rows": [lo, hi]} if parallel else {}
                    return _report(cfg, {"out": root, "arrays": names, "n_rows": n_rows, "rows_done": written,
                                         "stopped": True, **where})
        flush(final=True)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - started
    assert written == hi, (written, hi)
    timing = {"tokens_per_s": tokens_seen / elapsed if elapsed > 0 else float("nan"), "tokens": tokens_seen,
              "elapsed_s": elapsed}
    if parallel:
        save_progress(written, finished=True)
        _, waiting = st.unfinished_parts(root)
        if waiting:
            return _report(cfg, {"out": root, "arrays": names, "n_rows": n_rows, "part": part, "parts": n_parts,
                                 "rows": [lo, hi], "waiting_for": waiting, **timing})
    _commit(cfg, root, manifest, arrays, plan, widths, source)
    return _report(cfg, {"out": root, "arrays": names, "n_rows": n_rows, **timing,
                         **({"part": part, "parts": n_parts, "rows": [lo, hi]} if parallel else {})})


def _commit(cfg: ExtractConfig, root: str, manifest: dict, arrays: dict, plan: _Plan, widths: dict[str, int],
            source: str) -> None:
    """Statistics sample and digests from one ordered pass over each array, then its metadata and
    ``COMMIT`` marker, then the manifest's ``complete``. Deterministic in the stored rows, so a
    repeated (or concurrent) commit writes the same bytes."""
    cfg = dataclasses.replace(cfg, shard=None)  # the metadata of N parts equals a single process's
    names, n_rows = list(arrays), plan.n_rows
    model_info = lm_models.resolve_model(cfg.model)
    chat_info = lm_models.resolve_model(cfg.chat_model) if cfg.chat_model else None
    bad_arrays = {}
    for name in names:
        stats = st.compute_statistics(arrays[name], cfg.sample_size, cfg.seed)
        if stats["n_nonfinite_rows"]:
            bad_arrays[name] = (stats["n_nonfinite_rows"], stats["nonfinite_rows_head"][:10])
            continue
        role = name.split("/")[0] if "/" in name else "base"
        layer, hook = _layer_hook(name)
        info = chat_info if role == "chat" else model_info
        record = stats.pop("integrity")
        meta = {
            "integrity": record,
            "model": info["name"],
            "model_path": info["path"],
            "model_revision": _model_revision(info),
            "role": role,
            "layer": layer,
            "hook": hook,
            "dtype": cfg.dtype,
            "n_rows": n_rows,
            "d_model": widths[name],  # the row width (the MLP width for mlp_hidden)
            "context_length": cfg.context_length,
            "n_texts": len(plan.units),
            "n_input_tokens": plan.n_input_tokens,
            "text_source": source,
            "mode": cfg.mode,
            "pooling": cfg.pool,
            "keep_special_tokens": cfg.keep_special_tokens,
            "statistics": stats,
            "extract_config": dataclasses.asdict(cfg),
            "sae_jax_version": st.library_version(),
            "torch_version": torch.__version__,
        }
        if role == "delta":
            meta["model"] = f"{chat_info['name']} - {model_info['name']}"
            meta["chat_model"], meta["base_model"] = chat_info["name"], model_info["name"]
        st.commit(st.join(root, name), meta)
    if bad_arrays:
        detail = "; ".join(f"{n}: {c} rows, first {r}" for n, (c, r) in bad_arrays.items())
        raise st.NonFiniteRowsError(f"NaN/Inf activations, store left uncommitted: {detail}; extract in float32 or drop those texts")
    manifest["complete"] = True
    st.write_json(root, MANIFEST, manifest)


def _needs_repair(root: str, names: list[str]) -> dict[str, tuple[dict | None, list[int]]]:
    """Arrays of a complete extraction that lost shards (or their commit marker, in an interrupted
    repair): name -> (digest record, damaged shards). A full read of every array."""
    out = {}
    for name in names:
        path = st.join(root, name)
        found = st.shard_damage(path)
        shards = found[1].shards if found else []
        if shards or not st.is_committed(path):
            out[name] = (found[0] if found else None, shards)
    return out


def _repair(cfg: ExtractConfig, extractor: "_Extractor", plan: _Plan,
            repair: dict[str, tuple[dict | None, list[int]]]) -> dict[str, Any]:
    """Re-extract exactly the damaged shards (whole shards, from the text windows that cover them),
    check them against the digests recorded at the first extraction, and commit again."""
    root, n_rows = cfg.out, plan.n_rows
    np_dtype = np.float32 if cfg.dtype == "float32" else ml_dtypes.bfloat16
    targets: dict[int, list[str]] = {}
    arrays = {}
    for name, (record, shards) in repair.items():
        path = st.join(root, name)
        if record is None:
            raise st.StoreError(f"{path} is uncommitted and has no recorded digests; re-extract into a new --out")
        st.uncommit(path)
        for i in shards:
            st.delete_key(path, integrity.shard_key(i))  # a damaged shard is rewritten whole, never merged
            targets.setdefault(i, []).append(name)
        width = st.read_json(path, st.META_KEY)["d_model"]  # the row width of this array
        arrays[name] = st.create_array(path, n_rows, width, cfg.dtype, record["shard_rows"], cfg.chunk_rows,
                                       resume=True)
    unit_end = np.cumsum(plan.unit_rows)
    unit_start = unit_end - plan.unit_rows
    window = cfg.batch_size * cfg.sort_window
    windows = [(b, min(b + window, len(plan.units))) for b in range(0, len(plan.units), window)]
    cache: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    for i, names in sorted(targets.items()):
        rows = repair[names[0]][0]["shard_rows"]
        r0, r1 = i * rows, min((i + 1) * rows, n_rows)
        pieces: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for b0, b1 in windows:
            w0, w1 = int(unit_start[b0]), int(unit_end[b1 - 1])
            if w1 <= r0 or w0 >= r1:
                continue
            if (b0, b1) not in cache:  # consecutive shards often share a window: compute it once
                cache.clear()
                cache[(b0, b1)] = _run_window(extractor, plan, b0, b1, cfg.batch_size)
            for name in names:
                pieces[name].append(cache[(b0, b1)][name][max(r0, w0) - w0 : min(r1, w1) - w0])
        for name in names:
            arrays[name][r0:r1].write(np.concatenate(pieces[name]).astype(np_dtype)).result()
    for name, (record, shards) in repair.items():
        path = st.join(root, name)
        _, damage = st.shard_damage(path)
        if damage.shards:
            raise st.CorruptStoreError(
                f"re-extracted rows of {path} differ from the digests recorded when it was written ("
                f"{integrity.describe(path, damage, record)}): the model, text or torch build changed since; "
                "extract into a new --out")
        meta = st.read_json(path, st.META_KEY)
        st.commit(path, meta)
    return {"out": root, "arrays": list(repair), "n_rows": n_rows,
            "repaired": {name: shards for name, (_, shards) in repair.items()}}


def _report(cfg: ExtractConfig, summary: dict[str, Any]) -> dict[str, Any]:
    if cfg.progress:
        print(summary_line(summary), flush=True)
    return summary


def _layer_hook(name: str) -> tuple[int, str]:
    """``(layer, hook)`` of an array name such as ``base/layer9_mlp_hidden``."""
    layer_hook = name.split("/")[-1]
    return int(layer_hook.split("_")[0][len("layer"):]), layer_hook.split("_", 1)[1]


def summary_line(summary: dict[str, Any]) -> str:
    """One line for the console: rows, arrays and tokens/s of a ``run_extract`` result."""
    if summary.get("already_complete") and summary.get("unverified"):
        return (f"{summary['out']}: already complete ({summary['n_rows']} rows); nothing to do (to check every "
                "shard and re-extract damaged ones, rerun without --shard)")
    if summary.get("already_complete"):
        return f"{summary['out']}: already complete ({summary['n_rows']} rows, every shard verified); nothing to do"
    if "repaired" in summary:
        done = "; ".join(f"{name}: shards {shards}" for name, shards in summary["repaired"].items())
        return f"{summary['out']}: re-extracted the damaged shards ({done}) and verified them against their digests"
    if "waiting_for" in summary:
        return (f"{summary['out']}: part {summary['part']} of {summary['parts']} done (rows {summary['rows'][0]}-"
                f"{summary['rows'][1]}, {summary['tokens_per_s']:.0f} tokens/s); waiting for parts {summary['waiting_for']}: "
                "the last part to finish commits the store")
    if summary.get("stopped") and "part" in summary:
        lo, hi = summary["rows"]
        return (f"{summary['out']}: part {summary['part']} of {summary['parts']} stopped after {summary['rows_done'] - lo} "
                f"of its {hi - lo} rows ({lo}-{hi}); rerun to resume")
    if summary.get("stopped"):
        return f"{summary['out']}: stopped after {summary['rows_done']} of {summary['n_rows']} rows; rerun to resume"
    part = f" (part {summary['part']} of {summary['parts']}, the last to finish: committed the whole store)" \
        if "part" in summary else ""
    return (
        f"{summary['out']}: {summary['n_rows']} rows x {len(summary['arrays'])} arrays, {summary['tokens']} tokens "
        f"in {summary['elapsed_s']:.1f} s = {summary['tokens_per_s']:.0f} tokens/s{part}"
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m sae_jax.lm.extract --model ... --out ...`` (same as ``sae-jax extract``)."""
    import tyro

    run_extract(tyro.cli(ExtractConfig, args=argv))


if __name__ == "__main__":
    main()
