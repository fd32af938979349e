"""BatchTopK crosscoder: loss against NumPy, one-device vs dictionary-sharded mesh, export round trip, and
recovery of a planted base-only / tuned-only / shared split on synthetic paired activations."""
import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

from sae_jax.config import CheckpointConfig, ConfigError, DataConfig, OptimConfig, SAEConfig, validate
from sae_jax.data.source import ArraySource
from sae_jax.evals.crosscoder import (BASE_ONLY, SHARED, TUNED_ONLY, activation_norms,
                                      classify_crosscoder_latents)
from sae_jax.data.paired import PairedSource
from sae_jax.errors import ExportError
from sae_jax.export import load_crosscoder, load_sae
from sae_jax.sae import base
from sae_jax.sae.crosscoder import CrosscoderSAE
from sae_jax.trainer import train
from tests.helpers_train import run_steps, tiny_config
from tests.test_resume import assert_same_export

D = 16
N_SHARED, N_BASE, N_TUNED = 8, 6, 6


def planted_pairs(n_rows=16384, seed=0):
    """[x_base | x_tuned]: shared atoms in both models, base-only atoms in x_base, tuned-only in x_tuned."""
    rng = np.random.default_rng(seed)
    n_atoms = N_SHARED + N_BASE + N_TUNED
    atoms = rng.standard_normal((n_atoms, D))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    in_base = np.r_[np.ones(N_SHARED + N_BASE), np.zeros(N_TUNED)]
    in_tuned = np.r_[np.ones(N_SHARED), np.zeros(N_BASE), np.ones(N_TUNED)]
    codes = np.zeros((n_rows, n_atoms))
    for i in range(n_rows):
        j = rng.choice(n_atoms, 2, replace=False)
        codes[i, j] = rng.exponential(1.0, 2) + 0.5
    rows = np.concatenate([(codes * in_base) @ atoms, (codes * in_tuned) @ atoms], axis=1)
    rows += 0.01 * rng.standard_normal(rows.shape)
    truth = np.r_[[SHARED] * N_SHARED, [BASE_ONLY] * N_BASE, [TUNED_ONLY] * N_TUNED]
    full = np.concatenate([atoms * in_base[:, None], atoms * in_tuned[:, None]], axis=1)
    return ArraySource(rows.astype(np.float32)), full, truth


def xc_config(run_dir, steps=300, **sae):
    cfg = tiny_config(run_dir, architecture="crosscoder", **({"d_sae": 48, "k": 2, "auxk_coef": 1 / 32} | sae))
    return dataclasses.replace(cfg, steps=steps, data=dataclasses.replace(cfg.data, batch_size=256))


def test_loss_matches_numpy():
    rng = np.random.default_rng(0)
    arch = CrosscoderSAE(k=2, k_aux=4, auxk_coef=0.0, recon_loss="mse", d_model=3)
    params = base.init_tied_params(jax.random.PRNGKey(0), 6, 5, np.zeros(6, np.float32))
    params["W_dec"] = params["W_dec"] * np.array([1.0, 0.3, 2.0, 1.0, 0.5], np.float32)[:, None]  # unequal norms
    params["b_enc"] = params["b_enc"] + 0.1
    x = rng.standard_normal((4, 6)).astype(np.float32)
    ctx = base.LossContext(dead_mask=np.zeros(5, bool), sparsity_coef=np.float32(0))
    loss, out = arch.loss(params, arch.init_state(5), x, ctx)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    acts = np.maximum((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"], 0)
    w = np.linalg.norm(p["W_dec"][:, :3], axis=1) + np.linalg.norm(p["W_dec"][:, 3:], axis=1)
    v = acts * w
    kth = np.sort(v.ravel())[::-1][2 * 4 - 1]  # k·B-th largest weighted value of the batch
    h = np.where((v >= kth) & (v > 0), acts, 0)
    x_hat = h @ p["W_dec"] + p["b_dec"]
    assert float(loss) == pytest.approx(((x - x_hat) ** 2).sum(1).mean(), rel=1e-5)
    assert float(out.metrics["l0"]) == pytest.approx((h != 0).sum(1).mean())
    assert float(out.state["threshold"]) == pytest.approx(v[h != 0].min(), rel=1e-5)


def test_dictionary_sharded_mesh_equals_one_device(tmp_path):
    source, _, _ = planted_pairs(4096)
    cfg = xc_config(tmp_path)
    one, m1, _ = run_steps(cfg, source, 6, mesh_shape=(1, 1))
    two, m2, _ = run_steps(cfg, source, 6, mesh_shape=(2, 2))
    assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), rel=1e-4)
    np.testing.assert_allclose(np.asarray(one.params["W_dec"]), np.asarray(two.params["W_dec"]), atol=2e-5)


