"""Splicing an SAE into a tiny Llama trained on a synthetic language (no downloads)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers

from sae_jax.evals import splice as ev_splice
from sae_jax.export import LoadedSAE
from sae_jax.lm import splice as lm_splice
from sae_jax.lm.hooks import forward_activations

V, T, BOS = 24, 24, 0


def _sequences(rng, n):
    """BOS then a mostly deterministic chain: next = (3*prev + 1) mod (V-1) + 1, 10% random."""
    ids = np.zeros((n, T), dtype=np.int64)
    ids[:, 0] = BOS
    ids[:, 1] = rng.integers(1, V, n)
    for t in range(2, T):
        det = (3 * ids[:, t - 1] + 1) % (V - 1) + 1
        ids[:, t] = np.where(rng.random(n) < 0.9, det, rng.integers(1, V, n))
    return ids


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                                   bos_token_id=BOS, eos_token_id=None, pad_token_id=None)
    model = transformers.LlamaForCausalLM(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small only lose to thread hand-offs, badly so on a busy machine
    try:
        for _ in range(120):
            ids = torch.as_tensor(_sequences(rng, 32))
            loss = model(input_ids=ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model


def NumpyTopKSAE(params, k):
    """Trained TopK params as the exported-SAE class (NumPy encode/decode)."""
    params = {n: np.asarray(p, np.float32) for n, p in params.items()}
    d_in, d_sae = params["W_enc"].shape
    return LoadedSAE({"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": k}, params)


def _train_topk_sae(x, d_sae, k, steps, seed=0):
    """A real fit: TopK SAE, Adam on MSE, a few hundred full-batch steps in JAX."""
    d = x.shape[1]
    key = jax.random.PRNGKey(seed)
    W = jax.random.normal(key, (d_sae, d)) / np.sqrt(d)
    params = {"W_enc": W.T, "b_enc": jnp.zeros(d_sae), "W_dec": W, "b_dec": jnp.asarray(x.mean(0))}
    x = jnp.asarray(x)

    def loss_fn(p):
        pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
        vals, idx = jax.lax.top_k(pre, k)
        h = jnp.zeros_like(pre).at[jnp.arange(x.shape[0])[:, None], idx].set(jax.nn.relu(vals))
        return jnp.mean(jnp.sum((h @ p["W_dec"] + p["b_dec"] - x) ** 2, -1))

    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        upd, s = opt.update(g, s)
        return optax.apply_updates(p, upd), s, loss

    for _ in range(steps):
        params, state, loss = step(params, state)
    return NumpyTopKSAE(params, k), float(loss)


def _batches(ids, bs=16):
    return [(ids[i:i + bs], np.ones_like(ids[i:i + bs])) for i in range(0, len(ids), bs)]


def test_ce_clean_lt_spliced_lt_zero_and_error_term_is_exact(tiny_lm):
    layer, hook = 0, "resid"
    rng = np.random.default_rng(1)
    train_ids = _sequences(rng, 96)
    acts = forward_activations(tiny_lm, {"input_ids": torch.as_tensor(train_ids)}, [(layer, hook)])[(layer, hook)]
    x = acts[:, 1:].reshape(-1, acts.shape[-1]).numpy()  # skip BOS positions, as the splice does
    sae, mse = _train_topk_sae(x, d_sae=64, k=4, steps=300)
    fvu = mse / x.var(0).sum()
    assert fvu < 0.5, f"SAE fit failed (FVU {fvu:.3f})"

    held_out = _sequences(np.random.default_rng(2), 48)
    m = ev_splice.evaluate_splice(tiny_lm, sae, _batches(held_out), layer, hook, special_ids=[BOS])
    assert m.n_tokens == 48 * (T - 1)

    # reference CE from transformers' own loss on the clean model (all targets are non-special)
    with torch.no_grad():
        ref = tiny_lm(input_ids=torch.as_tensor(held_out), labels=torch.as_tensor(held_out)).loss.item()
    assert m.ce_clean == pytest.approx(ref, rel=1e-5)
    assert m.ce_clean < np.log(V) - 0.5, "tiny LM did not learn the synthetic language"
    assert m.ce_spliced_with_error == pytest.approx(m.ce_clean, abs=1e-5)
    assert m.kl_spliced_with_error == pytest.approx(0.0, abs=1e-5)
    assert m.ce_zero > m.ce_spliced > m.ce_clean
    assert 0 < m.ce_loss_recovered_zero < 1
    assert m.ce_loss_recovered_zero == pytest.approx((m.ce_zero - m.ce_spliced) / (m.ce_zero - m.ce_clean))
    assert m.kl_zero > m.kl_spliced > 0
    assert m.kl_score_zero == pytest.approx(1 - m.kl_spliced / m.kl_zero)


def test_kl_and_ce_match_manual_computation_with_hand_hook(tiny_lm):
    """The variant losses equal a direct computation with an independent forward hook."""
    ids = _sequences(np.random.default_rng(3), 4)
    att = np.ones_like(ids)
    att[1, -5:] = 0  # a padded row: its last targets are not counted
    shift = np.linspace(-1, 1, 32).astype(np.float32)
    losses = lm_splice.splice_losses(tiny_lm, [(ids, att)], 0, "resid", {"shift": lambda x: x + shift}, [BOS])

    def manual_hook(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        new = out.clone()
        new[:, 1:] += torch.as_tensor(shift)  # not at BOS
        new[1, -5:] = out[1, -5:]  # not at padding
        return (new, *output[1:]) if isinstance(output, tuple) else new

    ids_t, att_t = torch.as_tensor(ids), torch.as_tensor(att)
    assert losses["clean"].n_tokens == losses["shift"].n_tokens
    with torch.no_grad():
        clean = torch.log_softmax(tiny_lm(input_ids=ids_t, attention_mask=att_t).logits.double(), -1)
        handle = tiny_lm.model.layers[0].register_forward_hook(manual_hook)
        try:
            shifted = torch.log_softmax(tiny_lm(input_ids=ids_t, attention_mask=att_t).logits.double(), -1)
        finally:
            handle.remove()
    ok = torch.as_tensor(att[:, 1:] * att[:, :-1]).bool()
    tgt = ids_t[:, 1:]
    ce = -shifted[:, :-1].gather(2, tgt[..., None])[..., 0][ok].mean().item()
    kl = (clean.exp() * (clean - shifted)).sum(-1)[:, :-1][ok].mean().item()
    assert losses["shift"].n_tokens == int(ok.sum())
    assert losses["shift"].ce == pytest.approx(ce, rel=1e-4)
    assert losses["shift"].kl == pytest.approx(kl, rel=1e-3)


def test_latent_ablation_and_steering_transforms():
    rng = np.random.default_rng(4)
    W = rng.normal(size=(10, 6)).astype(np.float32)
    sae = NumpyTopKSAE({"W_enc": W.T, "b_enc": np.zeros(10), "W_dec": W, "b_dec": np.zeros(6)}, k=3)
    x = rng.normal(size=(5, 6)).astype(np.float32)
    h = sae.encode(x)
    out = ev_splice.ablate_latents(sae, [2, 7])(x)
    np.testing.assert_allclose(out, x - h[:, [2, 7]] @ W[[2, 7]], atol=1e-5)
    out = ev_splice.ablate_latents(sae, [2], values=np.array([1.5]), keep_error=False)(x)
    h2 = h.copy()
    h2[:, 2] = 1.5
    np.testing.assert_allclose(out, h2 @ W, atol=1e-5)
    np.testing.assert_allclose(ev_splice.steer(sae, 3, 2.0)(x), x + 2.0 * W[3], atol=1e-6)
    with pytest.raises(ValueError, match="latent id"):
        ev_splice.ablate_latents(sae, [10])


@pytest.mark.parametrize("layer,hook", [(1, "attn_out"), (1, "mlp_out")])
def test_error_term_is_exact_at_sub_layer_hooks(tiny_lm, layer, hook):
    rng = np.random.default_rng(5)
    W = rng.normal(size=(48, 32)).astype(np.float32) / 6
    sae = NumpyTopKSAE({"W_enc": W.T, "b_enc": np.zeros(48), "W_dec": W, "b_dec": np.zeros(32)}, k=4)
    m = ev_splice.evaluate_splice(tiny_lm, sae, _batches(_sequences(rng, 16)), layer, hook, special_ids=[BOS])
    assert m.ce_spliced_with_error == pytest.approx(m.ce_clean, abs=1e-5)
    assert m.kl_spliced_with_error < 1e-6
    assert m.kl_zero > 0 and m.kl_spliced > 0  # the hook did act on this sub-layer


def test_padding_does_not_change_the_losses():
    """CE/KL of texts batched together (right-padded) equal the sums over each text run alone."""
    from sae_jax.evals.run import token_batches
    from sae_jax.lm.models import tiny_random_model

    model, tok = tiny_random_model("gpt2", 2, 32, seed=0)  # absolute positions: left padding would shift them
    tok.padding_side = "left"  # token_batches must pad on the right regardless
    texts = ["a short one", "a much longer text that needs no padding at all", "mid length text"]
    direction = np.linspace(-1, 1, 32).astype(np.float32)  # not constant: LayerNorm would remove that
    shift = {"shift": lambda x: x + direction}
    together = lm_splice.splice_losses(model, token_batches(tok, texts, 64, batch_size=3), 1, "resid", shift,
                                       tok.all_special_ids)
    alone = [lm_splice.splice_losses(model, token_batches(tok, [t], 64), 1, "resid", shift, tok.all_special_ids)
             for t in texts]
    for name in ("clean", "shift"):
        assert together[name].n_tokens == sum(a[name].n_tokens for a in alone)
        assert together[name].ce_sum == pytest.approx(sum(a[name].ce_sum for a in alone), rel=1e-5)
        assert together[name].kl_sum == pytest.approx(sum(a[name].kl_sum for a in alone), rel=1e-4, abs=1e-7)
    assert together["shift"].kl_sum > 1e-3 * together["shift"].n_tokens
