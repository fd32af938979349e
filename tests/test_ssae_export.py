"""SSAE (and whitening) export from the core trainer: folded normalisations/whitening reproduce
the trained model, whitening behind a LayerNorm is stored beside and applied by the loader,
exact resume, and the CLI preset end to end."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from sae_jax.cli import main
from sae_jax.config import DataConfig
from sae_jax.data.open import open_source
from sae_jax.data.shifts import multi_concept_shifts
from sae_jax.export import load_sae
from sae_jax.normalization import layer_norm_in
from sae_jax.train_step import model_input
from sae_jax.trainer import train
from sae_jax.whitening import Whitening, fit_zca
from tests.helpers_train import ssae_config, tiny_config

SRC = multi_concept_shifts(2048, 8, 4, seed=0, concept_cos=0.4)
X = SRC.read(np.arange(64))


def _train(tmp_path, steps=30, **ssae):
    cfg = ssae_config(tmp_path / "run", target=0.3, d_sae=6, batch_size=64, lr=3e-3, steps=steps,
                      data={"whiten": True, "n_stat_rows": 1024}, **ssae)
    return cfg, train(cfg, source=SRC)


def _reference(result, x, layernorm=False):
    """(codes, reconstruction in raw space) of the trained model, computed from its state."""
    st = jax.device_get(result.state)
    xm = model_input(st, jnp.asarray(x), layernorm)
    h = np.asarray(result.arch.encode(st.params, st.arch_state, xm))
    w = Whitening.from_arrays(st.whitening)
    undo = lambda y: (np.asarray(y, np.float64) / float(st.input_scale)) @ w.inverse + w.mean
    return h, xm, undo


def test_whitening_is_fitted_on_the_statistics_sample_and_kept_in_the_state(tmp_path):
    _, result = _train(tmp_path, steps=5, input_norm="none")
    from sae_jax.trainer import stat_rows
    ref = fit_zca(SRC.read(stat_rows(0, 1024, SRC.n_rows)), eps=1e-5)
    w = Whitening.from_arrays(jax.device_get(result.state.whitening))
    np.testing.assert_allclose(w.matrix, ref.matrix, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w.inverse @ w.matrix, np.eye(8), atol=1e-4)
    assert w.eps == pytest.approx(1e-5)


def test_folded_export_loads_in_core_loader(tmp_path):
    _, result = _train(tmp_path, input_norm="batch", code_norm="batchnorm", relu=True)
    out = result.export_dir
    assert not (out / "whitening.safetensors").exists()  # everything folded
    assert json.loads((out / "cfg.json").read_text())["metadata"]["whitening"] == "folded"
    sae = load_sae(out)  # the core SAELens-format loader, 'standard' architecture
    h, xm, undo = _reference(result, X)
    np.testing.assert_allclose(sae.encode(X), h, rtol=1e-3, atol=1e-4)
    st = jax.device_get(result.state)
    np.testing.assert_allclose(sae.decode(sae.encode(X)), undo(result.arch.reconstruct(st.params, st.arch_state, xm)),
                               rtol=1e-3, atol=1e-3)


def test_layernorm_export_stores_whitening_beside_and_the_loader_applies_it(tmp_path):
    _, result = _train(tmp_path)  # per-row LayerNorm, linear code
    out = result.export_dir
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "linear" and cfg["normalize_activations"] == "layer_norm"
    assert cfg["metadata"]["whitening"].startswith("whitening.safetensors")
    w = Whitening.from_arrays(load_file(str(out / "whitening.safetensors")))
    p = load_file(str(out / "sae_weights.safetensors"))
    h, xm, undo = _reference(result, X)
    # Apply the stored pieces by hand: whiten, SAELens layer_norm, linear encoder.
    xn, _, _ = layer_norm_in(w.apply(X).astype(np.float64))
    np.testing.assert_allclose((xn - p["b_dec"]) @ p["W_enc"] + p["b_enc"], h, rtol=1e-3, atol=1e-4)
    # load_sae applies the same pieces, and undoes them after decoding.
    sae = load_sae(out)
    np.testing.assert_allclose(sae.encode(X), h, rtol=1e-3, atol=1e-4)
    st = jax.device_get(result.state)
    np.testing.assert_allclose(sae.decode(sae.encode(X)), undo(result.arch.reconstruct(st.params, st.arch_state, xm)),
                               rtol=1e-3, atol=1e-3)


def test_signed_code_split_export_loads_as_standard(tmp_path):
    _, result = _train(tmp_path, input_norm="none", export_as="split")  # signed linear code
    sae = load_sae(result.export_dir)
    assert sae.architecture == "standard" and sae.d_sae == 12
    h, xm, undo = _reference(result, X)
    h2 = sae.encode(X)
    np.testing.assert_allclose(h2[:, :6] - h2[:, 6:], h, rtol=1e-3, atol=1e-4)  # positive − negative part
    st = jax.device_get(result.state)
    np.testing.assert_allclose(sae.decode(h2), undo(result.arch.reconstruct(st.params, st.arch_state, xm)),
                               rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("normalize", ["expected_norm", "layernorm"])
def test_whitening_for_topk_round_trips_through_the_export(tmp_path, normalize):
    """Folded behind the expected-norm scale; stored beside (and applied by load_sae) behind a
    per-token LayerNorm. Codes and raw-space reconstructions match the trained model."""
    base = tiny_config(tmp_path / "run")
    cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, whiten=True, whiten_eps=1e-3,
                                                             normalize=normalize))
    result = train(cfg)
    x = open_source(cfg.data).read(np.arange(50))
    st = jax.device_get(result.state)
    ln = normalize == "layernorm"
    w = Whitening.from_arrays(st.whitening)
    xm = model_input(st, jnp.asarray(x), ln)
    h = np.asarray(result.arch.encode(st.params, st.arch_state, xm))
    x_hat_m = np.asarray(result.arch.decode(st.params, jnp.asarray(h)), np.float64)
    if ln:  # undo the per-token LayerNorm with the whitened row's statistics
        _, mu, std = layer_norm_in(w.apply(x).astype(np.float64))
        x_hat_m = x_hat_m * std + mu
    x_hat = (x_hat_m / float(st.input_scale)) @ w.inverse + w.mean
    sae = load_sae(result.export_dir)
    assert (result.export_dir / "whitening.safetensors").exists() == ln
    codes = sae.encode(x)
    np.testing.assert_allclose(codes, h, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(sae.decode(codes), x_hat, rtol=1e-3, atol=1e-3)


def test_ssae_stop_and_resume_equals_uninterrupted(tmp_path, monkeypatch):
    """Checkpoints hold the multiplier, both optimizers' states and the whitening: a run resumed
    from a cadence checkpoint ends bit-identical to an uninterrupted one, without refitting."""
    import shutil

    import sae_jax.trainer

    full = ssae_config(tmp_path / "full", target=0.3, d_sae=6, batch_size=64, lr=3e-3, steps=24,
                       data={"whiten": True, "n_stat_rows": 1024})
    full = dataclasses.replace(full, checkpoint=dataclasses.replace(full.checkpoint, every=10))
    train(full, source=SRC)
    part = dataclasses.replace(full, run_dir=str(tmp_path / "part"), steps=13)
    first = train(part, source=SRC)
    assert float(first.state.opt_state.multipliers.ineq[0]) > 0  # the dual state matters for the rest
    shutil.rmtree(tmp_path / "part" / "checkpoints" / "13")  # as if stopped between checkpoints 10 and 20
    shutil.rmtree(tmp_path / "part" / "export")

    def no_refit(*args, **kwargs):
        raise AssertionError("a resumed run must take its whitening from the checkpoint")

    monkeypatch.setattr(sae_jax.trainer, "fit_zca", no_refit)
    resumed = train(dataclasses.replace(part, steps=full.steps), source=SRC)
    assert int(resumed.state.step) == full.steps
    a, b = load_sae(tmp_path / "full" / "export"), load_sae(tmp_path / "part" / "export")
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)
    for name in ("whitening_matrix", "whitening_mean"):
        np.testing.assert_array_equal(load_file(str(tmp_path / "full" / "export" / "whitening.safetensors"))[name],
                                      load_file(str(tmp_path / "part" / "export" / "whitening.safetensors"))[name])


def test_in_memory_run_reexports_and_eval_asks_for_its_data(tmp_path, capsys):
    """A run trained on rows passed to train(): its config's data section is not theirs."""
    from sae_jax.reexport import export_run

    _, result = _train(tmp_path, steps=5)
    again = export_run(str(result.run_dir), str(tmp_path / "again"))  # width from the run, not cfg.data
    for name, value in load_sae(result.export_dir).params.items():
        np.testing.assert_array_equal(load_sae(again).params[name], value)
    with pytest.raises(SystemExit) as stopped:  # the CLI's one-line error
        main(["eval", "--sae", str(result.export_dir), "--evals", "core"])
    assert stopped.value.code == 1 and "--data.npy or --data.store" in capsys.readouterr().err
    np.save(tmp_path / "rows.npy", SRC.read(np.arange(512)))
    main(["eval", "--sae", str(result.export_dir), "--evals", "core", "--data.npy", str(tmp_path / "rows.npy")])
    assert (result.export_dir.parent / "eval" / "eval.json").exists()


