"""The neuron-vs-SAE probing experiment's smoke preset end to end (tiny random Llama): wiring, not science."""
import numpy as np

from tests.experiment_smoke import run_smoke


def test_smoke_preset_writes_finite_results(tmp_path):
    res = run_smoke("neuron_vs_sae_probing", tmp_path, "--alpha", "0.01")["smoke"]
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
