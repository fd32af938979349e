"""Shift autoencoder: NumPy reference of the forward pass, schedule, export folding, and the
acceptance run of `sae-jax train ssae` on synthetic multi-concept shifts (recovery at the
target sparsity, where a fixed L1 penalty misses it)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sae_jax.config import DualConfig
from sae_jax.data.shifts import DifferenceSource, multi_concept_shifts
from sae_jax.data.source import ArraySource
from sae_jax.evals.identifiability import match_directions
from sae_jax.export import load_sae
from sae_jax.sae.ssae import SSAE
from sae_jax.trainer import train
from tests.helpers_train import ssae_config


def _np_forward(p, x, ssae, state):
    x = x.astype(np.float64)
    if ssae.input_norm == "layernorm":  # SAELens: unbiased std, eps added to the std
        mu = x.mean(1, keepdims=True)
        std = np.sqrt(((x - mu) ** 2).sum(1, keepdims=True) / (x.shape[1] - 1))
        var = (std + ssae.eps) ** 2 - ssae.eps
    elif ssae.input_norm == "batch":
        mu, var = x.mean(0), x.var(0)
    else:
        mu, var = 0.0, 1.0 - ssae.eps
    xn = (x - mu) / np.sqrt(var + ssae.eps)
    pre = (xn - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    if ssae.code_norm == "layernorm":
        pre = (pre - pre.mean(1, keepdims=True)) / np.sqrt(pre.var(1, keepdims=True) + ssae.eps)
        pre = pre * p["code_gamma"] + p["code_beta"]
    elif ssae.code_norm == "batchnorm":
        pre = (pre - pre.mean(0)) / np.sqrt(pre.var(0) + ssae.eps) * p["code_gamma"] + p["code_beta"]
    h = np.maximum(pre, 0) if ssae.relu else pre
    xh = h @ p["W_dec"] + p["b_dec"]
    if ssae.loss_type == "relative":
        loss = np.mean(((xn - xh) ** 2).sum(1) / (xn ** 2).sum(1))
    else:
        loss = np.mean((xn - xh) ** 2)
    return h, loss


def _random_params(ssae, d, f, seed=0):
    rng = np.random.default_rng(seed)
    p = {k: np.asarray(v, np.float64) for k, v in ssae.init_params(jax.random.key(seed), d, f).items()}
    p["b_enc"] = rng.normal(size=f) * 0.1
    p["b_dec"] = rng.normal(size=d) * 0.1
    if "code_gamma" in p:
        p["code_gamma"] = rng.uniform(0.5, 1.5, f)
        p["code_beta"] = rng.normal(size=f) * 0.1
    return p


@pytest.mark.parametrize("kw", [
    {}, {"input_norm": "batch"}, {"input_norm": "none", "loss_type": "absolute"},
    {"code_norm": "layernorm"}, {"code_norm": "batchnorm", "relu": True},
])
def test_forward_matches_numpy(kw):
    ssae = SSAE(target=0.3, warmup=5, schedule=10, **kw)
    d, f = 12, 7
    p = _random_params(ssae, d, f)
    x = np.random.default_rng(1).normal(size=(32, d)).astype(np.float32)
    h_ref, loss_ref = _np_forward(p, x, ssae, None)
    pj = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)
    state = ssae.init_state(f, d_in=d)
    out = jax.jit(ssae.problem)(pj, state, jnp.asarray(x), jnp.int32(100))  # after warm-up + schedule
    np.testing.assert_allclose(out.loss, loss_ref, rtol=2e-4)
    # violation Σ|h|/(B·F) − target (dense level measured earlier is irrelevant at t >= end)
    np.testing.assert_allclose(out.ineq[0], np.abs(h_ref).sum() / h_ref.size - 0.3, rtol=1e-4, atol=1e-5)


def test_level_schedule_and_warmup():
    ssae = SSAE(target=0.2, warmup=10, schedule=20)
    dense = jnp.float32(1.0)
    for step, expect in [(0, 1.0), (10, 1.0), (20, 0.6), (30, 0.2), (100, 0.2)]:
        assert float(ssae.level(dense, step)) == pytest.approx(expect)
    d, f = 6, 4
    params = ssae.init_params(jax.random.key(0), d, f)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, d)), jnp.float32)
    problem = jax.jit(ssae.problem)
    out = problem(params, ssae.init_state(f), x, jnp.int32(3))
    assert float(out.ineq[0]) == 0.0  # no constraint during warm-up
    assert float(out.aux.state["dense_level"]) > 0  # but the dense level is being measured
    out0 = problem(params, ssae.init_state(f), x, jnp.int32(0))
    np.testing.assert_allclose(out0.aux.state["dense_level"], jnp.mean(jnp.abs(ssae.encode(params, ssae.init_state(f), x))),
                               rtol=1e-5)


def test_export_folds_batch_statistics():
    ssae = SSAE(input_norm="batch", code_norm="batchnorm", relu=True)
    d, f = 10, 6
    rng = np.random.default_rng(3)
    p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), _random_params(ssae, d, f, 3))
    state = ssae.init_state(f, d_in=d) | {
        "in_mean": jnp.asarray(rng.normal(size=d), jnp.float32), "in_var": jnp.asarray(rng.uniform(0.5, 2, d), jnp.float32),
        "code_mean": jnp.asarray(rng.normal(size=f), jnp.float32), "code_var": jnp.asarray(rng.uniform(0.5, 2, f), jnp.float32)}
    x = rng.normal(size=(20, d)).astype(np.float32)
    e = {k: np.asarray(v, np.float64) for k, v in jax.jit(ssae.export_params)(p, state).items()}
    h = np.maximum((x - e["b_dec"]) @ e["W_enc"] + e["b_enc"], 0)  # SAELens 'standard'
    np.testing.assert_allclose(h, jax.jit(ssae.encode)(p, state, jnp.asarray(x)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h @ e["W_dec"] + e["b_dec"], jax.jit(ssae.reconstruct)(p, state, jnp.asarray(x)),
                               rtol=1e-4, atol=1e-4)
    assert ssae.export_cfg() == {"architecture": "standard", "normalize_activations": "none"}
    # a code LayerNorm is not folded: exported beside the linear part, under sae_jax's own architecture name
    ln = SSAE(code_norm="layernorm", relu=True)
    assert ln.export_cfg()["architecture"] == "code_layernorm"
    assert {"code_gamma", "code_beta"} <= set(ln.export_params(p, state))


def test_bad_config_errors():
    with pytest.raises(ValueError, match="input_norm"):
        SSAE(input_norm="rms")
    with pytest.raises(ValueError, match="target"):
        SSAE(target=0.0)
    with pytest.raises(ValueError, match="d_in"):
        SSAE(input_norm="batch").init_state(4)


def test_difference_sources():
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    b = a ** 2
    paired = DifferenceSource(ArraySource(a), ArraySource(b))
    np.testing.assert_array_equal(paired.read(np.array([2, 0])), (b - a)[[2, 0]])
    seq = DifferenceSource(ArraySource(b), kind="sequential")
    assert seq.n_rows == 3
    np.testing.assert_array_equal(seq.read(np.array([0, 2])), np.diff(b, axis=0)[[0, 2]])
    with pytest.raises(ValueError, match="aligned"):
        DifferenceSource(ArraySource(a), ArraySource(b[:3]))
    with pytest.raises(IndexError):
        seq.read(np.array([3]))


def _layernorm_level(src, n_latents, eps=1e-5):
    """Σ|h|/(B·F) of the ground-truth code in the SSAE's LayerNorm-ed input space."""
    x = src.read(np.arange(src.n_rows)).astype(np.float64)
    A, C = src.metadata["directions"].astype(np.float64), src.metadata["codes"].astype(np.float64)
    norms = np.linalg.norm(A - A.mean(1, keepdims=True), axis=1)  # LN centres each row
    return float(np.sum(np.abs(C) * norms / (x.std(1, ddof=1) + eps)[:, None]) / (len(x) * n_latents))


