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
from jax.extend.core import Literal, Var

from alphagrad.graph import INDEX_MAP, VALUELESS, LeafRef, Operand, ValueRef

__all__ = ["FINITE_PARTIALS", "BOUNDED_VALUES", "LINEAR_IN_EACH", "CALL_BODIES", "SIGNED_POLES",
           "away_from_zero_value", "bounded_operand", "bounded_value", "computed_from_constants", "fold_constants",
           "has_finite_partials", "reads_only_the_others", "tested_arguments", "NO_POLE", "POLE_ENTRYWISE",
           "POLE_SPREAD", "pole_passes"]

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
        return bounded.get(op.value, True)  # an argument, unless tested for NaN (`tested_arguments`)
    if isinstance(op.value, ValueRef):
        return bounded.get(op.value, False)
    if isinstance(value, jax.core.Tracer) or not _is_float(value):
        return not isinstance(value, jax.core.Tracer)
    return bool(np.all(np.isfinite(np.asarray(value))))


def has_finite_partials(eqn, values: list[Any], code: int, away_from_zero: dict | None = None,
                        defined_by: dict | None = None) -> bool:
    """Whether the partial (of structure `code`) of equation `eqn` is finite wherever its operands
    are: one that only moves data, one of `FINITE_PARTIALS`, of a power with a non-negative integer
    exponent, of a division by a constant without zeros (`values[1]`, read only when the divisor
    is a constant) or by a node bounded away from zero (`away_from_zero`: node -> bool,
    `away_from_zero_value`), of a log, square root, reciprocal square root or integer power of
    such a node (``log(sum(exp(x - max(x))))``, ``rsqrt(var + eps)``), a root's only where that
    node is never negative too (`_never_negative`, `defined_by`: operand key -> its equation; the
    root's partial at ``jnp.where(jnp.abs(d) > eps, d, eps)`` = -1 is NaN), a custom_jvp_call's
    where its rule's tangents are finite (`CALL_BODIES`), or an output's copy."""
    if eqn.primitive is None or code in VALUELESS or code == INDEX_MAP:
        return True
    name = eqn.primitive.name
    if name == "custom_jvp_call" and CALL_BODIES:
        return _rule_has_finite_partials(eqn.params, len(eqn.operands))
    if name in _POLES_AT_ZERO_ONLY and away_from_zero and away_from_zero.get(eqn.operands[0].node, False):
        return (name not in _ROOTS or not SIGNED_POLES
                or _never_negative(eqn.operands[0], values[0], defined_by or {}))
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
#: ... of which those whose partial is NaN where the operand is negative.
_ROOTS = frozenset({"sqrt", "rsqrt"})


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
    if name == "add" and len(eqn.operands) == 2:  # eps + |x| (or x**2, a variance, sqrt, exp): at least eps
        pairs = list(zip(eqn.operands, values))
        for (_, c_value), (x_op, x_value) in (pairs, pairs[::-1]):
            held = _known(c_value)
            if held is not None and held.size and bool(np.all(held > 0)) and _never_negative(x_op, x_value, defined_by):
                return True
        return False
    if name == "sqrt":  # the root of a value at least eps > 0 is at least sqrt(eps)
        return away.get(_key(eqn.operands[0]), False) and _never_negative(eqn.operands[0], values[0], defined_by)
    if name in ("max", "min"):
        for value in values:
            held = _known(value)
            if held is not None and held.size and bool(np.all(held > 0 if name == "max" else held < 0)):
                return True
        return False
    if name != "select_n":
        return False
    predicate = defined_by.get(_key(eqn.operands[0]))
    taken = _taken_cases(eqn)
    for case, (op, value) in enumerate(zip(eqn.operands[1:], values[1:])):
        if taken is not None and case not in taken:
            continue  # a case the constant predicate never takes
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
    # (the shape from the exp's equation: the tape passes no value for an operand computed at run time)
    x, axes, shape = shifted.operands[0], tuple(eqn.params["axes"]), tuple(exp.aval.shape)
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


#: Primitives of one operand whose entries are some of their operand's entries (moved, converted, kept).
_KEEPS_SIGN = _MOVES_ONE | frozenset(
    "transpose slice dynamic_slice rev reduce_max reduce_min stop_gradient reduce_precision".split())  # not gather


