"""Constrained optimisation as a two-player game, in optax.

A *problem* is a pure function ``problem(params, *args) -> CMPOutput`` returning the loss
and violation vectors of inequality constraints ``g(θ) <= 0`` and/or equality constraints
``c(θ) = 0``. ``ConstrainedOptimizer`` descends on the primal parameters with any optax
optimizer and *ascends* on the Lagrange multipliers with its own optax optimizer
(SGD by default), projecting inequality multipliers onto ``>= 0``.

Formulations (``ρ`` = per-constraint penalty coefficient, kept in the state):

- ``lagrangian``: ``L = f + λ·g + μ·c``; dual gradient ``(g, c)``.
- ``augmented_lagrangian`` (Powell–Hestenes–Rockafellar):
  ``L = f + Σ (max(0, λ + ρ g)² − λ²) / (2ρ) + μ·c + ρ/2 ‖c‖²``; dual gradient
  ``(max(g, −λ/ρ), c)``, so an SGD dual step of size ρ is the classical
  ``λ ← max(0, λ + ρ g)``. ρ grows by ``penalty_growth`` where the violation exceeds
  ``penalty_tolerance``, every ``penalty_every`` steps, capped at ``penalty_max``.

Update schemes:

- ``simultaneous``: both players step from gradients at ``(θ, λ)``.
- ``alternating``: primal steps first; the dual steps with the violation at the new ``θ``
  (one extra forward pass).
- ``extragradient``: both players take a look-ahead step, gradients are taken at the
  look-ahead point, and that update is applied from the original point. Optimizer states
  advance once per step, with the look-ahead gradients (the look-ahead step reads the
  state; its own state update is discarded).

A problem may also return *strict* violations (e.g. a true L0 fraction): the dual player
uses them instead of the differentiable ones, the primal never differentiates them.

Everything is pure and jit-able; the state is a pytree (multipliers are tiny and meant
to be replicated on a mesh).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

Formulation = Literal["lagrangian", "augmented_lagrangian"]
Scheme = Literal["simultaneous", "alternating", "extragradient"]


class CMPOutput(NamedTuple):
    """What a constrained minimisation problem returns for one evaluation."""

    loss: jax.Array
    ineq: jax.Array | None = None  # [m] violations g(θ); feasible where <= 0
    eq: jax.Array | None = None  # [p] violations c(θ); feasible where == 0
    strict_ineq: jax.Array | None = None  # [m] non-differentiable g for the dual only
    strict_eq: jax.Array | None = None  # [p] non-differentiable c for the dual only
    aux: Any = None  # anything else (metrics), passed through


class Multipliers(NamedTuple):
    ineq: jax.Array  # [m], kept >= 0
    eq: jax.Array  # [p], free sign


class ConstrainedState(NamedTuple):
    primal: Any  # optax state of the primal optimizer
    dual: Any  # optax state of the dual optimizer
    multipliers: Multipliers  # a kind without constraints is None (orbax cannot save empty arrays)
    penalty: Multipliers  # per-constraint ρ (augmented Lagrangian; ones otherwise)
    step: jax.Array  # int32 scalar


def _full(m: Multipliers) -> Multipliers:
    """Multipliers with empty [0] vectors where the stored form has None (for the arithmetic)."""
    return Multipliers(ineq=_vec(m.ineq), eq=_vec(m.eq))


def _compact(m: Multipliers) -> Multipliers:
    """The stored form: None for a kind without constraints."""
    return Multipliers(ineq=m.ineq if m.ineq is not None and m.ineq.size else None,
                       eq=m.eq if m.eq is not None and m.eq.size else None)


def _vec(v: jax.Array | None) -> jax.Array:
    if v is None:
        return jnp.zeros((0,), jnp.float32)
    return jnp.atleast_1d(jnp.asarray(v, jnp.float32))


def lagrangian(out: CMPOutput, mult: Multipliers, penalty: Multipliers,
               formulation: Formulation = "lagrangian") -> jax.Array:
    """The scalar the primal player minimises (differentiable violations only)."""
    g, c = _vec(out.ineq), _vec(out.eq)
    _check_sizes(g, c, mult)
    if formulation == "lagrangian":
        return out.loss + jnp.sum(mult.ineq * g) + jnp.sum(mult.eq * c)
    if formulation == "augmented_lagrangian":
        rho_g, rho_c = penalty.ineq, penalty.eq
        ineq_term = (jnp.square(jnp.maximum(0.0, mult.ineq + rho_g * g)) - jnp.square(mult.ineq)) / (2 * rho_g)
        return out.loss + jnp.sum(ineq_term) + jnp.sum(mult.eq * c) + jnp.sum(0.5 * rho_c * jnp.square(c))
    raise ValueError(f"unknown formulation {formulation!r}; use 'lagrangian' or 'augmented_lagrangian'")


def dual_gradient(out: CMPOutput, mult: Multipliers, penalty: Multipliers,
                  formulation: Formulation = "lagrangian") -> Multipliers:
    """∂L/∂(λ, μ), using the strict violations where the problem gives them."""
    g = jax.lax.stop_gradient(_vec(out.strict_ineq if out.strict_ineq is not None else out.ineq))
    c = jax.lax.stop_gradient(_vec(out.strict_eq if out.strict_eq is not None else out.eq))
    _check_sizes(g, c, mult)
    if formulation == "augmented_lagrangian":
        g = jnp.maximum(g, -mult.ineq / penalty.ineq)
    return Multipliers(ineq=g, eq=c)


def _check_sizes(g: jax.Array, c: jax.Array, mult: Multipliers) -> None:
    if g.shape != mult.ineq.shape or c.shape != mult.eq.shape:
        raise ValueError(
            f"problem returned {g.shape[0]} inequality and {c.shape[0]} equality violations but the "
            f"state holds {mult.ineq.shape[0]} and {mult.eq.shape[0]} multipliers; pass matching "
            "num_ineq/num_eq to ConstrainedOptimizer.init"
        )


def _project(mult: Multipliers) -> Multipliers:
    # Inequality multipliers live in the non-negative orthant; equality ones are free.
    return Multipliers(ineq=optax.projections.projection_non_negative(mult.ineq), eq=mult.eq)


@dataclass(frozen=True)
class ConstrainedOptimizer:
    """Primal descent + dual ascent for a problem ``problem(params, *args) -> CMPOutput``."""

    primal: optax.GradientTransformation
    """Optimizer of the primal parameters (may read params, e.g. decoder-norm projection)."""
    dual: optax.GradientTransformation = optax.sgd(1e-2)
    """Optimizer of the multipliers; it receives minus the dual gradient (ascent)."""
    scheme: Scheme = "simultaneous"
    """simultaneous, alternating (primal first, dual at the new point) or extragradient."""
    formulation: Formulation = "lagrangian"
    """lagrangian or augmented_lagrangian (PHR)."""
    penalty_init: float = 1.0
    """Initial penalty coefficient ρ (augmented Lagrangian only)."""
    penalty_growth: float = 1.0
    """ρ is multiplied by this where a violation exceeds penalty_tolerance (1 = constant ρ)."""
    penalty_tolerance: float = 0.0
    """Violation (g, or |c|) above which ρ grows."""
    penalty_every: int = 1
    """Apply the ρ update rule every this many steps."""
    penalty_max: float = 1e4
    """Upper bound on ρ."""
    primal_projection: Callable[[Any], Any] | None = None
    """Applied to the primal params after every primal step (e.g. decoder row renormalisation)."""
    multiplier_init: float = 0.0
    """Initial value of every multiplier."""

    def __post_init__(self):
        if self.scheme not in ("simultaneous", "alternating", "extragradient"):
            raise ValueError(f"unknown scheme {self.scheme!r}; use simultaneous, alternating or extragradient")
        if self.formulation not in ("lagrangian", "augmented_lagrangian"):
            raise ValueError(f"unknown formulation {self.formulation!r}; use lagrangian or augmented_lagrangian")
        if self.penalty_init <= 0 or self.penalty_growth < 1 or self.penalty_every < 1:
            raise ValueError("need penalty_init > 0, penalty_growth >= 1 and penalty_every >= 1")
        if self.multiplier_init < 0:
            raise ValueError("multiplier_init must be >= 0 (inequality multipliers are non-negative)")

    def init(self, params: Any, num_ineq: int = 0, num_eq: int = 0) -> ConstrainedState:
        if num_ineq < 0 or num_eq < 0 or num_ineq + num_eq == 0:
            raise ValueError(f"need at least one constraint, got num_ineq={num_ineq}, num_eq={num_eq}")
        mult = _compact(Multipliers(ineq=jnp.full((num_ineq,), self.multiplier_init, jnp.float32),
                                    eq=jnp.full((num_eq,), self.multiplier_init, jnp.float32)))
        pen = _compact(Multipliers(ineq=jnp.full((num_ineq,), self.penalty_init, jnp.float32),
                                   eq=jnp.full((num_eq,), self.penalty_init, jnp.float32)))
        return ConstrainedState(primal=self.primal.init(params), dual=self.dual.init(mult),
                                multipliers=mult, penalty=pen, step=jnp.zeros((), jnp.int32))

    # -- pieces -------------------------------------------------------------------------
    def _grads(self, problem, params, mult, penalty, args):
        def lag(p):
            out = problem(p, *args)
            return lagrangian(out, mult, penalty, self.formulation), out

        (value, out), g_primal = jax.value_and_grad(lag, has_aux=True)(params)
        return value, out, g_primal, dual_gradient(out, mult, penalty, self.formulation)

    def _primal_step(self, params, grads, opt_state):
        updates, new_state = self.primal.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if self.primal_projection is not None:
            new_params = self.primal_projection(new_params)
        return new_params, new_state

    def _dual_step(self, mult, dual_grad, opt_state):
        mult, ascent = _compact(mult), jax.tree.map(jnp.negative, _compact(dual_grad))  # optax minimises
        updates, new_state = self.dual.update(ascent, opt_state, mult)
        return _project(_full(optax.apply_updates(mult, updates))), new_state

    def _penalty_update(self, penalty: Multipliers, dual_grad_out: CMPOutput, step) -> Multipliers:
        if self.formulation != "augmented_lagrangian" or self.penalty_growth == 1.0:
            return penalty
        g = _vec(dual_grad_out.strict_ineq if dual_grad_out.strict_ineq is not None else dual_grad_out.ineq)
        c = _vec(dual_grad_out.strict_eq if dual_grad_out.strict_eq is not None else dual_grad_out.eq)
        due = (step + 1) % self.penalty_every == 0

        def grow(rho, viol):
            bigger = jnp.minimum(rho * self.penalty_growth, self.penalty_max)
            return jnp.where(due & (viol > self.penalty_tolerance), bigger, rho)

        return Multipliers(ineq=grow(penalty.ineq, jax.lax.stop_gradient(g)),
                           eq=grow(penalty.eq, jax.lax.stop_gradient(jnp.abs(c))))

    # -- one step -----------------------------------------------------------------------
    def update(self, problem: Callable[..., CMPOutput], params: Any, state: ConstrainedState,
               *args) -> tuple[Any, ConstrainedState, dict[str, Any]]:
        """One primal–dual step. Returns (params, state, info).

        ``info`` holds ``loss``, ``lagrangian``, ``ineq``/``eq`` (violations at the point the
        gradients were taken), ``multipliers`` (before the step), ``grad_norm`` (of the primal
        gradient that was applied) and the problem's ``aux``.
        """
        mult, pen = _full(state.multipliers), _full(state.penalty)
        if self.scheme == "simultaneous":
            value, out, gp, gd = self._grads(problem, params, mult, pen, args)
            new_params, primal_state = self._primal_step(params, gp, state.primal)
            new_mult, dual_state = self._dual_step(mult, gd, state.dual)
            dual_out = out
        elif self.scheme == "alternating":
            value, out, gp, _ = self._grads(problem, params, mult, pen, args)
            new_params, primal_state = self._primal_step(params, gp, state.primal)
            dual_out = problem(new_params, *args)
            gd = dual_gradient(dual_out, mult, pen, self.formulation)
            new_mult, dual_state = self._dual_step(mult, gd, state.dual)
        else:  # extragradient
            _, _, gp0, gd0 = self._grads(problem, params, mult, pen, args)
            la_params, _ = self._primal_step(params, gp0, state.primal)
            la_mult, _ = self._dual_step(mult, gd0, state.dual)
            value, out, gp, gd = self._grads(problem, la_params, la_mult, pen, args)
            new_params, primal_state = self._primal_step(params, gp, state.primal)
            new_mult, dual_state = self._dual_step(mult, gd, state.dual)
            dual_out = out
        new_pen = self._penalty_update(pen, dual_out, state.step)
        new_state = ConstrainedState(primal=primal_state, dual=dual_state, multipliers=_compact(new_mult),
                                     penalty=_compact(new_pen), step=state.step + 1)
        info = {"loss": out.loss, "lagrangian": value, "ineq": _vec(out.ineq), "eq": _vec(out.eq),
                "multipliers": mult, "grad_norm": optax.tree.norm(gp), "aux": out.aux}
        return new_params, new_state, info


@dataclass(frozen=True)
class BoundConstrainedOptimizer:
    """A ConstrainedOptimizer with its constraint counts fixed, so ``init(params)`` has the
    one-argument signature of an optax optimizer (what generic train-state code calls)."""

    optimizer: ConstrainedOptimizer
    num_ineq: int = 0
    num_eq: int = 0

    def init(self, params: Any) -> ConstrainedState:
        return self.optimizer.init(params, num_ineq=self.num_ineq, num_eq=self.num_eq)

    def update(self, problem: Callable[..., CMPOutput], params: Any, state: ConstrainedState, *args):
        return self.optimizer.update(problem, params, state, *args)