def test_loader_applies_whitening_only_where_the_cfg_says_so(tmp_path):
    _, result = _train(tmp_path, steps=5)  # LayerNorm: whitening stored beside
    out = result.export_dir
    (out / "whitening.safetensors").rename(tmp_path / "w.safetensors")
    with pytest.raises(FileNotFoundError, match="re-export"):
        load_sae(out)
    folded = _train(tmp_path / "b", steps=5, input_norm="none")[1].export_dir
    (tmp_path / "w.safetensors").rename(folded / "whitening.safetensors")  # a stray file is not applied
    assert load_sae(folded).whitening is None


def test_eval_draws_fresh_shifts_with_the_training_directions():
    from sae_jax.evals.run import fresh_synthetic_source

    d = DataConfig(synthetic="shifts", synthetic_d_in=16, synthetic_n_features=4, synthetic_k=1,
                   synthetic_n_rows=2048, seed=3)
    train_src, fresh = open_source(d), fresh_synthetic_source(d, 512)
    np.testing.assert_array_equal(fresh.metadata["dictionary"], train_src.metadata["directions"])
    x = fresh.read(np.arange(512))
    assert not np.allclose(x, train_src.read(np.arange(512)))  # new codes: truly held out
    residual = x - fresh.metadata["codes"] @ train_src.metadata["directions"]
    assert np.abs(residual).max() < 0.1  # the rows are built from those directions (+ 0.01 noise)


