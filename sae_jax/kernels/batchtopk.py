"""The sparse BatchTopK autoencoder (+ AuxK) on a ('data', 'dict') mesh: the selection of
``sae_jax.sae.batchtopk`` (the m = k*B largest ReLU'd pre-activations of the whole global batch;
every entry equal to the m-th largest is kept too, as the dense reference keeps them), then the
gathered decoder and sparse backward of ``sharded.py``.

Rows keep different numbers of latents, so each row's selection is padded to a static cap
``row_cap`` (masked slots have value 0 and add nothing). Per step:

1. each row's ``row_cap`` largest pre-activations (the two-stage top-k over 'dict' of sharded.py);
   a row's "floor" is the smallest of them;
2. the ``dense_rows`` rows per 'data' shard with the largest floors are taken whole (gathered
   from the [b, F] pre-activations; they are selected, decoded and differentiated densely);
3. T = the m-th largest of (the other rows' lists) U (the whole rows). T is at most the true
   batch threshold (a subset's m-th largest) and equals it when every listed row's floor is < T
   (or 0): then no entry >= T lies outside the subset, which so has as many entries > T and
   >= T as the batch. The selection (all entries >= T and > 0, ties included) is then exactly
   the dense reference's. A row fails the check only if it holds >= row_cap selected entries,
   so the check passes iff each 'data' shard has at most ``dense_rows`` such rows.
4. Otherwise the step is *not* approximated: a ``lax.cond`` runs the dense selection, decoder
   and backward on every shard's [b, f] block instead (same result, dense cost;
   ``exact_sparse`` is False then).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from sae_jax.kernels import sharded as _sh
from sae_jax.mesh import PARAM_SPECS

_ROWS, _LATENTS = _sh._ROWS, _sh._LATENTS
_CODES = P("data", "dict")  # [rows, F] blocks: the dense rows' codes


class BatchTopKOutput(NamedTuple):
    x_hat: jax.Array
    """[B, d] reconstruction including b_dec."""
    vals: jax.Array
    """[B, row_cap] selected values of the rows selected from their lists (0 in unused slots and on
    rows taken densely)."""
    idx: jax.Array
    """[B, row_cap] their global latent indices."""
    e_hat: jax.Array
    """[B, d] AuxK reconstruction (decoder rows only), zeros when AuxK is off or nothing is dead."""
    aux_on: jax.Array
    """Scalar bool: AuxK ran (some latent is dead)."""
    kth: jax.Array
    """Scalar: the m-th largest ReLU'd pre-activation of the batch (the selection threshold)."""
    min_selected: jax.Array
    """Scalar: the smallest selected (positive) value, inf if none: what the inference threshold tracks."""
    fired: jax.Array
    """[F] bool: latents selected on some row."""
    n_active: jax.Array
    """Scalar float32: number of selected entries in the batch (L0 = n_active / B)."""
    exact_sparse: jax.Array
    """Scalar bool: the sparse branch ran (False: too many rows over row_cap, the dense branch ran)."""
    dense_rows: jax.Array
    """Scalar float32: rows selected densely (over rows on the sparse branch, all B on the dense one)."""


def _kth(parts, m):
    """The m-th largest of the union of ``parts``, each (values, mesh axes it differs over): each
    shard keeps its m largest of each part first, so a gather holds at most m per shard."""
    tops = []
    for values, axes in parts:
        flat = values.reshape(-1)
        top = lax.top_k(flat, min(m, flat.size))[0]
        axes = tuple(a for a in axes if lax.axis_size(a) > 1)
        tops.append(lax.all_gather(top, axes, tiled=True) if axes else top)
    cand = jnp.concatenate(tops) if len(tops) > 1 else tops[0]
    return jnp.min(cand if cand.size == m else lax.top_k(cand, m)[0])  # callers guarantee size >= m


def _pmin(x, axes):
    axes = tuple(a for a in axes if lax.axis_size(a) > 1)
    return lax.pmin(x, axes) if axes else x


def _reduce_rows(part, split):
    """Partial [b, d] reconstructions summed over 'dict' (reduce-scattered over rows with ``split``)."""
    return lax.psum_scatter(part, "dict", scatter_dimension=0, tiled=True) if split else _sh._psum(part, "dict")


def _dense_selection(xc, W_enc, b_enc, T, dtype):
    pre = jnp.dot(xc.astype(dtype), W_enc.astype(dtype), preferred_element_type=jnp.float32)
    acts = jax.nn.relu(pre + b_enc.astype(jnp.float32))
    sel = (acts >= T) & (acts > 0)
    return jnp.where(sel, acts, 0.0), sel


