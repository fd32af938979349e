"""Steering helpers: bootstrap CIs against the normal approximation, concept recovery against scipy,
and next-token log-odds under a spliced direction against a brute-force forward pass."""
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import pearsonr

from sae_jax.evals.steering import concept_recovery, mean_ci, steering_effect


def test_mean_ci_matches_normal_approximation_and_steering_effect_gates():
    rng = np.random.default_rng(0)
    v = rng.normal(1.0, 1.0, 400)
    ci = mean_ci(v, n_resamples=4000)
    half = 1.96 * v.std(ddof=1) / np.sqrt(len(v))
    assert abs(ci["lo"] - (v.mean() - half)) < 0.02 and abs(ci["hi"] - (v.mean() + half)) < 0.02
    clean = rng.normal(size=200)
    steered = clean + 0.5 + 0.1 * rng.normal(size=200)
    control = clean + 0.05 * rng.normal(size=200)
    out = steering_effect(steered, control, clean)
    assert out["passes"] and out["effect"]["lo"] > 0.4 and abs(out["control_effect"]["mean"]) < 0.02
    assert not steering_effect(control, steered, clean)["passes"]  # the control beats the direction
    # a direction that moves the score the wrong way does not pass, even when the control moves it further down
    assert not steering_effect(clean - 0.5, clean - 2.0, clean)["passes"]
    with pytest.raises(ValueError, match="same texts"):
        steering_effect(steered, control[:10], clean)


def test_concept_recovery_matches_scipy_pearson():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (300, 2))
    codes = rng.normal(size=(300, 4))
    codes[:, 2] += 2 * labels[:, 0]
    codes[:, 0] -= 3 * labels[:, 1] ** 1
    out = concept_recovery(labels, codes, ["a", "b"])
    assert out["per_concept"]["a"]["latent"] == 2 and out["per_concept"]["b"]["latent"] == 0
    r_a, r_b = pearsonr(labels[:, 0], codes[:, 2])[0], pearsonr(labels[:, 1], codes[:, 0])[0]
    assert np.isclose(out["per_concept"]["b"]["r"], r_b) and r_b < 0
    assert np.isclose(out["mcc"], (abs(r_a) + abs(r_b)) / 2)
    assert 0 < out["rdc_matched"] <= 1


def test_token_set_logodds_matches_brute_force(tmp_path):
    torch = pytest.importorskip("torch")
    from sae_jax.lm.models import load_model, tiny_model_folder
    from sae_jax.lm.splice import token_set_logodds

    model, tok = load_model(tiny_model_folder(tmp_path / "m", n_layers=2))
    texts = ["he was here today", "the cat sat"]
    enc = tok(texts, padding=True, return_tensors="np")
    ids, att = enc["input_ids"], enc["attention_mask"]
    special = tok.all_special_ids
    pos, neg = [5, 9], [7]
    d = model.config.hidden_size
    v = np.random.default_rng(0).normal(size=d).astype(np.float32)
    sets = {"a": (pos, neg), "b": (neg, pos)}
    got_clean = token_set_logodds(model, ids, att, 0, "resid", None, special, sets)
    got = token_set_logodds(model, ids, att, 0, "resid", lambda x: x + v, special, sets)
    np.testing.assert_allclose(got["a"], -got["b"])
    got_clean, got = got_clean["a"], got["a"]
    for b, text in enumerate(texts):  # one text at a time, the direction added by hand to layer 0's output
        x = torch.tensor(tok(text)["input_ids"])[None]
        real = ~torch.isin(x[0], torch.tensor(special))

        def add(module, inputs, output):
            hs = output[0] if isinstance(output, tuple) else output
            hs = hs.clone()
            hs[0, real] += torch.from_numpy(v)
            return (hs,) + tuple(output[1:]) if isinstance(output, tuple) else hs

        for steer, expect in ((False, got_clean[b]), (True, got[b])):
            handle = model.model.layers[0].register_forward_hook(add) if steer else None
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=x).logits[0].double(), -1).numpy()
            if handle:
                handle.remove()
            score = logsumexp(lp[:, pos], -1) - logsumexp(lp[:, neg], -1)
            np.testing.assert_allclose(expect, score[real.numpy()].mean(), rtol=1e-4, atol=1e-4)
    assert not np.allclose(got, got_clean)
