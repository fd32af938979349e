"""The dictionary-scaling experiment's smoke preset end to end (tiny random Llama): wiring, not science."""
import numpy as np
import pytest

from tests.experiment_smoke import run_smoke


@pytest.mark.slow  # ~40 s: the default suite is near its 10-minute budget
def test_smoke_preset_writes_finite_results(tmp_path):
    # a plain host: one CPU device; the script forces 2 for the sharded run itself
    res = run_smoke("dictionary_scaling", tmp_path, plain_host=True)["smoke"]
    runs = res["runs"]
    assert {r["group"] for r in runs.values()} == {"fixed", "matched", "noauxk", "mesh"}
    for r in runs.values():
        assert np.isfinite([r["fvu"], r["l0"], r["tokens_per_s"], r["ce_loss_recovered"]]).all()
        assert r["l0"] == pytest.approx(res["params"]["k"])  # TopK: exactly k active per token
        assert 0 <= r["dead_fraction_train"] <= 1 and r["peak_rss_bytes"] > 0
    # compute-matched runs see tokens * F_min / F tokens (rounded down to whole batches)
    F0, T = res["params"]["sizes"][0], res["params"]["tokens"]
    for r in (r for r in runs.values() if r["group"] == "matched"):
        assert r["tokens"] == (T * F0 // r["F"]) // res["params"]["batch"] * res["params"]["batch"]
    # the dictionary-sharded run is the one-device run of the same size and seed, split over 2 devices
    mesh = next(r for r in runs.values() if r["group"] == "mesh" and r["dict"] > 1)
    one = runs[f"fixed_F{mesh['F']}"]
    assert mesh["n_devices"] == 2 and one["n_devices"] == 1 and mesh["fvu"] == pytest.approx(one["fvu"], rel=1e-3, abs=1e-4)
    plans = res["plans"]
    assert plans[f"{mesh['F']}_1x2"]["bytes_per_device"] < plans[f"{mesh['F']}_1x1"]["bytes_per_device"]
    fit = res["fits"]["fixed_fvu"]["power_law"]
    assert fit["n"] == len(res["params"]["sizes"]) and np.isfinite(fit["alpha"])
    for name in res["plots"]:
        assert (tmp_path / name).stat().st_size > 1000
