"""A select (jnp.where) discards the case it does not take through identity and constant-multiple partials too
(add, sub, neg, a constant scale), as jax.jacfwd does: no NaN from the untaken case (API sweep, session 15)."""
import jax
import jax.numpy as jnp
import jax.scipy.special as sp
import numpy as np
import pytest

from alphagrad import graph, interpreter

CASES = {
    "sqrt_plus_one": (lambda x: jnp.where(x > 0, jnp.sqrt(x) + 1.0, 0.0), (np.array([1.0, -1.0, 4.0, -0.5]),)),
    "neg_sqrt": (lambda x: jnp.where(x > 0, -jnp.sqrt(x), 0.0), (np.array([1.0, -1.0, 4.0, -0.5]),)),
    "sqrt_plus_x": (lambda x: jnp.where(x > 0, jnp.sqrt(x) + x, x), (np.array([1.0, -1.0, 4.0, -0.5]),)),
    "betaln_negative": (lambda a, b: sp.betaln(a, b), (np.array([-0.35, 0.6, -0.7]), np.array([-0.45, -0.3, -0.8]))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_where_discards_through_identities(name):
    f, args = CASES[name]
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a) for a in args)
        argnums = tuple(range(len(args)))
        expected = jax.jacfwd(f, argnums=argnums)(*args)
        g = interpreter.graph_of(f, *args, argnums=argnums)
        for order in ("forward", "reverse"):
            actual = interpreter.jacobian(f, order, argnums=argnums)(*args)
            for a, e in zip(actual, expected):
                np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-14)
            assert interpreter.count_muls(f, order, *args, argnums=argnums) == graph.cost(g, order)
