"""Model-diffing analysis (feature types, gates, labels, corruptions, causal validation) against
independent computations: scipy, brute-force loops and hand-made cases with known answers."""
import json

import numpy as np
import pytest
from scipy import stats

from sae_jax.evals import causal, corruptions, feature_types, gates, labels
from sae_jax.evals.shift import cohens_d_arrays


# ---------------------------------------------------------------- feature types

def test_cohens_d_ci_matches_scipy_bootstrap():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, (300, 3))
    tuned = base * 0.5 + rng.normal([0.0, 0.4, -0.8], 1, (300, 3))
    d, lo, hi = feature_types.cohens_d_ci(base, tuned, n_boot=3000, seed=1)
    np.testing.assert_allclose(d, cohens_d_arrays(base, tuned), rtol=1e-10, atol=1e-12)

    def stat(b, t):
        return cohens_d_arrays(b[:, None], t[:, None])[0]

    for j in range(3):
        ref = stats.bootstrap((base[:, j], tuned[:, j]), stat, paired=True, vectorized=False, n_resamples=3000,
                              method="percentile", random_state=2).confidence_interval
        assert abs(lo[j] - ref.low) < 0.03 and abs(hi[j] - ref.high) < 0.03, (j, lo[j], hi[j], ref)
        assert lo[j] < d[j] < hi[j]


def test_cohens_d_ci_covers_the_true_effect():
    rng = np.random.default_rng(3)
    cover = 0
    for rep in range(40):
        b, t = rng.normal(0, 1, (80, 1)), rng.normal(0.5, 1, (80, 1))
        _, lo, hi = feature_types.cohens_d_ci(b, t, n_boot=400, seed=rep, paired=False)
        cover += lo[0] <= 0.5 <= hi[0]
    assert cover >= 32  # nominal 95% (38/40); percentile CIs of d run a little narrow


def test_feature_types_on_a_hand_made_triple():
    rng = np.random.default_rng(0)
    n = 400
    codes_b = np.abs(rng.normal(1, 0.3, (n, 4)))
    codes_t = codes_b.copy()
    codes_t[:, 0] *= 0.2  # latent 0 suppressed: type A
    codes_t[:, 1] += 1.0  # latent 1 amplified: type B
    codes_b[:, 3] = 0  # latent 3 never fires on base: not A/B even though it fires after tuning
    codes_t[:, 3] = 1.0
    I = np.eye(6)
    W_base = I[:4]
    W_tuned = I[[1, 0, 2, 3]] * 2  # permuted: match by direction
    W_delta = np.stack([I[0], I[4], (I[4] + I[5]) / np.sqrt(2), (I[0] + I[4]) / np.sqrt(2)])
    ft = feature_types.feature_types(codes_b, codes_t, W_base, W_tuned, W_delta, n_boot=200)
    assert ft.types.tolist() == ["A", "B", "-", "-"]
    assert ft.match_tuned.tolist() == [1, 0, 2, 3]
    np.testing.assert_allclose(ft.match_cos, 1.0)
    # |cos| with the nearest base/tuned row: 1, 0, 0, 0.707 -> C for rows 1 and 2 (threshold 0.7 keeps row 3 out)
    assert ft.delta_only.tolist() == [False, True, True, False]
    assert ft.counts() == {"A": 1, "B": 1, "n_base_latents": 4, "C": 2, "n_delta_latents": 4}
    with pytest.raises(ValueError, match="row-aligned"):
        feature_types.feature_types(codes_b[:10], codes_t, W_base, W_tuned)


# ---------------------------------------------------------------- gates

def test_between_group_variance_is_eta_squared():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(90, 5))
    g = np.repeat(["a", "b", "c"], 30)
    X[g == "b", 1] += 3
    eta = gates.between_group_variance(X, g)
    for j in range(5):
        col = X[:, j]
        sst = ((col - col.mean()) ** 2).sum()
        ssb = sum((g == k).sum() * (col[g == k].mean() - col.mean()) ** 2 for k in "abc")
        assert eta[j] == pytest.approx(ssb / sst, rel=1e-9)
    assert eta.argmax() == 1
    assert gates.between_group_variance(np.ones((6, 1)), np.array([0, 0, 0, 1, 1, 1]))[0] == 0


