import numpy as np
import pytest
from scipy.optimize import minimize

from sae_jax.geometric_median import geometric_median


def test_matches_direct_minimisation():
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.standard_normal((200, 5)), 50 + rng.standard_normal((20, 5))])
    gm = geometric_median(pts)
    ref = minimize(lambda y: np.linalg.norm(pts - y, axis=1).sum(), pts.mean(0), method="Nelder-Mead",
                   options={"xatol": 1e-9, "fatol": 1e-9, "maxiter": 40000, "maxfev": 40000}).x
    cost = lambda y: np.linalg.norm(pts - y, axis=1).sum()
    assert cost(gm) <= cost(ref) + 1e-6
    np.testing.assert_allclose(gm, ref, atol=1e-3)
    # robust to the outlier cluster, unlike the mean
    assert np.linalg.norm(gm) < 1.0 < np.linalg.norm(pts.mean(0))


def test_rejects_empty():
    with pytest.raises(ValueError, match="non-empty"):
        geometric_median(np.zeros((0, 3)))
