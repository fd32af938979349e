"""Causal validation (evals/causal.py) and corruptions (evals/corruptions.py) against independent
computations: a per-text forward pass with a hand-written forward-hook edit, SciPy's t-test and BH,
and hand-made texts / numbers with known answers."""
import numpy as np
import pytest
from scipy import stats

from sae_jax.evals import causal, corruptions
from tests.test_model_diffing_evals import NumpySAE, _batch

LAYER = 1


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("torch")
    from sae_jax.lm.models import tiny_random_model

    model, tok = tiny_random_model("llama", n_layers=2, d_model=32, seed=0)
    return model, tok


def _edited_logprobs(model, tok, text, edit=None):
    """Next-token log-probs [T-1, V] (float64) of one unpadded text, its ids and real-token mask; with
    ``edit(x [T, d], real) -> delta`` added to block LAYER's output by a hand-written forward hook."""
    import torch

    ids = torch.tensor([tok(text)["input_ids"]])
    real = ~np.isin(ids[0].numpy(), tok.all_special_ids)
    handle = None
    if edit is not None:
        def hook(m, a, o):
            out = o[0] if isinstance(o, tuple) else o
            new = out.clone()
            new[0] += torch.from_numpy(edit(out[0].detach().numpy(), real).astype(np.float32))
            return (new,) + tuple(o[1:]) if isinstance(o, tuple) else new
        handle = model.model.layers[LAYER].register_forward_hook(hook)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    if handle is not None:
        handle.remove()
    return torch.log_softmax(logits[0, :-1].double(), -1).numpy(), ids[0].numpy(), real


def _manual_score(model, tok, text, targets=None, edit=None):
    """Mean next-token log-prob of one unpadded text's real tokens (``targets``: only those), ``edit`` as above."""
    lp, ids, real = _edited_logprobs(model, tok, text, edit)
    lp = lp[np.arange(len(ids) - 1), ids[1:]]
    ok = real[1:] & (np.isin(ids[1:], targets) if targets is not None else True)
    return lp[ok].mean() if ok.any() else np.nan


def _capture(model, tok, text):
    """Block LAYER's output [T, d] of one unpadded text, and its real-token mask."""
    import torch

    ids = torch.tensor([tok(text)["input_ids"]])
    store = {}

    def hook(m, a, o):  # returns None: records, leaves the output alone
        store["x"] = (o[0] if isinstance(o, tuple) else o)[0].numpy().copy()

    h = model.model.layers[LAYER].register_forward_hook(hook)
    with torch.no_grad():
        model(input_ids=ids)
    h.remove()
    return store["x"], ~np.isin(ids[0].numpy(), tok.all_special_ids)


def _direction(sae, j):
    one, zero = np.eye(sae.d_sae, dtype=np.float32)[j:j + 1], np.zeros((1, sae.d_sae), np.float32)
    return sae.decode(one)[0] - sae.decode(zero)[0]


# ---------------------------------------------------------------- behaviour score

def test_behaviour_scores_match_a_per_text_loop(tiny):
    from sae_jax.lm.models import tiny_random_model

    model, tok = tiny
    texts = ["the cat sat on a mat", "xyz", "a longer sentence about cats here"]
    batch = _batch(tok, texts)  # padded: the batched score must equal the unpadded one
    special = tok.all_special_ids
    targets = tok("ae", add_special_tokens=False)["input_ids"]
    got = causal.behaviour_scores(model, [batch], special)
    np.testing.assert_allclose(got, [_manual_score(model, tok, t) for t in texts], atol=2e-5)
    dom = causal.behaviour_scores(model, [batch], special, target_ids=targets)
    assert np.isnan(dom[1])  # "xyz" has no target token: no evidence, not a zero
    np.testing.assert_allclose(dom, [_manual_score(model, tok, t, targets) for t in texts], atol=2e-5)
    base, _ = tiny_random_model("llama", n_layers=2, d_model=32, seed=1)
    diff = causal.behaviour_scores(model, [batch], special, reference_model=base)
    np.testing.assert_allclose(diff, [_manual_score(model, tok, t) - _manual_score(base, tok, t) for t in texts],
                               atol=4e-5)
    with pytest.raises(ValueError, match="target_ids"):
        causal.behaviour_scores(model, [batch], special, target_ids=[10**6])


# ---------------------------------------------------------------- latent effects

