"""The tape interpreter (interpreter/_tape.py): forced onto small programs, it gives jax.jacfwd's
Jacobians (float64 to 1e-10, float32 close), under jit and vmap, in every order; count_muls stays
graph.cost; graphs outside its class fall back to the straight-line path."""

from __future__ import annotations

import functools
import math

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from alphagrad import graph, interpreter, tasks
from alphagrad.errors import UnsupportedPrimitiveError
from alphagrad.graph import _trace
from alphagrad.interpreter import _jacobian, _tape, _tape_products


@pytest.fixture
def force_tape(monkeypatch):
    """Every program in the tape's class runs on the tape, however short (and is traced with the
    2-D codes the tape executes, as programs of its sizes are: no labelled structures)."""
    monkeypatch.setattr(_tape, "TAPE_MIN_SIZE", 0)
    monkeypatch.setattr(_tape, "TAPE_MIN_EQUATIONS", 0)
    monkeypatch.setattr(_trace, "LABELLED_MAX_EQUATIONS", -1)


def integrator(s, p):
    """A state vector indexed into scalars, a few explicit steps, the state stacked; literals,
    a repeated operand (x * x), neg, a comparison and a select, an output that is also read."""
    x, y, z = s[0], s[1], s[2]
    for _ in range(3):
        dx = p[0] * (y - x)
        dy = x * (p[1] - z) - y
        dz = x * y - p[2] * z + 0.1 * (x * x)
        x, y, z = x + 0.01 * dx, y - 0.01 * -dy, jnp.where(z > 0.5, z + 0.01 * dz, jnp.sin(z))
    return jnp.stack([x, y, z]), x * 2.0, jnp.tanh(y) / (1.0 + z**2)


def scalars(a, b, c):
    """Scalar arguments and outputs; an output that an equation reads later (an output copy)."""
    u = jnp.exp(a) * b
    v = jnp.log1p(u * u) - c
    w = jnp.maximum(u, v) + jnp.arctan2(v, 2.0)
    return u, w, u * w


def lorenz_vector(state, params):
    """RK4 on the state vector as people write it: (3,) intermediates made by jnp.stack, vector
    adds and scalar multiples, slices and squeezes."""
    sigma, rho, beta = params[0], params[1], params[2]

    def f(s):
        x, y, z = s[0], s[1], s[2]
        return jnp.stack([sigma * (y - x), x * (rho - z) - y, x * y - beta * z])

    for _ in range(2):
        k1 = f(state)
        k2 = f(state + 0.005 * k1)
        k3 = f(state + 0.005 * k2)
        k4 = f(state + 0.01 * k3)
        state = state + 0.01 / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    return state


def matrix_recurrence(m, v):
    """2x2 matrices: products, transposes, dot products of vectors, a matrix-vector product."""
    a = m
    for _ in range(2):
        a = jnp.tanh(a @ m.T) * 0.5 + m
        v = a @ v + jnp.dot(v, v) * jnp.sin(v)
    return a, jnp.dot(v, a[0]) / (1.0 + v @ v)


def reductions(x, w):
    """Sums over axes, broadcasts back, outer products, a concatenate and a reshape; a sort and a
    value-dependent index (index maps applied as run-time 0/1 masks), a cumulative sum (tabulated)."""
    c = x - jnp.mean(x, axis=0, keepdims=True)  # (3, 2) minus a (1, 2) broadcast
    n = jnp.sqrt(jnp.sum(c * c, axis=1) + 1.0)  # (3,)
    y = c / n[:, None] + jnp.outer(n, w)
    z = jnp.concatenate([y.reshape(-1), jnp.sort(n * w[0]), jnp.cumsum(n)])  # sort: a run-time mask
    # Each maximum twice (JAX's partials: 1/2 each); maxima of two shapes: partials of two sizes.
    top = jnp.max(jnp.concatenate([y, y]), axis=0) + jnp.sum(jnp.max(c, axis=1))
    return jnp.sum(z * z), top * w + z[jnp.argmax(n)]  # an index computed from values


S = np.array([0.7, 0.9, 0.4])
P = np.array([10.0, 28.0, 2.6])


def _orders(g):
    rng = np.random.default_rng(0)
    shuffled = list(g.intermediates)
    rng.shuffle(shuffled)
    return ["forward", "reverse", "markowitz", shuffled]


def _close(actual, expected, rtol, atol=1e-12):
    leaves_a, leaves_b = jax.tree.leaves(actual), jax.tree.leaves(expected)
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, b in zip(leaves_a, leaves_b):
        assert np.shape(a) == np.shape(b)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


@pytest.mark.parametrize("fn, args, argnums", [
    (integrator, (S, P), (0, 1)),
    (integrator, (S, P), 0),  # P: an argument read as a value, not an input
    (scalars, (0.3, 1.2, 0.5), (0, 1, 2)),
    (lorenz_vector, (S, P), (0, 1)),
    (matrix_recurrence, (np.array([[0.3, -0.4], [0.2, 0.5]]), np.array([0.6, -0.1])), (0, 1)),
    (reductions, (np.arange(6.0).reshape(3, 2) / 7 - 0.2, np.array([0.4, -0.3])), (0, 1)),
])
def test_tape_equals_jacfwd_float64_every_order_jit_and_vmap(force_tape, fn, args, argnums):
    vmapped = ("reverse", "markowitz") if fn in (integrator, scalars) else ("reverse",)
    # Each order compiles its own tape: the larger vector programs, and the integrator with P read
    # as a value (the first case runs it in all four), run two orders (the Lorenz form covers all four).
    two = fn in (matrix_recurrence, reductions) or (fn is integrator and argnums == 0)
    orders = (lambda g: _orders(g)[1::2]) if two else _orders
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a, jnp.float64) for a in args)
        g = interpreter.graph_of(fn, *args, argnums=argnums)
        batch = tuple(jnp.stack([a, a * 0.9, a * 1.1]) for a in args)
        jacs = [(order, interpreter.jacobian(fn, order, argnums=argnums)) for order in orders(g)]

        # One compilation for the references and every order, at the arguments and under vmap (in
        # one or two orders: that keeps the test fast); a jit each compiled up to eight programs.
        @jax.jit
        def references_and_orders(xs, xs_batch):
            return (jax.jacfwd(fn, argnums=argnums)(*xs), jax.vmap(jax.jacfwd(fn, argnums=argnums))(*xs_batch),
                    [jac(*xs) for _, jac in jacs], [jax.vmap(jac)(*xs_batch) for o, jac in jacs if o in vmapped])

        expected, expected_batch, at_args, batched = references_and_orders(args, batch)
        assert len(batched) == len([o for o, _ in jacs if o in vmapped]) >= 1
        batched = iter(batched)
        for (order, _), jacobian in zip(jacs, at_args):
            tape = _tape.build(g, graph.plan(g, graph.resolve_order(g, order)))  # in the class
            assert tape.muls == graph.cost(g, order)
            assert interpreter.count_muls(fn, order, *args, argnums=argnums) == graph.cost(g, order)
            _close(jacobian, expected, rtol=1e-10)
            if order in vmapped:
                _close(next(batched), expected_batch, rtol=1e-10)


