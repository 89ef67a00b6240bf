"""A scan without a floating-point output that reads values known only at run time (jnp.searchsorted's
binary search) is kept whole, an equation without vertices, instead of unrolled into the primal
program (corpus22 finding 2: 40 table look-ups took 67 s to a first call); one that reads only
constants is still unrolled and folded."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import interpreter
from alphagrad.graph import _loops

TABLE = np.array([-1.5, -0.4, 0.1, 0.7, 1.9])


def _lookup(x):
    i = jnp.clip(jnp.searchsorted(TABLE, x, method="scan") - 1, 0, TABLE.size - 2)
    left, right = jnp.asarray(TABLE)[i], jnp.asarray(TABLE)[i + 1]
    return jnp.sin(x) * (x - left) / (right - left)


def _constant_count(x):
    n = jax.lax.fori_loop(0, 4, lambda k, n: n + k * 2, 1)  # 13, from constants alone
    return x * n


def _primitives(f, x):
    return [e.primitive.name for e in interpreter.graph_of(f, x).program.equations if e.primitive is not None]


@pytest.mark.parametrize("keep", [True, False])
def test_a_run_time_integer_search_is_kept_whole_and_exact(monkeypatch, keep):
    monkeypatch.setattr(_loops, "UNROLL_WITHOUT_DERIVATIVE", not keep)
    with jax.enable_x64(True):
        x = jnp.array([-1.0, 0.3, 1.2, 0.0])
        assert ("scan" in _primitives(_lookup, x)) == keep
        expected = jax.jacfwd(_lookup)(x)
        for order in ("forward", "reverse", "markowitz"):
            np.testing.assert_allclose(interpreter.jacobian(_lookup, order)(x), expected, rtol=1e-12)


def test_an_integer_loop_of_constants_is_still_folded():
    x = jnp.array([1.0, 2.0])
    assert "scan" not in _primitives(_constant_count, x) and "while" not in _primitives(_constant_count, x)
    np.testing.assert_allclose(interpreter.jacobian(_constant_count, "reverse")(x), jax.jacfwd(_constant_count)(x))
