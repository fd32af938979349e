"""The sparse TopK autoencoder (+ AuxK) on a ('data', 'dict') mesh: one ``custom_vjp`` whose
forward and backward are each one ``jax.shard_map`` over the mesh.

Per device (a block of rows, a block of f latents):
- forward: pre-activations of the local latents and their local top-k; the second stage of the
  two-stage top-k gets every 'dict' shard's k candidates for 1/dict of the rows (all_to_all),
  takes their top-k and gathers the rows back (ties go to the lower index, as in lax.top_k);
  each shard decodes the selections it owns, and one reduce-scatter over 'dict' sums the
  partial reconstructions, leaving each shard 1/dict of the rows;
- backward: the sparse backward of ``fused.py`` on the selections this shard owns (others get
  index -1 / value 0, so they add nothing), then ``psum`` over 'data' for the parameter
  gradients and over 'dict' for the ones that mix latents (b_dec, x).

The collectives are written by hand (no autodiff through them), so their transposes cannot
scale gradients by a device count. On a (1, 1) mesh the same program runs with no-op
collectives; XLA's top-k over a sharded axis has had correctness bugs, so the tests compare
every mesh with the dense single-device step.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from sae_jax.kernels import cpu_kernels
from sae_jax.kernels.fused import _accumulate, _native, encoder_candidates
from sae_jax.kernels.sparse_topk import _gather_combine, _transpose_materialised, topk
from sae_jax.mesh import BATCH_SPEC, PARAM_SPECS

_ROWS = BATCH_SPEC  # [B, d] and [B, k]: rows over 'data', replicated over 'dict'
_LATENTS = PARAM_SPECS["b_enc"]  # [F] over 'dict'


def _global_topk(pre, bias, k, method):
    """(relu values, global indices) [b, k]: local top-k per shard, then top-k of all candidates."""
    v, i = topk(pre, min(k, pre.shape[1]), method=method, bias=bias, sorted=lax.axis_size("dict") == 1)
    return _global_stage(v, i, k, pre.shape[1])


def _global_stage(v, i, k, f, gather=True, threads=0):
    """(relu values, global indices) [b, k] from each shard's local top-k (v, local i) of its f latents;
    with ``gather=False``, where the rows divide over 'dict', only this shard's b / n_dict rows."""
    b = v.shape[0]
    n_dict = lax.axis_size("dict")
    if n_dict == 1:  # one shard's candidates already are the answer
        return jax.nn.relu(v), i
    i = i + lax.axis_index("dict") * f
    # values and indices travel together (indices bit-cast to float32): one collective, not two;
    # [b, 2, k] so that each row's values (and indices) stay contiguous
    cand = jnp.stack([v, lax.bitcast_convert_type(i, jnp.float32)], axis=1)
    if b % n_dict:
        return _finish(lax.all_gather(cand, "dict", axis=2, tiled=True), k, threads)
    # Each shard finishes b / n_dict rows (all shards' candidates for them), then the rows are
    # gathered: the second stage is split over the shards instead of repeated on every one.
    v, i = _finish(lax.all_to_all(cand, "dict", 0, 2, tiled=True), k, threads)  # from [b / n_dict, 2, n_dict * k]
    return _gather_rows(v, i) if gather else (v, i)


def _gather_rows(v, i):
    """Every shard's rows of a selection split by rows over 'dict' (values, indices): one all_gather."""
    out = jnp.stack([v, lax.bitcast_convert_type(i, jnp.float32)], axis=1)
    out = lax.all_gather(out, "dict", axis=0, tiled=True)
    return out[:, 0], lax.bitcast_convert_type(out[:, 1], jnp.int32)


def _finish(cand, k, threads=0):
    """Second stage: (relu values, indices) of the k largest of [rows, 2, m] (values; index bits) candidates."""
    v, pos = topk(cand[:, 0], k, threads=threads)  # the native kernel on CPU: XLA's is a partial sort per row
    i = jnp.take_along_axis(lax.bitcast_convert_type(cand[:, 1], jnp.int32), pos, axis=1)
    return jax.nn.relu(v), i


def _psum(x, axis):
    """psum over a mesh axis; skipped (not even a copy) when the axis has one device."""
    return lax.psum(x, axis) if lax.axis_size(axis) > 1 else x