def test_tape_float32_and_has_aux(force_tape):
    args = (jnp.asarray(S, jnp.float32), jnp.asarray(P, jnp.float32))

    def with_aux(s, p):
        return integrator(s, p), s.sum()

    jac, aux = jax.jit(interpreter.jacobian(with_aux, "markowitz", argnums=1, has_aux=True))(*args)
    np.testing.assert_allclose(aux, S.sum(), rtol=1e-6)
    expected = jax.jacfwd(integrator, argnums=1)(*args)
    _close(jac, expected, rtol=2e-5, atol=1e-6)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(jac))


def test_tape_is_what_jacobian_runs(force_tape, monkeypatch):
    """The jitted program of a taped Jacobian holds the scan loops, whatever the program's length."""
    args = (jnp.asarray(S, jnp.float32), jnp.asarray(P, jnp.float32))
    text = jax.jit(interpreter.jacobian(integrator, "reverse", argnums=(0, 1))).lower(*args).as_text()
    assert "while" in text
    monkeypatch.setattr(_tape, "TAPE_MIN_SIZE", 10**9)
    text = jax.jit(interpreter.jacobian(integrator, "reverse", argnums=(0, 1))).lower(*args).as_text()
    assert "while" not in text


def large_program(x, w):
    h = jnp.tanh(w @ x)  # a (65,) vector and a (65, 65) matrix: 4,225 entries, more than the tape takes (patched)
    return jnp.sum(h * h), h[0] * x[1]


@jax.custom_vjp
def _sin(x):
    return jnp.sin(x)


_sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))


def custom_vjp_program(x, y):
    # a function with a custom VJP rule (no JVP): the tape binds it whole, its partials by rows of
    # its rule (session 26; before, it took the straight-line path)
    return _sin(x * y) * x


@jax.custom_vjp
def _clipped(x):
    return x


_clipped.defvjp(lambda x: (x, None), lambda _, g: (jnp.clip(g, -1.0, 1.0),))


@pytest.mark.parametrize("fn, args, reason", [
    (large_program, (np.linspace(-0.3, 0.5, 65), np.arange(65.0**2).reshape(65, 65) / 4e3), "entries"),
])
def test_unsupported_graphs_fall_back_to_the_straight_line_path(force_tape, monkeypatch, fn, args, reason):
    monkeypatch.setattr(_tape, "MAX_COMPONENTS", 4096)  # (16,384: a 65 x 65 matrix would be taken)
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a, jnp.float64) for a in args)
        argnums = tuple(range(len(args)))
        g = interpreter.graph_of(fn, *args, argnums=argnums)
        steps = graph.plan(g, graph.resolve_order(g, "reverse"))
        with pytest.raises(_tape.Unsupported, match=reason):
            _tape.build(g, steps)
        assert _jacobian._tape_of(g, steps) is None
        actual = jax.jit(interpreter.jacobian(fn, "reverse", argnums=argnums))(*args)
        _close(actual, jax.jacrev(fn, argnums=argnums)(*args), rtol=1e-10)  # (a custom VJP has no jacfwd)
        assert interpreter.count_muls(fn, "reverse", *args, argnums=argnums) == graph.cost(g, "reverse")


def test_custom_vjp_rules_run_on_the_tape_by_their_rows(force_tape):
    """A custom VJP rule on the tape: its partials are the rule's rows, as jax.jacrev's; a rule that
    is not linear in its cotangent (gradient clipping) is refused as on the straight-line path."""
    with jax.enable_x64(True):
        args = (jnp.asarray(0.4), jnp.asarray(0.7))
        g = interpreter.graph_of(custom_vjp_program, *args, argnums=(0, 1))
        orders = ("forward", "reverse")
        for order in orders:
            steps = graph.plan(g, graph.resolve_order(g, order))
            assert _jacobian._tape_of(g, steps) is not None
        # One program: jax.jacrev's Jacobian (a custom VJP has no jacfwd) and both orders'.
        expected, jacobians = jax.jit(lambda *a: (jax.jacrev(custom_vjp_program, argnums=(0, 1))(*a), [
            interpreter.jacobian(custom_vjp_program, order, argnums=(0, 1))(*a) for order in orders]))(*args)
        for got in jacobians:
            _close(got, expected, rtol=1e-12)
        with pytest.raises(UnsupportedPrimitiveError, match="not linear in its cotangent"):
            interpreter.jacobian(lambda x: _clipped(jnp.sin(x)) * x, "reverse")(jnp.linspace(0.1, 0.9, 3))


def cumulative_extrema(x, m):
    """Cumulative maxima and minima over plateaus and ties (x * x of +-1, rounded values, a
    constant row), along either axis of a matrix, reversed, and one of another (two run-time
    masks composed): JAX's JVP splits each tie as lax.max does, 1/2 each, 1/4... down a plateau.
    A sort and a top_k along an axis of the matrix (maps held on their fibers, `_mask_support`)."""
    a = jax.lax.cummax(x * x, axis=0)
    b = jax.lax.cummin(jnp.round(2.0 * x) / 2.0, axis=0, reverse=True)
    c = jax.lax.cummax(m, axis=1) + jax.lax.cummin(m, axis=0, reverse=True) * jnp.sort(m, axis=0)
    d = jax.lax.cummax(jnp.flip(jax.lax.cummax(x, axis=0)), axis=0)
    return jnp.sin(a) * b + d, c * m[0] + jnp.sum(jax.lax.top_k(m * m[:, ::-1], 2)[0])


