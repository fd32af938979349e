"""Export to the SAELens format: our loader and SAELens itself compute the same encode/decode."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from sae_jax.errors import ExportError
from sae_jax.export import fold_input_scale, load_sae, write_sae
from sae_jax.trainer import train
from tests.helpers_train import tiny_config

ARCHS = ["topk", "batchtopk", "relu", "jumprelu", "topk-layernorm"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = {}
    for name in ARCHS:
        arch, _, norm = name.partition("-")
        cfg = tiny_config(tmp_path_factory.mktemp(name), architecture=arch, sparsity_coef=0.01)
        if norm:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, normalize=norm))
        out[name] = (train(dataclasses.replace(cfg, steps=15)), cfg)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_export_matches_training_model_on_raw_inputs(trained, arch):
    result, cfg = trained[arch]
    sae = load_sae(result.export_dir)
    x = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32) * 2
    scale = float(result.state.input_scale)
    params = jax.device_get(result.state.params)
    if cfg.data.normalize == "layernorm":  # independent per-token LayerNorm (unbiased std, as SAELens)
        assert sae.cfg["normalize_activations"] == "layer_norm"
        mu, std = x.mean(1, keepdims=True), x.std(1, ddof=1, keepdims=True)
        h_ref = np.asarray(result.arch.encode(params, result.state.arch_state, (x - mu) / (std + 1e-5)))
        x_hat_ref = np.asarray(result.arch.decode(params, h_ref)) * std + mu  # out: no eps, as SAELens
    else:
        assert scale != 1.0  # the fold is really exercised
        h_ref = np.asarray(result.arch.encode(params, result.state.arch_state, x * scale))
        x_hat_ref = np.asarray(result.arch.decode(params, h_ref)) / scale
    if arch == "batchtopk":  # inference is a JumpReLU at the learned threshold
        assert sae.architecture == "jumprelu"
    np.testing.assert_allclose(sae.encode(x), h_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sae.decode(sae.encode(x)), x_hat_ref, rtol=1e-4, atol=1e-4)


def test_fold_input_scale_is_exact_algebra():
    rng = np.random.default_rng(1)
    p = {"W_enc": rng.standard_normal((5, 7)), "b_enc": rng.standard_normal(7),
         "W_dec": rng.standard_normal((7, 5)), "b_dec": rng.standard_normal(5)}
    x, s = rng.standard_normal((3, 5)), 2.5
    f = fold_input_scale(p, s)
    np.testing.assert_allclose((x - f["b_dec"]) @ f["W_enc"] + f["b_enc"], (s * x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    h = rng.standard_normal((3, 7))
    np.testing.assert_allclose(h @ f["W_dec"] + f["b_dec"], (h @ p["W_dec"] + p["b_dec"]) / s)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an SAE folder"):
        load_sae(tmp_path)
    p = {"W_enc": np.zeros((4, 6)), "b_enc": np.zeros(6), "W_dec": np.zeros((6, 4)), "b_dec": np.zeros(4)}
    write_sae(tmp_path / "s", p, {"architecture": "standard"})
    with pytest.raises(ValueError, match="does not match the SAE's d_in=4"):
        load_sae(tmp_path / "s").encode(np.zeros((2, 5)))


def _sae_lens_python():
    """A Python that can import sae_lens: this one, or $SAE_LENS_PYTHON (its own venv)."""
    try:
        import sae_lens  # noqa: F401

        return sys.executable
    except ImportError:
        return os.environ.get("SAE_LENS_PYTHON")


SAE_LENS_CHECK = """
import json, sys, numpy as np, torch
from sae_lens import SAE
sae = SAE.load_from_disk(sys.argv[1])
x = torch.tensor(np.load(sys.argv[2]))
with torch.no_grad():
    h = sae.encode(x)
    np.save(sys.argv[3], h.numpy()); np.save(sys.argv[4], sae.decode(h).numpy())
