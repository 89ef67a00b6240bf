"""One variable read twice by one data-movement equation (``jnp.concatenate([s, s])``, ``jnp.tile``,
``jnp.roll`` by a traced shift, a multi-operand sort): its edge is an index map, the equation's map
with the variable in both places, never a dense sum whose zeros meet the infinite partials of a
square root at 0 (helper corpus23's finding: NaN where jax.jacfwd is finite, in every order)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from alphagrad import graph, interpreter
from alphagrad.graph._structure import INDEX_MAP

_X = np.array([0.3, 0.0, 0.4, 0.0, 0.6])

FORMS = {
    "concatenate": lambda x: jnp.concatenate([jnp.sqrt(x)] * 2)[4],
    "roll_by_traced_shift": lambda x: jnp.roll(jnp.sqrt(x), -jnp.argmax(x))[:1],
    "tile_then_sum": lambda x: jnp.tile(jnp.sqrt(x), 2).reshape(2, 5).sum(0)[4],
    "stack_axis_1": lambda x: jnp.stack([jnp.sqrt(x)] * 2, axis=1)[4, 1],
    "sort_of_three": lambda x: lax.sort((x, jnp.sqrt(x), jnp.sqrt(x) * 1.0), num_keys=1)[2][4:],
    "tile_rank_3": lambda x: jnp.tile(jnp.sqrt(x).reshape(1, 5, 1), (2, 1, 3))[1, 4, 2] * x[4],
}


@pytest.mark.parametrize("name", sorted(FORMS))
def test_a_variable_read_twice_by_a_movement_keeps_jacfwds_zeros(name):
    f = FORMS[name]
    with jax.enable_x64(True):
        x = jnp.asarray(_X)
        expected = np.asarray(jax.jacfwd(f)(x))
        g = interpreter.graph_of(f, x)
        for order in ("forward", "reverse", "markowitz"):
            actual = np.asarray(jax.jit(interpreter.jacobian(f, order))(x))
            np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=0, err_msg=order)
            assert interpreter.count_muls(f, order, x) == graph.cost(g, order)


def test_the_edge_of_a_variable_read_twice_is_an_index_map():
    def f(x):
        s = jnp.sin(x)
        return jnp.concatenate([s, s * 2.0, s])

    with jax.enable_x64(True):
        g = interpreter.graph_of(f, jnp.asarray(_X))
    into_concatenate = [e for e in g.edges if e.out_shape == (15, 1)]
    assert len(into_concatenate) == 2  # from s (read twice) and from s * 2
    assert all(e.code == INDEX_MAP for e in into_concatenate)
