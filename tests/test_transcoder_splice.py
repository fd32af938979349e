"""Transcoder splicing: mlp_in and mlp_out come from one forward pass, and replacing the MLP by a
transcoder (mlp_out := transcoder(mlp_in)) is scored by CE recovered, on the tiny synthetic-language
Llama of test_splice (no downloads)."""
import dataclasses

import numpy as np
import pytest
import torch
import transformers

from sae_jax.config import CheckpointConfig, DataConfig, LogConfig, OptimConfig, SAEConfig, TrainConfig
from sae_jax.data.paired import PairedSource
from sae_jax.data.source import ArraySource
from sae_jax.evals import splice as ev_splice
from sae_jax.export import load_sae
from sae_jax.lm.hooks import forward_activations, hook_module
from sae_jax.trainer import train
from tests.test_splice import BOS, T, _batches, _sequences, tiny_lm  # noqa: F401 (fixture)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_mlp_in_is_what_the_mlp_reads(kind):
    torch.manual_seed(0)
    cfg = (transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=2) if kind == "llama"
           else transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2))
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    ids = torch.randint(1, 50, (2, 6))
    acts = forward_activations(model, {"input_ids": ids}, [(1, "mlp_in"), (1, "mlp_out"), (1, "resid")])
    mlp = hook_module(model, 1, "mlp_in")
    with torch.no_grad():
        np.testing.assert_allclose(mlp(acts[(1, "mlp_in")]).numpy(), acts[(1, "mlp_out")].numpy(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(acts[(1, "mlp_in")], acts[(1, "resid")])  # normed input, not the residual


def _mlp_as_numpy(model, layer):
    mlp = hook_module(model, layer, "mlp_in")

    def fn(x):
        with torch.no_grad():
            return mlp.forward(torch.as_tensor(x)).numpy()  # forward, not __call__: no hooks
    return fn


def test_splicing_the_mlp_itself_is_exact(tiny_lm):
    """A 'transcoder' that is the MLP (read from mlp_in): the spliced model is the clean one; the
    same MLP at half strength, or zero ablation, is not."""
    held_out = _batches(_sequences(np.random.default_rng(5), 16))
    mlp = _mlp_as_numpy(tiny_lm, 0)
    m = ev_splice.evaluate_transcoder_splice(tiny_lm, mlp, held_out, 0, [BOS])
    assert m.n_tokens == 16 * (T - 1)
    assert m.ce_spliced == pytest.approx(m.ce_clean, abs=1e-6) and m.kl_spliced == pytest.approx(0.0, abs=1e-7)
    assert m.kl_zero > 1e-4 and np.isnan(m.ce_spliced_with_error)
    half = ev_splice.evaluate_transcoder_splice(tiny_lm, lambda x: 0.5 * mlp(x), held_out, 0, [BOS])
    assert 1e-6 < half.kl_spliced < half.kl_zero


def test_trained_skip_transcoder_replaces_the_mlp(tiny_lm, tmp_path):
    layer = 0
    ids = _sequences(np.random.default_rng(1), 256)
    acts = forward_activations(tiny_lm, {"input_ids": torch.as_tensor(ids)}, [(layer, "mlp_in"), (layer, "mlp_out")])
    x, y = (ArraySource(acts[(layer, h)][:, 1:].reshape(-1, 32).numpy()) for h in ("mlp_in", "mlp_out"))
    cfg = TrainConfig(run_dir=str(tmp_path / "tc"), steps=400,
                      data=DataConfig(batch_size=256, holdout_fraction=0.0, n_stat_rows=2048),
                      sae=SAEConfig(architecture="skip_transcoder", d_sae=128, sparsity_coef=0.02),
                      optim=OptimConfig(lr=3e-3, warmup_steps=20), checkpoint=CheckpointConfig(every=10**6),
                      log=LogConfig(progress=False))
    result = train(cfg, source=PairedSource(x, y))
    tc = load_sae(result.export_dir)
    held_out = _sequences(np.random.default_rng(2), 48)
    m = ev_splice.evaluate_transcoder_splice(tiny_lm, tc, _batches(held_out), layer, [BOS])
    # This tiny LM barely uses its MLPs (zero ablation moves CE by ~0.002 nats), so CE recovered is
    # ill-conditioned here; the KL to the clean model is the informative score.
    assert m.kl_spliced < 0.25 * m.kl_zero, dataclasses.asdict(m)
    assert m.kl_score_zero == pytest.approx(1 - m.kl_spliced / m.kl_zero)
