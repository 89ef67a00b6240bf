"""Every primitive is accepted (issue 12, item 2, arrays of rank <= 2).

A primitive without a structural rule (loops, branches, sorts, cumulative ops, indexing by
integer arrays, scatters, linear algebra, ...) becomes a vertex per derivative-carrying output
whose partials are dense and computed by JAX's own differentiation of the equation. A corpus of
small real-looking functions, each built around one such primitive, checks that the Jacobian equals
jax.jacrev in forward, reverse and Markowitz order, under jax.jit, and that the multiplications the
interpreter performs are the graph's cost.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import graph, interpreter
from alphagrad.errors import TraceError, UnsupportedPrimitiveError

ORDERS = ("forward", "reverse", "markowitz")

X4 = jnp.array([0.3, -0.7, 1.1, 0.5], jnp.float32)
X5 = jnp.array([0.9, -0.2, 0.4, 1.3, -1.0], jnp.float32)
M3 = jnp.array([[2.0, 0.3, -0.1], [0.4, 1.5, 0.2], [-0.3, 0.1, 1.8]], jnp.float32)
B3 = jnp.array([0.5, -1.0, 0.25], jnp.float32)
IDX = jnp.array([2, 0, 3, 2], jnp.int32)


# ---- the corpus: (function, arguments, argnums) -----------------------------------------------


def euler_integrator(y0, k):
    """Ten explicit Euler steps of a damped oscillator, with lax.scan (one carry)."""

    def step(y, _):
        dy = jnp.stack([y[1], -k[0] * y[0] - k[1] * y[1]])
        return y + 0.1 * dy, y[0]

    final, trajectory = jax.lax.scan(step, y0, None, length=10)
    return final, trajectory


def rk_two_carries(x, v):
    """A leapfrog integrator with two carries (position, velocity) and stacked outputs."""

    def step(carry, dt):
        q, p = carry
        p = p - 0.5 * dt * jnp.sin(q)
        q = q + dt * p
        p = p - 0.5 * dt * jnp.sin(q)
        return (q, p), jnp.sum(q * p)

    (q, p), energy = jax.lax.scan(step, (x, v), jnp.full(4, 0.1))
    return q, p, energy


def fori_static(x):
    """fori_loop with static bounds (a scan): repeated logistic-map smoothing."""
    return jax.lax.fori_loop(0, 4, lambda i, c: 0.9 * c * (1.0 - 0.1 * c) + 0.01 * i, x)


def fori_dynamic(x, n):
    """fori_loop whose trip count is an argument (a while loop)."""
    return jax.lax.fori_loop(0, n, lambda i, c: jnp.tanh(c) + c * 0.5, x)


def newton_sqrt(a):
    """Newton's iteration for sqrt(a) as a while_loop with a fixed trip count."""

    def body(state):
        i, y = state
        return i + 1, 0.5 * (y + a / y)

    return jax.lax.while_loop(lambda s: s[0] < 5, body, (0, jnp.ones_like(a)))[1]


def branchy(x):
    """lax.cond on a value computed from x."""
    return jax.lax.cond(jnp.sum(x) > 0, lambda y: jnp.sin(y) * y, lambda y: jnp.cos(y), x)


def switched(x, i):
    """lax.switch (which clamps its index) over three branches."""
    return jax.lax.switch(i, [jnp.sin, lambda y: y**2, lambda y: jnp.exp(-y)], x)


def sorted_weights(x):
    """A sorted-weights statistic (L-estimator)."""
    return jnp.sort(x) * jnp.linspace(0.1, 1.0, x.shape[0])


def cumulative(x):
    """Running sum and product."""
    return jnp.cumsum(x) + jnp.cumprod(1.0 + 0.1 * x)


def running_max(x):
    return jax.lax.cummax(x * x, axis=0)


def product(x):
    return jnp.prod(x) + jnp.prod(x[:2] + 1.0)


def clipped(x):
    return jnp.clip(x, -0.5, 0.8) * x


def indexed(x):
    """Integer-array indexing (gather)."""
    return x[IDX] * x[1]


