"""``sae-jax eval``: evaluate an exported SAE and write ``eval.json`` and ``report.html``.

Runs the evaluations whose inputs are given (activations always; an LM and texts for
splicing and the feature browser; labels for probing and t-tests; a second SAE or a true
dictionary for identifiability) and skips the others with a note saying what they need.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sae_jax.config import DataConfig
from sae_jax.evals import plots
from sae_jax.evals.core import CoreMetrics, evaluate_core, iter_batches, split_rows
from sae_jax.evals.provenance import row_labels, store_provenance
from sae_jax.evals.report import Report, figure_png, note, table
from sae_jax.export import decoder_directions

_UNSET = object()
EVALS = ("core", "splice", "identifiability", "probing", "patching", "stats", "shift", "clustering", "browser")


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate, on what, and where the results go."""

    sae: str = ""
    """Exported SAE folder (cfg.json + sae_weights.safetensors): this project's export or any SAELens SAE."""
    out_dir: str = ""
    """Where eval.json and report.html are written; empty = an 'eval' folder beside the SAE folder."""
    data: DataConfig = field(default_factory=DataConfig)
    """Activations to evaluate on (store, .npy or synthetic); left at its defaults, the training run's
    config.json next to the SAE folder (if any) supplies it."""
    run_config: str = ""
    """A training run's config.json whose data section to use (overrides --data)."""
    heldout_start: float | None = None
    """Start of the held-out split, as a fraction of the source's rows; None = exactly the rows the
    training run held out (its data.holdout_fraction tail). Synthetic data: a fresh draw of
    (stop - start) x synthetic_n_rows rows instead."""
    heldout_stop: float = 1.0
    """End of the held-out split, as a fraction of the source's rows."""
    max_rows: int = 1_000_000
    """At most this many held-out rows (tokens) for the core metrics; 0 = all."""
    batch_size: int = 2048
    """Rows per streamed batch (memory ~ batch_size x d_sae floats)."""
    model: str = ""
    """Language model (short name, folder or .gguf) for splicing and the browser; empty = the store's model."""
    layer: int | None = None
    """Block whose activation the SAE reads; None = the store's."""
    hook: Literal["resid", "mlp_out", "attn_out"] | None = None
    """Hook point inside the block; None = the store's."""
    text_file: str = ""
    """Held-out texts for splicing and the browser: a .txt file (one text per line) or .jsonl with a 'text'
    field; empty = the store's texts whose rows all lie in the held-out split."""
    n_texts: int = 64
    """Texts used from text_file."""
    seq_len: int = 128
    """Tokens per text (longer texts are truncated)."""
    labels: str = ""
    """A .npy of 0/1 labels, one per source row, for probing and per-unit t-tests; empty = the store's text
    labels (label_class vs the rest) when its corpus is labelled."""
    label_class: str = ""
    """With store text labels: the positive class (empty = the most common one in the held-out split)."""
    max_probe_rows: int = 20_000
    """Held-out rows used for probing (probes hold their inputs in memory)."""
    n_patch_latents: int = 5
    """Latents ablated together in the patching check (those most different between the classes)."""
    compare_sae: str = ""
    """A second SAE (e.g. another seed): decoder-direction matching and code MCC."""
    ground_truth: str = ""
    """A .npy true dictionary [n_features, d_in]; synthetic data supplies its own."""
    max_match: int = 8192
    """Skip Hungarian matching above this many latents (its cost grows as the cube)."""
    chat_store: str = ""
    """Activation store of the chat model on the same texts (row-aligned with --data): enables the base-vs-chat
    shift evaluation of this (base) SAE."""
    chat_sae: str = ""
    """SAE trained on the chat store (with --delta-sae: latents found only by the delta SAE)."""
    delta_sae: str = ""
    """SAE trained on chat - base activations."""
    alpha: float = 0.05
    """Significance level of the per-unit t-tests (uncorrected, Bonferroni and BH); the original study used 1e-5."""
    shift_threshold: float = 0.5
    """|Cohen's d| at which a latent counts as suppressed / amplified in chat."""
    n_clusters: int = 16
    """k-means clusters over decoder directions (themes)."""
    browser_latents: tuple[int, ...] = ()
    """Latents shown in the feature browser; empty = the most frequent alive latents."""
    n_browser_latents: int = 12
    """How many latents the browser shows when none are listed."""
    evals: tuple[str, ...] = EVALS
    """Evaluations to run, from: core, splice, identifiability, probing, patching, stats, shift, clustering, browser."""

    def __post_init__(self):
        unknown = [e for e in self.evals if e not in EVALS]
        if unknown:
            raise ValueError(f"unknown evaluations {unknown}; choose from {EVALS}")
        if not self.sae:
            raise ValueError("no SAE given: pass --sae <exported SAE folder>")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")


