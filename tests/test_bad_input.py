"""Bad input gets a clear error naming the problem, and loses nothing."""
import dataclasses

import numpy as np
import pytest

from sae_jax.checkpoint import Checkpointer
from sae_jax.config import ConfigError, OptimConfig, validate
from sae_jax.data.source import ArraySource, npy_source
from sae_jax.data.loader import global_batch_rows
from sae_jax.trainer import TrainingError, stat_rows, train
from tests.helpers_train import tiny_config


def test_k_larger_than_dictionary():
    with pytest.raises(ConfigError, match="sae.k=100 must be in"):
        validate(tiny_config(k=100, d_sae=64))


def test_npy_of_wrong_rank(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((4, 5, 6), np.float32))
    with pytest.raises(ValueError, match="must be 2-D"):
        npy_source(str(tmp_path / "a.npy"))
    with pytest.raises(FileNotFoundError, match="no .npy activation file"):
        npy_source(str(tmp_path / "missing.npy"))


def _with_nan_rows(tmp_path, rows):
    x = np.random.default_rng(0).standard_normal((4096, 16)).astype(np.float32)
    x[rows] = np.nan
    path = tmp_path / "acts.npy"
    np.save(path, x)
    return str(path)


def test_nan_batch_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    # a NaN row first drawn at step 12 (after the step-10 checkpoint), outside the statistics sample
    bad = [r for r in global_batch_rows(3, 12, 256, 4096) if r not in stat_rows(3, 64, 4096)][0]
    cfg = dataclasses.replace(cfg, steps=40, data=dataclasses.replace(
        cfg.data, npy=_with_nan_rows(tmp_path, [bad]), n_stat_rows=64, seed=3))
    with pytest.raises(TrainingError, match=r"batch at step \d+ contains NaN/Inf"):
        train(cfg)
    ckpt = Checkpointer(str(tmp_path / "run" / "checkpoints"), cfg.checkpoint)
    step = ckpt.latest_step()
    ckpt.close()
    assert step is not None and step % cfg.checkpoint.every == 0  # a good, cadence checkpoint


def test_nan_in_statistics_sample_is_reported(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, npy=_with_nan_rows(tmp_path, [7, 9])))
    with pytest.raises(TrainingError, match="contain NaN/Inf"):
        train(cfg)


def test_diverging_loss_stops_without_saving_bad_state(tmp_path):
    cfg = dataclasses.replace(tiny_config(tmp_path / "run"), optim=OptimConfig(lr=1e38, warmup_steps=0))
    with pytest.raises(TrainingError, match="loss became"):
        train(cfg)
    ckpt = Checkpointer(str(tmp_path / "run" / "checkpoints"), cfg.checkpoint)
    assert ckpt.latest_step() is None
    ckpt.close()


def test_array_source_refuses_empty():
    with pytest.raises(ValueError, match="no rows"):
        ArraySource(np.zeros((0, 3)))


def test_resume_on_data_of_another_width_is_refused(tmp_path):
    path = tmp_path / "acts.npy"
    np.save(path, np.random.default_rng(0).standard_normal((2048, 16)).astype(np.float32))
    cfg = tiny_config(tmp_path / "run")
    cfg = dataclasses.replace(cfg, steps=10, data=dataclasses.replace(cfg.data, npy=str(path), n_stat_rows=256))
    train(cfg)
    np.save(path, np.random.default_rng(0).standard_normal((2048, 8)).astype(np.float32))
    with pytest.raises(ConfigError, match="trained on d_in=16 activations but the data source now has d_in=8"):
        train(dataclasses.replace(cfg, steps=20))


def test_training_never_reads_the_held_out_tail(tmp_path):
    """Rows in the held-out tail are NaN: training succeeds only if it never touches them."""
    x = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
    x[1800:] = np.nan  # exactly the last 10%
    np.save(tmp_path / "acts.npy", x)
    cfg = tiny_config(tmp_path / "run")
    cfg = dataclasses.replace(cfg, steps=20, data=dataclasses.replace(
        cfg.data, npy=str(tmp_path / "acts.npy"), n_stat_rows=4096, holdout_fraction=0.1))
    assert train(cfg).metrics["loss"] > 0  # 20 steps x 256 rows cover the 1800 rows several times


def test_topk_sizes_are_checked_per_dictionary_shard():
    from sae_jax.config import MeshConfig

    cfg = dataclasses.replace(tiny_config(d_sae=16, k=8), mesh=MeshConfig(dict=4))
    with pytest.raises(ConfigError, match="sae.k=8 exceeds the 4 latents per dictionary shard"):
        validate(dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, auxk_coef=0.0)), d_in=4, n_devices=8)
    with pytest.raises(ConfigError, match="k_aux=8 exceeds the 4 latents per dictionary shard"):
        validate(dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, k=2)), d_in=16, n_devices=8)


def test_counter_and_cadence_limits():
    with pytest.raises(ConfigError, match="dead_tokens"):
        validate(tiny_config(dead_tokens=3_000_000_000))
    cfg = tiny_config()
    with pytest.raises(ConfigError, match="must be positive"):
        validate(dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, every=0)))
