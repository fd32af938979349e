import numpy as np
import pytest
from sklearn.metrics import r2_score
from sklearn.metrics.pairwise import paired_cosine_distances

from sae_jax.data.source import ArraySource
from sae_jax.evals.core import CoreAccumulator, evaluate_core, split_rows


class FakeTopKSAE:
    """Same members as sae_jax.export.LoadedSAE; TopK in plain NumPy."""

    def __init__(self, d_in, d_sae, k, seed=0):
        rng = np.random.default_rng(seed)
        W_dec = rng.normal(size=(d_sae, d_in)).astype(np.float32)
        W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
        self.params = {"W_enc": W_dec.T.copy(), "b_enc": np.zeros(d_sae, np.float32),
                       "W_dec": W_dec, "b_dec": rng.normal(size=d_in).astype(np.float32) * 0.1}
        self.d_in, self.d_sae, self.k = d_in, d_sae, k
        self.cfg = {"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": k}

    def encode(self, x):
        p = self.params
        pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
        idx = np.argpartition(-pre, self.k - 1, axis=1)[:, : self.k]
        h = np.zeros_like(pre)
        np.put_along_axis(h, idx, np.maximum(np.take_along_axis(pre, idx, 1), 0), 1)
        return h

    def decode(self, h):
        return h @ self.params["W_dec"] + self.params["b_dec"]


def test_core_metrics_match_sklearn_and_numpy_references():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(301, 16)) * rng.uniform(0.5, 2, 16) + rng.normal(size=16) * 3).astype(np.float32)
    sae = FakeTopKSAE(16, 40, k=4)
    m = evaluate_core(sae, ArraySource(x), batch_size=37)
    h = sae.encode(x)
    xh = sae.decode(h).astype(np.float64)
    x64 = x.astype(np.float64)
    assert m.n_tokens == 301
    assert m.explained_variance == pytest.approx(r2_score(x64, xh, multioutput="variance_weighted"), rel=1e-9)
    assert m.fvu == pytest.approx(1 - r2_score(x64, xh, multioutput="variance_weighted"), rel=1e-9)
    assert m.mse == pytest.approx(((x64 - xh) ** 2).sum(1).mean(), rel=1e-9)
    assert m.nmse_vs_zero == pytest.approx(((x64 - xh) ** 2).sum() / (x64**2).sum(), rel=1e-9)
    assert m.cosine_similarity == pytest.approx(1 - paired_cosine_distances(x64, xh).mean(), rel=1e-9)
    assert m.l2_ratio == pytest.approx((np.linalg.norm(xh, axis=1) / np.linalg.norm(x64, axis=1)).mean(), rel=1e-9)
    assert m.relative_reconstruction_bias == pytest.approx(
        (np.linalg.norm(xh, axis=1) ** 2).mean() / (x64 * xh).sum(1).mean(), rel=1e-9)
    assert m.l0 == pytest.approx((h != 0).sum(1).mean())
    assert m.l0 <= 4
    assert m.alive_fraction == pytest.approx((h != 0).any(0).mean())
    np.testing.assert_allclose(m.frequency, (h != 0).mean(0))


def test_fvu_uses_variance_around_the_mean_not_second_moment():
    # x = big mean + unit noise; reconstructing only the mean explains no variance
    rng = np.random.default_rng(1)
    mean = np.full(8, 100.0)
    x = mean + rng.normal(size=(4000, 8))
    acc = CoreAccumulator(8, 2)
    for i in range(0, 4000, 333):
        acc.update(x[i:i + 333], np.broadcast_to(mean, x[i:i + 333].shape), np.zeros((len(x[i:i + 333]), 2)))
    m = acc.result()
    assert m.fvu == pytest.approx(((x - mean) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(), rel=1e-9)
    assert m.fvu == pytest.approx(1.0, abs=0.01)  # the E||x||^2 bug would give ~1e-4
    assert m.nmse_vs_zero < 1e-3


def test_density_counts_and_histogram_from_known_frequencies():
    n = 2_000_000
    d_sae = 5
    acc = CoreAccumulator(1, d_sae)
    # latent j fires on exactly counts[j] tokens: frequencies 0, 5e-7, 5e-6, 5e-5, 0.5
    counts = [0, 1, 10, 100, 1_000_000]
    chunk = 500_000
    for start in range(0, n, chunk):
        h = np.zeros((chunk, d_sae), dtype=np.float32)
        for j, c in enumerate(counts):
            lo, hi = max(start, 0), min(start + chunk, c)
            if hi > lo:
                h[lo - start:hi - start, j] = 1.0
        x = np.ones((chunk, 1))
        acc.update(x, x, h)
    m = acc.result()
    assert m.n_dead == 1 and m.alive_fraction == pytest.approx(0.8)
    assert m.n_density_below_1e6 == 2  # dead + 5e-7
    assert m.n_density_below_1e5 == 3
    assert sum(m.density_hist_counts) == 4
    centres = np.log10(np.array(counts[1:]) / n)
    edges = np.array(m.density_hist_edges)
    expected = np.histogram(centres, bins=edges)[0]
    assert list(expected) == m.density_hist_counts
    assert m.l0 == pytest.approx(sum(counts) / n)


def test_split_rows_and_clear_errors():
    np.testing.assert_array_equal(split_rows(100, 0.9, 1.0), np.arange(90, 100))
    np.testing.assert_array_equal(split_rows(100, 0.5, 1.0, max_rows=3), np.arange(50, 53))
    with pytest.raises(ValueError, match="held-out split"):
        split_rows(100, 0.9, 0.5)
    with pytest.raises(ValueError, match="d_in"):
        evaluate_core(FakeTopKSAE(4, 8, 2), ArraySource(np.zeros((3, 5), np.float32)))
