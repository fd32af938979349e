import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from sae_jax.evals import browser
from sae_jax.export import load_sae, write_sae
from sae_jax.lm.models import tiny_random_model
from sae_jax.evals.run import token_batches

TEXTS = ["the cat sat on the mat", "a quick brown fox jumps over the lazy dog", "hello world, hello again",
         "numbers 12345 and symbols #!?", "the end of the story"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model, tok = tiny_random_model("llama", n_layers=2, d_model=32, seed=0)
    rng = np.random.default_rng(0)
    W = rng.normal(size=(40, 32)).astype(np.float32)
    path = write_sae(tmp_path_factory.mktemp("sae") / "sae",
                     {"W_enc": W.T * 20, "b_enc": np.full(40, -0.5, np.float32), "W_dec": W,
                      "b_dec": np.zeros(32, np.float32)}, {"architecture": "standard"})
    return model, tok, load_sae(path)


def test_collect_matches_brute_force_over_all_tokens(setup):
    model, tok, sae = setup
    batches = token_batches(tok, TEXTS, seq_len=32, batch_size=2)
    from sae_jax.lm.splice import hooked_activations

    acts = list(hooked_activations(model, batches, 0, "resid"))
    masks = [att.astype(bool) & ~np.isin(ids, tok.all_special_ids) for ids, att in batches]
    latents = [3, 17, 39]
    cards = browser.collect(sae, acts, masks, latents, top_n=5)
    # brute force: every real token of every sequence, in global order
    recs = []
    seq = 0
    for a, m in zip(acts, masks):
        for b in range(a.shape[0]):
            for t in np.nonzero(m[b])[0]:
                recs.append((seq, t, a[b, t]))
            seq += 1
    H = sae.encode(np.stack([r[2] for r in recs]))
    assert all(0 < (H[:, j] != 0).mean() < 0.9 for j in latents), "test SAE must fire sometimes, not always"
    for card, j in zip(cards, latents):
        assert card.n_tokens == len(recs)
        assert len(card.values) == int((H[:, j] != 0).sum())
        best = np.argsort(-H[:, j], kind="stable")[:5]
        best = [i for i in best if H[i, j] != 0]
        assert [(s, p) for _, s, p in card.top] == [(recs[i][0], recs[i][1]) for i in best]
        np.testing.assert_allclose([v for v, _, _ in card.top], H[best, j], rtol=1e-6)


def test_logit_effects_are_unembedding_times_decoder_row(setup):
    model, tok, sae = setup
    W_U = model.get_output_embeddings().weight.detach().numpy()
    card = browser.LatentCard(7)
    browser.logit_effects(sae, W_U, tok, card, n=3)
    eff = W_U @ sae.params["W_dec"][7]
    top = np.argsort(-eff)[:3]
    assert [t for t, _ in card.logits_up] == [tok.decode([int(i)]) for i in top]
    np.testing.assert_allclose([e for _, e in card.logits_up], eff[top], rtol=1e-6)
    assert card.logits_down[0][1] == pytest.approx(eff.min(), rel=1e-6)


def _page(setup, latents):
    model, tok, sae = setup
    return browser.build_browser(model, tok, sae, token_batches(tok, TEXTS, 32, 2), 0, "resid", latents)


def test_page_is_self_contained_and_names_every_latent(setup):
    page = _page(setup, [0, 5, 21])
    for j in (0, 5, 21):
        assert f"id='latent-{j}'" in page.html and f"Latent {j}" in page.html
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", page.html)  # nothing external
    assert "<script" not in page.html
    assert "<svg" in page.html
    with pytest.raises(ValueError, match="outside"):
        _page(setup, [40])


def test_pick_latents_by_frequency():
    assert browser.pick_latents(np.array([0.1, 0.0, 0.5, 0.2]), 3) == [2, 3, 0]
    assert browser.pick_latents(np.array([0.0, 0.3]), 5) == [1]


@pytest.mark.slow
def test_browser_renders_in_headless_chromium(setup, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    latents = [0, 5, 21]
    path = tmp_path / "browser.html"
    path.write_text(_page(setup, latents).html, encoding="utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    subprocess.run([exe, *flags, f"--screenshot={shot}", "--window-size=1200,1600", path.as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 5000
    dom = subprocess.run([exe, *flags, "--dump-dom", path.as_uri()], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    for j in latents:
        assert f'id="latent-{j}"' in dom and f"Latent {j}" in dom
    if os.environ.get("SAE_JAX_KEEP_SCREENSHOT"):  # a path, to look at the page by eye
        shutil.copy(shot, os.environ["SAE_JAX_KEEP_SCREENSHOT"])