def scattered(x):
    """x.at[idx].set and .add (scatter, scatter-add)."""
    y = x.at[jnp.array([0, 2])].set(x[1:3] ** 2)
    return y.at[IDX].add(jnp.sin(x))


def window(x, start):
    """dynamic_slice and dynamic_update_slice at a traced offset."""
    w = jax.lax.dynamic_slice(x, (start,), (2,))
    return jax.lax.dynamic_update_slice(x, w * 3.0, (start + 1,))


def linear_solve(a, b):
    """jnp.linalg.solve (lu, custom_linear_solve, triangular_solve)."""
    return jnp.linalg.solve(a, b)


def triangular(a, b):
    return jax.scipy.linalg.solve_triangular(a, b, lower=True)


def cholesky(a):
    return jnp.linalg.cholesky(a @ a.T + jnp.eye(3))


def log_softmax(x):
    """softmax and logsumexp: reduce_max, with argmax consumers off the derivative path."""
    return jax.nn.softmax(x) + jax.scipy.special.logsumexp(x) + jnp.argmax(x)


def embedding(table, tokens):
    """An embedding lookup followed by a mean-pooled linear read-out."""
    rows = table[tokens]
    return jnp.mean(rows, axis=0) @ table[:2].T


def noisy(x):
    """Fixed-key multiplicative noise (PRNG key values flow through the graph, without edges)."""
    return x * (1.0 + 0.1 * jax.random.normal(jax.random.key(0), x.shape))


def eigen_energy(a):
    """Smallest eigenvalue of a symmetric matrix (eigh: vectors and values)."""
    s = a + a.T
    vectors, values = jax.lax.linalg.eigh(s)
    return values[0] + jnp.sum(vectors[:, 0] ** 2)


CORPUS = {
    "euler_integrator": (euler_integrator, (X4[:2], jnp.array([2.0, 0.3], jnp.float32)), (0, 1)),
    "rk_two_carries": (rk_two_carries, (X4[:3], X5[:3]), (0, 1)),
    "fori_static": (fori_static, (X4,), 0),
    "fori_dynamic": (fori_dynamic, (X4, 3), 0),
    "newton_sqrt": (newton_sqrt, (jnp.array([2.0, 3.0, 0.5], jnp.float32),), 0),
    "branchy": (branchy, (X4,), 0),
    "switched": (switched, (X4, 1), 0),
    "sorted_weights": (sorted_weights, (X5,), 0),
    "cumulative": (cumulative, (X4,), 0),
    "running_max": (running_max, (X5,), 0),
    "product": (product, (X4,), 0),
    "clipped": (clipped, (X5,), 0),
    "indexed": (indexed, (X4,), 0),
    "scattered": (scattered, (X4,), 0),
    "window": (window, (X5, 1), 0),
    "linear_solve": (linear_solve, (M3, B3), (0, 1)),
    "triangular": (triangular, (M3, B3), (0, 1)),
    "cholesky": (cholesky, (M3,), 0),
    "log_softmax": (log_softmax, (X5,), 0),
    "embedding": (embedding, (jnp.arange(12.0, dtype=jnp.float32).reshape(4, 3) / 10, IDX[:3]), 0),
    "eigen_energy": (eigen_energy, (M3,), 0),
    "noisy": (noisy, (X4,), 0),
}


# jax.jacrev cannot differentiate a while loop (reverse mode needs a static trip count); the
# reference Jacobian of these comes from jax.jacfwd, which alphagrad's dense fallback agrees with.
WHILE_LOOPS = {"fori_dynamic", "newton_sqrt"}


