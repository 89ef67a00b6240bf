"""Long programs of forms users write (found by helper fuzz16's probes): on the tape, in every
order, equal to jax.jacfwd; programs just over the tape's thresholds (lowered here)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from alphagrad import graph, interpreter
from alphagrad.graph import _trace
from alphagrad.interpreter import _tape


@pytest.fixture
def small_tape(monkeypatch):
    """Programs of a few dozen equations run on the tape (2-D codes, as long programs do)."""
    monkeypatch.setattr(_tape, "TAPE_MIN_SIZE", 0)
    monkeypatch.setattr(_tape, "TAPE_MIN_EQUATIONS", 0)
    monkeypatch.setattr(_trace, "LABELLED_MAX_EQUATIONS", -1)


def _on_tape_and_exact(fn, args, argnums, orders=("forward", "reverse", "markowitz"), rtol=1e-10):
    g = interpreter.graph_of(fn, *args, argnums=argnums)
    for order in orders:
        tape = _tape.build(g, graph.plan(g, graph.resolve_order(g, order)))  # raises Unsupported if refused
        assert tape.muls == graph.cost(g, order)

    # One compilation for jax.jacfwd's Jacobian and every order's (each order traced under jit, as
    # jax.jit(interpreter.jacobian(fn, order)) is; compiling each apart, and jax.jacfwd op by op,
    # cost about twice as much).
    @jax.jit
    def reference_and_orders(*xs):
        return jax.jacfwd(fn, argnums=argnums)(*xs), [interpreter.jacobian(fn, o, argnums=argnums)(*xs) for o in orders]

    expected, jacobians = reference_and_orders(*args)
    for order, actual in zip(orders, jacobians):
        assert jax.tree.structure(actual) == jax.tree.structure(expected), order
        for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=rtol / 100, err_msg=order)


def remainder_indices(x, y):
    """Indices computed by integer arithmetic on argmax (int64 under x64): a remainder, a
    quotient, a product, a clamp, the wrap-around of negative indices."""
    for _ in range(2):
        k = jnp.argmax(x)
        x = x * 0.9 + 0.1 * y[(k + 1) % 5] + 0.05 * y[k // 2] + 0.01 * y[jnp.clip(3 * k - 4, 0, 4)]
        y = y.at[(2 * k) % 5].add(0.1 * x[k])
        y = lax.dynamic_update_slice(y, jnp.tanh(x[1:3]), (jnp.argmin(y) % 3,))
    return x, y


def floor_index(x, table, n):
    """Interpolation at an index converted from a float (int32: exact in a float64 buffer),
    clipped; an int32 argument."""
    t = (jnp.tanh(x) + 1.0) * 3.5
    i = jnp.clip(jnp.floor(t).astype(jnp.int32), 0, 6)
    w = t - i
    return (1 - w) * table[i] + w * table[i + 1] + table[n % 8] * x


@pytest.mark.parametrize("fn, args, argnums", [
    (remainder_indices, (np.array([0.3, -0.2, 0.9, 0.1, 0.5]), np.array([0.4, -0.7, 0.2, 0.8, -0.1])), (0, 1)),
    (floor_index, (np.array([0.3, -1.5, 2.0, 0.01]), np.linspace(-1.0, 1.0, 8) ** 2, np.int32(11)), (0, 1)),
])
def test_computed_integer_indices_run_on_the_tape(small_tape, fn, args, argnums):
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a) for a in args)
        _on_tape_and_exact(fn, args, argnums)


def floor_index_int64(x, table):
    """The same with ``astype(int)`` (int64 under x64: any value, held exactly as an
    integer-valued float64), clipped and shifted; a remainder of it."""
    t = (jnp.tanh(x) + 1.0) * 3.5
    i = jnp.clip(jnp.floor(t).astype(int), 0, 6)
    return (t - i) * table[i + 1] + table[jnp.floor(t * 100).astype(int) % 8] * x


def float32_indices(x, table):
    """A float32 program (a float32 buffer: integers exact to 2^24): int32 indices converted from
    floats, clipped, and argmax arithmetic."""
    i = jnp.clip(jnp.floor((jnp.tanh(x) + 1) * 3).astype(jnp.int32), 0, 5)
    return 0.5 * table[i] * x + 0.1 * table[(jnp.argmax(x) + 2) % 6]


def test_integers_converted_from_floats_run_on_the_tape(small_tape):
    with jax.enable_x64(True):
        x, table = jnp.array([0.3, -1.5, 2.0, 0.01]), jnp.linspace(-1.0, 1.0, 8) ** 2
        _on_tape_and_exact(floor_index_int64, (x, table), (0, 1), orders=("reverse",))
    x, table = jnp.array([0.3, -1.5, 2.0], jnp.float32), jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32) ** 2
    g = interpreter.graph_of(float32_indices, x, table, argnums=(0, 1))
    _tape.build(g, graph.plan(g, graph.resolve_order(g, "reverse")))  # raises Unsupported if refused
    actual = interpreter.jacobian(float32_indices, "reverse", argnums=(0, 1))(x, table)
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(jax.jacfwd(float32_indices, argnums=(0, 1))(x, table))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_integer_ranges_refuse_what_may_not_be_exact(small_tape):
    """An int64 converted from a float is held exactly (an integer-valued float64), but one more
    than it may not be: refused (the straight-line path runs it)."""
    def fn(x):
        return x * ((jnp.floor(x * 1e3).astype(jnp.int64) + 1) % 5)

    with jax.enable_x64(True):
        x = jnp.array([0.3, -0.2, 0.9])
        g = interpreter.graph_of(fn, x)
        with pytest.raises(_tape.Unsupported, match="int64"):
            _tape.build(g, graph.plan(g, graph.resolve_order(g, "reverse")))
        np.testing.assert_allclose(interpreter.jacobian(fn, "reverse")(x), jax.jacfwd(fn)(x), rtol=1e-12)


def linear_solves(a, b):
    """jnp.linalg.solve and a Cholesky solve (custom_linear_solve: bound whole, JAX's JVP)."""
    m = a @ a.T + 3.0 * jnp.eye(3)
    x = jnp.linalg.solve(m, b)
    y = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(m), jnp.tanh(x))
    return x * y, jnp.linalg.solve(m + jnp.diag(y), x)