def _local_fired(vals, idx, f):
    lv, li, mine = _sh._owned(vals, idx, f)
    return jnp.zeros((f,), bool).at[li.reshape(-1)].max((mine & (vals > 0)).reshape(-1))


def _stats(vals, idx, h, f):
    """(smallest selected value, fired [f], selected count) of list selections ``vals`` (replicated
    over 'dict') and dense ones ``h`` (this shard's latents), reduced over the mesh."""
    low = jnp.min(jnp.where(vals > 0, vals, jnp.inf))
    if h.size:
        low = jnp.minimum(low, jnp.min(jnp.where(h > 0, h, jnp.inf)))
    fired = _local_fired(vals, idx, f) | jnp.any(h > 0, axis=0)
    n = _sh._psum(jnp.sum(vals > 0).astype(jnp.float32), "data")
    n = n + _sh._psum(_sh._psum(jnp.sum(h > 0).astype(jnp.float32), "data"), "dict")
    return _pmin(low, ("data", "dict")), _sh._psum(fired.astype(jnp.int32), "data") > 0, n


def _forward_shard(x, b_dec, W_enc, b_enc, W_dec, dead_mask, aux_on, *, k, m, cap, n_dense, k_aux, method, dtype,
                   split):
    f = W_dec.shape[0]
    b = x.shape[0]
    xc = x - b_dec
    pre = jnp.dot(xc.astype(dtype), W_enc.astype(dtype), preferred_element_type=jnp.float32)
    bias = b_enc.astype(jnp.float32)
    cv, ci = _sh._global_topk(pre, bias, cap, method)  # [b, cap], replicated over 'dict'
    floor = jnp.min(cv, axis=1)  # the row's cap-th largest (min, not a slice: see topk.py)
    full = cap >= f * lax.axis_size("dict")  # every entry is a candidate
    if n_dense and not full:
        # the n_dense rows with the largest floors are taken whole, from the [b, f] block
        rows = lax.top_k(floor, n_dense)[1]
        whole = jnp.zeros((b,), bool).at[rows].set(True)
        acts_s = jax.nn.relu(pre[rows] + bias)
        T = _kth([(jnp.where(whole[:, None], -jnp.inf, cv), ("data",)), (acts_s, ("data", "dict"))], m)
    else:
        rows, whole = jnp.zeros((n_dense,), jnp.int32), jnp.zeros((b,), bool)
        acts_s = jnp.zeros((n_dense, f), jnp.float32)
        T = _kth([(cv, ("data",))], m)
    # T is the m-th largest of a subset, so T <= the true threshold; it is the true one when every
    # other row's floor is < T (or 0): no entry >= T lies outside the subset then
    over = (floor >= T) & (floor > 0)
    ok = full | (_pmin(jnp.all(whole | ~over).astype(jnp.int32), ("data",)) == 1)  # replicated

    def sparse(_):
        vals = jnp.where(~whole[:, None] & (cv >= T) & (cv > 0), cv, 0.0)
        h_s = jnp.where((acts_s >= T) & (acts_s > 0), acts_s, 0.0)
        lv, li, _ = _sh._owned(vals, ci, f)
        part = _sh._gather_combine(lv, li, W_dec)
        if n_dense:
            part = part.at[rows].add(jnp.dot(h_s, W_dec.astype(jnp.float32), preferred_element_type=jnp.float32))
        return (_reduce_rows(part, split), vals, T, *_stats(vals, ci, h_s, f), h_s)

    def dense(_):  # more rows over the cap than n_dense somewhere: the whole [b, f] block, dense
        acts = jax.nn.relu(pre + bias)
        T = _kth([(acts, ("data", "dict"))], m)
        h = jnp.where((acts >= T) & (acts > 0), acts, 0.0)
        part = jnp.dot(h, W_dec.astype(jnp.float32), preferred_element_type=jnp.float32)
        vals = jnp.where((cv >= T) & (cv > 0), cv, 0.0)
        low, fired, n = _stats(jnp.zeros_like(vals), ci, h, f)
        return _reduce_rows(part, split), vals, T, low, fired, n, jnp.zeros((n_dense, f), jnp.float32)

    x_hat0, vals, kth, min_sel, fired, n, h_s = lax.cond(ok, sparse, dense, None)
    e_hat, av, ai = _sh._aux_forward(pre, b_enc, W_dec, dead_mask, aux_on, x_hat0, k_aux=k_aux, method=method,
                                     split=split)
    n_rows = _sh._psum(jnp.where(ok, jnp.sum(over), b).astype(jnp.float32), "data")
    return x_hat0, vals, ci, e_hat, av, ai, kth, min_sel, fired, n, ok, n_rows, rows, h_s


