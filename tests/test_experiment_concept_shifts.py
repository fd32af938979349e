"""The concept-shifts experiment's smoke preset end to end (tiny random Llama): wiring, not science."""
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
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/concept_shifts/run.py"), "--preset", "smoke",
                           "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((tmp_path / "results.json").read_text())
    for name in ("README.md", "mcc.png", "probes.png", "steering.png"):
        assert (tmp_path / name).stat().st_size > 500, name
    assert set(r["summary"]) == {"ssae", "topk", "relu", "jumprelu", "pca"}
    for row in r["summary"].values():
        assert all(np.isfinite(row[k]) for k in ("mcc_single", "mcc_multi", "rdc_single", "fvu_test"))
        assert 0 <= row["mcc_single"] <= 1
    assert all(len(p) > 0 for p in r["scores"]["probes"].values())
    st = r["steering"]["per_concept"]
    assert st and all(np.isfinite(e[c]["effect"]["mean"]) for rc in st.values() for e in rc["alphas"]["1.0"].values()
                      for c in r["steering"]["scored_concepts"])
    assert "| ssae |" in (tmp_path / "README.md").read_text()
