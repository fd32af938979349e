"""Sparse BatchTopK (batch-level selection on the sharded kernels) against dense references."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sae_jax.config import MeshConfig
from sae_jax.data.synthetic import synthetic_source
from sae_jax.kernels.batchtopk import sharded_batchtopk_autoencode
from sae_jax.kernels.batchtopk_sae import SparseBatchTopKSAE
from sae_jax.mesh import make_mesh
from tests.helpers_train import tiny_config
from tests.test_kernels_fused import _loss, _params, assert_grads_match, dense
from tests.test_kernels_sharded import MESHES, _train


def _mesh(shape):
    return make_mesh(MeshConfig(data=shape[0], dict=shape[1]), jax.devices()[: shape[0] * shape[1]])


def _reference(p, x, k):
    """NumPy brute force: the k*B largest ReLU'd pre-activations of the batch, ties at the k*B-th kept."""
    pre = (np.asarray(x) - np.asarray(p["b_dec"])) @ np.asarray(p["W_enc"]) + np.asarray(p["b_enc"])
    acts = np.maximum(pre, 0.0)
    kth = np.sort(acts.reshape(-1))[-k * x.shape[0]]
    h = np.where((acts >= kth) & (acts > 0), acts, 0.0)
    return h, kth


# (mesh, row_cap, dense_rows, native): row_cap 40 keeps every row under the cap (lists only, no row
# taken whole);
# row_cap 8 is exceeded by the two boosted rows: 2 dense rows per shard take them (lists + dense
# rows), 0 dense rows send the step to the dense branch
_FAST = {((4, 2), 8, 0, False), ((1, 2), 8, 2, True)}  # the rest of the grid is slow (compiles)
_CASES = [pytest.param(m, cap, rows, native, marks=() if (m, cap, rows, native) in _FAST else pytest.mark.slow)
          for m in [(1, 1), (1, 2), (2, 2), (1, 4), (4, 2)] for cap, rows in ((40, 0), (8, 2), (8, 0))
          for native in (True, False)]


@pytest.mark.parametrize("mesh_shape,row_cap,dense_rows,native", _CASES)
def test_batchtopk_values_and_grads_match_dense(mesh_shape, row_cap, dense_rows, native, monkeypatch):
    import sae_jax.kernels.sharded as sharded

    if native and not sharded._native():
        pytest.skip("native CPU kernels not built here")
    if not native:
        monkeypatch.setattr(sharded, "_native", lambda: False)
    mesh = _mesh(mesh_shape)
    B, d, F, k, k_aux = 16, 12, 256, 6, 10
    p = _params(jax.random.PRNGKey(0), d, F)
    x = jax.random.normal(jax.random.PRNGKey(1), (B, d))
    if row_cap == 8:
        x = x.at[:2].mul(5.0)  # two rows hold far more than their share of the batch's largest entries
    dead = jnp.zeros((F,), bool).at[jnp.arange(7) * 37].set(True)
    kw = dict(row_cap=row_cap, dense_rows=dense_rows, dead_mask=dead, k_aux=k_aux)
    run = jax.jit(lambda p, x: sharded_batchtopk_autoencode(x, p, k, mesh, **kw))
    out = run(p, x)
    h, kth = _reference(p, x, k)
    per_row = (h > 0).sum(1)
    n_over = int((per_row >= row_cap).sum())  # rows a list cannot show complete (the boosted ones)
    assert n_over == (0 if row_cap == 40 else 2)
    assert bool(out.exact_sparse) == (n_over <= dense_rows)  # the case exercises the branch it names
    assert float(out.dense_rows) == (n_over if n_over <= dense_rows else B)
    assert float(out.kth) == pytest.approx(kth, rel=1e-6)
    assert float(out.n_active) == (h > 0).sum()
    np.testing.assert_array_equal(np.asarray(out.fired), (h > 0).any(0))
    assert float(out.min_selected) == pytest.approx(h[h > 0].min(), rel=1e-6)
    ref_x_hat = h @ np.asarray(p["W_dec"]) + np.asarray(p["b_dec"])
    np.testing.assert_allclose(np.asarray(out.x_hat), ref_x_hat, rtol=1e-4, atol=1e-4)
    if dense_rows == 0 and n_over == 0:  # the padded lists hold exactly the selection
        dense_from_lists = np.zeros_like(h)
        np.put_along_axis(dense_from_lists, np.asarray(out.idx), np.asarray(out.vals), axis=1)
        np.testing.assert_allclose(dense_from_lists, h, rtol=1e-6)
    _, ref_e_hat = dense(p, x, k, dead, k_aux)  # AuxK: per-row top-k_aux of the dead latents
    np.testing.assert_allclose(np.asarray(out.e_hat), np.asarray(ref_e_hat), rtol=1e-5, atol=1e-5)

    def sparse_loss(p, x):
        o = sharded_batchtopk_autoencode(x, p, k, mesh, **kw)
        return _loss(o.x_hat, o.e_hat, x) + jnp.sum(jnp.sin(o.vals))

    # vals are the selected entries among each row's row_cap largest (all of them on the sparse branch)
    listed = np.zeros(h.shape, bool)
    np.put_along_axis(listed, np.asarray(out.idx), np.asarray(out.vals) > 0, axis=1)

    def dense_loss(p, x):  # autodiff through the dense selection
        pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
        acts = jax.nn.relu(pre)
        hd = jnp.where((acts >= kth) & (acts > 0), acts, 0.0)
        _, e_hat = dense(p, x, k, dead, k_aux)
        return _loss(hd @ p["W_dec"] + p["b_dec"], e_hat, x) + jnp.sum(jnp.sin(jnp.where(listed, hd, 0.0)))

    assert_grads_match(sparse_loss, dense_loss, p, x)


