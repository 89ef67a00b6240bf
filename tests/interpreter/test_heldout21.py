"""Cases of helper corpus21's held-out rehearsal (session 21): what alphagrad gets wrong as strict expected
failures, and a dozen of the new kinds it gets right as controls. Report: /work/notes/corpus21_report.md.

1. NaN where jax.jacfwd is finite, reverse and Markowitz orders: rows of a zero-padded batch sorted by norm
   (``argsort``), the top rows normalised by their norms. The padding rows' 0/0 is never selected, and jax.jacfwd
   is finite; reverse order keeps jax.jacrev's NaN (the open class of test_heldout17's top_k_then_dot and
   test_heldout20's longest padded row, in a third natural form). Repro:
   /work/notes/corpus21/repros/argsort_by_norm_take_top_padded.py. Mended in session 21 (an index map at run-time
   indices keeps its entries as a run-time support where a pole may reach its operand): now a passing test.
2. A raw JAX ValueError (not an AlphagradError) in reverse order where jax.jacfwd works and forward order is
   exact: ``jnp.trace`` (a select on an iota == iota mask, then a sum) of a [4, 4] reshape of a broadcast
   [2, 2, 2, 2] product of the argument, as ``jnp.trace(jnp.kron(a, jnp.eye(2)), offset=1)`` writes it ("Incompatible
   shapes for broadcasting: shapes=[(1, 1, 2, 8), (1, 1, 4, 4), ()]"). Repro:
   /work/notes/corpus21/repros/trace_of_reshaped_broadcast_reverse_crash.py. Mended in session 21: a product's
   terms take their weights in the product's own split of each side (`_structured._in_pattern_split`).

The controls: gather and scatter modes with out-of-range indices, clamped dynamic slices, negative and interior
padding, scatter-max and segment-max at exact ties, ``lax.custom_root`` and ``lax.custom_linear_solve``, a deep
equilibrium layer with an implicit ``custom_vjp``, a NamedTuple state with an integer leaf, a value-function
iteration (max in a fori loop), projected gradient steps with ``jax.grad`` inside a fori loop, and poles at
padding rows that are dropped by a gather, a slice of a cumsum and an out-of-range segment id.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from alphagrad import interpreter

_PADDED = np.concatenate([np.random.default_rng(2125).normal(size=(4, 3)) * 0.5, np.zeros((2, 3))])


def _norms(x):
    return jnp.sqrt(jnp.sum(x ** 2, -1))


def _top_unit_rows_by_norm(x):
    order = jnp.argsort(-_norms(x))
    return (x / _norms(x)[:, None])[order[:3]]


def _jacfwd_and_orders(f, x, orders):
    """jax.jacfwd's Jacobian and every order's, compiled as one program (was jax.jacfwd op by op and
    a compilation per order)."""
    return jax.jit(lambda x: (jax.jacfwd(f)(x), [interpreter.jacobian(f, order)(x) for order in orders]))(x)


def test_the_top_rows_by_norm_of_a_padded_batch():
    with jax.enable_x64(True):
        x = jnp.asarray(_PADDED)
        expected, jacobians = _jacfwd_and_orders(_top_unit_rows_by_norm, x, ("forward", "reverse", "markowitz"))
        assert np.all(np.isfinite(expected))
        for actual in jacobians:
            assert not np.any(np.isnan(actual))
            np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)


def _trace_of_kron(a):
    return jnp.trace(jnp.kron(a, jnp.eye(2)), offset=1)


def _trace_of_reshaped_broadcast(a):
    return jnp.trace(jnp.broadcast_to(a[:, None, :, None], (2, 2, 2, 2)).reshape(4, 4))


@pytest.mark.parametrize("f", [_trace_of_kron, _trace_of_reshaped_broadcast])
def test_the_trace_of_a_reshaped_broadcast(f):
    with jax.enable_x64(True):
        a = jnp.asarray(np.random.default_rng(0).normal(size=(2, 2)))
        expected, jacobians = _jacfwd_and_orders(f, a, ("forward", "markowitz", "reverse"))
        for got in jacobians:
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


def test_the_diagonal_sum_of_a_kron_is_right_already():
    f = lambda a: jnp.diagonal(jnp.kron(a, jnp.eye(2)), offset=1).sum()
    with jax.enable_x64(True):
        a = jnp.asarray(np.random.default_rng(0).normal(size=(2, 2)))
        expected, jacobians = _jacfwd_and_orders(f, a, ("forward", "reverse"))
        for got in jacobians:
            np.testing.assert_allclose(got, expected, rtol=1e-12)


# ---- controls: new kinds that are right ----

def _gather_modes(x):
    idx = jnp.array([0, 4, 7, -1, -9, 2])
    return x.at[idx].get(mode="fill", fill_value=-2.0) + 2 * x.at[idx].get(mode="clip")


def _scatter_modes(x, v):
    idx = jnp.array([1, 6, 3, -2])
    return (x.at[idx].add(v, mode="drop") + x.at[idx].set(v * 2, mode="clip")
            + x.at[jnp.array([1, 0, 3, 4])].multiply(1 + v, unique_indices=True))


def _clamped_dynamic_slices(x, u):
    y = lax.dynamic_update_slice(x, u, (3, 8))
    return lax.dynamic_slice(y, (-4, 1), (2, 3)), y


def _negative_and_interior_padding(x):
    return lax.pad(x, x[0, 0], [(-1, 2, 1), (1, -2, 0)])


def _tied_scatter_and_segment_max(x):
    idx = jnp.array([0, 0, 1, 2, 2, 3])
    return (jnp.zeros(4).at[idx].max(x) + jnp.full(4, 1.0).at[idx].min(x)
            + jax.ops.segment_max(x, idx, 4) * 2)


def _custom_root(c):
    def solve(g, x0):
        return lax.fori_loop(0, 30, lambda i, x: x - g(x) / (3 * x ** 2 + c), x0)
    return lax.custom_root(lambda x: x ** 3 + c * x - 1.0, jnp.ones_like(c), solve,
                           lambda g, y: y / g(jnp.ones_like(y)))


def _custom_linear_solve(a, b):
    m = a @ a.T + 2 * jnp.eye(a.shape[0])

    def solve(matvec, rhs):
        def body(i, s):
            x, r, p, rs = s
            ap = matvec(p)
            alpha = rs / (p @ ap)
            x, r = x + alpha * p, r - alpha * ap
            return x, r, r + (r @ r) / rs * p, r @ r
        return lax.fori_loop(0, 12, body, (jnp.zeros_like(rhs), rhs, rhs, rhs @ rhs))[0]
    return lax.custom_linear_solve(lambda x: m @ x, b, solve, symmetric=True)


def _deq_cell(w, u, z, x):
    return jnp.tanh(z @ w + x @ u)


@jax.custom_vjp
def _equilibrium(w, u, x):
    return lax.fori_loop(0, 60, lambda i, z: _deq_cell(w, u, z, x), jnp.zeros((x.shape[0], w.shape[0])))


def _equilibrium_fwd(w, u, x):
    z = _equilibrium(w, u, x)
    return z, (w, u, x, z)


def _equilibrium_bwd(res, g):
    w, u, x, z = res
    _, vjp_z = jax.vjp(lambda z: _deq_cell(w, u, z, x), z)
    adjoint = lax.fori_loop(0, 60, lambda i, a: vjp_z(a)[0] + g, g)
    return jax.vjp(lambda w, u, x: _deq_cell(w, u, z, x), w, u, x)[1](adjoint)


_equilibrium.defvjp(_equilibrium_fwd, _equilibrium_bwd)


def _deep_equilibrium(w, u, x):
    return jnp.sum(_equilibrium(w, u, x) ** 2, -1)


class _State(NamedTuple):
    pos: jnp.ndarray
    vel: jnp.ndarray
    step: jnp.ndarray


def _spring_step(s, k):
    vel = s["vel"] + 0.1 * (-k * s["pos"] - 0.1 * s["vel"])
    return _State(s["pos"] + 0.1 * vel, vel, jnp.argmax(vel))


def _value_iteration(beta, grid):
    c = (grid ** 0.3 + 0.9 * grid)[:, None] - grid[None, :]
    u = jnp.where(c > 1e-8, jnp.log(jnp.maximum(c, 1e-8)), -1e4)
    return lax.fori_loop(0, 40, lambda i, v: jnp.max(u + beta * v[None, :], 1), jnp.zeros_like(grid))


def _projected_gradient(u0, x0):
    def cost(u):
        def step(x, uk):
            xn = jnp.array([[1.0, 0.1], [0.0, 1.0]]) @ x + jnp.array([0.0, 0.1]) * uk
            return xn, xn @ xn + 0.1 * uk ** 2
        return lax.scan(step, x0, u)[1].sum()
    return lax.fori_loop(0, 15, lambda i, u: jnp.clip(u - 0.2 * jax.grad(cost)(u), -1.0, 1.0), u0)


def _poles_dropped(x):
    u = x / _norms(x)[:, None]
    return (u[np.array([0, 2, 1, 3])], jnp.cumsum(_norms(x))[:4],
            jax.ops.segment_sum(u, jnp.array([0, 1, 0, 1, 5, 5]), num_segments=2))


_R = np.random.default_rng(2121)
_CONTROLS = {
    "gather_modes": (_gather_modes, (_R.normal(size=5),), 0, jax.jacfwd),
    "scatter_modes": (_scatter_modes, (_R.normal(size=5), _R.normal(size=4)), (0, 1), jax.jacfwd),
    "clamped_dynamic_slices": (_clamped_dynamic_slices, (_R.normal(size=(4, 5)), _R.normal(size=(2, 2))), (0, 1),
                               jax.jacfwd),
    "negative_interior_padding": (_negative_and_interior_padding, (_R.normal(size=(3, 4)),), 0, jax.jacfwd),
    "tied_scatter_segment_max": (_tied_scatter_and_segment_max, (np.array([0.0, 0.0, -1.0, 1.0, 1.0, 2.0]),), 0,
                                 jax.jacfwd),
    "custom_root": (_custom_root, (0.5 + _R.uniform(size=3),), 0, jax.jacfwd),
    "custom_linear_solve": (_custom_linear_solve, (_R.normal(size=(3, 3)), _R.normal(size=3)), (0, 1), jax.jacfwd),
    "deep_equilibrium_custom_vjp": (_deep_equilibrium, (0.3 * _R.normal(size=(3, 3)), _R.normal(size=(2, 3)),
                                                        _R.normal(size=(4, 2))), (0, 1, 2), jax.jacrev),
    "dict_in_namedtuple_out_with_int_leaf": (_spring_step, ({"pos": _R.normal(size=3), "vel": _R.normal(size=3)},
                                                             np.array(2.0)), (0, 1), jax.jacfwd),
    "value_iteration_max_in_fori": (_value_iteration, (np.array(0.9), np.linspace(0.2, 2.0, 7)), (0, 1), jax.jacfwd),
    "projected_gradient_grad_in_fori": (_projected_gradient, (_R.normal(size=5), np.array([1.0, -0.5])), (0, 1),
                                        jax.jacfwd),
    "poles_at_padding_dropped": (_poles_dropped, (_PADDED,), 0, jax.jacfwd),
}


@pytest.mark.parametrize("name", list(_CONTROLS))
def test_new_kinds_equal_jax_in_three_orders_under_jit(name):
    f, args, argnums, reference = _CONTROLS[name]
    with jax.enable_x64(True):
        args = jax.tree.map(jnp.asarray, args)

        @jax.jit
        def reference_and_orders(*xs):
            return reference(f, argnums=argnums)(*xs), [interpreter.jacobian(f, o, argnums=argnums)(*xs)
                                                        for o in ("forward", "reverse", "markowitz")]

        expected, actual = reference_and_orders(*args)
        for jac in actual:
            assert jax.tree.structure(jac) == jax.tree.structure(expected)
            for a, b in zip(jax.tree.leaves(jac), jax.tree.leaves(expected)):
                assert a.shape == b.shape
                np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                           rtol=1e-8, atol=1e-10)
