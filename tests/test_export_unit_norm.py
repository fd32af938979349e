"""SAEBench-ready exports (issue 15 item 4): unit-norm decoder rows with the row norms moved into the encoder
and the codes; reconstructions identical, codes rescaled per latent, the same latents active."""
import dataclasses

import numpy as np
import pytest

from sae_jax.errors import ExportError
from sae_jax.export import load_sae, unit_norm_decoder
from sae_jax.reexport import export_run
from sae_jax.trainer import train
from tests.helpers_train import tiny_config

CASES = {"topk": {}, "batchtopk": {}, "relu": {"sparsity_coef": 0.01, "decoder_unit_norm": False},
         "jumprelu": {"sparsity_coef": 0.01}}


@pytest.mark.parametrize("arch", list(CASES))
def test_unit_norm_export_keeps_reconstructions_and_active_sets(tmp_path, arch):
    cfg = dataclasses.replace(tiny_config(tmp_path / "run", architecture=arch, **CASES[arch]), steps=10)
    result = train(cfg)
    plain = load_sae(result.export_dir)
    unit = load_sae(export_run(str(tmp_path / "run"), str(tmp_path / "unit"), unit_norm=True))
    assert unit.cfg["metadata"]["unit_norm_decoder"] is True
    np.testing.assert_allclose(np.linalg.norm(unit.params["W_dec"], axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(np.linalg.norm(plain.params["W_dec"], axis=1), 1.0, rtol=1e-3)  # the input scale was folded
    x = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32) * 3
    h0, h1 = plain.encode(x), unit.encode(x)
    c = np.linalg.norm(plain.params["W_dec"], axis=1)
    np.testing.assert_array_equal(h0 != 0, h1 != 0)
    np.testing.assert_allclose(h1, h0 * c, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(unit.decode(h1), plain.decode(h0), rtol=1e-4, atol=1e-4)
    assert (h0 != 0).any() and (h0 == 0).any()


def test_unit_norm_is_refused_where_codes_would_change():
    p = {"W_enc": np.ones((3, 2), np.float32), "b_enc": np.zeros(2, np.float32),
         "W_dec": np.array([[1.0, 0, 0], [0, 2.0, 0]], np.float32), "b_dec": np.zeros(3, np.float32)}
    with pytest.raises(ExportError, match="top k"):
        unit_norm_decoder(p, "topk")  # unequal norms would reorder the top k
    with pytest.raises(ExportError, match="gated"):
        unit_norm_decoder(p, "gated")
    out = unit_norm_decoder(p, "standard")
    np.testing.assert_allclose(out["W_enc"], [[1, 2]] * 3)
