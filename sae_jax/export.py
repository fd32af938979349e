"""Export to and load from the SAELens on-disk format (``cfg.json`` + ``sae_weights.safetensors``).

Weights: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in], and
``threshold`` [d_sae] for JumpReLU (BatchTopK exports as a JumpReLU with its learned
threshold, as SAELens does). Input scaling used in training is folded into the weights,
so the exported SAE takes raw activations: with inputs scaled by s during training,
W_enc' = s W_enc, W_dec' = W_dec / s, b_dec' = b_dec / s (b_enc and thresholds unchanged).

ZCA whitening (``--data.whiten``) is folded the same way when nothing non-linear sits
between it and the encoder (``sae_jax.whitening.fold_into_sae``); behind a per-token
LayerNorm it cannot be, and ``whitening.safetensors`` is written beside the weights (``load_sae``
applies it before the LayerNorm and undoes it after decoding; SAELens ignores the file).
Gated SAEs export SAELens' ``gated`` tensors (``W_enc b_gate r_mag b_mag W_dec b_dec``, no b_enc);
transcoders ``transcoder`` / ``skip_transcoder`` (``d_out``, ``W_dec`` [d_sae, d_out], ``W_skip`` [d_out, d_in],
``apply_b_dec_to_input: false``), whose ``__call__`` here includes the skip term as SAELens' forward does.
Matryoshka BatchTopK exports as a JumpReLU, as SAELens saves it.
A BatchTopK crosscoder (no SAELens format exists) exports as a JumpReLU on [base | tuned] rows of width
d_in = 2·``crosscoder_d_model``: W_enc [2d, F] stacks the per-model encoders, W_dec [F, 2d] is
[W_dec_base | W_dec_tuned], b_dec [2d] is [b_dec_base | b_dec_tuned], threshold [F] is per latent;
``load_crosscoder`` reads it (``sae_jax.evals.crosscoder.split_decoder`` splits the decoder).
A signed shift-autoencoder code exports as architecture ``linear`` (h = pre-activation; this
loader reads it, SAELens has no such architecture) or split into a SAELens ``standard`` SAE
with 2F latents (``split_signed``).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from safetensors.numpy import load_file, save_file

from sae_jax.errors import ExportError
from sae_jax.normalization import layer_norm_in, layer_norm_out
from sae_jax.whitening import Whitening, fold_into_sae

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
WHITENING_FILE = "whitening.safetensors"
ARCHITECTURES = ("standard", "topk", "jumprelu", "linear", "gated", "transcoder", "skip_transcoder", "code_layernorm")
_REQUIRED = ("W_enc", "b_enc", "W_dec", "b_dec")
EXPORT_FILES = (CFG_FILE, WEIGHTS_FILE, WHITENING_FILE)  # all an export writes: what it may replace
# Tensors each architecture needs beyond / instead of _REQUIRED (SAELens names).
_ARCH_TENSORS = {"jumprelu": _REQUIRED + ("threshold",),
                 "gated": ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"),
                 "skip_transcoder": _REQUIRED + ("W_skip",),
                 # the SSAE with a LayerNorm over the code (sae_jax only; SAELens has no such architecture)
                 "code_layernorm": _REQUIRED + ("code_gamma", "code_beta")}
TRANSCODERS = ("transcoder", "skip_transcoder")


def fold_input_scale(params: dict[str, np.ndarray], scale: float) -> dict[str, np.ndarray]:
    """Weights that act on raw inputs, for an SAE trained on inputs multiplied by ``scale``."""
    out = dict(params)
    out["W_enc"] = params["W_enc"] * scale
    out["W_dec"] = params["W_dec"] / scale
    out["b_dec"] = params["b_dec"] / scale
    return out


# Architectures whose codes survive a positive per-latent rescaling (ReLU, JumpReLU with its threshold
# scaled alike, TopK when the scale is the same for every latent): SAEBench-ready unit-norm exports.
UNIT_NORM_ARCHITECTURES = ("standard", "jumprelu", "topk")


def unit_norm_decoder(params: dict[str, np.ndarray], architecture: str, rtol: float = 1e-4) -> dict[str, np.ndarray]:
    """Raw-space weights with unit-norm decoder rows and the same reconstruction (SAEBench's SCR, TPP and
    absorption evals need unit rows).

    Row i's norm c_i moves into the code: W_dec_i / c_i, W_enc[:, i] · c_i, b_enc_i · c_i, threshold_i · c_i,
    so h_i becomes c_i · h_i, which ReLU and JumpReLU keep; a TopK SAE keeps its top-k order only when
    every c_i is the same (the folded input scale of a unit-norm-trained decoder), so other cases are refused.
    """
    if architecture not in UNIT_NORM_ARCHITECTURES:
        raise ExportError(f"a unit-norm decoder export is available for {UNIT_NORM_ARCHITECTURES}, not "
                          f"{architecture!r}: export without --unit-norm-decoder")
    c = np.linalg.norm(np.asarray(params["W_dec"], np.float64), axis=1)
    if (c <= 0).any():
        raise ExportError(f"{int((c <= 0).sum())} decoder rows are zero: they have no unit-norm direction")
    if architecture == "topk" and not np.allclose(c, c.mean(), rtol=rtol):
        raise ExportError("this TopK SAE's decoder rows have different norms: moving them into the code would change "
                          "which latents are in the top k; export without --unit-norm-decoder")
    return _row_norms_into_codes(params, c)


def _row_norms_into_codes(params: dict[str, np.ndarray], c: np.ndarray) -> dict[str, np.ndarray]:
    """W_dec_i / c_i, W_enc[:, i] · c_i, b_enc_i · c_i, threshold_i · c_i: latent i's code times c_i."""
    out = dict(params)
    out["W_dec"] = (params["W_dec"] / c[:, None]).astype(np.float32)
    out["W_enc"] = (params["W_enc"] * c[None, :]).astype(np.float32)
    out["b_enc"] = (params["b_enc"] * c).astype(np.float32)
    if "threshold" in params:
        out["threshold"] = (params["threshold"] * c).astype(np.float32)
    return out


