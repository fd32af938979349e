"""SSAE export: folded normalisations/whitening reproduce the trained model; the CLI entry runs."""
import json

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

from sae_jax.config import MeshConfig
from sae_jax.data.shifts import multi_concept_shifts
from sae_jax.export import load_sae
from sae_jax.normalization import layer_norm_in
from sae_jax.sae.ssae import SSAE
from sae_jax.ssae_run import SSAERunConfig, export_ssae, run_ssae
from sae_jax.ssae_train import SSAETrainConfig, train_ssae
from sae_jax.whitening import Whitening

SRC = multi_concept_shifts(2048, 8, 4, seed=0, concept_cos=0.4)
X = SRC.read(np.arange(64))


def _train(ssae):
    cfg = SSAETrainConfig(ssae=ssae, d_sae=6, steps=30, batch_size=64, lr=3e-3, whiten=True, whiten_rows=1024,
                          mesh=MeshConfig(data=1, dict=1))
    from sae_jax.mesh import make_mesh
    return train_ssae(cfg, SRC, make_mesh(cfg.mesh, jax.devices()[:1]))


def test_folded_export_loads_in_core_loader(tmp_path):
    ssae = SSAE(target=0.3, warmup=5, schedule=10, input_norm="batch", code_norm="batchnorm", relu=True)
    run = _train(ssae)
    out = export_ssae(tmp_path / "e", ssae, run.state, run.whitening)
    assert not (out / "whitening.safetensors").exists()  # everything folded
    sae = load_sae(out)  # the core SAELens-format loader, 'standard' architecture
    params, arch_state = jax.device_get(run.state.params), jax.device_get(run.state.arch_state)
    xw = jnp.asarray(run.whitening.apply(X))
    np.testing.assert_allclose(sae.encode(X), ssae.encode(params, arch_state, xw), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(sae.decode(sae.encode(X)),
                               run.whitening.undo(np.asarray(ssae.reconstruct(params, arch_state, xw))),
                               rtol=1e-3, atol=1e-3)


def test_layernorm_export_stores_whitening_beside(tmp_path):
    ssae = SSAE(target=0.3, warmup=5, schedule=10)  # per-row LayerNorm, linear code
    run = _train(ssae)
    out = export_ssae(tmp_path / "e", ssae, run.state, run.whitening)
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "linear" and cfg["normalize_activations"] == "layer_norm"
    assert cfg["metadata"]["whitening"] == "whitening.safetensors"
    w = Whitening.from_arrays(load_file(str(out / "whitening.safetensors")))
    p = load_file(str(out / "sae_weights.safetensors"))
    # Apply the stored pieces by hand: whiten, SAELens layer_norm, linear encoder.
    xn, _, _ = layer_norm_in(w.apply(X).astype(np.float64))
    h = (xn - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    ref = ssae.encode(jax.device_get(run.state.params), jax.device_get(run.state.arch_state),
                      jnp.asarray(run.whitening.apply(X)))
    np.testing.assert_allclose(h, ref, rtol=1e-3, atol=1e-4)


def test_run_ssae_end_to_end(tmp_path):
    cfg = SSAERunConfig(run_dir=str(tmp_path / "run"), synthetic_d=8, synthetic_concepts=4, synthetic_rows=1024,
                        train=SSAETrainConfig(ssae=SSAE(target=0.5, warmup=5, schedule=5), d_sae=4, steps=12,
                                              batch_size=32, mesh=MeshConfig(data=1, dict=1)))
    # run_ssae builds its mesh from cfg.train.mesh over all devices: use one device.
    import dataclasses
    if jax.device_count() > 1:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mesh=MeshConfig(data=jax.device_count(), dict=1)))
    last = run_ssae(cfg)
    assert last["step"] == 11
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 11 and "multiplier" in rows[-1]
    assert (tmp_path / "run" / "export" / "sae_weights.safetensors").exists()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["kind"] == "synthetic"


def test_signed_code_split_export_loads_as_standard(tmp_path):
    ssae = SSAE(target=0.3, warmup=5, schedule=10, input_norm="none")  # signed linear code
    run = _train(ssae)
    out = export_ssae(tmp_path / "e", ssae, run.state, run.whitening, linear_as="split")
    sae = load_sae(out)
    assert sae.architecture == "standard" and sae.d_sae == 12
    params, arch_state = jax.device_get(run.state.params), jax.device_get(run.state.arch_state)
    xw = jnp.asarray(run.whitening.apply(X))
    h = np.asarray(ssae.encode(params, arch_state, xw))
    h2 = sae.encode(X)
    np.testing.assert_allclose(h2[:, :6] - h2[:, 6:], h, rtol=1e-3, atol=1e-4)  # positive − negative part
    np.testing.assert_allclose(sae.decode(h2), run.whitening.undo(np.asarray(ssae.reconstruct(params, arch_state, xw))),
                               rtol=1e-3, atol=1e-3)


def test_run_ssae_on_paired_npy_sources(tmp_path):
    """base/chat (or s1/s2) activations in two aligned .npy files: the SSAE trains on second − first."""
    from sae_jax.ssae_run import open_differences
    shifts = multi_concept_shifts(512, 8, 4, seed=3)
    base = np.random.default_rng(0).normal(size=(512, 8)).astype(np.float32)
    np.save(tmp_path / "base.npy", base)
    np.save(tmp_path / "chat.npy", base + shifts.read(np.arange(512)))
    mesh = MeshConfig(data=jax.device_count(), dict=1)
    cfg = SSAERunConfig(run_dir=str(tmp_path / "run"), kind="paired", first=str(tmp_path / "base.npy"),
                        second=str(tmp_path / "chat.npy"), export=False,
                        train=SSAETrainConfig(ssae=SSAE(target=0.5, warmup=2, schedule=2), d_sae=4, steps=4,
                                              batch_size=32, mesh=mesh))
    src = open_differences(cfg)
    np.testing.assert_allclose(src.read(np.arange(10)), shifts.read(np.arange(10)), atol=1e-5)
    assert run_ssae(cfg)["step"] == 3