def test_ablation_effects_equal_a_manual_hook_edit(tiny):
    model, tok = tiny
    sae = NumpySAE(32, 16, seed=1, dead=[5])
    texts = ["the cat sat", "a longer sentence here"]
    latents = [3, 5, 2]
    targets = tok("aet", add_special_tokens=False)["input_ids"]
    for tgt in (None, targets):
        eff = causal.ablation_effects(model, sae, LAYER, "resid", [_batch(tok, texts)], latents,
                                      tok.all_special_ids, target_ids=tgt)
        assert eff.shape == (3, 2)
        assert np.all(eff[1] == 0)  # a latent that never fires: exactly zero effect
        assert np.all(np.abs(eff[[0, 2]]) > 3e-4)  # the live ones do something
        for t, text in enumerate(texts):
            clean = _manual_score(model, tok, text, tgt)
            for i, j in enumerate(latents):
                w = _direction(sae, j)
                ablated = _manual_score(model, tok, text, tgt,
                                        lambda x, real, j=j, w=w: np.where(real, -sae.encode(x)[:, j], 0)[:, None] * w)
                assert eff[i, t] == pytest.approx(clean - ablated, abs=2e-5)


def test_patch_effects_on_domain_tokens_equal_a_manual_hook_edit(tiny):
    model, tok = tiny
    sae = NumpySAE(32, 16, seed=3, dead=[0])
    clean_texts, corrupt_texts = ["the cat sat", "xyz xyz"], ["dogs run", "no words of it at all"]
    latents = [0, 7]
    targets = tok("aet", add_special_tokens=False)["input_ids"]
    eff = causal.latent_effects(model, sae, LAYER, "resid", [_batch(tok, clean_texts)],
                                {"m": [_batch(tok, corrupt_texts)]}, latents, tok.all_special_ids,
                                target_ids=targets)["m"]
    assert np.all(eff[0, :1] == 0) and np.isnan(eff[:, 1]).all()  # dead latent; a text with no domain token
    assert abs(eff[1, 0]) > 1e-4  # the live latent's patch does something (the comparison below is not 0 = 0)
    xc, realc = _capture(model, tok, corrupt_texts[0])
    for i, j in enumerate(latents):
        w = _direction(sae, j)
        v = sae.encode(xc[realc])[:, j].mean()  # the latent's mean on the corrupted text
        patched = _manual_score(model, tok, clean_texts[0], targets,
                                lambda x, real, j=j, w=w, v=v: np.where(real, v - sae.encode(x)[:, j], 0)[:, None] * w)
        assert eff[i, 0] == pytest.approx(_manual_score(model, tok, clean_texts[0], targets) - patched, abs=2e-5)


def _manual_kl(model, base, tok, text, edit=None):
    """Mean over real next tokens of KL(model ‖ base) of the next-token distributions, ``edit`` as above."""
    lp, _, real = _edited_logprobs(model, tok, text, edit)
    lpb, _, _ = _edited_logprobs(base, tok, text)
    kl = (np.exp(lp) * (lp - lpb)).sum(-1)
    return kl[real[1:]].mean()


def test_kl_to_reference_effects_equal_a_manual_hook_edit(tiny):
    """A delta SAE reads model − base activations; its patch's effect on KL(model ‖ base), by hand."""
    from sae_jax.lm.models import tiny_random_model

    model, tok = tiny
    base, _ = tiny_random_model("llama", n_layers=2, d_model=32, seed=1)
    sae = NumpySAE(32, 16, seed=5)
    clean, corrupt = "the cat sat on a mat", "dogs run far"
    latents = list(range(16))
    eff = causal.latent_effects(model, sae, LAYER, "resid", [_batch(tok, [clean])], {"m": [_batch(tok, [corrupt])]},
                                latents, tok.all_special_ids, reference_model=base, score="kl_to_reference")["m"]
    assert np.abs(eff).max() > 1e-4  # some patch does something (the comparison below is not 0 = 0)
    (xm, real), (xb, _) = _capture(model, tok, clean), _capture(base, tok, clean)
    (xcm, realc), (xcb, _) = _capture(model, tok, corrupt), _capture(base, tok, corrupt)
    clean_kl = _manual_kl(model, base, tok, clean)
    assert clean_kl > 1e-3  # two different random models: the reference is really elsewhere
    for i, j in enumerate(latents):
        w = _direction(sae, j)
        h = sae.encode((xm - xb)[real])[:, j]
        v = sae.encode((xcm - xcb)[realc])[:, j].mean()
        delta = np.zeros(len(real))
        delta[real] = v - h

        patched = _manual_kl(model, base, tok, clean, lambda x, r, d=delta, w=w: d[:, None] * w)
        assert eff[i, 0] == pytest.approx(clean_kl - patched, abs=1e-6)
    with pytest.raises(ValueError, match="reference_model"):
        causal.latent_effects(model, sae, LAYER, "resid", [_batch(tok, [clean])], {"m": [_batch(tok, [corrupt])]},
                              latents, tok.all_special_ids, score="kl_to_reference")


# ---------------------------------------------------------------- statistics

