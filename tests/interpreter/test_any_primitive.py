"""Every primitive is accepted (issue 12, item 2, arrays of rank <= 2).

A primitive without a structural rule (loops, branches, sorts, cumulative ops, indexing by
integer arrays, scatters, linear algebra, ...) becomes a vertex per derivative-carrying output
whose partials are dense and computed by JAX's own differentiation of the equation. A corpus of
small real-looking functions, each built around one such primitive, checks that the Jacobian equals
jax.jacrev in forward, reverse and Markowitz order, under jax.jit, and that the multiplications the
interpreter performs are the graph's cost: it is part of the corpus, tested in test_corpus.py.
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


def assert_close(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert a.shape == b.shape, (a.shape, b.shape)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)


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


def test_a_primitive_without_rule_on_three_dimensional_arrays():
    def f(x):
        return jnp.sum(jnp.cumsum(x.reshape(2, 2, 2), axis=0), axis=(1, 2))

    x = jnp.linspace(0.1, 1.0, 8)
    assert_close(interpreter.jacobian(f, "reverse")(x), jax.jacrev(f)(x))
    assert interpreter.count_muls(f, "reverse", x) == graph.cost(interpreter.graph_of(f, x), "reverse")


def test_complex_outputs_are_refused():
    def f(x):
        return jnp.fft.fft(x)

    with pytest.raises(TraceError, match="complex64 value from one that depends on a differentiated input"):
        interpreter.jacobian(f, "reverse")(X4)


def test_complex_arithmetic_inside_a_real_function_is_one_dense_vertex():
    # rfft -> complex arithmetic -> irfft, and a span with two real results (real and imaginary parts)
    def spectral(u):
        return jnp.sin(jnp.fft.irfft(1j * jnp.arange(5) * jnp.fft.rfft(u), n=8)) * u

    def parts(u):
        r = jnp.fft.rfft(u * u)
        return r.real * 2.0, jnp.tanh(r.imag)

    u = jnp.linspace(-1.0, 1.0, 8)
    for f in (spectral, parts):
        g = interpreter.graph_of(f, u)
        assert any(v.primitive.startswith("complex_span") for v in g.vertices)
        orders = ("forward", "reverse")  # one program: jax.jacfwd's Jacobian and both orders'
        expected, jacobians = jax.jit(lambda u: (jax.jacfwd(f)(u), [interpreter.jacobian(f, o)(u) for o in orders]))(u)
        for order, jac in zip(orders, jacobians):
            assert_close(jac, expected)
            assert interpreter.count_muls(f, order, u) == graph.cost(g, order)


def test_custom_derivative_rules_are_followed():
    # relu'(0) = 0 by its rule (its body max(x, 0) would give 1/2); logaddexp at a tie; a custom VJP
    # rule (here a deliberately halved derivative) is what jax.jacrev follows too.
    @jax.custom_vjp
    def half_sin(x):
        return jnp.sin(x)

    half_sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, ct: (ct * jnp.cos(x) * 0.5,))

    x = jnp.array([0.0, 1.0, -1.0, 0.0])
    functions = {
        "relu": lambda a: jax.nn.relu(a) * a,
        "logaddexp": lambda a: jnp.logaddexp(a, a[::-1]),
        "custom_vjp": lambda a: half_sin(a) * 2.0,
    }
    for f in functions.values():  # one program each: jax.jacrev's Jacobian and both orders'
        expected, jacobians = jax.jit(lambda x: (jax.jacrev(f)(x), [interpreter.jacobian(f, o)(x) for o in ("forward", "reverse")]))(x)
        for jac in jacobians:
            assert_close(jac, expected)
    g = interpreter.graph_of(functions["relu"], x)
    assert g.vertices[0].primitive == "custom_jvp_call" and {e.code for e in g.edges if e.dst == g.node_id(1)} == {6}


def test_a_custom_vjp_rule_nonlinear_in_its_cotangent_is_refused():
    # Gradient clipping (the JAX docs' custom_vjp example) is no Jacobian: jax.jacrev's rows depend
    # on the cotangent each brings; a clear refusal instead of a different matrix.
    @jax.custom_vjp
    def clip_gradient(x):
        return x

    clip_gradient.defvjp(lambda x: (x, None), lambda _, g: (jnp.clip(g, -0.1, 0.1),))

    def f(x):
        return jnp.sin(clip_gradient(x)) * 2.0

    with pytest.raises(UnsupportedPrimitiveError, match=r"custom VJP rule of clip_gradient at .*not linear in its cotangent"):
        jax.jit(interpreter.jacobian(f, "reverse"))(X4)


@pytest.mark.parametrize("case", ["logaddexp", "product"])
def test_reduce_window_with_a_custom_computation_is_exact_where_jax_cannot_differentiate_it(case):
    """A generic reduce_window (a computation that is not add/max/min) is a dense vertex whose
    partials come from its JVP; under jit jax.jacfwd and jax.jacrev of the whole function fail
    ("Linearization failed"), so the reference is the same window written out by slicing."""
    x = jnp.array([0.3, -0.7, 1.1, 0.5, -0.2, 0.9])
    if case == "logaddexp":
        def f(x):
            return jax.lax.reduce_window(x, -jnp.inf, jnp.logaddexp, (3,), (1,), "VALID")

        def by_slices(x):
            return jnp.stack([jax.nn.logsumexp(x[i:i + 3]) for i in range(4)])
    else:
        def f(x):
            return jax.lax.reduce_window(x.reshape(2, 3), 1.0, jax.lax.mul, (1, 2), (1, 1), "SAME")

        def by_slices(x):
            p = jnp.pad(x.reshape(2, 3), ((0, 0), (0, 1)), constant_values=1.0)
            return p[:, :-1] * p[:, 1:]

    expected = jax.jit(jax.jacfwd(by_slices))(x)
    jacobians = jax.jit(lambda x: [interpreter.jacobian(f, order)(x) for order in ORDERS])(x)
    for J in jacobians:
        assert_close(J, expected)
