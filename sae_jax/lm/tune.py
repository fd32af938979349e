"""Splice-and-tune (``sae-jax tune``): fine-tune a model through an SAE spliced into it.

The SAE (an export, any architecture the loader reads) sits at ``(layer, hook)`` as a
``TorchSAE``; three methods are trained on the same batches of a labelled slice of the text
(a Wikipedia topic, a BBC category, or any labelled file), with the same token budget:

- ``cd``: only the per-latent scale c and shift d of the SAE's pre-activations (h = act(c ⊙ pre + d));
- ``mlp``: only one block's MLP (default: the splice layer's), the SAE frozen at c=1, d=0;
- ``full``: every model weight, the SAE frozen at c=1, d=0;
- ``cd_control``: c and d as in ``cd`` (same steps, learning rate, batch size, seed), trained on
  texts of the *other* labels (disjoint from the general-CE texts): what c,d tuning on any text
  does, so a latent's movement can be read relative to it.

Each is scored before/after on held-out texts of the slice (task CE) and on texts of the other
labels (general CE: the damage), with its trainable parameter count and training wall time.
Every method starts from the same model; batches are a pure function of (seed, step), so a
run interrupted at any step resumes from its last checkpoint (``OUT/<method>/checkpoint.pt``,
written atomically) and ends with the same numbers as an uninterrupted one. Inputs are
checked (hook present, SAE width = hook width, the SAE's own model) before any training.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae_jax.lm import hooks as lm_hooks
from sae_jax.lm.sae_torch import TorchSAE, sae_spliced

METHODS = ("cd", "mlp", "full", "cd_control")
CD_METHODS = ("cd", "cd_control")  # the methods that train only c and d
CONFIG_FILE = "tune.json"
RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class TuneConfig:
    """Which SAE to splice where, what to tune on, and how."""

    sae: str
    """Exported SAE folder (cfg.json + sae_weights.safetensors)."""
    out: str = "runs/tune"
    """Run folder: tune.json, results.json, one sub-folder per method (checkpoint, result, c/d)."""
    model: str = ""
    """Model (short name, HF folder, .gguf); default: the model the SAE's activations came from."""
    layer: int | None = None
    """Splice layer; default: the SAE's own layer (from its store's metadata)."""
    hook: str = ""
    """Splice hook point (resid, attn_out, mlp_out, mlp_hidden); default: the SAE's own."""
    text: str = "wikipedia"
    """Labelled text source: wikipedia, bbc, or a labelled .jsonl/.csv/.parquet file (with --label-field)."""
    text_field: str = "text"
    """Text column of a file source."""
    label_field: str | None = None
    """Label column of a file source."""
    label: str = "Mathematics"
    """The tuning slice: texts with this label (held-out texts of the other labels measure the damage)."""
    methods: tuple[str, ...] = ("cd", "mlp", "full")
    """Methods to run, in order: cd (c, d only), mlp (one block's MLP), full (every weight), cd_control (c, d
    trained on texts of the other labels)."""
    mlp_layer: int | None = None
    """Block whose MLP the 'mlp' baseline tunes (default: the splice layer)."""
    error_term: bool = True
    """Add the untuned SAE's error back (x' = x̂_cd + x − x̂): the start is the clean model."""
    steps: int = 100
    """Optimizer steps per method (same batches for every method)."""
    batch_size: int = 8
    """Texts per step."""
    context_length: int = 64
    """Tokens per text (truncated)."""
    lr_cd: float = 1e-2
    """Adam learning rate for c and d."""
    lr_mlp: float = 1e-4
    """Adam learning rate for the one-MLP baseline."""
    lr_full: float = 1e-5
    """Adam learning rate for full fine-tuning."""
    n_task_eval: int = 64
    """Held-out texts of the slice for task CE (never trained on)."""
    n_general_eval: int = 64
    """Texts of the other labels for general CE."""
    max_train_texts: int | None = None
    """Cap on the slice's training texts (default: every slice text not held out)."""
    eval_batch_size: int = 16
    """Texts per evaluation forward pass."""
    checkpoint_every: int = 25
    """Steps between checkpoints (and at the end of each method)."""
    seed: int = 0
    """Seed of the split and of the batch order."""
    torch_threads: int | None = None
    """torch.set_num_threads (default: torch's choice)."""
    device: str = "cpu"
    """Torch device (cpu, cuda, mps)."""
    allow_model_mismatch: bool = False
    """Splice an SAE whose export names another model than --model (refused by default)."""
    overwrite: bool = False
    """Start over in an OUT that holds a run with another configuration."""
    progress: bool = True
    """Print per-method progress lines."""

    def validate(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods {bad or '()'} invalid; choose from {METHODS}")
        if self.hook:
            lm_hooks.check_hook_name(self.hook)
        for name in ("steps", "batch_size", "context_length", "n_task_eval", "n_general_eval", "eval_batch_size",
                     "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if min(self.lr_cd, self.lr_mlp, self.lr_full) <= 0:
            raise ValueError("learning rates must be positive")

    def content_key(self) -> str:
        """Hash of the fields that change the numbers (a resumed run must match it)."""
        fields = dataclasses.asdict(self)
        for name in ("out", "overwrite", "progress", "torch_threads", "methods"):
            fields.pop(name)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- where the SAE came from

_SAELENS_HOOKS = {"hook_resid_post": "resid", "hook_attn_out": "attn_out", "hook_mlp_out": "mlp_out",
                  "mlp.hook_post": "mlp_hidden"}


def sae_provenance(sae) -> dict[str, Any]:
    """``{"model", "model_path", "layer", "hook"}`` the SAE was trained at (None where unknown).

    sae_jax exports: the extraction store named in the training config's data section.
    SAELens exports: ``model_name`` and ``hook_name`` (``blocks.L.hook_resid_post`` ...).
    """
    cfg = sae.cfg
    meta = cfg.get("metadata") or {}
    out: dict[str, Any] = {"model": None, "model_path": None, "layer": None, "hook": None}
    store = ((meta.get("config") or {}).get("data") or {}).get("store")
    if store:
        from sae_jax.data import store as st

        try:
            smeta = st.read_json(store, st.META_KEY) or {}
        except Exception:  # an unreadable store location: provenance unknown, not an error
            smeta = {}
        if smeta.get("role", "base") == "delta":
            smeta = {}
        out |= {k: smeta.get(k) for k in ("model", "model_path", "layer", "hook")}
    name = cfg.get("model_name") or meta.get("model_name")
    hook_name = cfg.get("hook_name") or meta.get("hook_name")
    if out["model"] is None and name:
        out["model"] = name
    if out["layer"] is None and isinstance(hook_name, str):
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", hook_name)
        if m and m.group(2) in _SAELENS_HOOKS:
            out["layer"], out["hook"] = int(m.group(1)), _SAELENS_HOOKS[m.group(2)]
    return out


def _same_model(a: str, b: str) -> bool:
    from sae_jax.lm.models import resolve_model

    ra, rb = resolve_model(a), resolve_model(b)
    return ra["name"].lower() == rb["name"].lower() or ra["path"] == rb["path"]


def resolve_target(cfg: TuneConfig, sae) -> tuple[str, int, str, str]:
    """``(model, layer, hook, note)`` from the flags and the SAE's provenance; refuses a mismatch."""
    prov = sae_provenance(sae)
    model = cfg.model or prov["model"]
    if not model:
        raise ValueError(f"{cfg.sae} does not say which model its activations came from; pass --model")
    if cfg.model and prov["model"] and not _same_model(cfg.model, prov["model"]) and not (
            prov["model_path"] and _same_model(cfg.model, prov["model_path"])):
        if not cfg.allow_model_mismatch:
            raise ValueError(
                f"{cfg.sae} was trained on activations of {prov['model']!r}, not {cfg.model!r}: an SAE is only "
                "meaningful in its own model (pass --allow-model-mismatch to splice it anyway)")
    layer = cfg.layer if cfg.layer is not None else prov["layer"]
    hook = cfg.hook or prov["hook"]
    if layer is None or not hook:
        raise ValueError(f"{cfg.sae} does not record its layer/hook; pass --layer and --hook")
    note = "model/layer/hook from " + ("flags" if cfg.model and cfg.layer is not None and cfg.hook else
                                       "the SAE's provenance and flags")
    return model, int(layer), str(hook), note


def check_splice_target(model: torch.nn.Module, sae, layer: int, hook: str) -> int:
    """Raise a clear ValueError unless ``sae`` fits ``(layer, hook)`` of ``model``; returns the hook width."""
    lm_hooks.check_hook_name(hook)
    n = lm_hooks.num_blocks(model)
    if not -n <= layer < n:
        raise ValueError(f"layer {layer} is out of range: the model has {n} blocks (0..{n - 1})")
    try:
        width = lm_hooks.hook_width(model, layer, hook)
    except ValueError as e:
        raise ValueError(f"the model ({type(model).__name__}) has no {hook!r} hook point at layer {layer}: {e}") from e
    if width != sae.d_in:
        raise ValueError(f"SAE width d_in={sae.d_in} does not match the {hook!r} activation width {width} of "
                         f"{type(model).__name__} at layer {layer}: wrong SAE, hook or model")
    return width


# ---------------------------------------------------------------- data

@dataclass(frozen=True)
class TuneData:
    train: tuple[str, ...]
    task_eval: tuple[str, ...]
    general_eval: tuple[str, ...]
    control: tuple[str, ...] = ()
    """Texts of the other labels, disjoint from general_eval, as many as ``train`` where there are enough."""


def split_texts(texts, labels, label: str, n_task_eval: int, n_general_eval: int, seed: int,
                max_train: int | None = None) -> TuneData:
    """Slice texts (shuffled): the first n_task_eval held out, the rest for training; general = other labels.

    The control set (for ``cd_control``) is the next ``len(train)`` texts of the other labels after the general ones."""
    if labels is None:
        raise ValueError("the text source has no labels: tuning needs a labelled slice (--text wikipedia, bbc, "
                         "or a file with --label-field)")
    labels = np.asarray(labels)
    inside = np.flatnonzero(labels == label)
    if not len(inside):
        raise ValueError(f"no text has label {label!r}; labels: {sorted(set(labels.tolist()))}")
    rng = np.random.default_rng([seed, 1])
    inside = rng.permutation(inside)
    outside = rng.permutation(np.flatnonzero(labels != label))
    if len(inside) <= n_task_eval:
        raise ValueError(f"label {label!r} has {len(inside)} texts: not enough for {n_task_eval} held-out texts "
                         "and a training set; lower --n-task-eval")
    if not len(outside):
        raise ValueError(f"every text has label {label!r}: no general texts to measure the damage on")
    train = inside[n_task_eval:][:max_train]
    pick = lambda idx: tuple(texts[i] for i in idx)  # noqa: E731
    control = outside[n_general_eval:][:len(train)]
    return TuneData(pick(train), pick(inside[:n_task_eval]), pick(outside[:n_general_eval]), pick(control))


def step_texts(n_train: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Indices of the training texts of ``step``: epochs of fresh permutations, a pure function of the step."""
    out = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n_train)
        perm = np.random.default_rng([seed, 2, epoch]).permutation(n_train)
        take = perm[offset:offset + batch_size - len(out)]
        out.extend(take.tolist())
        pos += len(take)
    return np.asarray(out)


def _encode(tokenizer, texts, context_length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(list(texts), truncation=True, max_length=context_length, padding=True,
                    padding_side="right", return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def _mask(ids, att, special) -> torch.Tensor:
    return att.bool() & ~torch.isin(ids, special)


def lm_ce(model, ids, att, special) -> tuple[torch.Tensor, int]:
    """Summed next-token CE over the targets the evaluation splice counts, and their number."""
    logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits
    ok = _mask(ids, att, special)[:, 1:] & att[:, :-1].bool()
    picked = logits[:, :-1][ok]
    lp = torch.log_softmax(picked.to(torch.promote_types(picked.dtype, torch.float32)), dim=-1)  # keeps float64
    tgt = ids[:, 1:][ok]
    return -lp.gather(1, tgt[:, None]).sum(), int(tgt.numel())


# ---------------------------------------------------------------- training

class _Tuner:
    """The model with the SAE spliced in, and the per-method trainable sets."""

    def __init__(self, cfg: TuneConfig, model, tokenizer, sae: TorchSAE, layer: int, hook: str):
        self.cfg, self.model, self.tok, self.sae = cfg, model, tokenizer, sae
        self.layer, self.hook = layer, hook
        self.device = next(model.parameters()).device
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)), device=self.device)
        # every method starts here: weights as loaded, c = 1, d = 0
        self.initial = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def reset(self) -> None:
        self.model.load_state_dict(self.initial)
        with torch.no_grad():
            self.sae.c.fill_(1.0)
            self.sae.d.zero_()

    def trainable(self, method: str) -> dict[str, torch.nn.Parameter]:
        if method in CD_METHODS:
            return {"sae.c": self.sae.c, "sae.d": self.sae.d}
        if method == "mlp":
            layer = self.cfg.mlp_layer if self.cfg.mlp_layer is not None else self.layer
            mlp = lm_hooks.hook_module(self.model, layer, "mlp_out")
            prefix = next(n for n, m in self.model.named_modules() if m is mlp)
            return {f"{prefix}.{n}": p for n, p in mlp.named_parameters()}
        return dict(self.model.named_parameters())

    def lr(self, method: str) -> float:
        return {"cd": self.cfg.lr_cd, "cd_control": self.cfg.lr_cd, "mlp": self.cfg.lr_mlp, "full": self.cfg.lr_full}[method]

    def ce(self, splice, texts, spliced: bool = True) -> dict[str, float]:
        total, n = 0.0, 0
        splice.active = spliced
        with torch.no_grad():
            for i in range(0, len(texts), self.cfg.eval_batch_size):
                ids, att = _encode(self.tok, texts[i:i + self.cfg.eval_batch_size], self.cfg.context_length, self.device)
                splice.mask = _mask(ids, att, self.special)
                s, k = lm_ce(self.model, ids, att, self.special)
                total, n = total + float(s.double()), n + k
        splice.active = True
        return {"ce": total / n, "n_tokens": n}


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a checkpoint is never half-written


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


class _Interrupted(Exception):
    pass


def _train_method(t: _Tuner, splice, data: TuneData, method: str, folder: Path,
                  stop_after_steps: int | None) -> dict[str, Any] | None:
    """Train one method (resuming from its checkpoint); None if stopped early."""
    cfg = t.cfg
    t.reset()
    params = t.trainable(method)
    for p in t.model.parameters():
        p.requires_grad_(False)
    t.sae.c.requires_grad_(False)
    t.sae.d.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(list(params.values()), lr=t.lr(method))
    texts = data.control if method == "cd_control" else data.train
    ckpt_path = folder / "checkpoint.pt"
    step, wall, losses, tokens = 0, 0.0, [], 0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=t.device, weights_only=False)
        with torch.no_grad():
            for name, value in ckpt["params"].items():
                params[name].copy_(value)
        opt.load_state_dict(ckpt["optim"])
        step, wall, losses, tokens = ckpt["step"], ckpt["wall_s"], ckpt["losses"], ckpt["tokens"]
        if cfg.progress:
            print(f"[{method}] resuming at step {step} from {ckpt_path}", flush=True)

    def save():
        _atomic_torch_save({"step": step, "params": {n: p.detach().clone() for n, p in params.items()},
                            "optim": opt.state_dict(), "wall_s": wall, "losses": losses, "tokens": tokens}, ckpt_path)

    # SIGTERM / Ctrl-C set a flag checked between steps, so a checkpoint never holds half a step.
    interrupted: list[int] = []
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, lambda *a: interrupted.append(1))
        except ValueError:  # not the main thread: no handlers, Ctrl-C raises as usual
            pass
    t0 = None
    try:
        while step < cfg.steps:
            t0 = time.perf_counter()
            idx = step_texts(len(texts), cfg.batch_size, step, cfg.seed)
            ids, att = _encode(t.tok, [texts[i] for i in idx], cfg.context_length, t.device)
            splice.mask = _mask(ids, att, t.special)
            total, n = lm_ce(t.model, ids, att, t.special)
            loss = total / max(n, 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            tokens += n
            losses.append(float(loss.detach()))
            wall += time.perf_counter() - t0
            t0 = None
            if cfg.progress and (step % max(1, cfg.steps // 10) == 0 or step == cfg.steps):
                print(f"[{method}] step {step}/{cfg.steps}  loss {np.mean(losses[-10:]):.4f}  "
                      f"{tokens / max(wall, 1e-9):.0f} tok/s", flush=True)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save()
            if interrupted:
                raise _Interrupted
            if stop_after_steps is not None and step >= stop_after_steps and step < cfg.steps:
                save()
                return None
    except (KeyboardInterrupt, _Interrupted):
        save()
        print(f"\n[{method}] interrupted: checkpoint at step {step} in {folder}; rerun the same command to resume")
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for p in params.values():
            p.requires_grad_(False)
    return {"steps": step, "train_wall_s": wall, "train_tokens": tokens, "loss_first10": float(np.mean(losses[:10])),
            "loss_last10": float(np.mean(losses[-10:])),
            "trainable_params": int(sum(p.numel() for p in params.values()))}


def run_tune(cfg: TuneConfig, stop_after_steps: int | None = None) -> dict[str, Any]:
    """Run (or resume) every method; returns and writes ``OUT/results.json``.

    ``stop_after_steps`` (tests): stop the first unfinished method after that many steps, as an interruption would.
    """
    from sae_jax.data.text import load_text
    from sae_jax.export import load_sae
    from sae_jax.lm.models import load_model

    cfg.validate()
    out = Path(cfg.out)
    sae_np = load_sae(cfg.sae)
    model_name, layer, hook, note = resolve_target(cfg, sae_np)
    data_src = load_text(cfg.text, field=cfg.text_field, label_field=cfg.label_field)
    data = split_texts(data_src.texts, data_src.labels, cfg.label, cfg.n_task_eval, cfg.n_general_eval, cfg.seed,
                       cfg.max_train_texts)
    if "cd_control" in cfg.methods and not data.control:
        raise ValueError(f"cd_control needs texts of labels other than {cfg.label!r} beyond the {len(data.general_eval)} "
                         "general-CE ones; lower --n-general-eval")
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    model, tok = load_model(model_name)
    check_splice_target(model, sae_np, layer, hook)  # before any training: a clear error, not a shape crash
    if cfg.mlp_layer is not None and "mlp" in cfg.methods:
        lm_hooks.hook_module(model, cfg.mlp_layer, "mlp_out")
    model = model.to(cfg.device)

    key = cfg.content_key()
    saved = json.loads((out / CONFIG_FILE).read_text()) if (out / CONFIG_FILE).exists() else None
    if saved is not None and saved.get("content_key") != key:
        if not cfg.overwrite:
            raise ValueError(f"{out} holds a tune run with another configuration; rerun with its settings to "
                             "resume, choose another --out, or pass --overwrite")
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / CONFIG_FILE, {"content_key": key, "config": dataclasses.asdict(cfg), "model": model_name,
                                    "layer": layer, "hook": hook, "target_from": note})

    sae = TorchSAE(sae_np).to(cfg.device)
    tuner = _Tuner(cfg, model, tok, sae, layer, hook)
    results_path = out / RESULTS_FILE
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    with sae_spliced(model, sae, layer, hook, error_term=cfg.error_term) as splice:
        if "before" not in results:
            tuner.reset()
            t0 = time.perf_counter()
            results["before"] = {
                "task_clean": tuner.ce(splice, data.task_eval, spliced=False),
                "general_clean": tuner.ce(splice, data.general_eval, spliced=False),
                "task": tuner.ce(splice, data.task_eval),
                "general": tuner.ce(splice, data.general_eval),
                "eval_wall_s": time.perf_counter() - t0,
            }
            results |= {"model": model_name, "layer": layer, "hook": hook, "label": cfg.label,
                        "n_train_texts": len(data.train), "n_control_texts": len(data.control),
                        "n_task_eval": len(data.task_eval),
                        "n_general_eval": len(data.general_eval), "error_term": cfg.error_term,
                        "sae": str(cfg.sae), "sae_d_sae": sae.d_sae, "sae_architecture": sae.architecture,
                        "total_params": int(sum(p.numel() for p in model.parameters())), "methods": {}}
            _write_json(results_path, results)
            if cfg.progress:
                b = results["before"]
                print(f"before: task CE {b['task']['ce']:.4f} (clean {b['task_clean']['ce']:.4f})  general CE "
                      f"{b['general']['ce']:.4f} (clean {b['general_clean']['ce']:.4f})", flush=True)
        for method in cfg.methods:
            if method in results["methods"]:
                continue
            folder = out / method
            folder.mkdir(exist_ok=True)
            trained = _train_method(tuner, splice, data, method, folder, stop_after_steps)
            if trained is None:
                return {"stopped": True, "method": method, "out": str(out)}
            after = {"task": tuner.ce(splice, data.task_eval), "general": tuner.ce(splice, data.general_eval)}
            b = results["before"]
            entry = trained | {
                "task_ce_before": b["task"]["ce"], "task_ce_after": after["task"]["ce"],
                "general_ce_before": b["general"]["ce"], "general_ce_after": after["general"]["ce"],
                "task_gain": b["task"]["ce"] - after["task"]["ce"],
                "general_damage": after["general"]["ce"] - b["general"]["ce"], "lr": tuner.lr(method)}
            if method in CD_METHODS:
                from safetensors.torch import save_file

                save_file({"c": sae.c.detach().cpu().contiguous(), "d": sae.d.detach().cpu().contiguous()},
                          str(folder / "scale_shift.safetensors"))
            results["methods"][method] = entry
            _write_json(results_path, results)
            if cfg.progress:
                print(f"[{method}] task CE {entry['task_ce_before']:.4f} -> {entry['task_ce_after']:.4f}  general CE "
                      f"{entry['general_ce_before']:.4f} -> {entry['general_ce_after']:.4f}  "
                      f"{entry['trainable_params']:,} params  {entry['train_wall_s']:.1f} s", flush=True)
    tuner.reset()
    full_gain = results["methods"].get("full", {}).get("task_gain")
    for entry in results["methods"].values():
        entry["share_of_full_gain"] = entry["task_gain"] / full_gain if full_gain else None
    _write_json(results_path, results)
    if cfg.progress:
        print(format_table(results))
    return results


def format_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    rows = ["| method | trainable params | task CE before → after | general CE before → after | "
            "share of full's task gain | train wall s |", "|---|---|---|---|---|---|"]
    for name, e in results["methods"].items():
        share = e.get("share_of_full_gain")
        rows.append(f"| {name} | {e['trainable_params']:,} | {e['task_ce_before']:.4f} → {e['task_ce_after']:.4f} | "
                    f"{e['general_ce_before']:.4f} → {e['general_ce_after']:.4f} | "
                    f"{'' if share is None else f'{share:.2f}'} | {e['train_wall_s']:.1f} |")
    return "\n".join(rows)
