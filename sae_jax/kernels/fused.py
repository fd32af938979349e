"""The whole sparse TopK autoencoder (+ optional AuxK selection) as one custom_vjp.

One backward loop over batch blocks gathers the decoder rows once (for the values'
gradient) and scatter-adds the encoder and decoder row gradients together into one
[F, 2d] buffer: the two parameter gradients share their indices. The AuxK part runs under
``lax.cond`` only when a latent is dead, and passes the buffers through unchanged
otherwise (no dense zero gradients as a differentiated ``lax.cond`` would produce).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from sae_jax.kernels.sparse_topk import (_block_rows, _gather_combine, _transpose_materialised,
                                         topk)


def _select(pre, bias, k, method):
    v, idx = topk(pre, k, method=method, bias=bias)
    return jax.nn.relu(v), idx


def _accumulate(comb, g_b, vals, idx, xc, g_out, g_vals_direct, W_dec):
    """Add one selection's gradients into comb [F, 2d] = [dW_enc^T | dW_dec] and g_b [F].

    Returns (comb, g_b, gp) with gp [B, k] the gradient wrt the selected pre-activations."""
    b, k = idx.shape
    d = xc.shape[1]
    nb = _block_rows(b)

    def block(carry, args):
        comb, g_b = carry
        vb, ib, xb, gb, gdb = args
        rows = W_dec.at[ib].get(mode="promise_in_bounds")  # [b/nb, k, d]
        gv = jnp.einsum("bd,bkd->bk", gb, rows) + gdb
        gp = jnp.where(vb > 0, gv, 0.0)
        upd = jnp.concatenate([gp[:, :, None] * xb[:, None, :], vb[:, :, None] * gb[:, None, :]], axis=-1)
        comb = comb.at[ib.reshape(-1)].add(upd.reshape(-1, 2 * d), mode="promise_in_bounds")
        g_b = g_b.at[ib.reshape(-1)].add(gp.reshape(-1), mode="promise_in_bounds")
        return (comb, g_b), gp

    split = lambda a: a.reshape(nb, b // nb, *a.shape[1:])
    (comb, g_b), gp = lax.scan(block, (comb, g_b),
                               (split(vals), split(idx), split(xc), split(g_out), split(g_vals_direct)))
    return comb, g_b, gp.reshape(b, k)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _autoencode(x, b_dec, W_enc, b_enc, W_dec, dead_mask, k, k_aux, method, dtype):
    out, _ = _autoencode_fwd(x, b_dec, W_enc, b_enc, W_dec, dead_mask, k, k_aux, method, dtype)
    return out


def _autoencode_fwd(x, b_dec, W_enc, b_enc, W_dec, dead_mask, k, k_aux, method, dtype):
    xc = x - b_dec
    pre = jnp.dot(xc.astype(dtype), W_enc.astype(dtype), preferred_element_type=jnp.float32)
    vals, idx = _select(pre, b_enc.astype(jnp.float32), k, method)
    x_hat0 = _gather_combine(vals, idx, W_dec)
    b, d = x.shape
    if k_aux:
        active = jnp.any(dead_mask)

        def aux(_):
            av, ai = _select(pre, jnp.where(dead_mask, b_enc, -jnp.inf).astype(jnp.float32), k_aux, method)
            return av, ai, _gather_combine(av, ai, W_dec)

        def none(_):
            return (jnp.zeros((b, k_aux), jnp.float32), jnp.zeros((b, k_aux), jnp.int32),
                    jnp.zeros((b, d), x_hat0.dtype))

        av, ai, e_hat = lax.cond(active, aux, none, None)
    else:
        active = jnp.zeros((), bool)
        av, ai, e_hat = jnp.zeros((b, 0)), jnp.zeros((b, 0), jnp.int32), jnp.zeros_like(x_hat0)
    out = (x_hat0, vals, idx, e_hat, active)
    return out, (x, b_dec, W_enc, W_dec, vals, idx, av, ai, active)


def _autoencode_bwd(k, k_aux, method, dtype, res, cts):
    x, b_dec, W_enc, W_dec, vals, idx, av, ai, active = res
    g_xhat, g_vals, _, g_ehat, _ = cts
    xc = (x - b_dec).astype(jnp.float32)
    n, d = W_dec.shape
    comb = jnp.zeros((n, 2 * d), jnp.float32)
    g_b = jnp.zeros((n,), jnp.float32)
    comb, g_b, gp = _accumulate(comb, g_b, vals, idx, xc, g_xhat.astype(jnp.float32),
                                g_vals.astype(jnp.float32), W_dec)
    if k_aux:
        def aux(args):
            comb, g_b = args
            return _accumulate(comb, g_b, av, ai, xc, g_ehat.astype(jnp.float32), jnp.zeros_like(av), W_dec)

        def none(args):
            return (*args, jnp.zeros_like(av))

        comb, g_b, gpa = lax.cond(active, aux, none, (comb, g_b))
    g_w_enc = _transpose_materialised(comb[:, :d])
    g_w_dec = comb[:, d:]
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
