"""RDC against known cases: independence, a non-linear dependence Pearson misses, monotone invariance."""
import numpy as np
from scipy.stats import pearsonr

from sae_jax.evals.dependence import rdc, rdc_matrix


def test_rdc_known_cases():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 2000)
    y_quad = x ** 2 + 0.01 * rng.normal(size=x.size)
    assert abs(pearsonr(x, y_quad)[0]) < 0.1  # linear correlation misses it
    assert rdc(x, y_quad) > 0.9
    assert rdc(x, rng.normal(size=x.size)) < 0.2  # independent
    assert rdc(x, 3 * x + 1) > 0.99
    # the copula makes RDC invariant to strictly monotone transforms (same seed -> same features)
    z = rng.normal(size=x.size) + x
    assert np.isclose(rdc(x, z), rdc(np.exp(x), z ** 3), atol=1e-10)
    assert rdc(x, np.zeros_like(x)) == 0.0
    m = rdc_matrix(np.column_stack([x, -x]), np.column_stack([y_quad, rng.normal(size=x.size)]))
    assert m.shape == (2, 2) and m[0, 0] > 0.9 and m[1, 0] > 0.9 and m[:, 1].max() < 0.2
