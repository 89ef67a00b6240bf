"""Dense vertices (equations without a structural rule: cholesky, lu, triangular_solve, a custom
linear solve, a custom JVP rule such as slogdet's): their partials come from JAX's derivative rule,
one seed per operand entry, and the rule's triangular solves with the factor are done by
substitution (`_jacobian._triangular_solve_by_substitution`) rather than one LAPACK trsm per
example with a set of right-hand sides per seed (10-1,000x slower under vmap on XLA:CPU)."""

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import interpreter
from alphagrad.interpreter import _jacobian



@pytest.fixture(autouse=True)
def _float64():
    # Within each test only: the suite's other files run in the same worker (pytest-xdist).
    with jax.enable_x64(True):
        yield

_RNG = np.random.default_rng(22)


def _spd(n):
    a = _RNG.normal(size=(n, n))
    return a @ a.T + n * np.eye(n)


def _cholesky_energy(a):
    return jnp.sum(jnp.linalg.cholesky(a) ** 2)


def _cholesky_factor(a):
    return jnp.linalg.cholesky(a)


def _solve(a, b):
    return jnp.linalg.solve(a, b)


def _triangular(a, b):
    return jax.scipy.linalg.solve_triangular(a, b, lower=True)


def _cho_solve(a, b):
    return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(a, lower=True), b)


def _slogdet(a):
    sign, logdet = jnp.linalg.slogdet(a)
    return logdet * sign


def _lu_logdet(a):
    lu, _ = jax.scipy.linalg.lu_factor(a)
    return jnp.sum(jnp.log(jnp.abs(jnp.diag(lu))))


_CASES = {
    "cholesky_energy": (_cholesky_energy, lambda n: (_spd(n),), 0),
    "cholesky_factor": (_cholesky_factor, lambda n: (_spd(n),), 0),
    "solve": (_solve, lambda n: (_spd(n) + _RNG.normal(size=(n, n)), _RNG.normal(size=n)), (0, 1)),
    "triangular": (_triangular, lambda n: (np.tril(_RNG.normal(size=(n, n))) + n * np.eye(n), _RNG.normal(size=n)), (0, 1)),
    "cho_solve": (_cho_solve, lambda n: (_spd(n), _RNG.normal(size=n)), (0, 1)),
    "slogdet": (_slogdet, lambda n: (_spd(n) + _RNG.normal(size=(n, n)),), 0),
    "lu_logdet": (_lu_logdet, lambda n: (_spd(n) + _RNG.normal(size=(n, n)),), 0),
}


@pytest.mark.parametrize(("m", "k"), [(1, 1), (3, 2), (3, 9), (6, 4), (6, 36)])
@pytest.mark.parametrize("flags", list(itertools.product([True, False], repeat=4)))
def test_substitution_solves_as_lax_does(m, k, flags):
    """Every layout of lax.linalg.triangular_solve, by substitution (few right-hand sides or a small
    order) and by the inverse (order >= _INVERSE_FROM with more right-hand sides than rows)."""
    left_side, lower, transpose_a, unit_diagonal = flags
    a = _RNG.normal(size=(2, m, m)) + 3 * np.eye(m)
    b = _RNG.normal(size=(2, m, k) if left_side else (2, k, m))
    expected = jax.lax.linalg.triangular_solve(a, b, left_side=left_side, lower=lower, transpose_a=transpose_a,
                                               unit_diagonal=unit_diagonal)
    got = _jacobian._triangular_solve_by_substitution(a, b, left_side=left_side, lower=lower,
                                                      transpose_a=transpose_a, conjugate_a=False,
                                                      unit_diagonal=unit_diagonal)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_substitution_solves_complex_conjugated():
    a = _RNG.normal(size=(3, 3)) + 1j * _RNG.normal(size=(3, 3)) + 3 * np.eye(3)
    b = _RNG.normal(size=(3, 2)) + 1j * _RNG.normal(size=(3, 2))
    for transpose_a in (True, False):
        expected = jax.lax.linalg.triangular_solve(a, b, left_side=True, lower=True, transpose_a=transpose_a,
                                                   conjugate_a=True)
        got = _jacobian._triangular_solve_by_substitution(a, b, left_side=True, lower=True, transpose_a=transpose_a,
                                                          conjugate_a=True, unit_diagonal=False)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [3, 6])
@pytest.mark.parametrize("name", sorted(_CASES))
def test_dense_linear_algebra_partials_are_exact(name, n):
    fn, make, argnums = _CASES[name]
    args = make(n)
    orders = ("forward", "reverse")
    # One program: jax.jacfwd's Jacobian (was op by op) and both orders' (was a compilation each).
    expected, jacobians = jax.jit(lambda *a: (jax.jacfwd(fn, argnums=argnums)(*a),
                                              [interpreter.jacobian(fn, order, argnums=argnums)(*a) for order in orders]))(*args)
    for order, got in zip(orders, jacobians):
        for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
            np.testing.assert_allclose(g, e, rtol=1e-8, atol=1e-10, err_msg=order)


def test_a_cholesky_that_fails_gives_nan_where_jax_does():
    a = -_spd(3)  # not positive definite: cholesky's factor is NaN
    got = interpreter.jacobian(_cholesky_factor, "reverse")(a)
    expected = jax.jacfwd(_cholesky_factor)(a)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))


def _trsm_calls(fn, args) -> int:
    text = fn.lower(*args).compile().as_text()
    return len(re.findall(r'custom_call_target="lapack_[sdcz]trsm', text))


@pytest.mark.parametrize("name", sorted(_CASES))
def test_dense_partials_call_no_trsm_beyond_the_function(name):
    """Under vmap, the Jacobian calls LAPACK's triangular solve no more often than the function
    itself: the derivative rules' solves with the factor, one per seed, are substitutions."""
    fn, make, argnums = _CASES[name]
    args = [np.broadcast_to(x, (4, *np.shape(x))) for x in make(4)]
    primal = _trsm_calls(jax.jit(jax.vmap(fn)), args)
    for order in ("forward", "reverse"):
        jacobian = jax.jit(jax.vmap(interpreter.jacobian(fn, order, argnums=argnums)))
        assert _trsm_calls(jacobian, args) <= primal, order


def _cond_then_where(x):
    # A pole inside a branch, guarded after the conditional (helper corpus25, session 25).
    y = jax.lax.cond(x[0] > 0, jnp.sqrt, lambda z: z, x)
    return jnp.where(x > 0, y, 0.0)


def _switch_then_where(x):
    y = jax.lax.switch(jnp.int32(x[0] > 0), [lambda z: z, jnp.sqrt], x)
    return jnp.where(x > 0, y, 0.0)


@pytest.mark.parametrize("f", [_cond_then_where, _switch_then_where], ids=["cond", "switch"])
def test_a_branch_with_a_pole_is_built_by_columns(f):
    # By VJP rows the branch's partial held 0 * inf = NaN beside each zero of x, which the where kept
    # (NaN where jax.jacfwd is 0); by JVP columns (`_jacobian._may_hold_a_pole`) it is jax.jacfwd's.
    x = jnp.array([0.3, 0.0, 0.5, 0.0])
    orders = ("forward", "reverse", "markowitz")
    expected, jacobians = jax.jit(lambda x: (jax.jacfwd(f)(x), [interpreter.jacobian(f, order)(x) for order in orders]))(x)
    assert np.isfinite(expected).all()
    for order, got in zip(orders, jacobians):
        np.testing.assert_allclose(got, expected, rtol=1e-12, err_msg=order)
