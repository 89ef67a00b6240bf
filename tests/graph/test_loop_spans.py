"""A kept loop whose values reach only a narrow part of f's outputs (a scalar cost) is one large-span
vertex with the equations that read it (`_loops.narrow_tail_span`): its partial is built by VJP
rows of those outputs (jax.jacrev's program for a scalar f) instead of the loop's full partial
times the output's adjoint. Exact in every order, and an ordinary dense vertex of the cost model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import graph, interpreter
from alphagrad.graph import _loops

_TAGS = np.array([0, 2, 1, 3, 3, 0])


@pytest.fixture(autouse=True)
def auto_cache(tmp_path, monkeypatch):
    """An empty order cache of the test's own and a tiny search budget for "auto" (as the corpus
    tests): the default budget searched 1-10 s per graph (29 s over the file) and wrote its
    orders to ~/.cache/alphagrad; these tests check that "auto"'s Jacobian is exact, not the
    search."""
    monkeypatch.setenv("ALPHAGRAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ALPHAGRAD_AUTO_SECONDS", "0.05")  # the floor of classic orders, then a short search


def _transport_plan(C, a, b):
    """Log-domain Sinkhorn (fori_loop of 20 steps, logsumexp); the transport plan."""
    eps = 0.1

    def body(_, fg):
        f, g = fg
        f = eps * jnp.log(a) - eps * jax.nn.logsumexp((g[None, :] - C) / eps, 1)
        g = eps * jnp.log(b) - eps * jax.nn.logsumexp((f[:, None] - C) / eps, 0)
        return f, g

    f, g = jax.lax.fori_loop(0, 20, body, (jnp.zeros(C.shape[0]), jnp.zeros(C.shape[1])))
    return jnp.exp((f[:, None] + g[None, :] - C) / eps)


def sinkhorn(C, a, b):
    """The scalar transport cost."""
    return jnp.sum(_transport_plan(C, a, b) * C)


def sinkhorn_plan(C, a, b):
    """The whole transport plan: wider than the loop's values."""
    return _transport_plan(C, a, b)


def _forward_algorithm(emis, trans):
    def step(alpha, e):
        return jax.nn.logsumexp(alpha[:, None] + trans, 0) + e, None

    return jax.lax.scan(step, emis[0], emis[1:])[0]


def crf(emis, trans):
    """Linear-chain CRF negative log-likelihood: the forward algorithm in a scan, minus the gold path."""
    gold = emis[jnp.arange(6), _TAGS].sum() + trans[_TAGS[:-1], _TAGS[1:]].sum()
    return jax.nn.logsumexp(_forward_algorithm(emis, trans)) - gold


def lqr(A, B, x0):
    """Finite-horizon LQR: a reverse Riccati scan, then a rollout scan whose cost is returned."""
    Q, R = jnp.eye(A.shape[0]), 0.1 * jnp.eye(B.shape[1])

    def back(P, _):
        K = jnp.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
        return Q + A.T @ P @ (A - B @ K), K

    _, Ks = jax.lax.scan(back, Q, None, length=6, reverse=True)

    def fwd(x, K):
        u = -K @ x
        return A @ x + B @ u, x @ Q @ x + u @ R @ u

    xT, costs = jax.lax.scan(fwd, x0, Ks)
    return costs.sum() + xT @ xT


def pole_loop(x):
    """A live select in the loop's body past sqrt's pole (x's zeros stay 0): its VJP rows are NaN
    there, where jax.jacfwd drops the untaken case's tangent; the span's partial checks them."""
    y = jax.lax.fori_loop(0, 40, lambda i, y: y + 0.01 * jnp.where(y > 0, jnp.sqrt(jnp.abs(y)), 0.0), x)
    return jnp.sum(y * y)


def crf_and_alpha(emis, trans):
    """The CRF's loop value is also an output: nothing narrower follows it."""
    alpha = _forward_algorithm(emis, trans)
    return jax.nn.logsumexp(alpha), alpha


def short_loop(x):
    """A 3-step fori_loop the unroll rule unrolls: not a kept loop, not fused."""
    return jnp.sum(jax.lax.fori_loop(0, 3, lambda i, y: jnp.sin(y) * y + 1.0, x))


_rng = np.random.default_rng(0)
_SINKHORN = ((_rng.uniform(0.0, 1.0, (4, 5)), np.full(4, 0.25), np.full(5, 0.2)), (0, 1, 2))
_CRF = ((_rng.normal(size=(6, 4)), _rng.normal(size=(4, 4)) * 0.5), (0, 1))
_LQR = ((np.eye(3) + 0.1 * _rng.normal(size=(3, 3)), _rng.normal(size=(3, 2)), _rng.normal(size=3)), (0, 1, 2))

NARROW = {"sinkhorn": (sinkhorn, *_SINKHORN), "crf": (crf, *_CRF), "lqr": (lqr, *_LQR),
          "pole": (pole_loop, (np.array([0.0, 0.5, 1.0, 2.0, 0.0, 0.3, 0.7, 1.5]),), 0)}
WIDE = {"sinkhorn_plan": (sinkhorn_plan, *_SINKHORN), "crf_and_alpha": (crf_and_alpha, *_CRF)}


def _as64(args):
    return tuple(jnp.asarray(a, jnp.float64) for a in args)


