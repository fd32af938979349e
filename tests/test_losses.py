"""Batch metrics against NumPy, including the variance denominator of FVU."""
import jax.numpy as jnp
import numpy as np

from sae_jax import losses


def test_metrics_match_numpy():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 8)) + 3.0).astype(np.float32)  # far from zero mean
    x_hat = (x + 0.3 * rng.standard_normal(x.shape)).astype(np.float32)
    h = np.where(rng.random((64, 20)) < 0.2, rng.random((64, 20)), 0).astype(np.float32)
    err = np.sum((x - x_hat) ** 2)
    np.testing.assert_allclose(float(losses.mse(x, x_hat)), err / 64, rtol=1e-5)
    fvu = err / np.sum((x - x.mean(0)) ** 2)
    np.testing.assert_allclose(float(losses.fvu(x, x_hat)), fvu, rtol=1e-5)
    # the widely copied bug divides by E||x||^2, which flatters a non-centred input
    buggy = err / np.sum(x**2)
    np.testing.assert_allclose(float(losses.nmse_vs_zero(x, x_hat)), buggy, rtol=1e-5)
    assert fvu > 5 * buggy
    np.testing.assert_allclose(float(losses.l0(h)), np.mean((h != 0).sum(1)), rtol=1e-6)
    norms = rng.random(20).astype(np.float32)
    np.testing.assert_allclose(float(losses.l1(h, jnp.asarray(norms))), np.mean((h * norms).sum(1)), rtol=1e-5)
    since = np.array([0, 5, 10, 11, 3])
    np.testing.assert_allclose(float(losses.dead_fraction(jnp.asarray(since), 10)), 2 / 5, rtol=1e-6)


def test_shifted_one_pass_variance_matches_the_two_pass_numpy_value():
    """total_variance(x, shift): one pass around a point near the mean, even with a large offset."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((512, 24)) * 0.5 + 40.0).astype(np.float32)  # |mean|^2 ~ 6000x the variance
    want = np.mean(np.sum((x.astype(np.float64) - x.astype(np.float64).mean(0)) ** 2, axis=1))
    shift = jnp.asarray(x[:64].mean(0))  # e.g. b_dec, near the mean
    np.testing.assert_allclose(float(losses.total_variance(jnp.asarray(x), shift)), want, rtol=1e-5)
    np.testing.assert_allclose(float(losses.total_variance(jnp.asarray(x))), want, rtol=1e-5)
    x_hat = jnp.asarray(x) + 0.1
    np.testing.assert_allclose(float(losses.fvu(jnp.asarray(x), x_hat, shift)),
                               float(losses.fvu(jnp.asarray(x), x_hat)), rtol=1e-5)
