"""The neuron-vs-SAE probing experiment's smoke preset end to end (tiny random Llama): wiring, not science."""
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
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/neuron_vs_sae_probing/run.py"), "--preset", "smoke",
                           "--out", str(tmp_path), "--alpha", "0.01"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())["smoke"]
    for name in res["plots"]:
        assert (tmp_path / name).stat().st_size > 1000
    assert res["n_rows"] == 30 * 2 * 8
    for fam in ("neurons", "sae_latents"):
        r = res[fam]
        pr = r["probe"]
        assert all(np.isfinite([pr["accuracy"], pr["control_accuracy"], pr["selectivity"], pr["heldout_word_accuracy"]]))
        assert len(pr["control_accuracies"]) == 3
        assert set(r["significance"]) == {"1e-05", "0.01", "0.05"}
        for c in r["significance"].values():
            assert len(c["indices"]["bonferroni"]) == c["n_bonferroni"] <= c["n_uncorrected"]
            assert all(0 <= i < r["n_units"] for i in c["indices"]["uncorrected"])
        assert np.isfinite(r["sparse_heldout_templates"]).all()
