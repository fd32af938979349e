"""Extraction on tiny random HF models (no downloads), checked against the models' own outputs."""
import json

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sae_jax.data import store as st  # noqa: E402
from sae_jax.lm.extract import ExtractConfig, read_labels, read_positions, run_extract  # noqa: E402
from sae_jax.lm.models import tiny_random_model  # noqa: E402

TEXTS = [f"the cat {i} sat on mat number {i * 7}" + " and ran" * (i % 4) for i in range(23)]
LABELS = [f"topic{i % 3}" for i in range(23)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("extract")
    for name, arch, seed in (("base", "llama", 0), ("chat", "llama", 1), ("gpt2", "gpt2", 0)):
        model, tok = tiny_random_model(arch, n_layers=2, d_model=32, seed=seed)
        model.save_pretrained(d / name)
        tok.save_pretrained(d / name)
    with open(d / "texts.jsonl", "w") as f:
        for t, lab in zip(TEXTS, LABELS):
            f.write(json.dumps({"text": t, "label": lab}) + "\n")
    with open(d / "pairs.jsonl", "w") as f:
        for a, b in zip(TEXTS[:9], TEXTS[9:18]):
            f.write(json.dumps({"s1": a, "s2": b}) + "\n")
    return d


def _cfg(d, out, **kw):
    base = dict(model=str(d / "base"), out=str(out), text=str(d / "texts.jsonl"), label_field="label",
                layers=(0,), hooks=("resid",), context_length=24, batch_size=4, shard_rows=64, progress=False)
    return ExtractConfig(**{**base, **kw})


def _reference_hidden(d, name, texts, layer, context_length=24):
    """Per text, hidden_states[layer + 1] at the non-special positions, one text at a time."""
    from sae_jax.lm.models import load_model

    model, tok = load_model(str(d / name))
    special = set(tok.all_special_ids)
    rows = []
    for t in texts:
        ids = tok(t, truncation=True, max_length=context_length)["input_ids"]
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[layer + 1][0]
        keep = [i for i, tid in enumerate(ids) if tid not in special]
        rows.append(hs[keep].numpy())
    return rows


@pytest.mark.parametrize("arch", ["base", "gpt2"])
def test_token_rows_equal_output_hidden_states(workdir, tmp_path, arch):
    out = tmp_path / "out"
    summary = run_extract(_cfg(workdir, out, model=str(workdir / arch), layers=(0,), hooks=("resid", "mlp_out")))
    store = st.open_store(str(out), array="layer0_resid")
    reference = _reference_hidden(workdir, arch, TEXTS, layer=0)
    expected = np.concatenate(reference)
    assert store.n_rows == expected.shape[0] == summary["n_rows"]
    np.testing.assert_allclose(store.read(np.arange(store.n_rows)), expected, rtol=1e-5, atol=1e-5)
    doc_ids, token_pos = read_positions(str(out))
    assert doc_ids.tolist() == [i for i, r in enumerate(reference) for _ in range(len(r))]
    assert token_pos.min() == 1  # position 0 is <bos>, a special token: excluded
    assert read_labels(str(out)) == LABELS
    meta = store.metadata
    assert (meta["layer"], meta["hook"], meta["dtype"], meta["d_model"], meta["context_length"]) == (0, "resid", "float32", 32, 24)
    np.testing.assert_allclose(meta["statistics"]["mean"], expected.astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(meta["statistics"]["mean_norm"], np.linalg.norm(expected, axis=1).mean(), rtol=1e-5)
    assert st.open_store(str(out), array="layer0_mlp_out").n_rows == store.n_rows


def test_resumed_extraction_equals_uninterrupted(workdir, tmp_path):
    kw = dict(layers=(0, 1), hooks=("resid", "attn_out"), shard_rows=32, chunk_rows=4, batch_size=3, sort_window=2)
    full = run_extract(_cfg(workdir, tmp_path / "full", **kw))
    part = run_extract(_cfg(workdir, tmp_path / "part", **kw), stop_after_shards=2)
    assert part["stopped"] and 0 < part["rows_done"] < full["n_rows"]
    with pytest.raises(st.IncompleteStoreError):
        st.open_store(str(tmp_path / "part"), array="layer1_resid")
    # a second interruption continues from the first one's progress, then the plain rerun finishes
    part2 = run_extract(_cfg(workdir, tmp_path / "part", **kw), stop_after_shards=1)
    assert part["rows_done"] < part2["rows_done"] < full["n_rows"]
    run_extract(_cfg(workdir, tmp_path / "part", **kw))
    for name in full["arrays"]:
        a = st.open_store(str(tmp_path / "full"), array=name)
        b = st.open_store(str(tmp_path / "part"), array=name)
        np.testing.assert_array_equal(a.read(np.arange(a.n_rows)), b.read(np.arange(b.n_rows)))
        assert a.metadata["statistics"] == b.metadata["statistics"]
    assert run_extract(_cfg(workdir, tmp_path / "part", **kw))["already_complete"]
    with pytest.raises(st.StoreError, match="different configuration"):
        run_extract(_cfg(workdir, tmp_path / "part", **{**kw, "context_length": 16}))


def test_base_chat_delta_stores(workdir, tmp_path):
    out = tmp_path / "paired"
    summary = run_extract(_cfg(workdir, out, chat_model=str(workdir / "chat"), layers=(1,), hooks=("resid", "mlp_out")))
    assert summary["arrays"] == [f"{r}/layer1_{h}" for r in ("base", "chat", "delta") for h in ("resid", "mlp_out")]
    for hook in ("resid", "mlp_out"):
        base, chat, delta = (st.open_store(str(out), array=f"{r}/layer1_{hook}") for r in ("base", "chat", "delta"))
        rows = np.arange(base.n_rows)
        b, c, dlt = base.read(rows), chat.read(rows), delta.read(rows)
        np.testing.assert_array_equal(dlt, c - b)  # exactly, per token
        assert np.abs(dlt).max() > 0.1 * np.abs(b).max()  # different models really differ
    # the base store of a paired run equals a base-only run; the chat store equals the chat model's states
    alone = run_extract(_cfg(workdir, tmp_path / "alone", layers=(1,), hooks=("resid",)))
    np.testing.assert_array_equal(
        st.open_store(str(tmp_path / "alone")).read(np.arange(alone["n_rows"])),
        st.open_store(str(out), array="base/layer1_resid").read(np.arange(alone["n_rows"])),
    )
    # layer 1 is the last block: hidden_states[2] has the final norm applied, so compare the
    # chat store to the model's norm applied to it instead
    from sae_jax.lm.models import load_model

    chat_model, tok = load_model(str(workdir / "chat"))
    ids = tok(TEXTS[0], truncation=True, max_length=24)["input_ids"]
    with torch.no_grad():
        final = chat_model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, 1:]
    chat_rows = torch.from_numpy(st.open_store(str(out), array="chat/layer1_resid").read(np.arange(len(ids) - 1)))
    torch.testing.assert_close(chat_model.model.norm(chat_rows), final, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_pooled_rows_and_labels(workdir, tmp_path, pooling):
    tokens = run_extract(_cfg(workdir, tmp_path / "tok"))
    pooled = run_extract(_cfg(workdir, tmp_path / "pool", pooling=pooling))
    assert pooled["n_rows"] == len(TEXTS)
    tok_rows = st.open_store(str(tmp_path / "tok")).read(np.arange(tokens["n_rows"]))
    doc_ids, _ = read_positions(str(tmp_path / "tok"))
    if pooling == "mean":
        expected = np.stack([tok_rows[doc_ids == i].mean(0) for i in range(len(TEXTS))])
    else:
        expected = np.stack([tok_rows[doc_ids == i][-1] for i in range(len(TEXTS))])
    got = st.open_store(str(tmp_path / "pool")).read(np.arange(len(TEXTS)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert read_labels(str(tmp_path / "pool")) == LABELS
    assert st.open_store(str(tmp_path / "pool")).metadata["pooling"] == pooling


def test_paired_sentences_and_sequential_differences(workdir, tmp_path):
    pooled = run_extract(_cfg(workdir, tmp_path / "pool", pooling="mean"))
    z = st.open_store(str(tmp_path / "pool")).read(np.arange(pooled["n_rows"]))
    pairs = run_extract(_cfg(workdir, tmp_path / "pairs", mode="pairs", text=str(workdir / "pairs.jsonl"), label_field=None))
    dz = st.open_store(str(tmp_path / "pairs")).read(np.arange(pairs["n_rows"]))
    np.testing.assert_allclose(dz, z[9:18] - z[:9], rtol=1e-5, atol=1e-5)
    seq = run_extract(_cfg(workdir, tmp_path / "seq", mode="sequential"))
    ds = st.open_store(str(tmp_path / "seq")).read(np.arange(seq["n_rows"]))
    np.testing.assert_allclose(ds, z[1:] - z[:-1], rtol=1e-5, atol=1e-5)


def test_bfloat16_store_and_determinism(workdir, tmp_path):
    f32 = run_extract(_cfg(workdir, tmp_path / "f32"))
    bf16 = run_extract(_cfg(workdir, tmp_path / "bf16", dtype="bfloat16"))
    again = run_extract(_cfg(workdir, tmp_path / "bf16b", dtype="bfloat16"))
    rows = np.arange(f32["n_rows"])
    x = st.open_store(str(tmp_path / "f32")).read(rows)
    y = st.open_store(str(tmp_path / "bf16")).read(rows)
    np.testing.assert_array_equal(y, x.astype(ml_dtypes.bfloat16).astype(np.float32))
    np.testing.assert_array_equal(y, st.open_store(str(tmp_path / "bf16b")).read(rows))
    assert bf16["n_rows"] == again["n_rows"]


def test_bad_configs(workdir, tmp_path):
    with pytest.raises(ValueError, match="hooks"):
        run_extract(_cfg(workdir, tmp_path / "x", hooks=("residual",)))
    with pytest.raises(ValueError, match="out of range"):
        run_extract(_cfg(workdir, tmp_path / "x", layers=(5,)))
    with pytest.raises(FileNotFoundError, match="no model"):
        run_extract(_cfg(workdir, tmp_path / "x", model=str(tmp_path / "missing")))
