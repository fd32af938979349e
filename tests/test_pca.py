"""PCA baseline vs scikit-learn."""
import numpy as np
import pytest
from sklearn.decomposition import PCA

from sae_jax.baselines.pca import fit_pca, fit_pca_source
from sae_jax.data.source import ArraySource


def _data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)) + 3.0).astype(np.float32)


def test_matches_sklearn():
    x = _data()
    ref = PCA(n_components=4).fit(x.astype(np.float64))
    for p in (fit_pca(x, 4), fit_pca_source(ArraySource(x), 4, chunk=128)):
        # Same sign convention as sklearn, so the components match exactly, not just up to sign.
        np.testing.assert_allclose(p["W_dec"], ref.components_, atol=1e-5)
        np.testing.assert_allclose(p["W_enc"], ref.components_.T, atol=1e-5)
        np.testing.assert_allclose(p["b_dec"], ref.mean_, rtol=1e-5)
        np.testing.assert_allclose(p["explained_variance"], ref.explained_variance_, rtol=1e-5)
        h = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
        np.testing.assert_allclose(h, ref.transform(x), atol=1e-4)
        np.testing.assert_allclose(h @ p["W_dec"] + p["b_dec"], ref.inverse_transform(ref.transform(x)), atol=1e-4)


def test_too_many_components_is_a_clear_error():
    with pytest.raises(ValueError, match="at most d=6"):
        fit_pca(_data(), 7)
