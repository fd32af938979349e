"""Differentiable splice (TorchSAE, c and d) and `sae-jax tune`, on tiny random models.

References: the NumPy loader (sae_jax.export.LoadedSAE) for the SAE itself, the no-grad
evaluation splice (sae_jax.lm.splice) for the spliced model, and central finite differences
in float64 for the gradient w.r.t. c and d.
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sae_jax.evals import splice as ev_splice  # noqa: E402
from sae_jax.export import WHITENING_FILE, load_sae, write_sae  # noqa: E402
from sae_jax.lm import splice as lm_splice  # noqa: E402
from sae_jax.lm.models import tiny_random_model  # noqa: E402
from sae_jax.lm.sae_torch import TorchSAE, sae_spliced  # noqa: E402
from sae_jax.lm.tune import TuneConfig, check_splice_target, lm_ce, run_tune, split_texts  # noqa: E402
from sae_jax.whitening import fit_zca  # noqa: E402

D = 32
VARIANTS = ["standard", "topk", "jumprelu", "linear", "topk_layernorm", "standard_whitened"]


def _write_random_sae(path, variant, d_in=D, d_sae=48, seed=0, extra_cfg=None):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(d_sae, d_in)).astype(np.float32) / np.sqrt(d_in)
    params = {"W_enc": W.T.copy(), "b_enc": rng.normal(0, 0.1, d_sae).astype(np.float32),
              "W_dec": W * 0.5, "b_dec": rng.normal(0, 0.1, d_in).astype(np.float32)}
    arch = variant.split("_")[0]
    cfg = {"architecture": arch} | (extra_cfg or {})
    if arch == "topk":
        cfg["k"] = 6
    if arch == "jumprelu":
        params["threshold"] = np.abs(rng.normal(0, 0.3, d_sae)).astype(np.float32)
    whitening = None
    if variant.endswith("layernorm"):
        cfg["normalize_activations"] = "layer_norm"
    if variant.endswith("whitened"):  # stored beside the weights (behind a layer norm it cannot be folded)
        cfg["normalize_activations"] = "layer_norm"
        cfg["metadata"] = {"whitening": WHITENING_FILE + " (applied before the layer norm)"}
        whitening = fit_zca(rng.normal(size=(500, d_in)) @ rng.normal(size=(d_in, d_in)) * 0.3 + 1.0)
    write_sae(path, params, cfg, whitening)
    return load_sae(path)


@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_sae_equals_numpy_loader(tmp_path, variant):
    sae = _write_random_sae(tmp_path / "sae", variant)
    x = np.random.default_rng(1).normal(size=(20, D)).astype(np.float32) * 2
    tsae = TorchSAE(sae)
    with torch.no_grad():
        h = tsae.encode(torch.as_tensor(x)).numpy()
        x_hat = tsae(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(h, sae.encode(x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(x_hat, sae.decode(sae.encode(x)), rtol=1e-4, atol=1e-5)
    assert (h != 0).any() and (h == 0).any() or variant == "linear"
    # c and d act on the pre-activations: c = 2, d = 0.1 equals the loader's encode of doubled weights
    with torch.no_grad():
        tsae.c.fill_(2.0)
        tsae.d.fill_(0.1)
        h2 = tsae.encode(torch.as_tensor(x)).numpy()
    pre = sae.pre_activations(x)
    z = 2 * pre + 0.1
    ref = {"standard": lambda: np.maximum(z, 0), "linear": lambda: z,
           "jumprelu": lambda: np.where(z > sae.params["threshold"], np.maximum(z, 0), 0),
           "topk": lambda: np.where(z >= np.sort(z, -1)[:, [-6]], np.maximum(z, 0), 0)}[variant.split("_")[0]]()
    np.testing.assert_allclose(h2, ref, rtol=1e-4, atol=1e-5)


def _ids(rng, n=3, t=12, vocab=200):
    ids = rng.integers(4, vocab, (n, t))
    ids[:, 0] = 1  # <bos> (special): never spliced, never a target
    att = np.ones_like(ids)
    att[1, -4:] = 0
    return ids, att


@pytest.mark.parametrize("hook", ["resid", "mlp_hidden"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_identity_cd_equals_the_evaluation_splice(tmp_path, hook, arch):
    model, tok = tiny_random_model(arch, n_layers=2, d_model=D, seed=0)
    d_in = 2 * D if (hook == "mlp_hidden" and arch == "llama") else (4 * D if hook == "mlp_hidden" else D)
    sae = _write_random_sae(tmp_path / "sae", "topk", d_in=d_in, d_sae=64)
    ids, att = _ids(np.random.default_rng(2))
    ids_t, att_t = torch.as_tensor(ids), torch.as_tensor(att)
    special = tok.all_special_ids
    mask = lm_splice.splice_mask(ids_t, att_t, special)
    with torch.no_grad(), lm_splice.spliced(model, 1, hook) as ev:  # the no-grad NumPy splice
        ev.mask, ev.transform = mask, ev_splice.reconstruct(sae)
        ref = model(input_ids=ids_t, attention_mask=att_t).logits
        ev.transform = None
        clean = model(input_ids=ids_t, attention_mask=att_t).logits
    tsae = TorchSAE(sae)
    with sae_spliced(model, tsae, 1, hook) as sp:
        sp.mask = mask
        out = model(input_ids=ids_t, attention_mask=att_t).logits
        with torch.no_grad():  # c=1, d=0 is bit-for-bit the plain SAE (1·x = x, x + 0 = x)
            tsae.use_scale_shift = False
            plain = model(input_ids=ids_t, attention_mask=att_t).logits
            tsae.use_scale_shift = True
    assert out.requires_grad
    assert torch.equal(out.detach(), plain)
    # vs the NumPy splice: float32 matmuls in two libraries, so equal to rounding
    torch.testing.assert_close(out.detach(), ref, rtol=1e-5, atol=2e-5)
    assert (out.detach() - clean).abs().max() > 1e-2  # the splice did act
    # the training loss equals the evaluation splice's CE
    special_t = torch.tensor(sorted(set(special)))
    with torch.no_grad(), sae_spliced(model, tsae, 1, hook) as sp:
        sp.mask = mask
        s, n = lm_ce(model, ids_t, att_t, special_t)
    losses = lm_splice.splice_losses(model, [(ids, att)], 1, hook, {"sae": ev_splice.reconstruct(sae)}, special)
    assert n == losses["sae"].n_tokens
    assert float(s) / n == pytest.approx(losses["sae"].ce, rel=1e-6)
    # with the error term, c=1, d=0 is the clean model (to rounding)
    with torch.no_grad(), sae_spliced(model, tsae, 1, hook, error_term=True) as sp:
        sp.mask = mask
        torch.testing.assert_close(model(input_ids=ids_t, attention_mask=att_t).logits, clean, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant,error_term", [(v, False) for v in VARIANTS] + [("topk", True),
                                                                                  ("standard_whitened", True)])
def test_gradient_wrt_c_d_matches_finite_differences(tmp_path, variant, error_term):
    # GPT-2: its LayerNorm runs in float64 (Llama's RMSNorm rounds through float32, too coarse for FD)
    model, tok = tiny_random_model("gpt2", n_layers=2, d_model=D, seed=1)
    model = model.double()
    sae = _write_random_sae(tmp_path / "sae", variant, seed=3)
    tsae = TorchSAE(sae, dtype=torch.float64)
    rng = np.random.default_rng(4)
    with torch.no_grad():  # a generic point, not (1, 0)
        tsae.c.copy_(torch.as_tensor(1 + 0.2 * rng.normal(size=tsae.d_sae)))
        tsae.d.copy_(torch.as_tensor(0.05 * rng.normal(size=tsae.d_sae)))
    ids, att = _ids(rng)
    ids_t, att_t = torch.as_tensor(ids), torch.as_tensor(att)
    special = torch.tensor(sorted(set(tok.all_special_ids)))
    with sae_spliced(model, tsae, 0, "resid", error_term=error_term) as sp:
        sp.mask = lm_splice.splice_mask(ids_t, att_t, tok.all_special_ids)

        def loss():
            s, n = lm_ce(model, ids_t, att_t, special)
            return s / n

        value = loss()
        gc, gd = torch.autograd.grad(value, [tsae.c, tsae.d])
        assert gc.abs().max() > 1e-4 and gd.abs().max() > 1e-4
        eps = 1e-6
        for param, grad in ((tsae.c, gc), (tsae.d, gd)):
            picks = list(np.argsort(-grad.abs().numpy())[:5]) + list(rng.choice(tsae.d_sae, 3, replace=False))
            for i in picks:
                with torch.no_grad():
                    param[i] += eps
                    up = float(loss())
                    param[i] -= 2 * eps
                    down = float(loss())
                    param[i] += eps
                fd = (up - down) / (2 * eps)
                assert fd == pytest.approx(float(grad[i]), rel=1e-5, abs=1e-9), (variant, int(i))
        # a random direction through every coordinate at once
        vc, vd = torch.as_tensor(rng.normal(size=tsae.d_sae)), torch.as_tensor(rng.normal(size=tsae.d_sae))
        with torch.no_grad():
            tsae.c += eps * vc
            tsae.d += eps * vd
            up = float(loss())
            tsae.c -= 2 * eps * vc
            tsae.d -= 2 * eps * vd
            down = float(loss())
        assert (up - down) / (2 * eps) == pytest.approx(float(gc @ vc + gd @ vd), rel=1e-5, abs=1e-9)


# ---------------------------------------------------------------- sae-jax tune

TOPIC_A = [f"the {w} is a number that counts {i} apples and {i + 1} pears" for i, w in
           enumerate(["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"] * 3)]
TOPIC_B = [f"a river flows past town {c} into the sea near hill {c}{c}" for c in "abcdefghijklmnopqrst"]


@pytest.fixture(scope="module")
def tune_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tune")
    model, tok = tiny_random_model("llama", n_layers=2, d_model=D, seed=0)
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    with open(d / "texts.jsonl", "w") as f:
        for t in TOPIC_A:
            f.write(json.dumps({"text": t, "label": "math"}) + "\n")
        for t in TOPIC_B:
            f.write(json.dumps({"text": t, "label": "geo"}) + "\n")
    # a SAELens-style export that names its model and hook point
    _write_random_sae(d / "sae", "topk", seed=5,
                      extra_cfg={"model_name": str(d / "model"), "hook_name": "blocks.1.hook_resid_post"})
    return d


def _tune_cfg(d, out, **kw):
    base = dict(sae=str(d / "sae"), out=str(out), text=str(d / "texts.jsonl"), label_field="label", label="math",
                steps=6, batch_size=4, context_length=32, n_task_eval=6, n_general_eval=6, checkpoint_every=2,
                lr_cd=0.05, lr_mlp=1e-3, lr_full=1e-3, torch_threads=1, progress=False)
    return TuneConfig(**{**base, **kw})


def test_tune_runs_every_method_and_resumes_exactly(tune_dir, tmp_path):
    full = run_tune(_tune_cfg(tune_dir, tmp_path / "a"))
    assert (full["layer"], full["hook"]) == (1, "resid")  # from the SAE's hook_name
    m = full["methods"]
    assert set(m) == {"cd", "mlp", "full"}
    assert m["cd"]["trainable_params"] == 2 * 48
    assert m["mlp"]["trainable_params"] == 3 * D * 2 * D  # gate, up, down (no biases)
    assert m["full"]["trainable_params"] == full["total_params"]
    assert m["cd"]["train_tokens"] == m["mlp"]["train_tokens"] == m["full"]["train_tokens"] > 0
    for e in m.values():
        assert e["task_ce_before"] == full["before"]["task"]["ce"]
        assert np.isfinite([e["task_ce_after"], e["general_ce_after"], e["train_wall_s"]]).all()
        assert e["task_ce_after"] < e["task_ce_before"], e  # a few steps on 30 near-identical texts do help
    # with the error term the spliced start is the clean model
    assert full["before"]["task"]["ce"] == pytest.approx(full["before"]["task_clean"]["ce"], abs=1e-4)
    assert m["full"]["share_of_full_gain"] == pytest.approx(1.0)

    out = tmp_path / "b"
    stopped = run_tune(_tune_cfg(tune_dir, out), stop_after_steps=3)
    assert stopped["stopped"] and stopped["method"] == "cd"
    assert not (out / "cd" / "scale_shift.safetensors").exists()
    resumed = run_tune(_tune_cfg(tune_dir, out))
    for name in ("cd", "mlp", "full"):
        a, b = full["methods"][name], resumed["methods"][name]
        for key in ("task_ce_after", "general_ce_after", "loss_last10", "train_tokens"):
            assert a[key] == b[key], (name, key)
    from safetensors.numpy import load_file
    ca, cb = load_file(str(tmp_path / "a" / "cd" / "scale_shift.safetensors")), load_file(
        str(out / "cd" / "scale_shift.safetensors"))
    np.testing.assert_array_equal(ca["c"], cb["c"])
    assert np.abs(ca["c"] - 1).max() > 0  # c moved
    with pytest.raises(ValueError, match="another configuration"):
        run_tune(_tune_cfg(tune_dir, out, steps=7))


def test_cd_control_tunes_c_d_on_the_other_labels(tune_dir, tmp_path):
    texts, labels = TOPIC_A + TOPIC_B, ["math"] * len(TOPIC_A) + ["geo"] * len(TOPIC_B)
    data = split_texts(texts, labels, "math", 6, 6, seed=0)
    assert set(data.control) <= set(TOPIC_B) and set(data.control).isdisjoint(data.general_eval)
    assert len(data.control) == min(len(data.train), len(TOPIC_B) - 6)
    r = run_tune(_tune_cfg(tune_dir, tmp_path / "c", methods=("cd", "cd_control")))
    m = r["methods"]
    assert set(m) == {"cd", "cd_control"}
    assert m["cd_control"]["trainable_params"] == m["cd"]["trainable_params"] == 2 * 48
    assert m["cd_control"]["lr"] == m["cd"]["lr"]
    # each run lowers the CE of its own kind of text more than the other run does
    assert m["cd"]["task_gain"] > m["cd_control"]["task_gain"]
    assert m["cd_control"]["general_damage"] < m["cd"]["general_damage"]
    from safetensors.numpy import load_file
    task, ctrl = (load_file(str(tmp_path / "c" / k / "scale_shift.safetensors")) for k in ("cd", "cd_control"))
    assert np.abs(ctrl["c"] - 1).max() > 0 and not np.array_equal(task["c"], ctrl["c"])


def test_tune_bad_input_errors_before_training(tune_dir, tmp_path):
    # SAE width != hook width
    _write_random_sae(tmp_path / "wide", "topk", d_in=2 * D,
                      extra_cfg={"model_name": str(tune_dir / "model"), "hook_name": "blocks.1.hook_resid_post"})
    with pytest.raises(ValueError, match="does not match"):
        run_tune(_tune_cfg(tune_dir, tmp_path / "o1", sae=str(tmp_path / "wide")))
    # an export from another model
    other, tok = tiny_random_model("gpt2", n_layers=2, d_model=D, seed=0)
    other.save_pretrained(tmp_path / "other")
    tok.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="not .*an SAE is only"):
        run_tune(_tune_cfg(tune_dir, tmp_path / "o2", model=str(tmp_path / "other")))
    # a layer / hook the model lacks
    with pytest.raises(ValueError, match="out of range"):
        run_tune(_tune_cfg(tune_dir, tmp_path / "o3", layer=5))
    with pytest.raises(ValueError, match="unknown hook point"):
        run_tune(_tune_cfg(tune_dir, tmp_path / "o4", hook="mlp_pre"))
    with pytest.raises(ValueError, match="no text has label"):
        run_tune(_tune_cfg(tune_dir, tmp_path / "o5", label="poetry"))
    with pytest.raises(ValueError, match="cd_control needs texts"):  # all 20 'geo' texts are general-CE texts
        run_tune(_tune_cfg(tune_dir, tmp_path / "o6", methods=("cd", "cd_control"), n_general_eval=20))
    for i in range(1, 7):
        assert not (tmp_path / f"o{i}" / "results.json").exists()
    model, _ = tiny_random_model("llama", n_layers=2, d_model=D)
    del model.model.layers[1].mlp.down_proj
    with pytest.raises(ValueError, match="no 'mlp_hidden' hook point"):
        check_splice_target(model, load_sae(tune_dir / "sae"), 1, "mlp_hidden")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_zero_ablation_ce_is_log_vocab_only_without_biases(arch):
    # A bias-free Llama maps a residual zeroed at every position to logits 0 at every later block
    # (RMSNorm(0) = 0, attention and SwiGLU of 0 are 0): CE = ln V whatever the targets. GPT-2 has
    # biases and a LayerNorm shift, so its zeroed residual is refilled and the CE is not ln V.
    model, tok = tiny_random_model(arch, n_layers=3, d_model=D, seed=1)
    torch.manual_seed(1)
    with torch.no_grad():  # large random weights (GPT-2's biases included, HF starts them at 0)
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.tensor([[5, 9, 11, 7, 3, 8]])
    att = torch.ones_like(ids)
    batches = [(ids.numpy(), att.numpy())]
    for layer in (0, 1):
        r = lm_splice.splice_losses(model, batches, layer, "resid", {"zero": ev_splice.zero_ablate()}, special_ids=[])
        assert abs(r["clean"].ce - np.log(vocab)) > 0.1  # the clean model is far from uniform
        if arch == "llama":
            assert r["zero"].ce == pytest.approx(np.log(vocab), abs=1e-5)
        else:
            assert abs(r["zero"].ce - np.log(vocab)) > 1e-3
