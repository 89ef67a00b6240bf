"""Cases of helper corpus20's held-out rehearsal (session 20): what alphagrad gets wrong as strict expected
failures, and a few of the new kinds it gets right as controls. Report: /work/notes/corpus20_report.md.

1. NaN where jax.jacfwd is finite: a zero (padding) row goes through a pole (sqrt at 0), and ``where`` with a
   column mask then *selects* a constant for some of that row's entries. jax.jacfwd's tangent there is the
   selected constant's (0); alphagrad multiplies the select's 0 by the NaN of the pole's chain. Seen in set
   attention over a padded set (keys normalised by a clamped norm, padded keys masked by -1e9), where a finite
   RMS output block turns NaN in every order. Repros: /work/notes/corpus20/repros/masked_columns_after_pole.py,
   padded_set_attention_rms_nan.py. Mended in session 21: a select's case partial keeps the entries its case is
   taken at as its support, and products keep those zeros 0 (now passing tests, with a traced mask too).
2. NaN in reverse order only after a run-time selection (the open class of test_heldout17's top_k_then_dot),
   in a natural form: the longest row of a zero-padded batch by ``argmax`` of sqrt norms, normalised.
   Repro: repros/pick_longest_padded_row.py. Mended in session 21 (a run-time index map's support).
3. A max ``lax.reduce_window`` with ``window_dilation``: alphagrad asked JAX for the VJP of select_and_gather,
   which JAX lacks with window dilation, and raised JAX's NotImplementedError, where jax.jacfwd differentiates
   it (mended in session 20: now a passing test). Repro: repros/reduce_window_max_window_dilation.py.
4. A user ``custom_jvp`` whose rule is not linear in the tangent (it clips the tangent, as gradient-clipping code
   does): jax.jacfwd pushes f's basis vectors through the rule, jax.jacrev refuses (no transpose of min), and
   alphagrad silently returns the rule's partial at a unit tangent times the chain's factor — a different
   Jacobian. Either jax.jacfwd's answer or an AlphagradError would do. Repro:
   repros/custom_jvp_nonlinear_tangent_rule.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from alphagrad import AlphagradError, interpreter

_COLUMNS = jnp.array([True, True, True, True, False, False])
_PADDED = jnp.asarray(np.concatenate([np.random.default_rng(2024).normal(size=(4, 3)) * 0.5, np.zeros((2, 3))]))


def _masked_columns_after_pole(x):
    return jnp.where(_COLUMNS[None], jnp.sqrt(jnp.sum(x ** 2, 1, keepdims=True)) * jnp.ones((1, 6)), 0.0)


def _padded_set_attention_rms(x):
    k = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
    y = jax.nn.softmax(jnp.where(_COLUMNS[None, :], k @ k.T, -1e9), -1) @ x
    return jnp.sqrt(jnp.sum(jnp.where(_COLUMNS[:, None], y ** 2, 0.0), 0) / 4)


def _pick_longest_padded_row(x):
    norms = jnp.sqrt(jnp.sum(x ** 2, 1))
    i = jnp.argmax(norms)
    return x[i] / norms[i]


def _no_nan_where_jacfwd_is_finite(f, orders, x):
    # One program: jax.jacfwd's Jacobian (was op by op) and every order's (was a compilation each).
    expected, jacobians = jax.jit(lambda x: (jax.jacfwd(f)(x), [interpreter.jacobian(f, o)(x) for o in orders]))(x)
    expected = np.asarray(expected)
    finite = np.isfinite(expected)
    for order, actual in zip(orders, jacobians):
        actual = np.asarray(actual)
        assert not np.any(np.isnan(actual) & finite), order
        np.testing.assert_allclose(actual[finite], expected[finite], rtol=2e-5, atol=1e-7, err_msg=order)  # float32


def _masked_traced_columns_after_pole(x):
    # The mask read off the values (the padding's zero rows), so the predicate is known at run time only.
    columns = jnp.sum(x ** 2, 1) > 0
    return jnp.where(columns[None], jnp.sqrt(jnp.sum(x ** 2, 1, keepdims=True)) * jnp.ones((1, 6)), 0.0)


@pytest.mark.parametrize("f", [_masked_columns_after_pole, _masked_traced_columns_after_pole, _padded_set_attention_rms],
                         ids=["masked_columns", "masked_traced_columns", "set_attention_rms"])
def test_a_where_that_selects_a_constant_after_a_zero_rows_pole_gives_no_nan(f):
    _no_nan_where_jacfwd_is_finite(f, ("forward", "reverse", "markowitz"), _PADDED)


def test_masking_the_zero_rows_themselves_is_right_already():
    # The control: the mask on the rows (not the columns) of the pole's output.
    rows = lambda x: jnp.where(_COLUMNS[:, None], jnp.sqrt(jnp.sum(x ** 2, 1, keepdims=True)) * jnp.ones((1, 6)), 0.0)
    _no_nan_where_jacfwd_is_finite(rows, ("forward", "reverse"), _PADDED)


def test_the_longest_row_of_a_padded_batch():
    # Mended in session 21: the row's index map (argmax, known at run time) keeps its entries as a
    # run-time support, so reverse order's products keep the unread zero row's pole out.
    _no_nan_where_jacfwd_is_finite(_pick_longest_padded_row, ("forward", "reverse", "markowitz"), _PADDED)


_DILATED_MAX = lambda v: lax.reduce_window(v, -jnp.inf, lax.max, (2, 2), (1, 1), "VALID", window_dilation=(1, 2))
_GRID = jnp.arange(30.0).reshape(5, 6) % 7 + 0.01 * jnp.arange(30.0).reshape(5, 6)


def test_a_max_reduce_window_with_window_dilation():
    # JAX has no transpose of select_and_gather with window dilation: the small map's matrix is built
    # by the map itself, and a larger one's adjoint is read off its columns (corpus20 finding 3).
    for grid in (_GRID, jnp.sin(jnp.arange(24.0 * 20).reshape(24, 20))):
        expected, jacobians = jax.jit(lambda g: (  # one program: jax.jacfwd's Jacobian and every order's
            jax.jacfwd(_DILATED_MAX)(g), [interpreter.jacobian(_DILATED_MAX, o)(g) for o in ("forward", "reverse", "markowitz")]))(grid)
        for got in jacobians:
            np.testing.assert_allclose(got, expected)


def test_a_min_reduce_window_with_base_dilation_is_right_already():
    f = lambda v: lax.reduce_window(v, jnp.inf, lax.min, (2, 2), (1, 1), "VALID", base_dilation=(2, 1))
    np.testing.assert_allclose(interpreter.jacobian(f, "forward")(_GRID), jax.jacfwd(f)(_GRID))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _tanh_clipped_tangent(x, c):
    return jnp.tanh(x)


@_tanh_clipped_tangent.defjvp
def _tanh_clipped_tangent_jvp(c, primals, tangents):
    (x,), (t,) = primals, tangents
    y = jnp.tanh(x)
    return y, jnp.clip((1 - y ** 2) * t, -c, c)


@jax.custom_jvp
def _tanh_linear_tangent(x):
    return jnp.tanh(x)


@_tanh_linear_tangent.defjvp
def _tanh_linear_tangent_jvp(primals, tangents):
    # A linear rule that still uses clip, max and comparisons, but on primal values only.
    (x,), (t,) = primals, tangents
    y = jnp.tanh(x)
    scale = jnp.clip(1 - y ** 2, 0.1, 1.0)
    return y, jnp.where(jnp.maximum(x, 0.0) > 0.5, scale * t, (1 - y ** 2) * t)


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_a_custom_jvp_rule_not_linear_in_the_tangent_is_refused(order):
    """corpus20 finding 4: a rule that clips its tangent was followed as if linear, silently unlike
    jax.jacfwd (whose columns depend on the seeds' scale; jax.jacrev refuses). It is refused at the
    boundary, naming the rule and the operation."""
    f = lambda x: _tanh_clipped_tangent(3 * x, 0.5) + x
    x = jnp.array([0.05, -0.3, 0.6, 0.01])
    with pytest.raises(AlphagradError, match="rule of _tanh_clipped_tangent .* not linear in its tangent: it applies 'max'"):
        interpreter.jacobian(f, order)(x)


def test_a_custom_jvp_rule_that_clips_only_primal_values_is_followed():
    f = lambda x: _tanh_linear_tangent(3 * x) + x
    x = jnp.array([0.05, -0.3, 0.6, 0.01])
    for order in ("forward", "reverse"):
        np.testing.assert_allclose(interpreter.jacobian(f, order)(x), jax.jacfwd(f)(x), rtol=1e-6)