def _owned(vals, idx, f):
    """This shard's part of a selection: (values, 0 elsewhere; local index, 0 elsewhere; mask)."""
    if lax.axis_size("dict") == 1:  # all of it: no masking passes
        return vals, idx, jnp.ones(idx.shape, bool)
    local = idx - lax.axis_index("dict") * f
    mine = (local >= 0) & (local < f)
    return jnp.where(mine, vals, 0.0), jnp.where(mine, local, 0), mine


def _decode(vals, idx, W_dec, split, threads=0):
    """Sum of the selected decoder rows over all shards (no b_dec): [b, d], or with ``split``
    this shard's [b / n_dict, d] rows of it (a reduce-scatter instead of an all-reduce)."""
    f = W_dec.shape[0]
    if _native() and lax.axis_size("dict") > 1:
        # skips the other shards' selections instead of multiplying them by zero (with all of them
        # owned, XLA's gather loop is faster: 5.0 vs 7.8 ms on the A shapes)
        part = cpu_kernels.decode_native(vals, idx, W_dec, lax.axis_index("dict") * f, threads)
    else:
        v, li, _ = _owned(vals, idx, f)
        part = _gather_combine(v, li, W_dec)
    if split:  # over rows: a split over columns made XLA lay the decoder's output out column-major
        return lax.psum_scatter(part, "dict", scatter_dimension=0, tiled=True)
    return _psum(part, "dict")


def _forward_shard(x, b_dec, W_enc, b_enc, W_dec, dead_mask, aux_on, *, k, k_aux, method, dtype, split, threads):
    xc = x - b_dec
    if split:  # x arrives split over 'dict' too (the work before and after is split): gather the rows
        xc = lax.all_gather(xc, "dict", axis=0, tiled=True)
    f = W_enc.shape[1]

    def aux(av, ai):  # AuxK's global selection and reconstruction, only when a latent is dead
        av, ai = _global_stage(av, ai, k_aux, f, gather=not split, threads=threads)  # kept row-split
        return _decode(*(_gather_rows(av, ai) if split else (av, ai)), W_dec, split, threads), av, ai

    # local candidates from the matmul in row blocks (the [b, f] pre-activations are not kept),
    # unsorted when a second stage ranks them again (n_dict > 1)
    v, i, aux_out = encoder_candidates(xc, W_enc, b_enc, k, method=method, dtype=dtype, k_aux=k_aux,
                                       dead_mask=dead_mask, aux_on=aux_on, aux_finish=aux,
                                       sorted=lax.axis_size("dict") == 1, threads=threads)
    vals, idx = _global_stage(v, i, k, f, threads=threads)
    x_hat0 = _decode(vals, idx, W_dec, split, threads)
    if not k_aux:  # empty AuxK outputs, laid out like the real ones (x's rows: split with ``split``)
        b = x.shape[0]
        aux_out = jnp.zeros_like(x_hat0), jnp.zeros((b, 0)), jnp.zeros((b, 0), jnp.int32)
    return (x_hat0, vals, idx, *aux_out, xc)  # aux_on is replicated: shards branch alike


def _aux_forward(pre, b_enc, W_dec, dead_mask, aux_on, x_hat0, *, k_aux, method, split):
    """(e_hat, values, indices) of AuxK: the k_aux largest pre-activations among dead latents."""
    b = pre.shape[0]
    if not k_aux:
        return jnp.zeros_like(x_hat0), jnp.zeros((b, 0)), jnp.zeros((b, 0), jnp.int32)

    def aux(_):
        bias = jnp.where(dead_mask, b_enc, -jnp.inf).astype(jnp.float32)
        av, ai = _global_topk(pre, bias, k_aux, method)
        return _decode(av, ai, W_dec, split), av, ai

    def none(_):
        return jnp.zeros_like(x_hat0), jnp.zeros((b, k_aux), jnp.float32), jnp.zeros((b, k_aux), jnp.int32)

    return lax.cond(aux_on, aux, none, None)  # aux_on is replicated: every shard branches alike


def _backward_shard(xc, b_dec, W_enc, W_dec, vals, idx, av, ai, aux_on, g_xhat, g_vals, g_ehat, *, k_aux, split,
                    threads):
    xc = xc.astype(jnp.float32)  # x - b_dec, every row (the forward's)
    if split:  # every shard's selections need the whole [b, d] output gradient (AuxK's: only when on)
        g_xhat = lax.all_gather(g_xhat, "dict", axis=0, tiled=True)
    part = functools.partial(_part, xc=xc, W_enc=W_enc, W_dec=W_dec, threads=threads)
    acc, g_x = part(g_xhat, g_vals, vals, idx, _zero_acc(W_dec))
    return _finish_backward(part, acc, g_x, W_enc, av, ai, aux_on, g_ehat, k_aux=k_aux, gather_ehat=split,
                            gather_aux=split, split_x=split)