def fold_decoder_norm_rescaling(cfg: dict[str, Any], params: dict[str, np.ndarray], path) -> dict[str, np.ndarray]:
    """SAELens TopK's ``rescale_acts_by_decoder_norm``: encode = TopK(pre · ‖W_dec‖), decode = (h / ‖W_dec‖) W_dec
    + b_dec. Folded: the same codes and reconstructions from plain TopK weights (and the flag cleared)."""
    if cfg.get("architecture") != "topk":
        raise ExportError(f"{path}: rescale_acts_by_decoder_norm is supported for SAELens 'topk' SAEs only, not "
                          f"{cfg.get('architecture')!r}; fold it in SAELens first (sae.fold_W_dec_norm()) and save again")
    c = np.linalg.norm(np.asarray(params["W_dec"], np.float64), axis=1)
    if (c <= 0).any():
        raise ExportError(f"{path}: {int((c <= 0).sum())} decoder rows are zero, so rescale_acts_by_decoder_norm "
                          "divides by zero; these latents cannot be loaded")
    cfg["rescale_acts_by_decoder_norm"] = False
    cfg["metadata"] = dict(cfg.get("metadata") or {}) | {"rescale_acts_by_decoder_norm": "folded on load"}
    return _row_norms_into_codes(params, c)


def split_signed(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A linear (signed) code as a ReLU SAE with 2F latents: h = relu(pre) − relu(−pre).

    Latent i keeps the positive part, latent F + i the negative part with negated encoder and
    decoder, so decode(encode(x)) is unchanged and SAELens' 'standard' architecture loads it.
    """
    return {"W_enc": np.concatenate([params["W_enc"], -params["W_enc"]], axis=1),
            "b_enc": np.concatenate([params["b_enc"], -params["b_enc"]]),
            "W_dec": np.concatenate([params["W_dec"], -params["W_dec"]], axis=0),
            "b_dec": params["b_dec"]}


def _completed(params: dict[str, np.ndarray], cfg: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """float32 contiguous tensors and the cfg with SAELens' defaults and the shapes filled in."""
    arrays = {name: np.ascontiguousarray(np.asarray(value, dtype=np.float32)) for name, value in params.items()}
    d_sae, d_in = arrays["W_dec"].shape
    full_cfg = {
        "d_in": int(d_in), "d_sae": int(d_sae), "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
    } | cfg
    if full_cfg["architecture"] not in ARCHITECTURES:
        raise ExportError(f"cannot export architecture {full_cfg['architecture']!r}; known: {ARCHITECTURES}")
    return arrays, full_cfg


def write_sae(path: str | os.PathLike, params: dict[str, np.ndarray], cfg: dict[str, Any],
              whitening: Whitening | None = None) -> Path:
    """Write an SAE folder: files go to a temp folder that replaces ``path`` once complete.

    ``whitening``: an unfolded input whitening, written beside as ``whitening.safetensors``."""
    path = Path(path)
    arrays, full_cfg = _completed(params, cfg)
    _check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh temporary sibling (never a fixed name: a folder of that name may be someone else's).
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        save_file(arrays, str(tmp / WEIGHTS_FILE))
        if whitening is not None:
            save_file({k: np.ascontiguousarray(v) for k, v in whitening.to_arrays().items()},
                      str(tmp / WHITENING_FILE))
        (tmp / CFG_FILE).write_text(json.dumps(full_cfg, indent=2, sort_keys=True, default=str))
        old = None
        if path.exists():  # an earlier export (checked above): out of the way, then gone once replaced
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            path.rename(old / path.name)
        tmp.rename(path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)  # ours: created above
        if isinstance(err, Exception) and not isinstance(err, ExportError):  # e.g. a full disk
            raise ExportError(f"writing the export to {path} failed ({' '.join(str(err).split())[:300]}); "
                              "nothing was replaced: free space or choose another --out") from err
        raise
    if old is not None:
        shutil.rmtree(old)  # holds only the earlier export's files
    return path


def _check_replaceable(path: Path) -> None:
    """An export may replace only an empty folder or an earlier export (only export files in it)."""
    if not path.exists():
        return
    if not path.is_dir():
        raise ExportError(f"cannot export to {path}: it is a file; choose another --out")
    children = list(path.iterdir())
    if not children:
        return
    foreign = [c.name for c in children if c.name not in EXPORT_FILES or not c.is_file()]
    if foreign or not (path / CFG_FILE).is_file():
        raise ExportError(f"cannot export to {path}: it is not an earlier SAE export (it holds "
                          f"{', '.join(sorted(foreign)[:5]) or 'no ' + CFG_FILE}); nothing was changed: choose "
                          "an empty or new --out folder")


def export_state(path: str | os.PathLike, arch, state, metadata: dict[str, Any] | None = None,
                 layer_norm: bool = False, unit_norm: bool = False) -> Path:
    """Export a TrainState's SAE (input scale folded in) to an SAELens folder; ``unit_norm``: decoder rows
    of unit norm, their norms moved into the codes (``unit_norm_decoder``).

    Call it on every process: arrays sharded across hosts are gathered first; process 0 writes.
    """
    got = exported(arch, state, metadata, layer_norm, unit_norm)
    if got is None:
        return Path(path)
    return write_sae(path, *got)


def state_sae(arch, state, layer_norm: bool = False) -> "LoadedSAE | None":
    """The TrainState's SAE as its export would load, in memory (None on processes other than 0)."""
    got = exported(arch, state, None, layer_norm)
    if got is None:
        return None
    params, cfg = _completed(got[0], got[1])
    return LoadedSAE(cfg, params, got[2])


def exported(arch, state, metadata: dict[str, Any] | None = None, layer_norm: bool = False,
             unit_norm: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any], Whitening | None] | None:
    """(params, cfg, whitening) that ``export_state`` writes; None on processes other than 0.

    Call it on every process (a collective gather of sharded arrays)."""
    from jax.experimental import multihost_utils

    params, arch_state, scale, white = multihost_utils.process_allgather(
        (state.params, state.arch_state, state.input_scale, state.whitening), tiled=True)
    if jax.process_index() != 0:
        return None
    params = {k: np.asarray(v) for k, v in arch.export_params(params, arch_state).items()}
    params = fold_input_scale(params, float(scale))  # weights on whitened (or raw) inputs
    cfg = arch.export_cfg() | {"metadata": {"trained_with": "sae_jax", **(metadata or {})}}
    if layer_norm:  # per-token normalisation is not linear: it stays a named input transform
        cfg["normalize_activations"] = "layer_norm"
    whitening = None
    if white:
        whitening = Whitening.from_arrays(white)
        if cfg.get("normalize_activations", "none") == "none":  # affine input path: fold, nothing to store
            params, whitening = fold_into_sae(params, whitening), None
            cfg["metadata"]["whitening"] = "folded"
        else:
            cfg["metadata"]["whitening"] = WHITENING_FILE + " (applied before the layer norm)"
    if cfg["architecture"] == "linear" and getattr(arch, "export_as", "linear") == "split":
        params, cfg = split_signed(params), cfg | {"architecture": "standard", "signed_split": True}
    if unit_norm:
        if whitening is not None or layer_norm:
            raise ExportError("a unit-norm decoder export needs an affine input path (no layer norm or stored whitening)")
        params = unit_norm_decoder(params, cfg["architecture"])
        cfg["metadata"]["unit_norm_decoder"] = True
    return params, cfg, whitening


class LoadedSAE:
    """An SAE read from an SAELens-format folder; NumPy float32 encode/decode."""

    def __init__(self, cfg: dict[str, Any], params: dict[str, np.ndarray], whitening: Whitening | None = None):
        self.cfg = cfg
        self.params = params
        self.architecture = cfg["architecture"]
        self.d_in = int(cfg["d_in"])
        self.d_sae = int(cfg["d_sae"])
        self.k = cfg.get("k")
        self.layer_norm = cfg.get("normalize_activations", "none") == "layer_norm"
        self.constant_norm = cfg.get("normalize_activations", "none") == "constant_norm_rescale"
        self._norm_coeff = None
        self.whitening = whitening
        self._ln_mu = self._ln_std = None

    def pre_activations(self, x: np.ndarray) -> np.ndarray:
        return self.sae_input(x) @ self.params["W_enc"] + self.params["b_enc"]

    def sae_input(self, x: np.ndarray) -> np.ndarray:
        """What the encoder matrix multiplies: x whitened / layer-normed / minus b_dec as the cfg says."""
        x = np.asarray(x, np.float32)
        if x.shape[-1] != self.d_in:
            raise ValueError(f"input width {x.shape[-1]} does not match the SAE's d_in={self.d_in}")
        if self.whitening is not None:  # stored beside: it could not be folded (a layer norm follows)
            x = self.whitening.apply(x)
        if self.layer_norm:
            # as SAELens does: normalise per token and keep the statistics for the next decode
            x, self._ln_mu, self._ln_std = layer_norm_in(x)
        elif self.constant_norm:  # SAELens constant_norm_rescale: each token scaled to norm sqrt(d_in)
            self._norm_coeff = np.float32(np.sqrt(self.d_in)) / np.linalg.norm(x, axis=-1, keepdims=True)
            x = x * self._norm_coeff
        if self.cfg.get("apply_b_dec_to_input", True):
            x = x - self.params["b_dec"]
        return x

    def encode(self, x: np.ndarray) -> np.ndarray:
        """[N, d_sae] latent codes."""
        if self.architecture == "gated":  # gate decides which, the magnitude path (shared W_enc) how much
            sae_in = self.sae_input(x)
            gate = sae_in @ self.params["W_enc"] + self.params["b_gate"]
            mag = sae_in @ (self.params["W_enc"] * np.exp(self.params["r_mag"])) + self.params["b_mag"]
            return np.where(gate > 0, np.maximum(mag, 0), 0).astype(np.float32)
        pre = self.pre_activations(x)
        if self.architecture in ("standard",) + TRANSCODERS:
            return np.maximum(pre, 0)
        if self.architecture == "linear":  # a signed shift-autoencoder code
            return pre
        if self.architecture == "code_layernorm":  # the SSAE's LayerNorm over latents (biased variance)
            pre64 = pre.astype(np.float64)
            var = pre64.var(-1, keepdims=True)
            h = (pre64 - pre64.mean(-1, keepdims=True)) / np.sqrt(var + float(self.cfg.get("code_norm_eps", 1e-5)))
            h = h * self.params["code_gamma"] + self.params["code_beta"]
            return (np.maximum(h, 0) if self.cfg.get("code_relu") else h).astype(np.float32)
        if self.architecture == "jumprelu":
            return np.where(pre > self.params["threshold"], np.maximum(pre, 0), 0).astype(np.float32)
        # topk: ReLU of the k largest pre-activations per row.
        idx = np.argpartition(-pre, self.k - 1, axis=-1)[..., : self.k]
        h = np.zeros_like(pre)
        np.put_along_axis(h, idx, np.maximum(np.take_along_axis(pre, idx, axis=-1), 0), axis=-1)
        return h

    def decode(self, h: np.ndarray) -> np.ndarray:
        """[N, d_in] reconstruction (layer_norm SAEs: un-normalised with the last encode's statistics)."""
        x_hat = np.asarray(h, np.float32) @ self.params["W_dec"] + self.params["b_dec"]
        if self.layer_norm:
            if self._ln_mu is None or len(self._ln_mu) != len(x_hat):
                raise ValueError("a layer_norm SAE decodes with the statistics of the previous encode "
                                 "of the same rows: call encode(x) first (or use sae(x))")
            x_hat = layer_norm_out(x_hat, self._ln_mu, self._ln_std)
        elif self.constant_norm:
            if self._norm_coeff is None or len(self._norm_coeff) != len(x_hat):
                raise ValueError("a constant_norm_rescale SAE decodes with the token norms of the previous encode "
                                 "of the same rows: call encode(x) first (or use sae(x))")
            x_hat = x_hat / self._norm_coeff
        if self.whitening is not None:
            x_hat = self.whitening.undo(x_hat)
        return x_hat

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """decode(encode(x)); a skip-transcoder adds its linear skip term x W_skipᵀ (as SAELens' forward)."""
        out = self.decode(self.encode(x))
        if self.architecture == "skip_transcoder":
            out = out + np.asarray(x, np.float32) @ self.params["W_skip"].T
        return out


def decoder_directions(sae) -> np.ndarray:
    """[d_sae, d_in] decoder rows as directions in raw activation space: ``W_dec``, or
    ``W_dec @ W⁻¹`` when a whitening is stored beside the weights (the rows then live in the
    whitened space; behind a layer norm each token also scales them by its σ)."""
    w_dec = np.asarray(sae.params["W_dec"], np.float32)
    whitening = getattr(sae, "whitening", None)
    return w_dec if whitening is None else (w_dec @ whitening.inverse).astype(np.float32)


def _read_cfg(cfg_path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{cfg_path} is not valid JSON ({err}); re-export the SAE (`sae-jax export`)") from None
    if not isinstance(cfg, dict):
        raise ExportError(f"{cfg_path} must hold a JSON object, got {type(cfg).__name__}")
    for key in ("d_in", "d_sae"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ExportError(f"{cfg_path}: '{key}' must be a positive integer, got {value!r}")
    return cfg


def _check_tensors(cfg: dict[str, Any], params: dict[str, np.ndarray], cfg_path: Path, weights_path: Path) -> None:
    """Every tensor's shape, and k, against cfg.json (a mismatch gives wrong numbers, not an error, later)."""
    arch, d_in, d_sae = cfg["architecture"], cfg["d_in"], cfg["d_sae"]
    d_out = cfg.get("d_out", d_in) if arch in TRANSCODERS else d_in
    if isinstance(d_out, bool) or not isinstance(d_out, int) or d_out <= 0:
        raise ExportError(f"{cfg_path}: a {arch} needs a positive integer 'd_out', got {d_out!r}")
    missing = [n for n in _ARCH_TENSORS.get(arch, _REQUIRED) if n not in params]
    if missing:
        raise ExportError(f"{weights_path}: missing tensors {missing}")
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out), "b_dec": (d_out,),
              "threshold": (d_sae,), "b_gate": (d_sae,), "r_mag": (d_sae,), "b_mag": (d_sae,),
              "W_skip": (d_out, d_in), "code_gamma": (d_sae,), "code_beta": (d_sae,)}
    for name, shape in shapes.items():
        if name in params and params[name].shape != shape:
            raise ExportError(f"{weights_path}: {name} has shape {params[name].shape} but {cfg_path.name} "
                              f"(d_in={d_in}, d_sae={d_sae}{f', d_out={d_out}' if d_out != d_in else ''}) "
                              f"needs {shape}")
    bad = [name for name, value in params.items() if not np.isfinite(value).all()]
    if bad:
        raise ExportError(f"{weights_path}: tensors {bad} hold NaN/Inf")
    if "crosscoder_d_model" in cfg:
        half = cfg["crosscoder_d_model"]
        if isinstance(half, bool) or not isinstance(half, int) or 2 * half != d_in:
            raise ExportError(f"{cfg_path}: a crosscoder's 'crosscoder_d_model' must be half of d_in={d_in} "
                              f"([base | tuned] rows), got {half!r}")
    if arch == "topk":
        k = cfg.get("k")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae:
            raise ExportError(f"{cfg_path}: a topk SAE needs an integer 'k' in [1, d_sae={d_sae}], got {k!r}")


def load_sae(path: str | os.PathLike, norm_scaling_factor: float | None = None) -> LoadedSAE:
    """Read an SAELens-format folder (this project's exports or SAEs trained elsewhere); cfg.json is
    checked against the tensors.

    ``norm_scaling_factor``: for ``normalize_activations: expected_average_only_in`` (the SAE was
    trained on inputs multiplied by a dataset constant, sqrt(d_in) / E‖x‖, that the folder does not
    hold): folded into the weights as SAELens' ``fold_activation_norm_scaling_factor`` does; a cfg
    key ``norm_scaling_factor`` is used when present."""
    path = Path(path)
    cfg_path, weights_path = path / CFG_FILE, path / WEIGHTS_FILE
    if not cfg_path.exists() or not weights_path.exists():
        raise FileNotFoundError(
            f"{path} is not an SAE folder: expected {CFG_FILE} and {WEIGHTS_FILE} "
            "(write one with `sae-jax export` or SAELens' save_model)")
    cfg = _read_cfg(cfg_path)
    arch = cfg.get("architecture", "standard")
    if arch not in ARCHITECTURES:
        raise ExportError(f"{path}: architecture {arch!r} is not supported; known: {ARCHITECTURES}")
    cfg["architecture"] = arch
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", "layer_norm", "constant_norm_rescale", "expected_average_only_in"):
        raise ExportError(f"{path}: normalize_activations={norm!r} is not supported (none, layer_norm, "
                          "constant_norm_rescale, expected_average_only_in are)")
    factor = norm_scaling_factor if norm_scaling_factor is not None else cfg.get("norm_scaling_factor")
    if norm == "expected_average_only_in" and factor is None:
        raise ExportError(
            f"{path}: normalize_activations='expected_average_only_in' means the SAE reads activations times a "
            "dataset constant (sqrt(d_in) / mean token norm) that the folder does not hold. Pass it: "
            "sae_jax.load(path, norm_scaling_factor=F) (SAELens' trainer logs it; or estimate it as "
            "sqrt(d_in) / mean ||x|| over the training activations)")
    if norm != "expected_average_only_in" and norm_scaling_factor is not None:
        raise ExportError(f"{path}: norm_scaling_factor applies to normalize_activations='expected_average_only_in' "
                          f"only; this SAE has {norm!r}")
    try:
        params = {name: np.asarray(value, np.float32) for name, value in load_file(str(weights_path)).items()}
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise ExportError(f"{weights_path} cannot be read ({err}); re-export the SAE") from None
    _check_tensors(cfg, params, cfg_path, weights_path)
    if norm == "expected_average_only_in":
        factor = float(factor)
        if not (np.isfinite(factor) and factor > 0):
            raise ExportError(f"{path}: norm_scaling_factor must be a positive number, got {factor}")
        # SAELens' fold_activation_norm_scaling_factor: the raw-input SAE (inputs no longer pre-scaled)
        params = params | {"W_enc": params["W_enc"] * factor, "W_dec": params["W_dec"] / factor,
                           "b_dec": params["b_dec"] / factor}
        cfg = cfg | {"normalize_activations": "none", "norm_scaling_factor_folded": factor}
    if cfg.get("rescale_acts_by_decoder_norm"):  # SAELens TopK's training default: decoder norms not folded
        params = fold_decoder_norm_rescaling(cfg, params, path)
    whitening = None
    if str((cfg.get("metadata") or {}).get("whitening", "")).startswith(WHITENING_FILE):
        if not (path / WHITENING_FILE).exists():
            raise FileNotFoundError(f"{cfg_path} says the input whitening is stored beside the weights, but "
                                    f"{path / WHITENING_FILE} is missing; re-export the run (`sae-jax export`)")
        whitening = Whitening.from_arrays(load_file(str(path / WHITENING_FILE)))
    return LoadedSAE(cfg, params, whitening)


def load_crosscoder(path: str | os.PathLike) -> LoadedSAE:
    """Read a crosscoder export (``load_sae`` plus the check that it is one); its cfg's
    ``crosscoder_d_model`` is the width of one model's activations."""
    sae = load_sae(path)
    if "crosscoder_d_model" not in sae.cfg:
        raise ExportError(f"{path} is a {sae.architecture} SAE, not a crosscoder (its cfg.json has no "
                          "'crosscoder_d_model'); train one with --sae.architecture crosscoder")
    return sae
