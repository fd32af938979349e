"""--eval.every: held-out FVU/L0/dead (and spliced CE/KL) logged while training equal what the final
export scores on the same rows and texts through the independent eval path (export on disk, eval code)."""
import json

import numpy as np
import pytest

from sae_jax.config import CheckpointConfig, DataConfig, HeldoutEvalConfig, LogConfig, SAEConfig, TrainConfig
from sae_jax.data.open import held_out_start_row, open_source
from sae_jax.errors import ConfigError
from sae_jax.evals.core import evaluate_core
from sae_jax.export import load_sae
from sae_jax.trainer import train


def _lines(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _cfg(run, data, **ev):
    return TrainConfig(run_dir=str(run), steps=12, data=data, sae=SAEConfig(architecture="topk", d_sae=32, k=4),
                       checkpoint=CheckpointConfig(every=6), log=LogConfig(every=3, progress=False),
                       eval=HeldoutEvalConfig(**ev))


def test_heldout_metrics_match_the_export_scored_by_eval(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=(2000, 16)).astype(np.float32) * np.linspace(0.2, 2, 16))
    data = DataConfig(npy=str(tmp_path / "x.npy"), batch_size=64)
    train(_cfg(tmp_path / "run", data, every=5, n_rows=150))
    ev = [x for x in _lines(tmp_path / "run") if "heldout/fvu" in x]
    assert [x["step"] for x in ev] == [5, 10, 12]  # every 5 steps and the last one
    assert ev[0]["heldout/fvu"] > ev[-1]["heldout/fvu"]  # it learns
    lo = held_out_start_row(2000, 0.1)
    m = evaluate_core(load_sae(tmp_path / "run" / "export"), open_source(data), np.arange(lo, lo + 150))
    assert ev[-1]["heldout/n_rows"] == 150
    assert ev[-1]["heldout/fvu"] == pytest.approx(m.fvu, rel=1e-5)
    assert ev[-1]["heldout/l0"] == pytest.approx(m.l0) and ev[-1]["heldout/dead_frac"] == pytest.approx(m.dead_fraction)


def test_bad_eval_settings_are_refused_before_training(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((300, 8), np.float32))
    data = DataConfig(npy=str(tmp_path / "x.npy"), batch_size=32)
    with pytest.raises(ConfigError, match="holdout_fraction is 0"):
        train(_cfg(tmp_path / "a", DataConfig(npy=str(tmp_path / "x.npy"), batch_size=32, holdout_fraction=0.0), every=5))
    with pytest.raises(ConfigError, match="eval.every=-1 is out of range"):
        train(_cfg(tmp_path / "b", data, every=-1))
    with pytest.raises(ConfigError, match="not a store written by `sae-jax extract`"):
        train(_cfg(tmp_path / "c", data, every=5, splice=True))
    assert not any((tmp_path / r).exists() for r in "abc")  # nothing written


def test_spliced_ce_during_training_matches_eval_of_the_export(tmp_path):
    pytest.importorskip("torch")
    from sae_jax.evals.provenance import heldout_docs, store_provenance
    from sae_jax.evals.run import token_batches
    from sae_jax.evals.splice import evaluate_splice
    from sae_jax.lm.extract import ExtractConfig, run_extract
    from sae_jax.lm.models import load_model, tiny_model_folder

    model = tiny_model_folder(tmp_path / "m")
    (tmp_path / "t.txt").write_text("\n".join(f"the cat number {i} sat on mat {i % 7} near door {i % 3}"
                                              for i in range(120)))
    run_extract(ExtractConfig(model=model, out=str(tmp_path / "store"), text=str(tmp_path / "t.txt"), layers=(0,),
                              context_length=16, progress=False))
    data = DataConfig(store=str(tmp_path / "store" / "layer0_resid"), batch_size=64)
    train(_cfg(tmp_path / "run", data, every=6, n_rows=400, splice=True, n_texts=4))
    ev = [x for x in _lines(tmp_path / "run") if "heldout/ce_loss_recovered" in x]
    assert [x["step"] for x in ev] == [6, 12]
    src = open_source(data)
    rows = np.arange(held_out_start_row(src.n_rows, 0.1), min(src.n_rows, held_out_start_row(src.n_rows, 0.1) + 400))
    p = store_provenance(src)
    docs = heldout_docs(p.doc_ids, rows)[:4]
    assert len(docs) == 4
    lm, tok = load_model(model)
    m = evaluate_splice(lm, load_sae(tmp_path / "run" / "export"), token_batches(tok, [p.texts[i] for i in docs], 16),
                        0, "resid", tok.all_special_ids)
    assert ev[-1]["heldout/ce_loss_recovered"] == pytest.approx(m.ce_loss_recovered_zero, rel=1e-4, abs=1e-5)
    assert ev[-1]["heldout/kl_spliced"] == pytest.approx(m.kl_spliced, rel=1e-4, abs=1e-6)
