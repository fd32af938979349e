"""The pure train step: ``train_step(state, batch) -> (state, metrics)``.

No I/O, no logging, no mesh construction: the trainer owns all of that. The step is jitted
with the state donated (updated in place) and the batch sharded over 'data'. Penalised
architectures take one optax step on their loss; the constrained one (``ssae``) takes one
primal–dual step of its ``BoundConstrainedOptimizer`` on its constrained problem.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from sae_jax import losses
from sae_jax.config import TrainConfig
from sae_jax.decoder_norm import project_rows
from sae_jax.mesh import batch_sharding, replicated
from sae_jax.normalization import layer_norm_in
from sae_jax.optim import fused_adam_applies, fused_adam_update, lr_schedule, sparsity_schedule
from sae_jax.sae.base import LossContext
from sae_jax.train_state import TrainState

_COUNTER_CAP = 2**30  # tokens_since_fired saturates here instead of overflowing int32


def model_input(state: TrainState, batch: jax.Array, layernorm: bool) -> jax.Array:
    """What the SAE sees: raw rows -> [ZCA whitening] -> x input_scale -> [per-token LayerNorm]."""
    x = batch.astype(jnp.float32)
    if state.whitening:
        x = (x - state.whitening["whitening_mean"]) @ state.whitening["whitening_matrix"]
    x = x * state.input_scale
    return layer_norm_in(x)[0] if layernorm else x


def _advance(state: TrainState, n_tokens: int, dead_tokens: int, params, opt_state, out, metrics):
    """The next state (dead-latent counters included) and the step's metrics."""
    since = jnp.minimum(state.tokens_since_fired + n_tokens, _COUNTER_CAP)
    since = jnp.where(out.fired, 0, since)
    metrics = metrics | {"dead_frac": losses.dead_fraction(since, dead_tokens)}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              tokens_since_fired=since, arch_state=out.state)
    return new_state, metrics


def make_step_fn(cfg: TrainConfig, arch, optimizer, fused_optimizer: bool = False,
                 mesh: Mesh | None = None) -> Callable:
    """The un-jitted step (for tests, benchmarks and custom loops).

    ``fused_optimizer``: run ``optimizer`` (which must be ``make_optimizer(cfg)``'s Adam chain; see
    ``optim.fused_adam_applies``) as the native one-pass update on CPU devices (each device its own
    block of the parameters on a ``mesh``), not under vmap."""
    if cfg.sae.architecture == "ssae":
        return _constrained_step_fn(cfg, arch, optimizer)
    dead_tokens = cfg.sae.dead_tokens
    layernorm = cfg.data.normalize == "layernorm"
    lr_at, coef_at = lr_schedule(cfg), sparsity_schedule(cfg)

    def step_fn(state: TrainState, batch: jax.Array):
        x = model_input(state, batch, layernorm)
        ctx = LossContext(dead_mask=state.tokens_since_fired >= dead_tokens,
                          sparsity_coef=jnp.asarray(coef_at(state.step), jnp.float32))
        (loss, out), grads = jax.value_and_grad(arch.loss, has_aux=True)(
            state.params, state.arch_state, x, ctx)
        if fused_optimizer:
            params, opt_state, grad_sq = fused_adam_update(cfg, grads, state.opt_state, state.params, mesh)
            grad_norm = jnp.sqrt(grad_sq)
        else:
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            if cfg.sae.decoder_unit_norm:
                params = project_rows(params)
            grad_norm = optax.tree.norm(grads)
        metrics = out.metrics | {
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": jnp.asarray(lr_at(state.step), jnp.float32),
        }
        return _advance(state, batch.shape[0], dead_tokens, params, opt_state, out, metrics)

    return step_fn


def _constrained_step_fn(cfg: TrainConfig, arch, optimizer) -> Callable:
    """One primal–dual step on ``arch.problem`` (loss = reconstruction, one inequality)."""
    dead_tokens = cfg.sae.dead_tokens
    lr_at = lr_schedule(cfg)

    def step_fn(state: TrainState, batch: jax.Array):
        x = model_input(state, batch, layernorm=False)  # the SSAE normalises its own input
        params, opt_state, info = optimizer.update(arch.problem, state.params, state.opt_state,
                                                   state.arch_state, x, state.step)
        out = info["aux"]
        metrics = out.metrics | {
            "loss": info["loss"],
            "lagrangian": info["lagrangian"],
            "multiplier": info["multipliers"].ineq[0],
            "grad_norm": info["grad_norm"],
            "lr": jnp.asarray(lr_at(state.step), jnp.float32),
        }
        return _advance(state, batch.shape[0], dead_tokens, params, opt_state, out, metrics)

    return step_fn


def make_train_step(cfg: TrainConfig, arch, optimizer, mesh: Mesh, shardings) -> Callable:
    """The jitted, state-donating step for a mesh and the state's shardings (on CPU devices with
    the native kernels, Adam runs as one fused pass per parameter: ``optim.fused_adam_update``)."""
    fused = cfg.sae.architecture != "ssae" and fused_adam_applies(cfg, optimizer, mesh)
    return jax.jit(
        make_step_fn(cfg, arch, optimizer, fused_optimizer=fused, mesh=mesh),
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=0,
    )