def test_cumulative_extrema_run_on_the_tape_with_jax_jacfwds_tie_weights(force_tape):
    """cummax/cummin's partials are run-time masks whose entries are JAX's tie weights (not 0/1):
    the tape is built (no fall-back) and its Jacobian is jax.jacfwd's, ties included."""
    with jax.enable_x64(True):
        args = (jnp.array([1.0, -1.0, 1.0, 0.3, 2.0, 2.0, -2.0, 0.5, 2.0]),
                jnp.array([[1.0, 1.0, 0.5, 1.0], [0.2, 0.3, 0.3, 0.3], [2.0, 2.0, 2.0, 2.0]]))
        argnums = (0, 1)
        expected = jax.jit(jax.jacfwd(cumulative_extrema, argnums=argnums))(*args)  # (eager: 12 s of dispatch)
        weights = np.asarray(jax.jit(jax.jacfwd(jax.lax.cummax))(args[0] ** 2)).ravel()
        assert {0.125, 0.25, 0.5} <= set(weights.tolist())  # the ties are ties
        g = interpreter.graph_of(cumulative_extrema, *args, argnums=argnums)
        for order in _orders(g):
            steps = graph.plan(g, graph.resolve_order(g, order))
            assert _tape.build(g, steps).muls == graph.cost(g, order)
        # A random order (products of maps with maps and with values) is computed: one compilation.
        assert _jacobian._tape_of(g, steps) is not None
        assert interpreter.count_muls(cumulative_extrema, order, *args, argnums=argnums) == graph.cost(g, order)
        _close(jax.jit(interpreter.jacobian(cumulative_extrema, order, argnums=argnums))(*args), expected,
               rtol=1e-12, atol=1e-14)


def computed_windows(a, v):
    """Gathers, scatters and dynamic slices at computed indices along some axes of a [3, 4, 2]
    array (maps held on their bands, `_tape._window_bands`): ``jnp.take`` along an axis (fill and
    clip modes), duplicate scatter indices, starts clamped at the far end, a dynamic update."""
    i = jnp.argsort(v)  # a permutation of 0..3
    k = (jnp.argmax(v) + 2) % 4  # a start that the slices clamp
    b = jnp.take(a, i, axis=1) * jnp.take(a, i[:2] % 3, axis=0, mode="clip")[:1]
    c = a.at[:, i[::2] % 2].add(b[:, :2] ** 2).at[i[:2] % 3].set(jnp.sin(a[:2]))
    d = jax.lax.dynamic_slice(c, (k % 3, k, 0), (2, 2, 2)) * jax.lax.dynamic_slice_in_dim(b, k, 3, axis=1)[1:, :2]
    return jax.lax.dynamic_update_slice(c, d * v[0], (k, k - 2, 0)), a[:, i[0]] * jnp.cos(v[i[3]])


def test_maps_at_computed_indices_are_held_on_their_bands(force_tape):
    """Run-time maps at computed indices hold only the entries their windows may reach (a
    restricted band misses one: this test fails), and give jax.jacfwd's Jacobians."""
    with jax.enable_x64(True):
        args = (jnp.arange(24.0).reshape(3, 4, 2) / 10 - 1.0, jnp.array([0.95, -0.8, 0.9, 0.1]))
        expected = jax.jit(jax.jacfwd(computed_windows, argnums=(0, 1)))(*args)
        g = interpreter.graph_of(computed_windows, *args, argnums=(0, 1))
        for order in _orders(g):
            assert _tape.build(g, graph.plan(g, graph.resolve_order(g, order))).muls == graph.cost(g, order)
        # A random order is computed (one compilation).
        _close(jax.jit(interpreter.jacobian(computed_windows, order, argnums=(0, 1)))(*args), expected,
               rtol=1e-12, atol=1e-14)


def float_indices(x):
    """Indices converted from floats: any int32 (saturated at +-2**31 for the large entries), so
    indexing's ``where(i < 0, i + n, i)`` may wrap around in int32 (where it is not taken)."""
    i = (x * 1e10).astype(jnp.int32)
    return jnp.sin(x) * x[i] + x.at[i[:2]].add(x[2:4] ** 2)


def test_indices_converted_from_floats_run_on_the_tape(force_tape):
    """Integer arithmetic that may wrap around runs in its dtype, in the tape's kind as in JAX; a
    float64 buffer holds every int32 exactly: gathers and scatters at such indices stay on the tape."""
    with jax.enable_x64(True):
        x = jnp.array([1e-12, -3e-10, 1e3, -1e3, 0.4, -0.2])
        g = interpreter.graph_of(float_indices, x)
        steps = graph.plan(g, graph.resolve_order(g, "reverse"))
        assert _tape.build(g, steps).muls == graph.cost(g, "reverse")
        _close(jax.jit(interpreter.jacobian(float_indices, "reverse"))(x), jax.jacfwd(float_indices)(x), rtol=1e-12)


def small_integer_sums(x):
    """Integers summed from booleans and ones (int64 under x64: the buffer holds them exactly only
    by their bounded range): a cumulative count, a bincount (a scatter-add), a searchsorted by
    comparisons (a sum of booleans converted to int32), used as indices."""
    counts = jnp.bincount(jnp.argsort(x) % 3, length=4)
    rank = jnp.cumsum(x > 0.0)
    where = jnp.searchsorted(jnp.linspace(-1.0, 1.0, 5), x, method="compare_all")
    return x * counts[where % 4] + x[jnp.clip(rank, 0, 5)]


def test_integer_sums_and_scatters_of_bounded_range_run_on_the_tape(force_tape):
    with jax.enable_x64(True):
        x = jnp.array([0.3, -0.8, 0.9, 0.1, -0.2, 0.5])
        g = interpreter.graph_of(small_integer_sums, x)
        steps = graph.plan(g, graph.resolve_order(g, "reverse"))
        assert _tape.build(g, steps).muls == graph.cost(g, "reverse")
        expected = jax.jit(jax.jacfwd(small_integer_sums))(x)
        _close(jax.jit(interpreter.jacobian(small_integer_sums, "reverse"))(x), expected, rtol=1e-12)


