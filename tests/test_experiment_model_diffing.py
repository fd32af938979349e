"""The model-diffing experiment's smoke preset end to end (tiny random Llama): wiring, not science."""
import json

import numpy as np

from tests.experiment_smoke import run_smoke


def test_smoke_preset_writes_finite_results(tmp_path):
    r = run_smoke("model_diffing", tmp_path, timeout=900)["domains"]["Mathematics"]
    assert (tmp_path / r["plot"]).stat().st_size > 1000
    reg = json.loads((tmp_path / "preregistered_protocol4.json").read_text())["settings"]
    assert reg["patch_at"] == "active" and reg["score"] == "kl_to_reference" and reg["ft_general_kl"] > 0
    assert reg["prefix_token"] == "<eos>" and reg == r["prereg"]
    # the prefix token starts every text of the base and the tuned model, so stores skip it
    import transformers

    for folder in ("base_model", "tuned"):
        tok = transformers.AutoTokenizer.from_pretrained(tmp_path / folder)
        assert tok("some text")["input_ids"][0] == tok.convert_tokens_to_ids("<eos>")
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