def _resolve_data(cfg: EvalConfig, sae_cfg: dict[str, Any]) -> tuple[DataConfig, str]:
    """--run-config, else --data if set, else the run's config.json beside the SAE, else the export's
    metadata; --data.verify applies to whichever it is."""
    data, where = _find_data(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, verify=False)), sae_cfg)
    return dataclasses.replace(data, verify=cfg.data.verify), where


def _find_data(cfg: EvalConfig, sae_cfg: dict[str, Any]) -> tuple[DataConfig, str]:
    if cfg.run_config:
        d = json.loads(Path(cfg.run_config).read_text())
        if "data" not in d:
            raise ValueError(f"{cfg.run_config} has no 'data' section; pass --data.store / --data.npy instead")
        return DataConfig(**d["data"]), cfg.run_config
    if cfg.data != DataConfig():
        return cfg.data, "--data"
    in_memory = (sae_cfg.get("metadata") or {}).get("in_memory_source")
    width = Path(cfg.sae).resolve().parent / "data_width.json"
    if in_memory or (width.exists() and json.loads(width.read_text()).get("in_memory_source")):
        raise ValueError(f"{cfg.sae} was trained on rows passed to sae_jax.train(cfg, source=...), which its "
                         "config does not describe; pass the rows to evaluate on with --data.npy or --data.store")
    guess = Path(cfg.sae).resolve().parent / "config.json"
    if guess.exists():
        d = json.loads(guess.read_text())
        if "data" in d:
            return DataConfig(**d["data"]), str(guess)
    exported = (sae_cfg.get("metadata") or {}).get("config", {}).get("data")
    if isinstance(exported, dict):
        return DataConfig(**exported), "the SAE's cfg.json metadata"
    return cfg.data, "--data (defaults)"


def _is_synthetic(d: DataConfig) -> bool:
    return not d.store and not d.npy


