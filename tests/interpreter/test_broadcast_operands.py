"""An operand broadcast against an elementwise operation's output has a tied partial, not a dense one.

``x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)`` at an all-zero row: the
divisor's partial was dense, and its structural zeros times the square root's infinite derivative
at the zero norm gave NaN in the Jacobian of every other row, where jax.jacfwd has 0 (found by the
session-16 held-out rehearsal: cosine similarities, normalised token embeddings). The partial of
an operand of normalised shape (m, 1) against an (m, n) output ties the rows (code 2), one of (1, n)
the columns (code 3); on arrays of rank 3 or more every axis the operand keeps is tied.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import graph, interpreter


def normalise_rows(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def normalise_columns(x):
    return x / jnp.maximum(jnp.sqrt(jnp.sum(x * x, axis=0, keepdims=True)), 1e-8)


ZERO_ROW = np.array([[0.0, 0.0, 0.0], [1.0, -1.0, 2.0], [0.3, 0.0, 0.1]])
ZERO_TOKENS = np.array([[[0.0, 0.0, 0.0], [1.0, -1.0, 2.0]], [[0.3, 0.1, 0.0], [0.0, 0.0, 0.0]]])


@pytest.mark.parametrize("order", ["forward", "reverse", "markowitz"])
@pytest.mark.parametrize("fn, x", [(normalise_rows, ZERO_ROW), (normalise_columns, ZERO_ROW.T),
                                   (normalise_rows, ZERO_TOKENS)], ids=["rows", "columns", "rank3"])
def test_a_zero_norm_leaves_the_other_rows_finite(fn, x, order):
    with jax.enable_x64(True):
        expected = np.asarray(jax.jacfwd(fn)(x))
        actual = np.asarray(interpreter.jacobian(fn, order)(x))
        finite = np.isfinite(expected)
        assert finite.sum() >= expected.size // 2
        np.testing.assert_allclose(actual[finite], expected[finite], rtol=1e-8, atol=1e-10)
        assert interpreter.count_muls(fn, order, x) == graph.cost(interpreter.graph_of(fn, x), order)


def test_broadcast_operands_tie_rows_and_columns():
    g = interpreter.graph_of(lambda a, b: jnp.sin(a * b), np.ones((3, 1)), np.ones((1, 4)), argnums=(0, 1))
    codes = sorted(e.code for e in g.edges if e.in_shape != e.out_shape)
    assert codes == [2, 3]
