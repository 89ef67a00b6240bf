"""Open cases of helper corpus17's held-out rehearsal (session 17): NaN where jax.jacfwd is finite.

Each function has an infinite partial (a square root at 0: a zero norm, a self-distance) that a later
*selection* drops, so jax.jacfwd (which applies the selection to tangents that already hold the
infinity) is finite, while alphagrad multiplies the infinite partial by a zero of another partial
(0 * inf = NaN). They are strict expected failures: each flips when its class is fixed, and must then
be unmarked (all are fixed as of session 21: FIXED). Reproducers and diagnosis: /work/notes/corpus17_report.md.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import interpreter

_RNG = np.random.default_rng(17)
_W1 = _RNG.normal(size=(4, 3)) * 0.5
_W2 = _RNG.normal(size=(3, 2)) * 0.5
_POINTS = np.array([[0.3, -0.2, 1.0], [0.0, 0.0, 0.0], [1.0, 0.5, -0.5]])  # a zero-padded point


def _normalise(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def relu_after_sqrt(x):
    """jax.nn.relu's JVP rule selects the tangent (where(x > 0, g, 0)): a discard, as a select's."""
    return jax.nn.relu(-jnp.sqrt(x))


@jax.custom_jvp
def _scaled_relu(x, k):
    return jnp.maximum(x, 0.0) * k


@_scaled_relu.defjvp
def _scaled_relu_jvp(primals, tangents):
    (x, k), (t, _) = primals, tangents
    return _scaled_relu(x, k), jnp.where(x > 0, t * k, 0.0)


def scaled_relu_with_an_integer(x):
    """A user's selecting rule with an integer operand (its tangent is float0)."""
    return _scaled_relu(-jnp.sqrt(x), 3)


def relu_under_vmap(x):
    """The same rule batched by jax.vmap (its zero tangent a broadcast of a smaller constant)."""
    return jax.vmap(lambda row: jax.nn.relu(-jnp.sqrt(row)).sum())(x)


def pointnet_max(x):
    """Point features and their norm, a relu layer, max over points, a dense head; a zero-padded point."""
    f = jnp.concatenate([x, jnp.linalg.norm(x, axis=-1, keepdims=True)], -1)
    return jnp.max(jax.nn.relu(f @ _W1) + 1.0, axis=0) @ _W2


def top_k_then_dot(x):
    """top_k drops sqrt(0); reverse order: (dense row) x (transposed run-time map) x diag(inf)."""
    return jax.lax.top_k(jnp.sqrt(x), 2)[0] @ jnp.array([1.0, -1.0])


def cond_drops_entry(x):
    """The taken branch never reads entry 0; the cond's dense partial has a zero column there."""
    return jax.lax.cond(x[2] > 0, lambda v: v[1:3], lambda v: v[:2], jnp.sqrt(x)) @ jnp.array([1.0, -2.0])


FIXED = {
    "relu_after_sqrt": (relu_after_sqrt, np.array([0.0, 1.0, 4.0]), ("forward", "reverse")),
    "relu_under_vmap": (relu_under_vmap, np.array([[0.0, 1.0], [4.0, 0.0]]), ("reverse", "markowitz")),
    "pointnet_max": (pointnet_max, _POINTS, ("forward", "markowitz")),
    "scaled_relu_with_an_integer": (scaled_relu_with_an_integer, np.array([0.0, 1.0, 4.0]), ("reverse",)),
    # The cond's partials carry the taken branch's support, known at run time (session 19).
    "cond_drops_entry": (cond_drops_entry, np.array([0.0, 1.0, 2.0]), ("forward", "reverse", "markowitz")),
    # An index map at run-time indices carries its entries as a run-time support where a pole may
    # reach its operand (session 21).
    "top_k_then_dot": (top_k_then_dot, np.array([0.0, 1.0, 2.0]), ("forward", "reverse", "markowitz")),
}
CASES = {}  # the zero-norm token normalisation before an einsum across tokens is fixed: test_structural_zeros


def _assert_follows_jacfwd(f, x, orders):
    expected = np.asarray(jax.jacfwd(f)(x))
    finite = np.isfinite(expected)
    assert finite.any()
    for order in orders:
        got = np.asarray(interpreter.jacobian(f, order)(x))
        assert np.isfinite(got[finite]).all(), (order, np.argwhere(finite & ~np.isfinite(got))[:3])
        np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-8, atol=1e-10, err_msg=order)


_OPEN = pytest.mark.xfail(strict=True, raises=AssertionError,
                          reason="open: a selection known only at run time drops an infinite partial in "
                                 "reverse order (corpus17 report)")


@pytest.mark.parametrize("name", sorted(FIXED) + [pytest.param(name, marks=_OPEN) for name in sorted(CASES)])
def test_a_dropped_infinite_partial_leaves_the_jacobian_finite(name):
    # Fixed: custom rules that select their tangent (`_jacobian._rule_takes`: where the rule passes a
    # NaN tangent on, as a select's predicate). Open (CASES): selections known only at run time.
    f, x, orders = FIXED.get(name) or CASES[name]
    with jax.enable_x64(True):
        _assert_follows_jacfwd(f, jnp.asarray(x), orders)


# The zero-row normalisation on the tape (class 2b) is fixed: test_structural_zeros.


def test_the_same_functions_with_a_primal_select_follow_jacfwd():
    # The control: a select in the primal graph (jnp.where) is discarded as jax.jacfwd discards it.
    with jax.enable_x64(True):
        _assert_follows_jacfwd(lambda x: jnp.where(-jnp.sqrt(x) > 0, -jnp.sqrt(x), 0.0),
                               jnp.array([0.0, 1.0, 4.0]), ("forward", "reverse", "markowitz"))