def _backward_shard(x, b_dec, W_enc, b_enc, W_dec, vals, idx, av, ai, aux_on, kth, ok, rows, h_s, g_xhat, g_vals,
                    g_ehat, *, k_aux, dtype, split):
    xc = (x - b_dec).astype(jnp.float32)
    if split:  # every shard's selections need the whole [b, d] output gradients
        g_xhat = lax.all_gather(g_xhat, "dict", axis=0, tiled=True)
    part = functools.partial(_sh._part, xc=xc, W_enc=W_enc, W_dec=W_dec)
    g_out = g_xhat.astype(jnp.float32)

    def dense_grads(acc, xr, h, g, direct=0.0):
        """Add the dense gradients of rows ``xr`` with codes ``h`` [r, f] and output gradients ``g``
        [r, d] (``direct``: the codes' own gradient) to ``acc``; also the rows' input gradient."""
        gp = jnp.where(h > 0, jnp.dot(g, W_dec.astype(jnp.float32).T) + direct, 0.0)
        g_enc, g_dec, g_b = acc
        g_enc = g_enc + (xr.T @ gp if _sh._native() else gp.T @ xr)  # the accumulator's layout
        return (g_enc, g_dec + h.T @ g, g_b + jnp.sum(gp, axis=0)), gp @ W_enc.T

    def sparse(acc):
        acc, g_x = part(g_xhat, g_vals, vals, idx, acc)
        if not rows.shape[0]:
            return acc, g_x
        acc, g_xs = dense_grads(acc, xc[rows], h_s, g_out[rows])  # the rows taken whole
        return acc, g_x.at[rows].add(g_xs)

    def dense(acc):  # the selection is recomputed (from kth) rather than kept as a [b, f] residual
        h, _ = _dense_selection(xc, W_enc, b_enc, kth, dtype)
        # the listed values' own gradient (their selected entries are in h too)
        _, li, mine = _sh._owned(vals, idx, W_dec.shape[0])
        direct = jnp.zeros(h.shape, jnp.float32).at[jnp.arange(h.shape[0])[:, None], li].add(
            jnp.where(mine & (vals > 0), g_vals, 0.0))
        return dense_grads(acc, xc, h, g_out, direct)

    acc, g_x = lax.cond(ok, sparse, dense, _sh._zero_acc(W_dec))
    return _sh._finish_backward(part, acc, g_x, W_enc, av, ai, aux_on, g_ehat, k_aux=k_aux, gather_ehat=split,
                                gather_aux=False, split_x=False)


_FWD_IN = _sh._FWD_IN


def _specs(split):
    out = P(("data", "dict"), None) if split else _ROWS
    fwd_out = (out, _ROWS, _ROWS, out, _ROWS, _ROWS, P(), P(), _LATENTS, P(), P(), P(), P("data"), _CODES)
    bwd_in = (_ROWS, P(), PARAM_SPECS["W_enc"], _LATENTS, PARAM_SPECS["W_dec"], _ROWS, _ROWS, _ROWS, _ROWS, P(),
              P(), P(), P("data"), _CODES, out, _ROWS, out)
    return fwd_out, bwd_in


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10, 11, 12, 13))
def _autoencode(x, b_dec, W_enc, b_enc, W_dec, dead_mask, aux_on, k, cap, n_dense, k_aux, method, dtype, mesh):
    return _autoencode_fwd(x, b_dec, W_enc, b_enc, W_dec, dead_mask, aux_on, k, cap, n_dense, k_aux, method, dtype,
                           mesh)[0]


def _autoencode_fwd(x, b_dec, W_enc, b_enc, W_dec, dead_mask, aux_on, k, cap, n_dense, k_aux, method, dtype, mesh):
    split = _sh._split_rows(x.shape[0], mesh)
    fwd = functools.partial(_forward_shard, k=k, m=k * x.shape[0], cap=cap, n_dense=n_dense, k_aux=k_aux,
                            method=method, dtype=dtype, split=split)
    out = _sh._shard_map(fwd, mesh, _FWD_IN, _specs(split)[0])(x, b_dec, W_enc, b_enc, W_dec, dead_mask, aux_on)
    x_hat0, vals, idx, e_hat, av, ai, kth, min_sel, fired, n, ok, n_rows, rows, h_s = out
    res = (x, b_dec, W_enc, b_enc, W_dec, vals, idx, av, ai, aux_on, kth, ok, rows, h_s)
    return (x_hat0, vals, idx, e_hat, kth, min_sel, fired, n, ok, n_rows), res