def _fills_at_least(params, bound: float) -> bool:
    """Whether a gather's entries out of bounds (if it fills them) are NaN (no `fill_value`: JAX's
    default for floating-point values) or at least `bound`."""
    fill = params.get("fill_value")
    return fill is None or (not isinstance(fill, jax.core.Tracer) and bool(np.all(np.asarray(fill) >= bound)))


def _never_negative(op: Operand, value: Any, defined_by: dict, depth: int = 0) -> bool:
    """Whether operand `op` is never negative where it is not NaN: a constant without negative
    entries, or the value of `_nonnegative`'s equations, a square ``x * x``, a sum, product,
    maximum or minimum of such values, a division of one by another, a select of them, their
    entries moved or reduced by sum or maximum (``sqrt(sum(x ** 2))`` of jnp.linalg.norm, the
    variance ``mean((x - m) ** 2)`` of jnp.std)."""
    held = _known(value) if op.node is None and not isinstance(op.value, (LeafRef, ValueRef)) else None
    if held is not None:
        return bool(np.all(held >= 0))
    eqn = defined_by.get(_key(op)) if _key(op) is not None else None
    if eqn is None or eqn.primitive is None or depth > 32:
        return False
    if _nonnegative(eqn):
        return True
    name, ops = eqn.primitive.name, eqn.operands
    below = lambda k: _never_negative(ops[k], ops[k].value, defined_by, depth + 1)  # noqa: E731
    if name == "mul" and len(ops) == 2 and _key(ops[0]) is not None and _key(ops[0]) == _key(ops[1]):
        return True
    if name in ("add", "mul", "div", "min", "reduce_sum", "cumsum", "concatenate", "pad"):
        return all(below(k) for k in range(len(ops)))
    if name in _KEEPS_SIGN or (name == "gather" and _fills_at_least(eqn.params, 0.0)):
        return below(0)  # the operand (not the indices)
    if name == "max":
        return any(below(k) for k in range(len(ops)))
    if name == "select_n":
        taken = _taken_cases(eqn)
        return all(below(1 + case) for case in (taken if taken is not None else range(len(ops) - 1)))
    return name == "square"


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


def bounded_value(eqn, values: list[Any], operands_bounded: list[bool], away_from_zero: dict | None = None,
                  defined_by: dict | None = None) -> bool:
    """Whether the outputs of `eqn` are finite wherever the function's arguments are, given which
    of its operands are (`bounded_operand`): a primitive of `BOUNDED_VALUES` of bounded operands,
    a division of a bounded numerator by a constant without zeros or by a node bounded away from
    zero (`away_from_zero`: node -> bool, `away_from_zero_value`), or a maximum (minimum) of
    bounded operands and constants without +inf (-inf) or NaN, at least one operand bounded
    (``jax.nn.log_softmax``'s ``max(-inf, reduce_max(x))``); a custom_jvp_call or call whose body
    is (`CALL_BODIES`). A square root only of a value never negative (`_never_negative`, through
    `defined_by`: operand key -> its equation): sqrt(-1) is NaN, and so are the partials after it
    (``exp``'s), which a select dropping that entry would meet (``where(x > 0, exp(sqrt(x)), 0)``
    at x = -1: NaN where jax.jacfwd is 0); a negative integer power only of a value away from zero."""
    if eqn.primitive is None:
        return all(operands_bounded)
    name = eqn.primitive.name
    if name == "sqrt" and SIGNED_POLES:
        return operands_bounded[0] and _never_negative(eqn.operands[0], values[0], defined_by or {})
    if name == "select_n" and (taken := _taken_cases(eqn)) is not None:
        return all(operands_bounded[1 + case] for case in taken)
    if name in _BODIES and CALL_BODIES:
        body = _body_of(eqn.params, name)
        return body is not None and all(bound for bound, _ in _walk(body, [(ok, None) for ok in operands_bounded]))
    if name == "integer_pow" and eqn.params.get("y", 1) < 0 and SIGNED_POLES:  # 1 / x**2: infinite at 0
        return (operands_bounded[0] and away_from_zero is not None and eqn.operands[0].node is not None
                and away_from_zero.get(eqn.operands[0].node, False))
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


#: Whether `custom_jvp_call` and call equations (pjit, closed_call, ...) are judged by walking their
#: bodies (`_walk`): a custom_jvp_call has finite partials where its JVP rule's tangents are finite
#: for finite primals and tangents, and finite outputs where its primal body has. False judges them
#: as before (possibly infinite partials and outputs): for A/B measurements.
CALL_BODIES = True

