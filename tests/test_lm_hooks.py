"""Hook points against the model's own outputs, on tiny random models (no downloads)."""
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sae_jax.lm.hooks import (  # noqa: E402
    capture_activations,
    forward_activations,
    hook_module,
    registered_hooks,
    replace_output_tensor,
)

N_LAYERS = 3


def _configs():
    T = transformers
    common = dict(vocab_size=100, max_position_embeddings=64)
    return {
        "llama": (T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=N_LAYERS,
                                num_attention_heads=4, num_key_value_heads=2, **common), "causal"),
        "gpt2": (T.GPT2Config(vocab_size=100, n_embd=32, n_layer=N_LAYERS, n_head=4, n_positions=64,
                              bos_token_id=0, eos_token_id=0), "causal"),
        "gemma3": (T.Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=N_LAYERS,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, **common), "causal"),
        "bert": (T.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=N_LAYERS,
                              num_attention_heads=4, **common), "encoder"),
    }


@pytest.fixture(scope="module", params=list(_configs()))
def model_and_inputs(request):
    torch.manual_seed(0)
    config, kind = _configs()[request.param]
    auto = transformers.AutoModel if kind == "encoder" else transformers.AutoModelForCausalLM
    model = auto.from_config(config).eval()
    ids = torch.randint(1, 100, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():  # let transformers install its own capture hooks before we count hooks
        model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return request.param, model, {"input_ids": ids, "attention_mask": mask}


def test_resid_equals_output_hidden_states(model_and_inputs):
    name, model, inputs = model_and_inputs
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    acts = forward_activations(model, inputs, [(layer, "resid") for layer in range(N_LAYERS)])
    # hidden_states[L + 1] is block L's output, except the last entry of decoder models,
    # which has the final norm applied: compare every block but that one exactly.
    checked = N_LAYERS if name == "bert" else N_LAYERS - 1
    for layer in range(checked):
        torch.testing.assert_close(acts[(layer, "resid")], hidden[layer + 1], rtol=0, atol=0)
    if name == "llama":
        torch.testing.assert_close(model.model.norm(acts[(N_LAYERS - 1, "resid")]), hidden[-1])


def test_sublayer_outputs_sum_to_residual_update(model_and_inputs):
    name, model, inputs = model_and_inputs
    if name == "bert":
        pytest.skip("post-LN encoder: the residual is renormalised, no additive decomposition")
    specs = [(layer, hook) for layer in range(N_LAYERS) for hook in ("resid", "attn_out", "mlp_out")]
    acts = forward_activations(model, inputs, specs)
    for layer in range(1, N_LAYERS):
        update = acts[(layer, "resid")] - acts[(layer - 1, "resid")]
        torch.testing.assert_close(acts[(layer, "attn_out")] + acts[(layer, "mlp_out")], update, rtol=1e-5, atol=1e-5)


def _hook_counts(model):
    # transformers registers its own output-capturing hooks on first use: compare counts.
    return [len(m._forward_hooks) for m in model.modules()]


def test_forward_stops_after_last_requested_layer(model_and_inputs):
    _, model, inputs = model_and_inputs
    before = _hook_counts(model)
    later = hook_module(model, 2, "resid")
    fired = []
    with registered_hooks([(later, lambda m, a, o: fired.append(1))]):
        acts = forward_activations(model, inputs, [(1, "resid")])
        assert fired == [], "block 2 ran although only block 1 was requested"
        forward_activations(model, inputs, [(2, "resid")])
        assert fired == [1]
    assert set(acts) == {(1, "resid")}
    assert _hook_counts(model) == before, "hooks left registered"


def test_hooks_removed_after_an_error(model_and_inputs):
    _, model, inputs = model_and_inputs
    before = _hook_counts(model)
    with pytest.raises(ZeroDivisionError):
        with capture_activations(model, [(0, "resid")]):
            1 / 0
    assert _hook_counts(model) == before


def test_replace_output_tensor_changes_the_downstream_computation(model_and_inputs):
    _, model, inputs = model_and_inputs
    base = forward_activations(model, inputs, [(0, "resid"), (1, "resid")])
    target = hook_module(model, 0, "resid")

    def zero(module, args, output):
        return replace_output_tensor(output, torch.zeros_like(base[(0, "resid")]))

    with registered_hooks([(target, zero)]):
        spliced = forward_activations(model, inputs, [(0, "resid"), (1, "resid")])
    assert torch.count_nonzero(spliced[(0, "resid")]) == 0
    assert not torch.allclose(spliced[(1, "resid")], base[(1, "resid")])


def test_bad_hook_and_layer_errors(model_and_inputs):
    _, model, _ = model_and_inputs
    with pytest.raises(ValueError, match="unknown hook point"):
        hook_module(model, 0, "residual")
    with pytest.raises(ValueError, match="out of range"):
        hook_module(model, N_LAYERS, "resid")
