"""The dictionary-scaling experiment's smoke preset end to end (tiny random Llama): wiring, not science."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_preset_writes_finite_results(tmp_path):
    pytest.importorskip("torch")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)  # a plain host: one CPU device, the script forces 2 for the sharded run itself
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/dictionary_scaling/run.py"), "--preset", "smoke",
                           "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())["smoke"]
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
