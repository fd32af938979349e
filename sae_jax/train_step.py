"""The pure train step: ``train_step(state, batch) -> (state, metrics)``.

No I/O, no logging, no mesh construction: the trainer owns all of that. The step is jitted
with the state donated (updated in place) and the batch sharded over 'data'.
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
from sae_jax.optim import lr_schedule, sparsity_schedule
from sae_jax.sae.base import LossContext
from sae_jax.train_state import TrainState

_COUNTER_CAP = 2**30  # tokens_since_fired saturates here instead of overflowing int32


def make_step_fn(cfg: TrainConfig, arch, optimizer: optax.GradientTransformation) -> Callable:
    """The un-jitted step (for tests, benchmarks and custom loops)."""
    dead_tokens = cfg.sae.dead_tokens
    layernorm = cfg.data.normalize == "layernorm"
    lr_at, coef_at = lr_schedule(cfg), sparsity_schedule(cfg)

    def step_fn(state: TrainState, batch: jax.Array):
        x = batch.astype(jnp.float32) * state.input_scale
        if layernorm:
            x = layer_norm_in(x)[0]
        ctx = LossContext(dead_mask=state.tokens_since_fired >= dead_tokens,
                          sparsity_coef=jnp.asarray(coef_at(state.step), jnp.float32))
        (loss, out), grads = jax.value_and_grad(arch.loss, has_aux=True)(
            state.params, state.arch_state, x, ctx)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if cfg.sae.decoder_unit_norm:
            params = project_rows(params)
        since = jnp.minimum(state.tokens_since_fired + batch.shape[0], _COUNTER_CAP)
        since = jnp.where(out.fired, 0, since)
        metrics = out.metrics | {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "dead_frac": losses.dead_fraction(since, dead_tokens),
            "lr": jnp.asarray(lr_at(state.step), jnp.float32),
        }
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  tokens_since_fired=since, arch_state=out.state)
        return new_state, metrics

    return step_fn


def make_train_step(cfg: TrainConfig, arch, optimizer, mesh: Mesh, shardings) -> Callable:
    """The jitted, state-donating step for a mesh and the state's shardings."""
    return jax.jit(
        make_step_fn(cfg, arch, optimizer),
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=0,
    )
