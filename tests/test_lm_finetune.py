"""Planted-domain fine-tuning (sae_jax.lm.finetune) on a tiny random Llama: the change is learned,
the folder loads back with the CE its manifest reports, finished folders are reused and
half-written or mismatched ones are refused."""
import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sae_jax.lm import finetune as FT  # noqa: E402
from sae_jax.lm.models import load_model, tiny_model_folder  # noqa: E402

# The planted slice repeats one pattern (learnable in a few steps); the other labels are varied.
DOMAIN = [f"the sum of {i} and {i + 1} is {2 * i + 1}; the sum of {i} and {i + 1} is {2 * i + 1}." for i in range(30)]
OTHER = [f"river {w} flows north past the old {v} mill near town {i}." for i, (w, v) in
         enumerate(zip("abcdefghijklmnopqrst", "uvwxyzabcdefghijklmn"))]
TEXTS = DOMAIN + OTHER
LABELS = ["Maths"] * len(DOMAIN) + ["Rivers"] * len(OTHER)


def _cfg(base, out, **kw):
    return FT.FinetuneConfig(model=base, out=str(out), domains=("Maths",), text="unused", steps=8, batch_size=4,
                             context_length=48, lr=3e-3, n_task_eval=6, n_general_eval=6, eval_batch_size=4,
                             progress=False, **kw)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    base = tiny_model_folder(root / "base", n_layers=2)
    cfg = _cfg(base, root / "tuned")
    return cfg, FT.run_finetune(cfg, TEXTS, LABELS)


def _reference_ce(model, tok, texts, context_length):
    """Mean next-token CE, one unpadded text at a time, targets that are special tokens skipped."""
    special = set(tok.all_special_ids)
    total, n = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = tok(t, truncation=True, max_length=context_length)["input_ids"]
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
            for i in range(1, len(ids)):
                if ids[i] not in special:
                    total -= float(lp[i - 1, ids[i]])
                    n += 1
    return total / n


def test_task_ce_drops_and_folder_loads_back(tuned):
    cfg, m = tuned
    assert m["after"]["task_ce"] < m["before"]["task_ce"] - 0.1  # the planted pattern is learned
    assert m["task_ce_drop"] == pytest.approx(m["before"]["task_ce"] - m["after"]["task_ce"])
    assert m["base_model"]["revision"] and len(m["train_loss"]) == cfg.steps
    assert not (FT.Path(cfg.out).with_name("tuned.tmp")).exists()
    held_out = m["task_eval_texts"]
    assert len(held_out) == cfg.n_task_eval and set(held_out) <= set(DOMAIN)
    model, tok = load_model(cfg.out)  # what `sae-jax extract --chat-model` loads
    assert tok.get_vocab() == load_model(cfg.model)[1].get_vocab()
    assert _reference_ce(model, tok, held_out, cfg.context_length) == pytest.approx(m["after"]["task_ce"], abs=1e-4)
    base, _ = load_model(cfg.model)
    assert _reference_ce(base, tok, held_out, cfg.context_length) == pytest.approx(m["before"]["task_ce"], abs=1e-4)


def test_finished_folder_is_reused_without_loading(tuned, monkeypatch):
    cfg, m = tuned
    monkeypatch.setattr(FT.lm_models, "load_model", lambda *_: pytest.fail("a finished folder was tuned again"))
    assert FT.run_finetune(cfg, TEXTS, LABELS) == m
    with pytest.raises(ValueError, match="other settings"):
        FT.run_finetune(dataclasses.replace(cfg, lr=1e-3), TEXTS, LABELS)
    assert FT.run_finetune(dataclasses.replace(cfg, progress=True, torch_threads=1), TEXTS, LABELS) == m


