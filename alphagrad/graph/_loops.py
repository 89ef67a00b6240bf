"""Loops in the trace: which `scan`s are unrolled into the graph, and the pieces of the unrolling.

A `scan` (``lax.scan``, ``lax.map``, ``lax.fori_loop`` with static bounds) whose unrolled form stays
small (at most `UNROLL_MAX_EQUATIONS` equations) is traced as the straight-line program a Python
loop would give: per iteration, each per-step input ``xs[k]`` is a ``slice`` and a ``squeeze`` of
``xs`` (index maps, free), the body's equations are numbered in place with the carries of the
previous iteration as operands, and each stacked output is one ``stack`` of the iterations'
outputs (an index map). Its partials are then structural (diagonal, index maps, ...) and its
products are counted like straight-line code's. Integer arithmetic on constants inside an
unrolled body (the loop counter of a ``fori_loop``, the index wrapping of ``x[i]``) is evaluated
at trace time, as a Python loop's ``range`` index would be, so ``x[i]`` becomes a slice at a
known offset. A larger `scan`, and every `while`/`cond`, stays one dense vertex per output
(docs/cost-model.md, "Loops").
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr

__all__ = ["UNROLL_MAX_EQUATIONS", "unrolled_size", "unrolls", "index_jaxpr", "stack_jaxpr", "evaluate"]

#: A `scan` is unrolled into the graph when its unrolled form has at most this many equations
#: (nested unrolled loops counted by their own unrolled size): small enough that the graph, the
#: searches on it and the interpreter's compilation stay cheap, large enough for the short loops of
#: integrators, recurrent cells and fixed-point iterations.
UNROLL_MAX_EQUATIONS = 128


def _scan_size(params: Mapping[str, Any], num_xs: int, num_ys: int, inlined: Mapping[str, str]) -> int:
    """Equations of a scan unrolled: per iteration its body and a slice and squeeze per ``xs``;
    one ``stack`` per stacked output."""
    return params["length"] * (unrolled_size(params["jaxpr"].jaxpr, inlined) + 2 * num_xs) + num_ys


def _counts(eqn) -> tuple[int, int]:
    """(xs, ys) of a scan equation: its per-step inputs and its stacked outputs."""
    params = eqn.params
    return (len(eqn.invars) - params["num_consts"] - params["num_carry"],
            len(eqn.outvars) - params["num_carry"])


def unrolls(eqn, inlined: Mapping[str, str]) -> bool:
    """Whether the `scan` equation `eqn` is unrolled into the graph (never one of no iterations,
    whose stacked outputs are empty)."""
    return eqn.params["length"] > 0 and _scan_size(eqn.params, *_counts(eqn), inlined) <= UNROLL_MAX_EQUATIONS


def unrolled_size(jaxpr: Jaxpr, inlined: Mapping[str, str]) -> int:
    """Equations the trace makes of `jaxpr`: calls in `inlined` (primitive -> body parameter) count
    their bodies, a scan that is unrolled its unrolled size, every other equation one."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in inlined:
            body = eqn.params[inlined[name]]
            total += unrolled_size(body.jaxpr if isinstance(body, ClosedJaxpr) else body, inlined)
        elif name == "scan" and unrolls(eqn, inlined):
            total += _scan_size(eqn.params, *_counts(eqn), inlined)
        else:
            total += 1
    return total


@functools.lru_cache(maxsize=256)
def index_jaxpr(shape: tuple[int, ...], dtype, k: int) -> ClosedJaxpr:
    """``xs -> xs[k]`` for ``xs`` of this shape (a slice along the leading axis and a squeeze)."""
    return jax.make_jaxpr(lambda xs: jax.lax.index_in_dim(xs, k, axis=0, keepdims=False))(
        jax.ShapeDtypeStruct(shape, dtype))


@functools.lru_cache(maxsize=256)
def stack_jaxpr(shape: tuple[int, ...], dtype, count: int) -> ClosedJaxpr:
    """``(y_0, ..., y_{count-1}) -> stack`` along a new leading axis, for ``y_k`` of this shape."""
    spec = jax.ShapeDtypeStruct(shape, dtype)
    return jax.make_jaxpr(lambda *ys: jnp.stack(ys))(*([spec] * count))


def evaluate(eqn, values: Sequence[Any]) -> list[Any] | None:
    """The outputs of `eqn` at constant operand `values`, computed now (outside any outer trace),
    or None where they cannot be (a value that is not concrete)."""
    if any(isinstance(v, jax.core.Tracer) for v in values):
        return None
    with jax.ensure_compile_time_eval():
        result = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
    results = list(result) if eqn.primitive.multiple_results else [result]
    return [np.asarray(r) for r in results]
