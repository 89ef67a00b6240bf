"""Ranges of the integer values of a sub-program (interval arithmetic over a jaxpr), for the tape.

The tape (`_tape`) holds every value of a program in one floating-point buffer, so an integer
survives there only where the buffer's dtype holds it exactly (int32 in float64, not in float32).
It bounds integers computed by its own equations; a loop or branch kept whole as one equation
(`lax.scan`, `lax.while_loop`, `lax.cond`; jnp.searchsorted's binary search, and so `jnp.interp`
and `jnp.digitize`) makes integers whose bounds only its body tells. This module evaluates the body
on intervals: a loop's carry by iterating to a fixed point (the union of the carries after 0, 1,
2, ... steps; the last of a scan's `length` steps bounds it as well), widened to its dtype's whole
range after `LOOP_ITERATIONS_MAX` rounds without one. jnp.searchsorted's carry, (low, high) with
``mid = (low + high) // 2`` in uint32, stays within [0, n] for a table of n entries.

A range is (least, greatest) as floats, or None for a floating-point value. The rules are
conservative: an operation without one may take any value of its dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np
from jax.extend.core import ClosedJaxpr, Literal

__all__ = ["LOOP_ITERATIONS_MAX", "Range", "sub_program_range"]

Range = Optional[tuple[float, float]]

#: Rounds of a loop's interval iteration before the carries that still grow take their dtype's
#: whole range (a binary search over n entries settles in about log2(n) rounds).
LOOP_ITERATIONS_MAX = 64


def _dtype_range(dtype) -> tuple[float, float] | None:
    """Every value of an integer or boolean dtype; None for any other."""
    dtype = np.dtype(dtype)
    if dtype == np.dtype(bool):
        return 0.0, 1.0
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return None


def _value_range(value: Any) -> tuple[float, float] | None:
    value = np.asarray(value)
    if value.dtype.kind not in "biu":
        return None
    return (float(value.min()), float(value.max())) if value.size else (0.0, 0.0)


def _hull(*ranges):
    if any(r is None for r in ranges):
        return None
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def _truncated_quotients(a, b):
    """Bounds of a / b rounded toward zero, b's range excluding 0 (monotone in each operand there)."""
    quotients = [math.trunc(x / y) for x in a for y in b]
    return float(min(quotients)), float(max(quotients))


def _div(ranges, **_):
    a, b = ranges
    if b[0] > 0 or b[1] < 0:
        return _truncated_quotients(a, b)
    return None  # XLA: x / 0 is -1, or the largest unsigned value: any value


def _rem(ranges, **_):
    a, b = ranges  # the dividend's sign, no larger than it, smaller than the divisor (x rem 0 is x)
    size = max(abs(a[0]), abs(a[1]))
    if not b[0] <= 0 <= b[1]:
        size = min(size, max(abs(b[0]), abs(b[1])) - 1)
    return (0.0 if a[0] >= 0 else -size), (0.0 if a[1] <= 0 else size)


def _mul(ranges, **_):
    products = [x * y for x in ranges[0] for y in ranges[1]]
    return min(products), max(products)


def _abs(ranges, **_):
    low, high = ranges[0]
    return (0.0 if low <= 0 <= high else min(abs(low), abs(high))), max(abs(low), abs(high))


def _clamp(ranges, **_):  # clamp(low, x, high) = min(max(x, low), high)
    low, x, high = ranges
    return min(max(x[0], low[0]), high[0]), min(max(x[1], low[1]), high[1])


def _sum_of_terms(ranges, in_avals, out_avals, params, name):
    """cumsum or reduce_sum: a sum of at most `terms` operand entries."""
    shape = in_avals[0].shape
    terms = shape[params["axis"]] if name == "cumsum" else math.prod(shape) // max(1, math.prod(out_avals[0].shape))
    low, high = ranges[0]
    return min(low, terms * low), max(high, terms * high)


def _scatter_add(ranges, in_avals, **_):
    updates = math.prod(in_avals[2].shape)
    (low, high), (u_low, u_high) = ranges[0], ranges[2]
    return low + updates * min(0.0, u_low), high + updates * max(0.0, u_high)