def assert_close(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert a.shape == b.shape, (a.shape, b.shape)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_matches_jacrev_and_counts_the_graph_cost(name):
    f, args, argnums = CORPUS[name]
    expected = (jax.jacfwd if name in WHILE_LOOPS else jax.jacrev)(f, argnums=argnums)(*args)
    g = interpreter.graph_of(f, *args, argnums=argnums)
    for order in ORDERS:
        # under jax.jit (compiled once: op-by-op dispatch of the eliminations is the slow part)
        assert_close(jax.jit(interpreter.jacobian(f, order, argnums=argnums))(*args), expected)
        assert interpreter.count_muls(f, order, *args, argnums=argnums) == graph.cost(g, order)


# ---- a primitive JAX itself does not ship ------------------------------------------------------

softsort_p = jax.extend.core.Primitive("test_softsort")
softsort_p.def_impl(lambda x: jnp.sort(x) + 0.1 * jnp.cumsum(x))
softsort_p.def_abstract_eval(lambda x: jax.core.ShapedArray(x.shape, x.dtype))
jax.interpreters.ad.defjvp(softsort_p, lambda t, x: jax.jvp(lambda y: jnp.sort(y) + 0.1 * jnp.cumsum(y), (x,), (t,))[1])


@pytest.mark.parametrize("model", ["alphagrad-2024", "exact"])
def test_an_unknown_primitive_is_a_dense_vertex(model):
    def f(x):
        return jnp.sin(softsort_p.bind(x * 2.0))

    assert "test_softsort" not in graph.SUPPORTED_PRIMITIVES
    g = graph.trace(f, X4, cost_model=model)
    assert [v.primitive for v in g.vertices] == ["mul", "test_softsort", "sin"]
    [edge] = [e for e in g.edges if e.dst == g.node_id(2)]
    assert (edge.src, edge.code, edge.out_shape, edge.in_shape) == (g.node_id(1), 1, (4, 1), (4, 1))
    if model == "exact":
        for order in ORDERS:
            assert_close(interpreter.jacobian(f, order)(X4), jax.jacfwd(f)(X4))
            assert interpreter.count_muls(f, order, X4) == graph.cost(g, order)


def test_zero_derivative_outputs_get_no_edges():
    def f(x):
        order = jnp.argsort(x)  # sort of (x, iota): float keys and an integer permutation
        best = jnp.argmax(x)
        return x[order] * (x > 0) + x[best], order

    g = interpreter.graph_of(f, X5)
    into = {e.dst for e in g.edges}
    for v in g.vertices:
        if v.primitive in ("argmax", "gt", "iota", "lt", "convert_element_type"):
            assert g.node_id(v.number) not in into, v
    # the permutation is a value the interpreter computes, not a vertex and not a constant
    sort = next(eqn for eqn in g.program.equations if eqn.primitive is not None and eqn.primitive.name == "sort")
    assert sort.outputs[1].node is None and isinstance(sort.outputs[1].value, graph.ValueRef)
    assert g.program.outputs[1] == sort.outputs[1]
    jac, expected = interpreter.jacobian(f, "reverse")(X5), jax.jacfwd(f)(X5)
    assert_close(jac[0], expected[0])
    assert not np.any(np.asarray(jac[1]))


@pytest.mark.parametrize(
    "f", [jnp.cumsum, jnp.sort, lambda x: jax.lax.scan(lambda c, y: (c + y, c * y), 0.0, x)[1]],
    ids=["cumsum", "sort", "scan"],
)
def test_dense_fallback_on_zero_size_arrays(f):
    x = jnp.zeros(0, jnp.float32)
    assert_close(jax.jit(interpreter.jacobian(f, "reverse"))(x), jax.jacrev(f)(x))
    assert interpreter.count_muls(f, "reverse", x) == 0 == graph.cost(interpreter.graph_of(f, x), "reverse")


def test_three_dimensional_arrays_are_still_refused():
    def f(x):
        return jnp.sum(jnp.cumsum(x.reshape(2, 2, 2), axis=0), axis=(1, 2))

    with pytest.raises(UnsupportedPrimitiveError, match=r"shape \(2, 2, 2\) \(3 dimensions\) in equation 1 \(primitive "
                       r"'reshape', from .*test_any_primitive.py:\d+.*at most 2 dimensions"):
        interpreter.jacobian(f, "reverse")(jnp.ones(8))


def test_complex_values_through_a_dense_primitive_are_refused():
    def f(x):
        return jnp.real(jnp.fft.fft(x))

    with pytest.raises(TraceError, match="complex64 value from one that depends on a differentiated input"):
        interpreter.jacobian(f, "reverse")(X4)
