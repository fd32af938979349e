"""Fast TopK SAE kernels: exact top-k, a sparse encoder with a row-sparse backward, a gathered decoder."""
from sae_jax.kernels.sparse_topk import (
    choose_impl,
    sparse_decode,
    sparse_encode,
    topk,
)

__all__ = ["choose_impl", "sparse_decode", "sparse_encode", "topk"]
