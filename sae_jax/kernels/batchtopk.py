"""The sparse BatchTopK autoencoder (+ AuxK) on a ('data', 'dict') mesh: the selection of
``sae_jax.sae.batchtopk`` (the m = k*B largest ReLU'd pre-activations of the whole global batch;
every entry equal to the m-th largest is kept too, as the dense reference keeps them), then the
gathered decoder and sparse backward of ``sharded.py``.

Rows keep different numbers of latents, so each row's selection is padded to a static cap
``row_cap`` (masked slots have value 0 and add nothing). Per step:

1. each row's ``row_cap`` largest pre-activations (the two-stage top-k over 'dict' of sharded.py);
2. t = the m-th largest of all rows' candidates (per 'data' shard, then over 'data');
3. t is the true batch threshold, and the candidates >= t are exactly the dense selection, when
   every row's smallest candidate is < t (or 0): then no row has an entry >= t outside its
   candidates, so the whole batch has as many entries > t and >= t as the candidates do.
   If some row has more than ``row_cap`` entries >= t the step is *not* approximated: a
   ``lax.cond`` runs the dense selection, decoder and backward on each shard's [b, f] block
   instead (same result, dense cost; ``exact_sparse`` reports which branch ran).
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


class BatchTopKOutput(NamedTuple):
    x_hat: jax.Array
    """[B, d] reconstruction including b_dec."""
    vals: jax.Array
    """[B, row_cap] selected values (0 in unused slots; complete only when ``exact_sparse``)."""
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
    """Scalar bool: the sparse branch ran (False: some row exceeded row_cap, the dense branch ran)."""


def _kth(values, m, axes):
    """The m-th largest of the union of ``values`` over the mesh ``axes`` (each shard keeps its m
    largest first, so the gather holds at most m per shard)."""
    flat = values.reshape(-1)
    top = lax.top_k(flat, min(m, flat.size))[0]
    if all(lax.axis_size(a) == 1 for a in axes):  # the callers guarantee flat.size >= m
        return jnp.min(top)
    return jnp.min(lax.top_k(lax.all_gather(top, axes, tiled=True), m)[0])


def _pmin(x, axes):
    return lax.pmin(x, axes) if any(lax.axis_size(a) > 1 for a in axes) else x


def _dense_selection(xc, W_enc, b_enc, T, dtype):
    pre = jnp.dot(xc.astype(dtype), W_enc.astype(dtype), preferred_element_type=jnp.float32)
    acts = jax.nn.relu(pre + b_enc.astype(jnp.float32))
    sel = (acts >= T) & (acts > 0)
    return jnp.where(sel, acts, 0.0), sel


def _local_fired(vals, idx, f):
    lv, li, mine = _sh._owned(vals, idx, f)
    return jnp.zeros((f,), bool).at[li.reshape(-1)].max((mine & (vals > 0)).reshape(-1))


def _forward_shard(x, b_dec, W_enc, b_enc, W_dec, dead_mask, aux_on, *, k, m, cap, k_aux, method, dtype,
                   split):
    f = W_dec.shape[0]
    xc = x - b_dec
    pre = jnp.dot(xc.astype(dtype), W_enc.astype(dtype), preferred_element_type=jnp.float32)
    cv, ci = _sh._global_topk(pre, b_enc.astype(jnp.float32), cap, method)  # [b, cap], replicated over 'dict'
    t = _kth(cv, m, ("data",))
    floor = jnp.min(cv, axis=1)  # the row's cap-th largest (min, not a slice: see topk.py)
    full = cap >= f * lax.axis_size("dict")  # every entry is a candidate
    ok = full | (_pmin(jnp.min(jnp.where((floor < t) | (floor <= 0), 1, 0)), ("data",)) == 1)

    def sparse(_):
        vals = jnp.where((cv >= t) & (cv > 0), cv, 0.0)
        x_hat0 = _sh._decode(vals, ci, W_dec, split)
        min_sel = _pmin(jnp.min(jnp.where(vals > 0, vals, jnp.inf)), ("data",))
        fired = _sh._psum(_local_fired(vals, ci, f).astype(jnp.int32), "data") > 0
        n = _sh._psum(jnp.sum(vals > 0).astype(jnp.float32), "data")
        return x_hat0, vals, t, min_sel, fired, n

    def dense(_):
        acts = jax.nn.relu(pre + b_enc.astype(jnp.float32))
        T = _kth(acts, m, ("data", "dict"))
        h = jnp.where((acts >= T) & (acts > 0), acts, 0.0)
        part = jnp.dot(h, W_dec.astype(jnp.float32), preferred_element_type=jnp.float32)
        x_hat0 = lax.psum_scatter(part, "dict", scatter_dimension=0, tiled=True) if split else _sh._psum(part, "dict")
        min_sel = _pmin(jnp.min(jnp.where(h > 0, h, jnp.inf)), ("data", "dict"))
        fired = _sh._psum(jnp.any(h > 0, axis=0).astype(jnp.int32), "data") > 0
        n = _sh._psum(_sh._psum(jnp.sum(h > 0).astype(jnp.float32), "data"), "dict")
        return x_hat0, jnp.where((cv >= T) & (cv > 0), cv, 0.0), T, min_sel, fired, n

    x_hat0, vals, kth, min_sel, fired, n = lax.cond(ok, sparse, dense, None)  # ok is replicated
    e_hat, av, ai = _sh._aux_forward(pre, b_enc, W_dec, dead_mask, aux_on, x_hat0, k_aux=k_aux, method=method,
                                     split=split)
    return x_hat0, vals, ci, e_hat, av, ai, kth, min_sel, fired, n, ok


def _backward_shard(x, b_dec, W_enc, b_enc, W_dec, vals, idx, av, ai, aux_on, kth, ok, g_xhat, g_vals, g_ehat, *,
                    k_aux, dtype, split):
    f = W_dec.shape[0]
    xc = (x - b_dec).astype(jnp.float32)
    if split:  # every shard's selections need the whole [b, d] output gradients
        g_xhat, g_ehat = (lax.all_gather(g, "dict", axis=0, tiled=True) for g in (g_xhat, g_ehat))
    part = functools.partial(_sh._part, xc=xc, W_enc=W_enc, W_dec=W_dec)

    def sparse(acc):
        return part(g_xhat, g_vals, vals, idx, acc)

    def dense(acc):  # the selection is recomputed (from kth) rather than kept as a [b, f] residual
        h, sel = _dense_selection(xc, W_enc, b_enc, kth, dtype)
        _, li, mine = _sh._owned(vals, idx, f)
        gh = jnp.dot(g_xhat.astype(jnp.float32), W_dec.astype(jnp.float32).T)
        gh = gh.at[jnp.arange(gh.shape[0])[:, None], li].add(jnp.where(mine, g_vals, 0.0))
        gp = jnp.where(sel, gh, 0.0)
        g_enc, g_dec, g_b = acc
        g_enc = g_enc + (xc.T @ gp if _sh._native() else gp.T @ xc)
        return (g_enc, g_dec + h.T @ g_xhat.astype(jnp.float32), g_b + jnp.sum(gp, axis=0)), gp @ W_enc.T

    acc, g_x = lax.cond(ok, sparse, dense, _sh._zero_acc(W_dec))
    return _sh._finish_backward(part, acc, g_x, W_enc, av, ai, aux_on, g_ehat, k_aux=k_aux)


_FWD_IN = _sh._FWD_IN


def _specs(split):
    out = P(("data", "dict"), None) if split else _ROWS
    fwd_out = (out, _ROWS, _ROWS, out, _ROWS, _ROWS, P(), P(), _LATENTS, P(), P())
    bwd_in = (_ROWS, P(), PARAM_SPECS["W_enc"], _LATENTS, PARAM_SPECS["W_dec"], _ROWS, _ROWS, _ROWS, _ROWS, P(),
              P(), P(), out, _ROWS, out)
    return fwd_out, bwd_in


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10, 11, 12))
def _autoencode(x, b_dec, W_enc, b_enc, W_dec, dead_mask, aux_on, k, cap, k_aux, method, dtype, mesh):
    return _autoencode_fwd(x, b_dec, W_enc, b_enc, W_dec, dead_mask, aux_on, k, cap, k_aux, method, dtype, mesh)[0]


def _autoencode_fwd(x, b_dec, W_enc, b_enc, W_dec, dead_mask, aux_on, k, cap, k_aux, method, dtype, mesh):
    split = _sh._split_rows(x.shape[0], mesh)
    fwd = functools.partial(_forward_shard, k=k, m=k * x.shape[0], cap=cap, k_aux=k_aux, method=method,
                            dtype=dtype, split=split)
    out = _sh._shard_map(fwd, mesh, _FWD_IN, _specs(split)[0])(x, b_dec, W_enc, b_enc, W_dec, dead_mask, aux_on)
    x_hat0, vals, idx, e_hat, av, ai, kth, min_sel, fired, n, ok = out
    res = (x, b_dec, W_enc, b_enc, W_dec, vals, idx, av, ai, aux_on, kth, ok)
    return (x_hat0, vals, idx, e_hat, kth, min_sel, fired, n, ok), res


def _autoencode_bwd(k, cap, k_aux, method, dtype, mesh, res, cts):
    g_xhat, g_vals, _, g_ehat = cts[:4]  # the statistics (kth, ...) are not differentiable
    x, b_dec, W_enc, b_enc, W_dec = res[:5]
    split = _sh._split_rows(x.shape[0], mesh)
    bwd = functools.partial(_backward_shard, k_aux=k_aux, dtype=dtype, split=split)
    g_x, g_bdec, g_w_enc, g_b, g_w_dec = _sh._shard_map(bwd, mesh, _specs(split)[1], _sh._BWD_OUT)(
        *res, g_xhat, g_vals, g_ehat)
    return (g_x.astype(x.dtype), g_bdec.astype(b_dec.dtype), g_w_enc.astype(W_enc.dtype),
            g_b.astype(b_enc.dtype), g_w_dec.astype(W_dec.dtype), None, None)


_autoencode.defvjp(_autoencode_fwd, _autoencode_bwd)


def default_row_cap(k: int, n_latents: int, factor: int = 4) -> int:
    """Slots per row: ``factor`` * k (rows above it take the exact dense branch), at most F."""
    return int(min(n_latents, factor * k))


def sharded_batchtopk_autoencode(
    x: jax.Array, params: dict[str, jax.Array], k: int, mesh: Mesh | None = None, *, row_cap: int | None = None,
    dead_mask: jax.Array | None = None, k_aux: int = 0, topk_method: str = "auto", compute_dtype: str = "float32",
) -> BatchTopKOutput:
    """BatchTopK SAE forward on the sparse kernels (module docstring), differentiable wrt x and the
    four parameters (through ``x_hat``, ``e_hat`` and ``vals``).

    x [B, d] is split over 'data', the dictionary over 'dict' (layouts of ``sae_jax.mesh``); B must
    divide by the 'data' size and F by the 'dict' size. ``mesh`` None: one device. ``row_cap``
    (default ``default_row_cap``) must lie in [k, F].
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
    if k_aux and dead_mask is None:
        raise ValueError("k_aux > 0 needs dead_mask [F] bool")
    if dead_mask is None:
        dead_mask = jnp.zeros((n,), bool)
    aux_on = jnp.any(dead_mask) if k_aux else jnp.zeros((), bool)
    x_hat0, vals, idx, e_hat, kth, min_sel, fired, n_act, ok = _autoencode(
        x, params["b_dec"], W_enc, params["b_enc"], W_dec, dead_mask, aux_on, int(k), cap, int(k_aux),
        topk_method, str(jnp.dtype(compute_dtype)), mesh)
    return BatchTopKOutput(x_hat0 + params["b_dec"], vals, idx, e_hat, aux_on, kth, min_sel, fired, n_act, ok)