def fresh_synthetic_source(d: DataConfig, n_rows: int):
    """New rows from the same synthetic distribution (same dictionary, new codes and noise): truly held out."""
    from sae_jax.data.source import ArraySource
    from sae_jax.data.synthetic import ground_truth_dictionary, sparse_codes

    if d.synthetic == "shifts":  # same concept directions as the training rows, new codes and noise
        from sae_jax.data.open import synthetic_shifts

        directions = synthetic_shifts(d, n_rows=1).metadata["directions"]
        fresh = synthetic_shifts(d, n_rows, seed=1_000_003 + d.synthetic_seed, directions=directions)
        return ArraySource(fresh.read(np.arange(n_rows)), {
            "source": "synthetic shifts (fresh held-out draw)", "dictionary": directions,
            "codes": fresh.metadata["codes"]})
    dictionary = ground_truth_dictionary(d.synthetic_n_features, d.synthetic_d_in, d.synthetic_seed)
    rng = np.random.default_rng([d.synthetic_seed, 7919])
    seed = 1_000_003 + d.synthetic_seed  # codes from a seed the training rows never use
    x = np.empty((n_rows, d.synthetic_d_in), np.float32)
    for start in range(0, n_rows, 16384):
        stop = min(start + 16384, n_rows)
        codes = sparse_codes(stop - start, d.synthetic_n_features, d.synthetic_k, seed + start)
        x[start:stop] = codes @ dictionary + d.synthetic_noise * rng.standard_normal((stop - start, d.synthetic_d_in))
    return ArraySource(x, {"source": "synthetic (fresh held-out draw)", "dictionary": dictionary})


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def read_texts(path: str, n: int) -> list[str]:
    """First ``n`` non-empty texts of a .txt (one per line) or .jsonl ('text' field) file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no text file at {path!r}")
    texts = []
    with p.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if p.suffix == ".jsonl":
                rec = json.loads(line)
                if "text" not in rec:
                    raise ValueError(f"{path}: a .jsonl text file needs a 'text' field in every record")
                line = rec["text"]
            texts.append(line)
            if len(texts) >= n:
                break
    if not texts:
        raise ValueError(f"{path} holds no texts")
    return texts


def token_batches(tokenizer, texts: list[str], seq_len: int, batch_size: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(input_ids, attention_mask)`` NumPy batches, right-padded and truncated to ``seq_len``.

    Right padding keeps every text's positions as if it ran alone (left padding would shift them).
    """
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], truncation=True, max_length=seq_len, padding=True,
                        padding_side="right", return_tensors="np")
        out.append((enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)))
    return out


