"""Property test: random small programs over the supported primitives, random orders."""

from __future__ import annotations

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings

from alphagrad import graph, interpreter

# Each entry: (arity, builder). Builders take arrays of one common shape and stay finite near 0..1.
UNARY = [
    jnp.sin, jnp.cos, jnp.tanh, jnp.exp, jnp.arcsinh, jnp.arctan, jnp.square, jnp.expm1, jnp.negative,
    lambda x: jnp.log1p(x * x), lambda x: jnp.sqrt(1.0 + x * x), jax.nn.sigmoid, lambda x: x**3,
    lambda x: jnp.abs(x), lambda x: jax.lax.stop_gradient(x) * x,
]
BINARY = [
    jnp.add, jnp.subtract, jnp.multiply, lambda x, y: x / (2.0 + jnp.cos(y)), jnp.maximum, jnp.minimum,
    jnp.arctan2, lambda x, y: jnp.where(x > y, x, y * 2.0), lambda x, y: x * 3.0 - y,
]
MATRIX = [  # ops on (3, 3) arrays that change structure
    lambda x: x.T, lambda x: x @ x, lambda x: jnp.sum(x, axis=0, keepdims=True) + x,
    lambda x: jnp.max(x, axis=1, keepdims=True) * x, lambda x: jnp.concatenate([x[:1], x[1:] * 2.0]),
    lambda x: x.reshape(9)[::-1].reshape(3, 3), lambda x: jnp.broadcast_to(x[0], (3, 3)) + x,
]


@st.composite
def programs(draw):
    shape = draw(st.sampled_from([(), (3,), (3, 3)]))
    num_inputs = draw(st.integers(1, 3))
    steps = []
    for _ in range(draw(st.integers(1, 7))):
        kinds = ["unary", "binary"] + (["matrix"] if shape == (3, 3) else [])
        kind = draw(st.sampled_from(kinds))
        table = {"unary": UNARY, "binary": BINARY, "matrix": MATRIX}[kind]
        op = draw(st.integers(0, len(table) - 1))
        args = draw(st.lists(st.integers(0, 50), min_size=2, max_size=2))
        steps.append((kind, op, args))
    num_outputs = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**16))
    return shape, num_inputs, steps, num_outputs, seed


def build(shape, num_inputs, steps, num_outputs):
    def f(*xs):
        values = list(xs)
        for kind, op, (i, j) in steps:
            a, b = values[i % len(values)], values[j % len(values)]
            if kind == "unary":
                values.append(UNARY[op](a))
            elif kind == "binary":
                values.append(BINARY[op](a, b))
            else:
                values.append(MATRIX[op](a))
        return tuple(values[-num_outputs:])

    return f


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.randoms(use_true_random=False))
def test_random_programs_and_orders(program, rnd):
    shape, num_inputs, steps, num_outputs, seed = program
    f = build(shape, num_inputs, steps, num_outputs)
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(rng.uniform(0.1, 0.9, size=shape)) for _ in range(num_inputs))
        argnums = tuple(range(num_inputs))
        g = interpreter.graph_of(f, *args, argnums=argnums)
        order = list(g.intermediates)
        rnd.shuffle(order)
        actual, expected = jax.jit(lambda *a: (  # one program (jax.jacfwd op by op cost more)
            interpreter.jacobian(f, order, argnums=argnums)(*a), jax.jacfwd(f, argnums=argnums)(*a)))(*args)
        for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)
        assert interpreter.count_muls(f, order, *args, argnums=argnums) == graph.cost(g, order)
