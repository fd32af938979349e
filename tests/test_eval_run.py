"""End to end: run_eval on a tiny saved model, its activations and an exported SAE."""
import dataclasses
import json
import re

import numpy as np
import pytest

from sae_jax.config import DataConfig
from sae_jax.data.source import ArraySource
from sae_jax.evals.core import evaluate_core, split_rows
from sae_jax.evals.identifiability import match_directions
from sae_jax.evals.run import EvalConfig, run_eval, token_batches
from sae_jax.export import load_sae, write_sae
from sae_jax.lm.models import tiny_random_model
from sae_jax.lm.splice import hooked_activations

TEXTS = [f"sample text number {i}: the {w} jumps over {i * 7} fences" for i, w in
         enumerate(["cat", "dog", "fox", "cow", "owl", "bee", "ant", "elk"] * 3)]


def _topk_sae(path, d_in, d_sae, seed):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(d_sae, d_in)).astype(np.float32)
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    return write_sae(path, {"W_enc": W.T.copy(), "b_enc": np.zeros(d_sae, np.float32), "W_dec": W,
                            "b_dec": np.zeros(d_in, np.float32)}, {"architecture": "topk", "k": 4})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    model, tok = tiny_random_model("llama", n_layers=2, d_model=32, seed=0)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    (root / "texts.txt").write_text("\n".join(TEXTS))
    acts = []
    for (ids, att), a in zip(token_batches(tok, TEXTS, 64), hooked_activations(model, token_batches(tok, TEXTS, 64), 0, "resid")):
        keep = att.astype(bool) & ~np.isin(ids, tok.all_special_ids)
        acts.append(a[keep])
    acts = np.concatenate(acts).astype(np.float32)
    np.save(root / "acts.npy", acts)
    rng = np.random.default_rng(0)
    labels = (acts[:, 0] > np.median(acts[:, 0])).astype(np.int64)  # a real linear signal
    np.save(root / "labels.npy", labels)
    truth = rng.normal(size=(24, 32)).astype(np.float32)
    np.save(root / "truth.npy", truth)
    _topk_sae(root / "run" / "export", 32, 64, seed=1)
    _topk_sae(root / "other", 32, 64, seed=2)
    return root, acts


def test_run_eval_writes_json_and_self_contained_report(workspace):
    root, acts = workspace
    cfg = EvalConfig(sae=str(root / "run" / "export"), data=DataConfig(npy=str(root / "acts.npy")),
                     heldout_start=0.5, model=str(root / "model"), layer=0, hook="resid", text_file=str(root / "texts.txt"),
                     labels=str(root / "labels.npy"), compare_sae=str(root / "other"),
                     ground_truth=str(root / "truth.npy"), n_browser_latents=4, batch_size=100)
    head = run_eval(cfg)
    out = root / "run" / "eval"
    res = json.loads((out / "eval.json").read_text())
    assert set(res["skipped"]) == {"shift"}  # no chat store
    sae = load_sae(root / "run" / "export")
    rows = split_rows(len(acts), 0.5, 1.0)
    ref = evaluate_core(sae, ArraySource(acts), rows)
    assert head["fvu"] == pytest.approx(ref.fvu, rel=1e-9)
    assert head["l0"] == pytest.approx(ref.l0) and head["dead_fraction"] == pytest.approx(ref.dead_fraction)
    assert res["core"]["n_tokens"] == len(rows)
    s = res["splice"]
    assert head["ce_loss_recovered"] == pytest.approx(s["ce_loss_recovered_zero"])
    assert s["ce_spliced_with_error"] == pytest.approx(s["ce_clean"], abs=1e-5)
    gt = match_directions(np.load(root / "truth.npy"), sae.params["W_dec"])
    assert res["identifiability"]["ground_truth"]["mean_matched_abs_cos"] == pytest.approx(gt[0])
    assert 0 <= res["identifiability"]["compare"]["code_mcc"] <= 1
    assert res["probing"]["activations"]["accuracy"] > 0.8  # the label is a threshold on unit 0
    assert res["stats"]["neurons"]["n_bonferroni"] >= 1
    # patching: same numbers as a direct call on the same rows
    from sae_jax.evals.patching import patch_probe_effects
    from sae_jax.evals.probing import fit_probe, top_k_units

    X, y = acts[rows], np.load(root / "labels.npy")[rows]
    H = sae.encode(X)
    lat = top_k_units(H, y, 5)
    direct = patch_probe_effects(sae, X[y == 1], fit_probe(X, y).decision_function, lat, ("zero", "mean"),
                                 mean_codes=H.mean(0))
    assert res["patching"]["latents"] == [int(j) for j in lat]
    for m in ("zero", "mean"):
        assert res["patching"]["methods"][m]["mean_effect"] == pytest.approx(direct.methods[m].mean_effect, rel=1e-4, abs=1e-6)
    html = (out / "report.html").read_text()
    for heading in ("Reconstruction and sparsity", "Splicing", "Identifiability", "Probing", "t-tests", "Feature browser"):
        assert heading in html
    assert html.count("data:image/png;base64,") >= 4
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", html)
    browser = (out / "browser.html").read_text()
    assert all(f"id='latent-{j}'" in browser for j in res["browser"]["latents"])


