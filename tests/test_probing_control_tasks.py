"""Type-level control tasks (Hewitt & Liang) against hand-made cases with known answers."""
import numpy as np
import pytest

from sae_jax.evals.probing import control_task_selectivity, type_control_labels


def test_type_control_labels_are_constant_per_type_and_keep_type_frequencies():
    types = np.repeat(np.arange(10), 3)
    y = (np.arange(10) < 4).astype(int).repeat(3)
    z = type_control_labels(types, y, np.random.default_rng(0))
    for t in range(10):
        assert len(set(z[types == t])) == 1
    assert z[::3].sum() == 4  # 4 of 10 types positive, as in the real task
    # over many maps each type is positive about 40% of the time (a random map, not a fixed one)
    rng = np.random.default_rng(1)
    share = np.mean([type_control_labels(types, y, rng)[::3] for _ in range(400)], axis=0)
    np.testing.assert_allclose(share, 0.4, atol=0.1)


def test_type_control_labels_refuse_labels_that_vary_within_a_type():
    with pytest.raises(ValueError, match="same type"):
        type_control_labels(np.array([0, 0, 1]), np.array([0, 1, 1]), np.random.default_rng(0))


def test_identity_features_memorise_controls_gender_feature_does_not():
    rng = np.random.default_rng(0)
    n_types, reps = 40, 6
    types = np.repeat(np.arange(n_types), reps)
    y = (np.arange(n_types) % 2).repeat(reps)
    context = np.tile(np.arange(reps), n_types)
    tr, te = context < 4, context >= 4  # held-out contexts, every type in both splits
    onehot = np.eye(n_types)[types] + 0.01 * rng.normal(size=(len(types), n_types))
    r = control_task_selectivity(onehot[tr], y[tr], types[tr], onehot[te], y[te], types[te], n_controls=3)
    assert r["accuracy"] == 1.0 and min(r["control_accuracies"]) == 1.0 and r["selectivity"] == 0.0
    gender = np.c_[y * 2.0 - 1 + 0.1 * rng.normal(size=len(y)), rng.normal(size=(len(y), 3))]
    r = control_task_selectivity(gender[tr], y[tr], types[tr], gender[te], y[te], types[te], n_controls=5)
    assert r["accuracy"] == 1.0 and r["control_accuracy"] < 0.75 and r["selectivity"] > 0.25
