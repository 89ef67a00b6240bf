"""Edge rules against the outsider probe battery of session 7: the structure a rule claims must be
the structure of the partials JAX computes, or the interpreter returns wrong numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import interpreter


def _product_with_rolled_rule():
    """a * b with a custom JVP rule that rolls b's tangent: a pointwise primal, a partial in b that is
    a permutation times a diagonal, not a diagonal (the corpus's custom_jvp_mixing is the unary case)."""

    @jax.custom_jvp
    def f(a, b):
        return a * b

    @f.defjvp
    def f_jvp(primals, tangents):
        (a, b), (ta, tb) = primals, tangents
        return f(a, b), b * ta + a * jnp.roll(tb, 1)

    return f


def test_custom_jvp_with_a_mixing_rule_is_dense_not_diagonal():
    f = _product_with_rolled_rule()
    x, y = jnp.array([0.1, 0.2, 0.3]), jnp.array([1.5, -0.5, 2.0])
    g = interpreter.graph_of(f, x, y, argnums=(0, 1))
    assert g.vertices[0].primitive == "custom_jvp_call"
    assert sorted(e.code for e in g.edges if e.dst == g.node_id(1)) == [1, 1]  # dense in a and in b
    assert len(g.vertices) == 1  # no vertex to eliminate: every order runs the same program
    expected = jax.jacfwd(f, argnums=(0, 1))(x, y)
    for a, b in zip(interpreter.jacobian(f, "reverse", argnums=(0, 1))(x, y), expected):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("fn", [jax.nn.relu, jax.nn.relu6, lambda v: jnp.logaddexp(v, 2.0 * v)],
                         ids=["relu", "relu6", "logaddexp"])
def test_pointwise_custom_jvp_rules_stay_diagonal(fn):
    g = interpreter.graph_of(fn, jnp.ones(3))
    custom = [v.number for v in g.vertices if v.primitive == "custom_jvp_call"]
    assert custom and all(e.code == 6 for e in g.edges if e.dst in {g.node_id(k) for k in custom})


@pytest.mark.parametrize("fn,x", [
    # jnp.reshape(order="F") reshapes with `dimensions` (a transpose first): on a square matrix the
    # normalised shapes agree, and the identity code gave x's Jacobian instead of its transpose's
    (lambda x: jnp.sin(x.reshape(2, 2, order="F")), np.arange(4.0).reshape(2, 2) / 10),
    (lambda x: jnp.sin(jax.lax.reshape(x, (2, 2, 3), dimensions=(0, 2, 1))), np.arange(12.0).reshape(2, 2, 3) / 10),
    # broadcast_dimensions out of order transpose the trailing axes, which normalise alike
    (lambda x: jnp.sin(jax.lax.broadcast_in_dim(x, (2, 3, 2), (0, 2, 1))), np.arange(12.0).reshape(2, 2, 3) / 10),
], ids=["reshape_order_F", "reshape_dimensions_3d", "broadcast_transposing_3d"])
def test_reshape_and_broadcast_that_transpose_are_index_maps_not_identities(fn, x):
    g = interpreter.graph_of(fn, x)
    moved = [e for e in g.edges if e.src == 1]
    assert moved and all(e.code == 11 for e in moved)


def test_reshape_in_column_major_order_gets_the_transposed_jacobian():
    def fn(x):
        return jnp.sin(x.reshape(2, 2, order="F"))

    x = np.arange(4.0).reshape(2, 2) / 10
    np.testing.assert_allclose(interpreter.jacobian(fn, "reverse")(x), jax.jacfwd(fn)(x), rtol=1e-6)


def test_device_put_of_several_arrays_copies_each_to_its_own_output():
    """jax.device_put((a, b)) is one equation of two outputs; output k copies operand k only (an edge
    from every operand to every output added b's Jacobian to c's and a's to d's)."""
    def f(a, b):
        c, d = jax.device_put((jnp.sin(a), b * 2))
        return c * 3, d + 1

    a, b = np.array([0.1, 0.2]), np.array([0.3, -0.4])
    g = interpreter.graph_of(f, a, b, argnums=(0, 1))
    put = [g.node_id(v.number) for v in g.vertices if v.primitive.startswith("device_put")]
    assert len([e for e in g.edges if e.dst in put]) == 2
    expected = jax.jacfwd(f, argnums=(0, 1))(a, b)
    for actual, want in zip(jax.tree.leaves(interpreter.jacobian(f, "reverse", argnums=(0, 1))(a, b)),
                            jax.tree.leaves(expected)):
        np.testing.assert_allclose(actual, want, rtol=1e-6)



def test_scatter_mul_is_diagonal_in_its_operand():
    """x.at[i].mul(u) scales entry k of x by the updates scattered onto k (their product where an
    index repeats): a diagonal partial in x, not a dense one; dense in u (differentiable at unique
    indices only)."""
    def f(x, u):
        return x.at[np.array([0, 2, 2, 1])].mul(u) * x + x.at[np.array([3, 1])].mul(u[:2] ** 2, unique_indices=True)

    x, u = jnp.array([0.3, -1.2, 0.7, 2.0]), jnp.array([1.5, -0.5, 2.0, 0.25])
    g = interpreter.graph_of(f, x, u)
    scatters = [g.node_id(v.number) for v in g.vertices if v.primitive == "scatter-mul"]
    assert [e.code for e in g.edges if e.dst in scatters and e.src == 1] == [6, 6]
    scale = jnp.array([u[0], u[3], u[1] * u[2], 1.0])  # the first scatter's factor per entry
    expected = jnp.diag(2 * x * scale + jnp.array([1.0, u[1] ** 2, 1.0, u[0] ** 2]))  # (jax.jacfwd is slow here)
    np.testing.assert_allclose(interpreter.jacobian(f, "reverse")(x, u), expected, rtol=1e-6)
    g = interpreter.graph_of(f, x, u, argnums=1)
    assert [e.code for e in g.edges if e.dst in scatters] == [1, 1]  # dense in the updates
