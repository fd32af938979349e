"""Fast TopK SAE kernels: exact top-k, a sparse encoder with a row-sparse backward, a gathered
decoder, and the fused autoencoder (+AuxK) the sparse TopK architecture trains with.

``sae_jax.kernels.topk_sae.SparseTopKSAE`` and ``batchtopk_sae.SparseBatchTopKSAE`` (the
architectures; BatchTopK's batch-wide selection is in ``batchtopk.py``) are not re-exported here so
that ``sae_jax.sae`` can import them lazily without an import cycle.
"""
from sae_jax.kernels.fused import sparse_autoencode
from sae_jax.kernels.sparse_topk import (
    choose_impl,
    sparse_decode,
    sparse_encode,
    topk,
)

__all__ = ["choose_impl", "sparse_autoencode", "sparse_decode", "sparse_encode", "topk"]
