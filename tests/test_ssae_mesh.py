"""SSAE primal–dual training on 8 forced host devices: every mesh gives the (1, 1) result, and
`sae-jax train ssae` (the core trainer) runs on a dictionary-sharded mesh."""
import dataclasses
import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sae_jax.config import DualConfig, MeshConfig  # noqa: E402
from sae_jax.data.shifts import multi_concept_shifts  # noqa: E402
from sae_jax.trainer import train  # noqa: E402
from tests.helpers_train import run_steps, ssae_config  # noqa: E402

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (forced host) devices")


@pytest.mark.parametrize("ssae,scheme,meshes", [
    ({}, "extragradient", [(1, 1), (8, 1), (4, 2), (2, 4)]),
    ({"input_norm": "batch", "code_norm": "batchnorm"}, "alternating", [(1, 1), (2, 4)])],
    ids=["layernorm-extragradient", "batchstats-alternating"])
def test_meshes_agree(ssae, scheme, meshes):
    src = multi_concept_shifts(2048, 16, 8, seed=0)
    cfg = ssae_config("/tmp/unused", target=0.3, batch_size=64, lr=3e-3, dual=DualConfig(lr=0.5, scheme=scheme), **ssae)
    results = {}
    for data, dict_ in meshes:
        state, metrics, _ = run_steps(cfg, src, 15, mesh_shape=(data, dict_))
        w = state.params["W_enc"]
        if dict_ > 1:  # the dictionary really is split over the 'dict' axis
            assert w.sharding.shard_shape(w.shape) == (16, 8 // dict_)
        results[(data, dict_)] = (jax.device_get(state.params), float(state.opt_state.multipliers.ineq[0]), metrics)
    ref_params, ref_lam, ref_metrics = results[(1, 1)]
    assert ref_lam > 0  # the constraint was active, so the dual path is exercised
    for key, (params, lam, metrics) in results.items():
        for name in ref_params:
            np.testing.assert_allclose(params[name], ref_params[name], rtol=2e-4, atol=2e-5, err_msg=f"{key} {name}")
        assert lam == pytest.approx(ref_lam, rel=1e-4, abs=1e-6)
        assert metrics["mean_abs_h"] == pytest.approx(ref_metrics["mean_abs_h"], rel=1e-4)


def test_trainer_on_a_dictionary_sharded_mesh_equals_one_device(tmp_path):
    """The whole `sae-jax train ssae` loop (whitening, b_dec init, checkpoints, export) on a
    (4, 2) mesh, against the same steps on one device."""
    src = multi_concept_shifts(2048, 16, 8, seed=0)
    cfg = ssae_config(tmp_path / "run", target=0.3, batch_size=64, lr=3e-3, steps=15, dual=DualConfig(lr=0.5),
                      data={"whiten": True, "whiten_eps": 1e-2})
    cfg = dataclasses.replace(cfg, mesh=MeshConfig(data=4, dict=2))
    result = train(cfg, source=src)
    w = result.state.params["W_enc"]
    assert w.sharding.shard_shape(w.shape) == (16, 4)
    one, _, _ = run_steps(cfg, src, 15, mesh_shape=(1, 1), trainer_init=True)
    for name, value in jax.device_get(one.params).items():
        np.testing.assert_allclose(jax.device_get(result.state.params[name]), value, rtol=2e-4, atol=2e-5, err_msg=name)
    # and the export (whitening beside, LayerNorm) gives the one-device model's codes on raw rows
    from sae_jax.export import load_sae
    from sae_jax.train_step import model_input

    x = src.read(np.arange(100))
    one = jax.device_get(one)
    h = np.asarray(result.arch.encode(one.params, one.arch_state, model_input(one, jax.numpy.asarray(x), False)))
    np.testing.assert_allclose(load_sae(result.export_dir).encode(x), h, rtol=1e-3, atol=1e-4)

