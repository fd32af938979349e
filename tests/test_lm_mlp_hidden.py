"""The mlp_hidden hook point (MLP hidden layer, input of the down projection) against a
hand-written MLP forward, on tiny random Llama, Qwen2, GPT-NeoX (both residual layouts) and
GPT-2 models in float64. The block input comes from ``output_hidden_states``; the hand-written
block output is checked against the next hidden state, so the hand-written MLP (and the
attention output it is added to) is checked against the model, not against our hook code."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Tolerances: Llama/Qwen2 RMSNorm computes in float32 even in a float64 model.
from sae_jax.lm.hooks import activation_hook, forward_activations, registered_hooks  # noqa: E402

N_LAYERS, D, FF, V = 3, 16, 40, 50


def _config(family):
    T = transformers
    common = dict(vocab_size=V, hidden_size=D, intermediate_size=FF, num_hidden_layers=N_LAYERS,
                  num_attention_heads=4, max_position_embeddings=32)
    if family == "llama":
        return T.LlamaConfig(num_key_value_heads=2, hidden_act="silu", **common)
    if family == "qwen2":
        return T.Qwen2Config(num_key_value_heads=2, hidden_act="silu", **common)
    if family.startswith("neox"):
        return T.GPTNeoXConfig(hidden_act="gelu", use_parallel_residual=family == "neox_parallel",
                               rotary_pct=0.5, **common)
    if family == "gpt2":
        return T.GPT2Config(vocab_size=V, n_embd=D, n_inner=FF, n_layer=N_LAYERS, n_head=4, n_positions=32,
                            activation_function="gelu_new", bos_token_id=0, eos_token_id=0)
    raise ValueError(family)


FAMILIES = ["llama", "qwen2", "neox_parallel", "neox_sequential", "gpt2"]


def _rms(x, w, eps):
    return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _gelu_erf(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _hand_mlp(family, block, cfg, x_in, attn):
    """(mlp hidden, mlp out, block output) from the block input and the attention output."""
    if family in ("llama", "qwen2"):
        mid = x_in + attn
        n = _rms(mid, block.post_attention_layernorm.weight, cfg.rms_norm_eps)
        m = block.mlp
        g, u = n @ m.gate_proj.weight.T, n @ m.up_proj.weight.T
        hidden = g * torch.sigmoid(g) * u  # SiLU(gate) * up
        out = hidden @ m.down_proj.weight.T
        return hidden, out, mid + out
    if family.startswith("neox"):
        parallel = family == "neox_parallel"
        src = x_in if parallel else x_in + attn  # parallel residual: the MLP reads the block input
        n = _ln(src, block.post_attention_layernorm.weight, block.post_attention_layernorm.bias, cfg.layer_norm_eps)
        m = block.mlp
        hidden = _gelu_erf(n @ m.dense_h_to_4h.weight.T + m.dense_h_to_4h.bias)
        out = hidden @ m.dense_4h_to_h.weight.T + m.dense_4h_to_h.bias
        return hidden, out, x_in + attn + out
    if family == "gpt2":
        mid = x_in + attn
        n = _ln(mid, block.ln_2.weight, block.ln_2.bias, cfg.layer_norm_epsilon)
        m = block.mlp  # Conv1D: weight is [in, out]
        hidden = _gelu_tanh(n @ m.c_fc.weight + m.c_fc.bias)
        out = hidden @ m.c_proj.weight + m.c_proj.bias
        return hidden, out, mid + out
    raise ValueError(family)


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    torch.manual_seed(0)
    cfg = _config(request.param)
    model = transformers.AutoModelForCausalLM.from_config(cfg).to(torch.float64).eval()
    ids = torch.randint(1, V, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return request.param, model, {"input_ids": ids, "attention_mask": mask}


def test_mlp_hidden_matches_hand_written_mlp(family_model):
    family, model, inputs = family_model
    cfg = model.config
    with torch.no_grad():
        hs = model(**inputs, output_hidden_states=True).hidden_states
    specs = [(layer, h) for layer in range(N_LAYERS) for h in ("resid", "attn_out", "mlp_out", "mlp_hidden")]
    acts = forward_activations(model, inputs, specs)
    blocks = model.gpt_neox.layers if family.startswith("neox") else (
        model.transformer.h if family == "gpt2" else model.model.layers)
    for layer in range(N_LAYERS):
        hidden, out, block_out = _hand_mlp(family, blocks[layer], cfg, hs[layer], acts[(layer, "attn_out")])
        assert acts[(layer, "mlp_hidden")].shape == (2, 9, FF)
        torch.testing.assert_close(acts[(layer, "mlp_hidden")], hidden, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(acts[(layer, "mlp_out")], out, rtol=1e-5, atol=1e-7)
        if layer < N_LAYERS - 1:  # the last hidden state has the final norm applied
            torch.testing.assert_close(hs[layer + 1], block_out, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(acts[(layer, "resid")], block_out, rtol=1e-5, atol=1e-7)


def test_replacing_mlp_hidden_changes_the_mlp_output(family_model):
    """Zeroing the hidden layer leaves only the down projection's bias in mlp_out, and
    the clean forward is restored once the hook is removed."""
    family, model, inputs = family_model
    clean = forward_activations(model, inputs, [(1, "mlp_out"), (2, "resid")])
    with registered_hooks([activation_hook(model, 1, "mlp_hidden", torch.zeros_like)]):
        zeroed = forward_activations(model, inputs, [(1, "mlp_out"), (1, "mlp_hidden"), (2, "resid")])
    blocks = model.gpt_neox.layers if family.startswith("neox") else (
        model.transformer.h if family == "gpt2" else model.model.layers)
    down = {"gpt2": "c_proj", "neox_parallel": "dense_4h_to_h", "neox_sequential": "dense_4h_to_h"}.get(family, "down_proj")
    bias = getattr(blocks[1].mlp, down).bias
    expected = torch.zeros_like(clean[(1, "mlp_out")]) + (0 if bias is None else bias)
    torch.testing.assert_close(zeroed[(1, "mlp_out")], expected)
    assert not torch.allclose(zeroed[(2, "resid")], clean[(2, "resid")])
    # the recorded mlp_hidden is what the model saw (the hooks fire in registration order)
    again = forward_activations(model, inputs, [(1, "mlp_out")])
    torch.testing.assert_close(again[(1, "mlp_out")], clean[(1, "mlp_out")], rtol=0, atol=0)


def test_forward_stops_after_the_layer_of_an_mlp_hidden_hook(family_model):
    family, model, inputs = family_model
    fired = []
    with registered_hooks([activation_hook(model, 2, "resid", lambda a: fired.append(1))]):
        forward_activations(model, inputs, [(1, "mlp_hidden")])
    assert fired == []


def test_mlp_hidden_errors():
    from sae_jax.lm.hooks import hook_module

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_config("llama")).eval()
    with pytest.raises(ValueError, match="'mlp_hidden'"):
        hook_module(model, 0, "mlp_pre")
    del model.model.layers[0].mlp.down_proj  # a block without a known down projection
    with pytest.raises(ValueError, match="down projection"):
        hook_module(model, 0, "mlp_hidden")


def test_extract_mlp_hidden_rows(tmp_path):
    """`sae-jax extract --hooks mlp_hidden` stores the hidden layer at real tokens."""
    from sae_jax.data import store as st
    from sae_jax.lm.extract import ExtractConfig, run_extract
    from sae_jax.lm.models import load_model, tiny_random_model

    model, tok = tiny_random_model("gpt2", n_layers=2, d_model=32, seed=0)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    texts = ["the cat sat on the mat", "a dog ran far away from home", "hi"]
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    run_extract(ExtractConfig(model=str(tmp_path / "m"), out=str(tmp_path / "out"), text=str(tmp_path / "t.txt"),
                              layers=(1,), hooks=("mlp_hidden", "resid"), context_length=16, batch_size=2,
                              progress=False))
    store = st.open_store(str(tmp_path / "out"), array="layer1_mlp_hidden")
    assert store.metadata["hook"] == "mlp_hidden" and store.metadata["d_model"] == 4 * 32
    model, tok = load_model(str(tmp_path / "m"))
    rows = []
    for t in texts:  # one text at a time, read off the model by hand: c_proj's input
        ids = torch.tensor([tok(t, truncation=True, max_length=16)["input_ids"]])
        seen = []
        handle = model.transformer.h[1].mlp.c_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        try:
            with torch.no_grad():
                model(input_ids=ids)
        finally:
            handle.remove()
        keep = [i for i, tid in enumerate(ids[0].tolist()) if tid not in set(tok.all_special_ids)]
        rows.append(seen[0][0, keep].numpy())
    expected = np.concatenate(rows)
    np.testing.assert_allclose(store.read(np.arange(store.n_rows)), expected, rtol=1e-5, atol=1e-5)