def test_selection_maps_are_tabulated_from_numberings_as_from_the_identity_basis():
    # A map that moves each output entry from at most one operand entry is tabulated from three
    # numberings of the operand (one pass) instead of its identity basis (n passes): the same
    # entries; a map that sums entries (reduce_sum) is left to the basis.
    shape = (6, 4, 3)
    cases = [
        ("slice", {"start_indices": (1, 0, 0), "limit_indices": (5, 4, 3), "strides": (2, 1, 2)}, [None]),
        ("squeeze", {"dimensions": (0,)}, [None], (1, 4, 3)),
        ("reshape", {"new_sizes": (12, 6), "dimensions": None}, [None]),
        ("transpose", {"permutation": (2, 0, 1)}, [None]),
        ("rev", {"dimensions": (0, 2)}, [None]),
        ("broadcast_in_dim", {"shape": (2, 6, 4, 3), "broadcast_dimensions": (1, 2, 3)}, [None]),
        ("dynamic_slice", {"slice_sizes": (2, 4, 1)}, [None, np.int32(5), np.int32(0), np.int32(2)]),
    ]
    for name, params, fixed, *operand in cases:
        shapes = [operand[0] if operand else shape] + [() for _ in fixed[1:]]
        n = math.prod(shapes[0])
        basis = np.eye(n).reshape(n, *shapes[0])
        batch = [basis] + [v for v in fixed[1:]]
        matrix = np.asarray(_tape._numpy_map(name, params, batch, fixed), np.float64).reshape(n, -1).T
        rows, cols = np.nonzero(matrix)
        got = _tape._selection_map(name, params, shapes, 0, fixed)
        assert got is not None, name
        np.testing.assert_array_equal(got[0], rows)
        np.testing.assert_array_equal(got[1], cols)
        np.testing.assert_array_equal(got[2], matrix[rows, cols].astype(np.int64))
    assert _tape._selection_map("reduce_sum", {"axes": (1,)}, [shape], 0, [None]) is None
    assert _tape._selection_map("reduce_sum", {"axes": (0,)}, [(5,)], 0, [None]) is None
    assert _tape._selection_map("broadcast_in_dim", {"shape": (3, 5), "broadcast_dimensions": (1,)}, [(5,)], 0, [None])


def test_short_programs_keep_the_straight_line_path():
    args = (jnp.asarray(S, jnp.float32), jnp.asarray(P, jnp.float32))
    g = interpreter.graph_of(integrator, *args, argnums=(0, 1))
    steps = graph.plan(g, graph.resolve_order(g, "reverse"))
    assert _tape.straight_line_size(g, steps) < _tape.TAPE_MIN_SIZE
    assert _jacobian._tape_of(g, steps) is None


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), statements=st.integers(5, 25), order_seed=st.integers(0, 2**16))
def test_random_scalar_programs_tape_equals_straight_line(force_tape, seed, statements, order_seed):
    task = tasks.random_program(seed, "scalar", num_statements=statements)
    g = interpreter.graph_of(task.fn, *task.args, argnums=tuple(range(len(task.args))))
    order = list(g.intermediates)
    np.random.default_rng(order_seed).shuffle(order)
    steps = graph.plan(g, graph.resolve_order(g, order))
    tape = _tape.build(g, steps)
    assert tape.muls == graph.cost(g, order)
    leaves = jax.tree.leaves(task.args)
    outputs, blocks = jax.jit(lambda *xs: _tape.run(tape, list(xs)))(*leaves)
    expected_outputs, edges, _ = _jacobian._eliminate_all(g, steps, leaves, _jacobian.MultiplicationCounter())
    for a, b in zip(outputs, expected_outputs):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert set(blocks) == set(edges)  # the edges left: input -> output, the Jacobian's blocks
    for key, partial in edges.items():
        dense = np.asarray(_jacobian.densify(partial, jnp.float32))
        np.testing.assert_allclose(np.asarray(blocks[key].value), dense, rtol=1e-5, atol=1e-6)


def test_derivatives_of_a_taped_jacobian(force_tape):
    """The batched fast path (a custom_vmap rule) does not block differentiating the Jacobian."""
    with jax.enable_x64(True):
        args = (jnp.float64(0.3), jnp.float64(1.2), jnp.float64(0.5))
        jac = interpreter.jacobian(scalars, "markowitz", argnums=(0, 1, 2))
        expected, by_jacfwd, by_jacrev = jax.jit(lambda *a: (  # one program (op by op: seconds of dispatch)
            jax.jacfwd(jax.jacfwd(scalars, argnums=(0, 1, 2)), argnums=0)(*a),
            jax.jacfwd(jac, argnums=0)(*a), jax.jacrev(jac, argnums=0)(*a)))(*args)
        _close(by_jacfwd, expected, rtol=1e-10)
        _close(by_jacrev, expected, rtol=1e-10)


def mixed_shapes(x, m, s):
    """The same elementwise primitives on a (5,) vector, a (2, 2) matrix and a scalar; whole sums
    and dot products of vectors; data movements with parameters of their own each time (slices,
    jnp.roll, an empty slice in a concatenation, indexing with an index array, whose index
    arithmetic is folded at build time, jnp.split); functions with custom JVP rules."""
    for k in range(1, 3):
        x = x + jax.nn.relu(x - 0.1) + 0.1 * jax.nn.softplus(x)  # custom JVP rules (relu'(0) = 0)
        x = jnp.sin(x) * s + jnp.tanh(x) / (1.0 + x * x)
        m = jnp.sin(m) * s + jnp.tanh(m) / (1.0 + m * m)
        s = jnp.sin(s) * s + jnp.tanh(s) / (1.0 + s * s)
        s = s + jnp.sum(x) * 0.1 + jnp.dot(x, jnp.roll(x, k + 1)) * 0.05 + jnp.sum(m) * 0.1
        x = jnp.concatenate([x[k:], jax.lax.slice(x, (0,), (0,)), x[:k]]) + m.reshape(-1)[jnp.array([0, 1, 2, 3, -1])]
        m = m.T + x[1:3] * s
        head, _, tail = jnp.split(x, [2, 3])  # several outputs: one slice each
        s = s + jnp.linalg.norm(tail) * 0.1 + head[1] * 0.1
    return x, m, s


def test_tape_kinds_do_not_grow_with_shapes(force_tape):
    """Elementwise equations run on padded lanes (one kind per primitive and operand pattern,
    whatever the shape), data movements as copies of their sources (one kind): the tape has far
    fewer switch branches than the program has (primitive, parameters, shape) combinations, and
    its Jacobians are jax.jacfwd's."""
    with jax.enable_x64(True):
        args = (jnp.array([-0.5, -0.2, 0.1, 0.4, 0.7]), jnp.array([[0.3, -0.2], [0.1, 0.4]]), jnp.float64(0.6))
        argnums = (0, 1, 2)
        g = interpreter.graph_of(mixed_shapes, *args, argnums=argnums)
        combos = {(e.primitive.name, str(e.params), e.aval.shape) for e in g.program.equations if e.primitive is not None}
        expected = jax.jit(jax.jacfwd(mixed_shapes, argnums=argnums))(*args)
        for order in _orders(g)[3:]:  # a random order: products of every code pair
            tape = _tape.build(g, graph.plan(g, graph.resolve_order(g, order)))
            assert len(tape.branches) * 2 < len(combos)
            assert tape.muls == graph.cost(g, order)
            _close(jax.jit(interpreter.jacobian(mixed_shapes, order, argnums=argnums))(*args), expected, rtol=1e-10)


