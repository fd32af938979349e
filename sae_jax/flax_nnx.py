"""Flax NNX modules for users' own code: the library's architectures, same pure functions.

``SAE`` holds an architecture's parameters as ``nnx.Param`` (names as in SAELens: W_enc, b_enc,
W_dec, b_dec, ...) and its non-trained state (e.g. a BatchTopK threshold) as ``nnx.BatchStat``;
``encode``, ``decode`` and ``loss`` call the architecture's own methods, so a module computes exactly
what ``sae_jax.train`` trains. A user loop with ``nnx.Optimizer``::

    model = SAE.create(SAEConfig(architecture="topk", d_sae=4096, k=32), d_in=768, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x):
        (loss, out), grads = nnx.value_and_grad(lambda m: m.loss(x), has_aux=True)(model)
        opt.update(model, grads)
        model.update_state(out)       # non-trained state (BatchTopK's threshold); a no-op for TopK
        model.project_decoder()       # unit-norm decoder rows, as the library's step does
        return loss

``SAE.from_export(path)`` loads a TopK or ReLU export (input scale folded: it reads raw activations).
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from sae_jax.config import SAEConfig
from sae_jax.decoder_norm import KEY as DECODER, project_rows
from sae_jax.sae import make_architecture
from sae_jax.sae.base import LossContext, LossOutput

_STATE = "state_"  # attribute prefix of non-trained architecture state


class SAE(nnx.Module):
    """An SAE architecture's parameters and state as an NNX module."""

    def __init__(self, arch, params: dict[str, jax.Array], arch_state: dict[str, jax.Array] | None = None,
                 decoder_unit_norm: bool = True, sparsity_coef: float = 0.0):
        self.arch = arch  # a frozen dataclass of hyperparameters (static)
        self.decoder_unit_norm = decoder_unit_norm
        self.sparsity_coef = float(sparsity_coef)
        self.param_names = tuple(params)
        self.state_names = tuple(arch_state or {})
        for name, value in params.items():
            setattr(self, name, nnx.Param(jnp.asarray(value, jnp.float32)))
        for name, value in (arch_state or {}).items():
            setattr(self, _STATE + name, nnx.BatchStat(jnp.asarray(value)))

    @classmethod
    def create(cls, cfg: SAEConfig, d_in: int, rngs: nnx.Rngs, b_dec: jax.Array | None = None) -> "SAE":
        """A freshly initialised SAE, as the trainer initialises it (``b_dec`` defaults to zeros)."""
        if cfg.architecture == "ssae":
            raise ValueError("the ssae architecture trains with a primal-dual optimizer (sae_jax.constraints), not "
                             "a loss: train it with `sae-jax train ssae` and load its export")
        arch = make_architecture(cfg, d_in)
        b_dec = jnp.zeros((d_in,), jnp.float32) if b_dec is None else jnp.asarray(b_dec, jnp.float32)
        params = arch.init_params(rngs.params(), d_in, cfg.d_sae, b_dec)
        return cls(arch, params, arch.init_state(cfg.d_sae, d_in), decoder_unit_norm=cfg.decoder_unit_norm,
                   sparsity_coef=cfg.sparsity_coef)

    @classmethod
    def from_export(cls, path: str | Path) -> "SAE":
        """A TopK or ReLU ('standard') SAE from an SAELens-format folder."""
        from sae_jax.export import load_sae

        sae = load_sae(path)
        if sae.layer_norm or sae.constant_norm or sae.whitening is not None or not sae.cfg.get("apply_b_dec_to_input", True):
            raise ValueError(f"{path}: only exports on an affine input path load as a module (no layer norm, norm rescale, stored "
                             "whitening or apply_b_dec_to_input=false)")
        if sae.architecture == "topk":
            cfg = SAEConfig(architecture="topk", d_sae=sae.d_sae, k=int(sae.k))
        elif sae.architecture == "standard":
            cfg = SAEConfig(architecture="relu", d_sae=sae.d_sae, decoder_unit_norm=False)
        else:
            raise ValueError(f"{path}: a {sae.architecture!r} export does not load as a module yet (topk and standard "
                             "do); use sae_jax.load for NumPy encode/decode")
        arch = make_architecture(cfg, sae.d_in)
        names = ("W_enc", "b_enc", "W_dec", "b_dec")
        return cls(arch, {n: sae.params[n] for n in names}, arch.init_state(sae.d_sae, sae.d_in),
                   decoder_unit_norm=False)  # exported rows carry the folded input scale

    def params(self) -> dict[str, jax.Array]:
        return {n: getattr(self, n)[...] for n in self.param_names}

    def arch_state(self) -> dict[str, jax.Array]:
        return {n: getattr(self, _STATE + n)[...] for n in self.state_names}

    def encode(self, x: jax.Array) -> jax.Array:
        """[B, d_sae] codes."""
        return self.arch.encode(self.params(), self.arch_state(), x)

    def decode(self, h: jax.Array) -> jax.Array:
        """[B, d] reconstruction."""
        return self.arch.decode(self.params(), h)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.decode(self.encode(x))

    def loss(self, x: jax.Array, dead_mask: jax.Array | None = None,
             sparsity_coef: float | jax.Array | None = None) -> tuple[jax.Array, LossOutput]:
        """The architecture's training loss on ``x`` and its outputs (fired latents, metrics, new state).

        ``dead_mask`` [d_sae] bool: latents to revive with AuxK (none by default); ``sparsity_coef``: the
        L1/L0 coefficient (default: the config's ``sae.sparsity_coef``; the trainer ramps it up over
        ``sae.sparsity_warmup_steps``)."""
        d_sae = getattr(self, DECODER)[...].shape[0]
        coef = self.sparsity_coef if sparsity_coef is None else sparsity_coef
        ctx = LossContext(dead_mask=jnp.zeros((d_sae,), bool) if dead_mask is None else dead_mask,
                          sparsity_coef=jnp.asarray(coef, jnp.float32))
        return self.arch.loss(self.params(), self.arch_state(), x, ctx)

    def update_state(self, out: LossOutput) -> None:
        """Take the non-trained state a loss returned (what the library's step keeps)."""
        for name in self.state_names:
            getattr(self, _STATE + name)[...] = out.state[name]

    def project_decoder(self) -> None:
        """Decoder rows to unit norm, if the architecture trains them so (the library's step does this)."""
        if self.decoder_unit_norm:
            getattr(self, DECODER)[...] = project_rows({DECODER: getattr(self, DECODER)[...]})[DECODER]
