"""One code path for any device layout: meshes (1,1), (8,1), (4,2), (2,4) agree."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import NamedSharding

from sae_jax.config import ConfigError, MeshConfig, validate
from sae_jax.data.synthetic import synthetic_source
from sae_jax.mesh import CODES_SPEC, make_mesh
from sae_jax.topk_select import sharded_topk
from tests.helpers_train import run_steps, tiny_config

MESHES = [(1, 1), (8, 1), (4, 2), (2, 4)]


@pytest.mark.parametrize("shape", [(8, 1), (4, 2), (2, 4), (1, 8)])
def test_sharded_topk_equals_lax_topk(shape):
    mesh = make_mesh(MeshConfig(data=shape[0], dict=shape[1]))
    pre = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    arr = jax.device_put(pre, NamedSharding(mesh, CODES_SPEC))
    vals, idx = jax.jit(lambda a: sharded_topk(a, 5, mesh))(arr)
    ref_vals, ref_idx = lax.top_k(jnp.asarray(pre), 5)
    np.testing.assert_array_equal(np.asarray(vals), np.asarray(ref_vals))
    np.testing.assert_array_equal(np.asarray(idx), np.asarray(ref_idx))


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu"])
def test_meshes_give_the_same_parameters(arch):
    extra = {"sparsity_coef": 0.01} if arch in ("relu", "jumprelu") else {}
    # many latents, few tokens and a one-batch dead window: AuxK (and its sharded top-k) is active
    cfg = tiny_config(architecture=arch, d_sae=256, k=2, dead_tokens=64, **extra)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=64))
    src = synthetic_source(4096, 16, 48, 3)
    results = {shape: run_steps(cfg, src, 12, mesh_shape=shape) for shape in MESHES}
    ref_state, ref_metrics, _ = results[(1, 1)]
    if arch in ("topk", "batchtopk"):
        assert ref_metrics["dead_frac"] > 0 and ref_metrics["auxk"] > 0  # AuxK really ran
    for shape, (state, metrics, _) in results.items():
        for name, value in ref_state.params.items():
            np.testing.assert_allclose(np.asarray(state.params[name]), np.asarray(value),
                                       rtol=2e-4, atol=2e-5, err_msg=f"{arch} {shape} {name}")
        np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-4)


def test_bad_mesh_configs_are_refused():
    cfg = tiny_config(d_sae=60)
    with pytest.raises(ConfigError, match="not divisible by mesh.dict"):
        validate(cfg.__class__(**{**cfg.__dict__, "mesh": MeshConfig(dict=8)}), n_devices=8)
    with pytest.raises(ConfigError, match="does not use the 8 devices"):
        validate(cfg.__class__(**{**cfg.__dict__, "mesh": MeshConfig(data=3, dict=2)}), n_devices=8)