#: Whether a square root's value counts as finite only where its operand is never negative, and
#: a negative integer power's only where its operand is away from zero (`bounded_value`), and a
#: root's partial only where its operand is never negative as well as away from zero. False
#: judges them as before (finite wherever their operands are): for A/B measurements.
SIGNED_POLES = True

#: Equations with a body, and the parameter holding it (a `ClosedJaxpr`, or a `Jaxpr` without consts).
_BODIES = {"custom_jvp_call": "call_jaxpr", "pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr",
           "core_call": "call_jaxpr", "remat": "jaxpr", "remat2": "jaxpr", "checkpoint": "jaxpr"}

#: Primitives of one operand that keep a lower bound on their operand's values (data movement, the
#: greatest or least of its entries).
_KEEPS_LOWER = frozenset(
    "broadcast_in_dim reshape squeeze expand_dims transpose convert_element_type copy copy_p slice dynamic_slice "
    "rev reduce_max reduce_min stop_gradient reduce_precision".split())  # not gather: it may fill
#: Primitives whose values are never negative (where they are not NaN).
_NONNEGATIVE = frozenset("exp exp2 abs sqrt logistic".split())


def _body_of(params, name: str):
    """The body of a call equation as (jaxpr, consts), or None."""
    body = params.get(_BODIES[name])
    if body is None:
        return None
    return (body.jaxpr, list(body.consts)) if hasattr(body, "consts") else (body, [])