def test_run_eval_skips_what_it_lacks_and_reads_the_run_config(workspace, tmp_path):
    root, acts = workspace
    (root / "run" / "config.json").write_text(json.dumps({"data": {"npy": str(root / "acts.npy")}}))
    head = run_eval(EvalConfig(sae=str(root / "run" / "export"), out_dir=str(tmp_path), evals=("core", "splice")))
    res = json.loads((tmp_path / "eval.json").read_text())
    assert "splice" in res["skipped"] and head["ce_loss_recovered"] is None
    assert head["fvu"] > 0


def test_eval_config_errors_are_clear():
    with pytest.raises(ValueError, match="unknown evaluations"):
        EvalConfig(sae="x", evals=("core", "nope"))
    with pytest.raises(ValueError, match="--sae"):
        EvalConfig()


def test_run_eval_on_an_extracted_store_finds_model_texts_and_labels(workspace, tmp_path):
    from sae_jax.lm.extract import ExtractConfig, run_extract

    root, _ = workspace
    animals = [f"the {w} sleeps in the barn at night" for w in ["cat", "dog", "cow", "pig", "hen", "ox"] * 2]
    numbers = [f"{i} plus {i + 3} equals {2 * i + 3}" for i in range(12)]
    records = [{"text": t, "label": lab} for pair in zip(animals, numbers) for t, lab in zip(pair, ("animal", "number"))]
    (tmp_path / "texts.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    run_extract(ExtractConfig(model=str(root / "model"), out=str(tmp_path / "store"), text=str(tmp_path / "texts.jsonl"),
                              label_field="label", layers=(0,), hooks=("resid",), context_length=32, batch_size=8,
                              progress=False))
    head = run_eval(EvalConfig(sae=str(root / "run" / "export"), data=DataConfig(store=str(tmp_path / "store")),
                               out_dir=str(tmp_path / "eval"), heldout_start=0.5, n_browser_latents=3))
    res = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert set(res["skipped"]) == {"identifiability", "shift"}  # no second SAE, true dictionary or chat store
    assert "patching" in res
    # independent count: rows per text = its non-special tokens; held-out texts have all rows in the 2nd half
    from sae_jax.lm.models import load_model

    _, tok = load_model(str(root / "model"))
    lengths = [int((~np.isin(tok(r["text"], truncation=True, max_length=32)["input_ids"], tok.all_special_ids)).sum())
               for r in records]
    starts = np.cumsum([0] + lengths[:-1])
    n_rows = sum(lengths)
    held = [i for i, s in enumerate(starts) if s >= round(0.5 * n_rows)]
    # every non-special token but the first of each text is a counted target (its predecessor is BOS or real)
    assert res["splice"]["n_tokens"] == sum(lengths[i] for i in held)
    assert res["probing"]["label"] in ("label: text class 'animal' vs the rest", "label: text class 'number' vs the rest")
    assert res["probing"]["activations"]["accuracy"] > 0.8  # animal vs arithmetic text is easy from activations
    assert head["ce_loss_recovered"] is not None


def test_format_headline():
    from sae_jax.evals.run import format_headline

    line = format_headline({"fvu": 0.12345, "l0": 31.96, "dead_fraction": 0.0123, "ce_loss_recovered": None})
    assert line == "FVU 0.1235  L0 32.0  dead 1.23%  CE-loss recovered n/a"