SMALL = dict(n_rows=16384, d=16, n_concepts=6, p_active=0.3, noise=0.01)


def _train(tmp_path, name, src, target, dual=DualConfig(), warmup=100):
    """`sae-jax train ssae` (the core trainer) on ``src``, on the default mesh over all 8 devices."""
    cfg = ssae_config(tmp_path / name, target=target, warmup=warmup, schedule=400, steps=2000,
                      d_sae=SMALL["n_concepts"], dual=dual)
    return train(cfg, source=src)


def _achieved(result, x):
    """Σ|h|/(B·F) on rows never trained on, through the exported SAE (what a user loads)."""
    return float(np.mean(np.abs(load_sae(result.export_dir).encode(x))))


@pytest.mark.slow  # ~40 s: two fixed-λ runs next to the constrained one
def test_ssae_recovers_concepts_at_target_sparsity_where_l1_misses(tmp_path):
    src = multi_concept_shifts(**SMALL, seed=1)
    A = src.metadata["directions"]
    target = _layernorm_level(src, SMALL["n_concepts"])
    x_eval = multi_concept_shifts(**(SMALL | {"n_rows": 4096}), seed=1).read(np.arange(4096))
    result = _train(tmp_path, "ssae", src, target)
    assert result.state.params["W_enc"].sharding.mesh.shape["data"] == jax.device_count()  # the mesh path
    W = np.asarray(result.state.params["W_dec"])
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), 1.0, rtol=1e-5)  # unit-norm decoder rows
    mean_cos, share, _ = match_directions(A - A.mean(1, keepdims=True), W)  # directions in LN space
    achieved = _achieved(result, x_eval)
    assert mean_cos >= 0.9 and share == 1.0, (mean_cos, share)
    assert abs(achieved - target) <= 0.1 * target, (achieved, target)
    # The same model with a fixed L1 coefficient far from the one the dual found misses the
    # target: the penalty has to be tuned, the constraint does not.
    lam = float(result.state.opt_state.multipliers.ineq[0])
    assert lam > 0 and result.metrics["multiplier"] > 0
    for i, fixed in enumerate((lam / 20, lam * 20)):
        l1 = _achieved(_train(tmp_path, f"l1-{i}", src, target, DualConfig(fixed_multiplier=fixed), warmup=0), x_eval)
        assert abs(l1 - target) > 0.1 * target, (fixed, l1, target)