class _Context:
    """What the evaluations share: the SAE, source, split, LM and texts (loaded once, lazily)."""

    def __init__(self, cfg: EvalConfig):
        from sae_jax.data.open import held_out_start_row, open_source
        from sae_jax.export import load_sae

        self.cfg = cfg
        self.sae = load_sae(cfg.sae)
        meta = self.sae.cfg.get("metadata") or {}
        if isinstance(meta.get("steps"), int) and isinstance(meta.get("target_steps"), int) \
                and meta["steps"] != meta["target_steps"]:
            print(f"warning: {cfg.sae} is step {meta['steps']} of a run whose target is {meta['target_steps']} "
                  "steps (exported from an unfinished run)", file=sys.stderr)
        if self.sae.architecture in ("transcoder", "skip_transcoder"):
            raise ValueError(f"{cfg.sae} is a {self.sae.architecture}: `sae-jax eval` scores reconstructions of the "
                             "input; score a transcoder with sae_jax.evals.splice.evaluate_transcoder_splice")
        self.data_cfg, self.data_from = _resolve_data(cfg, self.sae.cfg)
        start = cfg.heldout_start if cfg.heldout_start is not None else 1.0 - self.data_cfg.holdout_fraction
        if _is_synthetic(self.data_cfg):
            n = int(round((cfg.heldout_stop - start) * self.data_cfg.synthetic_n_rows))
            split_rows(self.data_cfg.synthetic_n_rows, start, cfg.heldout_stop)  # validates the split
            self.source = fresh_synthetic_source(self.data_cfg, min(n, cfg.max_rows) if cfg.max_rows else n)
            self.rows = np.arange(self.source.n_rows, dtype=np.int64)
            self.data_from += "; synthetic data: a fresh draw (new codes, same dictionary), never trained on"
        else:
            self.source = open_source(self.data_cfg)
            if cfg.heldout_start is None:  # exactly the training run's held-out tail, row for row
                n = self.source.n_rows
                lo, hi = held_out_start_row(n, self.data_cfg.holdout_fraction), int(round(cfg.heldout_stop * n))
                hi = min(hi, lo + cfg.max_rows) if cfg.max_rows else hi
                if hi <= lo:
                    raise ValueError("no held-out rows: the training run used data.holdout_fraction=0 (or "
                                     "--heldout-stop cuts them off); pass --heldout-start explicitly")
                self.rows = np.arange(lo, hi, dtype=np.int64)
            else:
                self.rows = split_rows(self.source.n_rows, start, cfg.heldout_stop, cfg.max_rows)
        self.prov = store_provenance(self.source)
        self._lm = None
        self.lm_note = ""
        self.label_note = "label: --labels"
        self.core: CoreMetrics | None = None
        self.shifted: np.ndarray | None = None  # base-vs-chat shifted latents, once the shift eval ran
        self.shift_d: np.ndarray | None = None  # and their Cohen's d
        self.probe_data: Any = _UNSET  # shared by probing and patching

    def _texts(self) -> tuple[list[str], int] | None:
        if self.cfg.text_file:
            return read_texts(self.cfg.text_file, self.cfg.n_texts), self.cfg.seq_len
        p = self.prov
        texts = p.heldout_texts(self.rows, self.cfg.n_texts) if p is not None else []
        return (texts, p.context_length or self.cfg.seq_len) if texts else None

    @property
    def lm(self):
        """(model, tokenizer, token batches, layer, hook) or None without a model and texts."""
        if self._lm is not None:
            return self._lm
        cfg, p = self.cfg, self.prov
        layer = cfg.layer if cfg.layer is not None else (p.layer if p else None)
        hook = cfg.hook if cfg.hook is not None else (p.hook if p else None)
        texts = self._texts()
        if not (cfg.model or (p and p.model)) or layer is None or hook is None or texts is None:
            return None
        from sae_jax.lm.models import load_model

        spec = cfg.model or p.model_spec()
        print(f"eval: loading language model {spec} (from {'--model' if cfg.model else 'the store metadata'}; "
              "local files only, no remote code)", file=sys.stderr)
        model, tok = load_model(spec)
        self._lm = (model, tok, token_batches(tok, texts[0], texts[1]), layer, hook)
        self.lm_note = f"{spec}, block {layer}, hook {hook}, {len(texts[0])} held-out texts"
        return self._lm

    def labels(self, rows: np.ndarray) -> np.ndarray | None:
        """0/1 labels of ``rows`` (from --labels or the store's labelled texts), or None."""
        if self.cfg.labels:
            labels = np.load(self.cfg.labels)
            if labels.shape != (self.source.n_rows,):
                raise ValueError(f"{self.cfg.labels}: expected {self.source.n_rows} labels (one per source row), "
                                 f"got shape {labels.shape}")
            return labels[rows]
        got = row_labels(self.prov, rows, self.cfg.label_class) if self.prov else None
        if got is None:
            return None
        self.label_note = f"label: text class {got[1]!r} vs the rest"
        return got[0]


class Skipped(str):
    """An evaluation's reason for not running (returned instead of results)."""


def _two_classes(labels: np.ndarray) -> Skipped | None:
    classes = np.unique(labels)
    if classes.size < 2:
        return Skipped(f"the held-out rows hold a single class ({classes.tolist()}); choose a held-out range with "
                       "both classes (--heldout-start/--heldout-stop) or pass --labels")
    return None


def _core(ctx: _Context, report: Report) -> dict[str, Any]:
    m = evaluate_core(ctx.sae, ctx.source, ctx.rows, ctx.cfg.batch_size)
    ctx.core = m
    report.add("Reconstruction and sparsity", table(m.to_dict()),
               figure_png(plots.density_histogram(m.density_hist_counts, m.density_hist_edges, m.n_dead, m.n_tokens)),
               note("FVU = sum||x - x_hat||^2 / sum||x - mean x||^2 over the held-out split (float64). "
                    "nmse_vs_zero divides by sum||x||^2 instead. Densities < 1e-5 / 1e-6 include dead latents."))
    return m.to_dict()