def test_run_eval_base_vs_chat_shift_and_clustering(workspace, tmp_path):
    from sae_jax.data.store import open_store
    from sae_jax.evals.shift import cohens_d_arrays
    from sae_jax.lm.extract import ExtractConfig, run_extract

    root, _ = workspace
    chat, tok = tiny_random_model("llama", n_layers=2, d_model=32, seed=1)  # a "fine-tuned" model: same tokenizer
    chat.save_pretrained(tmp_path / "chat")
    tok.save_pretrained(tmp_path / "chat")
    (tmp_path / "t.txt").write_text("\n".join(TEXTS))
    run_extract(ExtractConfig(model=str(root / "model"), chat_model=str(tmp_path / "chat"), out=str(tmp_path / "st"),
                              text=str(tmp_path / "t.txt"), layers=(0,), hooks=("resid",), context_length=32,
                              progress=False))
    base_path, chat_path = str(tmp_path / "st" / "base" / "layer0_resid"), str(tmp_path / "st" / "chat" / "layer0_resid")
    run_eval(EvalConfig(sae=str(root / "run" / "export"), data=DataConfig(store=base_path), chat_store=chat_path,
                        chat_sae=str(root / "other"), delta_sae=str(root / "run" / "export"), out_dir=str(tmp_path / "ev"),
                        heldout_start=0.0, n_clusters=5, n_browser_latents=4,
                        evals=("core", "shift", "clustering", "browser")))
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    sae = load_sae(root / "run" / "export")
    b, c = open_store(base_path), open_store(chat_path)
    rows = np.arange(b.n_rows)
    d = cohens_d_arrays(sae.encode(b.read(rows)), sae.encode(c.read(rows)))
    shifted = np.abs(d) >= 0.5
    assert sum(res["shift"]["counts"].values()) == 64
    assert res["shift"]["counts"]["amplified_in_chat"] == int((d >= 0.5).sum())
    assert res["shift"]["n_delta_only"] == 0  # the "delta SAE" here is the base SAE itself: all matched
    clusters = res["clustering"]["clusters"]
    assert sum(r["size"] for r in clusters) == 64 and len(clusters) == 5
    labels = np.array(res["clustering"]["labels"])
    for r in clusters:
        assert r["n_shifted"] == int((shifted & (labels == r["cluster"])).sum())
    # the browser shows the most shifted latents
    expect = [int(j) for j in np.argsort(-np.abs(d), kind="stable") if shifted[j]][:4]
    assert res["browser"]["chosen_by"] == "largest |Cohen's d|" and res["browser"]["latents"] == expect


def test_synthetic_data_is_evaluated_on_a_fresh_draw_with_the_same_dictionary(tmp_path):
    from sae_jax.data.synthetic import ground_truth_dictionary, synthetic_source

    d = DataConfig(synthetic_d_in=16, synthetic_n_features=32, synthetic_k=3, synthetic_n_rows=2000, synthetic_seed=3)
    D = ground_truth_dictionary(32, 16, seed=3)
    perm = np.random.default_rng(0).permutation(32)
    write_sae(tmp_path / "sae", {"W_enc": D[perm].T.copy(), "b_enc": np.zeros(32, np.float32), "W_dec": D[perm],
                                 "b_dec": np.zeros(16, np.float32)},
              {"architecture": "topk", "k": 3, "metadata": {"config": {"data": dataclasses.asdict(d)}}})
    head = run_eval(EvalConfig(sae=str(tmp_path / "sae"), out_dir=str(tmp_path / "ev"), evals=("core", "identifiability")))
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert res["core"]["n_tokens"] == 200  # 10% of synthetic_n_rows
    assert res["identifiability"]["ground_truth"]["mean_matched_abs_cos"] == pytest.approx(1.0, abs=1e-6)
    assert head["fvu"] < 1.0 and head["l0"] <= 3  # better than the mean, k=3 codes
    from sae_jax.evals.run import fresh_synthetic_source

    fresh = fresh_synthetic_source(d, 200).read(np.arange(200))
    train = synthetic_source(2000, 16, 32, 3, seed=3).read(np.arange(2000))
    assert not (np.abs(fresh[:, None, :] - train[None, :, :]).max(-1) < 1e-6).any()  # no training row reappears


