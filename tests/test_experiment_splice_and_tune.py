"""The splice-and-tune experiment's smoke preset end to end (tiny random model): wiring, not science."""
import numpy as np
import pytest

from tests.experiment_smoke import run_smoke


@pytest.mark.slow
def test_smoke_preset_writes_finite_results(tmp_path):
    r = run_smoke("splice_and_tune", tmp_path, timeout=900)
    assert (tmp_path / "layer_sweep.png").stat().st_size > 1000
    assert len(r["sweep"]["insertion"]) == 2 and len(r["sweep"]["own_layer"]) == 2
    assert set(r["tune"]["methods"]) == {"cd", "cd_control", "mlp", "full"}
    values = [e[k] for e in r["tune"]["methods"].values() for k in ("task_ce_after", "general_ce_after")]
    assert np.isfinite(values).all()
    assert r["read"]["primary"] == "shift_minus_control"
    for rk in r["read"]["rankings"].values():
        e = rk["enrichment"]
        assert e["ci_low"] <= e["difference"] <= e["ci_high"]
        assert len(rk["top"]) == e["n_chosen"] == 8