def test_changed_base_model_is_refused(tuned, tmp_path):
    cfg, m = tuned
    out = tmp_path / "copy"
    out.mkdir()
    (out / FT.MANIFEST).write_text(json.dumps(m | {"base_model": m["base_model"] | {"revision": "0" * 16}}))
    with pytest.raises(ValueError, match="another version of base model"):
        FT.run_finetune(dataclasses.replace(cfg, out=str(out)), TEXTS, LABELS)


def test_half_written_folders_are_never_taken_for_finished(tuned, tmp_path):
    cfg, _ = tuned
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not a finished fine-tune"):
        FT.run_finetune(dataclasses.replace(cfg, out=str(half)), TEXTS, LABELS)
    out = tmp_path / "fresh"
    stale = tmp_path / "fresh.tmp"  # an interrupted earlier write
    stale.mkdir()
    (stale / "junk").write_text("x")
    m = FT.run_finetune(dataclasses.replace(cfg, out=str(out), steps=1), TEXTS, LABELS)
    assert not stale.exists() and not (out / "junk").exists() and FT.read_manifest(out) == m


@pytest.mark.parametrize("kw, labels, match", [
    (dict(domains=("Poetry",)), LABELS, r"'Poetry'\] not in the text source; labels: \['Maths', 'Rivers'\]"),
    ({}, None, "no labels"),
    (dict(steps=0), LABELS, "steps and batch_size must be positive"),
    (dict(n_task_eval=30), LABELS, "not enough for 30 held-out texts"),
])
def test_bad_input_is_refused_before_training(tuned, tmp_path, kw, labels, match):
    cfg, _ = tuned
    with pytest.raises(ValueError, match=match):
        FT.run_finetune(dataclasses.replace(cfg, out=str(tmp_path / "bad"), **kw), TEXTS, labels)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.tmp").exists()


def test_cli_tunes_a_labelled_file_on_two_domains(tuned, tmp_path, capsys):
    from sae_jax.cli import main

    cfg, _ = tuned
    labels = LABELS[:20] + ["Sums"] * 10 + LABELS[30:]  # the slice spans two labels
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": t, "topic": l}) + "\n" for t, l in zip(TEXTS, labels)))
    out = tmp_path / "cli"
    main(["finetune", "--model", cfg.model, "--out", str(out), "--text", str(path), "--label-field", "topic",
          "--domains", "Maths", "Sums", "--steps", "2", "--batch-size", "4", "--context-length", "32",
          "--n-task-eval", "4", "--n-general-eval", "4"])
    m = FT.read_manifest(out)
    assert m["config"]["domains"] == ["Maths", "Sums"] and m["config"]["label_field"] == "topic"
    assert set(m["task_eval_texts"]) <= set(DOMAIN) and np.isfinite(m["after"]["task_ce"])
    assert "fine-tuned" in capsys.readouterr().out


def test_anchor_kl_matches_scipy():
    from scipy.special import rel_entr, softmax

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 5, 7))
    mask = rng.random((3, 5)) > 0.4
    want = np.mean([rel_entr(softmax(b[i, j]), softmax(a[i, j])).sum() for i, j in zip(*np.nonzero(mask))])
    got = FT.anchor_kl(torch.tensor(a), torch.tensor(b), torch.tensor(mask))
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(FT.anchor_kl(torch.tensor(a), torch.tensor(a), torch.tensor(mask))) == pytest.approx(0, abs=1e-6)


@pytest.mark.slow  # two fine-tunes (~6 s)
def test_general_anchor_keeps_general_ce_nearer_the_base(tuned, tmp_path):
    cfg, m = tuned
    texts = TEXTS + [t.replace("river", "lake") for t in OTHER]  # anchor texts beyond the general eval set
    labels = LABELS + ["Rivers"] * len(OTHER)
    free = FT.run_finetune(dataclasses.replace(cfg, out=str(tmp_path / "free")), texts, labels)
    held = FT.run_finetune(dataclasses.replace(cfg, out=str(tmp_path / "held"), general_kl=10.0), texts, labels)
    assert held["config"]["general_kl"] == 10.0 and "general_kl" not in free["config"]
    assert abs(held["general_ce_change"]) < 0.5 * abs(free["general_ce_change"])
    assert held["task_ce_drop"] > 0.1