def _autoencode_bwd(k, cap, n_dense, k_aux, method, dtype, mesh, res, cts):
    g_xhat, g_vals, _, g_ehat = cts[:4]  # the statistics (kth, ...) are not differentiable
    x, b_dec, W_enc, b_enc, W_dec = res[:5]
    split = _sh._split_rows(x.shape[0], mesh)
    bwd = functools.partial(_backward_shard, k_aux=k_aux, dtype=dtype, split=split)
    g_x, g_bdec, g_w_enc, g_b, g_w_dec = _sh._shard_map(bwd, mesh, _specs(split)[1], _sh._BWD_OUT)(
        *res, g_xhat, g_vals, g_ehat)
    return (g_x.astype(x.dtype), g_bdec.astype(b_dec.dtype), g_w_enc.astype(W_enc.dtype),
            g_b.astype(b_enc.dtype), g_w_dec.astype(W_dec.dtype), None, None)


_autoencode.defvjp(_autoencode_fwd, _autoencode_bwd)


def default_dense_rows(rows_per_shard: int, fraction: float = 1 / 8) -> int:
    """Over rows per 'data' shard the sparse branch takes densely: ``fraction`` of them (at least 1)."""
    return max(1, int(rows_per_shard * fraction))


def default_row_cap(k: int, n_latents: int, factor: int = 4) -> int:
    """Slots per row: ``factor`` * k, at most F (rows needing more are taken whole, see the module docstring)."""
    return int(min(n_latents, factor * k))


def sharded_batchtopk_autoencode(
    x: jax.Array, params: dict[str, jax.Array], k: int, mesh: Mesh | None = None, *, row_cap: int | None = None,
    dense_rows: int | None = None, dead_mask: jax.Array | None = None, k_aux: int = 0, topk_method: str = "auto", compute_dtype: str = "float32",
) -> BatchTopKOutput:
    """BatchTopK SAE forward on the sparse kernels (module docstring), differentiable wrt x and the
    four parameters (through ``x_hat``, ``e_hat`` and ``vals``).

    x [B, d] is split over 'data', the dictionary over 'dict' (layouts of ``sae_jax.mesh``); B must
    divide by the 'data' size and F by the 'dict' size. ``mesh`` None: one device. ``row_cap``
    (default ``default_row_cap``) must lie in [k, F]; ``dense_rows`` (per 'data' shard, default
    ``default_dense_rows``; 0: none) bounds the rows over the cap taken densely on the sparse branch.
    """
    W_enc, W_dec = params["W_enc"], params["W_dec"]
    d, n = W_enc.shape
    if mesh is None:
        mesh = jax.make_mesh((1, 1), ("data", "dict"), devices=jax.devices()[:1],
                             axis_types=(jax.sharding.AxisType.Auto,) * 2)
    n_data, n_dict = mesh.shape["data"], mesh.shape["dict"]
    if x.ndim != 2 or x.shape[1] != d or W_dec.shape != (n, d):
        raise ValueError(f"sharded_batchtopk_autoencode needs x [B, {d}], W_enc [d, F], W_dec [F, d]; got "
                         f"{x.shape}, {W_enc.shape}, {W_dec.shape}")
    cap = default_row_cap(k, n) if row_cap is None else int(row_cap)
    if not 0 < k <= n or not 0 <= k_aux <= n or not k <= cap <= n:
        raise ValueError(f"need 0 < k <= row_cap <= F={n} and 0 <= k_aux <= F; got k={k}, row_cap={cap}, "
                         f"k_aux={k_aux}")
    if n % n_dict or x.shape[0] % n_data:
        raise ValueError(f"F={n} must divide by mesh 'dict'={n_dict} and B={x.shape[0]} by 'data'={n_data}")
    b = x.shape[0] // n_data
    n_dense = default_dense_rows(b) if dense_rows is None else int(dense_rows)
    if not 0 <= n_dense <= b:
        raise ValueError(f"dense_rows must lie in [0, {b}] (rows per 'data' shard); got {dense_rows}")
    if k_aux and dead_mask is None:
        raise ValueError("k_aux > 0 needs dead_mask [F] bool")
    if dead_mask is None:
        dead_mask = jnp.zeros((n,), bool)
    aux_on = jnp.any(dead_mask) if k_aux else jnp.zeros((), bool)
    x_hat0, vals, idx, e_hat, kth, min_sel, fired, n_act, ok, n_rows = _autoencode(
        x, params["b_dec"], W_enc, params["b_enc"], W_dec, dead_mask, aux_on, int(k), cap, n_dense, int(k_aux),
        topk_method, str(jnp.dtype(compute_dtype)), mesh)
    return BatchTopKOutput(x_hat0 + params["b_dec"], vals, idx, e_hat, aux_on, kth, min_sel, fired, n_act, ok,
                           n_rows)
