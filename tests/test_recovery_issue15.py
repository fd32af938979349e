"""Ground truth for the new architectures: ≥ 90% of the true atoms have a decoder row (Hungarian-matched,
one latent per atom) with |cos| > 0.9, on x = s D + noise (d 48, 64 atoms, 3 active per row) or, for
transcoders, on pairs x = s D_in, y = s D_out (+ x Aᵀ: the skip-transcoder must also learn W_skip ≈ A)."""
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from sae_jax.config import DataConfig, OptimConfig, SAEConfig, TrainConfig
from sae_jax.data.paired import synthetic_pairs
from sae_jax.data.synthetic import synthetic_source
from sae_jax.geometric_median import geometric_median
from tests.helpers_train import run_steps

D, N_ATOMS, K = 48, 64, 3


def recovered_fraction(true_atoms, w_dec, threshold=0.9):
    """Share of true atoms whose Hungarian-matched decoder row has |cos| > threshold."""
    w = w_dec / np.linalg.norm(w_dec, axis=1, keepdims=True)
    cos = np.abs(true_atoms @ w.T)
    rows, cols = linear_sum_assignment(-cos)
    return float((cos[rows, cols] > threshold).mean())


def test_recovered_fraction_counts_only_good_matches():
    atoms = np.eye(4, 6)
    w = np.eye(4, 6) + np.diag([0, 0, 0, 2.0]) @ np.eye(4, 6)[[0, 1, 2, 0]]  # row 3 mixes atoms 3 and 0
    assert recovered_fraction(atoms, w) == 0.75
    assert recovered_fraction(atoms, np.ones((8, 6))) <= 0.25  # one direction cannot match four atoms


CASES = {
    # arch: (sae settings, steps, optimizer decay)
    "matryoshka_batchtopk": ({"matryoshka_widths": (64, 128), "dead_tokens": 30_000}, 800, "none"),
    "gated": ({"sparsity_coef": 0.3}, 800, "none"),
    "transcoder": ({"sparsity_coef": 0.05}, 1500, "linear"),
    "skip_transcoder": ({"sparsity_coef": 0.02}, 2500, "linear"),
}


@pytest.mark.parametrize("arch", ["matryoshka_batchtopk", "gated", pytest.param("transcoder", marks=pytest.mark.slow),
                                  pytest.param("skip_transcoder", marks=pytest.mark.slow)])
def test_recovers_true_dictionary(arch):
    sae, steps, decay = CASES[arch]
    if arch in ("transcoder", "skip_transcoder"):
        source = synthetic_pairs(32768, D, N_ATOMS, K, noise=0.01, skip=0.5 if arch == "skip_transcoder" else 0.0)
    else:
        source = synthetic_source(32768, D, N_ATOMS, K, noise=0.01)
    cfg = TrainConfig(
        steps=steps, data=DataConfig(batch_size=512),
        sae=SAEConfig(**({"architecture": arch, "d_sae": 128, "k": K, "dead_tokens": 10**9} | sae)),
        optim=OptimConfig(lr=3e-3, warmup_steps=20, decay=decay))
    b_dec = geometric_median(source.read(np.arange(2048)))
    state, metrics, _ = run_steps(cfg, source, cfg.steps, seed_b_dec=b_dec)
    w_dec = np.asarray(state.params["W_dec"])
    share = recovered_fraction(source.metadata["dictionary"], w_dec)  # D_out for transcoders
    assert share >= 0.9, f"{arch}: {share:.1%} of atoms recovered (FVU {metrics['fvu']:.3f}, L0 {metrics['l0']:.1f})"
    assert metrics["l0"] < 8  # and the codes really are sparse
    if arch == "skip_transcoder":
        a, w_skip = source.metadata["skip_matrix"], np.asarray(state.params["W_skip"])
        cos = np.sum(a * w_skip) / (np.linalg.norm(a) * np.linalg.norm(w_skip))
        assert cos > 0.9, f"W_skip vs the true linear map: cos {cos:.3f}"
