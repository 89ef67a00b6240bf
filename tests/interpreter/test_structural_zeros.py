"""Dense products keep their structural zeros: no NaN where jax.jacfwd is finite (issue 12).

Normalising rows by a clamped norm, ``x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True),
eps)``, at an all-zero row: sqrt's partial there is infinite. jax.jacfwd's NaN stays in that row's
own entries; another row's outputs never read it. A product of an index map (the norm's sum, a
broadcast) with a partial tied along rows comes out dense, and its zeros between rows, multiplied
by the infinite partial, were NaN in every row (reverse and Markowitz order; session 16). Such
products keep the support of such dense partials (`_structured._keeping_zeros`), and a product
of one with a partial that may be infinite multiplies the finite part and puts NaN back only
where the support meets the infinities (`_zeros_meeting_poles`, `_poles_kept`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import interpreter
from alphagrad.interpreter._structured import (
    INDEX_MAP, IndexMap, MultiplicationCounter, Partial, densify, multiply,
)


def normalise(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


FUNCTIONS = {
    "normalise_twice": lambda x: normalise(normalise(x)),
    "row_sums": lambda x: normalise(x).sum(-1),
    "row_sums_and_a_corner": lambda x: normalise(x).sum(-1) + x[0, 0],
    "cosine_of_reversed_rows": lambda x: (normalise(x) * normalise(x[::-1])).sum(-1),
}
ZERO_ROW = np.array([[0.0, 0.0, 0.0], [1.0, -1.0, 2.0], [0.5, 0.2, 0.1]])
# A batch of token vectors, token (0, 1) all zero; the similarity einsum contracts over the batch.
ZERO_TOKEN = np.array([[[1.0, 2.0], [0.0, 0.0]], [[0.5, -1.0], [1.0, 0.3]]])
FUNCTIONS["token_similarities"] = lambda x: jnp.einsum("btd,bsd->ts", normalise(x), normalise(x))


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_a_zero_row_leaves_the_other_rows_finite_in_every_order(name):
    with jax.enable_x64(True):
        f = FUNCTIONS[name]
        x = jnp.asarray(ZERO_TOKEN if name == "token_similarities" else ZERO_ROW)
        expected = np.asarray(jax.jacfwd(f)(x))
        assert np.isnan(expected).any()  # the zero row's own entries: jax.jacfwd's NaN
        for order in ("forward", "reverse", "markowitz"):
            got = np.asarray(interpreter.jacobian(f, order)(x))
            finite = np.isfinite(expected)
            assert np.isfinite(got[finite]).all(), (order, np.argwhere(finite & ~np.isfinite(got))[:3])
            np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-10, atol=1e-12)


def test_a_map_times_a_tied_partial_keeps_its_zeros_against_an_infinite_diagonal():
    # h = row sums of g, g[i, j] = a[i, j] * f[i]: (sum map) @ (rows tied) is dense [2, 2], zero off
    # the diagonal; times diag(inf, 1) the zero must stay zero.
    row_sum = Partial(INDEX_MAP, (2, 1), (2, 3), IndexMap(
        lambda t: t.sum(1, keepdims=True), lambda ct: jnp.broadcast_to(ct, (2, 3))))
    tied = Partial(2, (2, 3), (2, 1), jnp.arange(1.0, 7.0).reshape(2, 3, 1))

    def run(diagonal):
        counter = MultiplicationCounter()
        summed = multiply(row_sum, tied, 1, counter, jnp.float64)
        scaled = multiply(summed, Partial(6, (2, 1), (2, 1), diagonal), 1, counter, jnp.float64)
        return summed.support, densify(scaled, jnp.float64).reshape(2, 2), counter.total

    with jax.enable_x64(True):
        support, got, muls = jax.jit(run)(jnp.array([[np.inf], [1.0]]))
    np.testing.assert_array_equal(np.asarray(support).reshape(2, 2), np.eye(2))  # the map keeps rows apart
    np.testing.assert_array_equal(got[1], [0.0, 15.0])  # no NaN in the row that never reads inf
    assert np.isnan(got[0, 0]) and got[0, 1] == 0.0  # the pole's own entry: NaN, as jax.jacfwd's
    assert muls == 4  # a dense [2, 1] x [2, 1] block times a diagonal: still counted as planned
