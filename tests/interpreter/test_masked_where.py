"""A select (jnp.where) discards the partials of the case it does not take, as jax.jacfwd does: NaN or
infinite partials there (sqrt and log outside their domain, a norm at zero) give no NaN in the
Jacobian, in every order. (jax.jacrev multiplies them by a zero cotangent and returns NaN.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import interpreter


def masked_sqrt(x):
    return jnp.where(x > 0, jnp.sqrt(x), 0.0)


def entropy(p):
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(p), 0.0))


def softened_gravity(pos):
    d = pos[:, None, :] - pos[None, :, :]
    r = jnp.linalg.norm(d, axis=-1)  # zero on the diagonal: its partial is NaN there
    inv = jnp.where(r > 0, 1.0 / jnp.where(r > 0, r, 1.0) ** 3, 0.0)
    return jnp.sum(d * inv[..., None], axis=1)


CASES = [
    (masked_sqrt, np.array([1.0, -1.0, 4.0, -0.5])),
    (entropy, np.array([0.0, 0.2, 0.8])),
    (softened_gravity, np.array([[0.1, 0.5], [-0.3, 0.2], [0.7, -0.4]])),
]


@pytest.mark.parametrize("f,x", CASES, ids=[f.__name__ for f, _ in CASES])
def test_where_discards_the_case_not_taken(f, x):
    with jax.enable_x64(True):
        x = jnp.asarray(x)
        expected = jax.jacfwd(f)(x)
        assert np.all(np.isfinite(expected))

        @jax.jit
        def all_orders(x):
            return [interpreter.jacobian(f, o)(x) for o in ("forward", "reverse", "markowitz")]

        for jac in all_orders(x):
            np.testing.assert_allclose(jac, expected, rtol=1e-10, atol=1e-12)
