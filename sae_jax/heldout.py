"""Held-out evaluation while training (``--eval.every N``).

A fixed sample of the held-out tail (the rows training never reads) is read once; every N steps
the current state is exported in memory (exactly what ``export/`` would load) and scored on it:
FVU, L0, dead fraction, and with ``--eval.splice`` CE loss recovered and KL with the SAE spliced
into the store's language model on held-out texts (the model is loaded once). The numbers are
those ``sae-jax eval`` gives for the same export, rows and texts.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from sae_jax.config import TrainConfig
from sae_jax.data.open import held_out_start_row
from sae_jax.data.paired import SPLIT_KEY
from sae_jax.errors import ConfigError
from sae_jax.evals.core import CoreAccumulator


class HeldoutEval:
    """The fixed held-out sample (and LM batches) of a run, and its scoring of a state."""

    def __init__(self, cfg: TrainConfig, source):
        """``source``: the full source (held-out tail included), before ``training_rows``."""
        self.cfg = cfg
        lo = held_out_start_row(source.n_rows, cfg.data.holdout_fraction)
        self.rows = np.arange(lo, min(source.n_rows, lo + cfg.eval.n_rows), dtype=np.int64)
        if not len(self.rows):
            raise ConfigError("eval.every needs held-out rows, but the held-out tail is empty; raise "
                              "--data.holdout-fraction")
        x = np.asarray(source.read(self.rows), np.float32)
        split = (source.metadata or {}).get(SPLIT_KEY) if hasattr(source, "metadata") else None
        # a transcoder's rows are [input | target]: it is scored on predicting the target
        self.x, self.target = (x[:, :split], x[:, split:]) if split else (x, x)
        self.lm = self._language_model(source) if cfg.eval.splice else None

    def _language_model(self, source):
        from sae_jax.evals.provenance import store_provenance
        from sae_jax.evals.run import token_batches
        from sae_jax.lm.models import load_model

        p = store_provenance(source)
        why = ("the data is not a store written by `sae-jax extract`" if p is None else
               "the store's rows are not one model's tokens (a delta or pooled store)" if p.model is None else
               "the store's texts are not installed here" if p.texts is None or p.doc_ids is None else None)
        texts = [] if why else p.heldout_texts(self.rows, self.cfg.eval.n_texts)
        if not why and not texts:
            why = "no text lies wholly in the held-out sample; raise --eval.n-rows"
        if why:
            raise ConfigError(f"eval.splice needs the store's model and held-out texts: {why}; drop --eval.splice "
                              "(FVU, L0 and dead fraction are still evaluated)")
        model, tok = load_model(p.model_spec())
        batches = token_batches(tok, texts, p.context_length or 128)
        return model, tok, batches, p.layer, p.hook

    def __call__(self, sae) -> dict[str, Any]:
        """Scores of an in-memory export (``sae_jax.export.state_sae``)."""
        t0 = time.perf_counter()
        acc = CoreAccumulator(self.target.shape[1], sae.d_sae)
        for i in range(0, len(self.x), 2048):
            x = self.x[i:i + 2048]
            h = sae.encode(x)
            acc.update(self.target[i:i + 2048], sae(x), h)
        m = acc.result()
        out = {"heldout/fvu": m.fvu, "heldout/l0": m.l0, "heldout/dead_frac": m.dead_fraction,
               "heldout/n_rows": m.n_tokens}
        if self.lm is not None:
            from sae_jax.evals.splice import evaluate_splice

            model, tok, batches, layer, hook = self.lm
            s = evaluate_splice(model, sae, batches, layer, hook, tok.all_special_ids)
            out |= {"heldout/ce_loss_recovered": s.ce_loss_recovered_zero, "heldout/ce_spliced": s.ce_spliced,
                    "heldout/ce_clean": s.ce_clean, "heldout/kl_spliced": s.kl_spliced}
        out["heldout/wall_s"] = time.perf_counter() - t0
        return out
