"""Dead-latent resampling inside `train`: every latent dead at a resampling step is resampled."""
import dataclasses
import json

from sae_jax.config import OptimConfig
from sae_jax.trainer import train
from tests.helpers_train import tiny_config


def _run(tmp_path, name, every):
    # a strong L1 penalty and a high learning rate kill ReLU latents within the short dead window
    cfg = tiny_config(tmp_path / name, architecture="relu", sparsity_coef=3.0, dead_tokens=512, d_sae=128,
                      resample_every=every)
    cfg = dataclasses.replace(cfg, steps=35, optim=OptimConfig(lr=3e-2, warmup_steps=5),
                              log=dataclasses.replace(cfg.log, every=1))
    train(cfg)
    return {l["step"]: l for l in map(json.loads, open(tmp_path / name / "metrics.jsonl"))}


def test_resampling_revives_every_dead_relu_latent_and_is_logged(tmp_path):
    off, on = _run(tmp_path, "off", 0), _run(tmp_path, "on", 30)
    assert off[30]["dead_frac"] == on[30]["dead_frac"] > 0.05  # identical runs up to the resampling
    # the count logged at step 30 is exactly the number of latents dead after that step
    assert on[30]["resampled"] == round(on[30]["dead_frac"] * 128)
    assert all("resampled" not in on[s] for s in on if s != 30)
    assert on[31]["dead_frac"] < off[31]["dead_frac"]
