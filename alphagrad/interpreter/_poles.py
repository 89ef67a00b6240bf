"""Which values and partials may be infinite where the function's arguments are finite (poles).

A product of a partial that is structurally zero at some entry (the value array of a dense code
whose entry no path reaches) with a partial that is infinite there gives ``0 * inf = NaN`` where
jax.jacfwd, which never forms that product, is finite. Both interpreters guard such products
(`_structured.multiply` on the straight-line path, `_tape_products.LaneSteps` on the tape) only
where one factor may be infinite: these rules say where, conservatively (a partial said finite
that is not costs a NaN where jax.jacfwd is finite, never a wrong finite number; a partial said
possibly infinite that is not costs only the guard).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad.graph import INDEX_MAP, VALUELESS, LeafRef, Operand, ValueRef

__all__ = ["FINITE_PARTIALS", "BOUNDED_VALUES", "LINEAR_IN_EACH", "away_from_zero_value", "bounded_operand",
           "bounded_value", "has_finite_partials", "reads_only_the_others"]

#: Primitives whose partials are finite wherever their operands are: sums, products, data
#: movement, selections and functions whose derivatives have no pole (`Partial.finite`: a dense
#: partial's structural zeros meet no infinity in a product with one, `_structured.multiply`;
#: the operands must be finite too: `bounded_operand`, as ``p * log(p)``'s partial is log(0) = -inf).
FINITE_PARTIALS = frozenset(
    "add add_any sub mul neg dot_general reduce_sum reduce_max reduce_min max min select_n clamp exp exp2 "
    "sin cos sinh cosh tanh logistic erf erfc atan asinh expm1 abs sign square convert_element_type copy "
    "copy_p broadcast_in_dim reshape transpose squeeze expand_dims slice dynamic_slice dynamic_update_slice "
    "concatenate stack tile pad gather scatter scatter-add rev cumsum conv_general_dilated real imag "
    "stop_gradient floor ceil round reduce_precision".split())

#: Primitives whose values are finite wherever their operands are (overflow aside): those of
#: `FINITE_PARTIALS` and square roots (their pole is in the derivative alone).
BOUNDED_VALUES = FINITE_PARTIALS | frozenset("sqrt cbrt integer_pow".split())


#: Primitives linear in each operand: the partial with respect to an operand read once is made of
#: the other operands (and constants) alone, so it is finite wherever they are, whatever that
#: operand holds (``targets * log_softmax(x)``'s partial in the log_softmax is ``targets``).
LINEAR_IN_EACH = frozenset(
    "add add_any sub neg mul div dot_general reduce_sum broadcast_in_dim reshape transpose squeeze "
    "expand_dims slice dynamic_slice dynamic_update_slice concatenate pad select_n convert_element_type "
    "copy copy_p rev tile cumsum conv_general_dilated real imag gather scatter-add stop_gradient".split())


def _is_float(value: Any) -> bool:
    dtype = value.dtype if hasattr(value, "dtype") else jnp.result_type(value)
    return jnp.issubdtype(dtype, jnp.floating)


def bounded_operand(op: Operand, value: Any, bounded: dict) -> bool:
    """Whether an operand is finite wherever the function's arguments are: an argument, a value that
    is not floating-point (a comparison, an index), a value computed by `bounded_value` from such
    values (`bounded`: node or `ValueRef` -> bool), or a constant without infinities (`value`: the
    operand's value; only its dtype is read for values computed at run time)."""
    if hasattr(value, "dtype") and not jnp.issubdtype(value.dtype, jnp.inexact):
        return True  # a comparison, an index: never infinite
    if op.node is not None:
        return bounded.get(op.node, True)  # nodes before every equation are the arguments
    if isinstance(op.value, LeafRef):
        return True
    if isinstance(op.value, ValueRef):
        return bounded.get(op.value, False)
    if isinstance(value, jax.core.Tracer) or not _is_float(value):
        return not isinstance(value, jax.core.Tracer)
    return bool(np.all(np.isfinite(np.asarray(value))))


def has_finite_partials(eqn, values: list[Any], code: int, away_from_zero: dict | None = None) -> bool:
    """Whether the partial (of structure `code`) of equation `eqn` is finite wherever its operands
    are: one that only moves data, one of `FINITE_PARTIALS`, of a power with a non-negative integer
    exponent, of a division by a constant without zeros (`values[1]`, read only when the divisor
    is a constant) or by a node bounded away from zero (`away_from_zero`: node -> bool,
    `away_from_zero_value`), of a log, square root, reciprocal square root or integer power of
    such a node (``log(sum(exp(x - max(x))))``, ``rsqrt(var + eps)``), or an output's copy."""
    if eqn.primitive is None or code in VALUELESS or code == INDEX_MAP:
        return True
    name = eqn.primitive.name
    if name in _POLES_AT_ZERO_ONLY and away_from_zero and away_from_zero.get(eqn.operands[0].node, False):
        return True
    if name == "div" and eqn.operands[1].node is not None and away_from_zero:
        return away_from_zero.get(eqn.operands[1].node, False)
    if name == "div" and eqn.operands[1].node is None:
        if isinstance(eqn.operands[1].value, (LeafRef, ValueRef)):
            return False  # a value computed at run time: it may be zero
        divisor = values[1]
        return not isinstance(divisor, jax.core.Tracer) and bool(np.all(np.asarray(divisor) != 0))
    return name in FINITE_PARTIALS or (name == "integer_pow" and eqn.params.get("y", -1) >= 0)


#: Primitives of one operand whose partial is infinite only where the operand is 0.
_POLES_AT_ZERO_ONLY = frozenset({"log", "sqrt", "rsqrt", "integer_pow"})


def _constant_without(op: Operand, value: Any, excluded: float) -> bool:
    """Whether `op` is a constant (known while tracing) holding neither NaN nor `excluded`."""
    if op.node is not None or isinstance(op.value, (LeafRef, ValueRef)) or isinstance(value, jax.core.Tracer):
        return False
    held = np.asarray(value)
    return not np.any(np.isnan(held)) and not np.any(held == excluded)


def _known(value: Any) -> np.ndarray | None:
    """A float value known while tracing, as NumPy; else None."""
    if isinstance(value, jax.core.Tracer) or not hasattr(value, "dtype") or not jnp.issubdtype(value.dtype, jnp.floating):
        return None
    return np.asarray(value)


def away_from_zero_value(eqn, values: list[Any], away: dict, defined_by: dict) -> bool:
    """Whether the output of `eqn` is at least a positive constant in magnitude wherever it is not
    NaN, so a division by it has no pole: ``jnp.maximum(norm, eps)`` with a constant eps > 0 (a
    minimum with a negative constant), the clamped norm of a normalisation; and a select whose every
    case is a constant without zeros, such a value, or the value its predicate bounds away from
    zero where it takes it (``jnp.where(jnp.abs(d) > eps, d, eps)``, the safe denominator of a
    limiter); and a sum of exponentials shifted by their maximum (`_shifted_exponential_sum`: the
    denominator of ``jax.nn.softmax``, the argument of ``jax.nn.logsumexp``'s log), at least 1.
    `away`: operand key -> bool for earlier values; `defined_by`: operand key -> its
    equation (keys: node, or the `ValueRef` of a value without a vertex)."""
    if eqn.primitive is None:
        return False
    name = eqn.primitive.name
    if name == "reduce_sum":
        return _shifted_exponential_sum(eqn, values, defined_by)
    if name in _MOVES_ONE and len(eqn.operands) == 1:  # a constant broadcast, converted, reshaped
        held = _known(values[0])
        return (held is not None and held.size and bool(np.all(held != 0))) or away.get(_key(eqn.operands[0]), False)
    if name == "add" and len(eqn.operands) == 2:  # eps + |x| (or x**2, sqrt, exp): at least eps
        pairs = list(zip(eqn.operands, values))
        for (_, c_value), (x_op, _) in (pairs, pairs[::-1]):
            held = _known(c_value)
            if held is not None and held.size and bool(np.all(held > 0)) and _nonnegative(defined_by.get(_key(x_op))):
                return True
        return False
    if name in ("max", "min"):
        for value in values:
            held = _known(value)
            if held is not None and held.size and bool(np.all(held > 0 if name == "max" else held < 0)):
                return True
        return False
    if name != "select_n":
        return False
    predicate = defined_by.get(_key(eqn.operands[0]))
    for case, (op, value) in enumerate(zip(eqn.operands[1:], values[1:])):
        held = _known(value)
        if (held is not None and held.size and bool(np.all(held != 0))) or away.get(_key(op), False):
            continue
        if not (len(eqn.operands) == 3 and predicate is not None and _bounds_where_taken(predicate, op, case, values, defined_by)):
            return False
    return True


#: Primitives that move or convert the entries of their one operand.
_MOVES_ONE = frozenset("broadcast_in_dim convert_element_type reshape squeeze expand_dims copy copy_p".split())


def _shifted_exponential_sum(eqn, values: list[Any], defined_by: dict) -> bool:
    """Whether a reduce_sum adds ``exp(x - m)`` over the axes along which ``m = max(x)`` (the same
    value x, m broadcast back along those axes, through data movement, ``stop_gradient`` and a
    maximum with -inf): each sum holds the term exp(0) = 1 of x's greatest entry and no negative
    one, so it is at least 1 wherever it is not NaN (an infinite or NaN entry of x). A sum whose
    terms are selected (``jax.nn.softmax(x, where=mask)``) is not one: its row may be empty."""
    exp = defined_by.get(_key(eqn.operands[0]))
    shifted = defined_by.get(_key(exp.operands[0])) if _named(exp, "exp") else None
    if not _named(shifted, "sub") or _key(shifted.operands[0]) is None:
        return False
    x, axes, shape = shifted.operands[0], tuple(eqn.params["axes"]), tuple(np.shape(values[0]))
    chain, source = [], defined_by.get(_key(shifted.operands[1]))
    while source is not None and not _named(source, "reduce_max"):
        if _named(source, *_MOVES_ONE, "stop_gradient") and len(source.operands) == 1:
            moved = source.operands[0]
        elif _named(source, "max") and len(source.operands) == 2 and any(map(_minus_infinity, source.operands)):
            moved = source.operands[1] if _minus_infinity(source.operands[0]) else source.operands[0]
        else:
            return False
        chain.append(source)
        source = defined_by.get(_key(moved))
    if (source is None or _key(source.operands[0]) != _key(x) or tuple(source.params["axes"]) != axes
            or tuple(source.aval.shape) != tuple(np.delete(shape, axes))):
        return False
    # The maximum must come back to the entries it was taken over: numbered, moved as the chain
    # moves it, each entry of x meets the number of its own slice.
    numbers = np.arange(math.prod(source.aval.shape)).reshape(source.aval.shape)
    moved_numbers = numbers
    for step in reversed(chain):
        moved_numbers = _move(step, moved_numbers)
        if moved_numbers is None:
            return False
    try:
        placed = np.broadcast_to(moved_numbers, shape)
    except ValueError:
        return False
    return bool(np.array_equal(placed, np.broadcast_to(np.expand_dims(numbers, axes), shape)))


def _minus_infinity(op: Operand) -> bool:
    """Whether `op` is a constant -inf (jnp.max's initial value: a maximum with it is the maximum itself)."""
    return _is_constant(op) and bool(np.all(np.asarray(op.value) == -np.inf))


def _named(eqn, *names: str) -> bool:
    return eqn is not None and eqn.primitive is not None and eqn.primitive.name in names


def _move(eqn, entries: np.ndarray) -> np.ndarray | None:
    """`entries` moved as `eqn` (of `_MOVES_ONE`, stop_gradient, a maximum with -inf) moves its
    operand, in NumPy; None where the move is not one of those."""
    name, params = eqn.primitive.name, eqn.params
    if name == "broadcast_in_dim":
        shape, dims = tuple(params["shape"]), tuple(params["broadcast_dimensions"])
        kept = [1] * len(shape)
        for d, size in zip(dims, entries.shape):
            kept[d] = size
        return np.broadcast_to(entries.reshape(kept), shape)
    if name == "reshape":
        return None if params.get("dimensions") is not None else entries.reshape(params["new_sizes"])
    if name == "squeeze":
        return np.squeeze(entries, tuple(params["dimensions"]))
    if name == "expand_dims":
        return np.expand_dims(entries, tuple(params["dimensions"]))
    return entries  # convert_element_type, copy, stop_gradient, the maximum with -inf


def _nonnegative(eqn) -> bool:
    """Whether the equation's output is never negative: abs, sqrt, exp, an even integer power, a
    maximum with a constant at least 0 (flax's ``jnp.maximum(0.0, mean2 - mean ** 2)``)."""
    if eqn is None or eqn.primitive is None:
        return False
    name = eqn.primitive.name
    if name == "max":
        return any(_is_constant(op) and bool(np.all(np.asarray(op.value) >= 0)) for op in eqn.operands)
    return name in ("abs", "sqrt", "exp") or (name == "integer_pow" and eqn.params.get("y", 1) % 2 == 0)


def _key(op: Operand) -> Any:
    """The key of a traced operand in `away_from_zero_value`'s dicts (a node, a `ValueRef`); None for a
    constant or an argument leaf."""
    if op.node is not None:
        return op.node
    return op.value if isinstance(op.value, ValueRef) else None


def _bounds_where_taken(predicate, case: Operand, which: int, values, defined_by: dict) -> bool:
    """Whether a boolean select's `predicate` equation says its case `which` (0: taken where False,
    1: where True) is at least a positive constant in magnitude where taken: ``|case| > c`` or
    ``case > c`` with a constant c > 0 for the case taken where True, ``|case| < c`` (or <=) for the
    one taken where False (and mirrored comparisons)."""
    if predicate.primitive is None or len(predicate.operands) != 2:
        return False
    name = predicate.primitive.name
    flipped = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le"}
    if name not in flipped:
        return False
    (a, b) = predicate.operands
    if _key(a) is not None and _is_constant(b):
        subject, bound, relation = a, b, name
    elif _is_constant(a):
        subject, bound, relation = b, a, flipped[name]
    else:
        return False
    held = np.asarray(bound.value)
    if not (held.size and bool(np.all(held > 0))):
        return False
    if relation in ("gt", "ge") and which != 1 or relation in ("lt", "le") and which != 0:
        return False
    if _key(subject) == _key(case) and _key(case) is not None:
        return relation in ("gt", "ge")  # case > c > 0 where taken (not |case| < c)
    source = defined_by.get(_key(subject))
    return (source is not None and source.primitive is not None and source.primitive.name == "abs"
            and _key(source.operands[0]) == _key(case))


def _is_constant(op: Operand) -> bool:
    """Whether `op` is a float constant written in the program (a literal)."""
    return (op.node is None and not isinstance(op.value, (LeafRef, ValueRef))
            and _known(op.value) is not None)


def bounded_value(eqn, values: list[Any], operands_bounded: list[bool], away_from_zero: dict | None = None) -> bool:
    """Whether the outputs of `eqn` are finite wherever the function's arguments are, given which
    of its operands are (`bounded_operand`): a primitive of `BOUNDED_VALUES` of bounded operands,
    a division of a bounded numerator by a constant without zeros or by a node bounded away from
    zero (`away_from_zero`: node -> bool, `away_from_zero_value`), or a maximum (minimum) of
    bounded operands and constants without +inf (-inf) or NaN, at least one operand bounded
    (``jax.nn.log_softmax``'s ``max(-inf, reduce_max(x))``)."""
    if eqn.primitive is None:
        return all(operands_bounded)
    name = eqn.primitive.name
    if name == "div" and has_finite_partials(eqn, values, 1, away_from_zero):  # a divisor without zeros
        return operands_bounded[0]
    if name in ("max", "min"):
        excluded = np.inf if name == "max" else -np.inf
        return any(operands_bounded) and all(
            ok or _constant_without(op, value, excluded) for op, value, ok in zip(eqn.operands, values, operands_bounded))
    return all(operands_bounded) and name in BOUNDED_VALUES


def reads_only_the_others(eqn, positions: list[int], operands_bounded: list[bool]) -> bool:
    """Whether the partial of `eqn` with respect to its operand at `positions` (read once) is made of
    other operands that are all bounded (`LINEAR_IN_EACH`)."""
    return (eqn.primitive is not None and eqn.primitive.name in LINEAR_IN_EACH and len(positions) == 1
            and all(ok for i, ok in enumerate(operands_bounded) if i != positions[0]))
