import numpy as np
import pytest
from sklearn.metrics import r2_score
from sklearn.metrics.pairwise import paired_cosine_distances

from sae_jax.data.source import ArraySource
from sae_jax.evals.core import CoreAccumulator, evaluate_core, split_rows
from sae_jax.export import LoadedSAE


def FakeTopKSAE(d_in, d_sae, k, seed=0):
    """A random TopK SAE (the exported-SAE class, built in memory)."""
    rng = np.random.default_rng(seed)
    W_dec = rng.normal(size=(d_sae, d_in)).astype(np.float32)
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    params = {"W_enc": W_dec.T.copy(), "b_enc": np.zeros(d_sae, np.float32), "W_dec": W_dec,
              "b_dec": rng.normal(size=d_in).astype(np.float32) * 0.1}
    return LoadedSAE({"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": k}, params)


def test_core_metrics_match_sklearn_and_numpy_references():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(301, 16)) * rng.uniform(0.5, 2, 16) + rng.normal(size=16) * 3).astype(np.float32)
    sae = FakeTopKSAE(16, 40, k=4)
    m = evaluate_core(sae, ArraySource(x), batch_size=37)
    # encode/decode in the evaluator's batches: float32 matmuls of other shapes round differently
    h = np.concatenate([sae.encode(x[i:i + 37]) for i in range(0, len(x), 37)])
    xh = np.concatenate([sae.decode(h[i:i + 37]) for i in range(0, len(h), 37)]).astype(np.float64)
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


_MEMORY_SCRIPT = r"""
import json, os, resource, sys, time
import numpy as np
from sae_jax.evals.core import evaluate_core
from sae_jax.export import LoadedSAE

n, d, F, k = int(sys.argv[1]), 512, 16384, 32

class OnTheFly:
    # rows are generated when read, so the data itself takes no memory
    n_rows, d_in, metadata = n, d, {}
    def read(self, rows):
        rng = np.random.default_rng(int(rows[0]))
        return rng.standard_normal((len(rows), d), dtype=np.float32)

rng = np.random.default_rng(0)
W = rng.standard_normal((F, d), dtype=np.float32)
W /= np.linalg.norm(W, axis=1, keepdims=True)
sae = LoadedSAE({"architecture": "topk", "d_in": d, "d_sae": F, "k": k},
                {"W_enc": np.ascontiguousarray(W.T), "b_enc": np.zeros(F, np.float32), "W_dec": W,
                 "b_dec": np.zeros(d, np.float32)})
t0 = time.perf_counter()
m = evaluate_core(sae, OnTheFly(), batch_size=2048)
print(json.dumps({"n_tokens": m.n_tokens, "l0": m.l0, "fvu": m.fvu, "seconds": time.perf_counter() - t0,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@pytest.mark.slow
def test_core_metrics_on_1m_tokens_16k_latents_in_bounded_memory():
    """A dense N x F code matrix would be 1M x 16384 x 4 B = 64 GiB; streaming must stay far below."""
    import json
    import os
    import subprocess
    import sys

    n = int(os.environ.get("SAE_JAX_CORE_MEM_TOKENS", 1_000_000))
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(n)], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(res)
    assert res["n_tokens"] == n
    assert res["l0"] == pytest.approx(32, abs=0.5)  # TopK: k active (a few may be <= 0 and dropped)
    assert res["peak_rss_mib"] < 2048
