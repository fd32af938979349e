"""The sparse TopK architecture trains exactly like the dense one through the real train step."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sae_jax.config import OptimConfig, SAEConfig, TrainConfig
from sae_jax.kernels.topk_sae import SparseTopKSAE
from sae_jax.optim import make_optimizer
from sae_jax.sae.topk import TopKSAE
from sae_jax.train_state import make_init_fn
from sae_jax.train_step import make_step_fn


def _run(arch, cfg, xs, d, F):
    opt = make_optimizer(cfg)
    state = jax.jit(make_init_fn(arch, opt, d, F))(jax.random.key(0), jnp.zeros((d,)), 1.0)
    step = jax.jit(make_step_fn(cfg, arch, opt))
    out = []
    for x in xs:
        state, m = step(state, x)
        out.append({k: float(v) for k, v in m.items()})
    return state, out


@pytest.mark.parametrize("auxk", [0.0, 0.5])
def test_sparse_topk_training_matches_dense(auxk):
    d, F, k, B, steps = 16, 256, 8, 64, 6
    cfg = TrainConfig(
        steps=steps,
        sae=SAEConfig(d_sae=F, k=k, k_aux=8, auxk_coef=auxk, dead_tokens=B),  # latents go dead fast
        optim=OptimConfig(lr=3e-3, warmup_steps=2),
    )
    rng = np.random.default_rng(0)
    atoms = rng.standard_normal((48, d)).astype(np.float32)
    xs = [jnp.asarray((rng.random((B, 48)) < 0.1) * rng.random((B, 48)) @ atoms, jnp.float32)
          for _ in range(steps)]
    dense = TopKSAE(k=k, k_aux=8, auxk_coef=auxk)
    sparse = SparseTopKSAE.from_dense(dense, topk_method="chunked")
    s_d, m_d = _run(dense, cfg, xs, d, F)
    s_s, m_s = _run(sparse, cfg, xs, d, F)
    for a, b in zip(m_d, m_s):
        for key in ("loss", "fvu", "l0", "auxk", "dead_frac", "grad_norm"):
            np.testing.assert_allclose(b[key], a[key], rtol=2e-5, atol=1e-6, err_msg=key)
    if auxk:
        assert max(m["auxk"] for m in m_d) > 0  # the AuxK branch actually ran
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        np.testing.assert_allclose(np.asarray(s_s.params[name]), np.asarray(s_d.params[name]),
                                   rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(np.asarray(s_s.tokens_since_fired), np.asarray(s_d.tokens_since_fired))


def test_sparse_step_compiles_without_a_full_sort():
    # XLA:CPU turns some top-k patterns into a full sort of the [B, F] row (~25x slower);
    # the sparse step must keep the TopK custom calls.
    if jax.default_backend() != "cpu":
        pytest.skip("CPU lowering check")
    d, F, k, B = 32, 2048, 8, 64
    cfg = TrainConfig(steps=2, sae=SAEConfig(d_sae=F, k=k, k_aux=16, auxk_coef=1 / 32))
    arch = SparseTopKSAE.from_dense(TopKSAE(k=k, k_aux=16, auxk_coef=1 / 32))
    opt = make_optimizer(cfg)
    state = jax.eval_shape(make_init_fn(arch, opt, d, F), jax.random.key(0), jnp.zeros((d,)), 1.0)
    text = jax.jit(make_step_fn(cfg, arch, opt)).lower(
        state, jax.ShapeDtypeStruct((B, d), jnp.float32)).compile().as_text()
    assert " sort(" not in text
    assert "TopK" in text or "sae_jax_topk_f32" in text


def test_sparse_step_on_data_parallel_meshes_matches_one_device():
    # the native CPU kernels are opaque custom calls: under a 'data'-sharded batch XLA must
    # still produce the one-device result
    from sae_jax.bench.run import train_config
    from sae_jax.bench.step import build_step, device_batches, init_state, synthetic_activations

    if len(jax.devices()) < 4:
        pytest.skip("needs 4 (host) devices")
    d, F, k, B = 16, 512, 8, 64
    x = synthetic_activations(3 * B, d, 0)
    runs = {}
    for mesh in ((1, 1), (2, 1), (4, 1)):
        cfg = train_config("topk", d, F, k, B, "float32", "sparse", mesh, 0)
        built = build_step(cfg, d, jax.devices()[: mesh[0] * mesh[1]])
        assert built.impl == "sparse"
        state = init_state(built, cfg, d)
        losses = []
        for b in device_batches(built, x, B):
            state, m = built.step(state, b)
            losses.append(float(m["loss"]))
        runs[mesh] = (losses, np.asarray(state.params["W_enc"]))
    for mesh in ((2, 1), (4, 1)):
        np.testing.assert_allclose(runs[mesh][0], runs[(1, 1)][0], rtol=1e-5)
        np.testing.assert_allclose(runs[mesh][1], runs[(1, 1)][1], rtol=1e-4, atol=1e-6)
