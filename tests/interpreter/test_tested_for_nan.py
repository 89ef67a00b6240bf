"""Arguments a function tests for NaN or infinity (missing data masked by ``jnp.nanmean``, ``nan_to_num``):
their partials may be NaN where the function masks them, and the masks' exact zeros must keep them out, as
jax.jacfwd's selected zero tangents do (`_poles.tested_arguments`). Found by helper corpus25 (session 25):
NaN at the missing entries in every order before. (The tape's select discards these products already.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import interpreter

_ORDERS = ("forward", "reverse", "markowitz")


def _masked_mse(pred, y):
    return jnp.nanmean((pred - y) ** 2)


def _nansum_of_squares(x):
    return jnp.nansum(x ** 2) + jnp.sum(jnp.where(jnp.isfinite(x), x, 0.0) * 3.0)


def _clipped_to_finite(x):
    return jnp.sum(jnp.nan_to_num(x * x, posinf=0.0) * 2.0)


_PRED = np.array([0.3, -0.2, 0.5, 1.0])
_LABELS = np.array([0.1, np.nan, 0.4, np.nan])
_X = np.array([0.3, np.nan, -0.5, 2.0])
_X_INF = np.array([0.3, np.nan, -0.5, np.inf])
_CASES = [(_masked_mse, (_PRED, _LABELS), 0), (_masked_mse, (_PRED, _LABELS), (0, 1)),
          (_nansum_of_squares, (_X,), 0), (_clipped_to_finite, (_X_INF,), 0)]


def _check(f, args, argnums):
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a) for a in args)
        expected = jax.jacfwd(f, argnums=argnums)(*args)
        for order in _ORDERS:
            actual = interpreter.jacobian(f, order, argnums=argnums)(*args)
            for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
                finite = np.isfinite(b)  # (jax.jacfwd is NaN beside an infinite value: not compared there)
                assert finite.sum() >= 2
                np.testing.assert_allclose(np.asarray(a)[finite], np.asarray(b)[finite], rtol=1e-12, err_msg=order)


@pytest.mark.parametrize("f, args, argnums", _CASES, ids=["mse", "mse-both", "nansum", "nan_to_num"])
def test_tested_arguments_are_not_taken_finite(f, args, argnums):
    _check(f, args, argnums)