print(type(sae).__name__)
"""


@pytest.mark.parametrize("arch", ARCHS)
def test_sae_lens_loads_and_computes_the_same(trained, arch, tmp_path):
    python = _sae_lens_python()
    if python is None:
        pytest.skip("sae_lens not importable; set SAE_LENS_PYTHON to a venv that has it")
    result, _ = trained[arch]
    x = np.random.default_rng(2).standard_normal((40, 16)).astype(np.float32) * 2
    np.save(tmp_path / "x.npy", x)
    out = subprocess.run([python, "-c", SAE_LENS_CHECK, str(result.export_dir), str(tmp_path / "x.npy"),
                          str(tmp_path / "h.npy"), str(tmp_path / "r.npy")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    ours = load_sae(result.export_dir)
    np.testing.assert_allclose(np.load(tmp_path / "h.npy"), ours.encode(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), ours.decode(ours.encode(x)), rtol=1e-4, atol=1e-4)


def _rescaled_topk(path, seed=0):
    """An SAELens-style TopK SAE saved with rescale_acts_by_decoder_norm (decoder norms not folded)."""
    rng = np.random.default_rng(seed)
    W_dec = rng.standard_normal((24, 16)).astype(np.float32) * rng.uniform(0.2, 3.0, (24, 1)).astype(np.float32)
    params = {"W_enc": rng.standard_normal((16, 24)).astype(np.float32), "b_enc": rng.normal(0, 0.1, 24).astype(np.float32),
              "W_dec": W_dec, "b_dec": rng.normal(0, 0.1, 16).astype(np.float32)}
    write_sae(path, params, {"architecture": "topk", "k": 4, "rescale_acts_by_decoder_norm": True})
    return params


def test_rescale_acts_by_decoder_norm_is_folded_on_load(tmp_path):
    """Issue 15 item 5: the flag was silently ignored (other active sets, worse FVU). SAELens' formula by hand:
    h = TopK(ReLU)(pre · ‖W_dec‖), x̂ = (h / ‖W_dec‖) W_dec + b_dec."""
    p = _rescaled_topk(tmp_path / "sae")
    sae = load_sae(tmp_path / "sae")
    x = np.random.default_rng(1).standard_normal((50, 16)).astype(np.float32)
    c = np.linalg.norm(p["W_dec"], axis=1)
    pre = ((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]) * c
    idx = np.argsort(-pre, axis=1)[:, :4]
    h = np.zeros_like(pre)
    np.put_along_axis(h, idx, np.maximum(np.take_along_axis(pre, idx, 1), 0), 1)
    np.testing.assert_allclose(sae.encode(x), h, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sae.decode(sae.encode(x)), (h / c) @ p["W_dec"] + p["b_dec"], rtol=1e-4, atol=1e-4)
    assert sae.cfg["rescale_acts_by_decoder_norm"] is False
    write_sae(tmp_path / "jr", {**p, "threshold": np.zeros(24, np.float32)},
              {"architecture": "jumprelu", "rescale_acts_by_decoder_norm": True})
    with pytest.raises(ExportError, match="topk"):
        load_sae(tmp_path / "jr")


def test_rescale_acts_by_decoder_norm_matches_real_sae_lens(tmp_path):
    python = _sae_lens_python()
    if python is None:
        pytest.skip("sae_lens not importable; set SAE_LENS_PYTHON to a venv that has it")
    _rescaled_topk(tmp_path / "sae", seed=3)
    x = np.random.default_rng(2).standard_normal((40, 16)).astype(np.float32) * 2
    np.save(tmp_path / "x.npy", x)
    out = subprocess.run([python, "-c", SAE_LENS_CHECK, str(tmp_path / "sae"), str(tmp_path / "x.npy"),
                          str(tmp_path / "h.npy"), str(tmp_path / "r.npy")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    ours = load_sae(tmp_path / "sae")
    np.testing.assert_allclose(np.load(tmp_path / "h.npy"), ours.encode(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), ours.decode(ours.encode(x)), rtol=1e-4, atol=1e-4)


SAE_LENS_NORM_CHECK = """
import sys, numpy as np, torch
from sae_lens import SAE
sae = SAE.load_from_disk(sys.argv[1])
if len(sys.argv) > 5:
    sae.fold_activation_norm_scaling_factor(float(sys.argv[5]))
x = torch.tensor(np.load(sys.argv[2]))
with torch.no_grad():
    h = sae.encode(x)
    np.save(sys.argv[3], h.numpy()); np.save(sys.argv[4], sae.decode(h).numpy())
