"""Arrays of 3 or more dimensions: leading axis kept, the rest flattened (exact model), exact Jacobians."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import graph, interpreter

RNG = np.random.default_rng(7)


def assert_close(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert a.shape == b.shape, (a.shape, b.shape)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def _normal(*shape):
    return jnp.asarray(RNG.normal(size=shape), jnp.float32)


def batched_matmul(a, b):
    return jnp.sin(a @ b).transpose(0, 2, 1).sum(1)


def attention(q, k, v):
    scores = jnp.einsum("bqd,bkd->bqk", q, k) / jnp.sqrt(q.shape[-1])
    return jnp.einsum("bqk,bkd->bqd", jax.nn.softmax(scores, axis=-1), v)


def conv2d(x, w):
    return jnp.tanh(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME"))


def pairwise_energy(x):
    d = x[:, None, :] - x[None, :, :]
    return jnp.sum(1.0 / jnp.sqrt(jnp.sum(d**2, -1) + 1e-3), axis=1)


def movements(x):
    # transpose, slice, pad, concatenate, rev, broadcast and reductions of a rank-4 array
    y = jnp.transpose(x, (2, 0, 3, 1))[:, :, 1:, :]
    y = jnp.concatenate([y, jnp.flip(y, axis=1)], axis=2)
    y = jnp.pad(y, ((0, 0), (1, 0), (0, 0), (0, 1)))
    return jnp.max(y * 2.0 + y**2, axis=(1, 3)) + jnp.sum(x[None] * 3.0, axis=(0, 1, 2))[:, :1]


CASES = {
    "batched_matmul": (batched_matmul, (_normal(2, 3, 4), _normal(2, 4, 5)), (0, 1)),
    "attention": (attention, (_normal(2, 3, 2), _normal(2, 3, 2), _normal(2, 3, 2)), (0, 1, 2)),
    "conv2d": (conv2d, (_normal(1, 2, 4, 4), _normal(3, 2, 3, 3)), (0, 1)),
    "pairwise_energy": (pairwise_energy, (_normal(4, 3),), 0),
    "movements": (movements, (_normal(2, 3, 4, 2),), 0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_high_rank_jacobians_are_exact_and_counted(name):
    f, args, argnums = CASES[name]
    orders = ("forward", "reverse", "markowitz")

    @jax.jit
    def reference_and_all_orders(*xs):  # one compilation for the reference and every order
        return jax.jacfwd(f, argnums=argnums)(*xs), [interpreter.jacobian(f, o, argnums=argnums)(*xs) for o in orders]

    expected, results = reference_and_all_orders(*args)
    g = interpreter.graph_of(f, *args, argnums=argnums)
    for order, got in zip(orders, results):
        assert_close(got, expected)
        assert interpreter.count_muls(f, order, *args, argnums=argnums) == graph.cost(g, order)


def test_high_rank_under_jit_with_auto(monkeypatch, tmp_path):
    monkeypatch.setenv("ALPHAGRAD_CACHE", str(tmp_path))
    monkeypatch.setenv("ALPHAGRAD_AUTO_SECONDS", "0.3")
    f, args, argnums = CASES["attention"]
    got = jax.jit(interpreter.jacobian(f, "auto", argnums=argnums))(*args)
    assert_close(got, jax.jacrev(f, argnums=argnums)(*args))


def test_flattening_keeps_elementwise_diagonal_and_data_movement_free():
    def f(x):
        return jnp.transpose(jnp.exp(x), (1, 0, 2)).reshape(6, 4)

    g = graph.trace(f, jnp.ones((2, 3, 4)), cost_model="exact")
    codes = {(e.src, e.dst): e.code for e in g.edges}
    assert codes[(1, 2)] == 6  # exp: diagonal over the (2, 12) flattened entries
    assert codes[(2, 3)] == 11  # a rank-3 permutation is an index map, not an identity
    # Moving exp's diagonal through the permutation and the reshape multiplies nothing.
    assert graph.cost(g, "forward") == graph.cost(g, "reverse") == 0
    x = jnp.linspace(0.1, 1.0, 24).reshape(2, 3, 4)
    assert_close(interpreter.jacobian(f, "forward")(x), jax.jacfwd(f)(x))


def test_leading_axis_ties_survive_flattening():
    # A batched matmul and a convolution treat every example alike: their partials are tied along
    # the batch axis (2: values along it; -2: the same for every example), not dense.
    g = graph.trace(batched_matmul, jnp.ones((2, 3, 4)), jnp.ones((2, 4, 5)), cost_model="exact")
    first = g.vertices[0]
    assert first.shape == (2, 15)
    assert {e.src: e.code for e in g.edges if e.dst == g.node_id(first.number)} == {1: 2, 2: 2}
    g = graph.trace(conv2d, jnp.ones((2, 2, 4, 4)), jnp.ones((3, 2, 3, 3)), cost_model="exact")
    assert {e.src: e.code for e in g.edges if e.dst == g.node_id(1)} == {1: -2, 2: 1}
