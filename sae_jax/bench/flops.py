"""FLOPs per train step: model (dense-equivalent) and executed (what the kernels do)."""
from __future__ import annotations


def model_flops(arch: str, batch: int, d_in: int, n_latents: int) -> float:
    """Dense-equivalent: 6 x (2 d F parameters) x tokens = encoder and decoder matmuls,
    forward (1x) and backward (2x: weight and input gradients)."""
    del arch
    return 12.0 * batch * d_in * n_latents


def executed_flops(arch: str, impl: str, batch: int, d_in: int, n_latents: int, k: int) -> float:
    """Matmul FLOPs the chosen kernels execute (elementwise work and Adam not counted).

    sparse TopK: encoder forward 2BdF; decoder forward 2Bkd; decoder backward 2Bkd (values)
    + 2Bkd (rows); encoder backward 2Bkd (scatter into W_enc) + 2dF (b_dec matvec). Sparse
    BatchTopK: the same with k the mean number of actives per row (its padded slots are not counted)."""
    if arch in ("topk", "batchtopk") and impl == "sparse":
        return 2.0 * batch * d_in * n_latents + 8.0 * batch * k * d_in + 2.0 * d_in * n_latents
    return model_flops(arch, batch, d_in, n_latents)