@pytest.mark.slow  # ~4 s alone, 6-10 s on this loaded 2-core machine (compile + 200 steps)
def test_recovers_the_planted_split(tmp_path):
    """Every planted atom is learned, and the decoder-norm classes match the planted partition: each
    base-only / tuned-only latent is a planted atom of that kind (precision), each planted one-model atom is
    learned by a latent of its kind (recall). Four seeds gave 1.0 for both at these settings."""
    source, atoms, truth = planted_pairs(4096)
    cfg = dataclasses.replace(xc_config(tmp_path, steps=200), optim=OptimConfig(lr=1e-2, warmup_steps=5),
                              checkpoint=CheckpointConfig(every=10**6))
    sae = load_crosscoder(train(cfg, source=source).export_dir)
    W = np.asarray(sae.params["W_dec"])
    lat = classify_crosscoder_latents(W, sae.cfg["crosscoder_d_model"])
    cos = (atoms / np.linalg.norm(atoms, axis=1, keepdims=True)) @ (W / np.linalg.norm(W, axis=1, keepdims=True)).T
    assert (cos.max(1) > 0.9).mean() >= 0.9  # [atoms, latents]: atoms are learned
    nearest, close = cos.argmax(0), cos.max(0) > 0.9
    for kind in (BASE_ONLY, TUNED_ONLY):
        mine = np.flatnonzero(lat.classes == kind)
        assert len(mine) >= 0.9 * (truth == kind).sum(), lat.counts()
        assert np.mean(close[mine] & (truth[nearest[mine]] == kind)) >= 0.9, kind  # precision
        planted = np.flatnonzero(truth == kind)
        assert np.mean(lat.classes[cos[planted].argmax(1)] == kind) >= 0.9, kind  # recall


def test_export_round_trip_equals_the_training_model(tmp_path):
    """Trained from two stores (base, tuned) as `sae-jax train` reads them; the export encodes as training did."""
    result = train(dataclasses.replace(xc_config(tmp_path, steps=20), data=planted_stores(tmp_path)))
    assert result.arch.d_model == D
    sae = load_sae(result.export_dir)
    assert sae.architecture == "jumprelu" and sae.cfg["crosscoder_d_model"] == D
    x = np.random.default_rng(1).standard_normal((50, 2 * D)).astype(np.float32)
    scale = float(result.state.input_scale)
    params = jax.device_get(result.state.params)
    h_ref = np.asarray(result.arch.encode(params, result.state.arch_state, x * scale))
    np.testing.assert_allclose(sae.encode(x), h_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sae.decode(sae.encode(x)), np.asarray(result.arch.decode(params, h_ref)) / scale,
                               rtol=1e-4, atol=1e-4)
    assert (h_ref > 0).any() and (h_ref == 0).any()
    assert load_crosscoder(result.export_dir).cfg["crosscoder_d_model"] == D
    for bad, match in ((D + 1, "half of d_in"), (None, "not a crosscoder")):  # a damaged / a plain SAE's cfg.json
        folder = tmp_path / f"bad{bad}"
        shutil.copytree(result.export_dir, folder)
        cfg = json.loads((folder / "cfg.json").read_text())
        cfg.pop("crosscoder_d_model") if bad is None else cfg.update(crosscoder_d_model=bad)
        (folder / "cfg.json").write_text(json.dumps(cfg))
        with pytest.raises(ExportError, match=match):
            load_crosscoder(folder)


