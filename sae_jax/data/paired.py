"""[input | target] rows for transcoders: two aligned sources (e.g. the MLP-input and MLP-output
stores of one extraction pass) read as one, and synthetic pairs with a known ground truth."""
from __future__ import annotations

from typing import Any

import numpy as np

from sae_jax.data.source import ActivationSource, ArraySource
from sae_jax.data.synthetic import ground_truth_dictionary, sparse_codes

SPLIT_KEY = "transcoder_input_width"  # metadata: where a row's input part ends


class PairedSource:
    """Rows [x_i | y_i] of an input source and a target source aligned row by row."""

    def __init__(self, inputs: ActivationSource, targets: ActivationSource):
        if inputs.n_rows != targets.n_rows:
            raise ValueError(f"input and target sources must be aligned row by row (one extraction pass): "
                             f"they hold {inputs.n_rows} and {targets.n_rows} rows")
        self._inputs, self._targets = inputs, targets
        self.n_rows = inputs.n_rows
        self.d_in = inputs.d_in + targets.d_in

    @property
    def metadata(self) -> dict[str, Any]:
        return {SPLIT_KEY: self._inputs.d_in, "input": dict(self._inputs.metadata),
                "target": dict(self._targets.metadata)}

    def read(self, rows: np.ndarray) -> np.ndarray:
        return np.concatenate([self._inputs.read(rows), self._targets.read(rows)], axis=1)


def synthetic_pairs(n_rows: int, d: int, n_features: int, k: float, noise: float = 0.01, skip: float = 0.0,
                    seed: int = 0) -> ArraySource:
    """Rows [x | y] with shared sparse codes s: x = s D_in + noise, y = s D_out + noise.

    D_in, D_out [n_features, d] are unrelated unit-norm atoms. With ``skip`` > 0 the target also gets
    a linear part: x = (σ ⊙ s) D_in + z + noise, y = ReLU(σ ⊙ s) D_out + x Aᵀ + noise, with signs σ
    (+1 with probability 0.4), a dense Gaussian component z of expected norm ``skip`` and a random
    map A [d, d] (entries N(0, skip²/d)). The cheapest exact fit is then one latent ReLU(σ_i s_i)
    per atom with decoder row D_out_i plus W_skip = A: the alternative σ s D_out through the skip plus
    ReLU(−σ s) latents pays 1.5 times the L1 (with non-negative codes the skip would also absorb
    the linear regression of s D_out on x, and neither W_skip nor the atoms would be identifiable).
    Ground truth in metadata:
    ``dictionary`` (D_out), ``dictionary_in`` and ``skip_matrix`` (A, zeros without skip).
    """
    if n_features <= 0 or d <= 0 or n_rows <= 0:
        raise ValueError(f"synthetic pairs need positive sizes, got n_rows={n_rows} d={d} n_features={n_features}")
    d_in_atoms = ground_truth_dictionary(n_features, d, seed)
    d_out_atoms = ground_truth_dictionary(n_features, d, seed + 7919)
    rng = np.random.default_rng([seed, 5])
    a = (rng.standard_normal((d, d)) * skip / np.sqrt(d)).astype(np.float32)
    rows = np.empty((n_rows, 2 * d), np.float32)
    chunk = 16384
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        s = sparse_codes(stop - start, n_features, k, seed + start)
        signed = s * np.where(rng.random(s.shape) < 0.4, 1.0, -1.0).astype(np.float32) if skip else s
        x = signed @ d_in_atoms + noise * rng.standard_normal((stop - start, d))
        if skip:
            x = x + rng.standard_normal((stop - start, d)) * skip / np.sqrt(d)
        rows[start:stop, :d] = x
        y = np.maximum(signed, 0) @ d_out_atoms + x @ a.T
        rows[start:stop, d:] = y + noise * rng.standard_normal((stop - start, d))
    return ArraySource(rows, {"source": "synthetic_pairs", SPLIT_KEY: d, "dictionary": d_out_atoms,
                              "dictionary_in": d_in_atoms, "skip_matrix": a, "n_features": n_features, "k": k,
                              "noise": noise, "skip": skip, "seed": seed})
