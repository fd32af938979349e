"""Per-token LayerNorm with SAELens 'layer_norm' semantics, NumPy and JAX."""
import jax.numpy as jnp
import numpy as np
import pytest

from sae_jax.normalization import layer_norm_in, layer_norm_out


def test_layer_norm_matches_formula_and_roundtrips():
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(7, 10))
    mu = x.sum(1, keepdims=True) / 10
    std = np.sqrt(((x - mu) ** 2).sum(1, keepdims=True) / 9)  # unbiased, as torch.std
    for arr in (x, jnp.asarray(x, jnp.float32)):
        xn, m, s = layer_norm_in(arr, eps=1e-5)
        np.testing.assert_allclose(xn, (x - mu) / (std + 1e-5), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m, mu, rtol=1e-5)
        np.testing.assert_allclose(s, std, rtol=1e-5)
        # SAELens' out-map multiplies by σ (not σ + eps): the round trip is exact up to σ/(σ+eps)
        np.testing.assert_allclose(layer_norm_out(xn, m, s), mu + (x - mu) * std / (std + 1e-5), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="2 features"):
        layer_norm_in(np.ones((3, 1)))
