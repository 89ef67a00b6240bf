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


def _traced_recording(name: str, record, f, x) -> None:
    """Traces jacobian(f, "reverse") (no compilation) with `_jacobian`'s rule `name` wrapped:
    record(eqn, values, held, *rest) sees each answer."""
    rule = getattr(_jacobian, name)

    def recording(eqn, values, *rest):
        held = rule(eqn, values, *rest)
        record(eqn, values, held, *rest)
        return held

    setattr(_jacobian, name, recording)
    try:
        jax.make_jaxpr(interpreter.jacobian(f, "reverse"))(x)
    finally:
        setattr(_jacobian, name, rule)


def _proved_away(f, x) -> list[str]:
    """The primitives of the equations whose results were proved away from zero."""
    proved = []

    def record(eqn, values, held, *_):
        if held:
            proved.append(eqn.primitive.name)

    _traced_recording("away_from_zero_value", record, f, x)
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


# --- custom_jvp_call and call bodies (`_poles.CALL_BODIES`) ------------------------------------

_special = jax.scipy.special


def _custom_jvp_classes(f, x) -> list[tuple[bool, bool]]:
    """(outputs finite, partials finite) wherever the operands are, of each custom_jvp_call."""
    classes = []

    def record(eqn, values, held, operands_bounded, away=None, defined_by=None):
        if eqn.primitive is not None and eqn.primitive.name == "custom_jvp_call":
            classes.append((held, _jacobian.has_finite_partials(eqn, values, 1, away)))

    _traced_recording("bounded_value", record, f, x)
    return classes


_FINITE_RULES = {
    "softplus": jax.nn.softplus, "log_sigmoid": jax.nn.log_sigmoid, "mish": jax.nn.mish,
    "logaddexp": lambda x: jnp.logaddexp(x, x[::-1]), "logaddexp2": lambda x: jnp.logaddexp2(x, 1.0),
    "relu": jax.nn.relu, "relu6": jax.nn.relu6, "hard_swish": jax.nn.hard_swish,
}


@pytest.mark.parametrize("name", sorted(_FINITE_RULES))
def test_a_custom_jvp_whose_rule_has_finite_tangents_has_finite_partials(name):
    # logaddexp's rule: t * exp(x - logaddexp(x, y)), its value max(x, y) + log1p(exp(-|x - y|)).
    classes = _custom_jvp_classes(_FINITE_RULES[name], _X[0])
    assert classes and all(c == (True, True) for c in classes)


@pytest.mark.parametrize("f", [lambda x: _special.xlogy(x, x), lambda x: _special.xlog1py(x, x), _special.entr,
                               _special.logit, lambda x: jax.nn.softplus(jnp.log(jnp.abs(x)))],
                         ids=["xlogy", "xlog1py", "entr", "logit", "softplus_of_log"])
def test_a_custom_jvp_whose_rule_may_be_infinite_stays_a_pole(f):
    # t * log(y), t * log1p(y), -t * (1 + log x), t / (x * (1 - x)); softplus of log(0) = -inf
    # has finite partials, but its operand is not finite.
    classes = _custom_jvp_classes(f, _X[0])
    assert classes and not any(value and partial for value, partial in classes)


def _exact(f, *args):
    with jax.enable_x64(True):
        args = [jnp.asarray(a, jnp.float64) for a in args]
        argnums = tuple(range(len(args)))
        expected = [np.asarray(b) for b in jax.jit(jax.jacfwd(f, argnums=argnums))(*args)]
        for order in ("forward", "reverse", "markowitz"):
            actual = [np.asarray(b) for b in interpreter.jacobian(f, order, argnums=argnums)(*args)]
            for a, e in zip(actual, expected):
                finite = np.isfinite(e)
                assert finite.any()
                np.testing.assert_allclose(a[finite], e[finite], rtol=1e-8, atol=1e-8, err_msg=order)


def test_finite_custom_rules_are_exact_at_extreme_inputs():
    def f(x):
        return jax.nn.softplus(x) * x[::-1] + jnp.logaddexp(x, -x) + jax.nn.silu(x) + jnp.logaddexp(x, -jnp.inf)
    _exact(f, np.array([-np.inf, -1e3, -30.0, -1.0, 0.0, 0.5, 40.0, 1e3]))


def test_poles_in_or_before_custom_rules_stay_guarded():
    # log(0) in xlogy's rule and log1p(-1) in xlog1py's, selected away; sqrt's pole at 0 before
    # relu (whose rule selects) and softplus (selected away).
    def f(x):
        return (jnp.where(x > 0, _special.xlogy(x, x), 0.0) + jnp.where(x > -1, _special.xlog1py(x, x), 0.0)
                + jax.nn.relu(jnp.sqrt(jnp.abs(x))) + jnp.where(x > 0, jax.nn.softplus(jnp.sqrt(x)), 0.0))
    _exact(f, np.array([0.0, 1e-300, -1.0, 4.0]))


