"""The optimizer: [tangent-space decoder gradient] -> [clip] -> Adam -> learning-rate schedule
(the primal player, with dual ascent on a multiplier, for constrained training)."""
from __future__ import annotations

import jax.numpy as jnp
import optax

from sae_jax.config import TrainConfig
from sae_jax.constraints import BoundConstrainedOptimizer, ConstrainedOptimizer
from sae_jax.decoder_norm import project_rows, remove_parallel_component


def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warm-up to the peak, then constant, linear or cosine decay to the last step."""
    peak, warmup = cfg.lr, max(cfg.optim.warmup_steps, 0)
    decay_steps = max(cfg.steps - warmup - 1, 1)  # the last update (step steps-1) uses the end value
    end = peak * cfg.optim.final_lr_fraction
    if cfg.optim.decay == "none":
        after = optax.constant_schedule(peak)
    elif cfg.optim.decay == "linear":
        after = optax.linear_schedule(peak, end, decay_steps)
    elif cfg.optim.decay == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.optim.final_lr_fraction)
    else:
        raise ValueError(f"unknown decay {cfg.optim.decay!r}; use none, linear or cosine")
    if warmup == 0:
        return after
    # step+1 so the very first update is not a zero-lr no-op.
    ramp = lambda step: peak * jnp.minimum((step + 1) / warmup, 1.0)
    return optax.join_schedules([ramp, after], [warmup])


def sparsity_schedule(cfg: TrainConfig) -> optax.Schedule:
    """L1/L0 coefficient, rising linearly over ``sparsity_warmup_steps``."""
    coef, warmup = cfg.sae.sparsity_coef, cfg.sae.sparsity_warmup_steps
    if warmup <= 0:
        return optax.constant_schedule(coef)
    return lambda step: coef * jnp.minimum((step + 1) / warmup, 1.0)


def make_optimizer(cfg: TrainConfig):
    """The optax chain; for architecture 'ssae' that chain is the primal player of a
    ``BoundConstrainedOptimizer`` whose dual player ascends on the one multiplier."""
    primal = _primal_optimizer(cfg)
    if cfg.sae.architecture != "ssae":
        return primal
    d = cfg.dual
    if d.fixed_multiplier is not None:  # frozen multiplier = a fixed L1 penalty (comparison runs)
        dual, init = optax.sgd(0.0), float(d.fixed_multiplier)
    else:
        dual, init = (optax.adam(d.lr) if d.optimizer == "adam" else optax.sgd(d.lr)), 0.0
    copt = ConstrainedOptimizer(primal=primal, dual=dual, scheme=d.scheme, formulation=d.formulation,
                                penalty_init=d.penalty_init, penalty_growth=d.penalty_growth,
                                primal_projection=project_rows if cfg.sae.decoder_unit_norm else None,
                                multiplier_init=init)
    return BoundConstrainedOptimizer(copt, num_ineq=1)


def _primal_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    parts = []
    if cfg.sae.decoder_unit_norm:
        parts.append(remove_parallel_component())
    if cfg.optim.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.optim.max_grad_norm))
    parts.append(optax.scale_by_adam(b1=cfg.optim.b1, b2=cfg.optim.b2, eps=cfg.optim.eps))
    parts.append(optax.scale_by_learning_rate(lr_schedule(cfg)))
    return optax.chain(*parts)
