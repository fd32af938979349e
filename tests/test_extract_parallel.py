"""Parallel extraction (``extract --shard I/N``) against a single-process extraction of the same
texts: the arrays, positions, labels and metadata (statistics sample, digests) must be identical."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sae_jax import cli  # noqa: E402
from sae_jax.data import store as st  # noqa: E402
from sae_jax.lm.extract import ExtractConfig, read_labels, read_positions, run_extract  # noqa: E402
from sae_jax.lm.models import tiny_model_folder  # noqa: E402

TEXTS = [f"a dog {i} ran past house number {i * 3}" + " and sat" * (i % 5) for i in range(29)]
LABELS = [f"t{i % 4}" for i in range(29)]
# 2 arrays, shards of 16 rows, windows of 6 texts: windows straddle part boundaries
KW = dict(layers=(0, 1), hooks=("resid",), context_length=24, batch_size=3, sort_window=2, shard_rows=16,
          chunk_rows=4, sample_size=50, label_field="label", progress=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("xpar")
    tiny_model_folder(d / "model")
    with open(d / "texts.jsonl", "w") as f:
        for t, lab in zip(TEXTS, LABELS):
            f.write(json.dumps({"text": t, "label": lab}) + "\n")
    single = d / "single"
    run_extract(_cfg(d, single))
    return d


def _cfg(d, out, **kw):
    return ExtractConfig(**{"model": str(d / "model"), "out": str(out), "text": str(d / "texts.jsonl"), **KW, **kw})


def _assert_same_store(a: Path, b: Path) -> None:
    names = st.list_arrays(str(a))
    assert names == st.list_arrays(str(b)) == ["layer0_resid", "layer1_resid"]
    for name in names:
        x, y = st.open_store(str(a), array=name), st.open_store(str(b), array=name)
        xa, ya = x.read(np.arange(x.n_rows)), y.read(np.arange(y.n_rows))
        assert xa.shape == ya.shape and xa.tobytes() == ya.tobytes()  # bit-identical
        # statistics, sample rows, digests, config: all equal but the output path
        assert x.metadata["extract_config"].pop("out") != y.metadata["extract_config"].pop("out")
        assert x.metadata == y.metadata and y.metadata["extract_config"]["shard"] is None
        assert st.verify_store(y) == len(x.metadata["integrity"]["shards"]) > 3
        # the stored files themselves: every shard file has the same bytes
        for f in sorted((a / name / "c").rglob("*")):
            if f.is_file():
                assert f.read_bytes() == (b / name / "c" / f.relative_to(a / name / "c")).read_bytes(), f
    for u, v in zip(read_positions(str(a)), read_positions(str(b))):
        np.testing.assert_array_equal(u, v)
    assert read_labels(str(a)) == read_labels(str(b)) == LABELS


def test_three_parts_sequentially_equal_one_process(workdir, tmp_path):
    out = tmp_path / "par"
    n_rows = st.open_store(str(workdir / "single"), array="layer0_resid").n_rows
    done = []
    for i in (2, 0, 1):  # any order; the last one to finish commits
        summary = run_extract(_cfg(workdir, out, shard=f"{i}/3"))
        done.append(summary)
        if len(done) < 3:
            assert "waiting_for" in summary
            with pytest.raises(st.IncompleteStoreError, match=r"parts \[.*\] of 3 have not finished"):
                st.open_store(str(out), array="layer0_resid")
    assert done[0]["waiting_for"] == [0, 1] and done[1]["waiting_for"] == [1]
    # whole shards, disjoint, covering every row
    ranges = sorted(tuple(s["rows"]) for s in done)
    assert ranges[0][0] == 0 and ranges[-1][1] == n_rows
    assert all(r[1] == q[0] and r[1] % 16 == 0 for r, q in zip(ranges, ranges[1:]))
    _assert_same_store(workdir / "single", out)
    assert run_extract(_cfg(workdir, out, shard="1/3"))["already_complete"]


def test_killed_part_resumes_bit_identical(workdir, tmp_path):
    out = tmp_path / "par"
    stopped = run_extract(_cfg(workdir, out, shard="0/2"), stop_after_shards=1)
    assert stopped["stopped"] and stopped["rows"][0] < stopped["rows_done"] < stopped["rows"][1]
    run_extract(_cfg(workdir, out, shard="1/2"))
    with pytest.raises(st.IncompleteStoreError, match=r"parts \[0\] of 2"):
        st.open_store(str(out), array="layer1_resid")
    again = run_extract(_cfg(workdir, out, shard="0/2"), stop_after_shards=1)  # continues, not from the start
    assert again["rows_done"] > stopped["rows_done"]
    final = run_extract(_cfg(workdir, out, shard="0/2"))
    assert "waiting_for" not in final and final["tokens"] > 0
    _assert_same_store(workdir / "single", out)


def test_finished_part_is_not_redone_and_commit_is_finished_by_a_rerun(workdir, tmp_path):
    out = tmp_path / "par"
    run_extract(_cfg(workdir, out, shard="0/2"))
    run_extract(_cfg(workdir, out, shard="1/2"))
    # simulate a crash during the commit: markers and manifest flag gone, parts done
    for name in ("layer0_resid", "layer1_resid"):
        st.uncommit(str(out / name))
    manifest = st.read_json(str(out), "extract.json")
    st.write_json(str(out), "extract.json", {**manifest, "complete": False})
    with pytest.raises(st.IncompleteStoreError, match="all 2 parts finished"):
        st.open_store(str(out), array="layer0_resid")
    again = run_extract(_cfg(workdir, out, shard="0/2"))
    assert again["tokens"] == 0  # nothing re-extracted, only committed
    _assert_same_store(workdir / "single", out)


def test_mismatched_parts_are_refused(workdir, tmp_path):
    out = tmp_path / "par"
    run_extract(_cfg(workdir, out, shard="0/3"), stop_after_shards=1)
    with pytest.raises(st.StoreError, match="different configuration"):
        run_extract(_cfg(workdir, out, shard="1/3", context_length=16))
    with pytest.raises(st.StoreError, match=r"started with --shard I/3.*--shard 1/2"):
        run_extract(_cfg(workdir, out, shard="1/2"))
    with pytest.raises(st.StoreError, match="started with --shard I/3"):
        run_extract(_cfg(workdir, out))
    assert run_extract(_cfg(workdir, tmp_path / "one"), stop_after_shards=1)["stopped"]
    with pytest.raises(st.StoreError, match="started with no --shard"):
        run_extract(_cfg(workdir, tmp_path / "one", shard="0/2"))


@pytest.mark.parametrize("bad", ["3/3", "0/0", "a/3", "1.5/3", "-1/3", "2"])
def test_bad_shard_exits_2(workdir, tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["extract", "--model", str(workdir / "model"), "--out", str(tmp_path / "x"),
                  "--text", str(workdir / "texts.jsonl"), "--shard", bad])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--shard" in err and "I/N" in err or "0 <= I < N" in err
    assert not (tmp_path / "x").exists()


def test_overwrite_with_shard_refused():
    with pytest.raises(ValueError, match="--overwrite cannot be combined with --shard"):
        ExtractConfig(shard="0/2", overwrite=True).validate()


@pytest.mark.slow
def test_three_processes_in_parallel_equal_one_process(workdir, tmp_path):
    out = tmp_path / "par"
    args = ["--model", str(workdir / "model"), "--out", str(out), "--text", str(workdir / "texts.jsonl"),
            "--layers", "0", "1", "--hooks", "resid", "--context-length", "24", "--batch-size", "3",
            "--sort-window", "2", "--shard-rows", "16", "--chunk-rows", "4", "--sample-size", "50",
            "--label-field", "label", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-m", "sae_jax.cli", "extract", *args, "--shard", f"{i}/3"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert all(rc == 0 for _, _, rc in results), results
    _assert_same_store(workdir / "single", out)


def test_shared_create_keeps_other_parts_rows_and_refuses_another_layout(tmp_path):
    path = str(tmp_path / "arr")
    a = st.create_array(path, 40, 4, shard_rows=8, chunk_rows=4, shared=True)
    rows = np.arange(16, dtype=np.float32).reshape(4, 4) + 1
    a[8:12].write(rows).result()
    b = st.create_array(path, 40, 4, shard_rows=8, chunk_rows=4, shared=True)  # a second part starting late
    np.testing.assert_array_equal(b[8:12].read().result(), rows)
    with pytest.raises(st.StoreError, match="layout differs"):
        st.create_array(path, 40, 5, shard_rows=8, chunk_rows=4, shared=True)
