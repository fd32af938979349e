"""Matryoshka BatchTopK, Gated and (skip-)transcoders: export to the SAELens format, read back by
sae_jax.load and by real SAELens with the same encode/decode/forward; resume is exact."""
import dataclasses
import subprocess

import jax
import numpy as np
import pytest

from sae_jax.export import load_sae
from sae_jax.trainer import train
from tests.helpers_train import tiny_config
from tests.test_export import _sae_lens_python
from tests.test_resume import assert_same_export

ARCHS = ["matryoshka_batchtopk", "gated", "transcoder", "skip_transcoder"]
SAELENS_NAME = {"matryoshka_batchtopk": "jumprelu", "gated": "gated", "transcoder": "transcoder",
                "skip_transcoder": "skip_transcoder"}


def config(run_dir, arch, steps=15):
    extra = {"matryoshka_widths": (16, 32)} if arch == "matryoshka_batchtopk" else {"sparsity_coef": 0.01}
    cfg = tiny_config(run_dir, architecture=arch, **extra)
    if arch in ("transcoder", "skip_transcoder"):  # rows [x (16) | y (16)]
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(
            cfg.data, synthetic="transcoder", synthetic_skip=0.5 if arch == "skip_transcoder" else 0.0))
    return dataclasses.replace(cfg, steps=steps)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return {arch: train(config(tmp_path_factory.mktemp(arch), arch)) for arch in ARCHS}


def inputs(seed):
    return np.random.default_rng(seed).standard_normal((40, 16)).astype(np.float32) * 2


@pytest.mark.parametrize("arch", ARCHS)
def test_export_matches_training_model_on_raw_inputs(trained, arch):
    result = trained[arch]
    sae = load_sae(result.export_dir)
    assert sae.architecture == SAELENS_NAME[arch]
    x, scale = inputs(0), float(result.state.input_scale)
    assert scale != 1.0  # the fold of the input scale is really exercised
    params = jax.device_get(result.state.params)
    h_ref = np.asarray(result.arch.encode(params, result.state.arch_state, x * scale))
    t = float(result.state.arch_state.get("target_scale", 1.0))  # transcoders predict t·y
    out_ref = np.asarray(result.arch.decode(params, h_ref)) / scale / t
    np.testing.assert_allclose(sae.encode(x), h_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sae.decode(sae.encode(x)), out_ref, rtol=1e-4, atol=1e-4)
    if arch == "skip_transcoder":
        assert np.abs(params["W_skip"]).max() > 0  # the skip term has been trained and is exported
        np.testing.assert_allclose(sae(x), np.asarray(result.arch.forward(params, result.state.arch_state,
                                                                          x * scale)) / scale,
                                   rtol=1e-4, atol=1e-4)
    if arch in ("transcoder", "skip_transcoder"):
        assert sae.cfg["d_out"] == 16 and sae.cfg["apply_b_dec_to_input"] is False
    assert (h_ref > 0).any() and (h_ref == 0).any()  # a sparse code, not a degenerate one


SAE_LENS_CHECK = """
import sys, numpy as np, torch, sae_lens
from sae_lens import SAE
sae = SAE.load_from_disk(sys.argv[1])
x = torch.tensor(np.load(sys.argv[2]))
with torch.no_grad():
    h = sae.encode(x)
    np.save(sys.argv[3], h.numpy()); np.save(sys.argv[4], sae.decode(h).numpy()); np.save(sys.argv[5], sae(x).numpy())
print(type(sae).__name__, sae_lens.__version__)
"""


@pytest.mark.parametrize("arch", ARCHS)
def test_sae_lens_loads_and_computes_the_same(trained, arch, tmp_path):
    python = _sae_lens_python()
    if python is None:
        pytest.skip("sae_lens not importable; set SAE_LENS_PYTHON to a venv that has it")
    x = inputs(2)
    np.save(tmp_path / "x.npy", x)
    files = [str(tmp_path / f) for f in ("h.npy", "r.npy", "f.npy")]
    out = subprocess.run([python, "-c", SAE_LENS_CHECK, str(trained[arch].export_dir), str(tmp_path / "x.npy"),
                          *files], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    expected_class = {"matryoshka_batchtopk": "JumpReLUSAE", "gated": "GatedSAE", "transcoder": "Transcoder",
                      "skip_transcoder": "SkipTranscoder"}[arch]
    assert out.stdout.split()[0] == expected_class
    ours = load_sae(trained[arch].export_dir)
    h, r, f = (np.load(name) for name in files)
    np.testing.assert_allclose(h, ours.encode(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(r, ours.decode(ours.encode(x)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(f, ours(x), rtol=1e-4, atol=1e-4)  # skip_transcoder: the skip term included


@pytest.mark.parametrize("arch", ["matryoshka_batchtopk", pytest.param("gated", marks=pytest.mark.slow),
                                  pytest.param("skip_transcoder", marks=pytest.mark.slow)])
def test_stop_and_resume_equals_uninterrupted(tmp_path, arch):
    full = config(tmp_path / "full", arch, steps=20)
    train(full)
    part = dataclasses.replace(full, run_dir=str(tmp_path / "part"), steps=13)  # stops between checkpoints
    train(part)
    resumed = train(dataclasses.replace(part, steps=full.steps))
    assert int(resumed.state.step) == full.steps
    assert_same_export(tmp_path / "full" / "export", tmp_path / "part" / "export")