def _zero_acc(W_dec):
    """Zero (dW_enc in the accumulator's layout, dW_dec, db_enc) for this shard's latents."""
    f, d = W_dec.shape
    return (jnp.zeros((d, f) if _native() else (f, d), jnp.float32), jnp.zeros((f, d), jnp.float32),
            jnp.zeros((f,), jnp.float32))


def _part(g_out, g_direct, v, i, acc, *, xc, W_enc, W_dec, threads=0):
    """Add one selection's gradients (the entries this shard owns) into ``acc``; also its input gradient."""
    native = _native()
    lv, li, mine = _owned(v, i, W_dec.shape[0])
    # the native kernel skips index -1; the pure-JAX scatters add lv = 0 at row 0 instead
    kernel_idx = jnp.where(mine, li, -1) if native else li
    *acc, gp = _accumulate(*acc, lv, kernel_idx, xc, g_out.astype(jnp.float32),
                           jnp.where(mine, g_direct, 0.0).astype(jnp.float32), W_dec, native, threads)
    return tuple(acc), _gather_combine(gp, li, W_enc.T)


def _finish_backward(part, acc, g_x, W_enc, av, ai, aux_on, g_ehat, *, k_aux, gather_ehat, gather_aux, split_x):
    """Add AuxK's gradients, reduce over the mesh: (g_x, g_b_dec, g_W_enc, g_b_enc, g_W_dec).
    ``gather_ehat`` / ``gather_aux``: AuxK's output gradient / selection arrive with their rows split
    over 'dict'; ``split_x``: so does the input's gradient leave."""
    if k_aux:
        def aux(args):
            acc, g_x = args
            g = lax.all_gather(g_ehat, "dict", axis=0, tiled=True) if gather_ehat else g_ehat
            v, i = _gather_rows(av, ai) if gather_aux else (av, ai)
            acc, g_xa = part(g, jnp.zeros_like(v), v, i, acc)
            return tuple(acc), g_x + g_xa

        acc, g_x = lax.cond(aux_on, aux, lambda args: args, (tuple(acc), g_x))
    g_enc, g_w_dec, g_b = _psum(tuple(acc), "data")  # the batch is split over 'data'
    g_w_enc = g_enc if _native() else _transpose_materialised(g_enc)
    # Input gradient: dead code in training (x needs none); b_dec's is the matvec, summed over shards.
    g_x = lax.psum_scatter(g_x, "dict", scatter_dimension=0, tiled=True) if split_x else _psum(g_x, "dict")
    g_bdec = _psum(-(W_enc @ g_b), "dict")
    return g_x, g_bdec, g_w_enc, g_b, g_w_dec


_PARAMS_IN = (P(), PARAM_SPECS["W_enc"], _LATENTS, PARAM_SPECS["W_dec"], _LATENTS, P())
_FWD_IN = (_ROWS, *_PARAMS_IN)  # x's rows split over 'data' only (BatchTopK)
_BWD_OUT = (_ROWS, P(), PARAM_SPECS["W_enc"], _LATENTS, PARAM_SPECS["W_dec"])


def _split_rows(b, mesh):
    """Return the [B, d] reconstructions with their rows split over 'dict' too (when each 'data'
    shard's rows divide): the loss's elementwise work on them is then split instead of repeated."""
    return mesh.shape["dict"] > 1 and (b // mesh.shape["data"]) % mesh.shape["dict"] == 0


def _specs(split):
    """(forward in, forward out, backward in, backward out) specs; with ``split``, x, x_hat, e_hat, their
    cotangents and AuxK's selection have their rows split over 'dict' too (the forward returns
    x - b_dec gathered)."""
    out = P(("data", "dict"), None) if split else _ROWS
    fwd_in = (out, *_PARAMS_IN)
    fwd_out = (out, _ROWS, _ROWS, out, out, out, _ROWS)  # AuxK's selection is kept row-split too
    bwd_in = (_ROWS, P(), PARAM_SPECS["W_enc"], PARAM_SPECS["W_dec"], _ROWS, _ROWS, out, out, P(),
              out, _ROWS, out)
    bwd_out = (out, *_BWD_OUT[1:])
    return fwd_in, fwd_out, bwd_in, bwd_out


def _shard_map(fn, mesh, in_specs, out_specs):
    # Values gathered or psum'd over an axis are equal on its shards, which the replication
    # checker cannot see through all_gather + top_k; the tests check it instead.
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10, 11))
def _autoencode(x, b_dec, W_enc, b_enc, W_dec, dead_mask, aux_on, k, k_aux, method, dtype, mesh):
    return _autoencode_fwd(x, b_dec, W_enc, b_enc, W_dec, dead_mask, aux_on, k, k_aux, method, dtype, mesh)[0]


