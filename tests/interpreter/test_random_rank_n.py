"""Property test (issue 12): random programs over the supported primitives on arrays of rank 0 to 4.

Every step maps values of one common shape S (rank 0-4, each axis 1-3 long, at most 24 entries) to a value of shape S,
so any two values combine; inside a step, the shape changes: reductions over an axis broadcast back
(reduce_sum, reduce_max, broadcast_in_dim), transposes reshaped back, batched matrix products
(dot_general with batch dimensions), slices with concatenate or pad, scalar broadcasting, and dense
primitives without a structural rule (cumsum, sort). The Jacobian in a random elimination order
equals jax.jacfwd in float64, and the multiplications counted equal the graph's cost.
"""

from __future__ import annotations

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings

from alphagrad import graph, interpreter


def _axis(x, k):
    return k % x.ndim


def _rotate(x, k):
    """concatenate of two slices along an axis (a roll by one)."""
    a = _axis(x, k)
    return jnp.concatenate([jax.lax.slice_in_dim(x, 1, x.shape[a], axis=a),
                            2.0 * jax.lax.slice_in_dim(x, 0, 1, axis=a)], axis=a)


def _shift(x, k):
    """A slice padded back to its shape with a zero."""
    a = _axis(x, k)
    widths = [(0, 0)] * x.ndim
    widths[a] = (0, 1)
    return jnp.pad(jax.lax.slice_in_dim(x, 1, x.shape[a], axis=a), widths)


def _permute(x, k):
    """A transpose (a rotation of the axes) reshaped back to x's shape."""
    return jnp.transpose(jnp.sin(x), np.roll(np.arange(x.ndim), 1 + k % x.ndim)).reshape(x.shape)


def _matmul(x, y):
    """A batched matrix product over the leading axes (dot_general with batch dimensions), shape kept."""
    if x.ndim == 0:
        return x * y
    if x.ndim == 1:
        return jnp.dot(x, y) * x  # a scalar broadcast back
    return jnp.einsum("...ij,...kj->...ik", x, y) @ x


UNARY = [jnp.sin, jnp.tanh, lambda x: jnp.exp(0.3 * x), jnp.square, lambda x: -x, lambda x: 3.0 * x]
BINARY = [jnp.add, jnp.subtract, jnp.multiply, lambda x, y: x / (2.0 + jnp.cos(y)), jnp.maximum, _matmul,
          lambda x, y: x * jnp.sum(y)]  # the last: a scalar broadcast
# (value, integer) -> value of the same shape; only for rank >= 1.
AXIS_OPS = [
    lambda x, k: jnp.sum(x, axis=_axis(x, k), keepdims=True) + x,
    lambda x, k: jnp.max(x, axis=_axis(x, k), keepdims=True) * x,
    _rotate, _shift, _permute,
    lambda x, k: x.reshape(-1)[::-1].reshape(x.shape),
    lambda x, k: jnp.cumsum(x, axis=_axis(x, k)),
    lambda x, k: jnp.sort(x, axis=_axis(x, k)),
]


@st.composite
def programs(draw):
    # at most 24 entries, so that dense partials and their products stay small
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=4).filter(lambda s: np.prod(s) <= 24)))
    kinds = ["unary", "binary"] + (["axis"] * 2 if shape else [])
    steps = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(kinds))
        table = {"unary": UNARY, "binary": BINARY, "axis": AXIS_OPS}[kind]
        steps.append((kind, draw(st.integers(0, len(table) - 1)), draw(st.lists(st.integers(0, 20), min_size=3, max_size=3))))
    return shape, draw(st.integers(1, 2)), steps, draw(st.integers(1, 2)), draw(st.integers(0, 2**16))


def build(num_inputs, steps, num_outputs):
    def f(*xs):
        values = list(xs)
        for kind, op, (i, j, k) in steps:
            a, b = values[i % len(values)], values[j % len(values)]
            if kind == "unary":
                values.append(UNARY[op](a))
            elif kind == "binary":
                values.append(BINARY[op](a, b))
            else:
                values.append(AXIS_OPS[op](a, k))
        return tuple(values[-num_outputs:])

    return f


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.randoms(use_true_random=False))
def test_random_rank_n_programs_are_exact_and_counted(program, rnd):
    shape, num_inputs, steps, num_outputs, seed = program
    f = build(num_inputs, steps, num_outputs)
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(rng.uniform(0.1, 0.9, size=shape)) for _ in range(num_inputs))
        argnums = tuple(range(num_inputs))
        g = interpreter.graph_of(f, *args, argnums=argnums)
        order = list(g.intermediates)
        rnd.shuffle(order)
        actual = interpreter.jacobian(f, order, argnums=argnums)(*args)
        expected = jax.jacfwd(f, argnums=argnums)(*args)
        assert jax.tree.structure(actual) == jax.tree.structure(expected)
        for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
            assert a.shape == b.shape
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
        assert interpreter.count_muls(f, order, *args, argnums=argnums) == graph.cost(g, order)