"""


def _standard(path, norm, seed=0):
    rng = np.random.default_rng(seed)
    p = {"W_enc": rng.standard_normal((16, 24)).astype(np.float32) / 4, "b_enc": rng.normal(0, 0.1, 24).astype(np.float32),
         "W_dec": rng.standard_normal((24, 16)).astype(np.float32) / 4, "b_dec": rng.normal(0, 0.1, 16).astype(np.float32)}
    write_sae(path, p, {"architecture": "standard", "normalize_activations": norm})
    return p


def test_sae_lens_input_normalisations_by_hand(tmp_path):
    """Issue 15 item 5: constant_norm_rescale runs per token (x·√d/‖x‖ in, ÷ out); expected_average_only_in
    needs its dataset factor, folded as SAELens folds it; without it the refusal says how to pass it."""
    x = np.random.default_rng(1).standard_normal((30, 16)).astype(np.float32) * 3
    p = _standard(tmp_path / "c", "constant_norm_rescale")
    sae = load_sae(tmp_path / "c")
    coeff = 4.0 / np.linalg.norm(x, axis=1, keepdims=True)
    h = np.maximum((x * coeff - p["b_dec"]) @ p["W_enc"] + p["b_enc"], 0)
    np.testing.assert_allclose(sae.encode(x), h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sae.decode(sae.encode(x)), (h @ p["W_dec"] + p["b_dec"]) / coeff, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="call encode"):
        load_sae(tmp_path / "c").decode(h)
    p = _standard(tmp_path / "e", "expected_average_only_in")
    with pytest.raises(ExportError, match=r"norm_scaling_factor=F"):
        load_sae(tmp_path / "e")
    sae = load_sae(tmp_path / "e", norm_scaling_factor=0.5)
    h = np.maximum((x * 0.5 - p["b_dec"]) @ p["W_enc"] + p["b_enc"], 0)  # the SAE read x times the factor
    np.testing.assert_allclose(sae.encode(x), h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sae.decode(h), (h @ p["W_dec"] + p["b_dec"]) / 0.5, rtol=1e-5, atol=1e-5)
    with pytest.raises(ExportError, match="expected_average_only_in' only"):
        load_sae(tmp_path / "c", norm_scaling_factor=2.0)


@pytest.mark.parametrize("norm, factor", [("constant_norm_rescale", None), ("expected_average_only_in", 0.37)])
def test_input_normalisations_match_real_sae_lens(tmp_path, norm, factor):
    python = _sae_lens_python()
    if python is None:
        pytest.skip("sae_lens not importable; set SAE_LENS_PYTHON to a venv that has it")
    _standard(tmp_path / "sae", norm, seed=4)
    x = np.random.default_rng(2).standard_normal((40, 16)).astype(np.float32) * 2
    np.save(tmp_path / "x.npy", x)
    args = [str(tmp_path / "sae"), str(tmp_path / "x.npy"), str(tmp_path / "h.npy"), str(tmp_path / "r.npy")]
    out = subprocess.run([python, "-c", SAE_LENS_NORM_CHECK, *args] + ([str(factor)] if factor else []),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    ours = load_sae(tmp_path / "sae", norm_scaling_factor=factor)
    np.testing.assert_allclose(np.load(tmp_path / "h.npy"), ours.encode(x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), ours.decode(ours.encode(x)), rtol=1e-4, atol=1e-4)


def test_torch_sae_applies_constant_norm_rescale_like_the_numpy_one(tmp_path):
    torch = pytest.importorskip("torch")
    from sae_jax.lm.sae_torch import TorchSAE

    _standard(tmp_path / "c", "constant_norm_rescale", seed=5)
    sae = load_sae(tmp_path / "c")
    x = np.random.default_rng(3).standard_normal((12, 16)).astype(np.float32) * 5
    t = TorchSAE(sae)
    with torch.no_grad():
        np.testing.assert_allclose(t.encode(torch.from_numpy(x), scale_shift=False).numpy(), sae.encode(x), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(t(torch.from_numpy(x), scale_shift=False).numpy(), sae.decode(sae.encode(x)),
                                   rtol=1e-5, atol=1e-5)
