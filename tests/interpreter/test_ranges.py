"""Ranges of the integer results of loops and branches (`_ranges`), and the float32 tape they let
jnp.searchsorted and jnp.interp run on."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from alphagrad import graph, interpreter
from alphagrad.interpreter import _ranges, _tape
from tests.interpreter.test_tape_fuzz import small_tape  # noqa: F401  (the fixture)


def _result_ranges(fn, *args):
    """The range of every result of the one loop or branch in fn's program."""
    closed = jax.make_jaxpr(fn)(*args)
    (eqn,) = [e for e in closed.jaxpr.eqns if e.primitive.name in ("scan", "while", "cond")]
    in_avals = [v.aval for v in eqn.invars]
    in_ranges = [None] * len(eqn.invars)  # unknown: any value of the dtype
    for i, v in enumerate(eqn.invars):
        if isinstance(v, jax.extend.core.Literal):
            in_ranges[i] = (float(v.val), float(v.val))
    return [_ranges.sub_program_range(eqn.primitive, eqn.params, in_ranges, in_avals, k)
            for k in range(len(eqn.outvars))]


def _binary_search(table, q):
    """The midpoint form of a binary search, (low + high) // 2, in uint32."""
    def step(carry, _):
        low, high = carry
        mid = (low + high) // jnp.uint32(2)
        left = q < table[mid.astype(jnp.int32)]
        return (jnp.where(left, low, mid), jnp.where(left, mid, high)), None
    (low, high), _ = lax.scan(step, (jnp.uint32(0), jnp.uint32(table.shape[0])), None, length=4)
    return low, high


def test_a_binary_search_stays_within_its_table():
    assert _result_ranges(_binary_search, jnp.linspace(0.0, 1.0, 9), 0.3) == [(0.0, 8.0), (0.0, 9.0)]


def test_a_counter_is_bounded_by_the_scans_length():
    def count(x):
        return lax.fori_loop(0, 6, lambda i, c: (c[0] + 2, c[1] * x), (jnp.int32(1), x))
    assert _result_ranges(count, 0.5) == [(0.0, 6.0), (1.0, 13.0), None]  # (the index, an int, a float)


def test_what_grows_without_a_fixed_point_takes_its_dtypes_range():
    def doubling(n):  # a while loop's trip count is unknown: the doubling carry never settles
        return lax.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, c[1] * 2), (0, jnp.int16(1)))
    int32, int16 = np.iinfo(np.int32), np.iinfo(np.int16)
    assert _result_ranges(doubling, 5) == [(float(int32.min), float(int32.max)), (float(int16.min), float(int16.max))]


def test_a_branch_takes_the_hull_of_its_branches():
    def branch(x):
        return lax.cond(x > 0, lambda: jnp.argmax(jnp.ones(4) * x) + 10, lambda: jnp.int32(-3))
    assert _result_ranges(branch, 0.5) == [(-3.0, 13.0)]


def table_lookups(x, a):
    """jnp.interp and jnp.searchsorted (x64 off: uint32, which a float32 buffer does not hold)."""
    xs = jnp.linspace(-2.0, 2.0, 8)
    for k in range(2):
        y = jnp.interp(x, xs, jnp.sin(xs + k))
        i = jnp.clip(jnp.searchsorted(xs, x) - 1, 0, 6)
        x = 0.7 * x + 0.3 * y * a + 0.1 * (x - xs[i]) / (xs[i + 1] - xs[i])
    return x


def test_table_lookups_run_on_a_float32_tape(small_tape):
    x, a = jnp.linspace(-1.5, 1.7, 5, dtype=jnp.float32), jnp.float32(0.8)
    g = interpreter.graph_of(table_lookups, x, a, argnums=(0, 1))
    tape = _tape.build(g, graph.plan(g, graph.resolve_order(g, "reverse")))  # was Unsupported (uint32)
    assert tape.bounded_values  # searchsorted's low + (high - low) // 2: intervals cannot bound it
    expected = jax.jacfwd(table_lookups, argnums=(0, 1))(x, a)
    actual = jax.jit(interpreter.jacobian(table_lookups, "reverse", argnums=(0, 1)))(x, a)
    for e, got in zip(expected, actual):
        np.testing.assert_allclose(np.asarray(got), np.asarray(e), rtol=1e-5, atol=1e-6)


def large_loop_integer(x):
    """An integer loop result far beyond float32's exact integers, an index."""
    k = lax.fori_loop(0, 3, lambda i, c: c * 1000 + 7, jnp.argmax(x) + 1)
    return x * x[k % 5]


def test_a_loop_integer_beyond_its_bound_gives_nan_not_another_entry(small_tape):
    x = jnp.array([0.3, -0.2, 0.9, 0.1, 0.5], jnp.float32)
    jac = jax.jit(interpreter.jacobian(large_loop_integer, "reverse"))(x)
    assert np.isnan(np.asarray(jac)).all()  # the buffer would round k (3,007,007,007 in int32 wraps)
    assert np.isfinite(np.asarray(jax.jacfwd(large_loop_integer)(x))).all()
