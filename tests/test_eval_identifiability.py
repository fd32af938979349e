import itertools

import numpy as np
import pytest

from sae_jax.evals.identifiability import match_directions, mcc


def _brute_force_best(score):
    """Best total score of a one-to-one matching, by exhaustive search (tiny sizes only)."""
    if score.shape[0] > score.shape[1]:
        score = score.T
    n_a, n_b = score.shape
    return max(sum(score[i, c] for i, c in enumerate(cols)) for cols in itertools.permutations(range(n_b), n_a))


def test_match_directions_recovers_permuted_signed_scaled_dictionary():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(12, 20))
    perm = rng.permutation(12)
    signs = rng.choice([-1.0, 1.0], size=12)
    scales = rng.uniform(0.5, 3.0, size=12)
    learned = true[perm] * (signs * scales)[:, None]
    mean_cos, share, assignment = match_directions(true, learned)
    assert mean_cos == pytest.approx(1.0, abs=1e-12)
    assert share == 1.0
    # true row perm[j] sits at learned row j
    np.testing.assert_array_equal(assignment[perm], np.arange(12))


def test_match_directions_matches_brute_force_on_random_sets():
    rng = np.random.default_rng(1)
    for n_a, n_b in [(4, 4), (3, 6), (5, 3)]:
        A, B = rng.normal(size=(n_a, 7)), rng.normal(size=(n_b, 7))
        mean_cos, share, assignment = match_directions(A, B, threshold=0.5)
        cos = np.abs((A / np.linalg.norm(A, axis=1, keepdims=True)) @ (B / np.linalg.norm(B, axis=1, keepdims=True)).T)
        best_total = _brute_force_best(cos)
        assert mean_cos == pytest.approx(best_total / n_a, rel=1e-12)
        matched = [cos[i, j] for i, j in enumerate(assignment) if j >= 0]
        assert len(set(j for j in assignment if j >= 0)) == min(n_a, n_b)
        assert share == pytest.approx(sum(m > 0.5 for m in matched) / n_a)


def test_match_directions_partial_recovery_share():
    rng = np.random.default_rng(2)
    true = np.linalg.qr(rng.normal(size=(16, 16)))[0][:8]  # 8 orthonormal atoms
    learned = true.copy()
    learned[:3] = true[:3] + 2.0 * true[3:6]  # 3 atoms blended with others: cos ~ 0.45
    learned = np.concatenate([learned, rng.normal(size=(4, 16)) * 1e-3 + true[6:7]])
    mean_cos, share, _ = match_directions(true, learned)
    assert share == pytest.approx(5 / 8)
    assert 0.5 < mean_cos < 1.0


def test_match_directions_width_mismatch_is_explained():
    with pytest.raises(ValueError, match="same width"):
        match_directions(np.ones((2, 3)), np.ones((2, 4)))


def test_mcc_equals_reference_correlations_and_streaming_equals_batch():
    rng = np.random.default_rng(3)
    z = rng.exponential(size=(500, 6)) * (rng.random((500, 6)) < 0.3)
    perm = rng.permutation(6)
    z2 = 2.0 * z[:, perm] + 0.3 * rng.normal(size=(500, 6))
    value, assignment = mcc(z, z2)
    ref = np.abs(np.corrcoef(z.T, z2.T)[:6, 6:])
    cols = assignment
    np.testing.assert_array_equal(perm[cols], np.arange(6))  # z2[:, j] came from z[:, perm[j]]
    assert value == pytest.approx(np.mean(ref[np.arange(6), cols]), rel=1e-10)
    assert value == pytest.approx(_brute_force_best(ref) / 6, rel=1e-10)
    streamed, _ = mcc((z[i:i + 64], z2[i:i + 64]) for i in range(0, 500, 64))
    assert streamed == pytest.approx(value, rel=1e-10)


def test_mcc_constant_column_is_zero_not_nan():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(50, 3))
    z[:, 1] = 0.0  # a dead latent
    value, _ = mcc(z, z)
    assert value == pytest.approx(2 / 3)


def test_mcc_sparse_codes_take_the_sparse_path_and_match_corrcoef():
    rng = np.random.default_rng(5)
    z = rng.exponential(size=(3000, 200)) * (rng.random((3000, 200)) < 0.01)  # 1% dense: sparse product
    z2 = z[:, ::-1] * 3.0
    value, assignment = mcc(z, z2)
    ref = np.nan_to_num(np.abs(np.corrcoef(z.T, z2.T)[:200, 200:]))
    np.testing.assert_array_equal(assignment, np.arange(200)[::-1])
    assert value == pytest.approx(np.mean(ref[np.arange(200), assignment]), rel=1e-9)
