"""Deterministic, resumable batches: the global batch for step t is a pure function of (seed, t).

Rows are visited in a per-epoch permutation of the source (each row once per epoch, epochs
reshuffled). Each process reads only the rows of the global batch that its devices hold and
assembles the global ``jax.Array`` with ``jax.make_array_from_process_local_data``.
"""
from __future__ import annotations

import collections
import concurrent.futures
import functools
from collections.abc import Iterator

import jax
import numpy as np

from sae_jax.data.source import ActivationSource


@functools.lru_cache(maxsize=2)
def _epoch_permutation(seed: int, epoch: int, n_rows: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_rows)


def global_batch_rows(seed: int, step: int, batch_size: int, n_rows: int) -> np.ndarray:
    """Source row indices of the global batch at ``step`` (int64 ``[batch_size]``)."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
    epochs, offsets = np.divmod(positions, n_rows)
    rows = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        sel = epochs == epoch
        rows[sel] = _epoch_permutation(seed, int(epoch), n_rows)[offsets[sel]]
    return rows


def process_row_range(sharding: jax.sharding.Sharding, batch_size: int, d_in: int) -> tuple[int, int]:
    """The contiguous ``[start, stop)`` range of global-batch rows this process's devices hold."""
    index_map = sharding.addressable_devices_indices_map((batch_size, d_in))
    starts, stops = [], []
    for index in index_map.values():
        row_slice = index[0]
        start, stop, _ = row_slice.indices(batch_size)
        starts.append(start)
        stops.append(stop)
    start, stop = min(starts), max(stops)
    covered = sorted(set(zip(starts, stops)))
    if sum(b - a for a, b in covered) != stop - start:
        raise ValueError(
            "this process's devices hold a non-contiguous part of the batch; order the mesh "
            "so each process's devices are adjacent on the 'data' axis (mesh.make_mesh does)"
        )
    return start, stop


class BatchLoader:
    """Global batches for any step, read from a source and placed on a batch sharding."""

    def __init__(self, source: ActivationSource, batch_size: int, seed: int, sharding: jax.sharding.Sharding):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.sharding = sharding
        self.row_range = process_row_range(sharding, batch_size, source.d_in)

    def host_batch(self, step: int) -> np.ndarray:
        """This process's slice of the global batch at ``step`` (float32 NumPy)."""
        rows = global_batch_rows(self.seed, step, self.batch_size, self.source.n_rows)
        start, stop = self.row_range
        return self.source.read(rows[start:stop])

    def device_batch(self, step: int) -> jax.Array:
        """The global batch at ``step`` as a sharded ``jax.Array``."""
        return jax.make_array_from_process_local_data(
            self.sharding, self.host_batch(step), (self.batch_size, self.source.d_in)
        )

    def iter_from(self, start_step: int, prefetch: int = 2) -> Iterator[tuple[int, jax.Array]]:
        """``(step, device_batch(step))`` for ``start_step, start_step + 1, ...`` forever.

        Background threads read and place the next ``prefetch`` batches concurrently while the
        caller computes; batches are identical to ``device_batch(step)`` and come in step order.
        Closing the generator (or dropping it) stops the threads; a read error is raised in the
        consumer at the step that failed.
        """
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=prefetch, thread_name_prefix="BatchLoader-prefetch")
        pending: collections.deque = collections.deque()
        next_step = start_step
        try:
            while True:
                while len(pending) < prefetch:
                    pending.append((next_step, pool.submit(self.device_batch, next_step)))
                    next_step += 1
                step, future = pending.popleft()
                try:
                    batch = future.result()
                except Exception as e:
                    raise RuntimeError(f"reading the batch for step {step} failed: {e}") from e
                yield step, batch
        finally:
            for _, future in pending:
                future.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