def two_stores(tmp_path, base_rows, tuned_rows):
    """Base and tuned activations as two .npy files: the `--data.npy base --data.target tuned` path."""
    np.save(tmp_path / "base.npy", base_rows)
    np.save(tmp_path / "tuned.npy", tuned_rows)
    return DataConfig(npy=str(tmp_path / "base.npy"), target=str(tmp_path / "tuned.npy"), batch_size=256,
                      n_stat_rows=2048)


def planted_stores(tmp_path, n_rows=4096):
    rows = planted_pairs(n_rows)[0].read(np.arange(n_rows))
    return two_stores(tmp_path, rows[:, :D], rows[:, D:])


@pytest.mark.slow  # 8 s: three short trainings
def test_stop_and_resume_equals_uninterrupted(tmp_path):
    full = dataclasses.replace(xc_config(tmp_path / "full", steps=20), data=planted_stores(tmp_path))
    ref = train(full)
    assert ref.arch.d_model == D and np.isfinite(ref.metrics["loss"])
    part = dataclasses.replace(full, run_dir=str(tmp_path / "part"), steps=13)  # stops between checkpoints
    train(part)
    resumed = train(dataclasses.replace(part, steps=full.steps))
    assert int(resumed.state.step) == full.steps
    assert_same_export(tmp_path / "full" / "export", tmp_path / "part" / "export")
    # the inference threshold (training state beyond the parameters) came back from the checkpoint
    assert float(resumed.state.arch_state["threshold"]) == float(ref.state.arch_state["threshold"]) > 0


def test_mismatched_stores_are_refused_before_training(tmp_path):
    rows = planted_pairs(1024)[0].read(np.arange(1024))
    cfg = xc_config(tmp_path / "w", steps=5)
    data = two_stores(tmp_path, rows[:, :D], rows[:, D - 2:])  # widths 16 and 18
    with pytest.raises(ConfigError, match="width 16 and its tuned rows 18"):
        train(dataclasses.replace(cfg, data=data))
    src = lambda layer: ArraySource(rows[:, :D], metadata={"layer": layer, "hook": "resid"})  # noqa: E731
    with pytest.raises(ConfigError, match="layer 3 but its tuned store is layer 5"):
        train(dataclasses.replace(cfg, run_dir=str(tmp_path / "l")), source=PairedSource(src(3), src(5)))
    assert not (tmp_path / "l" / "checkpoints").exists()


def test_classification_thresholds_and_bad_input():
    W = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0.6, 0, 0.8, 0], [0.05, 0, 1, 0]])
    lat = classify_crosscoder_latents(W, 2)
    assert lat.classes.tolist() == [BASE_ONLY, TUNED_ONLY, SHARED, TUNED_ONLY]
    np.testing.assert_allclose(lat.relative_norm, [0, 1, 0.8 / 1.4, 1 / 1.05])
    assert lat.cosine[2] == pytest.approx(1.0) and np.isnan(lat.cosine[0])  # same direction in both models
    with pytest.raises(ValueError, match="width 6"):
        classify_crosscoder_latents(W, 3)
    # a shared latent of a tuned model whose activations are twice as large: r = 2/3 raw, 1/2 per model
    W2 = np.array([[0.6, 0.0, 1.2, 0.0]])
    rows = np.array([[3.0, 4.0, 6.0, 8.0], [1.0, 0.0, 2.0, 0.0]])
    assert activation_norms(rows, 2) == pytest.approx((3.0, 6.0))
    assert classify_crosscoder_latents(W2, 2).relative_norm[0] == pytest.approx(2 / 3)
    assert classify_crosscoder_latents(W2, 2, model_norms=(3.0, 6.0)).relative_norm[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="model_norms"):
        classify_crosscoder_latents(W2, 2, model_norms=(0.0, 1.0))
    cfg = tiny_config("/tmp/unused", architecture="crosscoder")
    with pytest.raises(ConfigError, match=r"\[base \| tuned\]"):
        validate(dataclasses.replace(cfg, data=DataConfig(npy="base.npy")))
    with pytest.raises(ConfigError, match="data.target"):
        validate(dataclasses.replace(cfg, sae=SAEConfig(architecture="topk"),
                                     data=DataConfig(npy="a.npy", target="b.npy")))
