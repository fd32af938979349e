"""Activation store: round trips on local disk and memory://, bf16, errors, statistics."""
import itertools
import json

import ml_dtypes
import numpy as np
import pytest

from sae_jax.data import store as st

_counter = itertools.count()


def _memory_path():
    return f"memory://test_store_{next(_counter)}"


def _make(path, x, dtype="float32", shard_rows=32, chunk_rows=1, commit=True, meta=None):
    arr = st.create_array(path, x.shape[0], x.shape[1], dtype, shard_rows=shard_rows, chunk_rows=chunk_rows)
    arr.write(x.astype(np.float32 if dtype == "float32" else ml_dtypes.bfloat16)).result()
    if commit:
        st.commit(path, {"n_rows": x.shape[0], "d_model": x.shape[1], "dtype": dtype, **(meta or {})})
    return arr


@pytest.fixture
def x():
    return np.random.default_rng(0).standard_normal((100, 12)).astype(np.float32)


@pytest.mark.parametrize("where", ["memory", "local"])
@pytest.mark.parametrize("chunk_rows", [1, 4])
def test_round_trip_random_rows(x, tmp_path, where, chunk_rows):
    path = _memory_path() if where == "memory" else str(tmp_path / "acts")
    _make(path, x, chunk_rows=chunk_rows, meta={"layer": 3})
    store = st.open_store(path)
    assert (store.n_rows, store.d_in) == x.shape
    assert store.metadata["layer"] == 3 and store.metadata["format"] == st.FORMAT
    rows = np.random.default_rng(1).integers(0, 100, 700)  # unsorted, with repeats, > one read piece
    out = store.read(rows)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, x[rows])
    np.testing.assert_array_equal(store.read(np.array([99, 0, 5])), x[[99, 0, 5]])
    np.testing.assert_array_equal(store.read_range(10, 37), x[10:37])
    chunks = list(store.iter_chunks(30))
    assert [s for s, _ in chunks] == [0, 30, 60, 90]
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), x)


def test_bfloat16_store_reads_rounded_float32(x):
    path = _memory_path()
    _make(path, x, dtype="bfloat16")
    store = st.open_store(path)
    expected = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(store.read(np.arange(100)), expected)
    assert not np.array_equal(expected, x)  # the rounding really happened


def test_out_of_range_rows(x):
    path = _memory_path()
    _make(path, x)
    store = st.open_store(path)
    with pytest.raises(IndexError, match=r"\[0, 100\)"):
        store.read(np.array([3, 100]))


def test_missing_store(tmp_path):
    with pytest.raises(st.MissingStoreError, match="no activation store"):
        st.open_store(str(tmp_path / "nothing"))


def test_incomplete_store_is_never_read(x):
    path = _memory_path()
    _make(path, x, commit=False)
    with pytest.raises(st.IncompleteStoreError, match="rerun the same `sae-jax extract`"):
        st.open_store(path)


def test_corrupt_store(x):
    path = _memory_path()
    _make(path, x)
    st.write_key(path, st.COMMIT_KEY, json.dumps({"n_rows": 99, "d_model": 12}).encode())
    with pytest.raises(st.CorruptStoreError, match="disagrees"):
        st.open_store(path)
    path2 = _memory_path()
    _make(path2, x)
    st.write_key(path2, st.META_KEY, b"{not json")
    with pytest.raises(st.CorruptStoreError, match="not valid JSON"):
        st.open_store(path2)


def test_nonfinite_rows_reported_with_count_and_location(x):
    y = x.copy()
    y[17, 3] = np.nan
    y[64, 0] = np.inf
    path = _memory_path()
    _make(path, y)
    store = st.open_store(path)
    count, rows = st.find_nonfinite(store, rows_per_chunk=16)
    assert count == 2 and rows.tolist() == [17, 64]
    with pytest.raises(st.NonFiniteRowsError, match=r"2 of 100 rows .*\[17, 64\]"):
        st.check_finite(store)
    with pytest.raises(st.NonFiniteRowsError):
        st.open_store(path, check_finite_rows=True)
    st.check_finite(st.open_store(_make_clean(x)))  # a clean store passes


def _make_clean(x):
    path = _memory_path()
    _make(path, x)
    return path


def test_check_d_in(x):
    store = st.open_store(_make_clean(x))
    st.check_d_in(store, 12)
    with pytest.raises(st.DimensionMismatchError, match="d_model=12 .* d_in=16"):
        st.check_d_in(store, 16)


def test_statistics_match_numpy(x):
    path = _memory_path()
    arr = _make(path, x, commit=False)
    stats = st.compute_statistics(arr, sample_size=10, seed=3, rows_per_chunk=7)
    np.testing.assert_allclose(stats["mean"], x.astype(np.float64).mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats["mean_norm"], np.linalg.norm(x.astype(np.float64), axis=1).mean(), rtol=1e-12)
    total_var = x.astype(np.float64).var(0).sum()
    np.testing.assert_allclose(stats["total_variance"], total_var, rtol=1e-10)
    assert stats["n_nonfinite_rows"] == 0
    sample = stats["sample_rows"]
    assert len(set(sample)) == 10 and sample == sorted(sample)
    assert sample == st.compute_statistics(arr, sample_size=10, seed=3)["sample_rows"]


def test_extraction_root_with_one_or_many_arrays(x):
    root = _memory_path()
    _make(st.join(root, "layer1_resid"), x)
    st.write_json(root, "extract.json", {"arrays": ["layer1_resid"]})
    assert st.open_store(root).n_rows == 100
    _make(st.join(root, "layer2_resid"), x)
    st.write_json(root, "extract.json", {"arrays": ["layer1_resid", "layer2_resid"]})
    with pytest.raises(st.StoreError, match="several arrays"):
        st.open_store(root)
    assert st.open_store(root, array="layer2_resid").d_in == 12


def test_kvstore_specs():
    assert st.kvstore_spec("gs://bucket/acts") == "gs://bucket/acts/"
    assert st.kvstore_spec("memory://x/") == "memory://x/"
    spec = st.kvstore_spec("rel/dir")
    assert spec["driver"] == "file" and spec["path"].endswith("/rel/dir/")
    assert st.join("gs://b/root/", "base", "layer9_resid") == "gs://b/root/base/layer9_resid"
