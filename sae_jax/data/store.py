"""Activation stores: one tensorstore zarr3 array ``(n_rows, d_model)`` per (model, layer, hook).

Layout of one array at ``PATH`` (a local folder or any tensorstore kvstore URL: ``file://``,
``memory://``, ``gs://``, ``s3://``)::

    PATH/zarr.json        zarr3 metadata (written by tensorstore)
    PATH/c/...            shards: ``shard_rows`` rows each, inner chunks of ``chunk_rows`` rows
    PATH/sae_jax.json     provenance and statistics (see ``ActivationStore.metadata``)
    PATH/COMMIT           written last: a store without it is incomplete and never read

Large shards keep writes and listing cheap; small inner chunks let random row reads fetch
only the bytes they need.
"""
from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorstore as ts

from sae_jax.data import integrity
from sae_jax.errors import SaeJaxError

FORMAT = "sae_jax.activations/1"
META_KEY = "sae_jax.json"
COMMIT_KEY = "COMMIT"
DTYPES = ("float32", "bfloat16")

_READ_PIECE = 512  # rows per concurrent tensorstore read in ActivationStore.read
_CONTEXT_LOCK = threading.Lock()
_CONTEXT: ts.Context | None = None


class StoreError(SaeJaxError):
    """Base class of activation-store problems."""


class MissingStoreError(StoreError, FileNotFoundError):
    """No store at the path."""


class IncompleteStoreError(StoreError):
    """The store exists but its writer never committed it."""


class CorruptStoreError(StoreError):
    """The store's files disagree with each other or cannot be decoded."""


class NonFiniteRowsError(StoreError, ValueError):
    """Rows with NaN or Inf values."""


class DimensionMismatchError(StoreError, ValueError):
    """The store's width differs from what the caller expects."""


def context() -> ts.Context:
    """One shared tensorstore context: ``memory://`` stores live as long as the process, and
    shard indices stay cached between reads."""
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None:
            _CONTEXT = ts.Context(
                {
                    "cache_pool": {"total_bytes_limit": 256 << 20},
                    "data_copy_concurrency": {"limit": max(2, os.cpu_count() or 2)},
                    "file_io_concurrency": {"limit": 64},
                }
            )
        return _CONTEXT


_URL = re.compile(r"^[a-z][a-z0-9+.-]*://")


def kvstore_spec(path: str) -> str | dict:
    """A tensorstore kvstore spec for a local path or kvstore URL, as a directory (trailing /)."""
    path = str(path)
    if _URL.match(path):
        return path if path.endswith("/") else path + "/"
    return {"driver": "file", "path": os.path.abspath(os.path.expanduser(path)) + "/"}


def join(path: str, *parts: str) -> str:
    """``path/part/...`` for local paths and kvstore URLs alike."""
    out = str(path).rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


def _kvstore(path: str) -> ts.KvStore:
    return ts.KvStore.open(kvstore_spec(path), context=context()).result()


def read_key(path: str, key: str) -> bytes | None:
    """Bytes stored under ``key`` inside ``path``, or None when absent."""
    result = _kvstore(path).read(key).result()
    return None if result.state == "missing" else bytes(result.value)


def write_key(path: str, key: str, value: bytes) -> None:
    _kvstore(path).write(key, value).result()


def delete_key(path: str, key: str) -> None:
    _kvstore(path).delete_range(ts.KvStore.KeyRange(key, key + "\x00")).result()


