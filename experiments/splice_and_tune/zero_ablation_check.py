"""Check: zeroing SmolLM2's residual at every real position of a block gives logits 0 -> CE = ln V."""
import math, torch
from sae_jax.lm.models import load_model
from sae_jax.lm.splice import spliced, splice_mask
from sae_jax.evals.splice import zero_ablate
torch.set_num_threads(1)
model, tok = load_model("smollm2-135m-instruct")
cfg = model.config
print("model_type", cfg.model_type, "vocab_size", cfg.vocab_size, "lm_head rows", model.get_output_embeddings().weight.shape[0],
      "attention_bias", getattr(cfg, "attention_bias", None), "mlp_bias", getattr(cfg, "mlp_bias", None),
      "hidden_act", cfg.hidden_act, "tie", cfg.tie_word_embeddings, "lm_head bias", model.get_output_embeddings().bias)
print("bos_token", tok.bos_token, "ids of 'The cat sat.':", tok("The cat sat on the mat.")["input_ids"])
print("n params with 'bias' in name:", sum('bias' in n for n, _ in model.named_parameters()))
enc = tok(["The cat sat on the mat.", "Euler proved the formula."], return_tensors="pt", padding=True)
ids, att = enc["input_ids"], enc["attention_mask"]
for layer in (0, 9, 20):
    with spliced(model, layer, "resid") as s:
        s.transform = zero_ablate(); s.mask = splice_mask(ids, att, tok.all_special_ids)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=att).logits
    real = s.mask
    lp = torch.log_softmax(logits[real].double(), -1)
    print(f"layer {layer}: max |logit| at real positions {logits[real].abs().max().item():.3e}, "
          f"CE of any target {-lp[:, 0].mean().item():.6f}, ln V {math.log(cfg.vocab_size):.6f}")
