"""sae_jax.kernels against the straightforward dense TopK SAE (lax.top_k + dense scatter + matmuls)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sae_jax.kernels import choose_impl, sparse_decode, sparse_encode, topk
from sae_jax.kernels.sparse_topk import auto_method


def _params(key, d, F, scale=0.3):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {
        "W_enc": scale * jax.random.normal(k1, (d, F)),
        "b_enc": 0.1 * jax.random.normal(k2, (F,)),
        "W_dec": scale * jax.random.normal(k3, (F, d)),
        "b_dec": 0.1 * jax.random.normal(k4, (d,)),
    }


def dense_forward(p, x, k):
    """The reference: dense pre-activations, lax.top_k, dense code, dense decoder."""
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    vals, idx = lax.top_k(pre, k)
    rows = jnp.arange(x.shape[0])[:, None]
    h = jnp.zeros_like(pre).at[rows, idx].set(jax.nn.relu(vals))
    return h @ p["W_dec"] + p["b_dec"]


def sparse_forward(p, x, k, method="auto"):
    vals, idx = sparse_encode(x, p["W_enc"], p["b_enc"], k, b_dec=p["b_dec"], topk_method=method)
    return sparse_decode(vals, idx, p["W_dec"]) + p["b_dec"]


def sparse_forward_centred(p, x, k):
    # the x_c form: b_dec's encoder gradient flows back through x - b_dec
    vals, idx = sparse_encode(x - p["b_dec"], p["W_enc"], p["b_enc"], k)
    return sparse_decode(vals, idx, p["W_dec"]) + p["b_dec"]


def _loss(fwd, k, **kw):
    def loss(p, x):
        x_hat = fwd(p, x, k, **kw)
        # a loss with nontrivial per-element weights so every gradient path is exercised
        return jnp.sum(jnp.sin(x_hat) * (x + 1.0))

    return loss


@pytest.mark.parametrize("n,k", [(1000, 7), (4096, 32), (300, 1), (64, 64)])
@pytest.mark.parametrize("method", ["chunked", "auto"])
def test_topk_equals_lax_top_k(n, k, method):
    x = np.random.default_rng(n + k).standard_normal((37, n)).astype(np.float32)
    v, i = topk(jnp.asarray(x), k, method=method)
    # NumPy reference: sort descending per row, values and the index of each value
    order = np.argsort(-x, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(np.asarray(v), np.take_along_axis(x, order, axis=1))
    np.testing.assert_array_equal(np.asarray(i), order)
    assert i.dtype == jnp.int32


def test_topk_leading_dims_and_negative_values():
    x = -np.abs(np.random.default_rng(1).standard_normal((2, 3, 900))).astype(np.float32)
    v, i = topk(jnp.asarray(x), 5, method="chunked")
    rv, ri = lax.top_k(jnp.asarray(x), 5)
    np.testing.assert_array_equal(np.asarray(v), np.asarray(rv))
    np.testing.assert_array_equal(np.asarray(i), np.asarray(ri))


def test_topk_bad_k_names_the_problem():
    with pytest.raises(ValueError, match="k <= 10"):
        topk(jnp.zeros((2, 10)), 11)
    with pytest.raises(ValueError, match="method"):
        topk(jnp.zeros((2, 10)), 1, method="fast")


@pytest.mark.parametrize("B,d,F,k", [(64, 16, 512, 8), (32, 24, 300, 5), (16, 8, 96, 96)])
def test_sparse_matches_dense_values_and_grads(B, d, F, k):
    p = _params(jax.random.PRNGKey(B + F), d, F)
    x = jax.random.normal(jax.random.PRNGKey(7), (B, d))
    np.testing.assert_allclose(
        np.asarray(sparse_forward(p, x, k)), np.asarray(dense_forward(p, x, k)), rtol=1e-5, atol=1e-5
    )
    gd = jax.jit(jax.grad(_loss(dense_forward, k), argnums=(0, 1)))(p, x)
    for fwd in (sparse_forward, sparse_forward_centred):
        gs = jax.jit(jax.grad(_loss(fwd, k), argnums=(0, 1)))(p, x)
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            np.testing.assert_allclose(np.asarray(gs[0][name]), np.asarray(gd[0][name]), rtol=1e-4, atol=1e-4)
            assert float(jnp.abs(gd[0][name]).max()) > 0  # the path carries signal
        np.testing.assert_allclose(np.asarray(gs[1]), np.asarray(gd[1]), rtol=1e-4, atol=1e-4)


def test_grads_match_under_jit_with_unrolling_off():
    # k above the unroll limit takes the scan paths
    B, d, F, k = 8, 8, 256, 80
    p = _params(jax.random.PRNGKey(3), d, F)
    x = jax.random.normal(jax.random.PRNGKey(4), (B, d))
    gd = jax.jit(jax.grad(_loss(dense_forward, k)))(p, x)
    gs = jax.jit(jax.grad(_loss(sparse_forward, k)))(p, x)
    for name in gd:
        np.testing.assert_allclose(np.asarray(gs[name]), np.asarray(gd[name]), rtol=1e-4, atol=1e-4)


def test_relu_zeroes_gradient_of_negative_selected_values():
    # all pre-activations negative: vals are 0, no gradient reaches the encoder
    d, F, k = 4, 64, 3
    W = -jnp.abs(jax.random.normal(jax.random.PRNGKey(0), (d, F)))
    x = jnp.abs(jax.random.normal(jax.random.PRNGKey(1), (5, d)))
    b = -jnp.ones((F,))

    def f(W, b):
        v, _ = sparse_encode(x, W, b, k)
        return jnp.sum(v * 3.0)

    gW, gb = jax.grad(f, argnums=(0, 1))(W, b)
    assert float(jnp.abs(gW).max()) == 0.0 and float(jnp.abs(gb).max()) == 0.0
    v, _ = sparse_encode(x, W, b, k)
    assert float(v.max()) == 0.0


def test_sparse_decode_equals_numpy_with_duplicate_indices():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((10, 6)).astype(np.float32)
    vals = rng.standard_normal((4, 3)).astype(np.float32)
    idx = np.array([[1, 1, 2], [0, 9, 9], [5, 5, 5], [3, 4, 0]], np.int32)
    want = np.einsum("bk,bkd->bd", vals, W[idx])
    got = sparse_decode(jnp.asarray(vals), jnp.asarray(idx), jnp.asarray(W))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
    g = rng.standard_normal((4, 6)).astype(np.float32)
    gv, gW = jax.grad(lambda v, w: jnp.sum(sparse_decode(v, jnp.asarray(idx), w) * g), argnums=(0, 1))(
        jnp.asarray(vals), jnp.asarray(W)
    )
    np.testing.assert_allclose(np.asarray(gv), np.einsum("bd,bkd->bk", g, W[idx]), rtol=1e-5, atol=1e-5)
    want_gW = np.zeros_like(W)
    np.add.at(want_gW, idx.reshape(-1), (vals[:, :, None] * g[:, None, :]).reshape(-1, 6))
    np.testing.assert_allclose(np.asarray(gW), want_gW, rtol=1e-5, atol=1e-5)


def test_encode_shape_errors_are_clear():
    with pytest.raises(ValueError, match="matching d"):
        sparse_encode(jnp.zeros((2, 3)), jnp.zeros((4, 8)), jnp.zeros((8,)), 2)
    with pytest.raises(ValueError, match="b_enc"):
        sparse_encode(jnp.zeros((2, 4)), jnp.zeros((4, 8)), jnp.zeros((7,)), 2)
    with pytest.raises(ValueError, match="b_dec"):
        sparse_encode(jnp.zeros((2, 4)), jnp.zeros((4, 8)), jnp.zeros((8,)), 2, b_dec=jnp.zeros((3,)))


def test_choose_impl():
    assert choose_impl("auto", "cpu") == "sparse"
    assert choose_impl("auto", "tpu") == "dense"
    assert choose_impl("dense", "cpu") == "dense"
    with pytest.raises(ValueError, match="impl"):
        choose_impl("fast")


def test_auto_topk_method_prunes_off_tpu_when_chunks_prune():
    # F 2^18, k 32: 2,048 chunk maxima >= 4k, so chunk pruning (GPU: lax.top_k's sort of the whole
    # [B, F] block ran out of memory at F 2^20 on an H200); short rows and TPU keep lax.top_k
    assert auto_method(2**18, 32, "gpu") == "chunked"
    assert auto_method(2**18, 32, "cpu") == "chunked"
    assert auto_method(2**18, 32, "tpu") == "lax"
    assert auto_method(256, 32, "gpu") == "lax"


def test_sparse_topk_sae_uses_the_configured_method():
    from sae_jax.config import SAEConfig
    from sae_jax.sae import make_architecture

    arch = make_architecture(SAEConfig(architecture="topk", d_sae=64, k=4, impl="sparse", topk_method="chunked"), 8)
    assert arch.topk_method == "chunked"


def test_topk_with_bias_equals_lax_top_k_of_the_sum():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 4000)).astype(np.float32)
    b = rng.standard_normal(4000).astype(np.float32)
    b[::7] = -np.inf  # masked entries (AuxK) never win
    for method in ("chunked", "lax"):
        v, i = topk(jnp.asarray(x), 12, method=method, bias=jnp.asarray(b))
        rv, ri = lax.top_k(jnp.asarray(x) + jnp.asarray(b), 12)
        np.testing.assert_array_equal(np.asarray(v), np.asarray(rv))
        np.testing.assert_array_equal(np.asarray(i), np.asarray(ri))
        assert not np.any(np.asarray(i) % 7 == 0)


def test_blocked_transpose_and_large_dictionary_grads():
    from sae_jax.kernels.sparse_topk import _transpose_materialised

    a = np.arange(2048 * 6, dtype=np.float32).reshape(2048, 6)
    np.testing.assert_array_equal(np.asarray(jax.jit(_transpose_materialised)(jnp.asarray(a))), a.T)
    # F = 1024 takes the blocked-transpose path inside the encoder backward
    B, d, F, k = 16, 8, 1024, 4
    p = _params(jax.random.PRNGKey(11), d, F)
    x = jax.random.normal(jax.random.PRNGKey(12), (B, d))
    gd = jax.jit(jax.grad(_loss(dense_forward, k)))(p, x)
    gs = jax.jit(jax.grad(_loss(sparse_forward, k)))(p, x)
    for name in gd:
        np.testing.assert_allclose(np.asarray(gs[name]), np.asarray(gd[name]), rtol=1e-4, atol=1e-4)


# (2048, 32) and (1024, 32): a dictionary shard's rows (few blocks per selected latent; 1024 halves the block)
@pytest.mark.parametrize("n,k", [(8192, 32), (2048, 32), (1024, 32), (1000, 7), (70, 32), (33, 33)])
def test_native_cpu_topk_equals_lax_top_k(n, k):
    from sae_jax.kernels import cpu_kernels

    if jax.default_backend() != "cpu" or not cpu_kernels.available():
        pytest.skip("native CPU kernel not built here")
    rng = np.random.default_rng(n)
    x = rng.standard_normal((3, 50, n)).astype(np.float32)
    x[0, 0, : n // 2] = 1.5  # ties: lax.top_k keeps the lower index first
    x[1, 1] = np.round(x[1, 1])  # many ties
    b = rng.standard_normal(n).astype(np.float32)
    b[5::9] = -np.inf  # masked latents (AuxK)
    v, i = jax.jit(lambda x, b: topk(x, k, method="native", bias=b))(jnp.asarray(x), jnp.asarray(b))
    rv, ri = lax.top_k(jnp.asarray(x) + jnp.asarray(b), k)
    np.testing.assert_array_equal(np.asarray(v), np.asarray(rv))
    np.testing.assert_array_equal(np.asarray(i), np.asarray(ri))
    # unsorted (a first stage): the same k entries, in any order
    uv, ui = jax.jit(lambda x, b: topk(x, k, method="native", bias=b, sorted=False))(jnp.asarray(x), jnp.asarray(b))
    order = np.argsort(np.asarray(ui), axis=-1)
    np.testing.assert_array_equal(np.take_along_axis(np.asarray(ui), order, -1), np.sort(np.asarray(ri), axis=-1))
    np.testing.assert_array_equal(np.take_along_axis(np.asarray(uv), order, -1),
                                  np.take_along_axis(np.asarray(rv), np.argsort(np.asarray(ri), axis=-1), -1))
    # values stay differentiable: d(sum of top-k)/dx is 1 exactly at the chosen entries
    g = jax.grad(lambda x: jnp.sum(topk(x, k, method="native")[0]))(jnp.asarray(x))
    _, ri0 = lax.top_k(jnp.asarray(x), k)
    want = np.zeros_like(x)
    np.put_along_axis(want, np.asarray(ri0), 1.0, axis=-1)
    np.testing.assert_array_equal(np.asarray(g), want)


@pytest.mark.parametrize("base", [0, 40])
def test_native_decode_equals_numpy_over_a_shards_own_selections(base):
    """decode_native sums vals * W_dec[idx - base] over base <= idx < base + F only (a dictionary
    shard's selections), with repeated indices and zero values, as NumPy does."""
    from sae_jax.kernels import cpu_kernels

    if jax.default_backend() != "cpu" or not cpu_kernels.available():
        pytest.skip("native CPU kernel not built here")
    rng = np.random.default_rng(base)
    B, k, F, d = 70, 9, 40, 13
    W = rng.standard_normal((F, d)).astype(np.float32)
    idx = rng.integers(0, 120, (B, k)).astype(np.int32)  # global indices over 3 shards of 40
    idx[0, :3] = base + 5  # repeats
    vals = rng.standard_normal((B, k)).astype(np.float32)
    vals[1] = 0.0
    want = np.zeros((B, d))
    for b in range(B):
        for j in range(k):
            if base <= idx[b, j] < base + F:
                want[b] += vals[b, j] * W[idx[b, j] - base].astype(np.float64)
    got = jax.jit(lambda v, i, w: cpu_kernels.decode_native(v, i, w, base))(vals, idx, W)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
