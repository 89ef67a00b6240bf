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
    all_orders = jax.jit(lambda x: [interpreter.jacobian(f, o)(x) for o in ORDERS])
    for got in all_orders(X):
        np.testing.assert_allclose(np.asarray(got), np.asarray(jax.jacfwd(f)(X)), rtol=1e-5, atol=1e-6)
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