def test_single_class_held_out_labels_skip_probing_with_a_reason(workspace, tmp_path):
    root, acts = workspace
    labels = np.zeros(len(acts), np.int64)
    labels[: len(acts) // 4] = 1  # class 1 only outside the held-out half
    np.save(tmp_path / "labels.npy", labels)
    run_eval(EvalConfig(sae=str(root / "run" / "export"), data=DataConfig(npy=str(root / "acts.npy")), heldout_start=0.5,
                        labels=str(tmp_path / "labels.npy"), out_dir=str(tmp_path / "ev"),
                        evals=("core", "probing", "patching", "stats")))
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert all("single class" in res["skipped"][e] for e in ("probing", "patching", "stats"))


def test_default_split_is_exactly_the_training_holdout(tmp_path):
    """Eval's default rows start where training stopped reading (one shared boundary)."""
    import numpy as np
    from sae_jax.config import DataConfig
    from sae_jax.data.open import held_out_start_row, open_source, training_rows
    from sae_jax.evals.run import EvalConfig, _Context
    from sae_jax.export import write_sae

    n = 17  # a size where round(0.9 n) and n - int(0.1 n) disagree
    np.save(tmp_path / "a.npy", np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32))
    d = DataConfig(npy=str(tmp_path / "a.npy"), holdout_fraction=0.1)
    p = {"W_enc": np.eye(4, 6), "b_enc": np.zeros(6), "W_dec": np.eye(6, 4), "b_dec": np.zeros(4)}
    write_sae(tmp_path / "sae", p, {"architecture": "standard"})
    ctx = _Context(EvalConfig(sae=str(tmp_path / "sae"), data=d, evals=("core",)))
    trained = training_rows(open_source(d), d).n_rows
    assert trained == held_out_start_row(n, 0.1) == 16
    np.testing.assert_array_equal(ctx.rows, np.arange(trained, n))


def test_stats_alpha_is_settable_and_significant_units_are_written(workspace, tmp_path):
    """Issue 12: `--alpha` (e.g. 1e-5 as in the original study) and the indices of significant units."""
    from scipy import stats as sps

    root, acts = workspace
    labels = np.load(root / "labels.npy")
    for alpha in (1e-5, 0.05):
        run_eval(EvalConfig(sae=str(root / "run" / "export"), data=DataConfig(npy=str(root / "acts.npy")),
                            heldout_start=0.5, labels=str(root / "labels.npy"), out_dir=str(tmp_path / str(alpha)),
                            evals=("stats",), alpha=alpha))
        res = json.loads((tmp_path / str(alpha) / "eval.json").read_text())["stats"]["neurons"]
        rows = split_rows(len(acts), 0.5, 1.0)
        X, y = acts[rows], labels[rows]
        p = sps.ttest_ind(X[y == 1], X[y == 0], equal_var=False).pvalue
        assert res["alpha"] == alpha
        assert res["significant"]["uncorrected"] == np.flatnonzero(p <= alpha).tolist()
        assert res["significant"]["bonferroni"] == np.flatnonzero(p <= alpha / p.size).tolist()
        bh = sps.false_discovery_control(p, method="bh") <= alpha
        assert res["significant"]["benjamini_hochberg"] == np.flatnonzero(bh).tolist()
    with pytest.raises(ValueError, match="alpha"):
        EvalConfig(sae="x", alpha=1.5)


def test_pooled_store_labels_are_read_by_eval(tmp_path):
    """Issue 12: one-row-per-text (pooled) stores' labels.json was ignored, so probing and t-tests were
    silently skipped unless --labels was passed."""
    from sae_jax.lm.extract import ExtractConfig, run_extract
    from sae_jax.lm.models import tiny_model_folder

    model = tiny_model_folder(tmp_path / "m")
    texts = [(f"the cat number {i} sat on the mat" if i % 2 else f"a theorem {i} has a proof by induction", i % 2)
             for i in range(40)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": t, "label": ["math", "cats"][y]}) + "\n"
                                              for t, y in texts))
    run_extract(ExtractConfig(model=model, out=str(tmp_path / "store"), text=str(tmp_path / "t.jsonl"),
                              label_field="label", layers=(0,), pooling="mean", context_length=16, progress=False))
    _topk_sae(tmp_path / "sae", 32, 16, seed=0)
    run_eval(EvalConfig(sae=str(tmp_path / "sae"), data=DataConfig(store=str(tmp_path / "store" / "layer0_resid")),
                        heldout_start=0.0, out_dir=str(tmp_path / "ev"), evals=("core", "stats", "probing", "browser"),
                        label_class="math", n_browser_latents=3))
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert not {"stats", "probing", "browser"} & set(res["skipped"]), res["skipped"]
    # the browser ranks texts (one row each), strongest first, by a brute-force ranking of the rows
    from sae_jax.data.store import open_store
    from sae_jax.export import load_sae

    h = load_sae(tmp_path / "sae").encode(open_store(str(tmp_path / "store" / "layer0_resid")).read(np.arange(40)))
    j = res["browser"]["latents"][0]
    assert res["browser"]["top_texts"][str(j)][:3] == [texts[i][0] for i in np.argsort(-h[:, j], kind="stable")[:3]]
    assert "the cat number" in (tmp_path / "ev" / "browser.html").read_text() or "theorem" in (
        tmp_path / "ev" / "browser.html").read_text()
    assert res["stats"]["label"] == "label: text class 'math' vs the rest"
    assert res["stats"]["neurons"]["n_units"] == 32