def test_linear_solves_run_on_the_tape(small_tape):
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        a, b = jnp.asarray(rng.normal(size=(3, 3))), jnp.asarray(rng.normal(size=3))
        _on_tape_and_exact(linear_solves, (a, b), (0, 1), orders=("reverse", "markowitz"))
        batch = (jnp.stack([a, 0.5 * a]), jnp.stack([b, -b]))
        jac, expected = jax.jit(lambda *xs: (jax.vmap(interpreter.jacobian(linear_solves, "forward", argnums=(0, 1)))(*xs),
                                             jax.vmap(jax.jacfwd(linear_solves, argnums=(0, 1)))(*xs)))(*batch)
        assert jax.tree.structure(jac) == jax.tree.structure(expected)
        for x, y in zip(jax.tree.leaves(jac), jax.tree.leaves(expected)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-10, atol=1e-12)


def bfloat16_weights(x, w):
    """Weights stored in bfloat16, cast up for the matmul (the kinds' signatures name dtypes by
    name: bfloat16's `.str` is '<V2', a void type)."""
    return jnp.tanh(x @ w.astype(jnp.float32))


def test_float32_lu_pivots_and_bfloat16_operands_run_on_the_tape(small_tape):
    # lu's pivots are int32, which a float32 buffer does not hold whatever their value: they are
    # row numbers.
    rng = np.random.default_rng(3)
    a, b = jnp.asarray(rng.normal(size=(3, 3)), jnp.float32), jnp.asarray(rng.normal(size=3), jnp.float32)
    _on_tape_and_exact(linear_solves, (a, b), (0, 1), orders=("reverse",), rtol=1e-4)
    w = jnp.asarray(rng.normal(size=(3, 2)), jnp.bfloat16)
    _on_tape_and_exact(bfloat16_weights, (b, w), (0, 1), orders=("reverse",), rtol=1e-4)


def edge_messages(x, w, senders, receivers):
    """Message passing over an edge list given as int32 arguments (token ids, labels and edge
    lists are arguments the float32 buffer does not hold exactly whatever their value)."""
    for _ in range(2):
        messages = jnp.tanh(x[senders] * w[: senders.shape[0]] - x[receivers])
        x = x + 0.5 * jax.ops.segment_sum(messages, receivers, num_segments=x.shape[0])
    return x


