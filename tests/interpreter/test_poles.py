"""Which values the interpreter proves away from zero (`_poles.away_from_zero_value`), so that the
partials dividing by them, or taking their log or square root, need no guard against 0 * inf."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import interpreter
from alphagrad.interpreter import _jacobian

_X = np.array([[0.3, -1.2, 2.0, 0.1], [4.0, 0.5, -0.7, 1.1], [0.2, 0.2, 0.2, 0.2]], np.float32)


def _proved_away(f, x) -> list[str]:
    """The primitives of the equations whose results were proved away from zero while tracing
    jacobian(f, "reverse") (a recording wrapper around the rule; no compilation)."""
    proved, rule = [], _jacobian.away_from_zero_value

    def recording(eqn, values, away, defined_by):
        held = rule(eqn, values, away, defined_by)
        if held:
            proved.append(eqn.primitive.name)
        return held

    _jacobian.away_from_zero_value = recording
    try:
        jax.make_jaxpr(interpreter.jacobian(f, "reverse"))(x)
    finally:
        _jacobian.away_from_zero_value = rule
    return proved


def _wrong_axis_shift(x):
    return jnp.sum(jnp.exp(x - jnp.max(x, axis=0, keepdims=True)), axis=1)


def _transposed_shift(x):  # x is square here: max over rows, broadcast along the other axis
    return jnp.sum(jnp.exp(x - jnp.max(x, axis=1)[None, :]), axis=1)


def _masked_softmax(x):
    return jax.nn.softmax(x, where=x > 0.0)


def _shifted_by_a_floor(x):  # max(1.0, max(x)): the largest entry's term may underflow
    return jnp.sum(jnp.exp(x - jnp.maximum(1.0, jnp.max(x, axis=1, keepdims=True))), axis=1)


@pytest.mark.parametrize("f", [jax.nn.softmax, jax.nn.log_softmax, lambda x: jax.nn.softmax(x, axis=0)],
                         ids=["softmax", "log_softmax", "softmax_axis0"])
def test_a_sum_of_exponentials_shifted_by_their_maximum_is_at_least_one(f):
    assert "reduce_sum" in _proved_away(f, _X)


@pytest.mark.parametrize("f", [_wrong_axis_shift, _masked_softmax, _shifted_by_a_floor,
                               lambda x: jax.nn.logsumexp(x, axis=1)],
                         ids=["other_axis", "masked", "floor", "logsumexp"])
def test_sums_that_may_vanish_are_not(f):
    # jax.nn.logsumexp shifts by the maximum only where it is finite (else by 0): a row of -inf
    # (a log(0) upstream) sums to exactly 0, whose log has an infinite partial.
    assert "reduce_sum" not in _proved_away(f, _X)


def test_a_maximum_broadcast_along_the_other_axis_is_not():
    assert "reduce_sum" not in _proved_away(_transposed_shift, _X[:, :3])


def test_a_variance_clamped_at_zero_plus_epsilon():
    def layer_norm(x):  # flax.linen.LayerNorm's statistics
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.maximum(0.0, jnp.mean(x * x, axis=-1, keepdims=True) - mean * mean)
        return (x - mean) * jax.lax.rsqrt(var + 1e-6)
    assert "add" in _proved_away(layer_norm, _X)
