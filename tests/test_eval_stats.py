import numpy as np
import pytest
from scipy import stats

from sae_jax.evals.stats import ClassMoments, benjamini_hochberg, bonferroni, significance_counts, ttests

# Benjamini & Hochberg (1995), section 3.3: 15 p-values; at q = 0.05 BH rejects 4, Bonferroni 3.
BH95 = np.array([0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459, 0.3240,
                 0.4262, 0.5719, 0.6528, 0.7590, 1.0000])


def _bh_step_up(p, q):
    """Textbook step-up: reject the i smallest where i = max{i : p_(i) <= i q / m}."""
    order = np.argsort(p)
    m = len(p)
    ok = np.nonzero(p[order] <= (np.arange(1, m + 1) * q / m))[0]
    reject = np.zeros(m, bool)
    if ok.size:
        reject[order[: ok.max() + 1]] = True
    return reject


def test_corrections_on_the_published_example():
    assert bonferroni(BH95).sum() == 3
    assert benjamini_hochberg(BH95).sum() == 4
    np.testing.assert_array_equal(benjamini_hochberg(BH95), _bh_step_up(BH95, 0.05))
    c = significance_counts(BH95)
    assert (c.n_uncorrected, c.n_bonferroni, c.n_benjamini_hochberg) == (9, 3, 4)


def test_bh_matches_step_up_on_random_pvalues():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=900), rng.uniform(0, 1e-3, size=100)])
    for q in (0.01, 0.05, 0.2):
        np.testing.assert_array_equal(benjamini_hochberg(p, q), _bh_step_up(p, q))


def test_streamed_ttests_equal_scipy_on_full_data():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 12))
    y = rng.integers(0, 2, 300)
    X[y == 1, :3] += 1.0
    X[:, 5] = 0.0  # a dead unit
    m = ClassMoments(12)
    for i in range(0, 300, 64):
        m.update(X[i:i + 64], y[i:i + 64])
    t, p = m.ttest()
    ref = stats.ttest_ind(X[y == 1], X[y == 0], equal_var=False)
    ok = np.arange(12) != 5
    np.testing.assert_allclose(t[ok], ref.statistic[ok], rtol=1e-9)
    np.testing.assert_allclose(p[ok], ref.pvalue[ok], rtol=1e-9)
    assert t[5] == 0 and p[5] == 1
    t2, p2 = ttests(X, y, equal_var=True)
    np.testing.assert_allclose(p2[ok], stats.ttest_ind(X[y == 1], X[y == 0]).pvalue[ok], rtol=1e-9)
    assert (p[:3] < 1e-6).all()


def test_labels_must_be_binary():
    with pytest.raises(ValueError, match="0 or 1"):
        ttests(np.zeros((4, 2)), np.array([0, 1, 2, 1]))


def test_enrichment_against_direct_computation():
    from sae_jax.evals.enrichment import enrichment, slice_shares

    shares = slice_shares([["a", "a", "b", "c"], ["b", "b"], [], ["a"]], "a")
    np.testing.assert_allclose(shares[[0, 1, 3]], [0.5, 0.0, 1.0])
    assert np.isnan(shares[2])
    rng = np.random.default_rng(0)
    chosen = rng.binomial(10, 0.6, 40) / 10  # planted: 0.6 vs 0.2
    random = rng.binomial(10, 0.2, 200) / 10
    e = enrichment(chosen, random, n_boot=4000, n_perm=2000)
    assert e.mean_chosen == pytest.approx(chosen.mean()) and e.mean_random == pytest.approx(random.mean())
    assert e.difference == pytest.approx(chosen.mean() - random.mean())
    # the bootstrap CI matches the normal-approximation CI of a difference of means
    se = np.sqrt(chosen.var(ddof=1) / 40 + random.var(ddof=1) / 200)
    assert e.ci_low == pytest.approx(e.difference - 1.96 * se, abs=0.02)
    assert e.ci_high == pytest.approx(e.difference + 1.96 * se, abs=0.02)
    assert e.p_permutation < 0.001
    null = enrichment(rng.binomial(10, 0.3, 40) / 10, rng.binomial(10, 0.3, 200) / 10, n_perm=2000, seed=1)
    assert null.ci_low < 0 < null.ci_high and null.p_permutation > 0.01