def _index_along(ranges, in_avals, out_avals, params, name):
    """An index into an axis (argmax, argmin) or along a dimension (iota)."""
    if name == "iota":
        return 0.0, float(max(0, params["shape"][params["dimension"]] - 1))
    return 0.0, float(max(0, max(in_avals[0].shape[a] for a in params["axes"]) - 1))


#: Rules of one result: (operand ranges, every one known) -> the result's range (None: any value).
_RULES: dict[str, Callable[..., Any]] = {
    "add": lambda ranges, **_: (ranges[0][0] + ranges[1][0], ranges[0][1] + ranges[1][1]),
    "sub": lambda ranges, **_: (ranges[0][0] - ranges[1][1], ranges[0][1] - ranges[1][0]),
    "mul": _mul,
    "neg": lambda ranges, **_: (-ranges[0][1], -ranges[0][0]),
    "abs": _abs,
    "sign": lambda ranges, **_: (-1.0, 1.0),
    "max": lambda ranges, **_: (max(r[0] for r in ranges), max(r[1] for r in ranges)),
    "min": lambda ranges, **_: (min(r[0] for r in ranges), min(r[1] for r in ranges)),
    "clamp": _clamp,
    "select_n": lambda ranges, **_: _hull(*ranges[1:]),
    "div": _div,
    "rem": _rem,
    "cumsum": _sum_of_terms,
    "reduce_sum": _sum_of_terms,
    "scatter-add": _scatter_add,
    "scatter": lambda ranges, **_: _hull(ranges[0], ranges[2]),
    "dynamic_update_slice": lambda ranges, **_: _hull(ranges[0], ranges[1]),
    "pad": lambda ranges, **_: _hull(ranges[0], ranges[1]),
    "concatenate": lambda ranges, **_: _hull(*ranges),
    "reduce_max": lambda ranges, **_: ranges[0],
    "reduce_min": lambda ranges, **_: ranges[0],
    "cummax": lambda ranges, **_: ranges[0],
    "cummin": lambda ranges, **_: ranges[0],
    "iota": _index_along,
    "argmax": _index_along,
    "argmin": _index_along,
}
_RULES.update(dict.fromkeys(  # the operand's entries
    ("convert_element_type", "broadcast_in_dim", "reshape", "squeeze", "expand_dims", "slice", "transpose", "rev",
     "copy", "copy_p", "dynamic_slice", "gather"), lambda ranges, **_: ranges[0]))

#: Rules that read only some operands (the others may be floats: a gather's operand and
#: indices, an argmax's operand; None: all but a select's predicate).
_READS = {"gather": (0,), "dynamic_slice": (0,), "scatter": (0, 2), "scatter-add": (0, 2),
          "dynamic_update_slice": (0, 1), "select_n": None, "argmax": (), "argmin": (), "iota": ()}


def _clipped(r, aval):
    """A rule's range within its result's dtype (its whole range where the rule may leave it)."""
    full = _dtype_range(aval.dtype)
    if full is None:
        return None
    if r is None or not (full[0] <= r[0] and r[1] <= full[1]):
        return full  # unknown, or it may wrap around: any value of the dtype
    return r


def _equation_ranges(primitive, params: dict, in_ranges: list, in_avals: list, out_avals: list) -> list:
    """The ranges of one equation's results from its operands' (None for floats)."""
    name = primitive.name
    ranges = [r if r is not None else _dtype_range(a.dtype) for r, a in zip(in_ranges, in_avals)]
    if name == "scan":
        return _scan_ranges(params, ranges)
    if name == "while":
        return _while_ranges(params, ranges)
    if name == "cond":
        outs = [_closed_ranges(branch, ranges[1:]) for branch in params["branches"]]
        return [_hull(*rs) if all(r is not None for r in rs) else None for rs in zip(*outs)]
    inner = params.get("jaxpr") if name in ("pjit", "jit", "remat", "checkpoint") else params.get("call_jaxpr")
    if inner is not None and name in _SUB_PROGRAM_NAMES:
        return _closed_ranges(inner, ranges)
    if name == "sort":  # each result a permutation of its operand (argsort: of an iota)
        return [_clipped(r, a) for r, a in zip(ranges, out_avals)]
    rule = _RULES.get(name)
    result = None
    if rule is not None and len(out_avals) == 1:
        reads = _READS.get(name, range(len(ranges)))
        if reads is None:
            reads = range(1, len(ranges))
        if all(ranges[i] is not None for i in reads):
            result = rule(ranges, in_avals=in_avals, out_avals=out_avals, params=params, name=name)
    return [_clipped(result, a) for a in out_avals]


