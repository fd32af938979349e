"""Evaluations of exported SAEs: reconstruction, splicing into the LM, probing, statistics,
identifiability, base-vs-chat shifts, causal patching, feature browser, clustering.

Each module does one job and never imports torch; the PyTorch side of splicing lives in
``sae_jax/lm/splice.py``. ``run.run_eval(EvalConfig(...))`` is the ``sae-jax eval`` entry.
"""
