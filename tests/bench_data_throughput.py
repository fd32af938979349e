"""Store read and loader throughput (not a test; run by hand for the README's performance table).

    python tests/bench_data_throughput.py --store stores/smollm2-l9 --batch 4096 --steps 30
    python tests/bench_data_throughput.py --synthetic-rows 262144 --d 576   # no extraction needed

Prints rows/s of (a) ActivationStore.read on random 4096-row batches, (b) BatchLoader.device_batch
(read + global jax.Array assembly), (c) BatchLoader.iter_from with prefetch while the consumer
is busy for a given time per step (the trainer's step time).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from sae_jax.data import store as st
from sae_jax.data.loader import BatchLoader


def _synthetic(n: int, d: int, dtype: str) -> str:
    path = tempfile.mkdtemp(prefix="sae_jax_bench_store_")
    arr = st.create_array(path, n, d, dtype)
    rng = np.random.default_rng(0)
    for s in range(0, n, 65536):
        e = min(n, s + 65536)
        block = rng.standard_normal((e - s, d), dtype=np.float32)
        arr[s:e].write(block if dtype == "float32" else block.astype(arr.dtype.numpy_dtype)).result()
    st.commit(path, {"n_rows": n, "d_model": d, "dtype": dtype})
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", help="an activation store (array folder or extraction root)")
    ap.add_argument("--synthetic-rows", type=int, default=262144)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--consumer-ms", type=float, default=0.0, help="simulated train-step time for iter_from")
    args = ap.parse_args()
    path = args.store or _synthetic(args.synthetic_rows, args.d, args.dtype)
    store = st.open_store(path)
    print(f"store {store}")
    rng = np.random.default_rng(1)
    store.read(rng.integers(0, store.n_rows, args.batch))  # warm the shard-index cache
    times = []
    for _ in range(args.steps):
        rows = rng.permutation(store.n_rows)[: args.batch]
        t = time.perf_counter()
        store.read(rows)
        times.append(time.perf_counter() - t)
    med = float(np.median(times))
    print(f"store.read random {args.batch} rows: median {med * 1e3:.1f} ms = {args.batch / med:,.0f} rows/s")

    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(-1, 1), ("data", "dict"))
    loader = BatchLoader(store, args.batch, seed=0, sharding=NamedSharding(mesh, P("data", None)))
    loader.device_batch(0).block_until_ready()
    t = time.perf_counter()
    for step in range(1, args.steps + 1):
        loader.device_batch(step).block_until_ready()
    dt = time.perf_counter() - t
    print(f"loader.device_batch (sync): {args.steps * args.batch / dt:,.0f} rows/s")

    it = loader.iter_from(0, prefetch=2)
    next(it)
    waits = []
    t = time.perf_counter()
    for _ in range(args.steps):
        w = time.perf_counter()
        _, batch = next(it)
        batch.block_until_ready()
        waits.append(time.perf_counter() - w)
        if args.consumer_ms:
            time.sleep(args.consumer_ms / 1e3)
    dt = time.perf_counter() - t
    it.close()
    if not args.store:
        shutil.rmtree(path, ignore_errors=True)
    print(
        f"loader.iter_from (prefetch 2, consumer {args.consumer_ms:.0f} ms/step): {args.steps * args.batch / dt:,.0f} rows/s, "
        f"median wait for a batch {np.median(waits) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
