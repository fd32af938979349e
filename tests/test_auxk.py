"""AuxK revives dead latents: the same run with and without it, compare the dead fraction."""
from sae_jax.config import DataConfig, OptimConfig, SAEConfig, TrainConfig
from sae_jax.data.synthetic import synthetic_source
from tests.helpers_train import run_steps


def test_auxk_lowers_dead_fraction():
    # A learning rate ~10x too high kills many latents early; with far more true features
    # (1024) than latents (512) the residual keeps structure that dead latents can learn.
    # (In runs where "dead" latents are merely redundant, e.g. more latents than features,
    # AuxK pushes their pre-activations down and does not revive them: we measured that too.)
    src = synthetic_source(16384, 32, 1024, 4, noise=0.01)
    dead = {}
    for coef in (0.0, 1 / 32):
        cfg = TrainConfig(steps=300, data=DataConfig(batch_size=512),
                          sae=SAEConfig(d_sae=512, k=4, auxk_coef=coef, dead_tokens=4096),
                          optim=OptimConfig(lr=3e-2, warmup_steps=10))
        _, metrics, _ = run_steps(cfg, src, cfg.steps)
        dead[coef] = float(metrics["dead_frac"])
    assert dead[0.0] > 0.3, dead  # the run really creates dead latents
    assert dead[1 / 32] < 0.5 * dead[0.0], dead
