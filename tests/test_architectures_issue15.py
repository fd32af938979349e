"""Matryoshka BatchTopK, Gated, transcoder and skip-transcoder: forward passes, losses and the
gradients that define them against plain NumPy; config validation; one code path on every mesh."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sae_jax.config import ConfigError, DataConfig, SAEConfig, TrainConfig, validate
from sae_jax.data.paired import synthetic_pairs
from sae_jax.data.synthetic import synthetic_source
from sae_jax.sae import BatchTopKSAE, GatedSAE, MatryoshkaBatchTopKSAE, TranscoderSAE, make_architecture
from sae_jax.sae.base import LossContext
from tests.helpers_train import run_steps, tiny_config

B, D, F = 32, 12, 40


def rand(*shape, seed, scale=0.5):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def ctx(coef=0.0, dead=None):
    return LossContext(dead_mask=jnp.asarray(np.zeros(F, bool) if dead is None else dead),
                       sparsity_coef=jnp.float32(coef))


def np_fvu(x, x_hat):
    return np.sum((x - x_hat) ** 2) / np.sum((x - x.mean(0)) ** 2)


def base_params(seed):
    return {"W_enc": rand(D, F, seed=seed), "b_enc": rand(F, seed=seed + 1, scale=0.1),
            "W_dec": rand(F, D, seed=seed + 2), "b_dec": rand(D, seed=seed + 3, scale=0.1)}


# ---------------------------------------------------------------- Matryoshka BatchTopK

def test_matryoshka_loss_is_the_mean_of_prefix_reconstructions():
    p, x = base_params(0), rand(B, D, seed=9, scale=1.0)
    k, widths = 4, (5, 17, F)
    sae = MatryoshkaBatchTopKSAE(k=k, k_aux=6, auxk_coef=0.0, widths=widths)
    loss, out = sae.loss(p, sae.init_state(F), jnp.asarray(x), ctx())

    acts = np.maximum((x.astype(np.float64) - p["b_dec"]) @ p["W_enc"] + p["b_enc"], 0)
    kth = np.sort(acts.ravel())[::-1][k * B - 1]
    h = np.where((acts >= kth) & (acts > 0), acts, 0)
    levels = [h[:, :m] @ p["W_dec"][:m] + p["b_dec"] for m in widths]  # prefix m: first m latents only
    np.testing.assert_allclose(float(loss), np.mean([np_fvu(x, r) for r in levels]), rtol=1e-4)
    np.testing.assert_allclose(float(out.metrics["fvu"]), np_fvu(x, levels[-1]), rtol=1e-4)
    np.testing.assert_allclose(float(out.metrics["fvu_prefix_5"]), np_fvu(x, levels[0]), rtol=1e-4)
    np.testing.assert_allclose(float(out.state["threshold"]), h[h > 0].min(), rtol=1e-5)


def test_matryoshka_with_one_level_is_batchtopk():
    p, x = base_params(1), rand(B, D, seed=8, scale=1.0)
    dead = np.arange(F) % 3 == 0  # AuxK active too
    common = dict(k=3, k_aux=5, auxk_coef=1 / 32)
    one = MatryoshkaBatchTopKSAE(widths=(F,), **common)
    ref = BatchTopKSAE(**common)
    (l1, _), g1 = jax.value_and_grad(one.loss, has_aux=True)(p, one.init_state(F), jnp.asarray(x), ctx(dead=dead))
    (l2, _), g2 = jax.value_and_grad(ref.loss, has_aux=True)(p, ref.init_state(F), jnp.asarray(x), ctx(dead=dead))
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-6)
    for name in g1:
        np.testing.assert_allclose(np.asarray(g1[name]), np.asarray(g2[name]), rtol=1e-5, atol=1e-7)


def test_matryoshka_inner_levels_do_not_train_outer_decoder_rows():
    """Only the full level sees latents past the first prefix: their decoder gradient is that level's
    share, so it is 1/L of the full-width BatchTopK gradient (mean over L levels)."""
    p, x = base_params(2), rand(B, D, seed=7, scale=1.0)
    widths = (10, 20, F)
    m = MatryoshkaBatchTopKSAE(k=4, k_aux=5, auxk_coef=0.0, widths=widths)
    b = BatchTopKSAE(k=4, k_aux=5, auxk_coef=0.0)
    gm = jax.grad(lambda q: m.loss(q, m.init_state(F), jnp.asarray(x), ctx())[0])(p)
    gb = jax.grad(lambda q: b.loss(q, b.init_state(F), jnp.asarray(x), ctx())[0])(p)
    np.testing.assert_allclose(np.asarray(gm["W_dec"][20:]), np.asarray(gb["W_dec"][20:]) / 3, rtol=1e-4, atol=1e-7)
    assert not np.allclose(np.asarray(gm["W_dec"][:10]), np.asarray(gb["W_dec"][:10]) / 3, atol=1e-6)


# ---------------------------------------------------------------- Gated

def gated_params(seed):
    p = base_params(seed)
    del p["b_enc"]
    return p | {"b_gate": rand(F, seed=seed + 4, scale=0.3), "b_mag": rand(F, seed=seed + 5, scale=0.3),
                "r_mag": rand(F, seed=seed + 6, scale=0.3)}


def test_gated_forward_loss_and_gradients_match_numpy():
    p, x = gated_params(3), rand(B, D, seed=6, scale=1.0)
    coef = 0.2
    sae = GatedSAE()
    (loss, out), g = jax.value_and_grad(sae.loss, has_aux=True)(jax.tree.map(jnp.asarray, p), {}, jnp.asarray(x),
                                                                 ctx(coef))
    xc = x.astype(np.float64) - p["b_dec"]
    pi_gate = xc @ p["W_enc"] + p["b_gate"]
    pi_mag = xc @ (p["W_enc"] * np.exp(p["r_mag"])) + p["b_mag"]  # tied weights: same directions, rescaled
    h = (pi_gate > 0) * np.maximum(pi_mag, 0)
    x_hat = h @ p["W_dec"] + p["b_dec"]
    gate = np.maximum(pi_gate, 0)
    x_aux = gate @ p["W_dec"] + p["b_dec"]
    expected = np_fvu(x, x_hat) + coef * gate.sum(1).mean() + np_fvu(x, x_aux)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(sae.encode(p, {}, x)), h, rtol=1e-4, atol=1e-5)
    var_sum = np.sum((x - x.mean(0)) ** 2)
    # the decoder learns from the main reconstruction only (frozen in the auxiliary one)
    np.testing.assert_allclose(np.asarray(g["W_dec"]), h.T @ (-2 * (x - x_hat) / var_sum), rtol=2e-3, atol=1e-6)
    # the gate's bias learns from the L1 and the auxiliary loss only (the step has no gradient)
    d_aux = ((-2 * (x - x_aux) / var_sum) @ p["W_dec"].T) * (pi_gate > 0)
    np.testing.assert_allclose(np.asarray(g["b_gate"]), d_aux.sum(0) + coef / B * (pi_gate > 0).sum(0),
                               rtol=2e-3, atol=1e-6)
    # the magnitude path: d/dr_mag through W_mag = W_enc * exp(r_mag)
    d_h = (-2 * (x - x_hat) / var_sum) @ p["W_dec"].T * (pi_gate > 0) * (pi_mag > 0)
    np.testing.assert_allclose(np.asarray(g["r_mag"]), np.sum(d_h * (xc @ (p["W_enc"] * np.exp(p["r_mag"]))), 0),
                               rtol=2e-3, atol=1e-6)
    assert set(sae.export_params(p, {})) == {"W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"}


# ---------------------------------------------------------------- transcoders

@pytest.mark.parametrize("skip", [False, True])
def test_transcoder_loss_matches_numpy(skip):
    d_out, coef = 7, 0.3
    rows = np.concatenate([rand(B, D, seed=5, scale=1.0), rand(B, d_out, seed=4, scale=0.05)], axis=1)
    sae = TranscoderSAE(d_in=D, d_out=d_out, skip=skip, decoder_unit_norm=False)
    p = sae.init_params(jax.random.key(0), D + d_out, F, rows.mean(0))
    assert p["W_dec"].shape == (F, d_out) and p["b_dec"].shape == (d_out,)
    p = jax.device_get(p) | {"b_enc": rand(F, seed=3, scale=0.2), "W_dec": rand(F, d_out, seed=2),
                             "b_dec": rand(d_out, seed=6, scale=0.1)}
    if skip:
        p["W_skip"] = rand(d_out, D, seed=1, scale=0.3)
    x, y = rows[:, :D].astype(np.float64), rows[:, D:].astype(np.float64)
    h = np.maximum(x @ p["W_enc"] + p["b_enc"], 0)  # no input bias: b_dec lives in the output space
    pred = h @ p["W_dec"] + p["b_dec"] + (x @ p["W_skip"].T if skip else 0)  # predicts t·y
    l1 = np.mean(np.sum(h * np.linalg.norm(p["W_dec"], axis=1), 1))
    for state, t in [(sae.init_state(F), np.sqrt(d_out) / np.linalg.norm(y, axis=1).mean()),  # first batch sets t
                     ({"target_scale": jnp.float32(3.0)}, 3.0)]:  # later ones keep it
        loss, out = sae.loss(p, state, jnp.asarray(rows), ctx(coef))
        np.testing.assert_allclose(float(out.state["target_scale"]), t, rtol=1e-5)
        np.testing.assert_allclose(float(loss), np_fvu(t * y, pred) + coef * l1, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(sae.encode(p, {}, x)), h, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sae.encode(p, {}, rows)), h, rtol=1e-4, atol=1e-5)  # target ignored
    state = {"target_scale": jnp.float32(3.0)}
    np.testing.assert_allclose(np.asarray(sae.forward(p, state, x)), pred / 3.0, rtol=1e-4, atol=1e-4)
    exported = sae.export_params(p, state)  # weights that predict y itself
    y_exp = (h @ np.asarray(exported["W_dec"]) + np.asarray(exported["b_dec"])
             + (x @ np.asarray(exported["W_skip"]).T if skip else 0))
    np.testing.assert_allclose(y_exp, pred / 3.0, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- config

def test_make_architecture_and_levels():
    levels = SAEConfig(architecture="matryoshka_batchtopk", d_sae=256).matryoshka_levels
    assert levels == (16, 32, 64, 128, 256)
    assert SAEConfig(architecture="matryoshka_batchtopk", d_sae=256, matryoshka_widths=(8, 100)).matryoshka_levels \
        == (8, 100, 256)
    assert SAEConfig(matryoshka_widths=[3, 4]).matryoshka_widths == (3, 4)  # JSON lists compare equal on resume
    arch = make_architecture(SAEConfig(architecture="skip_transcoder", d_sae=64), 40)
    assert (arch.d_in, arch.d_out, arch.skip) == (20, 20, True)
    arch = make_architecture(SAEConfig(architecture="transcoder", d_sae=64, d_out=10), 40)
    assert (arch.d_in, arch.d_out, arch.skip) == (30, 10, False)


BAD = [
    ({"architecture": "matryoshka_batchtopk", "matryoshka_widths": (32, 16)}, {}, "strictly increasing"),
    ({"architecture": "matryoshka_batchtopk", "matryoshka_widths": (0, 16)}, {}, "must lie in"),
    ({"architecture": "matryoshka_batchtopk", "matryoshka_widths": (16, 128)}, {}, "must lie in"),
    ({"architecture": "matryoshka_batchtopk", "k": 0}, {}, "sae.k=0"),
    ({"architecture": "topk", "matryoshka_widths": (16,)}, {}, "matryoshka_batchtopk"),
    ({"architecture": "gated", "resample_every": 100}, {}, "b_gate"),
    ({"architecture": "topk", "d_out": 8}, {}, "target width of a transcoder"),
    ({"architecture": "topk"}, {"synthetic": "transcoder"}, "input | target"),
    ({"architecture": "transcoder"}, {"npy": "x.npy"}, "needs \\[input | target\\] rows"),
    ({"architecture": "transcoder"}, {"synthetic": "transcoder", "whiten": True}, "no --data.whiten"),
    ({"architecture": "transcoder"}, {"synthetic": "transcoder", "normalize": "layernorm"}, "normalize none"),
    ({"architecture": "transcoder", "resample_every": 10}, {"synthetic": "transcoder"}, "resample"),
    ({"architecture": "transcoder"}, {"target": "y.npy"}, "goes with --data.store or --data.npy"),
    ({"architecture": "transcoder", "d_out": 40}, {"synthetic": "transcoder"}, "leaves no input columns"),
    ({"architecture": "transcoder"}, {"synthetic": "transcoder", "synthetic_skip": -1.0}, "synthetic_skip"),
]


@pytest.mark.parametrize("sae,data,match", BAD)
def test_bad_configs_are_refused(sae, data, match):
    cfg = TrainConfig(data=DataConfig(**data), sae=SAEConfig(**({"d_sae": 64, "k": 4} | sae)))
    with pytest.raises(ConfigError, match=match):
        validate(cfg, d_in=40)


def test_odd_row_width_needs_d_out():
    cfg = TrainConfig(data=DataConfig(synthetic="transcoder"), sae=SAEConfig(architecture="transcoder", d_sae=64))
    validate(cfg, d_in=40)
    with pytest.raises(ConfigError, match="set --sae.d-out"):
        validate(cfg, d_in=41)


# ---------------------------------------------------------------- mesh

@pytest.mark.parametrize("arch", ["matryoshka_batchtopk", pytest.param("gated", marks=pytest.mark.slow),
                                  pytest.param("skip_transcoder", marks=pytest.mark.slow)])
def test_meshes_give_the_same_parameters(arch):
    """A dictionary-sharded (2, 4) mesh trains the same SAE as one device (gated, skip_transcoder: -m slow)."""
    extra = {"matryoshka_widths": (32, 96)} if arch == "matryoshka_batchtopk" else {"sparsity_coef": 0.05}
    cfg = tiny_config(architecture=arch, d_sae=256, k=2, dead_tokens=64, **extra)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=64))
    src = (synthetic_pairs(4096, 16, 48, 3, skip=0.5) if arch == "skip_transcoder"
           else synthetic_source(4096, 16, 48, 3))
    results = {shape: run_steps(cfg, src, 8, mesh_shape=shape) for shape in [(1, 1), (2, 4)]}
    ref_state, ref_metrics, _ = results[(1, 1)]
    if arch == "matryoshka_batchtopk":
        assert ref_metrics["auxk"] > 0  # AuxK and its sharded top-k really ran
    for shape, (state, metrics, _) in results.items():
        for name, value in ref_state.params.items():
            np.testing.assert_allclose(np.asarray(state.params[name]), np.asarray(value),
                                       rtol=2e-4, atol=2e-5, err_msg=f"{arch} {shape} {name}")
        np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-4)


# ---------------------------------------------------------------- paired data

def test_paired_npy_rows_and_split_check(tmp_path):
    from sae_jax.data.open import open_source
    from sae_jax.data.paired import PairedSource
    from sae_jax.data.source import ArraySource
    from sae_jax.trainer import train

    x, y = rand(64, 6, seed=1), rand(64, 4, seed=2)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=1,
                      data=DataConfig(npy=str(tmp_path / "x.npy"), target=str(tmp_path / "y.npy"), batch_size=16),
                      sae=SAEConfig(architecture="transcoder", d_sae=8))
    src = open_source(cfg.data)
    np.testing.assert_array_equal(src.read(np.array([5, 2])), np.concatenate([x[[5, 2]], y[[5, 2]]], axis=1))
    with pytest.raises(ValueError, match="aligned row by row"):
        PairedSource(ArraySource(x), ArraySource(y[:10]))
    with pytest.raises(ConfigError, match="set --sae.d-out 4"):  # default split (5 | 5) is not the data's
        train(cfg)
    plain = dataclasses.replace(cfg, data=DataConfig(batch_size=16))
    with pytest.raises(ConfigError, match="PairedSource"):  # in-memory rows must say where the target starts
        train(plain, source=ArraySource(np.concatenate([x, y], axis=1)))
