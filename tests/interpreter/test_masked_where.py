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

        @jax.jit  # one program: jax.jacfwd's Jacobian and every order's
        def all_orders(x):
            return jax.jacfwd(f)(x), [interpreter.jacobian(f, o)(x) for o in ("forward", "reverse", "markowitz")]

        expected, jacobians = all_orders(x)
        assert np.all(np.isfinite(expected))
        for jac in jacobians:
            np.testing.assert_allclose(jac, expected, rtol=1e-10, atol=1e-12)


_VALID = jnp.array([True, True, True, True, False, False])


def masked_columns_of_a_log(x):
    """A zero row's -inf log (infinite partial) broadcast along rows, then masked by columns: the NaN
    reaches the case from further up, not through a partial into it."""
    r = jnp.log(jnp.sum(x ** 2, 1))
    return jnp.where(_VALID[:, None], r[None, :] * jnp.ones((6, 1)), 0.0)


def batched_padded_attention(x):
    """Set attention over zero-padded sets (rank 3): padded keys masked by -1e9, the RMS over valid
    rows. jax.jacfwd is finite everywhere; the padded rows' norm has a pole."""
    k = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
    y = jax.nn.softmax(jnp.where(_VALID[None, None, :], jnp.einsum("bik,bjk->bij", k, k), -1e9), -1) @ x
    return jnp.sqrt(jnp.sum(jnp.where(_VALID[None, :, None], y ** 2, 0.0), 1) / 4)


_ROWS = np.random.default_rng(7).normal(size=(4, 3))


@pytest.mark.parametrize("f, x", [(masked_columns_of_a_log, np.concatenate([_ROWS, np.zeros((2, 3))])),
                                  (batched_padded_attention, np.stack([np.concatenate([_ROWS, np.zeros((2, 3))])] * 2))],
                         ids=["masked_columns_of_a_log", "batched_padded_attention"])
def test_a_selected_constant_stays_zero_after_a_pole_further_up(f, x):
    # The select's zeros are structural (its case partial's support): products keep them 0 whatever
    # the order, as jax.jacfwd drops the untaken tangent.
    orders = ("forward", "reverse", "markowitz")
    with jax.enable_x64(True):
        x = jnp.asarray(x)  # one program: jax.jacfwd's Jacobian and every order's
        expected, jacobians = jax.jit(lambda x: (jax.jacfwd(f)(x), [interpreter.jacobian(f, o)(x) for o in orders]))(x)
    expected = np.asarray(expected)
    finite = np.isfinite(expected)
    for order, actual in zip(orders, jacobians):
        actual = np.asarray(actual)
        assert not np.any(np.isnan(actual) & finite), order
        np.testing.assert_allclose(actual[finite], expected[finite], rtol=1e-10, atol=1e-12, err_msg=order)


def _sinkhorn_like(cost, a):
    def body(_, uv):
        u, v = uv
        u = jnp.log(a) - jax.nn.logsumexp(v[None, :] - cost, 1)  # logsumexp's where sits under stop_gradient
        v = -jax.nn.logsumexp(u[:, None] - cost, 0)
        return u, v

    u, v = jax.lax.fori_loop(0, 4, body, (jnp.zeros(cost.shape[0]), jnp.zeros(cost.shape[1])))
    return jnp.sum(u) + jnp.sum(v)


def _where_in_a_loop(x):
    return jax.lax.fori_loop(0, 2, lambda i, c: jnp.where(c > 0, jnp.sqrt(c), 0.0) + c, x).sum()


def test_a_select_under_stop_gradient_needs_no_run_time_check_of_rows():
    # Rows of a loop built past a select are checked at run time (and rebuilt by columns where not
    # finite, which under vmap computes both); a select whose value only reaches stop_gradient has no
    # derivative, so none is needed, while a live one keeps the check.
    from alphagrad.interpreter import _jacobian

    def loop_of(f, *args):
        return next(e for e in jax.make_jaxpr(f)(*args).jaxpr.eqns if e.primitive.name in ("scan", "while"))

    cost, a = jnp.arange(12.0).reshape(3, 4) / 7, jnp.full(3, 1 / 3)
    assert not _jacobian._holds_a_select(loop_of(_sinkhorn_like, cost, a))
    assert _jacobian._holds_a_select(loop_of(_where_in_a_loop, jnp.ones(3)))
    with jax.enable_x64(True):
        cost, a = jnp.asarray(np.asarray(cost), jnp.float64), jnp.asarray(np.asarray(a), jnp.float64)
        x = jnp.array([0.0, 1.0, 4.0])
        orders = ("forward", "reverse", "markowitz")

        @jax.jit  # one program: both functions' jax.jacfwd Jacobians and every order's
        def all_of_them(cost, a, x):
            return (jax.jacfwd(_sinkhorn_like, argnums=(0, 1))(cost, a),
                    [interpreter.jacobian(_sinkhorn_like, order, argnums=(0, 1))(cost, a) for order in orders],
                    jax.jacfwd(_where_in_a_loop)(x), [interpreter.jacobian(_where_in_a_loop, order)(x) for order in orders])

        sinkhorn_expected, sinkhorn, expected, looped = all_of_them(cost, a, x)
        expected = np.asarray(expected)
        for sinkhorn_got, actual in zip(sinkhorn, looped):
            for got, want in zip(sinkhorn_got, sinkhorn_expected):
                np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
            actual = np.asarray(actual)
            finite = np.isfinite(expected)
            assert not np.any(np.isnan(actual) & finite)
            np.testing.assert_allclose(actual[finite], expected[finite], rtol=1e-10)
