"""Unit-norm decoder: tangent-space gradient and projection after every step."""
import jax
import jax.numpy as jnp
import numpy as np

from sae_jax.data.synthetic import synthetic_source
from sae_jax.decoder_norm import project_rows, remove_parallel_component
from tests.helpers_train import run_steps, tiny_config


def test_adjusted_gradient_is_orthogonal_to_each_row():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((30, 7)).astype(np.float32)
    g = rng.standard_normal((30, 7)).astype(np.float32)
    other = rng.standard_normal(5).astype(np.float32)
    tx = remove_parallel_component()
    params = {"W_dec": jnp.asarray(w), "b": jnp.asarray(other)}
    updates, _ = tx.update({"W_dec": jnp.asarray(g), "b": jnp.asarray(other)}, tx.init(params), params)
    adj = np.asarray(updates["W_dec"], np.float64)
    np.testing.assert_allclose(np.sum(adj * w, axis=1), 0, atol=1e-4)
    # NumPy reference: g - (g.w / w.w) w
    ref = g - (np.sum(g * w, 1) / np.sum(w * w, 1))[:, None] * w
    np.testing.assert_allclose(adj, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(updates["b"]), other)  # other leaves untouched


def test_projection_gives_unit_rows():
    w = np.random.default_rng(1).standard_normal((9, 4)) * 3
    out = np.asarray(project_rows({"W_dec": jnp.asarray(w, jnp.float32)})["W_dec"])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(out, w / np.linalg.norm(w, axis=1, keepdims=True), rtol=1e-5)


def test_rows_stay_unit_norm_through_training():
    cfg = tiny_config(architecture="relu", sparsity_coef=0.01)
    src = synthetic_source(4096, 16, 48, 3)
    for steps in (1, 7):
        state, _, _ = run_steps(cfg, src, steps)
        np.testing.assert_allclose(np.linalg.norm(np.asarray(state.params["W_dec"]), axis=1), 1, rtol=1e-5)