def test_the_tape_is_chosen_by_the_size_of_the_straight_line_program():
    """Equations on vectors weigh more than scalar ones: 200 equations on 4-entry vectors take the
    tape, 200 scalar equations keep the straight-line path."""
    def chain(x, p):
        for _ in range(50):
            x = x + 0.01 * jnp.sin(x) * p
        return x

    for shape in [(4,), ()]:
        args = (jnp.full(shape, 0.3), jnp.full(shape, 0.7))
        g = interpreter.graph_of(chain, *args, argnums=(0, 1))
        steps = graph.plan(g, graph.resolve_order(g, "reverse"))
        assert len(g.program.equations) >= _tape.TAPE_MIN_EQUATIONS
        taped = _jacobian._tape_of(g, steps) is not None
        assert taped == (shape != ()), (shape, _tape.straight_line_size(g, steps))


def mixed_precision(x, p):
    """Part of a float64 program computed in float32 (and a float32 argument)."""
    y = jnp.sin(x.astype(jnp.float32)) * p + 0.5
    return jnp.tanh(y.astype(jnp.float64) * x) + x * x, jnp.sum(y * y)


def test_tape_holds_float32_values_in_a_float64_program(force_tape):
    with jax.enable_x64(True):
        args = (jnp.linspace(-0.5, 0.7, 4), jnp.float32(1.3))
        g = interpreter.graph_of(mixed_precision, *args, argnums=(0, 1))
        tape = _tape.build(g, graph.plan(g, graph.resolve_order(g, "reverse")))
        assert tape.dtype == np.float64
        actual = jax.jit(interpreter.jacobian(mixed_precision, "reverse", argnums=(0, 1)))(*args)
        _close(actual, jax.jacfwd(mixed_precision, argnums=(0, 1))(*args), rtol=1e-6, atol=1e-6)


def branches(x, s):
    """A cond and a while loop (one carry, a value-dependent trip count) inside a program; a while
    of two carries and a scan (several results each), an argsort (a sort of two results whose
    permutation, no vertex, a gather reads) and a scatter-add at constant indices."""
    for _ in range(2):
        x = x + 0.1 * jax.lax.cond(s > 0.3, lambda: x * s, lambda: jnp.sin(x) - s)
        x = jax.lax.while_loop(lambda c: jnp.sum(c * c) > 0.5, lambda c: c * 0.8, x)
        s = s * 0.9 + 0.1 * jnp.sum(x)
    x, s = jax.lax.while_loop(lambda c: c[1] > 0.2, lambda c: (c[0] * 0.9 + c[1], c[1] * 0.5), (x, s))
    x = x + jax.lax.scan(lambda c, y: (0.7 * c + 0.3 * jnp.tanh(y * c), c), x[0], x)[1]
    return x[jnp.argsort(x * s)] + x.at[jnp.array([0, 0, 2])].add(x * s), s


def test_tape_binds_conds_and_while_loops_whole(force_tape):
    with jax.enable_x64(True):
        args = (jnp.array([0.6, -0.4, 0.9]), jnp.float64(0.45))
        g = interpreter.graph_of(branches, *args, argnums=(0, 1))
        names = [e.primitive.name for e in g.program.equations if e.primitive is not None]
        assert {"scan", "sort", "scatter-add"} <= set(names)
        tape = _tape.build(g, graph.plan(g, graph.resolve_order(g, "reverse")))
        assert tape.muls == graph.cost(g, "reverse")
        actual = jax.jit(interpreter.jacobian(branches, "reverse", argnums=(0, 1)))(*args)
        _close(actual, jax.jacfwd(branches, argnums=(0, 1))(*args), rtol=1e-10)


def coefficient_steps(x, a, coefficients=(0.3, 0.7)):
    """Steps alike but for their coefficients (literals of the bodies): a cond on a value, a
    scan (with a cond in its body), a while loop of fixed trip count."""
    for c in coefficients:
        x = jax.lax.cond(jnp.sum(x) > 0, lambda h: h * c + a, lambda h: jnp.cos(h) - c, x)
        ys = jax.lax.scan(lambda h, y: (jax.lax.cond(y > 0, lambda: jnp.tanh(c * h + y), lambda: h * (1 - c)),) * 2,
                          x[0], x, reverse=True)[1]
        x = jax.lax.while_loop(lambda s: s[0] < 2, lambda s: (s[0] + 1, s[1] * c + 0.1 * s[1] ** 2), (0, x + ys))[1]
    return x


def test_steps_differing_in_literals_share_kinds(force_tape):
    """The float literals of bodies bound whole are constant operands (`_tape._lift_literals`):
    a second step that differs only in its coefficients adds no kind (no branch XLA compiles);
    the graph, its cost and the Jacobians are unchanged."""
    with jax.enable_x64(True):
        args = (jnp.array([0.6, -0.4, 0.9]), jnp.array([0.2, 0.5, -0.3]))
        tapes = []
        for coefficients in [(0.3,), (0.3, 0.7)]:
            fn = functools.partial(coefficient_steps, coefficients=coefficients)
            g = interpreter.graph_of(fn, *args, argnums=(0, 1))
            tapes.append(_tape.build(g, graph.plan(g, graph.resolve_order(g, "reverse"))))
            assert tapes[-1].muls == graph.cost(g, "reverse")
        assert len(tapes[1].branches) == len(tapes[0].branches)
        actual = jax.jit(interpreter.jacobian(fn, "reverse", argnums=(0, 1)))(*args)
        _close(actual, jax.jacfwd(fn, argnums=(0, 1))(*args), rtol=1e-10)


