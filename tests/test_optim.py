"""Learning-rate rule of thumb, warm-up/decay schedules, sparsity-coefficient warm-up."""
import dataclasses
import math

import numpy as np
import pytest

from sae_jax.config import OptimConfig, SAEConfig, TrainConfig
from sae_jax.optim import lr_schedule, sparsity_schedule


def test_default_lr_rule_of_thumb():
    # TopK: 4x the 2e-4 rule (docs/recipe.md); the others keep 2e-4; both scale as 1/sqrt(F)
    for f in (2048, 2**14, 2**16, 24576):
        assert TrainConfig(sae=SAEConfig(d_sae=f)).lr == pytest.approx(8e-4 / math.sqrt(f / 2**14))
        for arch in ("batchtopk", "relu", "gated"):
            assert TrainConfig(sae=SAEConfig(architecture=arch, d_sae=f)).lr == pytest.approx(2e-4 / math.sqrt(f / 2**14))
    assert TrainConfig(sae=SAEConfig(d_sae=2048)).lr == pytest.approx(2.2627417e-3)  # the demo's: 4 x 5.657e-4
    assert TrainConfig(optim=OptimConfig(lr=1e-3)).lr == 1e-3


@pytest.mark.parametrize("decay", ["none", "linear", "cosine"])
def test_schedules_match_closed_form(decay):
    cfg = TrainConfig(steps=110, sae=SAEConfig(d_sae=2**14),
                      optim=OptimConfig(lr=1e-3, warmup_steps=10, decay=decay, final_lr_fraction=0.1))
    sched = lr_schedule(cfg)
    got = np.array([float(sched(t)) for t in range(110)])
    ramp = 1e-3 * np.minimum((np.arange(10) + 1) / 10, 1)
    u = np.arange(100) / 99  # progress through the decay: the last update uses the end value
    after = {"none": np.full(100, 1e-3),
             "linear": 1e-3 + (1e-4 - 1e-3) * u,
             "cosine": 1e-3 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * u)))}[decay]
    np.testing.assert_allclose(got, np.concatenate([ramp, after]), rtol=1e-5)


def test_sparsity_coefficient_warmup():
    cfg = TrainConfig(sae=SAEConfig(sparsity_coef=2.0, sparsity_warmup_steps=4))
    assert [float(sparsity_schedule(cfg)(t)) for t in range(6)] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    flat = dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, sparsity_warmup_steps=0))
    assert float(sparsity_schedule(flat)(0)) == 2.0
