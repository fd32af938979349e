import numpy as np
import pytest
import torch

from sae_jax.evals.patching import patch_logprob_effects, patch_probe_effects
from sae_jax.export import load_sae, write_sae
from sae_jax.lm.models import tiny_random_model


def _sae(tmp_path, d_in=32, d_sae=40, seed=0, enc_scale=20.0):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(d_sae, d_in)).astype(np.float32)
    return load_sae(write_sae(tmp_path / "sae", {"W_enc": W.T * enc_scale, "b_enc": np.full(d_sae, -0.5, np.float32),
                                                 "W_dec": W * 0.05, "b_dec": np.zeros(d_in, np.float32)},
                              {"architecture": "standard"}))


def test_probe_effects_match_closed_form(tmp_path):
    sae = _sae(tmp_path, d_in=8, d_sae=12, enc_scale=1.0)
    rng = np.random.default_rng(1)
    X, Xp = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    w = rng.normal(size=8)
    probe = lambda x: x.astype(np.float64) @ w
    lat = [2, 5]
    H, Hp = sae.encode(X), sae.encode(Xp)
    mean = H.mean(0)
    r = patch_probe_effects(sae, X, probe, lat, methods=("zero", "mean", "paired"), X_paired=Xp)
    proj = sae.params["W_dec"][lat] @ w  # a linear probe sees each latent through W_dec[j] . w
    expect = {"zero": -H[:, lat] @ proj, "mean": (mean[lat] - H[:, lat]) @ proj, "paired": (Hp[:, lat] - H[:, lat]) @ proj}
    for m, e in expect.items():
        np.testing.assert_allclose(r.methods[m].effects, e, rtol=1e-4, atol=1e-5)
        assert r.methods[m].mean_effect == pytest.approx(e.mean(), rel=1e-4, abs=1e-6)
        assert r.methods[m].d_z == pytest.approx(e.mean() / e.std(ddof=1), rel=1e-3, abs=1e-4)
        clean, patched = probe(X), probe(X) + e
        pooled = np.sqrt((clean.var(ddof=1) + patched.var(ddof=1)) / 2)
        assert r.methods[m].cohens_d == pytest.approx((patched.mean() - clean.mean()) / pooled, rel=1e-3, abs=1e-4)
    assert r.effect_correlation["zero~mean"] == pytest.approx(np.corrcoef(expect["zero"], expect["mean"])[0, 1], rel=1e-4)
    with pytest.raises(ValueError, match="at least two"):
        patch_probe_effects(sae, X, probe, lat, methods=("zero",))
    with pytest.raises(ValueError, match="paired"):
        patch_probe_effects(sae, X, probe, lat, methods=("zero", "paired"))


def test_logprob_effects_match_a_hand_written_hook(tmp_path):
    model, tok = tiny_random_model("llama", 2, 32, seed=0)
    sae = _sae(tmp_path)
    texts = ["the cat sat on a mat", "the dog sat on a rug", "one two three four!", "abcdefghijklmnopqrs"]
    paired = ["the cow sat on a hat", "the hog sat on a bug", "one two three five!", "abcdefghijklmnopqrt"]
    enc = tok(texts, return_tensors="np", padding=True)
    ids, att = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    pids = tok(paired, return_tensors="np", padding=True)["input_ids"].astype(np.int64)
    pos = att.sum(1) - 2
    tgt = ids[np.arange(4), pos + 1]
    lat = [1, 7, 30]
    special = tok.all_special_ids
    r = patch_logprob_effects(model, sae, 0, "resid", ids, att, pos, tgt, lat, special,
                              methods=("zero", "paired"), paired_ids=pids)
    assert r.n_examples == 4

    def run(hook_fn=None):
        handle = model.model.layers[0].register_forward_hook(hook_fn) if hook_fn else None
        try:
            with torch.no_grad():
                logits = model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(att)).logits
        finally:
            if handle:
                handle.remove()
        lp = torch.log_softmax(logits.double(), -1)
        return lp[torch.arange(4), torch.as_tensor(pos), torch.as_tensor(tgt)].numpy()

    captured = {}
    handle = model.model.layers[0].register_forward_hook(lambda m, a, o: captured.setdefault("x", (o[0] if isinstance(o, tuple) else o).detach()))
    with torch.no_grad():
        model(input_ids=torch.as_tensor(pids), attention_mask=torch.as_tensor(att))
    handle.remove()
    Hp = sae.encode(captured["x"].numpy().reshape(-1, 32)).reshape(4, ids.shape[1], -1)
    W = torch.as_tensor(sae.params["W_dec"][lat])
    real = torch.as_tensor(att.astype(bool) & ~np.isin(ids, special))

    def hook(replace_paired):
        def fn(module, args, output):
            x = output[0] if isinstance(output, tuple) else output
            H = torch.as_tensor(sae.encode(x.numpy().reshape(-1, 32)).reshape(4, ids.shape[1], -1))[..., lat]
            new_vals = torch.as_tensor(Hp[..., lat]) if replace_paired else torch.zeros_like(H)
            new = x + torch.where(real[..., None], (new_vals - H) @ W, torch.zeros_like(x))
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return fn

    clean = run()
    np.testing.assert_allclose(r.methods["zero"].effects, run(hook(False)) - clean, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(r.methods["paired"].effects, run(hook(True)) - clean, rtol=1e-3, atol=1e-5)
    assert np.abs(r.methods["zero"].effects).max() > 1e-4  # the patch did change the target