def test_top_fraction_sparsity_gate_and_funnel_match_loops():
    s = np.array([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0, 0.0])
    assert np.flatnonzero(gates.top_fraction(s, 0.2)).tolist() == [2, 6]
    eligible = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1, 1], bool)
    assert np.flatnonzero(gates.top_fraction(s, 0.25, eligible)).tolist() == [4, 8]
    rng = np.random.default_rng(0)
    codes = rng.exponential(1, (200, 6))
    for j, n_fire in enumerate([2, 4, 60, 8, 0, 6]):  # firing frequencies 0.01 .. 0.3
        codes[n_fire:, j] = 0
    codes[:, 3] *= 10  # rare and strong
    keep, st = gates.sparsity_gate(codes, max_frequency=0.05, strength_quantile=0.5)
    strength = [np.abs(codes[codes[:, j] != 0, j]).mean() if (codes[:, j] != 0).any() else 0 for j in range(6)]
    alive = [j for j in range(6) if (codes[:, j] != 0).any()]
    cut = np.quantile([strength[j] for j in alive], 0.5)
    expect = [j in alive and (codes[:, j] != 0).mean() <= 0.05 and strength[j] >= cut for j in range(6)]
    assert keep.tolist() == expect and keep[3] and not keep[2] and not keep[4]
    rows, final = gates.funnel(4, [("g1", np.array([1, 1, 1, 0])), ("g2", np.array([0, 1, 1, 1])),
                                   ("g3", np.array([1, 0, 1, 1]))])
    assert [r["n_left"] for r in rows] == [4, 3, 2, 1] and final.tolist() == [False, False, True, False]
    assert gates.causal_gate(np.array([0.1, -0.5, np.nan, 0.3]), 0.3).tolist() == [False, True, False, False]


def test_validation_gates_and_pass_counts():
    good = gates.validation_gates({"fvu": 0.1, "l0": 32, "dead_fraction": 0.01, "ce_recovered": 0.9})
    bad = gates.validation_gates({"fvu": 0.3, "l0": 32, "dead_fraction": 0.5})
    assert good == {"reconstruction": True, "sparsity": True, "faithfulness": True, "pass": True}
    assert bad == {"reconstruction": False, "sparsity": False, "pass": False}
    assert gates.pass_counts({"a": good, "b": bad}) == {"faithfulness": 1, "pass": 1, "reconstruction": 1,
                                                        "sparsity": 1, "n_saes": 2}
    with pytest.raises(ValueError, match="fvu"):
        gates.validation_gates({"l0": 3})


# ---------------------------------------------------------------- labels and themes

def test_keyword_labels_follow_the_ctfidf_formula():
    contexts = [["cat dog cat", "cat fish"], ["dog dog bird"], ["fish fish fish cat"]]
    scores, vocab = labels.ctfidf([" ".join(c) for c in contexts], stop_words=None)
    words = sorted({w for c in contexts for t in c for w in t.split()})
    assert list(vocab) == words
    tf = np.array([[sum(t.split().count(w) for t in c) for w in words] for c in contexts], float)
    A = tf.sum() / 3
    np.testing.assert_allclose(scores, tf * np.log(1 + A / tf.sum(0)))
    assert labels.keyword_labels(contexts, n_words=1) == ["cat", "dog", "fish"]


def test_themes_choose_k_by_silhouette():
    groups = [["algebra theorem", "theorem proof", "algebra proof lemma"],
              ["river mountain", "mountain valley", "river valley lake"],
              ["guitar song", "song album", "guitar album band"]]
    labs = [l for g in groups for l in g] + [""]
    th = labels.themes(labs, k_range=range(2, 6))
    assert th.k == 3 and th.theme[-1] == -1
    ids = th.theme[:-1].reshape(3, 3)
    assert all(len(set(r)) == 1 for r in ids) and len({r[0] for r in ids}) == 3


def test_top_activating_rows_match_a_full_sort():
    rng = np.random.default_rng(0)
    X = np.maximum(rng.normal(size=(300, 5)), 0)
    X[:, 4] = 0
    X[7, 4] = 2.0  # fires once
    rows = np.arange(20, 320)
    top, vals = labels.top_activating_rows(lambda x: x, lambda r: X[r - 20], rows, top_n=3, batch_size=64)
    for j in range(4):
        order = np.argsort(-X[:, j], kind="stable")[:3]
        assert top[j].tolist() == (order + 20).tolist()
        np.testing.assert_allclose(vals[j], X[order, j])
    assert top[4].tolist() == [27, -1, -1] and vals[4].tolist() == [2.0, 0, 0]


