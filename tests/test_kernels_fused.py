"""sparse_autoencode (one custom_vjp for encoder, decoder and AuxK) against dense autodiff."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sae_jax.kernels.fused import sparse_autoencode


def _params(key, d, F):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {"W_enc": 0.3 * jax.random.normal(k1, (d, F)), "b_enc": 0.1 * jax.random.normal(k2, (F,)),
            "W_dec": 0.3 * jax.random.normal(k3, (F, d)), "b_dec": 0.1 * jax.random.normal(k4, (d,))}


def dense(p, x, k, dead, k_aux):
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    rows = jnp.arange(x.shape[0])[:, None]
    v, i = lax.top_k(pre, k)
    h = jnp.zeros_like(pre).at[rows, i].set(jax.nn.relu(v))
    x_hat = h @ p["W_dec"] + p["b_dec"]
    va, ia = lax.top_k(jnp.where(dead, pre, -jnp.inf), k_aux)
    h_aux = jnp.zeros_like(pre).at[rows, ia].set(jax.nn.relu(va))
    return x_hat, h_aux @ p["W_dec"]


def assert_grads_match(sparse_loss, dense_loss, p, x):
    """Gradients wrt the parameters and the input of two losses agree (sparse kernel vs dense autodiff)."""
    gs = jax.jit(jax.grad(sparse_loss, argnums=(0, 1)))(p, x)
    gd = jax.jit(jax.grad(dense_loss, argnums=(0, 1)))(p, x)
    for name in p:
        np.testing.assert_allclose(np.asarray(gs[0][name]), np.asarray(gd[0][name]), rtol=1e-4, atol=1e-4,
                                   err_msg=name)
    np.testing.assert_allclose(np.asarray(gs[1]), np.asarray(gd[1]), rtol=1e-4, atol=1e-4)


def _loss(x_hat, e_hat, x):
    return jnp.sum(jnp.sin(x_hat) * (x + 1.0)) + jnp.sum(jnp.cos(e_hat) * x)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("n_dead", [0, 5, 100])
def test_values_and_grads_match_dense(n_dead, native, monkeypatch):
    import sae_jax.kernels.fused as fused

    if native and not fused._native():
        pytest.skip("native CPU kernels not built here")
    if not native:  # the pure-JAX backward (what runs without a C++ compiler, and on GPU)
        monkeypatch.setattr(fused, "_native", lambda: False)
    B, d, F, k, k_aux = 32, 12, 512, 6, 10
    p = _params(jax.random.PRNGKey(n_dead), d, F)
    x = jax.random.normal(jax.random.PRNGKey(1), (B, d))
    dead = jnp.zeros((F,), bool).at[jnp.arange(n_dead) * 3].set(True)

    def sparse_loss(p, x):
        x_hat, _, _, e_hat, _ = sparse_autoencode(x, p, k, dead_mask=dead, k_aux=k_aux, topk_method="chunked")
        return _loss(x_hat, e_hat, x)

    def dense_loss(p, x):
        x_hat, e_hat = dense(p, x, k, dead, k_aux)
        if n_dead == 0:  # no dead latent: the AuxK reconstruction is off (zeros)
            e_hat = jnp.zeros_like(e_hat)
        return _loss(x_hat, e_hat, x)

    x_hat, vals, idx, e_hat, on = sparse_autoencode(x, p, k, dead_mask=dead, k_aux=k_aux)
    rx, re = dense(p, x, k, dead, k_aux)
    np.testing.assert_allclose(np.asarray(x_hat), np.asarray(rx), rtol=1e-5, atol=1e-5)
    assert bool(on) == (n_dead > 0)
    if n_dead:
        np.testing.assert_allclose(np.asarray(e_hat), np.asarray(re), rtol=1e-5, atol=1e-5)
    assert_grads_match(sparse_loss, dense_loss, p, x)


def test_bad_arguments_are_named():
    p = _params(jax.random.PRNGKey(0), 4, 16)
    with pytest.raises(ValueError, match="dead_mask"):
        sparse_autoencode(jnp.zeros((2, 4)), p, 2, k_aux=3)
    with pytest.raises(ValueError, match="x \\[B, 4\\]"):
        sparse_autoencode(jnp.zeros((2, 5)), p, 2)
    with pytest.raises(ValueError, match="0 < k"):
        sparse_autoencode(jnp.zeros((2, 4)), p, 17)


@pytest.mark.parametrize("path,n_dead", [  # the train step's path (1x1 mesh) with AuxK in the default suite
    pytest.param(p, n, marks=() if (p, n) == ("sharded_1x1", 5) else pytest.mark.slow)
    for p in ("fused", "sharded_1x1", "sharded_1x2") for n in (0, 5)])
def test_row_blocked_encoder_matches_dense(path, n_dead, monkeypatch):
    """The encoder matmul + top-k in row blocks (CPU, native top-k): same values, AuxK and gradients."""
    import sae_jax.kernels.fused as fused
    from sae_jax.config import MeshConfig
    from sae_jax.kernels.sharded import sharded_autoencode
    from sae_jax.mesh import make_mesh

    if not fused._native():
        pytest.skip("row blocks are used with the native CPU top-k only")
    monkeypatch.setattr(fused, "_ENCODER_ROWS", 64)
    B, d, F, k, k_aux = 256, 12, 512, 6, 10
    assert fused._encoder_rows(B, "auto") == 64 and fused._encoder_rows(B, "chunked") == B
    p = _params(jax.random.PRNGKey(3 + n_dead), d, F)
    x = jax.random.normal(jax.random.PRNGKey(4), (B, d))
    dead = jnp.zeros((F,), bool).at[jnp.arange(n_dead) * 7].set(True)
    if path == "fused":
        run = lambda p, x: sparse_autoencode(x, p, k, dead_mask=dead, k_aux=k_aux)
    else:
        mesh = make_mesh(MeshConfig(data=1, dict=int(path[-1])), jax.devices()[: int(path[-1])])
        run = lambda p, x: sharded_autoencode(x, p, k, mesh, dead_mask=dead, k_aux=k_aux)
    x_hat, vals, idx, e_hat, on = jax.jit(run)(p, x)
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    ref_vals, ref_idx = lax.top_k(pre, k)
    np.testing.assert_array_equal(np.asarray(idx), np.asarray(ref_idx))
    np.testing.assert_allclose(np.asarray(vals), np.asarray(jax.nn.relu(ref_vals)), rtol=1e-5, atol=1e-5)
    rx, re = dense(p, x, k, dead, k_aux)
    np.testing.assert_allclose(np.asarray(x_hat), np.asarray(rx), rtol=1e-5, atol=1e-5)
    assert bool(on) == (n_dead > 0)
    np.testing.assert_allclose(np.asarray(e_hat), np.asarray(re if n_dead else jnp.zeros_like(re)),
                               rtol=1e-5, atol=1e-5)

    def dense_loss(p, x):
        x_hat, e_hat = dense(p, x, k, dead, k_aux)
        return _loss(x_hat, e_hat if n_dead else jnp.zeros_like(e_hat), x)

    def blocked_loss(p, x):
        x_hat, _, _, e_hat, _ = run(p, x)
        return _loss(x_hat, e_hat, x)

    assert_grads_match(blocked_loss, dense_loss, p, x)
