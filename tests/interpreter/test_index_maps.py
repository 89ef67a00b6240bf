"""Primitives whose derivative selects, moves or adds entries are free index maps, and exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import graph, interpreter

X = jnp.asarray(np.random.default_rng(3).normal(size=(5, 3)), jnp.float32)
ROWS = jnp.array([0, 2, 2])  # a repeated index: scatter-set keeps one, scatter-add adds both

CASES = {
    "gather": lambda x: jnp.tanh(x[ROWS]) * 2.0,
    "scatter_set": lambda x: x.at[ROWS].set(jnp.sin(x[1])),
    "scatter_add": lambda x: x.at[ROWS].add(x[1] ** 2),
    "cumsum": lambda x: jnp.cumsum(jnp.sin(x), 0),
    "argsort_rows": lambda x: x[jnp.argsort(x[:, 0])] * x[0],
    "take_along_sorted": lambda x: jnp.take_along_axis(x, jnp.argsort(x, 0), 0) ** 2,
    "split": lambda x: jnp.split(x, [1], axis=1)[1] * jnp.split(x, [1], axis=1)[0],
    "max_pool": lambda x: jax.lax.reduce_window(x * x, -jnp.inf, jax.lax.max, (2, 1), (1, 1), "VALID"),
    "top_k": lambda x: jax.lax.top_k(x[:, 0] * x[:, 1], 2)[0],
    "scalar_clamp": lambda x: jax.lax.clamp(-0.3, x[0, 0] * 2.0, 0.3) * x[1, 1],
}
ORDERS = ("forward", "reverse", "markowitz")


@pytest.mark.parametrize("name", sorted(CASES))
def test_index_map_primitives_are_exact_and_free(name):
    f = CASES[name]
    g = interpreter.graph_of(f, X)
    assert any(e.code == graph.INDEX_MAP for e in g.edges)
    # One program: jax.jacfwd's Jacobian (was op by op, once per order) and every order's.
    expected, jacobians = jax.jit(lambda x: (jax.jacfwd(f)(x), [interpreter.jacobian(f, o)(x) for o in ORDERS]))(X)
    for got in jacobians:
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)
    for order in ORDERS:
        assert interpreter.count_muls(f, order, X) == graph.cost(g, order)


def test_an_index_map_multiplies_nothing():
    # sort then cumsum: both index maps; the Jacobian is a 0/1 matrix and costs no multiplication
    def f(x):
        return jnp.cumsum(jnp.sort(x))

    x = jnp.array([0.3, -1.0, 2.0, 0.5])
    g = interpreter.graph_of(f, x)
    assert [e.code for e in g.edges] == [graph.INDEX_MAP, graph.INDEX_MAP]
    assert graph.cost(g, "forward") == graph.cost(g, "reverse") == 0
    np.testing.assert_array_equal(np.asarray(interpreter.jacobian(f, "reverse")(x)), np.asarray(jax.jacfwd(f)(x)))


# ---- an index map times a permutation-diagonal partial (interpreter._structured.multiply) ----

from alphagrad.interpreter import _structured  # noqa: E402

#: Codes whose ties pair every v entry with one p entry, in a square (3, 3) <- (3, 3) layout.
PAIRED = (6, 7, 8, 9, 10, -8, -9, -10)


def index_map_adding_into(shape_in, shape_out, rows):
    """x -> zeros(shape_out).at[rows].add(x) on flattened entries, a map with repeated targets."""
    n_out = int(np.prod(shape_out))

    def apply(t):
        return jnp.zeros(n_out, t.dtype).at[rows].add(t.reshape(-1)).reshape(shape_out)

    def transpose(ct):
        return ct.reshape(-1)[rows].reshape(shape_in)

    return _structured.IndexMap(apply, transpose)


@pytest.mark.parametrize("code", PAIRED)
@pytest.mark.parametrize("side", ["map_after", "map_before"])
def test_a_map_times_a_permutation_diagonal_is_exact(code, side):
    rng = np.random.default_rng(code + 20)
    structure = graph.structure_of(code)
    value_shape = [3 for _ in structure.value_axes]
    value = jnp.asarray(rng.normal(size=value_shape), jnp.float32)
    paired = _structured.Partial(code, (3, 3), (3, 3), value)
    rows = jnp.array([0, 4, 4, 8, 1, 1, 1, 7, 2])  # 9 entries -> 9 entries, repeated targets
    the_map = index_map_adding_into((3, 3), (3, 3), rows)
    mapped = _structured.Partial(graph.INDEX_MAP, (3, 3), (3, 3), the_map)
    out, inp = (mapped, paired) if side == "map_after" else (paired, mapped)
    got = _structured.multiply(out, inp, 1, _structured.MultiplicationCounter(), jnp.float32)
    dense_out = _structured.densify(out, jnp.float32).reshape(9, 9)
    dense_in = _structured.densify(inp, jnp.float32).reshape(9, 9)
    np.testing.assert_allclose(np.asarray(got.value).reshape(9, 9), np.asarray(dense_out @ dense_in), rtol=1e-6)


def test_a_map_keeps_an_infinite_partial_where_it_drops_its_entry_out():
    # sqrt's partial at -1 is NaN; the gather never reads that entry, so its column is exactly zero
    # (jax.jacfwd and jax.jacrev multiply the NaN by a zero seed and spread NaN over the rows)
    def f(x):
        return jnp.sqrt(x)[jnp.array([0, 2, 2])]

    x = jnp.array([4.0, -1.0, 9.0])
    expected = np.array([[0.25, 0, 0], [0, 0, 1 / 6], [0, 0, 1 / 6]], np.float32)
    for got in jax.jit(lambda x: [interpreter.jacobian(f, order)(x) for order in ORDERS])(x):  # one program
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6)
