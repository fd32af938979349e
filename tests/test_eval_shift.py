import numpy as np
import pytest

from sae_jax.evals.shift import (ABSENT, AMPLIFIED, SUPPRESSED, UNCHANGED, classify_latents, cohens_d_arrays,
                                 delta_only, enrichment, max_abs_cosine)


def test_cohens_d_textbook_example_and_numpy():
    base = np.array([1, 2, 3, 4, 5], float)[:, None]
    chat = np.array([3, 4, 5, 6, 7], float)[:, None]
    # means 3 and 5, both sample variances 2.5: d = 2 / sqrt(2.5)
    assert cohens_d_arrays(base, chat)[0] == pytest.approx(2 / np.sqrt(2.5))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 5)), rng.normal(0.5, 2.0, size=(70, 5))
    pooled = np.sqrt(((40 - 1) * a.var(0, ddof=1) + (70 - 1) * b.var(0, ddof=1)) / (40 + 70 - 2))
    np.testing.assert_allclose(cohens_d_arrays(a, b), (b.mean(0) - a.mean(0)) / pooled, rtol=1e-10)
    assert cohens_d_arrays(np.zeros((3, 1)), np.zeros((4, 1)))[0] == 0.0


def test_classify_latents():
    d = np.array([-1.0, 1.0, 0.1, -1.0, 2.0, 0.0])
    f = np.array([0.1, 0.1, 0.1, 0.0, 0.0, 0.0])
    assert list(classify_latents(d, f, threshold=0.5)) == [SUPPRESSED, AMPLIFIED, UNCHANGED, ABSENT, AMPLIFIED, ABSENT]


def test_delta_only_and_max_cosine():
    rng = np.random.default_rng(1)
    base = np.linalg.qr(rng.normal(size=(16, 16)))[0][:6]
    chat = np.linalg.qr(rng.normal(size=(16, 16)))[0][:6]
    new = np.linalg.qr(np.concatenate([base, chat, rng.normal(size=(2, 16))]).T)[0].T[-2:]  # orthogonal to all
    delta = np.concatenate([base[:2] * 3, -chat[:1], new])
    np.testing.assert_array_equal(delta_only(delta, base, chat), [False, False, False, True, True])
    brute = np.array([[abs(np.dot(x, y)) / np.linalg.norm(x) / np.linalg.norm(y) for y in base] for x in delta]).max(1)
    np.testing.assert_allclose(max_abs_cosine(delta, base, chunk=2), brute, atol=1e-12)


def test_enrichment_point_estimate_and_bootstrap_ci():
    F = 2000
    g = np.zeros(F, bool)
    g[:200] = True  # 10% of latents in the group
    s = np.zeros(F, bool)
    s[:40] = True  # 40 shifted in the group
    s[1000:1060] = True  # 60 shifted outside
    e = enrichment(g, s, n_resamples=1000)
    assert e.enrichment == pytest.approx((40 / 100) / 0.1)
    assert (e.n_group, e.n_shifted, e.n_group_shifted) == (200, 100, 40)
    assert e.ci_low < e.enrichment < e.ci_high
    assert e.ci_low > 2.5 and e.ci_high < 5.5  # ~ binomial spread of 40/100 around 0.4
    # no enrichment: shifted latents spread like the group
    s2 = np.zeros(F, bool)
    s2[::20] = True
    e2 = enrichment(g, s2, n_resamples=500)
    assert e2.enrichment == pytest.approx(1.0)
    assert e2.ci_low < 1.0 < e2.ci_high
    with pytest.raises(ValueError, match="at least one"):
        enrichment(g, np.zeros(F, bool))


class _ReluSAE:
    def __init__(self, W):
        self.params = {"W_dec": W, "W_enc": W.T, "b_enc": np.zeros(len(W)), "b_dec": np.zeros(W.shape[1])}
        self.d_sae, self.d_in = W.shape

    def encode(self, x):
        return np.maximum(x @ self.params["W_enc"], 0)


def test_evaluate_shift_finds_planted_shifts_and_their_enrichment():
    from sae_jax.data.source import ArraySource
    from sae_jax.evals.shift import evaluate_shift

    rng = np.random.default_rng(5)
    W = np.linalg.qr(rng.normal(size=(16, 16)))[0]  # orthonormal dictionary, 16 latents
    n = 4000
    base = np.abs(rng.normal(size=(n, 16))) * (rng.random((n, 16)) < 0.3) @ W
    group = rng.random(n) < 0.25
    chat = base.copy()
    chat[group] += 2.0 * W[3]  # latent 3 amplified in chat, on the group's texts only
    chat -= np.outer(base @ W[7], W[7])  # latent 7 switched off in chat
    sae = _ReluSAE(W)
    res = evaluate_shift(sae, ArraySource(base.astype(np.float32)), ArraySource(chat.astype(np.float32)),
                         np.arange(n), batch_size=700, threshold=0.5, row_group=group.astype(int), n_resamples=300)
    hb, hc = sae.encode(base.astype(np.float32)), sae.encode(chat.astype(np.float32))
    np.testing.assert_allclose(res.d, cohens_d_arrays(hb, hc), rtol=1e-5, atol=1e-7)
    assert res.classes[3] == AMPLIFIED and res.classes[7] == SUPPRESSED
    assert res.counts[AMPLIFIED] == 1 and res.counts[SUPPRESSED] == 1
    assert res.top_amplified[0][0] == 3 and res.top_suppressed[0][0] == 7
    # latent 3 now fires mostly on group texts: the only group latent, and half of the shifted ones
    assert res.enrichment["n_group"] == 1 and res.enrichment["n_group_shifted"] == 1
    assert res.enrichment["enrichment"] == pytest.approx((1 / 2) / (1 / 16))
    assert np.isnan(res.enrichment["ci_low"])  # one group latent: resamples often hold none, no CI
