"""Held-out L1 objective, the early-stopping rule and near-zero sparsity against independent references."""
import numpy as np
import pytest

from sae_jax.evals.early_stopping import early_stop, input_scale, l1_objective, near_zero_fraction


class _ReluSAE:
    def __init__(self, W_enc, b_enc, W_dec, b_dec):
        self.params = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}

    def encode(self, x):
        return np.maximum((x - self.params["b_dec"]) @ self.params["W_enc"] + self.params["b_enc"], 0)

    def decode(self, h):
        return h @ self.params["W_dec"] + self.params["b_dec"]


def test_l1_objective_matches_a_loop_and_is_invariant_to_the_code_decoder_split():
    rng = np.random.default_rng(0)
    d, F, n = 5, 7, 33
    x = rng.normal(size=(n, d)).astype(np.float32) * 3
    sae = _ReluSAE(rng.normal(size=(d, F)), rng.normal(size=F) * 0.1, rng.normal(size=(F, d)), rng.normal(size=d) * 0.1)
    c = input_scale(x)
    ref = 0.0
    for row in x.astype(np.float64):  # the objective on scaled inputs: an SAE acting on c·x
        h = np.maximum((c * row - c * sae.params["b_dec"]) @ (sae.params["W_enc"]) + c * sae.params["b_enc"], 0)
        W_dec_n = sae.params["W_dec"]  # scaled SAE: h_n = c·h, same decoder: contribution scales by c
        xhat_n = h @ W_dec_n + c * sae.params["b_dec"]
        ref += ((c * row - xhat_n) ** 2).sum() + 0.3 * (h * np.linalg.norm(W_dec_n, axis=1)).sum()
    got = l1_objective(sae, x, 0.3, c, batch_size=8)
    assert got["loss"] == pytest.approx(ref / n, rel=1e-4)
    # the same map with codes doubled and decoder halved: the same objective
    half = _ReluSAE(2 * sae.params["W_enc"], 2 * sae.params["b_enc"], sae.params["W_dec"] / 2, sae.params["b_dec"])
    assert l1_objective(half, x, 0.3, c)["loss"] == pytest.approx(got["loss"], rel=1e-4)
    assert np.mean(np.linalg.norm(c * x, axis=1)) == pytest.approx(np.sqrt(d), rel=1e-5)


def test_early_stop_by_hand():
    assert early_stop([5, 4, 3, 3.5, 3.2, 2.9, 3.0], patience=2) == (2, 4)
    assert early_stop([5, 4, 3, 3.5, 2.9, 3.0], patience=2) == (4, 5)
    assert early_stop([1.0], patience=3) == (0, 0)
    with pytest.raises(ValueError, match="patience"):
        early_stop([1, 2], patience=0)


def test_near_zero_fraction_against_a_loop():
    rng = np.random.default_rng(1)
    h = np.maximum(rng.normal(size=(40, 6)), 0) * rng.uniform(0.001, 10, size=6)
    h[:, 2] = 0
    n_abs = sum(abs(v) <= 0.05 for v in h.ravel())
    assert near_zero_fraction(h, 0.05) == pytest.approx(n_abs / h.size)
    n_rel = sum(abs(h[i, j]) <= 0.1 * abs(h[:, j]).max() for i in range(40) for j in range(6))
    assert near_zero_fraction(h, 0.1, relative=True) == pytest.approx(n_rel / h.size)
    with pytest.raises(ValueError, match="rows, latents"):
        near_zero_fraction(np.zeros(3))
