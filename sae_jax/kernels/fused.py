"""The whole sparse TopK autoencoder (+ optional AuxK selection) as one custom_vjp.

The backward computes the selected values' gradient, then scatter-adds the encoder and
decoder row gradients (the two share their indices). The AuxK part runs under
``lax.cond`` only when a latent is dead, and passes the buffers through unchanged
otherwise (no dense zero gradients as a differentiated ``lax.cond`` would produce).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from sae_jax.kernels import cpu_kernels
from sae_jax.kernels.sparse_topk import (_gather_combine, _gather_dot, _scatter_outer,
                                         _transpose_materialised, topk)


def _native() -> bool:
    return jax.default_backend() == "cpu" and cpu_kernels.available()


_ENCODER_ROWS = 512  # rows per encoder block on CPU: [512, F] pre-activations stay in cache for the top-k


def _encoder_rows(b: int, method: str) -> int:
    """Rows per block of the encoder matmul + top-k: b (one block) unless the native CPU top-k runs.

    Blocked, each block's [rows, F] pre-activations are read by the top-k while still cached
    instead of being written out whole and read back; the [B, F] buffer is never allocated
    (measured on CPU: the top-k's time disappears behind the matmul; docs/performance.md)."""
    if method not in ("auto", "native") or not _native():
        return b
    rows = _ENCODER_ROWS
    while rows >= 64 and b % rows:
        rows //= 2
    return rows if 64 <= rows < b else b


def encoder_candidates(xc, W_enc, b_enc, k, *, method, dtype, k_aux=0, dead_mask=None, aux_on=None,
                       aux_finish=None, sorted=True, threads=0):
    """(values, indices, aux): the top-k of ``xc @ W_enc + b_enc`` per row, raw values (no ReLU),
    [b, min(k, F)] (descending unless ``sorted=False``, for candidates that are ranked again); and
    ``aux_finish(av, ai)`` of AuxK's top-k_aux among ``dead_mask`` latents ([b, min(k_aux, F)])
    when ``aux_on``, zeros of its shape otherwise (``aux`` is None without ``k_aux``).

    The matmul runs in row blocks (``_encoder_rows``), each block's selections made from its
    pre-activations right away. One ``lax.cond`` holds the whole loop and ``aux_finish``: while no
    latent is dead, no AuxK candidates are written at all (only ``aux_finish``'s zero outputs)."""
    b, d = xc.shape
    f = W_enc.shape[1]
    ka = min(k_aux, f)
    bias = b_enc.astype(jnp.float32)
    aux_bias = jnp.where(dead_mask, b_enc, -jnp.inf).astype(jnp.float32) if k_aux else None

    def block(xs, aux):
        pre = jnp.dot(xs.astype(dtype), W_enc.astype(dtype), preferred_element_type=jnp.float32)
        v, i = topk(pre, min(k, f), method=method, bias=bias, sorted=sorted, threads=threads)
        return (v, i, *topk(pre, ka, method=method, bias=aux_bias, sorted=sorted, threads=threads)) if aux else (v, i)

    def blocks(aux):
        rows = _encoder_rows(b, method)
        if rows == b:
            return block(xc, aux)
        out = lax.map(functools.partial(block, aux=aux), xc.reshape(b // rows, rows, d))
        return tuple(o.reshape(b, o.shape[-1]) for o in out)

    if not k_aux:
        return (*blocks(False), None)

    def with_aux(_):
        v, i, av, ai = blocks(True)
        return v, i, aux_finish(av, ai)

    def without_aux(_):
        shapes = jax.eval_shape(aux_finish, jax.ShapeDtypeStruct((b, ka), jnp.float32),
                                jax.ShapeDtypeStruct((b, ka), jnp.int32))
        return (*blocks(False), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))

    return lax.cond(aux_on, with_aux, without_aux, None)


def _accumulate(g_enc, g_dec, g_b, vals, idx, xc, g_out, g_vals_direct, W_dec, native, threads=0):
    """Add one selection's gradients into dW_enc, dW_dec [F, d] and db_enc [F].

    dW_enc is carried as [d, F] (W_enc's layout) by the native kernel and as its transpose
    [F, d] (contiguous rows to scatter into) by the pure-JAX path. Returns them and gp
    [B, k], the gradient wrt the selected pre-activations. Separate scatters measured faster
    on CPU than one scatter of concatenated [gp x | v g] rows into [F, 2d] (performance.md).
    """
    n = W_dec.shape[0]
    if native:
        de, dd, db, gp = cpu_kernels.sparse_bwd_native(g_out, g_vals_direct, vals, idx, xc, W_dec, threads)
        return g_enc + de, g_dec + dd, g_b + db, gp
    gv = _gather_dot(g_out, idx, W_dec) + g_vals_direct
    gp = jnp.where(vals > 0, gv, 0.0)
    g_enc = g_enc + _scatter_outer(gp, idx, xc, n)
    g_dec = g_dec + _scatter_outer(vals, idx, g_out, n)
    g_b = g_b.at[idx.reshape(-1)].add(gp.reshape(-1), mode="promise_in_bounds")
    return g_enc, g_dec, g_b, gp


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _autoencode(x, b_dec, W_enc, b_enc, W_dec, dead_mask, k, k_aux, method, dtype):
    out, _ = _autoencode_fwd(x, b_dec, W_enc, b_enc, W_dec, dead_mask, k, k_aux, method, dtype)
    return out


def _autoencode_fwd(x, b_dec, W_enc, b_enc, W_dec, dead_mask, k, k_aux, method, dtype):
    xc = x - b_dec
    active = jnp.any(dead_mask) if k_aux else jnp.zeros((), bool)
    def aux(av, ai):
        av = jax.nn.relu(av)
        return av, ai, _gather_combine(av, ai, W_dec)

    v, idx, aux_out = encoder_candidates(xc, W_enc, b_enc, k, method=method, dtype=dtype, k_aux=k_aux,
                                         dead_mask=dead_mask, aux_on=active, aux_finish=aux)
    vals = jax.nn.relu(v)
    x_hat0 = _gather_combine(vals, idx, W_dec)
    if k_aux:
        av, ai, e_hat = aux_out
    else:
        b = x.shape[0]
        av, ai, e_hat = jnp.zeros((b, 0)), jnp.zeros((b, 0), jnp.int32), jnp.zeros_like(x_hat0)
    out = (x_hat0, vals, idx, e_hat, active)
    return out, (x, b_dec, W_enc, W_dec, vals, idx, av, ai, active)


def _autoencode_bwd(k, k_aux, method, dtype, res, cts):
    x, b_dec, W_enc, W_dec, vals, idx, av, ai, active = res
    g_xhat, g_vals, _, g_ehat, _ = cts
    xc = (x - b_dec).astype(jnp.float32)
    n, d = W_dec.shape
    native = _native()
    g_enc0 = jnp.zeros((d, n) if native else (n, d), jnp.float32)
    g_enc, g_w_dec, g_b, gp = _accumulate(g_enc0, jnp.zeros((n, d), jnp.float32), jnp.zeros((n,), jnp.float32),
                                          vals, idx, xc, g_xhat.astype(jnp.float32),
                                          g_vals.astype(jnp.float32), W_dec, native)
    if k_aux:
        def aux(args):
            return _accumulate(*args, av, ai, xc, g_ehat.astype(jnp.float32), jnp.zeros_like(av), W_dec, native)

        def none(args):
            return (*args, jnp.zeros_like(av))

        g_enc, g_w_dec, g_b, gpa = lax.cond(active, aux, none, (g_enc, g_w_dec, g_b))
    g_w_enc = g_enc if native else _transpose_materialised(g_enc)
    # Input gradient: dead code in training (x needs none); b_dec's is the matvec below.
    g_x = _gather_combine(gp, idx, W_enc.T)
    if k_aux:
        g_x = g_x + _gather_combine(gpa, ai, W_enc.T)
    g_bdec = -(W_enc @ g_b)
    return (g_x.astype(x.dtype), g_bdec.astype(b_dec.dtype), g_w_enc.astype(W_enc.dtype),
            g_b.astype(W_enc.dtype), g_w_dec.astype(W_dec.dtype), None)


_autoencode.defvjp(_autoencode_fwd, _autoencode_bwd)


def sparse_autoencode(
    x: jax.Array, params: dict[str, jax.Array], k: int, *, dead_mask: jax.Array | None = None,
    k_aux: int = 0, topk_method: str = "auto", compute_dtype: str = "float32",
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """TopK SAE forward on the sparse kernels, differentiable wrt x and the four parameters.

    Returns (x_hat [B, d] including b_dec, vals [B, k], idx [B, k], e_hat [B, d], aux_active):
    vals/idx are the ReLU'd top-k codes; e_hat is the AuxK reconstruction from the k_aux
    largest pre-activations among ``dead_mask`` latents (decoder rows only, no b_dec),
    zeros when ``k_aux == 0`` or no latent is dead (``aux_active`` says which).
    """
    W_enc, W_dec = params["W_enc"], params["W_dec"]
    d, n = W_enc.shape
    if x.ndim != 2 or x.shape[1] != d or W_dec.shape != (n, d):
        raise ValueError(f"sparse_autoencode needs x [B, {d}], W_enc [d, F], W_dec [F, d]; got "
                         f"{x.shape}, {W_enc.shape}, {W_dec.shape}")
    if not 0 < k <= n or not 0 <= k_aux <= n:
        raise ValueError(f"need 0 < k <= F={n} and 0 <= k_aux <= F; got k={k}, k_aux={k_aux}")
    if k_aux and dead_mask is None:
        raise ValueError("k_aux > 0 needs dead_mask [F] bool")
    if dead_mask is None:
        dead_mask = jnp.zeros((n,), bool)
    x_hat0, vals, idx, e_hat, active = _autoencode(
        x, params["b_dec"], W_enc, params["b_enc"], W_dec, dead_mask, int(k), int(k_aux),
        topk_method, str(jnp.dtype(compute_dtype)))
    return x_hat0 + params["b_dec"], vals, idx, e_hat, active