def test_cli_preset_and_alias_then_eval(tmp_path, capsys):
    small = ["--steps", "300", "--data.synthetic-d-in", "16", "--data.synthetic-n-features", "4",
             "--data.synthetic-n-rows", "4096", "--data.synthetic-k", "1", "--sae.d-sae", "4", "--sae.ssae.warmup", "20",
             "--sae.ssae.schedule", "100", "--sae.ssae.target", "1.0", "--optim.lr", "0.01", "--log.no-progress"]
    main(["train", "ssae", "--run-dir", str(tmp_path / "a"), *small])
    out = capsys.readouterr().out
    assert "constraint: Σ|h|/(B·F)" in out and "exported SAE" in out
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["sae"]["architecture"] == "ssae" and cfg["data"]["synthetic"] == "shifts"
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 300 and "multiplier" in rows[-1]
    main(["ssae", "--run-dir", str(tmp_path / "b"), *small])  # the alias runs the same preset
    for name, value in load_sae(tmp_path / "a" / "export").params.items():
        np.testing.assert_array_equal(load_sae(tmp_path / "b" / "export").params[name], value)
    main(["eval", "--sae", str(tmp_path / "a" / "export"), "--evals", "core", "identifiability"])
    ev = json.loads((tmp_path / "a" / "eval" / "eval.json").read_text())
    truth = ev["identifiability"]["ground_truth"]  # scored against the true directions
    assert truth["n_true_features"] == 4 and truth["mean_matched_abs_cos"] > 0.9


def test_paired_npy_sources(tmp_path):
    """base/chat (or s1/s2) activations in two aligned .npy files: the SSAE trains on second − first."""
    shifts = multi_concept_shifts(512, 8, 4, seed=3)
    base = np.random.default_rng(0).normal(size=(512, 8)).astype(np.float32)
    np.save(tmp_path / "base.npy", base)
    np.save(tmp_path / "chat.npy", base + shifts.read(np.arange(512)))
    data = {"npy": str(tmp_path / "base.npy"), "second": str(tmp_path / "chat.npy"), "difference": "paired",
            "batch_size": 32}
    cfg = ssae_config(tmp_path / "run", target=0.5, d_sae=4, steps=4, data=data)
    np.testing.assert_allclose(open_source(cfg.data).read(np.arange(10)), shifts.read(np.arange(10)), atol=1e-5)
    assert int(train(cfg).state.step) == 4
    seq = DataConfig(npy=str(tmp_path / "base.npy"), difference="sequential")
    np.testing.assert_allclose(open_source(seq).read(np.array([0, 5])), np.diff(base, axis=0)[[0, 5]], atol=1e-6)


def test_paired_stores_through_the_cli_then_reexport(tmp_path):
    """Two aligned activation stores (z(s1), z(s2), or base and chat): `sae-jax train ssae` on
    second − first, and `sae-jax export` of its checkpoint gives the same SAE."""
    from sae_jax.data import store as st

    shifts = multi_concept_shifts(1024, 8, 4, seed=5)
    first = np.random.default_rng(1).normal(size=(1024, 8)).astype(np.float32)
    for name, x in (("s1", first), ("s2", first + shifts.read(np.arange(1024)))):
        arr = st.create_array(str(tmp_path / name), x.shape[0], x.shape[1], "float32", shard_rows=256, chunk_rows=64)
        arr.write(x).result()
        st.commit(str(tmp_path / name), {"n_rows": x.shape[0], "d_model": x.shape[1], "dtype": "float32"})
    run = tmp_path / "run"
    main(["train", "ssae", "--run-dir", str(run), "--data.store", str(tmp_path / "s1"), "--data.second",
          str(tmp_path / "s2"), "--data.difference", "paired", "--data.batch-size", "64", "--sae.d-sae", "4",
          "--steps", "20", "--sae.ssae.warmup", "5", "--sae.ssae.schedule", "5", "--sae.ssae.target", "0.5",
          "--log.no-progress"])
    cfg = json.loads((run / "config.json").read_text())
    src = open_source(DataConfig(**cfg["data"]))
    np.testing.assert_allclose(src.read(np.array([0, 7, 1000])), shifts.read(np.array([0, 7, 1000])), atol=1e-5)
    main(["export", "--run-dir", str(run), "--out", str(tmp_path / "again")])
    for name, value in load_sae(run / "export").params.items():
        np.testing.assert_array_equal(load_sae(tmp_path / "again").params[name], value)