def _rule_has_finite_partials(params, num_operands: int) -> bool:
    """Whether a `custom_jvp_call`'s partials are finite wherever its operands are: its JVP rule
    (JAX's ``jvp_jaxpr_fun``, traced with every tangent present: primals, then tangents, in; primal
    outputs, then tangent outputs, out) gives finite tangents for finite primals and tangents
    (`_walk`). The partials are the rule's tangents for unit tangents, so then they are finite:
    ``jax.nn.softplus``'s (``t * exp(x - softplus(x))``), ``jax.nn.relu``'s (a select of t and 0)
    are; ``xlogy``'s (``t * log(y)``), ``logit``'s (a division by ``x * (1 - x)``) are not. A rule
    over consts (closed-over tracers) or one that cannot be traced here counts as possibly infinite."""
    if params.get("num_consts", 0) or params.get("jvp_jaxpr_fun") is None:
        return False
    try:
        jaxpr, consts, _ = params["jvp_jaxpr_fun"].call_wrapped(*([False] * num_operands))
    except Exception:  # noqa: BLE001 - JAX's internals: possibly infinite is always safe
        return False
    if len(jaxpr.invars) != 2 * num_operands:
        return False
    outs = _walk((jaxpr, list(consts)), [(True, None)] * (2 * num_operands))
    return all(bound for bound, _ in outs[len(outs) - len(outs) // 2:])


def _walk(body, ins: list[tuple[bool, float | None]], depth: int = 0) -> list[tuple[bool, float | None]]:
    """(bounded, lower) of each output of `body` ((jaxpr, consts)) given those of its inputs:
    bounded, finite wherever the function's arguments are (the rules of `bounded_value`, overflow
    aside, through nested calls and custom_jvp_calls' primal bodies); lower, a number the values are
    at least wherever they are not NaN, or None. A log, log1p, reciprocal square root, negative
    integer power or division is bounded only where its operand's lower bound keeps it off its pole
    (``log1p(exp(-|d|))`` of jnp.logaddexp). Unknown primitives (loops, conditionals, linear
    algebra) are unbounded."""
    jaxpr, consts = body
    env: dict[Any, tuple[bool, float | None]] = {}
    known: dict[Any, np.ndarray] = {}
    for var, value in zip(jaxpr.constvars, consts):
        known[var] = value
    for var, state in zip(jaxpr.invars, ins):
        env[var] = state

    def constant(atom) -> np.ndarray | None:  # a literal's or a const's value; None for a variable
        value = atom.val if isinstance(atom, Literal) else known.get(atom)
        return None if value is None or isinstance(value, jax.core.Tracer) else np.asarray(value)

    def read(atom) -> tuple[bool, float | None]:
        held = constant(atom)
        if held is None:
            return env.get(atom, (False, None)) if isinstance(atom, Var) and atom not in known else (False, None)
        if not (np.issubdtype(held.dtype, np.floating) or np.issubdtype(held.dtype, np.integer)):
            return True, None
        finite = bool(np.all(np.isfinite(held)))
        return finite, (float(np.min(held)) if held.size and finite else None)

    for eqn in jaxpr.eqns:
        states = [read(v) for v in eqn.invars]
        outs = _equation(eqn, states, [constant(v) for v in eqn.invars], depth)
        for var, state in zip(eqn.outvars, outs):
            aval = getattr(var, "aval", None)
            if aval is not None and not jnp.issubdtype(getattr(aval, "dtype", np.float32), jnp.inexact):
                state = (True, None)  # comparisons, indices, float0 tangents: never infinite
            env[var] = state
    return [read(v) for v in jaxpr.outvars]


def _equation(eqn, states, constants, depth: int) -> list[tuple[bool, float | None]]:
    """`_walk`'s rule for one equation of a body: (bounded, lower) of each output."""
    name = eqn.primitive.name
    n_out = len(eqn.outvars)
    unknown = [(False, None)] * n_out
    bounded = [b for b, _ in states]
    lower = [lo for _, lo in states]
    if name in _BODIES:
        body = _body_of(eqn.params, name)
        return unknown if body is None or depth > 8 else _walk(body, states, depth + 1)
    if n_out != 1:
        return unknown
    positive = lambda k: lower[k] is not None and lower[k] > 0  # noqa: E731
    if name == "integer_pow":
        y = eqn.params.get("y", 1)
        ok = bounded[0] and (y >= 0 or positive(0))
        # x ** y of x >= lower > 0 is at least lower ** y for y > 0 (increasing), above 0 for y < 0.
        low = 1.0 if y == 0 else 0.0 if y % 2 == 0 else (lower[0] ** y if y > 0 else 0.0) if positive(0) else None
        return [(ok, low)]
    if name == "div":
        divisor = constants[1]
        nonzero = positive(1) or (divisor is not None and divisor.size > 0 and bool(np.all(divisor != 0)))
        low = lower[0] / constants[1].max() if (divisor is not None and nonzero and lower[0] is not None
                                                and lower[0] >= 0 and bool(np.all(divisor > 0))) else None
        return [(bounded[0] and nonzero, low)]
    if name in ("log", "rsqrt"):
        low = (0.0 if lower[0] is not None and lower[0] >= 1 else None) if name == "log" else None
        return [(bounded[0] and positive(0), low)]
    if name == "log1p":
        above = lower[0] is not None and lower[0] > -1
        return [(bounded[0] and above, 0.0 if above and lower[0] >= 0 else None)]
    if name in ("max", "min"):
        excluded = np.inf if name == "max" else -np.inf
        ok = any(bounded) and all(
            b or (c is not None and not np.any(np.isnan(c)) and not np.any(c == excluded))
            for b, c in zip(bounded, constants))
        known = [lo for lo in lower if lo is not None]
        low = (max(known) if known else None) if name == "max" else (min(known) if len(known) == len(lower) else None)
        return [(ok, low)]
    if name == "select_n":
        cases = states[1:]
        lows = [lo for _, lo in cases]
        return [(all(b for b, _ in cases), min(lows) if all(lo is not None for lo in lows) else None)]
    ok = all(bounded) and name in BOUNDED_VALUES and (name != "sqrt" or (lower[0] is not None and lower[0] >= 0))
    if name in _NONNEGATIVE:
        return [(ok, 0.0)]
    if name == "cosh":
        return [(ok, 1.0)]
    if name in _KEEPS_LOWER or (name == "gather" and lower[0] is not None and _fills_at_least(eqn.params, lower[0])):
        return [(ok, lower[0])]
    if name == "add" and all(lo is not None for lo in lower):
        return [(ok, sum(lower))]
    if name == "mul" and all(lo is not None and lo >= 0 for lo in lower):
        return [(ok, math.prod(lower))]
    if name == "reduce_sum" and lower[0] is not None and lower[0] >= 0:
        return [(ok, 0.0)]
    return [(ok, None)]


def _operand_key(op: Operand) -> Any:
    """What `bounded` keys an operand by: `_key`'s, or its `LeafRef` (an argument not differentiated)."""
    return op.value if isinstance(op.value, LeafRef) else _key(op)


def _tests_non_finite(eqn) -> Operand | None:
    """The operand `eqn` tests for NaN or infinity (``jnp.isnan``: ``ne(a, a)``; ``jnp.isfinite``:
    ``is_finite``; ``jnp.isinf``/``isposinf``: ``eq(a, inf)``, also of ``abs(a)``), else None."""
    name = eqn.primitive.name if eqn.primitive is not None else ""
    if name == "is_finite":
        return eqn.operands[0]
    if name in ("eq", "ne") and len(eqn.operands) == 2:
        a, b = eqn.operands
        if name == "ne" and _operand_key(a) is not None and _operand_key(a) == _operand_key(b):
            return a
        for tested, other in ((a, b), (b, a)):
            if other.node is None and not isinstance(other.value, (ValueRef, LeafRef)):
                known = _known(other.value)
                if known is not None and known.size and np.all(np.isinf(known)):
                    return tested
    return None


def tested_arguments(program) -> set:
    """The arguments (input nodes and `LeafRef`s) that a value tested for NaN or infinity
    (`_tests_non_finite`) is computed from, through the program's equations: the function expects
    them non-finite somewhere (``jnp.nanmean((pred - y) ** 2)`` over missing labels, ``nan_to_num``),
    so the partials they enter may be NaN there and `bounded_operand` must not take them finite.
    Empty where nothing is tested (the common case)."""
    tested = [op for eqn in program.equations if (op := _tests_non_finite(eqn)) is not None]
    if not tested:
        return set()
    defined: dict[Any, list] = {}
    for eqn in program.equations:
        keys = [_operand_key(op) for op in eqn.operands]
        for out in eqn.outputs:
            defined[out.node if out.node is not None else out.value] = keys
    found: set = set()
    stack = [_operand_key(op) for op in tested]
    seen: set = set()
    while stack:
        key = stack.pop()
        if key is None or key in seen:
            continue
        seen.add(key)
        if key in defined:
            stack.extend(defined[key])
        else:
            found.add(key)
    return found


def _taken_cases(eqn) -> list[int] | None:
    """The cases a select takes where its predicate is a constant (known while tracing: ``jnp.var``'s
    ``where(n - ddof > 0, var, nan)``), else None."""
    predicate = eqn.operands[0]
    if (predicate.node is not None or predicate.value is None or isinstance(predicate.value, (LeafRef, ValueRef))
            or isinstance(predicate.value, jax.core.Tracer)):
        return None
    return sorted({int(c) for c in np.asarray(predicate.value).astype(np.int64).ravel()})


def computed_from_constants(eqn) -> bool:
    """Whether every operand of `eqn` is a constant (known while tracing; after `fold_constants`),
    so that its outputs are too."""
    return all(op.node is None and not isinstance(op.value, (LeafRef, ValueRef, jax.core.Tracer)) for op in eqn.operands)


def fold_constants(eqn, folded: dict):
    """`eqn` with its operands computed from constants alone as constants (`folded`: operand key ->
    value known while tracing), for the rules of this module: ``jnp.var``'s normaliser ``n - ddof``
    is a vertex of the program whose value is known, and a division by it has no pole."""
    if not folded:
        return eqn
    operands = [Operand(None, folded[_key(op)]) if _key(op) is not None and _key(op) in folded else op
                for op in eqn.operands]
    if all(new is old for new, old in zip(operands, eqn.operands)):
        return eqn
    return eqn._replace(operands=tuple(operands) if isinstance(eqn.operands, tuple) else operands)


#: How an infinite partial may reach a vertex (`pole_passes`): not at all, entry by entry (the
#: pole's own entries), or spread over others (through a broadcast, a sum, a dense product).
NO_POLE, POLE_ENTRYWISE, POLE_SPREAD = 0, 1, 2


def pole_passes(poles: dict[int, int], e, entrywise: bool, finite: bool) -> None:
    """Updates `poles` (node -> `NO_POLE`...) at e.dst for the partial d dst / d src of graph edge `e`
    (`entrywise`: it sends entry k to entry k only; `finite`: it has no pole of its own). Both
    interpreters track poles by this rule (`_jacobian._eliminate_all`, `_tape._Builder._reach`)."""
    upstream = poles.get(e.src, NO_POLE)
    reach = upstream if entrywise else (POLE_SPREAD if upstream != NO_POLE else NO_POLE)
    if not finite:
        reach = max(reach, POLE_ENTRYWISE)
    poles[e.dst] = max(poles.get(e.dst, NO_POLE), reach)