def test_token_contexts_follow_the_extractors_tokenisation():
    pytest.importorskip("torch")
    from sae_jax.lm.models import tiny_tokenizer

    tok = tiny_tokenizer()  # one token per byte after <bos>
    ctx = labels.token_contexts(tok, ["hello world", "abc"], np.array([0, 0, 1]), np.array([5, 1, 3]),
                                np.array([0, 2, -1]), context_length=32, before=2, after=1)
    assert ctx == ["llo ", "abc", ""]  # row 0: "l" (pos 5) with 2 before, 1 after; row 2: "c" of "abc"


def test_llm_labeller_wiring_on_a_tiny_model(tmp_path):
    pytest.importorskip("torch")
    from sae_jax.lm.models import tiny_random_model

    model, tok = tiny_random_model("llama", n_layers=1, d_model=16)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    lab = labels.LLMLabeller(str(tmp_path / "m"), max_new_tokens=3)
    assert "snippet one" in lab.prompt(["snippet one", "two"])
    assert isinstance(lab.label(["snippet one", "two"]), str)


def test_base_rate_enrichment_matches_scipy_bootstrap():
    from sae_jax.evals.enrichment import base_rate_enrichment

    shares = np.r_[np.random.default_rng(0).random(60), np.nan]
    e = base_rate_enrichment(shares, 0.2, n_boot=4000)
    a = shares[:-1]
    assert e.n_latents == 60 and e.ratio == pytest.approx(a.mean() / 0.2)
    ref = stats.bootstrap((a / 0.2,), np.mean, n_resamples=4000, method="percentile", random_state=1).confidence_interval
    assert abs(e.ci_low - ref.low) < 0.05 and abs(e.ci_high - ref.high) < 0.05
    with pytest.raises(ValueError, match="base_rate"):
        base_rate_enrichment(a, 0.0)


# ---------------------------------------------------------------- corruptions

def test_corruptions_on_hand_made_texts():
    texts = ["The theorem has a proof.", "Theorem proofs are long.", "A river flows."]
    r = corruptions.string_replacement(texts, {"theorem": "painting", "proof": "frame"})
    assert r.texts == ["The painting has a frame.", "Painting proofs are long.", "A river flows."]
    assert r.changed.tolist() == [True, True, False]
    p = corruptions.paraphrase_substitution(texts, ["theorem", "proof"], ["apple", "theorem"], seed=0)
    assert p.texts == ["The apple has a apple.", "Apple proofs are long.", "A river flows."]
    others = ["one two three four five", "one two", "one two three"]
    s = corruptions.counterfactual_swap(texts, others, seed=0)
    assert sorted(s.texts) == sorted(others) and s.changed.all()
    with pytest.raises(ValueError, match="as many"):
        corruptions.counterfactual_swap(texts, others[:2])


def test_domain_keywords_find_the_planted_words():
    rng = np.random.default_rng(0)
    common = ["the", "house", "people", "water", "city", "years", "large", "small"]
    dom = ["theorem", "algebra", "integer"]
    texts, labs = [], []
    for i in range(200):
        inside = i < 50
        words = list(rng.choice(common, 12)) + (list(rng.choice(dom, 3)) if inside else [])
        texts.append(" ".join(words))
        labs.append("math" if inside else "other")
    assert set(corruptions.domain_keywords(texts, labs, "math", n=3)) == set(dom)


# ---------------------------------------------------------------- causal validation

class NumpySAE:
    """ReLU SAE in NumPy (the SAELike protocol)."""

    def __init__(self, d_in, d_sae, seed=0, dead=()):
        rng = np.random.default_rng(seed)
        self.d_in, self.d_sae = d_in, d_sae
        W_enc = rng.normal(0, 1 / np.sqrt(d_in), (d_in, d_sae)).astype(np.float32)
        b_enc = np.zeros(d_sae, np.float32)
        b_enc[list(dead)] = -1e6  # never fires
        self.params = {"W_enc": W_enc, "b_enc": b_enc,
                       "W_dec": rng.normal(0, 1 / np.sqrt(d_in), (d_sae, d_in)).astype(np.float32),
                       "b_dec": np.zeros(d_in, np.float32)}

    def encode(self, x):
        return np.maximum(x @ self.params["W_enc"] + self.params["b_enc"], 0)

    def decode(self, h):
        return h @ self.params["W_dec"] + self.params["b_dec"]


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("torch")
    from sae_jax.lm.models import tiny_random_model

    model, tok = tiny_random_model("llama", n_layers=2, d_model=32, seed=0)
    return model, tok


def _batch(tok, texts):
    enc = tok(texts, padding=True, return_tensors="np")
    return enc["input_ids"], enc["attention_mask"]