def _edge_arguments(bound_exceeded=False):
    rng = np.random.default_rng(5)
    senders = rng.integers(0, 6, 9).astype(np.int32)
    if bound_exceeded:
        senders[2] = 2**24 + 3  # out of bounds: jnp indexing clamps it; beyond the buffer's exact integers
    x, w = (jnp.asarray(rng.normal(size=n), jnp.float32) for n in (6, 9))
    return x, w, jnp.asarray(senders), jnp.asarray(rng.integers(0, 6, 9).astype(np.int32))


def test_integer_arguments_run_on_a_float32_tape_within_their_bound(small_tape):
    args = _edge_arguments()
    g = interpreter.graph_of(edge_messages, *args, argnums=(0, 1))
    tape = _tape.build(g, graph.plan(g, graph.resolve_order(g, "reverse")))
    assert [leaf for leaf, _ in tape.bounded_leaves] == [2, 3]
    _on_tape_and_exact(edge_messages, args, (0, 1), orders=("reverse",), rtol=1e-4)
    # Beyond the bound the buffer would round the index: NaN, never another entry's derivative.
    far = _edge_arguments(bound_exceeded=True)
    jac = jax.jit(interpreter.jacobian(edge_messages, "reverse", argnums=(0, 1)))(*far)
    assert all(np.isnan(np.asarray(block)).all() for block in jax.tree.leaves(jac))
    assert np.isfinite(np.asarray(jax.jacfwd(edge_messages, argnums=(0, 1))(*far)[0])).all()


def wrapping_conversion(x, t):
    """uint32 arithmetic that wraps, converted to int32 (-80), an index: the tape read it from the
    float64 buffer as uint32, converted it to int32 and wrote it back in one kind, which XLA's CPU
    compiler folded into no conversion (4294967216): the wrong entry was updated. Conversions
    between integer dtypes are now bit casts (`_tape._wrapping_conversion`)."""
    k = jnp.floor((jnp.tanh(x[0]) + 1) * 31.9).astype(jnp.uint32)
    k = k * jnp.uint32(4294967294) + jnp.uint32(2)
    return lax.dynamic_update_slice(x, jnp.tanh(t[:2] * x[:2]), (k.astype(jnp.int32) % 6,))


def table_lookups(x, a):
    """jnp.interp and jnp.searchsorted: a binary search (an integer scan kept whole) whose uint32
    result is converted to int32, clipped, an index."""
    xs = jnp.linspace(-2.0, 2.0, 8)
    for k in range(3):
        y = jnp.interp(x, xs, jnp.sin(xs + k))
        i = jnp.clip(jnp.searchsorted(xs, x) - 1, 0, 6)
        x = jnp.sort(0.7 * x + 0.3 * y * a + 0.1 * (x - xs[i]) / (xs[i + 1] - xs[i]))
    return x


@pytest.mark.parametrize("fn", [wrapping_conversion, table_lookups])
def test_integers_that_may_wrap_run_on_the_tape(small_tape, fn):
    with jax.enable_x64(True):
        x, t = jnp.array([0.3, -0.2, 0.9, 0.1, 0.5, -0.4, 0.2]), jnp.linspace(-1.0, 1.0, 7)
        _on_tape_and_exact(fn, (x, t), (0, 1), orders=("reverse",))


@pytest.mark.parametrize("x64", [False, True])
def test_wrapping_conversions_are_xlas(x64):
    ints = [jnp.int8, jnp.int16, jnp.int32, jnp.uint8, jnp.uint16, jnp.uint32]
    with jax.enable_x64(x64):
        _assert_conversions_are_xlas(ints)


def _assert_conversions_are_xlas(ints):
    for source in ints:
        info = np.iinfo(source)
        values = jnp.asarray(np.linspace(info.min, info.max, 41).astype(source))
        # One compilation per source type for all its targets (a jit per pair compiled 36 programs).
        converted = jax.jit(lambda v: [_tape._wrapping_conversion(v, target) for target in ints])(values)
        for target, actual in zip(ints, converted):
            expected = lax.convert_element_type(values, target)
            assert actual.dtype == expected.dtype
            np.testing.assert_array_equal(actual, expected, err_msg=f"{source.__name__} -> {target.__name__}")