def _closed_ranges(closed, in_ranges: Sequence) -> list:
    """The ranges of a (closed) jaxpr's results, its inputs in `in_ranges`."""
    jaxpr, consts = (closed.jaxpr, closed.consts) if isinstance(closed, ClosedJaxpr) else (closed, ())
    env: dict = {}
    for var, value in zip(jaxpr.constvars, consts):
        env[var] = _value_range(value)
    for var, r in zip(jaxpr.invars, in_ranges):
        env[var] = r if r is not None else _dtype_range(var.aval.dtype)

    def read(v):
        return _value_range(v.val) if isinstance(v, Literal) else env[v]

    for eqn in jaxpr.eqns:
        results = _equation_ranges(eqn.primitive, eqn.params, [read(v) for v in eqn.invars],
                                   [v.aval for v in eqn.invars], [v.aval for v in eqn.outvars])
        env.update(zip(eqn.outvars, results))
    return [read(v) for v in jaxpr.outvars]


def _fixed_point(step: Callable[[list], list], carry: list, avals: list, rounds: int | None) -> list:
    """The union of the carries a loop may hold: `step` maps a carry's ranges to the next's, from
    `carry` (the initial one), for `rounds` steps where known (a scan's length), else to a fixed
    point; carries still growing after `LOOP_ITERATIONS_MAX` rounds take their dtype's range."""
    limit = LOOP_ITERATIONS_MAX if rounds is None else min(rounds, LOOP_ITERATIONS_MAX)
    for widened in (False, True):
        for _ in range(limit):
            grown = [_hull(c, n) if c is not None and n is not None else c for c, n in zip(carry, step(carry))]
            if grown == carry:
                return carry
            previous, carry = carry, grown
        if rounds is not None and rounds <= LOOP_ITERATIONS_MAX and not widened:
            return carry  # every step taken: the union bounds every carry of the loop
        carry = [c if c == p else _dtype_range(a.dtype) for c, p, a in zip(carry, previous, avals)]
    return [_dtype_range(a.dtype) for a in avals]


def _scan_ranges(params: dict, ranges: list) -> list:
    body, consts, carries = params["jaxpr"], params["num_consts"], params["num_carry"]
    const_r, carry_r, xs_r = ranges[:consts], ranges[consts:consts + carries], ranges[consts + carries:]
    avals = [v.aval for v in body.jaxpr.invars[consts:consts + carries]]
    carry_r = _fixed_point(lambda c: _closed_ranges(body, const_r + c + xs_r)[:carries], carry_r, avals,
                           params["length"])
    return carry_r + _closed_ranges(body, const_r + carry_r + xs_r)[carries:]


def _while_ranges(params: dict, ranges: list) -> list:
    body, skip, consts = params["body_jaxpr"], params["cond_nconsts"], params["body_nconsts"]
    const_r, carry_r = ranges[skip:skip + consts], ranges[skip + consts:]
    avals = [v.aval for v in body.jaxpr.invars[consts:]]
    return _fixed_point(lambda c: _closed_ranges(body, const_r + c), carry_r, avals, None)


def sub_program_range(primitive, params: dict, in_ranges: Sequence, in_avals: Sequence, k: int):
    """The (least, greatest) value result `k` of a loop, branch or call may take (`lax.scan`,
    `lax.while_loop`, `lax.cond`, a call of a closed jaxpr), its operands' ranges given (`in_ranges`:
    None for floats and for integers of unknown range; `in_avals`: avals with `.dtype` and `.shape`);
    None for a floating-point result or another primitive."""
    if primitive.name not in _SUB_PROGRAM_NAMES:
        return None
    results = _equation_ranges(primitive, params, list(in_ranges), list(in_avals), [])
    return results[k] if k < len(results) else None


_SUB_PROGRAM_NAMES = frozenset({"scan", "while", "cond", "pjit", "jit", "closed_call", "core_call", "custom_jvp_call",
                                "custom_vjp_call", "remat", "checkpoint"})
