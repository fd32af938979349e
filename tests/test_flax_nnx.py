"""sae_jax.flax_nnx.SAE: the library's architectures as Flax NNX modules. Encode/decode equal the export's
NumPy path, and one step of a user-written nnx.Optimizer loop equals the library's own train step."""
import numpy as np
import optax
import pytest
from flax import nnx

import jax
import jax.numpy as jnp

from sae_jax.assemble import assemble
from sae_jax.config import DataConfig, OptimConfig, SAEConfig, TrainConfig
from sae_jax.flax_nnx import SAE
from sae_jax.train_state import create_state
from sae_jax.train_step import make_step_fn


@pytest.mark.parametrize("sae_cfg", [
    SAEConfig(architecture="topk", d_sae=48, k=4),
    SAEConfig(architecture="batchtopk", d_sae=48, k=4),
    SAEConfig(architecture="relu", d_sae=48, sparsity_coef=0.3, sparsity_warmup_steps=0),
    SAEConfig(architecture="jumprelu", d_sae=48, sparsity_coef=0.1, sparsity_warmup_steps=0),
], ids=lambda c: c.architecture)
def test_one_user_loop_step_equals_the_library_step(sae_cfg):
    d_in = 12
    cfg = TrainConfig(steps=10, sae=sae_cfg, data=DataConfig(batch_size=64), optim=OptimConfig(lr=3e-3, warmup_steps=0))
    pieces = assemble(cfg, d_in, devices=jax.devices()[:1])
    x = jnp.asarray(np.random.default_rng(0).normal(size=(64, d_in)).astype(np.float32))
    b_dec = jnp.asarray(np.median(np.asarray(x), 0))
    state = create_state(pieces.arch, pieces.optimizer, d_in, sae_cfg.d_sae, pieces.mesh, 0, b_dec, 1.0)
    model = SAE(pieces.arch, jax.device_get(state.params), jax.device_get(state.arch_state),
                decoder_unit_norm=sae_cfg.decoder_unit_norm, sparsity_coef=sae_cfg.sparsity_coef)
    opt = nnx.Optimizer(model, pieces.optimizer, wrt=nnx.Param)

    @nnx.jit
    def user_step(model, opt, x):
        (loss, out), grads = nnx.value_and_grad(lambda m: m.loss(x), has_aux=True)(model)
        opt.update(model, grads)
        model.update_state(out)
        model.project_decoder()
        return loss

    lib_step = jax.jit(make_step_fn(cfg, pieces.arch, pieces.optimizer))
    for _ in range(2):
        loss = user_step(model, opt, x)
        state, metrics = lib_step(state, x)
        assert float(loss) == pytest.approx(float(metrics["loss"]), rel=1e-5)
    for name, value in state.params.items():
        np.testing.assert_allclose(np.asarray(model.params()[name]), np.asarray(value), rtol=2e-5, atol=1e-6)
    for name, value in state.arch_state.items():
        np.testing.assert_allclose(np.asarray(model.arch_state()[name]), np.asarray(value), rtol=1e-5, atol=1e-7)


def test_module_from_an_export_encodes_like_the_export(tmp_path):
    from sae_jax.export import export_state, load_sae

    d_in = 10
    for arch_name, extra in (("topk", dict(k=3)), ("relu", {})):
        cfg = TrainConfig(sae=SAEConfig(architecture=arch_name, d_sae=24, **extra))
        pieces = assemble(cfg, d_in, devices=jax.devices()[:1])
        state = create_state(pieces.arch, pieces.optimizer, d_in, 24, pieces.mesh, 1, jnp.ones(d_in) * 0.1, 0.7)
        export_state(tmp_path / arch_name, pieces.arch, state)
        x = np.random.default_rng(1).normal(size=(20, d_in)).astype(np.float32)
        ref = load_sae(tmp_path / arch_name)
        m = SAE.from_export(tmp_path / arch_name)
        np.testing.assert_allclose(np.asarray(m.encode(jnp.asarray(x))), ref.encode(x), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(m(jnp.asarray(x))), ref.decode(ref.encode(x)), rtol=1e-5, atol=1e-5)


def test_unsupported_inputs_are_refused():
    with pytest.raises(ValueError, match="primal-dual"):
        SAE.create(SAEConfig(architecture="ssae", d_sae=8), 4, nnx.Rngs(0))
    m = SAE.create(SAEConfig(architecture="topk", d_sae=16, k=2), 6, nnx.Rngs(0))
    assert m.encode(jnp.ones((3, 6))).shape == (3, 16) and float((m.encode(jnp.ones((3, 6))) > 0).sum(1).max()) <= 2
    assert isinstance(optax.adam(1e-3), optax.GradientTransformation)
