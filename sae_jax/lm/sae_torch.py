"""An exported SAE as a differentiable torch module, and its splice into a model's forward.

``TorchSAE`` computes exactly what ``sae_jax.export.LoadedSAE`` computes (every architecture
the loader reads: standard/ReLU, topk, jumprelu — BatchTopK exports as jumprelu —, linear;
optional per-token layer norm and stored whitening), in torch, with two per-latent vectors
applied to the hidden pre-activations: ``h = act(c ⊙ pre + d)``. The SAE weights are buffers
(never trained); ``c`` (init 1) and ``d`` (init 0) are the only parameters.

``sae_spliced`` replaces the activation at ``(layer, hook)`` by the reconstruction at real,
non-special positions (the same positions as the evaluation splice, ``sae_jax.lm.splice``), with
gradients flowing through the rest of the model. With ``error_term`` the untuned SAE's error is
added back: ``x' = x̂_{c,d}(x) + (x − x̂_{1,0}(x))``, so at c=1, d=0 the model is (up to float
rounding) the clean model and tuning moves it only through the latents.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from sae_jax.lm.hooks import activation_hook, registered_hooks

LN_EPS = 1e-5  # sae_jax.normalization.EPS (SAELens' layer_norm), kept here so this module stays JAX-free


class TorchSAE(torch.nn.Module):
    """A loaded SAE (``sae_jax.load`` / ``sae_jax.export.load_sae``) with trainable scale c and shift d."""

    def __init__(self, sae, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.architecture = sae.architecture
        self.d_in, self.d_sae = int(sae.d_in), int(sae.d_sae)
        self.k = int(sae.k) if sae.k else None
        self.layer_norm = bool(sae.layer_norm)
        self.constant_norm = bool(getattr(sae, "constant_norm", False))
        self.apply_b_dec_to_input = bool(sae.cfg.get("apply_b_dec_to_input", True))
        if self.architecture not in ("standard", "topk", "jumprelu", "linear"):
            raise ValueError(f"no torch implementation of SAE architecture {self.architecture!r}")
        for name in ("W_enc", "b_enc", "W_dec", "b_dec") + (("threshold",) if self.architecture == "jumprelu" else ()):
            self.register_buffer(name, torch.as_tensor(np.asarray(sae.params[name]), dtype=dtype))
        self.whitened = sae.whitening is not None
        if self.whitened:
            w = sae.whitening
            self.register_buffer("white_mean", torch.as_tensor(w.mean, dtype=dtype))
            self.register_buffer("white_matrix", torch.as_tensor(w.matrix, dtype=dtype))
            self.register_buffer("white_inverse", torch.as_tensor(w.inverse, dtype=dtype))
        self.c = torch.nn.Parameter(torch.ones(self.d_sae, dtype=dtype))
        self.d = torch.nn.Parameter(torch.zeros(self.d_sae, dtype=dtype))
        self.use_scale_shift = True

    def _normalize_in(self, x):
        stats = None
        if self.whitened:
            x = (x - self.white_mean) @ self.white_matrix
        if self.layer_norm:  # SAELens layer_norm: unbiased std, eps added to σ
            mu = x.mean(-1, keepdim=True)
            std = x.std(-1, keepdim=True)
            x, stats = (x - mu) / (std + LN_EPS), (mu, std)
        elif self.constant_norm:  # SAELens constant_norm_rescale: every token to norm sqrt(d_in)
            coeff = self.d_in ** 0.5 / x.norm(dim=-1, keepdim=True)
            x, stats = x * coeff, (0.0, 1.0 / coeff)
        return x, stats

    def _normalize_out(self, x_hat, stats):
        if stats is not None:
            x_hat = x_hat * stats[1] + stats[0]
        if self.whitened:
            x_hat = x_hat @ self.white_inverse + self.white_mean
        return x_hat

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[.., d_sae] encoder pre-activations (before c, d and the activation)."""
        x, _ = self._normalize_in(x)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activation(self, z: torch.Tensor) -> torch.Tensor:
        """The architecture's activation on (scaled, shifted) pre-activations, as the loader applies it."""
        if self.architecture == "standard":
            return torch.relu(z)
        if self.architecture == "linear":
            return z
        if self.architecture == "jumprelu":  # the jump has zero gradient a.e.; the value part carries it
            return torch.where(z > self.threshold, torch.relu(z), torch.zeros_like(z))
        vals, idx = torch.topk(z, self.k, dim=-1)
        return torch.zeros_like(z).scatter(-1, idx, torch.relu(vals))

    def encode(self, x: torch.Tensor, scale_shift: bool = True) -> torch.Tensor:
        pre = self.pre_activations(x)
        return self.activation(self.c * pre + self.d if scale_shift else pre)

    def forward(self, x: torch.Tensor, scale_shift: bool | None = None) -> torch.Tensor:
        """Reconstruction x̂ of rows x [.., d_in]; ``scale_shift=False`` ignores c and d (the plain
        SAE); None follows ``self.use_scale_shift``."""
        if scale_shift is None:
            scale_shift = self.use_scale_shift
        xn, stats = self._normalize_in(x)
        if self.apply_b_dec_to_input:
            xn = xn - self.b_dec
        pre = xn @ self.W_enc + self.b_enc
        h = self.activation(self.c * pre + self.d if scale_shift else pre)
        return self._normalize_out(h @ self.W_dec + self.b_dec, stats)

    def moved(self) -> dict[str, np.ndarray]:
        """How far each latent's c and d moved from (1, 0), float64 NumPy."""
        return {"c": self.c.detach().double().cpu().numpy(), "d": self.d.detach().double().cpu().numpy()}


class _DiffSplice:
    """Hook body: replace the activation at ``mask`` positions by the SAE's reconstruction."""

    def __init__(self, sae: TorchSAE, error_term: bool):
        self.sae = sae
        self.error_term = error_term
        self.mask: torch.Tensor | None = None  # bool [B, T]; None = every position
        self.active = True

    def __call__(self, act: torch.Tensor) -> torch.Tensor | None:
        if not self.active:
            return None
        if act.shape[-1] != self.sae.d_in:
            raise ValueError(f"activation width {act.shape[-1]} does not match the SAE's d_in={self.sae.d_in}")
        x = act.to(self.sae.W_enc.dtype)
        new = self.sae(x)
        if self.error_term:  # the untuned error, so c and d alone move the output
            new = new + (x - self.sae(x, scale_shift=False))
        new = new.to(act.dtype)
        if self.mask is None:
            return new
        if self.mask.shape != act.shape[:2]:
            raise ValueError(f"splice mask shape {tuple(self.mask.shape)} does not match the activation {tuple(act.shape[:2])}")
        return torch.where(self.mask[..., None], new, act)


@contextlib.contextmanager
def sae_spliced(model: torch.nn.Module, sae: TorchSAE, layer: int, hook: str,
                error_term: bool = False) -> Iterator[_DiffSplice]:
    """Splice ``sae`` at ``(layer, hook)`` with gradients; set ``.mask`` (and ``.active``) per forward."""
    splice = _DiffSplice(sae, error_term)
    with registered_hooks([activation_hook(model, layer, hook, splice)]):
        yield splice
