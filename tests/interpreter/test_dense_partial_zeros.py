"""A partial with exact zeros the graph's structure does not say (a convolution's windows, a dense
JAX-derived partial: cumprod, cumlogsumexp, a triangular solve, a scan with a product carry) after a
pole (sqrt's infinite derivative at 0): jax.jacfwd never multiplies those zeros by the pole, so an
output entry that does not read the pole is finite there. alphagrad keeps them out of the products
(`_jacobian._window_support`: a convolution's windows, known while tracing; `_jacobian._nan_reach`:
where a NaN tangent reaches through JAX's JVP rule, at run time), in every order, and so does the
tape (`_tape._Builder._dense_zeros`, session 25). Session 24, corpus23's finding 2
(/work/notes/corpus23_report.md)."""

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import pytest
from jax import lax

from alphagrad import interpreter

_X = np.array([0.3, 0.0, 0.4, 0.0, 0.6])  # sqrt's derivative is infinite at x[1] and x[3]
_ORDERS = ("forward", "reverse", "markowitz")
_L = np.tril(np.ones((5, 5))) + np.eye(5)


def _strided(x):  # windows of width 1 at stride 2 read x[0], x[2], x[4]
    return lax.conv_general_dilated(jnp.sqrt(x)[None, None], jnp.full((1, 1, 1), 2.0), (2,), "VALID")[0, 0]


def _dilated(x):  # every other output's window (dilation 2) reads x[0], x[2] or x[2], x[4]
    return lax.conv_general_dilated(jnp.sqrt(x)[None, None], jnp.ones((1, 1, 2)), (1,), "VALID",
                                    rhs_dilation=(2,))[0, 0, ::2]


def _kernel_in_the_padding(x):  # the kernel is sqrt(x): taps 1 and 3 meet only the padding
    signal = jnp.arange(1.0, 8.0)[None, None]
    return lax.conv_general_dilated(signal, jnp.sqrt(x)[None, None], (3,), [(4, 0)])[0, 0, :1]


def _cumprod(x):
    return jnp.cumprod(1.0 + jnp.sqrt(x))[:1]


def _cumlogsumexp(x):
    return lax.cumlogsumexp(jnp.sqrt(x))[:1]


def _triangular_solve(x):
    return jsl.solve_triangular(_L, jnp.sqrt(x), lower=True)[:1]


def _product_carry(x):
    def step(c, s):
        c = c * (1.0 + s)
        return c, c
    return lax.scan(step, 1.0, jnp.sqrt(x))[1][:1]


@pytest.mark.parametrize("f", [_strided, _dilated, _kernel_in_the_padding, _cumprod, _cumlogsumexp,
                               _triangular_solve, _product_carry], ids=lambda f: f.__name__.strip("_"))
def test_zeros_of_a_partial_do_not_meet_the_pole(f):
    with jax.enable_x64(True):
        x = jnp.asarray(_X)  # one program: jax.jacfwd's Jacobian (was op by op) and every order's
        expected, jacobians = jax.jit(lambda x: (jax.jacfwd(f)(x), [interpreter.jacobian(f, o)(x) for o in _ORDERS]))(x)
        expected = np.asarray(expected)
    assert np.all(np.isfinite(expected))
    for order, actual in zip(_ORDERS, jacobians):
        np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-10, atol=1e-12, err_msg=order)


def _zero_tap(x):  # output 0 reads x[1] through a zero tap: 0 * inf, NaN in jax.jacfwd too
    return lax.conv_general_dilated(jnp.sqrt(x)[None, None], jnp.array([[[1.0, 0.0]]]), (1,), "VALID")[0, 0]


def _cumprod_of_a_zero(x):  # 0 * sqrt(x[1]): every later product reads the pole
    return jnp.cumprod(jnp.sqrt(x) * jnp.array([1.0, 0.0, 1.0, 1.0, 1.0]))


@pytest.mark.parametrize("f, entry", [(_zero_tap, (0, 1)), (_cumprod_of_a_zero, (1, 1))],
                         ids=["zero_tap", "cumprod_of_a_zero"])
def test_an_entry_the_rule_multiplies_stays_nan(f, entry):
    """The support is the entries JAX's rule multiplies, exact zeros included: the pole's column
    stays NaN in the rows that read it, NaN in jax.jacfwd too (none where jax.jacfwd is finite)."""
    with jax.enable_x64(True):
        x = jnp.asarray(_X)  # one program: jax.jacfwd's Jacobian (was op by op) and the order's
        expected, actual = map(np.asarray, jax.jit(lambda x: (jax.jacfwd(f)(x), interpreter.jacobian(f, "reverse")(x)))(x))
    assert not np.any(np.isnan(actual) & np.isfinite(expected))
    assert np.isnan(expected[entry]) and np.isnan(actual[entry])
    finite = np.isfinite(actual) & np.isfinite(expected)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("f", [_kernel_in_the_padding, _cumprod], ids=lambda f: f.__name__.strip("_"))
def test_zeros_of_a_partial_do_not_meet_the_pole_on_the_tape(f, monkeypatch):
    # The tape holds the same entries as structural zeros (`_tape._Builder._dense_zeros`, by
    # `_jacobian._static_reach` while building), so its guarded products read 0 for the pole.
    from alphagrad.interpreter import _tape
    monkeypatch.setattr(_tape, "TAPE_MIN_SIZE", 0)  # these small programs on the tape's path
    monkeypatch.setattr(_tape, "TAPE_MIN_EQUATIONS", 0)
    with jax.enable_x64(True):
        x = jnp.asarray(_X)
        graph = interpreter.graph_of(f, x)
        _tape.build(graph, interpreter._jacobian.plan(graph, interpreter._jacobian.resolve_order(graph, "reverse")))
        expected, actual = map(np.asarray, jax.jit(lambda x: (jax.jacfwd(f)(x), interpreter.jacobian(f, "reverse")(x)))(x))
    assert np.all(np.isfinite(expected))
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)