def _autoencode_fwd(x, b_dec, W_enc, b_enc, W_dec, dead_mask, aux_on, k, k_aux, method, dtype, mesh):
    split = _split_rows(x.shape[0], mesh)
    fwd = functools.partial(_forward_shard, k=k, k_aux=k_aux, method=method, dtype=dtype, split=split,
                            threads=cpu_kernels.threads_for(mesh))
    fwd_in, fwd_out = _specs(split)[:2]
    x_hat0, vals, idx, e_hat, av, ai, xc = _shard_map(fwd, mesh, fwd_in, fwd_out)(
        x, b_dec, W_enc, b_enc, W_dec, dead_mask, aux_on)
    return (x_hat0, vals, idx, e_hat), (xc, b_dec, W_enc, W_dec, vals, idx, av, ai, aux_on)


def _autoencode_bwd(k, k_aux, method, dtype, mesh, res, cts):
    g_xhat, g_vals, _, g_ehat = cts
    xc, b_dec, W_enc, W_dec = res[:4]
    split = _split_rows(xc.shape[0], mesh)
    bwd = functools.partial(_backward_shard, k_aux=k_aux, split=split, threads=cpu_kernels.threads_for(mesh))
    g_x, g_bdec, g_w_enc, g_b, g_w_dec = _shard_map(bwd, mesh, *_specs(split)[2:])(*res, g_xhat, g_vals, g_ehat)
    return (g_x.astype(xc.dtype), g_bdec.astype(b_dec.dtype), g_w_enc.astype(W_enc.dtype),
            g_b.astype(W_enc.dtype), g_w_dec.astype(W_dec.dtype), None, None)


_autoencode.defvjp(_autoencode_fwd, _autoencode_bwd)


def sharded_autoencode(
    x: jax.Array, params: dict[str, jax.Array], k: int, mesh: Mesh, *, dead_mask: jax.Array | None = None,
    k_aux: int = 0, topk_method: str = "auto", compute_dtype: str = "float32",
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """``fused.sparse_autoencode`` on a ('data', 'dict') mesh: same returns, same gradients.

    x [B, d] is split over 'data', the dictionary over 'dict' (layouts of ``sae_jax.mesh``);
    B must divide by the 'data' size and F by the 'dict' size. Indices are global.
    """
    W_enc, W_dec = params["W_enc"], params["W_dec"]
    d, n = W_enc.shape
    n_data, n_dict = mesh.shape["data"], mesh.shape["dict"]
    if x.ndim != 2 or x.shape[1] != d or W_dec.shape != (n, d):
        raise ValueError(f"sharded_autoencode needs x [B, {d}], W_enc [d, F], W_dec [F, d]; got "
                         f"{x.shape}, {W_enc.shape}, {W_dec.shape}")
    if not 0 < k <= n or not 0 <= k_aux <= n:
        raise ValueError(f"need 0 < k <= F={n} and 0 <= k_aux <= F; got k={k}, k_aux={k_aux}")
    if n % n_dict or x.shape[0] % n_data:
        raise ValueError(f"F={n} must divide by mesh 'dict'={n_dict} and B={x.shape[0]} by 'data'={n_data}")
    if k_aux and dead_mask is None:
        raise ValueError("k_aux > 0 needs dead_mask [F] bool")
    if dead_mask is None:
        dead_mask = jnp.zeros((n,), bool)
    aux_on = jnp.any(dead_mask) if k_aux else jnp.zeros((), bool)
    x_hat0, vals, idx, e_hat = _autoencode(
        x, params["b_dec"], W_enc, params["b_enc"], W_dec, dead_mask, aux_on, int(k), int(k_aux),
        topk_method, str(jnp.dtype(compute_dtype)), mesh)
    return x_hat0 + params["b_dec"], vals, idx, e_hat, aux_on
