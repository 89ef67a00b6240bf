"""Max/min pooling (`reduce_window_max`/`_min`) partials as a selection by window offset
(`interpreter._windows`): the same Jacobians as jax.jacfwd (ties, padding, strides, window
dilation, min, NaN and -inf entries), and no scatter in the compiled program (JAX's transpose of
the pooling's derivative, `select_and_scatter_add`, is an arg-max reduce-window and a scatter of
[entries, rank] indices on XLA:CPU)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import interpreter
from alphagrad.interpreter import _windows

ORDERS = ("forward", "reverse", "markowitz")
HEAD = np.random.default_rng(4).normal(size=(8, 3))


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _pool(window, strides, padding, dilation=None, op="max"):
    init, fn = (-jnp.inf, jax.lax.max) if op == "max" else (jnp.inf, jax.lax.min)

    def f(x, w):
        y = jnp.maximum(x * w, 0.0) if op == "max" else x * w  # relu: windows of tied zeros
        return jnp.sin(jax.lax.reduce_window(y, init, fn, window, strides, padding, window_dilation=dilation))

    return f


CASES = [
    ((1, 2, 2, 1), (1, 1, 1, 1), "VALID", None, "max"),
    ((1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)), None, "max"),
    ((1, 2, 2, 1), (1, 1, 1, 1), "SAME", (1, 2, 1, 1), "min"),
    ((1, 2, 1, 2), (1, 1, 1, 1), "VALID", None, "max"),
]


def _example(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(1, 4, 5, 2))
    x[0, :2, :2] = 0.0  # tied maxima
    x[0, 3, :, 0] = 1.5
    return x, 1.0 + 0.1 * rng.normal(size=(2,))


def _jacfwd_and_orders(f, args, argnums=0):
    """jax.jacfwd's Jacobian and every order's, compiled as one program (was jax.jacfwd op by op and
    a compilation per order)."""
    return jax.jit(lambda *a: (jax.jacfwd(f, argnums=argnums)(*a),
                               [interpreter.jacobian(f, order, argnums=argnums)(*a) for order in ORDERS]))(*args)


def _assert_same(got, want):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_pooling_jacobian_matches_jacfwd(case):
    f = _pool(*CASES[case])
    x, w = _example()
    want, jacobians = _jacfwd_and_orders(f, (x, w), (0, 1))
    for got in jacobians:
        _assert_same(got, want)


def test_windows_of_infinities_and_nan_match_jacfwd():
    """A window of -inf entries keeps the initial value (tangent 0); NaN entries are chosen as
    JAX's comparison chooses them."""

    def f(x):
        y = jnp.where(x > 0.5, x, -jnp.inf)
        pooled = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (2, 2), (2, 2), "VALID")
        return jnp.where(jnp.isfinite(pooled), pooled, 0.0) * 3.0

    x = np.random.default_rng(1).normal(size=(4, 6))
    x[:2, :2] = -1.0  # a window of -inf only
    x[2, 4] = np.nan
    want, jacobians = _jacfwd_and_orders(f, (x,))
    for got in jacobians:
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(want), rtol=1e-8, atol=1e-8)


def test_pooling_compiles_without_scatter_or_select_and_scatter():
    """Under vmap, the reverse order's program holds no scatter (the choice is selected by offset;
    without it, JAX's transpose of the max-pool's derivative scatters: a scatter with XLA:CPU's
    fusion emitters, a dynamic-update-slice loop with the classic ones the suite uses)."""
    f = _pool(*CASES[0])
    rng = np.random.default_rng(5)
    # A pool matrix of more than _structured.MAP_BY_ITSELF_MAX_ENTRIES entries: built through the
    # map's transpose (JAX's rule: a scatter), where a smaller one is built by the map itself.
    x, w = rng.normal(size=(2, 5, 6, 2)), 1.0 + 0.1 * rng.normal(size=(2,))
    xs, ws = np.broadcast_to(x, (4, *x.shape)), np.broadcast_to(w, (4, *w.shape))
    text = jax.jit(jax.vmap(interpreter.jacobian(f, "reverse", argnums=(0, 1)))).lower(xs, ws).compile().as_text()
    assert not re.search(r"= \S+ (scatter|select-and-scatter|dynamic-update-slice)\(", text)


def test_choice_map_falls_back_where_positions_do_not_fit(monkeypatch):
    """A window of more offsets than `WINDOW_CHOICE_MAX_OFFSETS` keeps JAX's own rule (same
    Jacobian)."""
    monkeypatch.setattr(_windows, "WINDOW_CHOICE_MAX_OFFSETS", 0)
    f = _pool(*CASES[1])
    x, w = _example(2)
    want = jax.jacfwd(f, argnums=(0, 1))(x, w)
    _assert_same(interpreter.jacobian(f, "reverse", argnums=(0, 1))(x, w), want)


def test_pole_outside_the_chosen_entries_stays_finite():
    """sqrt's infinite partial at a zero that no window keeps: jax.jacfwd is finite there (the
    pool drops its tangent), and so is every order (the choice's support guards the products,
    through a sum pool and a dense head after it as in cnn_pool)."""

    def f(x):
        y = jax.lax.reduce_window(jnp.sqrt(x), -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 1, 1, 1), "VALID")
        z = jax.lax.reduce_window(y, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") * 0.25
        return z.reshape(1, -1) @ HEAD  # dense rows in reverse order

    x = np.abs(np.random.default_rng(3).normal(size=(1, 5, 5, 2))) + 0.5
    x[0, 0, 0, 0] = 0.0  # never the maximum of its windows
    x[0, 4, 4, 1] = 0.0
    want, jacobians = _jacfwd_and_orders(f, (x,))
    assert np.isfinite(want).all()
    for order, got in zip(ORDERS, jacobians):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-8, atol=1e-8, err_msg=order)
