"""Proof that an activation store is whole: per-shard digests recorded at commit, checked on demand.

At commit every shard (``shard_rows`` rows, one file ``c/<i>/0``) gets a BLAKE2b digest of its
rows' stored bytes, kept in the store's metadata under ``integrity``. Opening a store checks
cheaply that every shard file exists (a listing); ``verify`` re-reads every shard and compares
digests, so a deleted file (read back as zeros otherwise) or altered bytes (finite garbage) are
found and named. ``sae-jax extract`` on a damaged store re-extracts exactly those shards.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import tensorstore as ts

ALGORITHM = "blake2b-128"


def shard_rows_of(array: ts.TensorStore) -> int:
    """Rows per shard (the zarr3 write chunk) of an activation array."""
    return int(array.chunk_layout.write_chunk.shape[0])


class ShardHasher:
    """Digests of consecutive shards, fed rows in order in blocks of any size."""

    def __init__(self, n_rows: int, shard_rows: int):
        self.n_rows, self.shard_rows = n_rows, shard_rows
        self.digests: list[str] = []
        self._hash = hashlib.blake2b(digest_size=16)
        self._row = 0

    def update(self, block: np.ndarray) -> None:
        """Add the next rows (as stored: float32 or bfloat16)."""
        start = 0
        while start < len(block):
            room = self.shard_rows - self._row % self.shard_rows
            piece = np.ascontiguousarray(block[start : start + room])
            self._hash.update(piece.tobytes())
            self._row += len(piece)
            start += len(piece)
            if self._row % self.shard_rows == 0 or self._row == self.n_rows:
                self.digests.append(self._hash.hexdigest())
                self._hash = hashlib.blake2b(digest_size=16)

    def record(self) -> dict:
        if self._row != self.n_rows:
            raise ValueError(f"hashed {self._row} of {self.n_rows} rows")
        return {"algorithm": ALGORITHM, "shard_rows": self.shard_rows, "shards": self.digests}


def shard_key(i: int) -> str:
    return f"c/{i}/0"


def missing_shards(kvstore: ts.KvStore, record: dict) -> list[int]:
    """Shards whose file is absent (one listing of the array's chunk keys)."""
    present = {key.decode() for key in kvstore.list(ts.KvStore.KeyRange("c/", "c0")).result()}
    return [i for i in range(len(record["shards"])) if shard_key(i) not in present]


@dataclass
class Damage:
    missing: list[int]
    altered: list[int]

    @property
    def shards(self) -> list[int]:
        return sorted(set(self.missing) | set(self.altered))


def check_shards(kvstore: ts.KvStore, array: ts.TensorStore, record: dict) -> Damage:
    """Missing shard files, and shards whose rows no longer hash to the recorded digest (full read)."""
    missing = missing_shards(kvstore, record)
    n_rows, rows = int(array.shape[0]), int(record["shard_rows"])
    altered = []
    for i, expected in enumerate(record["shards"]):
        if i in missing:
            continue
        try:
            block = array[i * rows : min((i + 1) * rows, n_rows)].read().result()
        except ValueError:  # undecodable shard (e.g. a damaged index)
            altered.append(i)
            continue
        hasher = ShardHasher(len(block), rows)
        hasher.update(np.asarray(block))
        if hasher.digests[0] != expected:
            altered.append(i)
    return Damage(missing, altered)


def describe(path: str, damage: Damage, record: dict) -> str:
    rows, n = int(record["shard_rows"]), len(record["shards"])
    parts = []
    for what, shards in (("missing", damage.missing), ("altered", damage.altered)):
        if shards:
            ranges = ", ".join(f"{shard_key(i)} (rows {i * rows}-{(i + 1) * rows - 1})" for i in shards[:5])
            parts.append(f"{len(shards)} of {n} shard files {what}: {ranges}{' ...' if len(shards) > 5 else ''}")
    return f"store {path} is damaged: {'; '.join(parts)}"
