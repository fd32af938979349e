"""SSAE primal–dual training on 8 forced host devices: every mesh gives the (1, 1) result."""
import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sae_jax.config import MeshConfig  # noqa: E402
from sae_jax.data.shifts import multi_concept_shifts  # noqa: E402
from sae_jax.mesh import make_mesh  # noqa: E402
from sae_jax.sae.ssae import SSAE  # noqa: E402
from sae_jax.ssae_train import SSAETrainConfig, train_ssae  # noqa: E402

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (forced host) devices")


@pytest.mark.parametrize("ssae,scheme,meshes", [
    (SSAE(target=0.3, warmup=5, schedule=10), "extragradient", [(1, 1), (8, 1), (4, 2), (2, 4)]),
    (SSAE(target=0.3, warmup=5, schedule=10, input_norm="batch", code_norm="batchnorm"), "alternating",
     [(1, 1), (2, 4)])],
    ids=["layernorm-extragradient", "batchstats-alternating"])
def test_meshes_agree(ssae, scheme, meshes):
    src = multi_concept_shifts(2048, 16, 8, seed=0)
    cfg = SSAETrainConfig(ssae=ssae, d_sae=8, steps=15, batch_size=64, lr=3e-3, dual_lr=0.5, scheme=scheme)
    results = {}
    for data, dict_ in meshes:
        mesh = make_mesh(MeshConfig(data=data, dict=dict_), jax.devices()[: data * dict_])
        run = train_ssae(cfg, src, mesh, log_every=5)
        w = run.state.params["W_enc"]
        if dict_ > 1:  # the dictionary really is split over the 'dict' axis
            assert w.sharding.shard_shape(w.shape) == (16, 8 // dict_)
        results[(data, dict_)] = (jax.device_get(run.state.params), float(run.state.opt.multipliers.ineq[0]),
                                  run.history)
    ref_params, ref_lam, ref_hist = results[(1, 1)]
    assert ref_lam > 0  # the constraint was active, so the dual path is exercised
    for key, (params, lam, hist) in results.items():
        for name in ref_params:
            np.testing.assert_allclose(params[name], ref_params[name], rtol=2e-4, atol=2e-5, err_msg=f"{key} {name}")
        assert lam == pytest.approx(ref_lam, rel=1e-4, abs=1e-6)
        assert [h["mean_abs_h"] for h in hist] == pytest.approx([h["mean_abs_h"] for h in ref_hist], rel=1e-4)


def test_core_trainstate_step_matches_standalone():
    """The step on the core TrainState (what `sae-jax train --preset ssae` runs) equals train_ssae."""
    from sae_jax.constraints import BoundConstrainedOptimizer
    from sae_jax.data.loader import BatchLoader
    from sae_jax.mesh import batch_sharding, replicated
    from sae_jax.ssae_train import make_constrained_optimizer, make_trainstate_step_fn
    from sae_jax.train_state import create_state

    src = multi_concept_shifts(1024, 16, 8, seed=0)
    cfg = SSAETrainConfig(ssae=SSAE(target=0.3, warmup=5, schedule=10), d_sae=8, steps=15, batch_size=64,
                          lr=3e-3, dual_lr=0.5)
    mesh = make_mesh(MeshConfig(data=4, dict=2), jax.devices()[:8])
    ref = train_ssae(cfg, src, mesh)
    copt = BoundConstrainedOptimizer(make_constrained_optimizer(cfg), num_ineq=1)
    state = create_state(cfg.ssae, copt, 16, 8, mesh, cfg.seed, b_dec=np.zeros(16, np.float32), input_scale=1.0)
    from sae_jax.mesh import state_shardings
    shardings = state_shardings(mesh, state)
    step = jax.jit(make_trainstate_step_fn(cfg.ssae, copt, dead_tokens=10_000), in_shardings=(shardings, batch_sharding(mesh)),
                   out_shardings=(shardings, replicated(mesh)), donate_argnums=0)
    loader = BatchLoader(src, cfg.batch_size, cfg.data_seed, batch_sharding(mesh))
    for t in range(cfg.steps):
        state, metrics = step(state, loader.device_batch(t))
    for name, value in jax.device_get(ref.state.params).items():
        np.testing.assert_allclose(jax.device_get(state.params[name]), value, rtol=1e-5, atol=1e-6)
    assert float(metrics["multiplier"]) > 0