def check_exact_and_counted(f, args, argnums):
    """jacobian(f, o) == jax.jacfwd(f) (float64) for forward, reverse, Markowitz and "auto" compiled
    in one jax.jit, "auto" eagerly too, and count_muls == graph.cost; returns the graph."""
    with jax.enable_x64(True):
        args = _as64(args)
        g = interpreter.graph_of(f, *args, argnums=argnums)
        orders = ["forward", "reverse", "markowitz", "auto"]

        @jax.jit
        def reference_and_all_orders(*xs):
            return (jax.jacfwd(f, argnums=argnums)(*xs),
                    [interpreter.jacobian(f, o, argnums=argnums)(*xs) for o in orders])

        expected, jacobians = reference_and_all_orders(*args)
        jacobians.append(interpreter.jacobian(f, "auto", argnums=argnums)(*args))
        for order, jac in zip([*orders, "auto (eager)"], jacobians):
            assert jax.tree.structure(jac) == jax.tree.structure(expected), order
            for a, b in zip(jax.tree.leaves(jac), jax.tree.leaves(expected)):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-8, atol=1e-10, err_msg=order)
        for order in orders[:3]:
            assert interpreter.count_muls(f, order, *args, argnums=argnums) == graph.cost(g, order), order
    return g


def _primitives(g):
    return [v.primitive for v in g.vertices]


@pytest.mark.parametrize("name", sorted(NARROW))
def test_a_kept_loop_before_a_scalar_output_is_one_span_with_its_tail(name):
    f, args, argnums = NARROW[name]
    g = check_exact_and_counted(f, args, argnums)
    names = _primitives(g)
    # the loop(s) and every equation after them that reads their values: one vertex, the output's
    assert names.count("large_span") == 1 and not any(n.startswith(("scan", "while")) for n in names)
    assert g.outputs == (names.index("large_span") + 1,)
    span = next(e for e in g.program.equations if e.primitive.name == "closed_call")
    inner = [e.primitive.name for e in span.params["call_jaxpr"].jaxpr.eqns]
    assert inner.count("scan") == (2 if name == "lqr" else 1)


@pytest.mark.parametrize("name", sorted(NARROW))
def test_without_the_fusion_the_loop_is_its_own_vertex(name, monkeypatch):
    """The control of the test above: the same functions, `narrow_tail_span` off, keep a loop vertex."""
    monkeypatch.setattr(_loops, "narrow_tail_span", lambda *a, **k: None)
    f, args, argnums = NARROW[name]
    with jax.enable_x64(True):
        names = _primitives(interpreter.graph_of(f, *_as64(args), argnums=argnums))
    assert "large_span" not in names and any(n.startswith("scan") for n in names)


def test_a_span_of_a_jitted_function_and_the_loop_alone_agree():
    """A function under jax.jit (its body an inlined call whose outputs are f's) is fused the same way."""
    f, args, argnums = NARROW["crf"]
    g = check_exact_and_counted(jax.jit(f), args, argnums)
    assert _primitives(g).count("large_span") == 1


@pytest.mark.parametrize("name", sorted(WIDE))
def test_a_loop_whose_values_reach_wide_or_own_outputs_is_not_fused(name):
    f, args, argnums = WIDE[name]
    g = check_exact_and_counted(f, args, argnums)
    names = _primitives(g)
    assert "large_span" not in names and any(n.startswith("scan") for n in names)


def test_a_loop_the_unroll_rule_unrolls_is_not_fused():
    g = check_exact_and_counted(short_loop, (np.linspace(0.1, 0.9, 6),), 0)
    names = _primitives(g)
    assert "large_span" not in names and not any(n.startswith("scan") for n in names)


def test_a_narrow_output_read_again_inside_a_call_keeps_the_loop():
    """The tail must end at f's own outputs: a call's scalar that f reads again is not one."""
    def scaled(emis, trans):
        return 2.0 * jax.jit(crf)(emis, trans)

    g = check_exact_and_counted(scaled, *_CRF)
    names = _primitives(g)
    assert "large_span" not in names and any(n.startswith("scan") for n in names)


def newton_sqrt(x):
    """A while loop with a value-dependent trip count (no transpose: its VJP rows fail)."""
    def body(state):
        y, k = state
        return 0.5 * (y + x / y), k + 1

    y, _ = jax.lax.while_loop(lambda s: (jnp.max(jnp.abs(s[0] * s[0] - x)) > 1e-12) & (s[1] < 50), body,
                              (jnp.ones_like(x), 0))
    return jnp.sum(jnp.sin(y))


def test_a_while_loop_without_a_transpose_is_fused_and_built_by_columns():
    g = check_exact_and_counted(newton_sqrt, (np.linspace(1.0, 3.0, 10),), 0)
    assert _primitives(g) == ["broadcast_in_dim", "large_span"]


def test_the_tail_is_walked_only_where_the_narrowest_output_allows_a_narrow_one(monkeypatch):
    """`_loops.tail_may_be_narrow` spares the walk through the rest of the program (each kept loop's,
    quadratic in a chain of loops) where even f's narrowest float output is too wide; the scalar
    costs still reach `narrow_tail_span`."""
    walked = []
    walk = _loops.narrow_tail_span
    monkeypatch.setattr(_loops, "narrow_tail_span", lambda *a, **k: walked.append(a[1]) or walk(*a, **k))
    with jax.enable_x64(True):
        for f, args, argnums in (WIDE["sinkhorn_plan"], NARROW["sinkhorn"]):
            before = len(walked)
            names = _primitives(interpreter.graph_of(f, *_as64(args), argnums=argnums))
            assert (len(walked) > before) == ("large_span" in names)