def test_a_root_of_a_negative_and_a_negative_power_are_not_bounded():
    # sqrt(-1) is NaN, and so is exp's partial after it; x ** -2 is infinite at 0, and so is the
    # product's partial in w: the selects' zeros there must be guarded (jax.jacfwd's selects drop
    # those tangents).
    def f(x, w):
        return (jnp.where(x > 0, jnp.exp(jnp.sqrt(x)), 0.0) + jnp.where(x > 0, x ** -2 * w, 0.0)
                + jnp.where(x > 0, (x ** -2) @ w, 0.0))
    _exact(f, np.array([0.0, -1.0, 2.0]), np.array([1.0, 2.0, 3.0]))


def _root_partials(f, x) -> list[bool]:
    """Whether the partial of each square root or reciprocal square root is finite."""
    finite = []

    def record(eqn, values, held, *_):
        if eqn.primitive is not None and eqn.primitive.name in ("sqrt", "rsqrt"):
            finite.append(held)

    _traced_recording("has_finite_partials", record, f, x)
    return finite


def test_a_root_away_from_zero_has_a_finite_partial_only_if_never_negative():
    def layer_norm(x):  # flax.linen.LayerNorm's statistics
        mean = jnp.mean(x)
        return (x - mean) * jax.lax.rsqrt(jnp.maximum(0.0, jnp.mean(x * x) - mean * mean) + 1e-6)

    def clamped_norm(x):
        return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x), 1e-12))

    def safe_root(x):  # sqrt(-1) at x = -1: a NaN partial, which the select drops in jax.jacfwd
        return jnp.where(x > 0, jnp.sqrt(jnp.where(jnp.abs(x) > 0.1, x, 0.1)), 0.0)

    assert _root_partials(layer_norm, _X[0]) == [True]
    assert _root_partials(clamped_norm, _X[0]) == [True]
    assert _root_partials(safe_root, _X[0]) == [False]


def _root_values(f, x) -> list[bool]:
    """Whether the value of each square root is finite wherever the arguments are."""
    finite = []

    def record(eqn, values, held, *_):
        if eqn.primitive is not None and eqn.primitive.name == "sqrt":
            finite.append(held)

    _traced_recording("bounded_value", record, f, x)
    return finite


def test_a_root_of_a_gather_is_finite_only_if_what_it_fills_is_not_negative():
    idx = jnp.array([0, 9])  # 9 is out of bounds: filled
    assert _root_values(lambda x: jnp.sqrt(jnp.take(x * x, idx, mode="fill", fill_value=0.0)), _X[0]) == [True]
    assert _root_values(lambda x: jnp.sqrt(jnp.take(x * x, idx, mode="fill", fill_value=-1.0)), _X[0]) == [False]
    assert _root_values(lambda x: jnp.sqrt(x), _X[0]) == [False]


def _divisions_and_roots(f, x) -> list[tuple[str, bool]]:
    """Whether the partial of each division, square root or reciprocal square root is finite."""
    finite = []

    def record(eqn, values, held, *_):
        if eqn.primitive is not None and eqn.primitive.name in ("div", "sqrt", "rsqrt"):
            finite.append((eqn.primitive.name, held))

    _traced_recording("has_finite_partials", record, f, x)
    return finite


def test_a_layer_norm_by_jnp_var_has_no_pole():
    # jnp.var divides by n - ddof, a vertex computed from constants, and selects NaN where it is not
    # positive: folded while tracing (`_jacobian._folded_values`, `_poles.fold_constants`), the select
    # takes the variance alone; var + eps is then away from zero and so is its root (session 25: the
    # guards had made the reverse order 2.3x slower at batch 256).
    def by_var(x):
        centred = x - jnp.mean(x, -1, keepdims=True)
        return centred / jnp.sqrt(jnp.var(x, -1, keepdims=True) + 1e-5)

    def by_mean_of_squares(x):
        centred = x - jnp.mean(x, -1, keepdims=True)
        return centred * jax.lax.rsqrt(jnp.mean(centred ** 2, -1, keepdims=True) + 1e-5)

    def by_std(x):  # no eps: a constant row divides by zero, a true pole
        return (x - jnp.mean(x, -1, keepdims=True)) / jnp.std(x, -1, keepdims=True, ddof=1)

    assert all(held for _, held in _divisions_and_roots(by_var, _X))
    assert all(held for _, held in _divisions_and_roots(by_mean_of_squares, _X))
    assert not all(held for _, held in _divisions_and_roots(by_std, _X))
    _exact(by_var, np.array([0.5, 0.5, 0.5, 0.5]))  # a constant row: the variance is 0, eps keeps it finite