def test_train_upto_block_routes_the_whole_change_through_that_block(tuned, tmp_path):
    """Only block 0 of 2 is tuned: every other weight is the base's bit for bit, and replacing the tuned
    model's block-0 output with the base's gives the base model's logits (the change has no other path)."""
    from sae_jax.lm.hooks import decoder_blocks

    cfg, _ = tuned
    out = tmp_path / "upto0"
    m = FT.run_finetune(dataclasses.replace(cfg, out=str(out), train_upto_block=0), TEXTS, LABELS)
    assert m["config"]["train_upto_block"] == 0 and m["after"]["task_ce"] < m["before"]["task_ce"]
    tuned_m, tok = load_model(str(out))
    base_m, _ = load_model(cfg.model)
    base_p, tuned_p = dict(base_m.named_parameters()), dict(tuned_m.named_parameters())
    in_block0 = {f"model.layers.0.{n}" for n, _ in decoder_blocks(base_m)[0].named_parameters()}
    changed = {n for n in base_p if not torch.equal(base_p[n], tuned_p[n])}
    assert changed and changed <= in_block0
    ids = torch.tensor([tok(DOMAIN[0])["input_ids"]])
    with torch.no_grad():
        keep = {}
        h = decoder_blocks(base_m)[0].register_forward_hook(lambda mod, a, o: keep.setdefault("x", o))
        base_logits = base_m(input_ids=ids).logits
        h.remove()
        h = decoder_blocks(tuned_m)[0].register_forward_hook(lambda mod, a, o: keep["x"])
        patched = tuned_m(input_ids=ids).logits
        h.remove()
        assert not torch.allclose(tuned_m(input_ids=ids).logits, base_logits)
    assert torch.allclose(patched, base_logits, atol=1e-5)
    with pytest.raises(ValueError, match="train_upto_block 5 is out of range"):
        FT.run_finetune(dataclasses.replace(cfg, out=str(tmp_path / "bad"), train_upto_block=5), TEXTS, LABELS)
    assert not (tmp_path / "bad").exists()


def test_layer_delta_share_is_one_where_the_change_must_pass(tuned, tmp_path):
    """causal.layer_delta_share: with only block 0 tuned, the whole gap passes through blocks 0 and 1
    (share 1 exactly); the gap itself equals the manifest's CE difference measured independently."""
    from sae_jax.evals import causal

    cfg, _ = tuned
    out = tmp_path / "upto0"
    FT.run_finetune(dataclasses.replace(cfg, out=str(out), train_upto_block=0), TEXTS, LABELS)
    tuned_m, tok = load_model(str(out))
    base_m, _ = load_model(cfg.model)
    enc = tok(DOMAIN[:6], padding=True, return_tensors="np")
    batches = [(enc["input_ids"], enc["attention_mask"])]
    for layer in (0, 1):  # every position replaced: nothing else carries the change
        r = causal.layer_delta_share(tuned_m, base_m, layer, "resid", batches, [])
        assert r["share"] == pytest.approx(1.0, abs=1e-4)
    # real tokens only (as stores hold them): the BOS position's change is left in, so the share is below 1
    assert causal.layer_delta_share(tuned_m, base_m, 0, "resid", batches, tok.all_special_ids)["share"] < 0.999
    r = causal.layer_delta_share(tuned_m, base_m, 1, "resid", batches, tok.all_special_ids)
    gap = _reference_ce(base_m, tok, DOMAIN[:6], 64) - _reference_ce(tuned_m, tok, DOMAIN[:6], 64)
    assert r["gap"] == pytest.approx(gap, rel=0.05)  # token-weighted vs per-text means: near, not equal
