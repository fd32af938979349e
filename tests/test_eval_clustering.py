import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from sae_jax.evals.clustering import cluster_contexts, cluster_directions, shifted_share


def test_directions_cluster_by_theme_regardless_of_norm():
    rng = np.random.default_rng(0)
    centres = np.linalg.qr(rng.normal(size=(24, 24)))[0][:3]
    truth = np.repeat([0, 1, 2], 30)
    W = centres[truth] + 0.15 * rng.normal(size=(90, 24)) / np.sqrt(24)
    W *= rng.uniform(0.1, 10, size=(90, 1))  # decoder norms must not matter
    labels = cluster_directions(W, 3)
    assert adjusted_rand_score(truth, labels) == 1.0


def test_contexts_cluster_by_vocabulary():
    texts = ["cat dog pet fur", "dog cat paw fur", "pet cat dog", "stock bond market", "market stock price",
             "bond price market"]
    labels = cluster_contexts(texts, 2)
    assert adjusted_rand_score([0, 0, 0, 1, 1, 1], labels) == 1.0


def test_shifted_share_counts():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    shifted = np.array([1, 1, 1, 0, 0, 0, 1, 0, 0, 0], bool)
    rows = shifted_share(labels, shifted)
    assert rows[0] == {"cluster": 0, "size": 4, "n_shifted": 3, "share_shifted": 0.75}
    assert [r["cluster"] for r in rows] == [0, 2, 1]
    assert rows[1]["share_shifted"] == 0.25 and rows[2]["share_shifted"] == 0.0
    with pytest.raises(ValueError, match="n_clusters"):
        cluster_directions(np.ones((3, 2)), 4)
