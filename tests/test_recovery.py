"""Ground truth: SAEs trained on x = s @ D + noise recover the true atoms of D."""
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from sae_jax.config import DataConfig, OptimConfig, SAEConfig, TrainConfig
from sae_jax.data.synthetic import synthetic_source
from sae_jax.geometric_median import geometric_median
from tests.helpers_train import run_steps


def matched_abs_cosine(true_atoms, w_dec):
    """Mean |cosine| of each true atom with its Hungarian-matched decoder row (independent of evals)."""
    w = w_dec / np.linalg.norm(w_dec, axis=1, keepdims=True)
    cos = np.abs(true_atoms @ w.T)
    rows, cols = linear_sum_assignment(-cos)
    return cos[rows, cols].mean()


@pytest.fixture(scope="module")
def source():
    return synthetic_source(32768, 32, 64, 3, noise=0.01)


@pytest.mark.parametrize("arch,coef", [("topk", 0.0), ("batchtopk", 0.0), ("relu", 0.3), ("jumprelu", 0.1)])
def test_recovers_true_dictionary(source, arch, coef):
    cfg = TrainConfig(
        steps=800, data=DataConfig(batch_size=512),
        sae=SAEConfig(architecture=arch, d_sae=128, k=3, dead_tokens=10**9, sparsity_coef=coef,
                      jumprelu_bandwidth=0.05, jumprelu_init_threshold=0.1),
        optim=OptimConfig(lr=3e-3, warmup_steps=20))
    b_dec = geometric_median(source.read(np.arange(2048)))
    state, metrics, _ = run_steps(cfg, source, cfg.steps, seed_b_dec=b_dec)
    score = matched_abs_cosine(source.metadata["dictionary"], np.asarray(state.params["W_dec"]))
    assert score >= 0.9, f"{arch}: mean matched |cos| {score:.3f} (FVU {metrics['fvu']:.3f}, L0 {metrics['l0']:.1f})"
    assert metrics["l0"] < 8  # and the codes really are sparse
