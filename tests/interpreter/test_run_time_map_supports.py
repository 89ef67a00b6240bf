"""A run-time index map (a gather, a dynamic slice, a sort's permutation at indices computed from the
values) keeps the entries it moves as a support through the data movement after it (a squeeze, a
reshape, a sum: a product of two index maps is an index map), so that in reverse and Markowitz
order its structural zeros stay 0 against a pole it never reads: the unit rows of a zero-padded
batch, ``x / norms`` at the padding rows (corpus22's finding 1; corpus21's argsort form divided
after the gather)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from alphagrad import interpreter

_PADDED = np.array([[0.3, -0.2, 0.5], [0.0, 0.0, 0.0], [-0.4, 0.1, 0.2], [0.0, 0.0, 0.0], [0.6, 0.3, -0.1]])


def _unit_rows(x):
    norms = jnp.sqrt(jnp.sum(x * x, -1))
    return x / norms[:, None], norms  # 0/0 at the padding rows, never selected below


def _longest_row_sliced(x):
    units, norms = _unit_rows(x)
    return lax.dynamic_slice(units, (jnp.argmax(norms), 0), (1, 3))[0]  # then a squeeze


def _longest_row_summed(x):
    units, norms = _unit_rows(x)
    return lax.dynamic_slice(units, (jnp.argmax(norms), 0), (1, 3)).sum()


def _longest_row_indexed(x):
    units, norms = _unit_rows(x)
    return units[jnp.argmax(norms)]


def _rows_by_norm(x):
    units, norms = _unit_rows(x)
    return jnp.take_along_axis(units, jnp.argsort(-norms)[:, None], 0)[:3]


def _sorted_with_the_norms(x):
    units, norms = _unit_rows(x)
    return jnp.stack(lax.sort((-norms,) + tuple(units[:, k] for k in range(3)), num_keys=1)[1:], 1)[:3]


CASES = {f.__name__.strip("_"): f for f in (_longest_row_sliced, _longest_row_summed, _longest_row_indexed,
                                              _rows_by_norm, _sorted_with_the_norms)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_run_time_map_then_data_movement_keeps_the_jacobian_finite(name):
    f = CASES[name]
    with jax.enable_x64(True):
        x = jnp.asarray(_PADDED)
        orders = ("forward", "reverse", "markowitz")  # one program: jax.jacfwd's Jacobian and every order's
        expected, jacobians = jax.jit(lambda x: (jax.jacfwd(f)(x), [interpreter.jacobian(f, o)(x) for o in orders]))(x)
        expected = np.asarray(expected)
        assert np.isfinite(expected).all()
        for order, actual in zip(orders, jacobians):
            np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-14, err_msg=order)
