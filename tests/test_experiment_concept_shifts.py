"""The concept-shifts experiment's smoke preset end to end (tiny random Llama): wiring, not science."""
import numpy as np

from tests.experiment_smoke import run_smoke


def test_smoke_preset_writes_finite_results(tmp_path):
    r = run_smoke("concept_shifts", tmp_path)
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
