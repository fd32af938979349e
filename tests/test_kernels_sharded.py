"""Sparse TopK kernels on dictionary-sharded meshes against unsharded dense references."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sae_jax.assemble import assemble
from sae_jax.config import MeshConfig
from sae_jax.data.loader import BatchLoader
from sae_jax.data.synthetic import synthetic_source
from sae_jax.kernels.sharded import sharded_autoencode
from sae_jax.kernels.topk_sae import SparseTopKSAE
from sae_jax.mesh import batch_sharding, make_mesh
from sae_jax.train_state import create_state
from sae_jax.train_step import make_train_step
from tests.helpers_train import tiny_config
from tests.test_kernels_fused import _loss, _params, assert_grads_match, dense

MESHES = [(1, 1), (1, 2), (2, 2), (1, 4), (4, 2)]


# (mesh, B, d): (2, 2) and (4, 2) split the reconstruction's rows over 'dict' too and finish the
# second top-k stage row-split; (1, 4) with 6 rows per shard takes the fallbacks
# (all-reduced reconstructions, second stage repeated on every shard).
_SHAPES = [((2, 2), 16, 12), ((4, 2), 32, 12), ((1, 4), 6, 18)]
_FAST = {((2, 2), True, 7), ((1, 4), False, 7), ((4, 2), True, 0)}  # the rest of the grid is slow
_CASES = [pytest.param(m, B, d, native, n_dead,
                       marks=() if (m, native, n_dead) in _FAST else pytest.mark.slow)
          for m, B, d in _SHAPES for native in (True, False) for n_dead in (0, 7)]


@pytest.mark.parametrize("mesh_shape,B,d,native,n_dead", _CASES)
def test_sharded_values_and_grads_match_dense(mesh_shape, B, d, native, n_dead, monkeypatch):
    import sae_jax.kernels.sharded as sharded

    if native and not sharded._native():
        pytest.skip("native CPU kernels not built here")
    if not native:  # the pure-JAX per-shard backward (no C++ compiler, GPU)
        monkeypatch.setattr(sharded, "_native", lambda: False)
    mesh = make_mesh(MeshConfig(data=mesh_shape[0], dict=mesh_shape[1]),
                     jax.devices()[: mesh_shape[0] * mesh_shape[1]])
    F, k, k_aux = 256, 6, 10
    p = _params(jax.random.PRNGKey(n_dead), d, F)
    x = jax.random.normal(jax.random.PRNGKey(1), (B, d))
    dead = jnp.zeros((F,), bool).at[jnp.arange(n_dead) * 37].set(True)  # spread over the shards

    def sharded_loss(p, x):
        x_hat, _, _, e_hat, _ = sharded_autoencode(x, p, k, mesh, dead_mask=dead, k_aux=k_aux)
        return _loss(x_hat, e_hat, x)

    def dense_loss(p, x):
        x_hat, e_hat = dense(p, x, k, dead, k_aux)
        return _loss(x_hat, e_hat if n_dead else jnp.zeros_like(e_hat), x)

    x_hat, vals, idx, e_hat, on = jax.jit(
        lambda p, x: sharded_autoencode(x, p, k, mesh, dead_mask=dead, k_aux=k_aux))(p, x)
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    ref_vals, ref_idx = jax.lax.top_k(pre, k)
    np.testing.assert_array_equal(np.asarray(idx), np.asarray(ref_idx))
    np.testing.assert_allclose(np.asarray(vals), np.asarray(jax.nn.relu(ref_vals)), rtol=1e-6)
    rx, re = dense(p, x, k, dead, k_aux)
    np.testing.assert_allclose(np.asarray(x_hat), np.asarray(rx), rtol=1e-5, atol=1e-5)
    assert bool(on) == (n_dead > 0)
    np.testing.assert_allclose(np.asarray(e_hat), np.asarray(re if n_dead else jnp.zeros_like(re)),
                               rtol=1e-5, atol=1e-5)
    assert_grads_match(sharded_loss, dense_loss, p, x)


@pytest.mark.parametrize("mesh_shape", [(2, 2), (1, 4)])
def test_sharded_without_auxk_matches_dense(mesh_shape):
    """k_aux = 0: no AuxK outputs beyond empty ones, laid out like the real ones; same values and grads."""
    mesh = make_mesh(MeshConfig(data=mesh_shape[0], dict=mesh_shape[1]), jax.devices()[: mesh_shape[0] * mesh_shape[1]])
    p = _params(jax.random.PRNGKey(2), 12, 256)
    x = jax.random.normal(jax.random.PRNGKey(3), (16, 12))
    x_hat, vals, idx, e_hat, on = jax.jit(lambda p, x: sharded_autoencode(x, p, 6, mesh))(p, x)
    assert e_hat.shape == x_hat.shape == x.shape and not bool(on)
    np.testing.assert_allclose(np.asarray(x_hat), np.asarray(dense(p, x, 6, jnp.zeros(256, bool), 1)[0]),
                               rtol=1e-5, atol=1e-5)
    assert_grads_match(lambda p, x: jnp.sum(jnp.sin(sharded_autoencode(x, p, 6, mesh)[0]) * (x + 1.0)),
                       lambda p, x: jnp.sum(jnp.sin(dense(p, x, 6, jnp.zeros(256, bool), 1)[0]) * (x + 1.0)), p, x)


def _train(cfg, src, mesh_shape, steps):
    """Per-step metrics and the final state of the real jitted train step on a mesh."""
    cfg = dataclasses.replace(cfg, mesh=MeshConfig(data=mesh_shape[0], dict=mesh_shape[1]))
    pieces = assemble(cfg, src.d_in, devices=jax.devices()[: mesh_shape[0] * mesh_shape[1]])
    state = create_state(pieces.arch, pieces.optimizer, src.d_in, cfg.sae.d_sae, pieces.mesh, cfg.seed,
                         np.zeros(src.d_in, np.float32), 1.0)
    step = make_train_step(cfg, pieces.arch, pieces.optimizer, pieces.mesh, pieces.shardings)
    loader = BatchLoader(src, cfg.data.batch_size, cfg.data.seed, batch_sharding(pieces.mesh))
    history = []
    for t in range(steps):
        state, m = step(state, loader.device_batch(t))
        history.append({k: float(v) for k, v in jax.device_get(m).items()})
    return pieces.arch, state, history


def _cfg(impl):
    # many latents, few tokens and a one-batch dead window: AuxK (a sharded top-k too) runs
    cfg = tiny_config(d_sae=256, k=4, dead_tokens=64, impl=impl)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=64))


@pytest.fixture(scope="module")
def dense_reference():
    return _train(_cfg("dense"), synthetic_source(4096, 16, 48, 3), (1, 1), 8)


@pytest.mark.parametrize("mesh_shape", MESHES)
def test_sharded_sparse_step_matches_the_dense_single_device_step(mesh_shape, dense_reference):
    ref_arch, ref_state, ref_hist = dense_reference
    assert not isinstance(ref_arch, SparseTopKSAE)
    arch, state, hist = _train(_cfg("auto"), synthetic_source(4096, 16, 48, 3), mesh_shape, 8)
    assert isinstance(arch, SparseTopKSAE) and arch.mesh.devices.shape == mesh_shape  # auto picks it
    assert max(m["auxk"] for m in ref_hist) > 0 and ref_hist[-1]["dead_frac"] > 0  # AuxK really ran
    for t, (a, b) in enumerate(zip(ref_hist, hist)):
        for key in ("loss", "fvu", "l0", "auxk", "dead_frac", "grad_norm"):
            np.testing.assert_allclose(b[key], a[key], rtol=2e-5, atol=1e-6, err_msg=f"{key} step {t}")
    for name, value in ref_state.params.items():
        np.testing.assert_allclose(np.asarray(state.params[name]), np.asarray(value), rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    np.testing.assert_array_equal(np.asarray(state.tokens_since_fired), np.asarray(ref_state.tokens_since_fired))


@pytest.mark.parametrize("mesh_shape", [(2, 2), (1, 4), (4, 2)])
def test_sharded_batch_threshold_equals_the_flat_topk(mesh_shape):
    # BatchTopK's threshold: the m-th largest of the whole batch, with m both smaller and larger
    # than one device's block (then all of a block can be in the answer)
    from jax.sharding import NamedSharding

    from sae_jax.mesh import CODES_SPEC
    from sae_jax.topk_select import make_batch_kth

    mesh = make_mesh(MeshConfig(data=mesh_shape[0], dict=mesh_shape[1]),
                     jax.devices()[: mesh_shape[0] * mesh_shape[1]])
    acts = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    acts[:4, :16] += 10.0  # the largest entries crowd into one block
    arr = jax.device_put(acts, NamedSharding(mesh, CODES_SPEC))
    kth = make_batch_kth(mesh)
    for m in (5, 64, 200, 1000):
        got = jax.jit(lambda a: kth(a, m))(arr)
        assert float(got) == float(np.sort(acts.reshape(-1))[-m]), m


def test_sharded_sparse_step_compiles_without_a_full_sort():
    # XLA:CPU turns some top-k patterns into a full sort of the row (~25x slower); both stages
    # of the sharded top-k must stay TopK custom calls
    if jax.default_backend() != "cpu":
        pytest.skip("CPU lowering check")
    from sae_jax.bench.run import train_config
    from sae_jax.bench.step import build_step, init_state

    cfg = train_config("topk", 32, 2048, 8, 64, "float32", "auto", (1, 4), 0)
    built = build_step(cfg, 32, jax.devices()[:4])
    assert built.impl == "sparse"
    text = built.step.lower(init_state(built, cfg, 32), jax.ShapeDtypeStruct((64, 32), jnp.float32)
                            ).compile().as_text()
    assert " sort(" not in text
    assert "all-to-all" in text and "reduce-scatter" in text  # the row-split layout was taken
