"""``sae-jax verify STORE``: re-read every shard of a store (or of every array of an extraction
root) and compare it with the digests recorded when it was committed."""
from __future__ import annotations

from dataclasses import dataclass

import tyro

from sae_jax.data import store as st


@dataclass(frozen=True)
class VerifyConfig:
    store: tyro.conf.Positional[str]
    """Activation store (an array folder or URL) or extraction root (all its arrays are checked)."""


def run_verify(cfg: VerifyConfig) -> int:
    """Number of shards verified; raises ``CorruptStoreError`` naming the first damaged array's shards."""
    names = [None] if st.read_key(cfg.store, "zarr.json") is not None else (st.list_arrays(cfg.store) or [None])
    total = 0
    for name in names:
        store = st.open_store(cfg.store, array=name)  # also refuses uncommitted stores and missing shard files
        n = st.verify_store(store)
        total += n
        print(f"{store.path}: {n} shards, {store.n_rows} rows: every digest matches")
    return total
