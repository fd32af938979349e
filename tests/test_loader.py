"""Deterministic loader: batches are a pure function of (seed, step); each row once per epoch;
iter_from (prefetching) yields exactly device_batch(step)."""
import itertools

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sae_jax.data import store as st
from sae_jax.data.loader import BatchLoader, global_batch_rows
from sae_jax.data.source import ArraySource


def _sharding(n_devices=None):
    devices = jax.devices()[: n_devices or len(jax.devices())]
    mesh = jax.sharding.Mesh(np.array(devices).reshape(len(devices), 1), ("data", "dict"))
    return NamedSharding(mesh, P("data", None))


@pytest.fixture
def data():
    return np.arange(50 * 3, dtype=np.float32).reshape(50, 3)  # row i holds 3i, 3i+1, 3i+2


def test_same_seed_and_step_same_batch_any_order(data):
    a = BatchLoader(ArraySource(data), 8, seed=1, sharding=_sharding(1))
    b = BatchLoader(ArraySource(data), 8, seed=1, sharding=_sharding(1))
    forward = [np.asarray(a.device_batch(s)) for s in range(12)]
    backward = [np.asarray(b.device_batch(s)) for s in reversed(range(12))][::-1]
    for f, g in zip(forward, backward):
        np.testing.assert_array_equal(f, g)
    other = BatchLoader(ArraySource(data), 8, seed=2, sharding=_sharding(1))
    assert not np.array_equal(np.asarray(other.device_batch(0)), forward[0])


def test_each_row_once_per_epoch_and_epochs_reshuffle():
    n, batch = 50, 7
    positions = np.concatenate([global_batch_rows(5, s, batch, n) for s in range(3 * n // batch + 1)])
    for epoch in range(3):
        rows = positions[epoch * n : (epoch + 1) * n]
        assert sorted(rows.tolist()) == list(range(n)), f"epoch {epoch} misses or repeats rows"
    assert not np.array_equal(positions[:n], positions[n : 2 * n])


def test_batch_rows_are_the_source_rows(data):
    loader = BatchLoader(ArraySource(data), 10, seed=0, sharding=_sharding(1))
    rows = global_batch_rows(0, 3, 10, 50)
    np.testing.assert_array_equal(np.asarray(loader.device_batch(3)), data[rows])


def test_iter_from_matches_device_batch(data):
    loader = BatchLoader(ArraySource(data), 8, seed=4, sharding=_sharding())
    it = loader.iter_from(5, prefetch=3)
    got = list(itertools.islice(it, 9))
    it.close()
    assert [s for s, _ in got] == list(range(5, 14))
    for step, batch in got:
        assert batch.sharding == loader.sharding
        np.testing.assert_array_equal(np.asarray(batch), np.asarray(loader.device_batch(step)))


def test_iter_from_reports_read_errors(data):
    bad_rows = global_batch_rows(0, 2, 8, len(data))  # reads run concurrently: fail by content, not call order

    class Failing(ArraySource):
        def read(self, rows):
            if np.array_equal(rows, bad_rows):
                raise OSError("disk gone")
            return super().read(rows)

    src = Failing(data)
    it = BatchLoader(src, 8, seed=0, sharding=_sharding(1)).iter_from(0)
    assert next(it)[0] == 0 and next(it)[0] == 1
    with pytest.raises(RuntimeError, match="step 2 failed: disk gone"):
        next(it)


def test_store_and_array_sources_give_the_same_batches(data):
    path = "memory://test_loader_store"
    arr = st.create_array(path, 50, 3, shard_rows=16)
    arr.write(data).result()
    st.commit(path, {"n_rows": 50, "d_model": 3})
    sharding = _sharding()
    from_store = BatchLoader(st.open_store(path), 16, seed=9, sharding=sharding)
    from_array = BatchLoader(ArraySource(data), 16, seed=9, sharding=sharding)
    for step in range(6):
        np.testing.assert_array_equal(np.asarray(from_store.device_batch(step)), np.asarray(from_array.device_batch(step)))