def lorenz96(x, forcing):
    """Euler steps of Lorenz-96 on a 96-entry state (more entries than a scalar tape's row holds
    well): jnp.roll's slices and concatenations, elementwise arithmetic, a scalar broadcast."""
    for _ in range(3):
        x = x + 0.01 * ((jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - x + forcing)
    return x, jnp.sum(x * x)


@pytest.mark.parametrize("fn, args, lanes, block, after", [  # narrow steps scatter their lanes, wide ones write windows
    (integrator, (S, P), 8, 5, False),
    (reductions, (np.arange(6.0).reshape(3, 2) / 7 - 0.2, np.array([0.4, -0.3])), 8, 5, True),
    (matrix_recurrence, (np.array([[0.3, -0.4], [0.2, 0.5]]), np.array([0.6, -0.1])), 128, 5, False),
    # Blocks of 97 points split the 96 x 96 products unevenly (blocks of 5 took 40 s to plan);
    # narrow steps on it (8 lanes) were dropped for test_block_steps_equal_jacfwd's time.
    (lorenz96, (np.sin(np.arange(96.0)), 8.0), 128, 97, False),
])
def test_lane_steps_equal_jacfwd(force_tape, monkeypatch, fn, args, lanes, block, after):
    """Products planned as steps of several lanes (what plans of millions of multiplications
    take) give jax.jacfwd's Jacobian in two orders, under jit and vmap; products enumerated in
    blocks of a few points (as wide products are). `after`: the partials computed after the
    equation loop, a kind at a time (as wide programs compute them, and every program under
    vmap), an equation a chunk (the chunks' loop), and every equation of two or more runs of
    operand slots reading them from the table (`MAX_RUNS` 1)."""
    monkeypatch.setattr(_tape, "lanes_for", lambda muls: lanes)
    monkeypatch.setattr(_tape_products, "_POINTS_PER_BLOCK", block)
    if after:
        monkeypatch.setattr(_tape, "FUSED_PARTIALS", 0)
        monkeypatch.setattr(_tape, "MAX_RUNS", 1)
        monkeypatch.setattr(_tape, "PARTIALS_CHUNK_ENTRIES", 1)
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a, jnp.float64) for a in args)
        argnums = tuple(range(len(args)))
        g = interpreter.graph_of(fn, *args, argnums=argnums)
        for order in ("reverse", "markowitz"):
            tape = _tape.build(g, graph.plan(g, graph.resolve_order(g, order)))
            assert tape.prod_patterns.shape[-1] == lanes and tape.muls == graph.cost(g, order)
            assert not after or (tape.eq_partials is None and tape.partials and np.any(tape.eq_table_at >= 0))
        # One compilation (each order's tape costs seconds): reverse at the arguments, Markowitz
        # under vmap at two examples, and jax.jacfwd's Jacobians beside them.
        batch = tuple(jnp.stack([a, a * 0.9]) for a in args)

        @jax.jit
        def references_and_orders(xs, xs_batch):
            return (jax.jacfwd(fn, argnums=argnums)(*xs), jax.vmap(jax.jacfwd(fn, argnums=argnums))(*xs_batch),
                    interpreter.jacobian(fn, "reverse", argnums=argnums)(*xs),
                    jax.vmap(interpreter.jacobian(fn, "markowitz", argnums=argnums))(*xs_batch))

        expected, expected_batch, reverse, markowitz = references_and_orders(args, batch)
        _close(reverse, expected, rtol=1e-10)
        _close(markowitz, expected_batch, rtol=1e-10)


def test_tape_folds_equations_without_operands(force_tape):
    """jnp.eye, jnp.arange and jnp.tri make iota equations (no operands): constants of the tape."""
    def fn(x):
        x = jnp.sin(x) * 1.01 + 0.1
        return x * jnp.eye(2)[0] + jnp.arange(2.0) * x[1]

    x = jnp.array([0.3, -0.7])
    g = interpreter.graph_of(fn, x)
    tape = _tape.build(g, graph.plan(g, graph.resolve_order(g, "reverse")))
    assert tape.muls == graph.cost(g, "reverse")
    _close(jax.jit(interpreter.jacobian(fn, "reverse"))(x), jax.jacfwd(fn)(x), rtol=1e-6, atol=1e-7)


def dense_chain(x, w, c):
    """Matrix-vector products (dense partials: dense times dense products), elementwise steps
    (diagonals) and a scalar multiple (a scaled identity), outputs of two sizes."""
    for _ in range(2):
        x = jnp.tanh(w @ x) * c + 0.5 * x
    return x, jnp.outer(x[:3], x[:2]) * c, jnp.sum(x * x)


def test_block_steps_equal_jacfwd(force_tape, monkeypatch):
    """Dense products as block steps (tiles of a matrix product) and chunks (blocks scaled by a
    diagonal or a scalar, or moved by an identity), with tiles of 4 x 4 and chunks of 16 entries
    so that products of 11 entries a side cover partial tiles and chunks: the Jacobian is
    jax.jacfwd's in two orders, under jit and vmap; the multiplications are the plan's."""
    monkeypatch.setattr(_tape, "lanes_for", lambda muls: 128)  # windowed lane steps around the blocks
    monkeypatch.setattr(_tape_products, "BLOCK", 4)
    monkeypatch.setattr(_tape_products, "TILE_COST", 1)
    monkeypatch.setattr(_tape_products, "CHUNK", 16)
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        args = (jnp.asarray(rng.normal(size=11)), jnp.asarray(rng.normal(size=(11, 11)) / 3), jnp.float64(0.7))
        g = interpreter.graph_of(dense_chain, *args, argnums=(0, 1, 2))
        reference = jax.jacfwd(dense_chain, argnums=(0, 1, 2))
        expected = jax.jit(reference)(*args)
        kinds = set()
        for order in ("reverse", "forward"):
            tape = _tape.build(g, graph.plan(g, graph.resolve_order(g, order)))
            kinds |= set(tape.prod_steps[:, 0].tolist())
            assert tape.muls == graph.cost(g, order)
            jac = interpreter.jacobian(dense_chain, order, argnums=(0, 1, 2))
            _close(jax.jit(jac)(*args), expected, rtol=1e-10)
        assert {_tape_products.MATMUL, _tape_products.SCALE, _tape_products.MOVE} <= kinds
        batch = tuple(jnp.stack([a, a * 0.9]) for a in args)
        _close(jax.jit(jax.vmap(jac))(*batch), jax.jit(jax.vmap(reference))(*batch), rtol=1e-10)


def test_edge_slots_are_reused_by_smaller_allocations():
    """Freed slots are merged with free neighbours and reused by any allocation they hold (the
    rest stays free); a free run at the buffer's end grows into new slots."""
    elim = _tape_products.Eliminator({}, 10, 1)
    a, b, c = elim.allocate(4), elim.allocate(6), elim.allocate(3)
    assert (a, b, c, elim.next_slot) == (10, 14, 20, 23)
    for base, size in ((a, 4), (b, 6)):
        elim.release(_tape_products.Valued(1, base, (1, size), (1, 1)))
    assert elim.allocate(7) == 10 and elim.allocate(3) == 17  # one merged run of 10, split
    elim.release(_tape_products.Valued(1, c, (1, 3), (1, 1)))
    assert elim.allocate(5) == 20 and elim.next_slot == 25  # the last run extended