def _splice(ctx: _Context, report: Report) -> dict[str, Any] | None:
    if ctx.lm is None:
        return None
    from sae_jax.evals.splice import evaluate_splice

    model, tok, batches, layer, hook = ctx.lm
    m = evaluate_splice(model, ctx.sae, batches, layer, hook, tok.all_special_ids)
    ce = {"clean": m.ce_clean, "spliced": m.ce_spliced, "spliced+error": m.ce_spliced_with_error,
          "zero-ablated": m.ce_zero, "mean-ablated": m.ce_mean}
    report.add("Splicing into the language model", table(m.to_dict()), figure_png(plots.splice_bars(ce)),
               note(f"{ctx.lm_note}; CE over {m.n_tokens:,} non-special target tokens. "
                    "spliced+error must equal clean (a check of the hook)."))
    return m.to_dict()


def _identifiability(ctx: _Context, report: Report) -> dict[str, Any] | None:
    from sae_jax.evals.identifiability import CrossCorrelation, match_directions, mcc_from_corr

    cfg, out, rows = ctx.cfg, {}, []
    W = decoder_directions(ctx.sae)
    truth = None
    if cfg.ground_truth:
        truth = np.load(cfg.ground_truth)
    elif isinstance(ctx.source.metadata.get("dictionary"), np.ndarray):
        truth = ctx.source.metadata["dictionary"]
    too_big = max(W.shape[0], truth.shape[0] if truth is not None else 0) > cfg.max_match
    if truth is not None and not too_big:
        mean_cos, share, _ = match_directions(truth, W)
        out["ground_truth"] = {"n_true_features": int(truth.shape[0]), "mean_matched_abs_cos": mean_cos,
                               "share_above_0.9": share}
        rows.append({"comparison": "true dictionary vs decoder rows", **out["ground_truth"]})
    if cfg.compare_sae and not too_big:
        from sae_jax.export import load_sae

        other = load_sae(cfg.compare_sae)
        mean_cos, share, _ = match_directions(W, decoder_directions(other))
        acc = CrossCorrelation(ctx.sae.d_sae, other.d_sae)
        for x in iter_batches(ctx.source, ctx.rows[: 200_000], cfg.batch_size):
            acc.update(ctx.sae.encode(x), other.encode(x))
        value, _ = mcc_from_corr(acc.corr())
        out["compare"] = {"other": cfg.compare_sae, "mean_matched_abs_cos": mean_cos, "share_above_0.9": share,
                          "code_mcc": value}
        rows.append({"comparison": "decoder rows vs other SAE", **out["compare"]})
    if not out:
        return None
    report.add("Identifiability", table(rows, ["comparison", "mean_matched_abs_cos", "share_above_0.9", "code_mcc"]),
               note("Hungarian matching by |cosine| (decoder rows) or |Pearson corr| (codes, MCC)."))
    return out


def _probe_data(ctx: _Context):
    """(activations, sparse codes, 0/1 labels) of the first max_probe_rows held-out rows, or None / Skipped."""
    if ctx.probe_data is _UNSET:
        import scipy.sparse as sp

        rows = ctx.rows[: ctx.cfg.max_probe_rows]
        labels = ctx.labels(rows)
        if labels is None or (skip := _two_classes(labels)):
            ctx.probe_data = None if labels is None else skip
        else:
            acts, codes = [], []
            for x in iter_batches(ctx.source, rows, ctx.cfg.batch_size):
                acts.append(x)
                codes.append(sp.csr_matrix(ctx.sae.encode(x)))
            ctx.probe_data = (np.concatenate(acts), sp.vstack(codes).tocsr(), labels)
    return ctx.probe_data


def _probing(ctx: _Context, report: Report) -> dict[str, Any] | None:
    from sae_jax.evals.probing import evaluate_probing

    data = _probe_data(ctx)
    if not isinstance(data, tuple):
        return data
    r = evaluate_probing(*data)
    report.add("Probing", table([{"features": "activations", **r.activations}, {"features": "SAE codes", **r.codes}],
                                ["features", "accuracy", "control_accuracy", "selectivity"]),
               figure_png(plots.sparse_probing_curve(r.sparse_ks, {"SAE latents": r.sparse_codes,
                                                                   "neurons": r.sparse_activations},
                                                     {"all neurons": r.activations["accuracy"]})),
               note(f"{ctx.label_note}; {r.n_train:,} train / {r.n_test:,} test held-out tokens; selectivity = "
                    "accuracy - accuracy on shuffled-label controls; k-sparse: top-k units by standardised class difference (Cohen's d)."))
    return {**r.to_dict(), "label": ctx.label_note}


