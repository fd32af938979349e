"""Exact top-k, sparse TopK encoder and gathered decoder, written so XLA compiles them fast.

Measured on the project's 2-core CPU (docs/performance.md has the figures and commands):
- ``lax.top_k`` on CPU is a single-threaded partial sort per row; pruning with chunk maxima
  first (a vectorised reduce) cuts the rows it has to scan by ~F/(M + k*C).
- Gathering (B, k, d) decoder rows materialises B*k*d floats; a loop over the k slots, each
  a fused gather + multiply-add into a [B, d] accumulator, never materialises them and is
  ~10x faster. Scatter-adds are fastest as a scan over batch blocks.
- The encoder backward touches only the k selected columns of W_enc per token (a
  ``custom_vjp``), instead of the dense B x d x F matmul autodiff would emit.

All functions are exact (float reassociation aside); ties in top-k may be broken in a
different order than ``lax.top_k``.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

_UNROLL_MAX_K = 64  # above this, loops over k slots become scans (compile time)


# ---------------------------------------------------------------------------------------
# top-k


def _chunk_size(n: int, k: int) -> int:
    """Chunk width C for the pruned top-k: about sqrt(n / k), a power of two in [8, 128]."""
    c = 2 ** round(math.log2(max(math.sqrt(n / max(k, 1)), 1.0)))
    return int(min(max(c, 8), 128))


def _topk_chunked(x: jax.Array, k: int, chunk: int, bias: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array]:
    """Exact top-k along the last axis of x (+ bias) via chunk maxima.

    The k largest values lie in the k chunks with the largest maxima (any element in the
    top-k is >= the k-th largest chunk maximum, and each chunk contributes its maximum),
    so: reduce chunk maxima, top-k over them, gather those k chunks, top-k over k*C.
    ``bias`` [n] is added inside both consumers instead of in a separate pass over x
    (that pass cost as much as the top-k itself on CPU).
    """
    *lead, n = x.shape
    rows = math.prod(lead)
    x2 = x.reshape(rows, n)
    m = -(-n // chunk)
    b = jnp.full((n,), -0.0, x.dtype) if bias is None else bias.astype(x.dtype)  # x + -0.0 == x exactly
    if m * chunk != n:  # pad with -inf so the reshape is exact; pads never win unless n < k
        x2 = jnp.pad(x2, ((0, 0), (0, m * chunk - n)), constant_values=-jnp.inf)
        b = jnp.pad(b, (0, m * chunk - n))
    xc = x2.reshape(rows, m, chunk)
    bc = b.reshape(m, chunk)
    _, ci = lax.top_k(jnp.max(xc + bc, axis=-1), k)  # [rows, k] chunk ids
    cand = (jnp.take_along_axis(xc, ci[:, :, None], axis=1, mode="promise_in_bounds")
            + bc.at[ci].get(mode="promise_in_bounds"))
    vals, j = lax.top_k(cand.reshape(rows, k * chunk), k)
    idx = jnp.take_along_axis(ci, j // chunk, axis=1) * chunk + j % chunk
    return vals.reshape(*lead, k), idx.astype(jnp.int32).reshape(*lead, k)


TOPK_METHODS = ("auto", "lax", "chunked", "native")


def auto_method(n: int, k: int, backend: str | None = None) -> str:
    """The pure-JAX top-k that 'auto' uses for rows of n (when the native CPU kernel is not used).

    'chunked' wherever chunk maxima prune (at least 4k chunks), except on TPU. On GPU,
    ``lax.top_k`` of a [B, F] row block lowers to a sort that kept ~10 [B, F] buffers live:
    measured on an H200 (d 576, F 2^18, batch 4096) the sparse step peaked at 43 GB and ran
    49k tokens/s, and F 2^20 did not fit in 141 GB (docs/performance.md). TPU's XLA has
    its own top-k lowering.
    """
    backend = backend or jax.default_backend()
    pays = -(-n // _chunk_size(n, k)) >= 4 * k  # else the second stage is the whole row
    return "chunked" if (backend != "tpu" and pays) else "lax"


def topk(x: jax.Array, k: int, *, method: str = "auto", bias: jax.Array | None = None, sorted: bool = True,
         threads: int = 0) -> tuple[jax.Array, jax.Array]:
    """Exact top-k along the last axis of ``x + bias``: (values [..., k] descending, indices [..., k] int32).

    method: 'lax' (``lax.top_k``); 'chunked' (chunk-maxima pruning in pure JAX); 'native'
    (the C++ XLA:CPU kernel in cpu_kernels.cc, float32 and NaN-free input); 'auto' (native on
    CPU when it builds, else ``auto_method``: chunked when the row is long enough to pay,
    ``lax.top_k`` on TPU). ``bias`` [n] (optional) is broadcast over rows. ``sorted=False`` lets
    the native kernel return the k in any order (for candidates that are ranked again); ``threads``
    its thread count (``cpu_kernels.threads_for``).
    Values are differentiable (gathered from x + bias at the chosen indices).
    """
    n = x.shape[-1]
    if not 0 < k <= n:
        raise ValueError(f"top-k needs 0 < k <= {n} (the last axis), got k={k}")
    if method not in TOPK_METHODS:
        raise ValueError(f"topk method must be 'auto', 'lax', 'chunked' or 'native', got {method!r}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"topk bias must have shape ({n},), got {bias.shape}")
    chunk = _chunk_size(n, k)
    if method in ("auto", "native") and jax.default_backend() == "cpu" and x.dtype == jnp.float32:
        from sae_jax.kernels import cpu_kernels

        if cpu_kernels.available():
            _, idx = cpu_kernels.topk_native(lax.stop_gradient(x), k,
                                             None if bias is None else lax.stop_gradient(bias), sorted=sorted,
                                             threads=threads)
            full = x if bias is None else x + bias
            return jnp.take_along_axis(full, idx, axis=-1), idx
    if method == "native":
        raise ValueError("topk method='native' needs float32 input on XLA:CPU and a C++ compiler "
                         "(see sae_jax/kernels/cpu_kernels.py); use method='auto' to fall back")
    if method == "auto":
        method = auto_method(n, k)
    if method == "chunked" and -(-n // chunk) >= k:
        return _topk_chunked(x, k, chunk, bias)
    vals, idx = lax.top_k(x if bias is None else x + bias, k)
    return vals, idx.astype(jnp.int32)


# ---------------------------------------------------------------------------------------
# gathered rows: sum_j w[b, j] * table[idx[b, j]]  and its transposes


def _gather_combine(w: jax.Array, idx: jax.Array, table: jax.Array) -> jax.Array:
    """[B, d] = sum_j w[:, j, None] * table[idx[:, j]], never materialising [B, k, d]."""
    k = idx.shape[1]
    acc = jnp.zeros((w.shape[0], table.shape[1]), jnp.result_type(w.dtype, table.dtype))

    def slot(acc, wj, ij):
        return acc + wj[:, None] * table.at[ij].get(mode="promise_in_bounds")

    if k <= _UNROLL_MAX_K:
        for j in range(k):
            acc = slot(acc, w[:, j], idx[:, j])
        return acc
    return lax.scan(lambda a, s: (slot(a, *s), None), acc, (w.T, idx.T), unroll=8)[0]


def _block_rows(b: int, target: int = 256) -> int:
    """Number of batch blocks: blocks of about `target` rows that divide b."""
    nb = max(b // target, 1)
    while b % nb:
        nb -= 1
    return nb


def _gather_dot(g: jax.Array, idx: jax.Array, table: jax.Array) -> jax.Array:
    """[B, k] = <g[b], table[idx[b, j]]>, in batch blocks so each gather stays in cache."""
    b, k = idx.shape
    nb = _block_rows(b)

    def block(args):
        gb, ib = args
        rows = table.at[ib].get(mode="promise_in_bounds")  # [b/nb, k, d]
        return jnp.einsum("bd,bkd->bk", gb, rows)

    out = lax.map(block, (g.reshape(nb, b // nb, -1), idx.reshape(nb, b // nb, k)))
    return out.reshape(b, k)


def _scatter_outer(w: jax.Array, idx: jax.Array, rows: jax.Array, n: int) -> jax.Array:
    """[n, d] with out[idx[b, j]] += w[b, j] * rows[b] (duplicates accumulate)."""
    b, k = idx.shape
    d = rows.shape[1]
    nb = _block_rows(b)
    out = jnp.zeros((n, d), jnp.result_type(w.dtype, rows.dtype))

    def block(acc, args):
        wb, ib, rb = args
        upd = (wb[:, :, None] * rb[:, None, :]).reshape(-1, d)
        return acc.at[ib.reshape(-1)].add(upd, mode="promise_in_bounds"), None

    args = (w.reshape(nb, b // nb, k), idx.reshape(nb, b // nb, k), rows.reshape(nb, b // nb, d))
    return lax.scan(block, out, args)[0]


def _transpose_materialised(a: jax.Array, block: int = 512) -> jax.Array:
    """a.T written out row-major, one block of columns per loop step.

    A plain a.T becomes a layout change that every consumer (Adam's two moments, the
    square) then reads strided: 3 x ~70 ms per step at config A on CPU. A loop carry
    has the default layout, so the transpose happens once, in cache-sized blocks.
    """
    n, d = a.shape
    if n % block or n <= block:
        return a.T
    out = jnp.zeros((d, n), a.dtype)

    def body(i, out):
        blk = lax.dynamic_slice_in_dim(a, i * block, block, axis=0)
        return lax.dynamic_update_slice_in_dim(out, blk.T, i * block, axis=1)

    return lax.fori_loop(0, n // block, body, out)


# ---------------------------------------------------------------------------------------
# decoder


@jax.custom_vjp
def sparse_decode(vals: jax.Array, idx: jax.Array, W_dec: jax.Array) -> jax.Array:
    """[B, d] = sum_j vals[:, j] * W_dec[idx[:, j]]  (the decoder of a TopK SAE, without b_dec).

    Equal to ``h @ W_dec`` where h is the dense [B, F] code with vals at idx; gradients
    flow to vals and W_dec (idx is integer).
    """
    return _gather_combine(vals, idx, W_dec)


def _decode_fwd(vals, idx, W_dec):
    return _gather_combine(vals, idx, W_dec), (vals, idx, W_dec)


def _decode_bwd(res, g):
    vals, idx, W_dec = res
    g_vals = _gather_dot(g, idx, W_dec).astype(vals.dtype)
    g_w = _scatter_outer(vals, idx, g, W_dec.shape[0]).astype(W_dec.dtype)
    return g_vals, None, g_w


sparse_decode.defvjp(_decode_fwd, _decode_bwd)


# ---------------------------------------------------------------------------------------
# encoder


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _encode(x, b_dec, W_enc, b_enc, mask, k, method, dtype):
    pre = jnp.dot((x - b_dec).astype(dtype), W_enc.astype(dtype), preferred_element_type=jnp.float32)
    bias = b_enc.astype(jnp.float32)
    if mask is not None:  # masked latents get -inf: never chosen while others remain
        bias = jnp.where(mask, bias, -jnp.inf)
    v, idx = topk(pre, k, method=method, bias=bias)  # bias added inside top-k, not in a pass over pre
    return jax.nn.relu(v), idx


def _encode_fwd(x, b_dec, W_enc, b_enc, mask, k, method, dtype):
    vals, idx = _encode(x, b_dec, W_enc, b_enc, mask, k, method, dtype)
    return (vals, idx), (x, b_dec, W_enc, vals, idx)


def _encode_bwd(k, method, dtype, res, cts):
    x, b_dec, W_enc, vals, idx = res
    g = cts[0]
    gp = jnp.where(vals > 0, g, 0).astype(jnp.float32)  # relu'(pre) at the selected entries
    n = W_enc.shape[1]
    g_b = jnp.zeros((n,), jnp.float32).at[idx.reshape(-1)].add(gp.reshape(-1))
    # Scatter rows of W_enc^T (contiguous rows), transpose once at the end.
    g_wT = _scatter_outer(gp, idx, (x - b_dec).astype(jnp.float32), n)
    g_w = _transpose_materialised(g_wT)
    # d pre / d x: gathered columns of W_enc. XLA drops it when x needs no gradient
    # (training); b_dec's gradient is the cheap matvec -W_enc @ g_b instead of -sum_b g_x.
    g_x = _gather_combine(gp, idx, W_enc.T)
    g_bdec = -(W_enc @ g_b)
    return (
        g_x.astype(x.dtype),
        g_bdec.astype(b_dec.dtype),
        g_w.astype(W_enc.dtype),
        g_b.astype(W_enc.dtype),
        None,
    )


_encode.defvjp(_encode_fwd, _encode_bwd)


def sparse_encode(
    x: jax.Array,
    W_enc: jax.Array,
    b_enc: jax.Array,
    k: int,
    *,
    b_dec: jax.Array | None = None,
    mask: jax.Array | None = None,
    topk_method: str = "auto",
    compute_dtype: str = "float32",
) -> tuple[jax.Array, jax.Array]:
    """TopK encoder: (relu of the k largest of (x - b_dec) @ W_enc + b_enc [B, k], indices [B, k]).

    Without b_dec, x is the already-centred input x_c. Pass b_dec when it is a trained
    parameter: its gradient is then a matvec instead of a [B, d] gather. ``mask`` [F] bool
    restricts the choice to those latents (AuxK over dead latents; unmasked slots that
    must fill k come back with value 0). ``compute_dtype`` is the matmul input dtype
    (float32 accumulation). Differentiable wrt x, b_dec, W_enc and b_enc; the backward
    touches only the selected columns of W_enc (scatter-add of x_c (x) g), O(B k d)
    instead of the dense O(B d F).
    """
    if x.ndim != 2 or W_enc.ndim != 2 or x.shape[1] != W_enc.shape[0]:
        raise ValueError(
            f"sparse_encode needs x [B, d] and W_enc [d, F] with matching d; "
            f"got {x.shape} and {W_enc.shape}"
        )
    if b_enc.shape != (W_enc.shape[1],):
        raise ValueError(f"b_enc must have shape ({W_enc.shape[1]},), got {b_enc.shape}")
    if b_dec is None:
        b_dec = jnp.zeros((x.shape[1],), x.dtype)
    elif b_dec.shape != (x.shape[1],):
        raise ValueError(f"b_dec must have shape ({x.shape[1]},), got {b_dec.shape}")
    if mask is not None and mask.shape != (W_enc.shape[1],):
        raise ValueError(f"mask must have shape ({W_enc.shape[1]},), got {mask.shape}")
    return _encode(x, b_dec, W_enc, b_enc, mask, int(k), topk_method, str(jnp.dtype(compute_dtype)))


def choose_impl(impl: str, backend: str | None = None) -> str:
    """Resolve sae.impl: 'auto' -> 'sparse' on CPU/GPU (gathers are cheap), 'dense' on TPU."""
    if impl not in ("dense", "sparse", "auto"):
        raise ValueError(f"impl must be 'dense', 'sparse' or 'auto', got {impl!r}")
    if impl != "auto":
        return impl
    backend = backend or jax.default_backend()
    return "dense" if backend == "tpu" else "sparse"
