"""SAEBench 0.6.0's reconstruction-metric definitions (sae_jax.evals.core.saebench_reconstruction),
checked on hand-computed cases; they are NOT sae_jax's FVU (docs/saebench.md)."""
import numpy as np
import pytest

from sae_jax.evals.core import CoreAccumulator, saebench_reconstruction


def test_hand_computed_batch():
    # x = [1,0], [3,0]; x_hat = [1,0], [1,0]: residuals 0 and 4
    x = np.array([[1.0, 0.0], [3.0, 0.0]])
    x_hat = np.array([[1.0, 0.0], [1.0, 0.0]])
    got = saebench_reconstruction([(x, x_hat)])
    # mean ||x||^2 = 5; per-dim second moments [5, 0] -> m = 2.5; denominator 5 - 6.25 = -1.25; mean rss 2
    assert got["explained_variance"] == pytest.approx(1 - 2 / -1.25)
    # per token: ||x_t - mean||^2 = 1 each -> 1 - 0/1 = 1 and 1 - 4/1 = -3
    assert got["explained_variance_legacy"] == pytest.approx(-1.0)
    assert got["mse"] == pytest.approx((0 / 2 + 4 / 2) / 2)
    # sae_jax's explained variance on the same tokens: 1 - FVU = 1 - 4/2 = -1
    acc = CoreAccumulator(2, 1)
    acc.update(x, x_hat, np.ones((2, 1)))
    assert acc.result().explained_variance == pytest.approx(-1.0)


def test_two_batches_match_a_token_loop():
    rng = np.random.default_rng(0)
    batches = [(rng.normal(3, 1, (n, 5)), rng.normal(3, 1, (n, 5))) for n in (4, 4)]
    sq = np.mean([np.mean([(t**2).sum() for t in x]) for x, _ in batches])
    m = np.mean([[np.mean(x[:, d] ** 2) for d in range(5)] for x, _ in batches])
    rss = np.mean([((t - u) ** 2).sum() for x, xh in batches for t, u in zip(x, xh)])
    got = saebench_reconstruction(iter(batches))
    assert got["explained_variance"] == pytest.approx(1 - rss / (sq - m**2))
    assert got["mse"] == pytest.approx(rss / 4)


def test_empty_or_mismatched_input_is_refused():
    with pytest.raises(ValueError, match="no batches"):
        saebench_reconstruction([])
    with pytest.raises(ValueError, match="same"):
        saebench_reconstruction([(np.zeros((2, 3)), np.zeros((2, 4)))])
