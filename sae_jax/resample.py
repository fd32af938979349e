"""Resampling dead latents of ReLU/L1 SAEs (Anthropic, "Towards Monosemanticity", 2023).

Every ``every`` steps, latents that have not fired over the last ``dead_window`` tokens are
re-initialised:

- ``mode='loss'``: each gets an input drawn with probability ∝ (its squared reconstruction
  error)² from a sample batch; ``mode='random'``: a random Gaussian direction;
- decoder row = that direction (``x − b_dec``, since that is what the encoder sees) at unit
  norm; encoder column = the same direction scaled to ``enc_scale`` × the mean norm of the
  alive encoder columns; encoder bias = 0;
- their optimizer moments are zeroed: every leaf of the optax state stored under a
  ``W_enc``/``W_dec``/``b_enc`` key with the param's shape has that latent's column/row/entry
  zeroed (Adam's mu and nu, and any other per-parameter state).

Inputs are drawn with replacement (keeps shapes static under jit). Pure and jit-able.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class ResampleConfig:
    """When and how to resample dead latents."""

    every: int = 25_000
    """Resample every this many steps (0 disables)."""
    dead_window: int = 10_000_000
    """A latent is dead if it has not fired in this many tokens."""
    mode: Literal["loss", "random"] = "loss"
    """New directions from high-loss inputs (∝ loss²) or random Gaussian directions."""
    enc_scale: float = 0.2
    """New encoder column norm, as a fraction of the mean alive encoder column norm."""
    sample_rows: int = 8192
    """Rows of the sample batch the high-loss inputs are drawn from."""

    def due(self, step: int) -> bool:
        """Whether to resample after ``step`` (1-based count of steps taken)."""
        return self.every > 0 and step > 0 and step % self.every == 0


class ResampleResult(NamedTuple):
    params: dict[str, jax.Array]
    opt_state: Any
    resampled: jax.Array  # [F] bool
    count: jax.Array  # int32 scalar


def relu_sae_reconstruct(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """x̂ of a ReLU SAE: relu((x − b_dec) W_enc + b_enc) W_dec + b_dec."""
    h = jax.nn.relu((x - params["b_dec"]) @ params["W_enc"] + params["b_enc"])
    return h @ params["W_dec"] + params["b_dec"]


def zero_latent_moments(opt_state: Any, mask: jax.Array) -> Any:
    """Zero, in every per-parameter optimizer leaf, the entries that belong to latents in ``mask``."""
    f = mask.shape[0]

    def one(path, leaf):
        key = next((getattr(e, "key", None) for e in reversed(path) if isinstance(getattr(e, "key", None), str)), None)
        shape = getattr(leaf, "shape", ())
        if key == "W_enc" and len(shape) == 2 and shape[1] == f:
            return jnp.where(mask[None, :], 0, leaf)
        if key == "W_dec" and len(shape) == 2 and shape[0] == f:
            return jnp.where(mask[:, None], 0, leaf)
        if key == "b_enc" and shape == (f,):
            return jnp.where(mask, 0, leaf)
        return leaf

    return jax.tree_util.tree_map_with_path(one, opt_state)


def resample_dead(params: dict[str, jax.Array], opt_state: Any, dead_mask: jax.Array, x: jax.Array,
                  key: jax.Array, mode: str = "loss", enc_scale: float = 0.2,
                  reconstruct: Callable[[dict, jax.Array], jax.Array] = relu_sae_reconstruct) -> ResampleResult:
    """Re-initialise the latents in ``dead_mask`` [F] from the sample batch ``x`` [N, d]."""
    if mode not in ("loss", "random"):
        raise ValueError(f"unknown resample mode {mode!r}; use 'loss' or 'random'")
    dead = jnp.asarray(dead_mask, bool)
    f, d = params["W_dec"].shape
    if dead.shape != (f,):
        raise ValueError(f"dead_mask must have shape ({f},) (one flag per latent), got {dead.shape}")
    if mode == "loss":
        err = jnp.sum(jnp.square(x - reconstruct(params, x)), axis=-1)  # [N]
        # P ∝ err²; log-space keeps tiny errors finite, a row with zero error is never drawn.
        logits = jnp.where(err > 0, 2 * jnp.log(jnp.maximum(err, 1e-30)), -jnp.inf)
        idx = jax.random.categorical(key, logits, shape=(f,))
        directions = x[idx] - params["b_dec"]
    else:
        directions = jax.random.normal(key, (f, d), params["W_dec"].dtype)
    unit = directions / jnp.maximum(jnp.linalg.norm(directions, axis=-1, keepdims=True), 1e-12)
    enc_norms = jnp.linalg.norm(params["W_enc"], axis=0)  # [F]
    n_alive = jnp.sum(~dead)
    alive_norm = jnp.where(n_alive > 0, jnp.sum(jnp.where(dead, 0.0, enc_norms)) / jnp.maximum(n_alive, 1), 1.0)
    new = dict(params)
    new["W_dec"] = jnp.where(dead[:, None], unit, params["W_dec"])
    new["W_enc"] = jnp.where(dead[None, :], (unit * enc_scale * alive_norm).T, params["W_enc"])
    new["b_enc"] = jnp.where(dead, 0.0, params["b_enc"])
    return ResampleResult(params=new, opt_state=zero_latent_moments(opt_state, dead), resampled=dead,
                          count=jnp.sum(dead).astype(jnp.int32))


def resample_train_state(state: Any, x: jax.Array, key: jax.Array, cfg: ResampleConfig,
                         reconstruct: Callable[[dict, jax.Array], jax.Array] = relu_sae_reconstruct):
    """Resample on the core ``TrainState``: dead = ``tokens_since_fired >= cfg.dead_window``.

    ``x`` is a sample batch as the SAE sees it (``sae_jax.train_step.model_input`` of raw rows:
    whitening, input scale, LayerNorm applied). Resampled latents get their counters reset to 0
    so they have a full window to fire. Returns (state, count).
    """
    dead = state.tokens_since_fired >= cfg.dead_window
    out = resample_dead(state.params, state.opt_state, dead, x.astype(jnp.float32), key,
                        mode=cfg.mode, enc_scale=cfg.enc_scale, reconstruct=reconstruct)
    since = jnp.where(out.resampled, 0, state.tokens_since_fired)
    return state.replace(params=out.params, opt_state=out.opt_state, tokens_since_fired=since), out.count