def read_json(path: str, key: str) -> Any | None:
    raw = read_key(path, key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptStoreError(f"{join(path, key)} is not valid JSON ({e}); the store is damaged: re-extract it") from None


def write_json(path: str, key: str, value: Any) -> None:
    write_key(path, key, json.dumps(value, indent=1, sort_keys=True).encode())


def _array_spec(path: str) -> dict:
    return {"driver": "zarr3", "kvstore": kvstore_spec(path)}


def create_array(
    path: str,
    n_rows: int,
    d_model: int,
    dtype: str = "float32",
    shard_rows: int = 65536,
    chunk_rows: int = 1,
    resume: bool = False,
    shared: bool = False,
) -> ts.TensorStore:
    """Create (or with ``resume`` reopen, checking it matches) an uncommitted array.

    ``shared``: several processes write parts of this array (``extract --shard I/N``): open it
    when it exists, create it otherwise, and never delete what another process already wrote."""
    if dtype not in DTYPES:
        raise ValueError(f"store dtype must be one of {DTYPES}, got {dtype!r}")
    if n_rows <= 0 or d_model <= 0:
        raise ValueError(f"store shape must be positive, got ({n_rows}, {d_model})")
    if shard_rows % chunk_rows:
        raise ValueError(f"shard_rows={shard_rows} must be a multiple of chunk_rows={chunk_rows}")
    shard_rows = min(shard_rows, -(-n_rows // chunk_rows) * chunk_rows)
    raw_bytes = [{"name": "bytes", "configuration": {"endian": "little"}}]
    metadata = {
        "shape": [n_rows, d_model],
        "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [shard_rows, d_model]}},
        "codecs": [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": [chunk_rows, d_model],
                    "codecs": raw_bytes,  # activations barely compress; raw bytes read fastest
                    "index_codecs": raw_bytes + [{"name": "crc32c"}],
                    "index_location": "end",
                },
            }
        ],
        "fill_value": 0,
    }
    # Every shard file is written, even all-zero ones, so a missing file always means damage.
    spec = {**_array_spec(path), "metadata": metadata, "store_data_equal_to_fill_value": True}
    if shared:
        return _open_or_create(spec, path)
    if resume and read_key(path, "zarr.json") is not None:
        try:
            return ts.open(spec, open=True, context=context()).result()
        except ValueError as e:
            raise StoreError(
                f"cannot resume the store at {path}: its layout differs from this run's ({e}); "
                "delete it or rerun with the original settings"
            ) from None
    return ts.open(spec, create=True, delete_existing=True, context=context()).result()


def _open_or_create(spec: dict, path: str) -> ts.TensorStore:
    """Open the array, creating it if absent. Two processes creating it at the same moment write
    the same zarr.json; the one that loses the race retries as a plain open. A different layout
    (another extraction's array) is an error, never overwritten."""
    for attempt in range(3):
        try:
            return ts.open(spec, create=True, open=True, context=context()).result()
        except ValueError as e:
            if attempt == 2 or "already exists" not in str(e):
                raise StoreError(
                    f"cannot open the store at {path} for a parallel part: its layout differs from this run's "
                    f"({str(e)[:300]}); delete the folder (or choose another --out) and start every part again"
                ) from None
    raise AssertionError("unreachable")


def part_key(index: int, num_parts: int) -> str:
    """Key (inside an extraction root) of part ``index`` of ``num_parts``'s progress marker."""
    return f"parts/{index}-of-{num_parts}.json"


def unfinished_parts(root: str) -> tuple[int, list[int]] | None:
    """``(N, parts not done)`` of an extraction root written as N parallel parts
    (``extract --shard I/N``); None for a single-process extraction or no manifest."""
    manifest = read_json(root, "extract.json")
    if not manifest or int(manifest.get("parts", 1)) <= 1:
        return None
    n = int(manifest["parts"])
    return n, [i for i in range(n) if not (read_json(root, part_key(i, n)) or {}).get("done")]


def _incomplete_note(path: str) -> str:
    """For an array inside a parallel extraction: which parts have not finished."""
    parent = path.rstrip("/").rsplit("/", 1)[0]
    for root in (parent, parent.rsplit("/", 1)[0]):  # OUT/name or OUT/role/name
        try:
            found = unfinished_parts(root)
        except (StoreError, ValueError):
            found = None
        if found:
            n, missing = found
            if missing:
                return (f"; it is a parallel extraction of {n} parts and parts {missing} of {n} have not "
                        f"finished: run (or rerun) `sae-jax extract ... --shard I/{n}` for each of them")
            return (f"; all {n} parts finished but the final commit did not: rerun any part's "
                    "`sae-jax extract ... --shard I/N` command to commit")
    return ""


def commit(path: str, metadata: dict[str, Any]) -> None:
    """Write the final metadata, then the commit marker (last: a crash before it leaves the store
    visibly incomplete)."""
    write_json(path, META_KEY, {"format": FORMAT, **metadata})
    write_key(path, COMMIT_KEY, json.dumps({"n_rows": metadata["n_rows"], "d_model": metadata["d_model"]}).encode())


def uncommit(path: str) -> None:
    """Remove the commit marker before the array is modified again."""
    delete_key(path, COMMIT_KEY)


class ActivationStore:
    """A committed store, readable by row index (implements ``ActivationSource``)."""

    def __init__(self, path: str, array: ts.TensorStore, metadata: dict[str, Any]):
        self.path = path
        self._array = array
        self._metadata = metadata
        self.n_rows, self.d_in = (int(s) for s in array.shape)
        self.dtype = str(metadata.get("dtype", array.dtype.name))

    @property
    def metadata(self) -> dict[str, Any]:
        return self._metadata

    def __repr__(self) -> str:
        return f"ActivationStore({self.path!r}, n_rows={self.n_rows}, d_in={self.d_in}, dtype={self.dtype})"

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows at ``rows`` (any order, repeats allowed) as float32 ``[len(rows), d_in]``."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1:
            raise ValueError(f"row indices must be 1-D, got shape {rows.shape}")
        if rows.size == 0:
            return np.zeros((0, self.d_in), np.float32)
        lo, hi = int(rows.min()), int(rows.max())
        if lo < 0 or hi >= self.n_rows:
            raise IndexError(f"row indices must lie in [0, {self.n_rows}), got [{lo}, {hi}]")
        # Sorted unique rows, read as concurrent pieces (one huge index array is slower in
        # tensorstore than several small ones in flight), then put back in request order.
        unique, inverse = np.unique(rows, return_inverse=True)
        pieces = [self._array[unique[i : i + _READ_PIECE]].read() for i in range(0, unique.size, _READ_PIECE)]
        data = np.empty((unique.size, self.d_in), dtype=np.float32)
        for i, piece in zip(range(0, unique.size, _READ_PIECE), pieces):
            data[i : i + _READ_PIECE] = piece.result()
        return data if unique.size == rows.size and np.array_equal(unique, rows) else data[inverse]

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Contiguous rows ``[start, stop)`` as float32."""
        if not 0 <= start <= stop <= self.n_rows:
            raise IndexError(f"row range [{start}, {stop}) outside [0, {self.n_rows})")
        return np.asarray(self._array[start:stop].read().result(), dtype=np.float32)

    def iter_chunks(self, rows_per_chunk: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, rows)`` over the whole store in order, reading one chunk ahead."""
        starts = list(range(0, self.n_rows, rows_per_chunk))
        pending = self._array[0 : min(rows_per_chunk, self.n_rows)].read() if starts else None
        for i, start in enumerate(starts):
            current = pending
            if i + 1 < len(starts):
                pending = self._array[starts[i + 1] : min(starts[i + 1] + rows_per_chunk, self.n_rows)].read()
            yield start, np.asarray(current.result(), dtype=np.float32)

    def statistics_sample(self) -> np.ndarray:
        """The rows sampled at extraction for the geometric median / whitening (float32)."""
        rows = self._metadata.get("statistics", {}).get("sample_rows")
        if not rows:
            raise StoreError(f"store {self.path} has no statistics sample in its metadata")
        return self.read(np.asarray(rows, dtype=np.int64))


def _open_array(path: str, committed: bool) -> ts.TensorStore:
    spec = _array_spec(path)
    if committed:  # immutable from here on: cached shard indices never need revalidation
        spec["recheck_cached_data"] = False
        spec["recheck_cached_metadata"] = False
    try:
        return ts.open(spec, open=True, read=True, context=context()).result()
    except ValueError as e:
        raise CorruptStoreError(f"cannot open the zarr3 array at {path}: {e}") from None


def list_arrays(root: str) -> list[str]:
    """Array names listed by an extraction root's manifest (``extract.json``)."""
    manifest = read_json(root, "extract.json")
    return list(manifest.get("arrays", [])) if manifest else []


def open_store(path: str, array: str | None = None, check_finite_rows: bool = False,
               verify: bool = False) -> ActivationStore:
    """Open a committed store for reading (every shard file must exist; ``verify``: also re-read
    every shard and compare it with its recorded digest).

    ``path`` is an array folder/URL, or an extraction root (then ``array`` names one of its
    arrays, e.g. ``"layer9_resid"``; optional when the root holds exactly one).
    """
    path = str(path).rstrip("/") if not str(path).endswith("://") else str(path)
    if array is None and read_key(path, "zarr.json") is None:
        names = list_arrays(path)
        if len(names) == 1:
            array = names[0]
        elif len(names) > 1:
            raise StoreError(f"{path} is an extraction root with several arrays {names}; open one of them, e.g. {join(path, names[0])}")
    if array is not None:
        path = join(path, array)
    if read_key(path, "zarr.json") is None:
        raise MissingStoreError(
            f"no activation store at {path} (no zarr.json); run `sae-jax extract` first or check the path"
        )
    marker = read_key(path, COMMIT_KEY)
    if marker is None:
        raise IncompleteStoreError(
            f"the activation store at {path} is incomplete (no {COMMIT_KEY} marker): its extraction was "
            "interrupted; rerun the same `sae-jax extract` command to finish it" + _incomplete_note(path)
        )
    metadata = read_json(path, META_KEY)
    if metadata is None:
        raise CorruptStoreError(f"store {path} is committed but has no {META_KEY}; re-extract it")
    if metadata.get("format") != FORMAT:
        raise CorruptStoreError(f"store {path} has format {metadata.get('format')!r}, expected {FORMAT!r}")
    arr = _open_array(path, committed=True)
    try:
        marked = json.loads(marker)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CorruptStoreError(f"{join(path, COMMIT_KEY)} is unreadable; re-extract the store") from None
    shape = [int(s) for s in arr.shape]
    if len(shape) != 2 or shape != [marked.get("n_rows"), marked.get("d_model")] or shape != [
        metadata.get("n_rows"), metadata.get("d_model")
    ]:
        raise CorruptStoreError(
            f"store {path}: array shape {shape} disagrees with its commit marker {marked} or metadata "
            f"(n_rows={metadata.get('n_rows')}, d_model={metadata.get('d_model')}); re-extract it"
        )
    record = metadata.get("integrity")
    if record is not None:  # stores committed before digests were recorded have none
        missing = integrity.missing_shards(_kvstore(path), record)
        if missing:
            raise CorruptStoreError(integrity.describe(path, integrity.Damage(missing, []), record)
                                    + "; rerun the `sae-jax extract` command that wrote it to re-extract those rows")
    store = ActivationStore(path, arr, metadata)
    if verify:
        verify_store(store)
    if check_finite_rows:
        check_finite(store)
    return store


def shard_damage(path: str) -> tuple[dict, integrity.Damage] | None:
    """(digest record, missing/altered shards) of the array at ``path``, committed or not; None when
    it has no recorded digests."""
    record = (read_json(path, META_KEY) or {}).get("integrity")
    if record is None:
        return None
    return record, integrity.check_shards(_kvstore(path), _open_array(path, committed=False), record)


def is_committed(path: str) -> bool:
    return read_key(path, COMMIT_KEY) is not None


def verify_store(store: ActivationStore) -> int:
    """Raise ``CorruptStoreError`` naming missing or altered shards; returns the shards checked."""
    found = shard_damage(store.path)
    if found is None:
        raise StoreError(f"store {store.path} has no recorded digests (committed by an older sae_jax); "
                         "re-extract it to be able to verify it")
    record, damage = found
    if damage.shards:
        raise CorruptStoreError(integrity.describe(store.path, damage, record)
                                + "; rerun the `sae-jax extract` command that wrote it to re-extract those rows")
    return len(record["shards"])


def find_nonfinite(source, rows_per_chunk: int = 65536) -> tuple[int, np.ndarray]:
    """``(count, row indices)`` of rows with a NaN or Inf value, scanning the whole source."""
    bad = []
    if isinstance(source, ActivationStore):
        chunks = source.iter_chunks(rows_per_chunk)
    else:
        chunks = ((s, source.read(np.arange(s, min(s + rows_per_chunk, source.n_rows)))) for s in range(0, source.n_rows, rows_per_chunk))
    for start, block in chunks:
        rows = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if rows.size:
            bad.append(rows + start)
    bad_rows = np.concatenate(bad) if bad else np.zeros(0, np.int64)
    return int(bad_rows.size), bad_rows


def check_finite(source, rows_per_chunk: int = 65536) -> None:
    """Raise ``NonFiniteRowsError`` naming the count and first locations of NaN/Inf rows."""
    count, rows = find_nonfinite(source, rows_per_chunk)
    if count:
        where = getattr(source, "path", type(source).__name__)
        raise NonFiniteRowsError(
            f"{count} of {source.n_rows} rows in {where} contain NaN or Inf (first rows: "
            f"{rows[:10].tolist()}); the model overflowed there: re-extract in float32 or drop those texts"
        )


def check_d_in(source, d_in: int) -> None:
    """Raise a clear error when the source's width is not the SAE's ``d_in``."""
    if int(source.d_in) != int(d_in):
        meta = getattr(source, "metadata", {}) or {}
        what = ", ".join(f"{k}={meta[k]}" for k in ("model", "layer", "hook") if k in meta)
        where = getattr(source, "path", type(source).__name__)
        raise DimensionMismatchError(
            f"activations in {where} have d_model={source.d_in}{f' ({what})' if what else ''} but the SAE "
            f"config has d_in={d_in}; set the SAE's d_in to {source.d_in} or use a store from the matching model"
        )


def compute_statistics(
    array: ts.TensorStore, sample_size: int = 4096, seed: int = 0, rows_per_chunk: int = 65536
) -> dict[str, Any]:
    """Mean, mean row norm, NaN/Inf rows, sampled row indices and per-shard digests (under
    ``integrity``: move it to the store's top-level metadata), from one ordered pass."""
    n_rows, d_model = (int(s) for s in array.shape)
    hasher = integrity.ShardHasher(n_rows, integrity.shard_rows_of(array))
    total = np.zeros(d_model, np.float64)
    norm_total = 0.0
    sq_total = 0.0
    nonfinite: list[np.ndarray] = []
    for start in range(0, n_rows, rows_per_chunk):
        raw = array[start : min(start + rows_per_chunk, n_rows)].read().result()
        hasher.update(raw)
        block = np.asarray(raw, dtype=np.float64)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            nonfinite.append(np.flatnonzero(~finite) + start)
            block = block[finite]
        total += block.sum(axis=0)
        norms = np.linalg.norm(block, axis=1)
        norm_total += float(norms.sum())
        sq_total += float((norms**2).sum())
    bad = np.concatenate(nonfinite) if nonfinite else np.zeros(0, np.int64)
    n_ok = n_rows - bad.size
    mean = total / max(n_ok, 1)
    sample = np.sort(np.random.default_rng(seed).choice(n_rows, size=min(sample_size, n_rows), replace=False))
    return {
        "mean": mean.tolist(),
        "mean_norm": norm_total / max(n_ok, 1),
        "mean_sq_norm": sq_total / max(n_ok, 1),
        "total_variance": sq_total / max(n_ok, 1) - float(mean @ mean),
        "n_nonfinite_rows": int(bad.size),
        "nonfinite_rows_head": bad[:100].tolist(),
        "sample_rows": sample.tolist(),
        "sample_seed": seed,
        "integrity": hasher.record(),
    }


def library_version() -> str:
    try:
        from importlib.metadata import version

        return version("sae-jax")
    except Exception:  # not installed as a distribution (e.g. running from a checkout)
        return "unknown"


def read_positions(root: str) -> tuple[np.ndarray, np.ndarray]:
    """``(doc_ids, token_pos)`` of an extraction root: the source text and token of every row."""
    import tensorstore as ts

    out = []
    for name in ("doc_ids", "token_pos"):
        spec = {"driver": "zarr3", "kvstore": kvstore_spec(join(root, name))}
        out.append(ts.open(spec, open=True, read=True, context=context()).result().read().result())
    return out[0], out[1]


def read_labels(root: str) -> list[str] | None:
    """Per-text labels of an extraction root (None when the text source had none)."""
    return read_json(root, "labels.json")