def test_latent_effects_equal_a_brute_force_hook(tiny):
    import torch

    model, tok = tiny
    sae = NumpySAE(32, 16, seed=1, dead=[5])
    special = tok.all_special_ids
    clean_texts, corrupt_texts = ["the cat sat", "a longer sentence here"], ["dogs", "no words of it at all"]
    clean, corrupt = _batch(tok, clean_texts), _batch(tok, corrupt_texts)
    latents = [3, 5, 9]
    eff = causal.latent_effects(model, sae, 1, "resid", [clean], {"m": [corrupt]}, latents, special)["m"]
    assert eff.shape == (3, 2)
    assert np.all(eff[1] == 0)  # a latent that never fires: its patch is exactly zero

    block = model.model.layers[1]

    def acts(text):  # resid after block 1 of one text, no padding
        store = {}
        h = block.register_forward_hook(lambda m, a, o: store.setdefault("x", o[0] if isinstance(o, tuple) else o))
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        h.remove()
        return ids, store["x"][0].numpy(), logits

    for t, (ct, xt) in enumerate(zip(clean_texts, corrupt_texts)):
        ids, x, logits = acts(ct)
        _, xc, _ = acts(xt)
        real = ~np.isin(ids[0].numpy(), special)
        realc = ~np.isin(np.array(tok(xt)["input_ids"]), special)
        lp0 = torch.log_softmax(logits[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0].numpy()[real[1:]].mean()
        for i, j in enumerate(latents):
            v = sae.encode(xc[realc])[:, j].mean()
            w = sae.decode(np.eye(16, dtype=np.float32)[j:j + 1])[0] - sae.decode(np.zeros((1, 16), np.float32))[0]

            def edit(m, a, o, v=v, w=w):
                out = o[0] if isinstance(o, tuple) else o
                new = out.clone()
                hj = sae.encode(out[0].detach().numpy())[:, j]
                delta = np.where(real, v - hj, 0.0)[:, None] * w
                new[0] += torch.from_numpy(delta.astype(np.float32))
                return (new,) + tuple(o[1:]) if isinstance(o, tuple) else new

            h = block.register_forward_hook(edit)
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0]
            h.remove()
            assert eff[i, t] == pytest.approx(lp0 - lp.numpy()[real[1:]].mean(), abs=2e-5)
    damage = causal.ablation_damage(model, sae, 1, "resid", [clean], latents, special)
    assert damage[1] == 0 and np.isfinite(damage).all()


def test_latent_effects_at_active_positions_equal_a_brute_force_hook(tiny):
    """at="active": patch only where the latent fires, score only the tokens that follow those positions."""
    import torch

    model, tok = tiny
    sae = NumpySAE(32, 16, seed=3, dead=[4])
    sae.params["b_enc"][[2, 7]] = -0.01  # fire on some positions only (pre-activations here are ~0.02)
    special = tok.all_special_ids
    clean_texts, corrupt_texts = ["the cat sat on a mat", "a longer sentence here and more"], ["dogs run", "none of it"]
    clean, corrupt = _batch(tok, clean_texts), _batch(tok, corrupt_texts)
    latents = [2, 4, 7]
    eff = causal.latent_effects(model, sae, 1, "resid", [clean], {"m": [corrupt]}, latents, special, at="active")["m"]
    assert np.isnan(eff[1]).all()  # never fires: no evidence, not a zero effect
    block = model.model.layers[1]

    def run(ids, edit=None):
        store = {}

        def hook(m, a, o):
            out = o[0] if isinstance(o, tuple) else o
            store.setdefault("x", out[0].detach().numpy().copy())
            if edit is None:
                return None
            new = out.clone()
            new[0] += torch.from_numpy(edit(out[0].detach().numpy()).astype(np.float32))
            return (new,) + tuple(o[1:]) if isinstance(o, tuple) else new

        h = block.register_forward_hook(hook)
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0].numpy()
        h.remove()
        return store["x"], lp

    checked = 0
    for t, (ct, xt) in enumerate(zip(clean_texts, corrupt_texts)):
        ids = torch.tensor([tok(ct)["input_ids"]])
        real = ~np.isin(ids[0].numpy(), special)
        x, lp0 = run(ids)
        idc = torch.tensor([tok(xt)["input_ids"]])
        xc, _ = run(idc)
        realc = ~np.isin(idc[0].numpy(), special)
        for i, j in enumerate(latents):
            fires = real & (sae.encode(x)[:, j] > 0)
            counted = fires[:-1] & real[1:]
            if not counted.any():
                assert np.isnan(eff[i, t])
                continue
            v = sae.encode(xc[realc])[:, j].mean()
            w = sae.decode(np.eye(16, dtype=np.float32)[j:j + 1])[0] - sae.decode(np.zeros((1, 16), np.float32))[0]
            _, lp = run(ids, lambda out, v=v, w=w, fires=fires: np.where(fires, v - sae.encode(out)[:, j], 0.0)[:, None] * w)
            assert eff[i, t] == pytest.approx(lp0[counted].mean() - lp[counted].mean(), abs=2e-5)
            checked += 1
    assert checked >= 2
    with pytest.raises(ValueError, match="at must be"):
        causal.latent_effects(model, sae, 1, "resid", [clean], {"m": [corrupt]}, latents, special, at="some")


