"""Evaluations of exported SAEs (definitions: METRICS.md). ``run.run_eval(EvalConfig(...))`` is
the ``sae-jax eval`` entry; each module below does one job and never imports torch (the
PyTorch side of splicing lives in ``sae_jax/lm/splice.py``, imported only when a model runs).

- ``core``: streamed reconstruction/sparsity metrics (FVU, nMSE, cosine, L2 ratio, L0, density).
- ``splice``: CE-loss recovered and KL score; transforms for latent ablation and steering.
- ``identifiability``: decoder-direction matching and code MCC (Hungarian matching).
- ``probing`` / ``stats``: logistic probes, selectivity, k-sparse probing; per-unit t-tests.
- ``shift``: base vs chat (Cohen's d, latent classes, delta-only latents, enrichment CIs).
- ``patching``: causal checks by ablating latents under a probe or label log-prob.
- ``corruptions`` / ``causal``: domain-removing corruptions of texts; per-latent causal effects on a
  behaviour score, effect sizes, consistency and damage gates, ranking, pre-registration.
- ``browser`` / ``clustering``: static feature browser; k-means themes.
- ``provenance``: model, hook, held-out texts and labels recorded by an extraction store.
- ``report`` / ``plots``: the self-contained HTML report.
"""
