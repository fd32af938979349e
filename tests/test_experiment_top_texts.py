"""The top-activating-texts experiment's smoke preset end to end (tiny random Llama): wiring, not science."""
import numpy as np

from tests.experiment_smoke import run_smoke


def test_smoke_preset_writes_finite_results(tmp_path):
    res = run_smoke("top_activating_texts", tmp_path)["smoke"]
    for name in (res["pca_plot"], res["curves_plot"]):
        assert (tmp_path / name).stat().st_size > 1000
    for name in ("pooled", "token"):
        r = res[name]
        assert r["curve"] and all(np.isfinite([c["val_loss"], c["fvu"], c["l0"], c["near_zero"]]).all() for c in r["curve"])
        assert all(c["exact_zero"] <= c["near_zero"] <= 1 for c in r["curve"])
        assert r["curve"][r["best_segment"]]["val_loss"] == min(c["val_loss"] for c in r["curve"][: r["best_segment"] + 1])
        b = r["browser"]
        assert (tmp_path / b["page"]).exists()
        shown = set(b["top5"])
        assert shown and not shown & {str(j) for j in b["dead_latents"]}  # dead latents never interpreted
        assert all(1 <= len(v) <= 5 for v in b["top5"].values())