def test_effect_size_matches_scipy_with_missing_texts():
    rng = np.random.default_rng(0)
    drops = rng.normal([[1.0], [0.0], [-0.5]], 1, (3, 30))
    drops[0, :4] = np.nan  # texts without a domain token
    drops = np.vstack([drops, np.zeros((1, 30))])  # a dead latent
    for alt in ("greater", "two-sided"):
        got = causal.effect_size(drops, alternative=alt)
        p_ref = []
        for r in drops[:3]:
            r = r[~np.isnan(r)]
            p_ref.append(stats.ttest_1samp(r, 0, alternative=alt).pvalue)
        np.testing.assert_allclose(got["p"][:3], p_ref, rtol=1e-10)
        assert got["p"][3] == 1.0 and got["d"][3] == 0.0
        np.testing.assert_allclose(got["p_bh"], stats.false_discovery_control(got["p"]))
    r0 = drops[0, 4:]
    assert got["n"].tolist() == [26, 30, 30, 30]
    assert got["d"][0] == pytest.approx(r0.mean() / r0.std(ddof=1))
    np.testing.assert_allclose(causal.effect_sizes(drops), got["d"])
    with pytest.raises(ValueError, match="alternative"):
        causal.effect_size(drops, alternative="bigger")
    with pytest.raises(ValueError, match="n_latents, n_texts"):
        causal.effect_size(np.ones(5))


def test_consistency_gate_on_absolute_d():
    d = {"x": np.array([-1.0, 1.0, 0.9]), "y": np.array([-1.1, -1.0, 1.0]), "z": np.array([-0.9, 1.2, 0.2])}
    signed = causal.consistency_gate(d)
    absolute = causal.consistency_gate(d, absolute=True)
    # latent 0: d = -1, -1.1, -0.9: mean |d| 1.0, SD 0.0816 -> only the |d| gate passes it
    # latent 1: d = 1, -1, 1.2: mean |d| 1.067 but SD 0.99 (signs disagree) -> fails both
    # latent 2: mean 0.7 -> fails both
    assert signed["pass"].tolist() == [False, False, False]
    assert absolute["pass"].tolist() == [True, False, False]
    np.testing.assert_allclose(absolute["mean_d"], [1.0, 3.2 / 3, 0.7])
    np.testing.assert_allclose(absolute["sd_d"],
                               [np.std([-1, -1.1, -0.9]), np.std([1, -1, 1.2]), np.std([0.9, 1, 0.2])])


def test_damage_gate_and_ranking_on_hand_made_effects():
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 1, (3, 40))
    # latent 10: strong, consistent; 11: nothing; 12: strong but damages general text
    drops = {m: np.array([3.0, 0.0, 3.0])[:, None] * (1 + 0.3 * noise) + np.array([0, 1, 0])[:, None] * noise
             for m in ("a", "b", "c")}
    ident = np.array([0.5, 0.9, 0.5])
    damage = np.array([0.01, 0.0, 0.4])
    assert causal.damage_gate(damage, 0.1).tolist() == [True, True, False]
    assert causal.damage_gate([np.nan], 0.1).tolist() == [False]
    with pytest.raises(ValueError, match="bound"):
        causal.damage_gate(damage, -1)
    rows = causal.causal_ranking([10, 11, 12], drops, ident, damage, damage_bound=0.1, eps=1e-3)
    assert [r["latent"] for r in rows] == [10, 12, 11]
    by = {r["latent"]: r for r in rows}
    d = {m: [r.mean() / r.std(ddof=1) for r in v] for m, v in drops.items()}
    mean_d = np.mean([d[m][0] for m in d])
    assert by[10]["score"] == pytest.approx(mean_d * 0.5 / (0.01 + 1e-3))
    assert by[10]["p"] == pytest.approx(max(stats.ttest_1samp(drops[m][0], 0, alternative="greater").pvalue
                                            for m in drops))
    assert [by[j]["final"] for j in (10, 11, 12)] == [True, False, False]
    assert by[12]["consistent"] and not by[12]["harmless"]
    with pytest.raises(ValueError, match="one row per latent"):
        causal.causal_ranking([10, 11], drops, ident, damage)


# ---------------------------------------------------------------- corruptions

def test_string_replacement_phrases_case_and_boundaries():
    texts = ["New  York is big. NEW YORK! York's theorem-like Theorems", "nothing here", "cat cat"]
    r = corruptions.string_replacement(texts, {"new york": "Paris", "york": "leeds", "theorem": "painting",
                                               "cat": "cat"})
    assert r.texts == ["Paris is big. PARIS! Leeds's painting-like Theorems", "nothing here", "cat cat"]
    assert r.changed.tolist() == [True, False, False]  # a replacement by itself changes nothing
    with pytest.raises(ValueError, match="non-empty"):
        corruptions.string_replacement(texts, {" ": "x"})
    p = corruptions.paraphrase_substitution(["PROOF and Proof"], ["proof"], ["apple"], seed=0)
    assert p.texts == ["APPLE and Apple"]
