"""Each architecture's forward pass and loss against a plain NumPy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sae_jax.sae import BatchTopKSAE, JumpReluSAE, ReluSAE, TopKSAE
from sae_jax.sae.base import LossContext

B, D, F = 32, 12, 40


def random_params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.standard_normal((D, F)).astype(np.float32) * 0.5,
        "b_enc": rng.standard_normal(F).astype(np.float32) * 0.1,
        "W_dec": rng.standard_normal((F, D)).astype(np.float32) * 0.5,
        "b_dec": rng.standard_normal(D).astype(np.float32) * 0.1,
    }, rng.standard_normal((B, D)).astype(np.float32)


def np_fvu(x, x_hat):
    return np.sum((x - x_hat) ** 2) / np.sum((x - x.mean(0)) ** 2)


def np_pre(p, x):
    return (x.astype(np.float64) - p["b_dec"]) @ p["W_enc"] + p["b_enc"]


def np_topk_codes(pre, k):
    h = np.zeros_like(pre)
    for i, row in enumerate(pre):
        idx = np.argsort(-row)[:k]
        h[i, idx] = np.maximum(row[idx], 0)
    return h


def ctx(dead=None, coef=0.0):
    dead = np.zeros(F, bool) if dead is None else dead
    return LossContext(dead_mask=jnp.asarray(dead), sparsity_coef=jnp.float32(coef))


def test_topk_loss_and_auxk_match_numpy():
    p, x = random_params()
    k, k_aux, coef = 5, 6, 1 / 32
    dead = np.zeros(F, bool)
    dead[::3] = True  # 14 dead latents
    sae = TopKSAE(k=k, k_aux=k_aux, auxk_coef=coef)
    loss, out = sae.loss(jax.tree.map(jnp.asarray, p), {}, jnp.asarray(x), ctx(dead))

    pre = np_pre(p, x)
    h = np_topk_codes(pre, k)
    x_hat = h @ p["W_dec"] + p["b_dec"]
    e = x - x_hat
    dead_pre = np.where(dead, pre, -np.inf)
    h_aux = np.where(np.isfinite(dead_pre), np_topk_codes(np.where(dead, pre, -1e30), k_aux), 0)
    e_hat = h_aux @ p["W_dec"]  # no b_dec in the auxiliary reconstruction
    aux = np.mean(np.sum((e - e_hat) ** 2, 1)) / np.mean(np.sum((e - e.mean(0)) ** 2, 1))
    np.testing.assert_allclose(float(out.metrics["auxk"]), aux, rtol=1e-4)
    np.testing.assert_allclose(float(loss), np_fvu(x, x_hat) + coef * aux, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(sae.encode(p, {}, x)), h, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.fired), (h != 0).any(0))
    assert float(out.metrics["l0"]) == pytest.approx(np.mean((h != 0).sum(1)))


def test_auxk_is_zero_without_dead_latents():
    p, x = random_params(1)
    sae = TopKSAE(k=5, k_aux=6, auxk_coef=1 / 32)
    loss, out = sae.loss(p, {}, jnp.asarray(x), ctx())
    assert float(out.metrics["auxk"]) == 0.0
    assert float(loss) == pytest.approx(float(out.metrics["fvu"]))


def test_batchtopk_selects_k_times_batch_and_tracks_threshold():
    p, x = random_params(2)
    k = 4
    sae = BatchTopKSAE(k=k, k_aux=6, auxk_coef=0.0, threshold_lr=0.1)
    state = sae.init_state(F)
    loss, out = sae.loss(p, state, jnp.asarray(x), ctx())
    acts = np.maximum(np_pre(p, x), 0)
    kth = np.sort(acts.ravel())[::-1][k * B - 1]
    h = np.where((acts >= kth) & (acts > 0), acts, 0)
    x_hat = h @ p["W_dec"] + p["b_dec"]
    np.testing.assert_allclose(float(loss), np_fvu(x, x_hat), rtol=1e-4)
    assert float(out.metrics["l0"]) == pytest.approx(k, abs=1e-6)
    # first batch sets the threshold, later ones move it by the EMA rate
    np.testing.assert_allclose(float(out.state["threshold"]), kth, rtol=1e-5)
    _, out2 = sae.loss(p, {"threshold": jnp.float32(1.0)}, jnp.asarray(x), ctx())
    np.testing.assert_allclose(float(out2.state["threshold"]), 0.9 * 1.0 + 0.1 * kth, rtol=1e-5)
    # inference is a JumpReLU at the learned threshold
    h_inf = np.asarray(sae.encode(p, {"threshold": jnp.float32(kth)}, x))
    np.testing.assert_allclose(h_inf, np.where(acts > kth, acts, 0), rtol=1e-4, atol=1e-5)


def test_relu_l1_weights_by_decoder_norms():
    p, x = random_params(3)
    coef = 0.3
    for unit in (True, False):
        sae = ReluSAE(decoder_unit_norm=unit)
        loss, out = sae.loss(p, {}, jnp.asarray(x), ctx(coef=coef))
        h = np.maximum(np_pre(p, x), 0)
        x_hat = h @ p["W_dec"] + p["b_dec"]
        norms = np.ones(F) if unit else np.linalg.norm(p["W_dec"], axis=1)
        expected = np_fvu(x, x_hat) + coef * np.mean(np.sum(h * norms, 1))
        np.testing.assert_allclose(float(loss), expected, rtol=1e-4)


def test_jumprelu_forward_and_pseudo_gradient_match_numpy():
    p, x = random_params(4)
    eps, coef = 0.5, 0.2
    theta = np.abs(np.random.default_rng(5).standard_normal(F)).astype(np.float32) * 0.5
    p["log_threshold"] = np.log(theta)
    sae = JumpReluSAE(bandwidth=eps)
    jp = jax.tree.map(jnp.asarray, p)
    (loss, out), grads = jax.value_and_grad(sae.loss, has_aux=True)(jp, {}, jnp.asarray(x), ctx(coef=coef))

    z = np_pre(p, x)
    on = z > theta
    h = np.where(on, z, 0)
    x_hat = h @ p["W_dec"] + p["b_dec"]
    var_sum = np.sum((x - x.mean(0)) ** 2)
    np.testing.assert_allclose(float(loss), np_fvu(x, x_hat) + coef * on.sum(1).mean(), rtol=1e-4)
    # d loss / d theta with the rectangle-kernel pseudo-derivative, then chain rule to log theta
    dl_dh = (-2 * (x - x_hat) / var_sum) @ p["W_dec"].T
    kern = (np.abs((z - theta) / eps) < 0.5) / eps
    dtheta = np.sum(dl_dh * (-theta * kern), 0) + coef / B * np.sum(-kern, 0)
    np.testing.assert_allclose(np.asarray(grads["log_threshold"]), dtheta * theta, rtol=2e-3, atol=1e-5)


def test_bfloat16_matmuls_track_float32():
    p, x = random_params(6)
    f32 = TopKSAE(k=5, k_aux=6, auxk_coef=0.0)
    bf16 = TopKSAE(k=5, k_aux=6, auxk_coef=0.0, dtype="bfloat16")
    (l32, _), g32 = jax.value_and_grad(f32.loss, has_aux=True)(p, {}, jnp.asarray(x), ctx())
    (l16, _), g16 = jax.value_and_grad(bf16.loss, has_aux=True)(p, {}, jnp.asarray(x), ctx())
    assert g16["W_enc"].dtype == jnp.float32  # master weights and their gradients stay float32
    np.testing.assert_allclose(float(l16), float(l32), rtol=3e-2)
    assert float(l16) != float(l32)  # the bf16 path really ran at lower precision


def test_relu_preset_loss_is_in_the_usual_units():
    """Issue 12: the ReLU+L1 preset's λ was on FVU (project units): 5.0 collapsed SmolLM2 SAEs and papers' λ
    did not carry over. Now loss = Σ_d (x − x̂)² averaged over tokens (inputs at E‖x‖ = √d) + λ Σ_i |h_i|‖W_dec,i‖,
    the units of SAELens' 'standard' l1_coefficient and Anthropic's April 2024 update."""
    from sae_jax.config import presets
    from sae_jax.sae import make_architecture

    cfg = presets()["relu"][1]
    assert cfg.data.normalize == "expected_norm"
    sae = make_architecture(cfg.sae, D)
    p, x = random_params(4)
    coef = cfg.sae.sparsity_coef
    loss, _ = sae.loss(p, {}, jnp.asarray(x), ctx(coef=coef))
    h = np.maximum(np_pre(p, x), 0)
    x_hat = h @ p["W_dec"] + p["b_dec"]
    norms = np.linalg.norm(p["W_dec"], axis=1)
    expected = np.mean(np.sum((x - x_hat) ** 2, 1)) + coef * np.mean(np.sum(h * norms, 1))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
