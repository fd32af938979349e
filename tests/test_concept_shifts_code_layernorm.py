"""The SSAE's code LayerNorm (the original method's "normalize h") trains through the trainer and
exports as sae_jax's 'code_layernorm' architecture (issue 12: validation refused it)."""
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers_train import ssae_config  # noqa: E402

from sae_jax.config import ConfigError, validate  # noqa: E402
from sae_jax.data.source import ArraySource  # noqa: E402
from sae_jax.export import ExportError, load_sae, unit_norm_decoder  # noqa: E402
from sae_jax.trainer import train  # noqa: E402


@pytest.mark.parametrize("relu", [False, True])
def test_code_layernorm_trains_and_its_export_encodes_like_numpy(tmp_path, relu):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(512, 12)) * rng.uniform(0.5, 2, 12)).astype(np.float32)
    cfg = ssae_config(tmp_path / "run", target=0.3, steps=12, d_sae=6, batch_size=64, code_norm="layernorm",
                      relu=relu)
    validate(cfg)  # refused before: "not linear and cannot be exported"
    result = train(cfg, source=ArraySource(x))
    sae = load_sae(result.export_dir)
    assert sae.cfg["architecture"] == "code_layernorm" and sae.cfg["code_relu"] is relu
    p = {k: np.asarray(v, np.float64) for k, v in sae.params.items()}
    # NumPy reference: input LayerNorm (unbiased σ + eps), linear pre-code, LayerNorm over latents (biased var)
    xn = (x - x.mean(1, keepdims=True)) / (x.std(1, ddof=1, keepdims=True) + 1e-5)
    pre = (xn - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    h = (pre - pre.mean(1, keepdims=True)) / np.sqrt(pre.var(1, keepdims=True) + 1e-5) * p["code_gamma"] + p["code_beta"]
    h = np.maximum(h, 0) if relu else h
    np.testing.assert_allclose(sae.encode(x), h, rtol=1e-4, atol=1e-4)
    arch, state = result.arch, result.state
    np.testing.assert_allclose(sae.encode(x), arch.encode(state.params, state.arch_state, jnp.asarray(x)),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sae(x), arch.reconstruct(state.params, state.arch_state, jnp.asarray(x)),
                               rtol=1e-3, atol=1e-3)
    with pytest.raises(ExportError, match="code_layernorm"):
        unit_norm_decoder(dict(sae.params), "code_layernorm")


def test_code_layernorm_with_split_export_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="code_norm='layernorm'"):
        validate(ssae_config(tmp_path, target=0.3, code_norm="layernorm", export_as="split"))
