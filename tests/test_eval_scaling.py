"""Power-law fits against independent computations (numpy polyfit, the textbook slope SE, a planted floor)."""
import numpy as np
import pytest
from scipy import stats

from sae_jax.evals.scaling import fit_power_law, fit_power_law_floor, power_law


def test_exact_power_law_is_recovered():
    F = 2.0 ** np.arange(11, 17)
    fit = fit_power_law(F, 3.0 * F ** -0.26)
    assert fit["alpha"] == pytest.approx(0.26, abs=1e-10) and fit["a"] == pytest.approx(3.0, rel=1e-8)
    assert fit["r2"] == pytest.approx(1.0)
    np.testing.assert_allclose(power_law(F, fit), 3.0 * F ** -0.26, rtol=1e-8)


def test_slope_and_ci_match_textbook_ols():
    rng = np.random.default_rng(1)
    F = 2.0 ** np.arange(11, 17)
    y = 0.9 * F ** -0.3 * np.exp(rng.normal(0, 0.05, len(F)))
    fit = fit_power_law(F, y, confidence=0.9)
    x, ly = np.log(F), np.log(y)
    slope, icpt = np.polyfit(x, ly, 1)
    resid = ly - (slope * x + icpt)
    se = np.sqrt(resid @ resid / (len(x) - 2) / ((x - x.mean()) ** 2).sum())
    t = stats.t.ppf(0.95, len(x) - 2)
    assert fit["alpha"] == pytest.approx(-slope, rel=1e-10)
    np.testing.assert_allclose(fit["alpha_ci"], (-slope - t * se, -slope + t * se), rtol=1e-8)


def test_floor_fit_recovers_planted_floor_and_ci_covers_alpha():
    rng = np.random.default_rng(0)
    F = 2.0 ** np.arange(10, 20)
    y = (0.05 + 4.0 * F ** -0.4) * np.exp(rng.normal(0, 0.01, len(F)))
    fit = fit_power_law_floor(F, y, n_boot=200)
    assert fit["floor"] == pytest.approx(0.05, rel=0.2)
    lo, hi = fit["alpha_ci"]
    assert lo <= 0.4 <= hi and hi - lo < 0.3
    # the no-floor fit to the same data is biased toward a smaller exponent
    assert fit_power_law(F, y)["alpha"] < lo


def test_bad_input():
    with pytest.raises(ValueError, match="> 0"):
        fit_power_law([1, 2, 4], [1.0, 0.0, 0.5])
    with pytest.raises(ValueError, match="at least 4"):
        fit_power_law_floor([1, 2, 4], [1.0, 0.7, 0.5])
    with pytest.raises(ValueError, match="one length"):
        fit_power_law([1, 2, 4], [1.0, 0.7])
