"""The splice-and-tune experiment's smoke preset end to end (tiny random model): wiring, not science."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_preset_writes_finite_results(tmp_path):
    pytest.importorskip("torch")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/splice_and_tune/run.py"), "--preset", "smoke",
                           "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "layer_sweep.png").stat().st_size > 1000
    assert len(r["sweep"]["insertion"]) == 2 and len(r["sweep"]["own_layer"]) == 2
    assert set(r["tune"]["methods"]) == {"cd", "mlp", "full"}
    values = [e[k] for e in r["tune"]["methods"].values() for k in ("task_ce_after", "general_ce_after")]
    assert np.isfinite(values).all()
    e = r["read"]["enrichment_by_shift"]
    assert e["ci_low"] <= e["difference"] <= e["ci_high"]
