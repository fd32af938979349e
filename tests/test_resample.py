"""Dead-latent resampling: new rows from high-loss inputs, moments reset, alive latents untouched."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sae_jax.resample import ResampleConfig, relu_sae_reconstruct, resample_dead, zero_latent_moments


def _sae(d=5, f=8, seed=0):
    rng = np.random.default_rng(seed)
    w_dec = rng.normal(size=(f, d))
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    return {"W_enc": jnp.asarray(rng.normal(size=(d, f)), jnp.float32), "b_enc": jnp.asarray(rng.normal(size=f), jnp.float32),
            "W_dec": jnp.asarray(w_dec, jnp.float32), "b_dec": jnp.asarray(rng.normal(size=d) * 0.1, jnp.float32)}


def _adam_state(params):
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))

    @jax.jit
    def one_step(params):
        grads = jax.tree.map(lambda p: jnp.ones_like(p), params)
        return opt.update(grads, opt.init(params), params)[1]  # non-zero mu/nu everywhere

    return one_step(params)


def test_loss_mode_picks_high_loss_input_and_resets_rows():
    params = _sae()
    dead = np.zeros(8, bool)
    dead[[1, 4, 6]] = True
    # One input far off the SAE's range: its squared error dwarfs the others', so every dead
    # latent must take it.
    b_dec = np.asarray(params["b_dec"])
    x_far = b_dec + 1000 * np.array([1.0, -0.3, 0.2, 0.0, 0.1], np.float32)
    x = np.vstack([np.tile(b_dec, (3, 1)), x_far[None]]).astype(np.float32)
    err = ((x - np.asarray(relu_sae_reconstruct(params, jnp.asarray(x)))) ** 2).sum(1)
    assert err[-1] ** 2 / (err ** 2).sum() > 1 - 1e-6
    state = _adam_state(params)
    out = jax.device_get(jax.jit(resample_dead)(params, state, jnp.asarray(dead), jnp.asarray(x), jax.random.key(0)))
    params = jax.device_get(params)
    assert int(out.count) == 3
    direction = x_far - np.asarray(params["b_dec"])
    unit = direction / np.linalg.norm(direction)
    alive_norm = np.linalg.norm(np.asarray(params["W_enc"]), axis=0)[~dead].mean()
    for i in range(8):
        if dead[i]:
            np.testing.assert_allclose(out.params["W_dec"][i], unit, rtol=1e-5)
            np.testing.assert_allclose(out.params["W_enc"][:, i], 0.2 * alive_norm * unit, rtol=1e-5)
            assert float(out.params["b_enc"][i]) == 0.0
        else:
            for name in ("W_dec", "b_enc"):
                np.testing.assert_array_equal(out.params[name][i], params[name][i])
            np.testing.assert_array_equal(out.params["W_enc"][:, i], params["W_enc"][:, i])
    np.testing.assert_array_equal(out.params["b_dec"], params["b_dec"])
    adam = out.opt_state[1][0]
    for moment in (adam.mu, adam.nu):
        assert np.all(np.asarray(moment["W_dec"])[dead] == 0) and np.all(np.asarray(moment["W_dec"])[~dead] != 0)
        assert np.all(np.asarray(moment["W_enc"])[:, dead] == 0) and np.all(np.asarray(moment["W_enc"])[:, ~dead] != 0)
        assert np.all(np.asarray(moment["b_enc"])[dead] == 0) and np.all(np.asarray(moment["b_enc"])[~dead] != 0)
        assert np.all(np.asarray(moment["b_dec"]) != 0)
    assert int(adam.count) == 1  # the step count is not per latent


def test_sampling_probability_is_loss_squared():
    # Two candidate inputs with squared errors e1, e2 under a zero SAE: P(second) = e2²/(e1²+e2²).
    d, f = 3, 4000
    params = {"W_enc": jnp.zeros((d, f)), "b_enc": jnp.zeros(f), "W_dec": jnp.eye(d, d)[jnp.zeros(f, int)],
              "b_dec": jnp.zeros(d)}
    x = jnp.array([[1.0, 0.0, 0.0], [0.0, np.sqrt(2.0), 0.0]])  # squared errors 1 and 2
    out = jax.jit(resample_dead)(params, (), jnp.ones(f, bool), x, jax.random.key(1))
    share_second = float(jnp.mean(jnp.abs(out.params["W_dec"][:, 1]) > 0.5))
    assert share_second == pytest.approx(4 / 5, abs=0.03)  # 3 sigma of a binomial(4000, 0.8) is 0.019


def test_random_mode_and_no_dead():
    params = _sae()
    jitted = jax.jit(resample_dead, static_argnames=("mode",))
    out = jitted(params, (), jnp.ones(8, bool), jnp.zeros((2, 5)), jax.random.key(2), mode="random")
    np.testing.assert_allclose(np.linalg.norm(out.params["W_dec"], axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(out.params["W_dec"], params["W_dec"])
    # all latents dead: the encoder norm falls back to enc_scale * 1
    np.testing.assert_allclose(np.linalg.norm(out.params["W_enc"], axis=0), 0.2, rtol=1e-5)
    none = jitted(params, (), jnp.zeros(8, bool), jnp.ones((2, 5)), jax.random.key(2))
    assert int(none.count) == 0
    for name in params:
        np.testing.assert_array_equal(none.params[name], params[name])


def test_zero_latent_moments_leaves_other_shapes_alone():
    mask = jnp.array([True, False, True])
    state = {"W_enc": jnp.ones((2, 3)), "W_dec": jnp.ones((3, 2)), "b_enc": jnp.ones(3), "b_dec": jnp.ones(2),
             "other": {"W_enc": jnp.ones(())}}
    out = zero_latent_moments(state, mask)
    np.testing.assert_array_equal(out["W_enc"], [[0, 1, 0], [0, 1, 0]])
    np.testing.assert_array_equal(out["W_dec"], [[0, 0], [1, 1], [0, 0]])
    np.testing.assert_array_equal(out["b_enc"], [0, 1, 0])
    np.testing.assert_array_equal(out["b_dec"], [1, 1])
    assert float(out["other"]["W_enc"]) == 1.0


def test_config_and_errors():
    cfg = ResampleConfig(every=100)
    assert [s for s in range(0, 401) if cfg.due(s)] == [100, 200, 300, 400]
    assert not ResampleConfig(every=0).due(100)
    with pytest.raises(ValueError, match="mode"):
        resample_dead(_sae(), (), jnp.zeros(8, bool), jnp.zeros((2, 5)), jax.random.key(0), mode="kmeans")
    with pytest.raises(ValueError, match="dead_mask"):
        resample_dead(_sae(), (), jnp.zeros(7, bool), jnp.zeros((2, 5)), jax.random.key(0))


def test_resample_train_state_revives_dead_latents_in_core_training():
    """On the core TrainState with a ReLU SAE: dead latents come back and fire after resampling."""
    from sae_jax.config import MeshConfig, OptimConfig, SAEConfig, TrainConfig
    from sae_jax.data.synthetic import synthetic_source
    from sae_jax.mesh import make_mesh
    from sae_jax.optim import make_optimizer
    from sae_jax.resample import resample_train_state
    from sae_jax.sae.relu import ReluSAE
    from sae_jax.train_state import create_state
    from sae_jax.train_step import make_step_fn

    src = synthetic_source(4096, 8, 16, 2.0, seed=0)
    x = jnp.asarray(src.read(np.arange(512)))
    cfg = TrainConfig(sae=SAEConfig(architecture="relu", d_sae=16, sparsity_coef=0.5, dead_tokens=256),
                      optim=OptimConfig(lr=1e-2, warmup_steps=0))
    arch, opt = ReluSAE(), make_optimizer(cfg)
    mesh = make_mesh(MeshConfig(data=1, dict=1), jax.devices()[:1])
    state = create_state(arch, opt, 8, 16, mesh, 0, b_dec=np.zeros(8, np.float32), input_scale=1.0)
    # Kill half the latents: encoder bias so negative they never fire.
    kill = np.arange(16) % 2 == 0
    state = state.replace(params=state.params | {"b_enc": jnp.where(kill, -1e3, state.params["b_enc"])})
    step = jax.jit(make_step_fn(cfg, arch, opt))
    for t in range(4):
        state, _ = step(state, x[128 * t:128 * (t + 1)])
    dead = np.asarray(state.tokens_since_fired >= 256)
    np.testing.assert_array_equal(dead, kill)
    state, count = resample_train_state(state, x, jax.random.key(0), ResampleConfig(dead_window=256))
    assert int(count) == kill.sum()
    np.testing.assert_array_equal(np.asarray(state.tokens_since_fired)[kill], 0)
    state, _ = step(state, x[:128])  # and the state still trains after resampling
    h = arch.encode(state.params, state.arch_state, x)
    assert np.all(np.asarray((h > 0).any(axis=0))[kill])  # every resampled latent fires again
