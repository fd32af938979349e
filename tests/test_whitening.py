"""ZCA whitening vs NumPy, and exact folding into SAE weights."""
import numpy as np
import pytest

from sae_jax.whitening import Whitening, fit_zca, fold_into_sae


def _sample(n=2000, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d) * 5).astype(np.float32)


def test_zca_matches_numpy_and_whitens():
    x = _sample()
    w = fit_zca(x, eps=1e-6)
    # Independent reference: the symmetric inverse square root of np.cov via SVD.
    c = np.cov(x.astype(np.float64), rowvar=False)
    u, s, vt = np.linalg.svd(c)
    ref = u @ np.diag(1 / np.sqrt(s + 1e-6)) @ vt
    np.testing.assert_allclose(w.matrix, ref, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(w.matrix, w.matrix.T, atol=1e-10)  # ZCA is symmetric
    np.testing.assert_allclose(w.mean, x.mean(0), rtol=1e-5)
    xw = w.apply(x)
    np.testing.assert_allclose(np.cov(xw.astype(np.float64), rowvar=False), np.eye(6), atol=1e-4)
    np.testing.assert_allclose(xw.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(w.undo(xw), x, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(w.matrix @ w.inverse, np.eye(6), atol=1e-8)


def test_eps_floors_degenerate_directions():
    x = _sample(d=4)
    x = np.hstack([x, x[:, :1]])  # rank-deficient: a zero-variance direction
    w = fit_zca(x, eps=1e-2)
    assert np.all(np.isfinite(w.matrix))
    assert np.linalg.eigvalsh(w.matrix).max() <= 1 / np.sqrt(1e-2) + 1e-6


def test_fold_into_sae_is_exact():
    x = _sample(n=300, d=5, seed=1)
    w = fit_zca(x)
    rng = np.random.default_rng(2)
    params = {"W_enc": rng.normal(size=(5, 7)), "b_enc": rng.normal(size=7), "W_dec": rng.normal(size=(7, 5)),
              "b_dec": rng.normal(size=5)}
    xw = w.apply(x).astype(np.float64)
    h = np.maximum((xw - params["b_dec"]) @ params["W_enc"] + params["b_enc"], 0)
    x_hat_raw = w.undo(h @ params["W_dec"] + params["b_dec"])
    f = {k: v.astype(np.float64) for k, v in fold_into_sae(params, w).items()}
    h_folded = np.maximum((x - f["b_dec"]) @ f["W_enc"] + f["b_enc"], 0)
    np.testing.assert_allclose(h_folded, h, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(h_folded @ f["W_dec"] + f["b_dec"], x_hat_raw, rtol=1e-4, atol=1e-3)


def test_roundtrip_arrays_and_errors():
    w = fit_zca(_sample())
    again = Whitening.from_arrays(w.to_arrays())
    np.testing.assert_allclose(again.matrix, w.matrix, rtol=1e-6)
    with pytest.raises(ValueError, match="2-D"):
        fit_zca(np.zeros(5))
    with pytest.raises(ValueError, match="eps"):
        fit_zca(_sample(), eps=0)
    with pytest.raises(ValueError, match="d_in"):
        fold_into_sae({"W_enc": np.zeros((3, 2)), "W_dec": np.zeros((2, 3)), "b_dec": np.zeros(3), "b_enc": np.zeros(2)}, w)