def sums_and_a_wide_partial(x, y):
    """Sums and maxima over axes of a (2, 3, 4) array and of a (4, 6) one, a broadcast scalar
    (x * s beside x * x: one lane kind), a broadcast along axes, and one partial of more than FUSED_PARTIALS entries (a
    sort of 24 entries: a run-time mask of 576)."""
    s = jnp.sum(y)
    u = jnp.sin(x) * s + x * x
    u = u - jnp.sum(u, axis=1, keepdims=True) * 0.3  # a (1, 3, 1)-broadcast: lanes gathered from its row
    parts = [jnp.sum(u, axis=a) for a in (0, 1, 2, (1, 2))] + [jnp.sum(y, axis=0)]
    parts += [jnp.max(u, axis=a) for a in (0, (0, 2))] + [jnp.max(jnp.concatenate([y, y]), axis=0)]
    parts += [jnp.einsum("ijk,ilk->ijl", u, u * 0.5), y @ y.T, jnp.tensordot(u, y[:4, :3], axes=((1, 2), (1, 0)))]
    return sum(jnp.sum(p * p) for p in parts), jnp.sort(u.reshape(-1)) * s


def test_sums_over_axes_and_broadcasts_share_kinds(force_tape):
    """Sums and maxima over axes run as one kind each (`_Segments`), whatever the axes and shapes,
    a broadcast scalar on the lanes of its array (stride-0 runs), an operand broadcast along
    axes on lanes whose partials the row reads off (`_Lanes.gathered`), and only the kinds with
    partials over FUSED_PARTIALS entries compute them after the equation loop. (Built only, for
    time: the Jacobians of such tapes are checked against jax.jacfwd by
    test_lane_steps_equal_jacfwd's `reductions`, partials in and after the loop, and
    test_tape_kinds_do_not_grow_with_shapes.)"""
    with jax.enable_x64(True):
        args = (jnp.linspace(-1.0, 1.0, 24).reshape(2, 3, 4), jnp.linspace(0.2, 0.9, 24).reshape(4, 6))
        g = interpreter.graph_of(sums_and_a_wide_partial, *args, argnums=(0, 1))
        kinds = []
        monkey = _tape._branch

        def record(signature, *rest):
            kinds.append(signature[0])
            return monkey(signature, *rest)

        _tape._branch = record
        try:
            tape = _tape.build(g, graph.plan(g, graph.resolve_order(g, "reverse")))
        finally:
            _tape._branch = monkey
        assert sorted(k.combine for k in kinds if isinstance(k, _tape._Segments)) == ["max", "sum"]
        assert not [k for k in kinds if k.name in ("reduce_sum", "reduce_max") and not isinstance(k, _tape._Lanes)]
        assert [k.name for k in kinds].count("mul") == 2  # x * s with x * x's lanes, and x * x
        assert [k.name for k in kinds if isinstance(k, _tape._Lanes) and k.gathered] == ["sub"]
        assert [k.name for k in kinds].count("contraction") == 1 and "dot_general" not in [k.name for k in kinds]
        # After the loop: the kinds with a partial over FUSED_PARTIALS entries (the sort's mask
        # of 576, the maxima's dense partials of 288, 72 and 48: one size per equation), only.
        assert tape.eq_partials is not None
        assert all(kind.size.max() > _tape.FUSED_PARTIALS for kind in tape.partials)
        assert [sorted(kind.size.tolist()) for kind in tape.partials].count([48, 72, 288]) == 1
        broadcast = tape.eq_runs[..., 3] == 0
        assert np.any(broadcast & (tape.eq_runs[..., 1] == 24))  # s read at each of x's 24 lanes


@pytest.mark.parametrize("name, shapes, fixed, params", [
    ("stack", [(3,), (3,)], [None, None], {"axis": 1}),
    ("cumsum", [(2, 3)], [None], {"axis": 1, "reverse": True}),
    ("add", [(3,), ()], [None, None], {}),
    ("mul", [(2, 3), None], [None, np.array([[1.0, 2.0, 0.0], [3.0, 1.0, 1.0]])], {}),
    ("scatter-add", [(4, 2), None, (3, 2)], [None, np.array([[1], [3], [1]]), None], None),
    ("scatter", [(4,), None, (2,)], [None, np.array([[2], [0]]), None], None),
])
def test_numpy_maps_equal_the_bound_primitive(name, shapes, fixed, params):
    """Static index maps tabulated with numpy (no XLA compilation per shape) equal the
    primitive bound on the same basis; a set at repeated indices is left to the primitive."""
    from jax._src.lax import slicing

    operands = [jnp.zeros(s) if s is not None else jnp.asarray(v) for s, v in zip(shapes, fixed)]
    if name.startswith("scatter"):  # the parameters jnp's .at[] gives
        x, index, updates = operands
        bound = x.at[index[:, 0]].add(updates) if name == "scatter-add" else x.at[index[:, 0]].set(updates)
        eqn = jax.make_jaxpr(lambda a, b: a.at[index[:, 0]].add(b) if name == "scatter-add"
                             else a.at[index[:, 0]].set(b))(x, updates).jaxpr.eqns[-1]
        primitive, params = eqn.primitive, eqn.params
        assert isinstance(params["dimension_numbers"], slicing.ScatterDimensionNumbers)
    else:
        primitive = {"stack": None, "cumsum": jax.lax.cumsum_p, "add": jax.lax.add_p, "mul": jax.lax.mul_p}[name]
    for position in [i for i, v in enumerate(fixed) if v is None]:
        n = int(np.prod(shapes[position]))
        basis = np.eye(n).reshape(n, *shapes[position])
        batch = [basis if i == position else (np.zeros((n, *s)) if v is None else v)
                 for i, (s, v) in enumerate(zip(shapes, fixed))]
        ours = _tape._numpy_map(name, params, batch, fixed)

        def column(t, position=position):
            values = [t if i == position else (jnp.zeros(s) if v is None else jnp.asarray(v))
                      for i, (s, v) in enumerate(zip(shapes, fixed))]
            if primitive is None:
                return jnp.stack(values, axis=params["axis"])
            if name == "add" and values[1].ndim == 0:
                values[1] = jnp.broadcast_to(values[1], values[0].shape)
            return primitive.bind(*values, **params)

        expected = np.asarray(jax.vmap(column)(jnp.asarray(basis)))
        np.testing.assert_array_equal(ours, expected)
    repeated = [np.zeros((4, 4)), np.array([[1], [1]]), np.eye(4)[:2]]
    if name == "scatter":
        assert _tape._numpy_map(name, params, repeated[:1] + [repeated[1]] + [np.zeros((4, 2))], [None, repeated[1], None]) is None


