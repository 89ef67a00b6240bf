"""Tests of the task registry, the closed-form benchmarks and the random program generator.

Everything is traced or run eagerly (no large `jit`), to keep the file fast on a small CPU.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import tasks
from alphagrad.errors import AlphagradError
from alphagrad.tasks import _benchmarks, _random

BENCHMARKS = [
    "RoeFlux_1d",
    "RoeFlux_3d",
    "RobotArm_6DOF",
    "HumanHeartDipole",
    "PropaneCombustion",
    "BlackScholes_Jacobian",
    "Perceptron",
    "Encoder",
]
RANDOM = ["RandomScalar-0", "RandomScalar-1", "RandomTensor-0", "RandomTensor-1"]

# The primitives the graph builder has edge rules for.
ALLOWED_PRIMITIVES = frozenset(
    """
    neg abs exp exp2 log log1p expm1 sin cos tan asin acos atan sinh cosh tanh asinh acosh
    atanh integer_pow sqrt rsqrt cbrt logistic erf erfc square
    add sub mul div pow atan2 max min add_any select_n
    eq ne lt le gt ge
    dot_general reduce_sum reduce_max reduce_min
    transpose broadcast_in_dim squeeze reshape slice dynamic_slice concatenate stack
    convert_element_type copy stop_gradient iota
    """.split()
)
# Parameters under which call-like equations (jit, custom_jvp_call, custom_vjp_call) keep the
# jaxpr they wrap; such an equation is replaced by its inner equations.
SUB_JAXPR_PARAMS = ("jaxpr", "call_jaxpr")


def inlined_eqns(jaxpr):
    """Yields the equations of `jaxpr` with nested call jaxprs inlined, recursively."""
    for eqn in jaxpr.eqns:
        subs = [eqn.params[k] for k in SUB_JAXPR_PARAMS if k in eqn.params]
        if subs:
            for sub in subs:
                yield from inlined_eqns(getattr(sub, "jaxpr", sub))
        else:
            yield eqn


def all_avals(jaxpr):
    """Yields the abstract values of every variable in `jaxpr`, nested jaxprs included."""
    for v in list(jaxpr.invars) + list(jaxpr.constvars) + list(jaxpr.outvars):
        yield v.aval
    for eqn in jaxpr.eqns:
        for v in list(eqn.invars) + list(eqn.outvars):
            yield v.aval
        for k in SUB_JAXPR_PARAMS:
            if k in eqn.params:
                sub = eqn.params[k]
                yield from all_avals(getattr(sub, "jaxpr", sub))


def check_graph_builder_subset(closed_jaxpr):
    """Asserts every primitive is supported and every array has at most 2 dimensions."""
    jaxpr = closed_jaxpr.jaxpr
    bad = sorted({e.primitive.name for e in inlined_eqns(jaxpr)} - ALLOWED_PRIMITIVES)
    assert not bad, f"unsupported primitives: {bad}"
    ranks = [len(getattr(a, "shape", ())) for a in all_avals(jaxpr)]
    assert max(ranks) <= 2, f"an array has {max(ranks)} dimensions"


@functools.lru_cache(maxsize=None)
def task(name):
    return tasks.get(name)


@functools.lru_cache(maxsize=None)
def traced(name):
    t = task(name)
    return jax.make_jaxpr(t.fn)(*t.args)


def all_finite(tree):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree))


def value_and_jacfwd(fn, args):
    """Returns ``fn(*args)`` and its forward-mode Jacobian with respect to every argument.

    Programs on arrays run eagerly compile one XLA kernel per distinct primitive signature,
    which is slower than compiling the whole program once; long programs on scalars are the
    opposite (few distinct signatures, slow XLA compiles). Pick the faster of the two.
    """

    def both(*a):
        return fn(*a), jax.jacfwd(fn, argnums=tuple(range(len(a))))(*a)

    if all(np.ndim(a) == 0 for a in args):
        return both(*args)
    return jax.jit(both)(*args)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def test_names_in_registration_order():
    assert tasks.names() == BENCHMARKS + RANDOM


def test_unknown_name_raises_naming_the_task():
    with pytest.raises(AlphagradError, match="NoSuchTask"):
        tasks.get("NoSuchTask")


def test_random_program_is_reexported():
    assert tasks.random_program is _random.random_program


@pytest.mark.parametrize("name", BENCHMARKS + RANDOM)
def test_task_fields(name):
    t = task(name)
    assert t.name == name
    assert isinstance(t.args, tuple) and t.args
    assert t.description
    assert t.fn.__doc__


# --------------------------------------------------------------------------------------------
# Every task: supported primitives, rank <= 2, finite outputs and Jacobians
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BENCHMARKS + RANDOM)
def test_jaxpr_uses_only_supported_primitives_and_rank_at_most_2(name):
    check_graph_builder_subset(traced(name))


@pytest.mark.parametrize("name", BENCHMARKS + RANDOM)
def test_outputs_and_jacobian_are_finite(name):
    t = task(name)
    out, jac = value_and_jacfwd(t.fn, t.args)
    assert all_finite(out)
    assert all_finite(jac)


def test_every_name_resolves():
    for name in tasks.names():
        assert tasks.get(name).name == name


# --------------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------------


def test_input_and_output_counts():
    expected = {  # name: (flattened inputs, flattened outputs)
        "RoeFlux_1d": (6, 3),
        "RoeFlux_3d": (6, 3),
        "RobotArm_6DOF": (6, 6),
        "HumanHeartDipole": (8, 8),
        "PropaneCombustion": (11, 11),
        "BlackScholes_Jacobian": (5, 5),
        "Perceptron": (8, 1),
        "Encoder": (16, 1),
    }
    for name, (n_in, n_out) in expected.items():
        jaxpr = traced(name).jaxpr
        assert (len(jaxpr.invars), len(jaxpr.outvars)) == (n_in, n_out), name


def test_scalar_benchmarks_match_published_graph_sizes():
    # Vertices = intermediates + outputs of REFERENCE.md section 2.7. These scalar programs
    # lower to the same equations in every JAX version, so the sizes must match exactly.
    expected = {"RoeFlux_1d": 98 + 3, "RobotArm_6DOF": 108 + 6,
                "HumanHeartDipole": 78 + 8, "PropaneCombustion": 51 + 11}  # fmt: skip
    for name, n in expected.items():
        assert sum(1 for _ in inlined_eqns(traced(name).jaxpr)) == n, name


def test_human_heart_dipole_residuals():
    t = task("HumanHeartDipole")
    f = [float(v) for v in t.fn(*t.args)]
    assert f[0] == pytest.approx(0.15 + 0.15 - 1.0)
    assert f[1] == pytest.approx(0.15 + 0.15 - 1.0)
    # With every x equal to s the cubic terms collapse to -2 s^3.
    s = 0.15
    assert f[2] == pytest.approx(-1.0)
    assert f[3] == pytest.approx(4 * s * s - 1.0)
    assert f[4] == pytest.approx(-4 * s**3 - 1.0)
    assert f[6] == pytest.approx(-8 * s**4 - 1.0)


def test_propane_combustion_residuals():
    t = task("PropaneCombustion")
    f = [float(v) for v in t.fn(*t.args)]
    assert len(f) == 11
    assert f[0] == pytest.approx(0.15 + 0.15 - 3.0)
    assert f[4] == pytest.approx(0.0, abs=1e-7)
    assert f[10] == pytest.approx(0.15 - 10 * 0.15)


def test_robot_arm_at_zero_is_the_stretched_arm():
    px, py, pz, *angles = _benchmarks.robot_arm_6dof(*([jnp.float32(0.0)] * 6))
    assert float(px) == pytest.approx(175.0 + 890.0 + 50.0 + 185.0 * 0.0)
    assert float(py) == pytest.approx(0.0, abs=1e-4)
    assert float(pz) == pytest.approx(575.0 - 1035.0 - 185.0)
    assert len(task("RobotArm_6DOF").fn(*task("RobotArm_6DOF").args)) == 6


def test_roe_flux_1d_of_equal_states_is_the_physical_flux():
    # Equal left and right states have no jumps, so only the averaged physical flux remains.
    u0, u1, u2 = 0.01, 0.03, 0.03
    p = (0.5 - 1.0) * (u2 - 0.5 * u1**2 / u0)
    state = [jnp.float32(v) for v in (u0, u1, u2)]
    phi = [float(v) for v in _benchmarks.roeflux_1d(*state, *state)]
    assert phi == pytest.approx([u1, p + u1 * u1 / u0, u1 / u0 * (p + u2)], rel=1e-4)


def test_roe_flux_3d_of_equal_states_is_the_physical_flux():
    u0, u, u4 = 0.1, np.array([0.1, 0.2, 0.3]), 0.5
    p = (0.5 - 1.0) * (u4 - 0.5 * np.sum(u**2) / u0)
    v = u / u0
    state = tuple(jnp.asarray(x, jnp.float32) for x in ([u0], u, [u4]))
    phi0, phi, phi4 = _benchmarks.roeflux_3d(*state, *state)
    np.testing.assert_allclose(phi0, [u[0]], rtol=1e-4)
    np.testing.assert_allclose(phi, np.array([p, 0, 0]) + u * v, rtol=1e-4)
    np.testing.assert_allclose(phi4, [v[0] * (p + u4)], rtol=1e-4)
    shapes = [x.shape for x in task("RoeFlux_3d").fn(*task("RoeFlux_3d").args)]
    assert shapes == [(1,), (3,), (1,)]


def test_black_scholes_jacobian_is_the_closed_form_greeks():
    t = task("BlackScholes_Jacobian")
    got = [float(g[0]) for g in t.fn(*t.args)]
    S = K = r = sigma = T = 1.0
    cdf = lambda z: 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))  # noqa: E731
    pdf = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)  # noqa: E731
    d1 = (math.log(S / K) + (r + sigma**2 / 2) * T) / (sigma * math.sqrt(T))
    d2 = d1 - sigma * math.sqrt(T)
    disc = math.exp(-r * T)
    expected = [
        cdf(d1),  # delta
        -disc * cdf(d2),  # d/dK
        K * T * disc * cdf(d2),  # rho
        S * pdf(d1) * math.sqrt(T),  # vega
        S * pdf(d1) * sigma / (2 * math.sqrt(T)) + r * K * disc * cdf(d2),  # d/dT
    ]
    assert got == pytest.approx(expected, rel=1e-4)


def _np_softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_perceptron_with_zero_layer_norm_scale():
    # gamma = 0 makes the layer norm output beta everywhere, so the loss has a short form.
    t = task("Perceptron")
    x, y, W1, b1, W2, b2, gamma, beta = t.args
    assert (gamma, beta) == (0.0, 1.0) and isinstance(gamma, float)
    o = np.tanh(np.asarray(W2) @ np.full(8, beta) + np.asarray(b2))
    expected = -np.sum(np.asarray(y)[0] * np.log(_np_softmax(o)))
    loss = t.fn(*t.args)
    assert loss.shape == (1,)
    np.testing.assert_allclose(loss, [expected], rtol=1e-5)


def test_encoder_with_zero_layer_norm_scales():
    # gamma1 = 0 makes the second block's layer norm output beta1, whatever the first block did.
    t = task("Encoder")
    x, y, *_, W1, W2, b1, b2, g0, be0, g1, be1 = t.args
    assert (g0, be0, g1, be1) == (0.0, 1.0, 0.0, 1.0)
    silu = lambda z: z / (1.0 + np.exp(-z))  # noqa: E731
    z2 = silu(np.asarray(W2) @ np.ones((4, 4)) + np.asarray(b2))
    expected = -np.sum(np.asarray(y) * np.log(_np_softmax(z2)), axis=-1)
    loss = t.fn(*t.args)
    assert loss.shape == (2,)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Random programs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["scalar", "tensor"])
def test_random_program_is_deterministic(kind):
    a, b = _random.random_program(3, kind), _random.random_program(3, kind)
    assert str(jax.make_jaxpr(a.fn)(*a.args)) == str(jax.make_jaxpr(b.fn)(*b.args))
    for x, y in zip(a.args, b.args):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("kind", ["scalar", "tensor"])
def test_random_program_seeds_differ(kind):
    a, b = _random.random_program(0, kind), _random.random_program(1, kind)
    assert str(jax.make_jaxpr(a.fn)(*a.args)) != str(jax.make_jaxpr(b.fn)(*b.args))


def test_random_scalar_shape():
    t = task("RandomScalar-0")
    assert [a.shape for a in t.args] == [()] * 15
    assert all(a.dtype == jnp.float32 for a in t.args)
    outs = t.fn(*t.args)
    assert 10 <= len(outs) <= 20 and all(o.shape == () for o in outs)
    n_eqns = sum(1 for _ in inlined_eqns(traced("RandomScalar-0").jaxpr))
    assert n_eqns >= 60


def test_random_tensor_shape():
    t = task("RandomTensor-0")
    assert [a.shape for a in t.args] == [(4,), (2, 3), (4, 4), (4, 1)]
    outs = t.fn(*t.args)
    assert 4 <= len(outs) <= 8
    prims = {e.primitive.name for e in inlined_eqns(traced("RandomTensor-0").jaxpr)}
    assert "dot_general" in prims


def test_random_tensor_programs_mix_the_structural_primitives():
    prims = set()
    for seed in range(4):
        t = _random.random_program(seed, "tensor")
        prims |= {e.primitive.name for e in inlined_eqns(jax.make_jaxpr(t.fn)(*t.args).jaxpr)}
    for p in ["dot_general", "reshape", "transpose", "reduce_sum", "slice", "stop_gradient"]:
        assert p in prims, p
    assert prims & {"reduce_max", "reduce_min"}


def test_random_program_num_statements():
    t = _random.random_program(5, "tensor", num_statements=12)
    n_eqns = sum(1 for _ in inlined_eqns(jax.make_jaxpr(t.fn)(*t.args).jaxpr))
    assert n_eqns >= 12
    assert "12 statements" in t.description


@pytest.mark.parametrize("kind", ["scalar", "tensor"])
def test_random_programs_stay_finite_near_the_example(kind):
    # The guards hold on the whole box [-1, 1]; probe a corner and an interior point.
    t = _random.random_program(2, kind, num_statements=40)
    check_graph_builder_subset(jax.make_jaxpr(t.fn)(*t.args))
    rng = np.random.default_rng(2)
    corner = [np.sign(np.asarray(a)) for a in t.args]
    interior = [np.clip(a + rng.uniform(-0.1, 0.1, np.shape(a)), -1, 1) for a in t.args]
    for args in (corner, interior):
        args = tuple(jnp.asarray(a, jnp.float32) for a in args)
        out, jac = value_and_jacfwd(t.fn, args)
        assert all_finite(out)
        assert all_finite(jac)


@pytest.mark.parametrize(
    "kwargs",
    [dict(seed=-1), dict(seed=0, kind="matrix"), dict(seed=0, num_statements=0)],
)
def test_random_program_rejects_bad_arguments(kwargs):
    with pytest.raises(AlphagradError):
        _random.random_program(**kwargs)
