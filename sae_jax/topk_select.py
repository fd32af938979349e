"""Top-k over the latent axis (TopK) or the whole batch (BatchTopK's threshold), on one device
or across a sharded mesh.

Sharded path (two stages, as in openai/sparse_autoencoder): each 'dict' shard takes its
local top-k in ``jax.shard_map``, the k candidates of every shard are all-gathered, and a
global top-k over those candidates gives the answer. XLA's top-k over a sharded axis has
had correctness bugs, so the tests compare this with ``lax.top_k`` on the gathered array.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from sae_jax.mesh import CODES_SPEC

TopK = Callable[[jax.Array, int], tuple[jax.Array, jax.Array]]
BatchKth = Callable[[jax.Array, int], jax.Array]


def sharded_topk(pre: jax.Array, k: int, mesh: Mesh) -> tuple[jax.Array, jax.Array]:
    """(values, global indices) [B, k] of the k largest entries per row of a [B, F] array."""

    def local(block):
        vals, idx = lax.top_k(block, k)
        idx = idx + lax.axis_index("dict") * block.shape[1]
        all_vals = lax.all_gather(vals, "dict", axis=1, tiled=True)
        all_idx = lax.all_gather(idx, "dict", axis=1, tiled=True)
        top_vals, pos = lax.top_k(all_vals, k)
        return top_vals, jnp.take_along_axis(all_idx, pos, axis=1)

    # After the all-gather every 'dict' shard holds the same candidates and the same answer;
    # the replication checker cannot see through all_gather + top_k, so it is switched off.
    return jax.shard_map(
        local, mesh=mesh, in_specs=CODES_SPEC, out_specs=(P("data", None), P("data", None)),
        check_vma=False,
    )(pre)


def make_topk(mesh: Mesh | None) -> TopK:
    """``lax.top_k`` on an unsharded dictionary, the two-stage version when 'dict' > 1."""
    if mesh is None or mesh.shape["dict"] == 1:
        return lax.top_k
    return lambda pre, k: sharded_topk(pre, k, mesh)


def batch_kth(acts: jax.Array, m: int) -> jax.Array:
    """The m-th largest entry of a whole [B, F] array (BatchTopK's threshold), on one device."""
    return jnp.min(lax.top_k(acts.reshape(-1), m)[0])


def sharded_batch_kth(acts: jax.Array, m: int, mesh: Mesh) -> jax.Array:
    """``batch_kth`` of a [B, F] array split over 'data' and 'dict': each device keeps the m largest
    of its block (all m may lie in one block), the candidates of all devices are gathered and
    the m-th largest of them is the answer; no device ever holds the whole array."""

    def local(block):
        flat = block.reshape(-1)
        cand = lax.all_gather(lax.top_k(flat, min(m, flat.size))[0], ("data", "dict"), tiled=True)
        return jnp.min(lax.top_k(cand, m)[0])

    return jax.shard_map(local, mesh=mesh, in_specs=CODES_SPEC, out_specs=P(), check_vma=False)(acts)


def make_batch_kth(mesh: Mesh | None) -> BatchKth:
    """``batch_kth`` on a one-device mesh, the two-stage version on any larger one."""
    if mesh is None or mesh.size == 1:
        return batch_kth
    return lambda acts, m: sharded_batch_kth(acts, m, mesh)