def test_delta_sae_reads_the_difference_to_the_reference_model(tiny):
    model, tok = tiny
    sae = NumpySAE(32, 8, seed=2)
    clean = _batch(tok, ["the cat sat"])
    # the model as its own reference: every delta is 0, so a bias-free ReLU SAE has all-zero codes
    eff = causal.latent_effects(model, sae, 0, "resid", [clean], {"m": [clean]}, [0, 1, 2], tok.all_special_ids,
                                reference_model=model)["m"]
    assert np.all(eff == 0)


def test_bad_input_is_refused_before_any_forward(tiny):
    from sae_jax.lm.models import tiny_random_model

    model, tok = tiny
    clean = _batch(tok, ["the cat"])
    with pytest.raises(ValueError, match="width 24"):
        causal.latent_effects(model, NumpySAE(24, 8), 1, "resid", [clean], {"m": [clean]}, [0], tok.all_special_ids)
    with pytest.raises(ValueError, match="out of range"):
        causal.ablation_damage(model, NumpySAE(32, 8), 5, "resid", [clean], [0], tok.all_special_ids)
    other, _ = tiny_random_model("llama", n_layers=2, d_model=48)
    with pytest.raises(ValueError, match="width 48"):
        causal.latent_effects(model, NumpySAE(32, 8), 1, "resid", [clean], {"m": [clean]}, [0], tok.all_special_ids,
                              reference_model=other)


def test_effect_sizes_p_values_and_consistency_gate_match_scipy():
    rng = np.random.default_rng(0)
    drops = {"a": rng.normal([[1.0], [0.0], [0.3]], 1, (3, 40)), "b": rng.normal([[1.0], [0.1], [0.3]], 1, (3, 40))}
    d = {m: causal.effect_sizes(v) for m, v in drops.items()}
    for m, v in drops.items():
        np.testing.assert_allclose(d[m], [r.mean() / r.std(ddof=1) for r in v])
    p = causal.p_values(drops)
    for m, v in drops.items():
        np.testing.assert_allclose(p["per_method"][m], [stats.ttest_1samp(r, 0, alternative="greater").pvalue for r in v])
    comb = np.maximum(p["per_method"]["a"], p["per_method"]["b"])
    np.testing.assert_allclose(p["combined"], comb)
    np.testing.assert_allclose(p["bh"], stats.false_discovery_control(comb))
    g = causal.consistency_gate({"x": np.array([1.0, 0.9, 2.0]), "y": np.array([1.2, 0.5, 1.0]),
                                 "z": np.array([0.9, 1.3, 1.5])})
    # means 1.033, 0.9, 1.5; SDs (ddof=0) 0.125, 0.327, 0.408
    assert g["pass"].tolist() == [True, False, False]
    with pytest.raises(ValueError, match="two"):
        causal.consistency_gate({"x": np.ones(2)})
    np.testing.assert_allclose(causal.combined_score([2.0, 2.0], [0.5, 0.5], [0.0, -1.0], eps=0.5), [2.0, 2.0])


def test_preregistration_refuses_changed_settings(tmp_path):
    path = tmp_path / "prereg.json"
    rec = causal.preregister(path, {"threshold": 0.8, "methods": ["a", "b"]})
    assert json.loads(path.read_text())["settings"]["threshold"] == 0.8 and "registered_at" in rec
    assert causal.preregister(path, {"methods": ["a", "b"], "threshold": 0.8})["sha256_16"] == rec["sha256_16"]
    with pytest.raises(ValueError, match="pre-registered other settings"):
        causal.preregister(path, {"threshold": 0.5, "methods": ["a", "b"]})