def _patching(ctx: _Context, report: Report) -> dict[str, Any] | None:
    from sae_jax.evals.patching import patch_probe_effects
    from sae_jax.evals.probing import fit_probe, top_k_units

    data = _probe_data(ctx)
    if not isinstance(data, tuple):
        return data
    X, codes, y = data
    probe = fit_probe(X, y)
    latents = top_k_units(codes, y, ctx.cfg.n_patch_latents)
    r = patch_probe_effects(ctx.sae, X[y == 1], probe.decision_function, latents, methods=("zero", "mean"),
                            mean_codes=np.asarray(codes.mean(0)).ravel())
    rows = [{"method": m, "mean_effect": e.mean_effect, "d_z": e.d_z, "cohens_d": e.cohens_d} for m, e in r.methods.items()]
    report.add("Causal check: patching latents under a probe",
               table(rows, ["method", "mean_effect", "d_z", "cohens_d"]),
               table({"latents": ", ".join(map(str, r.latents)), "same direction for all methods": r.same_sign,
                      **{f"corr {k}": v for k, v in r.effect_correlation.items()}}),
               note(f"{ctx.label_note}. A logistic probe on the activations; the {len(latents)} latents with the largest standardised "
                    f"class-mean difference are set to 0 (zero) or their mean (mean) in the positive-class rows "
                    "(error term kept), and the change of the probe's logit is measured."))
    out = r.to_dict()
    for m in out["methods"].values():
        m.pop("effects")
    return out


def _stats(ctx: _Context, report: Report) -> dict[str, Any] | None:
    from sae_jax.evals.stats import ClassMoments, significance_counts, significant_units

    labels = ctx.labels(ctx.rows)
    if labels is None:
        return None
    if skip := _two_classes(labels):
        return skip
    neurons, latents = ClassMoments(ctx.sae.d_in), ClassMoments(ctx.sae.d_sae)
    for i, x in zip(range(0, len(ctx.rows), ctx.cfg.batch_size), iter_batches(ctx.source, ctx.rows, ctx.cfg.batch_size)):
        y = labels[i:i + len(x)]
        neurons.update(x, y)
        latents.update(ctx.sae.encode(x), y)
    p_n, p_l = neurons.ttest()[1], latents.ttest()[1]
    alpha = ctx.cfg.alpha
    out = {"neurons": significance_counts(p_n, alpha).to_dict(), "latents": significance_counts(p_l, alpha).to_dict()}
    report.add("Per-unit t-tests between classes",
               table([{"units": k, **v} for k, v in out.items()],
                     ["units", "n_units", "n_uncorrected", "n_bonferroni", "n_benjamini_hochberg", "alpha"]),
               figure_png(plots.pvalue_histograms({"neurons": p_n, "SAE latents": p_l})),
               note(f"{ctx.label_note}; Welch t-tests per unit over {len(ctx.rows):,} held-out tokens, α = {alpha:g}; "
                    "the significant units' indices are in eval.json."))
    for key, p in (("neurons", p_n), ("latents", p_l)):
        out[key]["significant"] = significant_units(p, alpha)
    return {**out, "label": ctx.label_note}


