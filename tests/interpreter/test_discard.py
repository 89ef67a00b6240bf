"""The discard of a select's untaken case (`_discard.plan_discard`) when the case's value has other uses
that reach an output: a slice, a gather, a product with its first entry (helper corpus24's finding: NaN at
the pole's own entry where jax.jacfwd is finite, every order, straight-line and tape)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import interpreter
from tests.interpreter.test_tape_fuzz import small_tape  # noqa: F401  (the fixture)

_X2 = np.array([0.3, 0.0])
_X6 = np.array([0.3, 0.0, 0.4, 0.0, 0.6, 0.2])
_ORDERS = ("forward", "reverse", "markowitz")


def _safe(x, s):
    return jnp.where(x > 0.25, s, 0.0)


_FORMS = {
    "plus_first_entry": (lambda x: (lambda s: s[0] + _safe(x, s))(jnp.sqrt(x)), _X2),
    "over_first_entry": (lambda x: (lambda s: _safe(x, s) / s[0])(jnp.sqrt(x)), _X2),
    "times_first_entry_of_log": (lambda x: (lambda s: s[0] * _safe(x, s))(jnp.log(x)), _X2),
    "plus_gathered": (lambda x: (lambda s: s[jnp.array([0, 2, 2, 4, 4, 5])] + _safe(x, s))(jnp.sqrt(x)), _X6),
}


@pytest.mark.parametrize("name", sorted(_FORMS))
def test_a_discarded_entry_that_other_uses_do_not_read(name):
    f, x = _FORMS[name]
    with jax.enable_x64(True):
        x = jnp.asarray(x)
        expected = np.asarray(jax.jacfwd(f)(x))
        actual = jax.jit(lambda v: [interpreter.jacobian(f, o)(v) for o in _ORDERS])(x)
    assert np.isfinite(expected).all()
    for order, jac in zip(_ORDERS, actual):
        np.testing.assert_allclose(np.asarray(jac), expected, rtol=1e-10, atol=1e-12, err_msg=order)


def test_the_same_on_the_tape(small_tape):
    f, x = _FORMS["plus_gathered"]
    with jax.enable_x64(True):
        x = jnp.asarray(x)
        expected = np.asarray(jax.jacfwd(f)(x))
        actual = np.asarray(jax.jit(interpreter.jacobian(f, "reverse"))(x))
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)


def test_an_entry_another_output_reads_keeps_that_outputs_infinity():
    # s[:3] is returned too: its entry at the pole is jax.jacfwd's inf (and the NaN of its column's 0 * inf),
    # so s's partial there may not be zeroed; the where's own output at that entry is finite in jax.jacfwd,
    # which the select's zeros hold (`_select_support` on a shared case).
    f = lambda x: (lambda s: (_safe(x, s), s[:3]))(jnp.sqrt(x))
    with jax.enable_x64(True):
        x = jnp.asarray(_X6)
        expected = jax.jacfwd(f)(x)
        actual = interpreter.jacobian(f, "reverse")(x)
    assert np.isinf(np.asarray(actual[1])[1, 1]) and np.isinf(np.asarray(expected[1])[1, 1])
    for got, want in zip(actual, expected):
        finite = np.isfinite(np.asarray(want))
        assert np.isfinite(np.asarray(got)[finite]).all()
        np.testing.assert_allclose(np.asarray(got)[finite], np.asarray(want)[finite], rtol=1e-10)


def test_a_guarded_norm_returned_too_on_the_tape(small_tape):
    # The select's zeros are a run-time support of its case partial (`_tape._Builder._case_support`):
    # the norm is returned, so the discard keeps its sqrt's pole, which the guarded products drop;
    # likewise a product of two poles, one of them returned (its pole reaches the case through it).
    def direction_and_length(v):
        r = jnp.linalg.norm(v, axis=-1)
        x = v[:, 0]
        a = jnp.sqrt(x)
        return v / jnp.where(r > 0, r, 1.0)[:, None], r, jnp.where(x > 0.25, a * jnp.sqrt(x[::-1]), 0.0), a
    with jax.enable_x64(True):
        v = jnp.array([[0.3, 0.4], [0.0, 0.0], [1.0, -2.0]])
        expected = jax.jacfwd(direction_and_length)(v)
        actual = jax.jit(interpreter.jacobian(direction_and_length, "reverse"))(v)
    for got, want in zip(actual, expected):
        finite = np.isfinite(np.asarray(want))
        assert np.isfinite(np.asarray(got)[finite]).all()
