"""Edge rules against the outsider probe battery of session 7: the structure a rule claims must be
the structure of the partials JAX computes, or the interpreter returns wrong numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import interpreter


def _mixing_rule_sin():
    """sin with a custom JVP rule that mixes entries: pointwise primal, dense partials."""

    @jax.custom_jvp
    def f(x):
        return jnp.sin(x)

    @f.defjvp
    def f_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        return f(x), jnp.cos(x) * t + 0.5 * t[::-1]

    return f


def test_custom_jvp_with_a_mixing_rule_is_dense_not_diagonal():
    f = _mixing_rule_sin()
    x = jnp.array([0.1, 0.2, 0.3])
    g = interpreter.graph_of(lambda v: 2.0 * f(v), x)
    assert g.vertices[0].primitive == "custom_jvp_call"
    assert {e.code for e in g.edges if e.dst == g.node_id(1)} == {1}  # dense
    expected = jax.jacfwd(lambda v: 2.0 * f(v))(x)
    for order in ("forward", "reverse", "markowitz"):
        np.testing.assert_allclose(interpreter.jacobian(lambda v: 2.0 * f(v), order)(x), expected, rtol=1e-6)


@pytest.mark.parametrize("fn", [jax.nn.relu, jax.nn.relu6, lambda v: jnp.logaddexp(v, 2.0 * v)],
                         ids=["relu", "relu6", "logaddexp"])
def test_pointwise_custom_jvp_rules_stay_diagonal(fn):
    g = interpreter.graph_of(fn, jnp.ones(3))
    custom = [v.number for v in g.vertices if v.primitive == "custom_jvp_call"]
    assert custom and all(e.code == 6 for e in g.edges if e.dst in {g.node_id(k) for k in custom})