def many_outputs(x, w, s):
    """Values read by many outputs (each elimination in reverse order writes a block per
    output): dense blocks times diagonals, scalars and dense blocks (10 contracted terms: two
    rounds of dot products; one: an outer product), copies and sums (identities), a gather
    with repeated indices (an index map adding two entries into one column, and columns no
    entry reaches)."""
    h = jnp.tanh(w @ x)
    h = jnp.sin(h) * s + 0.5 * h[jnp.array([0, 0, 3, 5, 2, 1, 7, 7, 8, 9])]
    return h * 2.0, jnp.outer(h[:3], x[:2]), jnp.sum(h) * x[0], h + x, w @ h


def _scalar_products(steps: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """One-operation product steps ([2 * kind + new, x, y, dst] rows) run in numpy."""
    edges = edges.copy()
    for code, x, y, dst in steps.tolist():
        value = edges[x] * edges[y] if code // 2 == _tape_products.MUL else np.where(edges[y] != 0, edges[x], 0.0)
        edges[dst] = value if code % 2 else edges[dst] + value
    return edges


def test_flat_products_equal_lane_steps(force_tape, monkeypatch):
    """Products of one elimination planned at once as flat records (`_tape._flat_products`),
    forced onto every elimination of a small program in reverse order: enumerated into
    one-operation steps (one lane), or run as flat and dot steps (128 lanes, `run_steps` under
    jit on a buffer of two examples), they give the Jacobian blocks the products' lane steps
    give from the same partials (random values; the steps run without the equation loop, which
    the other tests cover); the multiplications are the plan's."""
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        args = (jnp.asarray(rng.normal(size=10)), jnp.asarray(rng.normal(size=(10, 10)) / 3), jnp.float64(0.7))
        g = interpreter.graph_of(many_outputs, *args, argnums=(0, 1, 2))
        steps = graph.plan(g, graph.resolve_order(g, "reverse"))
        monkeypatch.setattr(_tape, "lanes_for", lambda muls: 1)
        reference = _tape.build(g, steps)
        monkeypatch.setattr(_tape, "FLAT_MIN_PRODUCTS", 1)
        monkeypatch.setattr(_tape, "FLAT_MIN_ENTRIES", 1)
        expanded = _tape.build(g, steps)
        monkeypatch.setattr(_tape, "lanes_for", lambda muls: 128)
        flat = _tape.build(g, steps)
        assert reference.muls == expanded.muls == flat.muls == graph.cost(g, "reverse")
        assert expanded.prod_records is None and not np.array_equal(expanded.prod_steps, reference.prod_steps)
        assert {_tape_products.FLAT, _tape_products.DOT, _tape_products.FLAT_SELECT} <= set(flat.prod_steps[:, 0])
        size = max(t.num_edges for t in (reference, expanded, flat))
        edges = rng.normal(size=(size, 2))
        edges[_tape_products.ONE], edges[_tape_products.ZERO] = 1.0, 0.0

        def blocks(tape, result):
            return {key: result[base:base + math.prod(o) * math.prod(i)] for key, (base, o, i) in tape.jacobian_edges.items()}

        expected = blocks(reference, _scalar_products(reference.prod_steps, edges))
        run = jax.jit(lambda e: _tape_products.run_steps(e, flat.prod_steps, flat.prod_patterns, flat.prod_windowed,
                                                         flat.prod_records, flat.prod_shapes))
        for tape, result in ((expanded, _scalar_products(expanded.prod_steps, edges)),
                             (flat, np.asarray(run(jnp.asarray(edges[:flat.num_edges]))))):
            actual = blocks(tape, result)
            assert actual.keys() == expected.keys()
            for key in expected:
                np.testing.assert_allclose(actual[key], expected[key], rtol=1e-12, atol=1e-12)


def elementwise_calls(x, m, v, s):
    """Functions with custom JVP rules (relu, logaddexp with a scalar) and conds whose
    branches are elementwise, each called on several shapes; outputs that are also read (copies)."""
    outs = []
    for a in (x, m, v, s):
        a = a + jax.nn.relu(a - 0.1) + 0.1 * jnp.logaddexp(a, s)
        a = a + 0.1 * jax.lax.cond(s > 0.3, lambda a=a: jnp.sin(a), lambda a=a: a * 0.5)
        outs.append(a)
        s = s + 0.1 * jnp.sum(a)
    return (*outs, outs[0] * s, s)


def test_tape_runs_elementwise_calls_on_lanes_whatever_their_shape(force_tape):
    """An elementwise call (custom JVP rule, cond) runs on lanes by its kind's largest call,
    reshaped: one kind per function (and one more for its scalar calls), not one per shape; the
    Jacobians are jax.jacfwd's, also under vmap."""
    with jax.enable_x64(True):
        args = (jnp.array([-0.5, -0.2, 0.1, 0.4, 0.7]), jnp.array([[0.3, -0.2], [0.1, 0.4]]),
                jnp.array([0.2, -0.6, 0.9]), jnp.float64(0.45))
        argnums = (0, 1, 2, 3)
        g = interpreter.graph_of(elementwise_calls, *args, argnums=argnums)
        builder = _tape._Builder(g, graph.plan(g, graph.resolve_order(g, "reverse")))
        tape = builder.build()
        calls = [e for e in g.program.equations if e.primitive is not None and e.primitive.name in ("custom_jvp_call", "cond")]
        assert len(calls) >= 12 and len(builder.generic) == len(calls)
        assert len(set(builder.generic.values())) <= 8  # relu, logaddexp, cond: array and scalar calls
        assert tape.muls == graph.cost(g, "reverse")
        jac = interpreter.jacobian(elementwise_calls, "reverse", argnums=argnums)
        reference = jax.jacfwd(elementwise_calls, argnums=argnums)
        _close(jax.jit(jac)(*args), jax.jit(reference)(*args), rtol=1e-10)
        batch = tuple(a + 0.05 * jnp.arange(2.0).reshape((2,) + (1,) * a.ndim) for a in args)
        _close(jax.jit(jax.vmap(jac))(*batch), jax.jit(jax.vmap(reference))(*batch), rtol=1e-10)
