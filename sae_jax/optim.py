"""The optimizer: [tangent-space decoder gradient] -> [clip] -> Adam -> learning-rate schedule
(the primal player, with dual ascent on a multiplier, for constrained training)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec as P

from sae_jax.config import TrainConfig
from sae_jax.constraints import BoundConstrainedOptimizer, ConstrainedOptimizer
from sae_jax.decoder_norm import KEY, project_rows, remove_parallel_component
from sae_jax.mesh import PARAM_SPECS


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


def _fusion_key(cfg: TrainConfig) -> tuple:
    """What the fused Adam step must agree on with the optax chain it replaces."""
    return (cfg.optim, cfg.lr, cfg.steps, cfg.sae.decoder_unit_norm)


def fused_adam_applies(cfg: TrainConfig, optimizer, mesh: Mesh | None = None) -> bool:
    """True when the step can run ``optimizer`` (the Adam chain ``make_optimizer(cfg)`` built) as
    ``fused_adam_update``: XLA:CPU devices with the native kernels, no gradient clipping (it needs the
    global norm before Adam). Not under ``jax.vmap``."""
    devices = mesh.devices.flat if mesh is not None else jax.devices()[:1]
    if cfg.optim.max_grad_norm > 0 or any(dev.platform != "cpu" for dev in devices):
        return False
    if getattr(optimizer.update, "sae_jax_fusion_key", None) != _fusion_key(cfg):
        return False  # a custom optimizer, or one built for another config
    from sae_jax.kernels import cpu_kernels

    return cpu_kernels.available()


def _safe_increment(count: jax.Array) -> jax.Array:
    top = jnp.iinfo(count.dtype).max
    return jnp.where(count < top, count + 1, top)  # as optax: saturates instead of overflowing


def fused_adam_update(cfg: TrainConfig, grads: dict, opt_state: tuple, params: dict, mesh: Mesh | None = None):
    """(params, opt_state, sum of squared gradients) after one step of ``make_optimizer(cfg)``'s chain,
    ``optax.apply_updates`` and (unit-norm decoder) ``project_rows``, with each 2-D parameter updated
    in one native pass (cpu_kernels.cc, ``SaeJaxAdamF32``) instead of XLA's four to six passes.
    On a ``mesh`` of several devices each device updates its own block of every parameter (laid out
    as ``sae_jax.mesh.PARAM_SPECS``; a unit-norm decoder is split by rows, so its rows stay whole).

    Same formulas and state as the optax chain (tests/test_fused_adam.py compares them); float
    sums are taken in another order. The squared-gradient sum is of the raw gradients, as
    ``optax.tree.norm(grads)`` is."""
    from sae_jax.kernels import cpu_kernels

    *head, adam, sched = opt_state
    if not (isinstance(adam, optax.ScaleByAdamState) and isinstance(sched, optax.ScaleByScheduleState)):
        raise TypeError(f"fused_adam_update needs the state of make_optimizer(cfg)'s chain, got {type(opt_state)}")
    o = cfg.optim
    count = _safe_increment(adam.count)
    f32 = jnp.float32
    bc1, bc2 = 1 - o.b1 ** count, 1 - o.b2 ** count  # as optax.tree.bias_correction
    # scale_by_learning_rate: -lr at the schedule's own count (an array even where the schedule is a constant)
    step = -jnp.asarray(lr_schedule(cfg)(sched.count), jnp.float32)
    scalars = jnp.stack([jnp.asarray(v, f32) for v in (o.b1, 1 - o.b1, o.b2, 1 - o.b2, o.eps, bc1, bc2, step)])
    new_p, mu, nu, sq = {}, {}, {}, []
    for name, g in grads.items():
        w, m, v = params[name], adam.mu[name], adam.nu[name]
        unit = cfg.sae.decoder_unit_norm and name == KEY
        if w.ndim == 2 and w.dtype == f32:
            new_p[name], mu[name], nu[name], s = _adam_blocks(name, w, g, m, v, scalars, unit, mesh)
            sq.append(s)
            continue
        if unit:
            raise ValueError(f"fused_adam_update: {KEY} must be a 2-D float32 array, got {w.shape} {w.dtype}")
        sq.append(jnp.sum(g * g))
        mu[name] = (1 - o.b1) * g + o.b1 * m
        nu[name] = (1 - o.b2) * (g ** 2) + o.b2 * v
        u = (mu[name] / bc1.astype(g.dtype)) / (jnp.sqrt(nu[name] / bc2.astype(g.dtype)) + o.eps)
        new_p[name] = (w + step.astype(g.dtype) * u).astype(w.dtype)
    new_state = (*head, adam._replace(count=count, mu=mu, nu=nu), sched._replace(count=_safe_increment(sched.count)))
    return new_p, tuple(new_state), sum(sq)


def _adam_blocks(name: str, w, g, m, v, scalars, unit: bool, mesh: Mesh | None):
    """``cpu_kernels.adam_native`` on one device, or on each device's block of a sharded parameter
    (the custom call is not partitioned by XLA, which would gather the whole parameter to each device)."""
    from sae_jax.kernels import cpu_kernels

    threads = cpu_kernels.threads_for(mesh)

    def one(w, g, m, v, scalars):
        return cpu_kernels.adam_native(w, g, m, v, scalars, tangent=unit, renorm=unit, threads=threads)

    if mesh is None or mesh.size == 1:
        return one(w, g, m, v, scalars)
    spec = PARAM_SPECS.get(name, P())
    if unit and spec != PARAM_SPECS[KEY]:
        raise ValueError(f"fused_adam_update: the unit-norm {KEY} must be split by rows, got {spec}")
    axes = tuple(a for entry in spec if entry is not None for a in ((entry,) if isinstance(entry, str) else entry))

    def local(w, g, m, v, scalars):
        w, m, v, sq = one(w, g, m, v, scalars)
        return w, m, v, jax.lax.psum(sq, axes) if axes else sq  # replicated axes hold copies: not summed

    return jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 4 + (P(),), out_specs=(spec,) * 3 + (P(),),
                         check_vma=False)(w, g, m, v, scalars)


def _primal_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    parts = []
    if cfg.sae.decoder_unit_norm:
        parts.append(remove_parallel_component())
    if cfg.optim.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.optim.max_grad_norm))
    parts.append(optax.scale_by_adam(b1=cfg.optim.b1, b2=cfg.optim.b2, eps=cfg.optim.eps))
    parts.append(optax.scale_by_learning_rate(lr_schedule(cfg)))
    chain = optax.chain(*parts)
    if cfg.optim.max_grad_norm <= 0:  # the chain fused_adam_update reproduces (train_step.py uses it on CPU)
        chain.update.sae_jax_fusion_key = _fusion_key(cfg)
    return chain
