"""Constrained optimisation against closed forms (KKT points, multiplier dynamics, games)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sae_jax.constraints import CMPOutput, ConstrainedOptimizer, Multipliers, dual_gradient, lagrangian


def _run(opt, problem, params, n_steps, num_ineq=0, num_eq=0, args=()):
    state = opt.init(params, num_ineq=num_ineq, num_eq=num_eq)

    @jax.jit
    def body(carry, _):
        p, s = carry
        p, s, info = opt.update(problem, p, s, *args)
        return (p, s), info["multipliers"]

    (params, state), hist = jax.lax.scan(body, (params, state), None, length=n_steps)
    return params, state, hist


A = jnp.array([1.0, 2.0, -0.5, 3.0])


def test_linear_constraint_converges_to_kkt_point():
    # min ||θ - a||² s.t. sum(θ) <= r. KKT: θ* = a - (λ*/2)·1, λ* = 2(sum a - r)/n.
    r = 2.0
    lam_star = 2 * (float(A.sum()) - r) / A.size
    theta_star = A - lam_star / 2

    def problem(theta):
        return CMPOutput(loss=jnp.sum(jnp.square(theta - A)), ineq=jnp.sum(theta) - r)

    for scheme in ("simultaneous", "alternating", "extragradient"):
        opt = ConstrainedOptimizer(primal=optax.sgd(0.05), dual=optax.sgd(0.05), scheme=scheme)
        theta, state, _ = _run(opt, problem, jnp.zeros(4), 3000, num_ineq=1)
        np.testing.assert_allclose(theta, theta_star, atol=1e-4, err_msg=scheme)
        np.testing.assert_allclose(state.multipliers.ineq[0], lam_star, atol=1e-4, err_msg=scheme)


def test_l1_ball_matches_optax_projection():
    # min ||θ - a||² s.t. ||θ||_1 <= r: θ* = projection of a onto the L1 ball (soft threshold τ),
    # and the multiplier λ* = 2τ.
    r = 3.0
    theta_star = np.asarray(optax.projections.projection_l1_ball(A, r))
    tau = float(np.max(np.abs(A) - np.abs(theta_star)))

    def problem(theta):
        return CMPOutput(loss=jnp.sum(jnp.square(theta - A)), ineq=jnp.sum(jnp.abs(theta)) - r)

    # The subgradient at 0 makes zero coordinates chatter (amplitude ~ step size): Adam primal
    # with a decaying rate settles them to within a few 1e-3.
    sched = optax.exponential_decay(0.05, 500, 0.5)
    opt = ConstrainedOptimizer(primal=optax.adam(sched), dual=optax.sgd(0.05))
    theta, state, _ = _run(opt, problem, jnp.zeros(4), 4000, num_ineq=1)
    np.testing.assert_allclose(theta, theta_star, atol=3e-3)
    np.testing.assert_allclose(state.multipliers.ineq[0], 2 * tau, atol=1e-2)


def test_equality_constraint_augmented_lagrangian():
    # min ||θ - a||² s.t. θ_0 + θ_1 = 1: θ* = a - (μ*/2)(1,1,0,0), μ* = (a0 + a1 - 1).
    mu_star = float(A[0] + A[1] - 1.0)
    theta_star = A - (mu_star / 2) * jnp.array([1.0, 1.0, 0.0, 0.0])

    def problem(theta):
        return CMPOutput(loss=jnp.sum(jnp.square(theta - A)), eq=theta[0] + theta[1] - 1.0)

    opt = ConstrainedOptimizer(primal=optax.sgd(0.05), dual=optax.sgd(0.5), scheme="alternating",
                               formulation="augmented_lagrangian", penalty_init=0.5)
    theta, state, _ = _run(opt, problem, jnp.zeros(4), 2000, num_eq=1)
    np.testing.assert_allclose(theta, theta_star, atol=1e-4)
    np.testing.assert_allclose(state.multipliers.eq[0], mu_star, atol=1e-4)


def test_multiplier_grows_while_violated_and_decays_to_zero_when_slack():
    # Frozen primal (lr 0) and a violation schedule: λ_t follows max(0, λ + η g_t) exactly.
    eta = 0.1

    def problem(theta, g):
        return CMPOutput(loss=jnp.sum(theta ** 2), ineq=g)

    opt = ConstrainedOptimizer(primal=optax.sgd(0.0), dual=optax.sgd(eta))
    params = jnp.zeros(2)
    state = opt.init(params, num_ineq=1)
    schedule = [0.5] * 10 + [-0.3] * 30
    lam, history = 0.0, []
    step = jax.jit(lambda p, s, g: opt.update(problem, p, s, g))
    for g in schedule:
        params, state, _ = step(params, state, jnp.float32(g))
        lam = max(0.0, lam + eta * g)
        history.append(float(state.multipliers.ineq[0]))
        assert history[-1] == pytest.approx(lam, abs=1e-6)
    assert all(b > a for a, b in zip(history[:9], history[1:10]))  # grows while violated
    assert history[-1] == 0.0  # exactly zero once slack (projection), not negative
    assert history[12] < history[9]  # decays as soon as it is slack


def test_strict_violation_drives_dual_only():
    # The dual sees the strict violation; the primal gradient sees only the surrogate.
    def problem(theta):
        surrogate = jnp.sum(theta) - 1.0
        return CMPOutput(loss=jnp.sum(theta ** 2), ineq=surrogate, strict_ineq=jnp.float32(0.25) + 0 * theta[0])

    mult = Multipliers(ineq=jnp.array([2.0]), eq=jnp.zeros((0,)))
    pen = Multipliers(ineq=jnp.ones(1), eq=jnp.ones(0))
    theta = jnp.array([1.0, 2.0])
    out = problem(theta)
    np.testing.assert_allclose(dual_gradient(out, mult, pen).ineq, [0.25])
    g = jax.grad(lambda t: lagrangian(problem(t), mult, pen))(theta)
    np.testing.assert_allclose(g, 2 * theta + 2.0)  # d/dθ [θ² + λ(sum θ - 1)]


def test_augmented_lagrangian_penalty_grows_while_violated():
    def problem(theta):
        return CMPOutput(loss=jnp.sum(jnp.square(theta - A)), ineq=jnp.sum(theta) - 2.0)

    opt = ConstrainedOptimizer(primal=optax.sgd(0.0), dual=optax.sgd(0.0), formulation="augmented_lagrangian",
                               penalty_init=1.0, penalty_growth=2.0, penalty_every=2, penalty_max=8.0)
    params = A  # sum = 5.5 > 2: violated, and the primal is frozen
    state = opt.init(params, num_ineq=1)
    rhos = []
    for _ in range(10):
        params, state, _ = opt.update(problem, params, state)
        rhos.append(float(state.penalty.ineq[0]))
    assert rhos == [1.0, 2.0, 2.0, 4.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0]


def test_augmented_lagrangian_matches_classical_multiplier_update():
    # With an SGD dual of step ρ the AL dual step is λ <- max(0, λ + ρ g).
    rho = 0.7
    mult = Multipliers(ineq=jnp.array([0.3, 0.3]), eq=jnp.zeros(0))
    pen = Multipliers(ineq=jnp.full(2, rho), eq=jnp.ones(0))
    g = jnp.array([0.5, -2.0])
    gd = dual_gradient(CMPOutput(loss=jnp.float32(0), ineq=g), mult, pen, "augmented_lagrangian")
    np.testing.assert_allclose(mult.ineq + rho * gd.ineq, np.maximum(0, np.array([0.3, 0.3]) + rho * np.array(g)),
                               rtol=1e-6)


def test_extragradient_converges_on_bilinear_game_where_gda_diverges():
    # min_x max_λ λ·x  (equality constraint x = 0 with zero loss) is the bilinear game.
    def problem(x):
        return CMPOutput(loss=jnp.float32(0.0) * jnp.sum(x), eq=x)

    x0 = jnp.array([1.0, -0.5])

    def final_norm(scheme):
        opt = ConstrainedOptimizer(primal=optax.sgd(0.1), dual=optax.sgd(0.1), scheme=scheme,
                                   multiplier_init=0.0)
        state = opt.init(x0, num_eq=2)
        assert state.multipliers.ineq is None  # no inequality constraints: nothing stored for them
        state = state._replace(multipliers=Multipliers(ineq=None, eq=jnp.array([0.5, 1.0])))
        x, s = x0, state
        step = jax.jit(lambda x, s: opt.update(problem, x, s)[:2])
        for _ in range(500):
            x, s = step(x, s)
        return float(jnp.sqrt(jnp.sum(x ** 2) + jnp.sum(s.multipliers.eq ** 2)))

    start = float(jnp.sqrt(jnp.sum(x0 ** 2) + 0.5 ** 2 + 1.0))
    # Simultaneous GDA multiplies the distance to the saddle by sqrt(1 + η²) per step.
    assert final_norm("simultaneous") == pytest.approx(start * (1 + 0.01) ** 250, rel=1e-3)
    # Extra-gradient: z <- (I - ηA + η²A²) z with A skew (eigenvalues ±i), a contraction by
    # sqrt(1 - η² + η⁴) per step.
    eg = final_norm("extragradient")
    assert eg == pytest.approx(start * (1 - 0.01 + 1e-4) ** 250, rel=1e-3)
    assert eg < 0.1 * start


def test_bad_sizes_raise_clear_error():
    opt = ConstrainedOptimizer(primal=optax.sgd(0.1))
    state = opt.init(jnp.zeros(2), num_ineq=2)

    def problem(theta):
        return CMPOutput(loss=jnp.sum(theta), ineq=jnp.sum(theta))

    with pytest.raises(ValueError, match="num_ineq"):
        opt.update(problem, jnp.zeros(2), state)
    with pytest.raises(ValueError, match="scheme"):
        ConstrainedOptimizer(primal=optax.sgd(0.1), scheme="gda")


def test_absent_constraint_kind_is_stored_as_none_and_round_trips_through_orbax(tmp_path):
    """Orbax cannot save empty arrays: a kind without constraints is None in the state, the state
    keeps its structure through updates (Adam dual too), and a checkpoint restores it exactly."""
    from sae_jax.checkpoint import Checkpointer
    from sae_jax.config import CheckpointConfig

    def problem(theta):  # min ||θ - a||² s.t. sum(θ) <= 2
        return CMPOutput(loss=jnp.sum((theta - A) ** 2), ineq=jnp.sum(theta)[None] - 2.0)

    opt = ConstrainedOptimizer(primal=optax.sgd(0.05), dual=optax.adam(0.05))
    theta, state = A, opt.init(A, num_ineq=1)
    assert state.multipliers.eq is None and state.penalty.eq is None
    step = jax.jit(lambda t, s: opt.update(problem, t, s))
    for _ in range(5):
        theta, new_state, _ = step(theta, state)
        assert jax.tree.structure(new_state) == jax.tree.structure(state)
        state = new_state
    ckpt = Checkpointer(str(tmp_path / "ckpt"), CheckpointConfig())
    ckpt.save(5, state)
    ckpt.wait()
    restored = ckpt.restore(5, jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state))
    ckpt.close()
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)
    assert float(state.multipliers.ineq[0]) > 0  # the constraint was violated, the multiplier rose


def test_info_grad_norm_is_the_norm_of_the_applied_primal_gradient():
    def problem(theta):
        return CMPOutput(loss=jnp.sum((theta - A) ** 2), ineq=jnp.sum(theta)[None] - 2.0)

    opt = ConstrainedOptimizer(primal=optax.sgd(0.1), multiplier_init=0.7)
    _, _, info = opt.update(problem, A * 2, opt.init(A, num_ineq=1))
    # ∂/∂θ [||θ - a||² + 0.7 (sum θ - 2)] = 2(θ - a) + 0.7 at θ = 2a
    np.testing.assert_allclose(info["grad_norm"], np.linalg.norm(2 * np.asarray(A) + 0.7), rtol=1e-6)