def test_batchtopk_ties_at_the_threshold_are_all_kept():
    # a hand-made batch: 3 rows, m = k*B = 3, the 3rd largest value (2.0) occurs twice -> 4 selected
    d, F, k = 4, 4, 1
    p = {"W_enc": jnp.eye(d), "b_enc": jnp.zeros(F), "W_dec": jnp.eye(d), "b_dec": jnp.zeros(d)}
    x = jnp.array([[5.0, 2.0, 0.0, -1.0], [2.0, 0.5, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    want = [[5, 2, 0, 0], [2, 0, 0, 0], [3, 0, 0, 0]]
    # row 0 holds 2 selected: 3 slots show that nothing beyond them is selected; 2 slots cannot
    for cap, dense_rows, sparse in ((3, 0, True), (2, 0, False), (2, 1, True)):
        out = sharded_batchtopk_autoencode(x, p, k, row_cap=cap, dense_rows=dense_rows)
        assert float(out.kth) == 2.0 and float(out.n_active) == 4.0 and bool(out.exact_sparse) == sparse
        np.testing.assert_allclose(np.asarray(out.x_hat), want)
        assert float(out.min_selected) == 2.0


def test_batchtopk_bad_row_cap():
    p = _params(jax.random.PRNGKey(0), 4, 16)
    with pytest.raises(ValueError, match="row_cap"):
        sharded_batchtopk_autoencode(jnp.ones((2, 4)), p, 4, row_cap=2)


def _cfg(impl):
    cfg = tiny_config(d_sae=256, k=4, dead_tokens=64, impl=impl, architecture="batchtopk")
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=64))


@pytest.fixture(scope="module")
def dense_reference():
    return _train(_cfg("dense"), synthetic_source(4096, 16, 48, 3), (1, 1), 6)


@pytest.mark.parametrize("mesh_shape", [m if m == (1, 2) else pytest.param(m, marks=pytest.mark.slow)
                                        for m in MESHES])
def test_sparse_batchtopk_step_matches_the_dense_single_device_step(mesh_shape, dense_reference, monkeypatch):
    import sae_jax.kernels.batchtopk as btk
    import sae_jax.kernels.batchtopk_sae as btk_sae

    # 4k slots per row, 1/16 of the rows taken whole: on this data all three paths run
    monkeypatch.setattr(btk_sae, "default_row_cap", lambda k, n, factor: min(n, 4 * k))
    monkeypatch.setattr(btk, "default_dense_rows", lambda b: max(1, b // 16))
    ref_arch, ref_state, ref_hist = dense_reference
    assert not isinstance(ref_arch, SparseBatchTopKSAE)
    arch, state, hist = _train(_cfg("auto"), synthetic_source(4096, 16, 48, 3), mesh_shape, 6)
    assert isinstance(arch, SparseBatchTopKSAE) and arch.mesh.devices.shape == mesh_shape  # auto picks it
    assert max(m["auxk"] for m in ref_hist) > 0  # AuxK really ran
    # rows overflow their lists: the steps mix the sparse branch, rows taken whole and the dense
    # branch (with 16 rows per 'data' shard one row may be taken whole: every step here is dense)
    branches = {m["btk_dense"] for m in hist}
    assert branches == ({1.0} if mesh_shape[0] == 4 else {0.0, 1.0})
    assert mesh_shape[0] == 4 or any(0 < m["btk_dense_rows"] < 1 for m in hist)
    for t, (a, b) in enumerate(zip(ref_hist, hist)):
        for key in ("loss", "fvu", "l0", "auxk", "dead_frac", "grad_norm", "threshold"):
            np.testing.assert_allclose(b[key], a[key], rtol=2e-5, atol=1e-6, err_msg=f"{key} step {t}")
    for name, value in ref_state.params.items():
        np.testing.assert_allclose(np.asarray(state.params[name]), np.asarray(value), rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    np.testing.assert_allclose(float(state.arch_state["threshold"]), float(ref_state.arch_state["threshold"]),
                               rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(state.tokens_since_fired), np.asarray(ref_state.tokens_since_fired))
