"""The one-pass native Adam step (optim.fused_adam_update) against the optax chain it replaces."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sae_jax.config import MeshConfig, OptimConfig, SAEConfig, TrainConfig
from sae_jax.decoder_norm import project_rows
from sae_jax.kernels import cpu_kernels
from sae_jax.mesh import PARAM_SPECS, make_mesh, state_shardings
from sae_jax.optim import fused_adam_applies, fused_adam_update, make_optimizer

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu" or not cpu_kernels.available(),
                                reason="native CPU kernels not built here")


def _cfg(unit_norm=True, clip=0.0, decay="linear", warmup=3):
    return TrainConfig(steps=12, sae=SAEConfig(d_sae=96, k=4, decoder_unit_norm=unit_norm),
                       optim=OptimConfig(lr=3e-2, warmup_steps=warmup, decay=decay, max_grad_norm=clip))


def _params(key, d=24, F=96):
    k = jax.random.split(key, 4)
    w_dec = jax.random.normal(k[1], (F, d))
    return {"W_enc": jax.random.normal(k[0], (d, F)), "W_dec": w_dec / jnp.linalg.norm(w_dec, axis=1, keepdims=True),
            "b_enc": 0.1 * jax.random.normal(k[2], (F,)), "b_dec": 0.1 * jax.random.normal(k[3], (d,))}


def _mesh(shape):
    return None if shape is None else make_mesh(MeshConfig(data=shape[0], dict=shape[1]), jax.devices()[:shape[0] * shape[1]])


@pytest.mark.parametrize("unit_norm,mesh_shape,constant_lr", [(True, None, False), (False, None, False),
                                                              (True, (1, 4), False), (False, (2, 2), False),
                                                              (True, (8, 1), True)])
def test_matches_the_optax_chain_over_steps(unit_norm, mesh_shape, constant_lr):
    """On a mesh, each device updates its block of the sharded parameters (laid out as in training);
    a constant schedule (no warm-up or decay: a Python float, not an array) works too."""
    cfg = _cfg(unit_norm, decay="none", warmup=0) if constant_lr else _cfg(unit_norm)
    opt = make_optimizer(cfg)
    mesh = _mesh(mesh_shape)
    p_ref = _params(jax.random.PRNGKey(0))
    s_ref = opt.init(p_ref)
    p_fused, s_fused = p_ref, s_ref
    if mesh is not None:
        p_fused, s_fused = jax.device_put((p_ref, s_ref), state_shardings(mesh, (p_ref, s_ref)))
        assert p_fused["W_dec"].sharding.spec == PARAM_SPECS["W_dec"]

    @jax.jit
    def ref(p, s, g):
        u, s = opt.update(g, s, p)
        p = optax.apply_updates(p, u)
        return (project_rows(p) if unit_norm else p), s, optax.tree.norm(g)

    @jax.jit
    def fused(p, s, g):
        p, s, sq = fused_adam_update(cfg, g, s, p, mesh)
        return p, s, jnp.sqrt(sq)

    for t in range(cfg.steps):  # warm-up, then linear decay: lr and bias corrections change every step
        g = jax.tree.map(lambda a, t=t: jax.random.normal(jax.random.PRNGKey(100 + t), a.shape) * (1 + t), p_ref)
        p_ref, s_ref, n_ref = ref(p_ref, s_ref, g)
        p_fused, s_fused, n_fused = fused(p_fused, s_fused, g)
        np.testing.assert_allclose(float(n_fused), float(n_ref), rtol=1e-6)
    assert jax.tree.structure(s_fused) == jax.tree.structure(s_ref)  # checkpoints stay interchangeable
    for a, b in zip(jax.tree.leaves(s_fused), jax.tree.leaves(s_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)  # moments are O(1-10)
    for name in p_ref:
        np.testing.assert_allclose(np.asarray(p_fused[name]), np.asarray(p_ref[name]), rtol=2e-5, atol=2e-6,
                                   err_msg=name)
    if unit_norm:
        np.testing.assert_allclose(np.linalg.norm(np.asarray(p_fused["W_dec"]), axis=1), 1.0, rtol=1e-6)


def test_used_only_where_it_reproduces_the_optimizer():
    cfg = _cfg()
    assert fused_adam_applies(cfg, make_optimizer(cfg))
    assert fused_adam_applies(cfg, make_optimizer(cfg), _mesh((2, 4)))  # each device its own blocks
    clip = _cfg(clip=1.0)
    assert not fused_adam_applies(clip, make_optimizer(clip))  # clipping needs the norm before Adam
    assert not fused_adam_applies(cfg, make_optimizer(_cfg(decay="cosine")))  # built for another config
    assert not fused_adam_applies(cfg, optax.adam(1e-3))  # a custom optimizer
    with pytest.raises(TypeError, match="make_optimizer"):
        p = _params(jax.random.PRNGKey(0))
        fused_adam_update(cfg, p, optax.adam(1e-3).init(p), p)


@pytest.mark.parametrize("n_devices,n_dict", [(1, 1), (8, 4)])
def test_train_step_runs_it_and_matches_the_unfused_step(n_devices, n_dict):
    from sae_jax.assemble import assemble
    from sae_jax.data.loader import BatchLoader
    from sae_jax.data.synthetic import synthetic_source
    from sae_jax.mesh import batch_sharding
    from sae_jax.train_state import create_state
    from sae_jax.train_step import make_step_fn, make_train_step
    from tests.helpers_train import tiny_config

    cfg = dataclasses.replace(tiny_config(d_sae=128, k=4), mesh=MeshConfig(dict=n_dict))
    src = synthetic_source(4096, 16, 48, 3)
    pieces = assemble(cfg, src.d_in, devices=jax.devices()[:n_devices])
    new = lambda: create_state(pieces.arch, pieces.optimizer, src.d_in, cfg.sae.d_sae, pieces.mesh, cfg.seed,
                               np.zeros(src.d_in, np.float32), 1.0)
    fused = make_train_step(cfg, pieces.arch, pieces.optimizer, pieces.mesh, pieces.shardings)
    plain = jax.jit(make_step_fn(cfg, pieces.arch, pieces.optimizer), in_shardings=(pieces.shardings, None),
                    out_shardings=(pieces.shardings, None))
    loader = BatchLoader(src, cfg.data.batch_size, cfg.data.seed, batch_sharding(pieces.mesh))
    assert "sae_jax_adam_f32" in fused.lower(new(), loader.device_batch(0)).as_text()
    s_f, s_p = new(), new()
    for t in range(6):
        s_f, m_f = fused(s_f, loader.device_batch(t))
        s_p, m_p = plain(s_p, loader.device_batch(t))
        for key in ("loss", "fvu", "l0", "grad_norm"):
            np.testing.assert_allclose(float(m_f[key]), float(m_p[key]), rtol=2e-5, err_msg=key)
    for name in s_p.params:
        np.testing.assert_allclose(np.asarray(s_f.params[name]), np.asarray(s_p.params[name]), rtol=1e-4, atol=1e-6,
                                   err_msg=name)