def _shift(ctx: _Context, report: Report) -> dict[str, Any] | None:
    if not ctx.cfg.chat_store:
        return None
    from sae_jax.data.store import open_store
    from sae_jax.evals.shift import evaluate_shift
    from sae_jax.export import load_sae

    cfg = ctx.cfg
    chat_sae = load_sae(cfg.chat_sae) if cfg.chat_sae else None
    delta_sae = load_sae(cfg.delta_sae) if cfg.delta_sae else None
    group = ctx.labels(ctx.rows)
    if group is not None and _two_classes(group):
        group = None  # one class only: no enrichment
    r = evaluate_shift(ctx.sae, ctx.source, open_store(cfg.chat_store), ctx.rows, cfg.batch_size, cfg.shift_threshold,
                       chat_sae=chat_sae, delta_sae=delta_sae, row_group=group)
    ctx.shifted = np.isin(r.classes, ["suppressed_in_chat", "amplified_in_chat"])
    ctx.shift_d = r.d
    frags = [table(r.counts),
             table([{"latent": j, "cohens_d": d} for j, d in r.top_suppressed[:10] + r.top_amplified[:10]],
                   ["latent", "cohens_d"])]
    if r.n_delta_only is not None:
        frags.append(table({"delta-SAE latents with no base/chat counterpart": r.n_delta_only}))
    if r.enrichment is not None:
        frags.append(table(r.enrichment))
    frags.append(note(f"Cohen's d (chat - base, pooled SD) of each latent over {r.n_tokens:,} held-out tokens; "
                      f"|d| >= {r.threshold} counts as shifted. Enrichment: {ctx.label_note}."))
    report.add("Base vs chat", *frags)
    return r.to_dict()


def _clustering(ctx: _Context, report: Report) -> dict[str, Any] | None:
    from sae_jax.evals.clustering import cluster_directions, shifted_share

    n = min(ctx.cfg.n_clusters, ctx.sae.d_sae)
    labels = cluster_directions(decoder_directions(ctx.sae), n, n_init=3)
    shifted = ctx.shifted
    rows = shifted_share(labels, shifted if shifted is not None else np.zeros(ctx.sae.d_sae, bool))
    for row in rows:
        row["latents"] = ", ".join(str(j) for j in np.nonzero(labels == row["cluster"])[0][:10])
    if shifted is None:
        rows = sorted(rows, key=lambda r: -r["size"])
    report.add("Themes: k-means over decoder directions",
               table(rows, ["cluster", "size", "n_shifted", "share_shifted", "latents"]),
               note("Clusters of unit-normalised decoder rows; share_shifted needs the base-vs-chat evaluation."))
    return {"labels": labels, "clusters": rows}


def _browser(ctx: _Context, report: Report) -> dict[str, Any] | None:
    p = ctx.prov
    per_text = ctx.lm is None and p is not None and p.pooled and p.texts is not None and p.doc_ids is not None
    if ctx.lm is None and not per_text:
        return None
    from sae_jax.evals import browser

    latents = list(ctx.cfg.browser_latents)
    how = "listed"
    if not latents and ctx.shifted is not None and ctx.shifted.any():
        by_shift = np.argsort(-np.abs(ctx.shift_d), kind="stable")
        latents, how = [int(j) for j in by_shift if ctx.shifted[j]][: ctx.cfg.n_browser_latents], "largest |Cohen's d|"
    if not latents and ctx.core is not None:
        latents, how = browser.pick_latents(ctx.core.frequency, ctx.cfg.n_browser_latents), "most frequent"
    if not latents:
        latents, how = list(range(min(ctx.cfg.n_browser_latents, ctx.sae.d_sae))), "first ids"
    path = Path(_out_dir(ctx.cfg)) / "browser.html"
    extra = {}
    if per_text:  # a pooled store: rank whole texts, not tokens
        top_texts, page_html = browser.text_browser(ctx.sae, ctx.source, ctx.rows, p.texts, p.doc_ids, latents)
        extra = {"top_texts": {str(j): t for j, t in top_texts.items()}}
    else:
        model, tok, batches, layer, hook = ctx.lm
        page_html = browser.build_browser(model, tok, ctx.sae, batches, layer, hook, latents).html
    path.write_text(page_html, encoding="utf-8")
    report.add("Feature browser", f"<p><a href='browser.html'>browser.html</a>: {len(latents)} latents ({how})"
               f"{', top texts' if per_text else ''}</p>")
    return {"path": str(path), "latents": [int(l) for l in latents], "chosen_by": how, **extra}