def test_ssae_augmented_lagrangian_meets_target(tmp_path):
    src = multi_concept_shifts(**SMALL, seed=1)
    A = src.metadata["directions"]
    target = _layernorm_level(src, SMALL["n_concepts"])
    x_eval = multi_concept_shifts(**(SMALL | {"n_rows": 4096}), seed=1).read(np.arange(4096))
    result = _train(tmp_path, "al", src, target,
                    DualConfig(formulation="augmented_lagrangian", penalty_init=1e-2, lr=1e-2))
    mean_cos, _, _ = match_directions(A - A.mean(1, keepdims=True), np.asarray(result.state.params["W_dec"]))
    assert mean_cos >= 0.9
    assert abs(_achieved(result, x_eval) - target) <= 0.1 * target


def test_l0_constraint_dual_sees_true_share_primal_the_surrogate():
    ssae = SSAE(target=0.25, warmup=0, schedule=0, relu=True, constraint="l0", input_norm="none")
    d, f = 6, 5
    params = ssae.init_params(jax.random.key(0), d, f)
    params["b_enc"] = jnp.array([-5.0, 0.0, 0.0, -5.0, 0.0])  # two latents can never fire
    x = jnp.asarray(np.random.default_rng(0).normal(size=(64, d)), jnp.float32)
    out = jax.jit(ssae.problem)(params, ssae.init_state(f), x, jnp.int32(10))
    h = np.maximum((np.asarray(x) - 0) @ np.asarray(params["W_enc"]) + np.asarray(params["b_enc"]), 0)
    np.testing.assert_allclose(out.strict_ineq[0], (h > 0).mean() - 0.25, rtol=1e-5)  # true L0 share − target
    np.testing.assert_allclose(out.ineq[0], np.abs(h).mean(), rtol=1e-5)  # differentiable surrogate
    with pytest.raises(ValueError, match="relu"):
        SSAE(constraint="l0")


def test_ssae_run_configs_that_cannot_work_are_refused(tmp_path):
    from sae_jax.config import ConfigError, validate

    cfg = ssae_config(tmp_path / "run", target=0.3)
    validate(cfg)
    bad = {
        "normalises its own input": dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, normalize="expected_norm")),
        "resample": dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, resample_every=100)),
        "needs --data.store or --data.npy": dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, difference="sequential")),
        "data.second": dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, npy="a.npy", difference="paired")),
        "fixed_multiplier must be": dataclasses.replace(cfg, dual=DualConfig(fixed_multiplier=-1.0)),
        "needs --dual.formulation lagrangian": dataclasses.replace(
            cfg, dual=DualConfig(fixed_multiplier=0.1, formulation="augmented_lagrangian")),
        "never enforced": dataclasses.replace(cfg, dual=DualConfig(lr=0.0)),
        "dual.optimizer": dataclasses.replace(cfg, dual=DualConfig(optimizer="Adam")),
        "decoder-unit-norm": dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, decoder_unit_norm=False)),
        "loss-type": dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, recon_loss="mse")),
        "cannot hold a LayerNorm": ssae_config(tmp_path, target=0.3, code_norm="layernorm", export_as="split"),
        "keep the default": ssae_config(tmp_path, target=0.3, eps=0.5),
        "signed codes": ssae_config(tmp_path, target=0.3, relu=True, export_as="split"),
        "data.difference": dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, difference="seq")),
    }
    for message, c in bad.items():
        with pytest.raises(ConfigError, match=message):
            validate(c)
    with pytest.raises(ConfigError, match="relu"):
        ssae_config(tmp_path, target=0.3, constraint="l0")
    whiten = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, whiten=True, n_stat_rows=100))
    with pytest.raises(ConfigError, match="n-stat-rows to at least 128"):
        validate(whiten, d_in=64)
