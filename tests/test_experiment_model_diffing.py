"""The model-diffing experiment's smoke preset end to end (tiny random Llama): wiring, not science."""
import json

import numpy as np

from tests.experiment_smoke import run_smoke


def test_smoke_preset_writes_finite_results(tmp_path):
    r = run_smoke("model_diffing", tmp_path, timeout=900)["domains"]["Mathematics"]
    assert (tmp_path / r["plot"]).stat().st_size > 1000
    assert json.loads((tmp_path / "preregistered_protocol2.json").read_text())["settings"]["patch_at"] == "active"
    assert r["finetune"]["task_ce_drop"] > 0  # the planted change is learned even by the tiny model
    saes = r["validate"]["saes"]
    assert len(saes) == 15 and all(np.isfinite(s["fvu"]) for s in saes.values())
    assert [f["n_left"] for f in r["funnel"]] == sorted((f["n_left"] for f in r["funnel"]), reverse=True)
    c = r["causal"]
    assert all(np.isfinite(v["share"]) for v in r["delta_share"].values())
    # a latent silent on every domain text has no evidence (NaN); the others have a finite effect
    has = np.asarray(c["n_texts_with_evidence"]) > 0
    assert has.any() and np.isfinite(np.asarray(c["mean_drop"], float)[has]).all()
    assert c["candidates"] and set(c["d"]) == {
        "string_replacement", "paraphrase_substitution", "counterfactual_swap"}
    assert sum(x["n"] for x in r["crosscoder"]["classes"].values()) == 64
    assert r["llm_labels"] and isinstance(r["llm_labels"][0]["llm"], str)