def _out_dir(cfg: EvalConfig) -> Path:
    return Path(cfg.out_dir) if cfg.out_dir else Path(cfg.sae).resolve().parent / "eval"


_RUNNERS = {"core": _core, "splice": _splice, "identifiability": _identifiability, "probing": _probing,
            "patching": _patching, "stats": _stats, "shift": _shift, "clustering": _clustering, "browser": _browser}
_NEEDS = {"splice": "a model, layer, hook and held-out texts (--model/--layer/--hook/--text-file, or a store from "
                    "`sae-jax extract` whose corpus is installed)",
          "browser": "the same inputs as splice",
          "probing": "--labels, or a store extracted from a labelled corpus",
          "stats": "--labels, or a store extracted from a labelled corpus",
          "patching": "--labels, or a store extracted from a labelled corpus",
          "shift": "--chat-store (chat-model activations of the same texts)",
          "identifiability": "--compare-sae, --ground-truth or synthetic data (and at most --max-match latents)"}


def headline(results: dict[str, Any]) -> dict[str, float]:
    """The numbers a training job prints at its end."""
    core, splice = results.get("core") or {}, results.get("splice") or {}
    out = {k: core.get(k) for k in ("fvu", "explained_variance", "l0", "dead_fraction", "alive_fraction")}
    out["ce_loss_recovered"] = splice.get("ce_loss_recovered_zero")
    return out


def format_headline(h: dict[str, float | None]) -> str:
    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)
    dead = None if h.get("dead_fraction") is None else 100 * h["dead_fraction"]
    return (f"FVU {f(h.get('fvu'), '.4f')}  L0 {f(h.get('l0'), '.1f')}  dead {f(dead, '.2f')}%  "
            f"CE-loss recovered {f(h.get('ce_loss_recovered'), '.4f')}")


def run_eval(cfg: EvalConfig) -> dict[str, float]:
    """Run the evaluations, write ``eval.json`` and ``report.html``, return the headline numbers."""
    out_dir = _out_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = _Context(cfg)
    report = Report(f"SAE evaluation: {cfg.sae}")
    report.add("Setup", table({"sae": cfg.sae, "architecture": ctx.sae.cfg.get("architecture"), "d_in": ctx.sae.d_in,
                               "d_sae": ctx.sae.d_sae, "k": ctx.sae.cfg.get("k"), "data from": ctx.data_from,
                               "source rows": ctx.source.n_rows,
                               "held-out rows": f"{ctx.rows[0]}..{ctx.rows[-1]} ({len(ctx.rows):,})"}),
               note("Training holds out the last data.holdout_fraction (default 10%) of a store or .npy, the default "
                    "split here; synthetic data is evaluated on a fresh draw."))
    results: dict[str, Any] = {"config": dataclasses.asdict(cfg), "skipped": {}, "seconds": {}}
    for name in cfg.evals:
        t0 = time.perf_counter()
        value = _RUNNERS[name](ctx, report)
        results["seconds"][name] = time.perf_counter() - t0
        if value is None:
            results["skipped"][name] = f"needs {_NEEDS[name]}"
        elif isinstance(value, Skipped):
            results["skipped"][name] = str(value)
        else:
            results[name] = value
    if results["skipped"]:
        report.add("Skipped", table(results["skipped"]))
    results["headline"] = headline(results)
    report.sections.insert(0, ("Headline", table(results["headline"])))
    (out_dir / "eval.json").write_text(json.dumps(_jsonable(results), indent=2))
    report.write(out_dir / "report.html")
    print(f"eval: {format_headline(results['headline'])}\nreport: {out_dir / 'report.html'}")
    return results["headline"]
