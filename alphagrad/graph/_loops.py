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
known offset.

A larger `scan` stays a loop: one dense vertex per floating-point output, whose partials the
interpreter accumulates across the iterations as a chain product of each iteration's local
Jacobian blocks (`LoopPlan`: the blocks by eliminating inside the body, the chain forward or
reverse across the iterations, whichever the dimensions make cheaper); `partial_muls` reports its
multiplications beside the elimination's `graph.cost`. Every `while`/`cond` is one dense vertex per
output whose partials JAX computes (docs/cost-model.md, "Loops").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr

__all__ = [
    "UNROLL_MAX_EQUATIONS", "unrolled_size", "unrolls", "index_jaxpr", "stack_jaxpr", "evaluate", "LoopPlan",
    "loop_plan", "chain_muls", "whole_loop_muls", "CHAIN_ADVANTAGE", "partial_muls",
]

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


class LoopPlan(NamedTuple):
    """How the partials of a `scan` kept as a loop are computed (by the interpreter) and what they cost.

    Per iteration k the body maps (carries c_k, constants C, per-step inputs x_k) to (c_{k+1}, y_k).
    Its local Jacobian blocks w.r.t. the floating-point carries and the differentiated constants and
    per-step inputs are computed by eliminating inside `body` in `body_order` (`body_muls`
    multiplications per iteration); the chain product across the iterations runs in `mode`
    (`chain_muls`, see `chain_muls`). Indices count within the scan's constants, carries, per-step
    inputs and stacked outputs.

    Attributes:
      body: ``(carries, consts, xs, rest) -> (carries', ys)``: the first three are tuples of the
        floating-point carries, the differentiated constants and per-step inputs; ``rest`` is
        ``(all constants, all carries, all per-step inputs)``, whose entries the first three replace.
      body_order: the elimination order of ``body``'s graph (argnums 0, 1, 2).
      body_muls: multiplications of the elimination of one local Jacobian.
      inner_muls: those of the partials of loops kept inside the body, per iteration.
      mode: "forward" or "reverse" accumulation across the iterations.
      chain_muls: multiplications of the chain product.
      length: the number of iterations.
      float_carries, carry_sources, const_sources, x_sources, float_ys: which carries are floating
        point, which carries, constants and per-step inputs are differentiated (edge sources), which
        stacked outputs are floating point.
      operands: the shapes and dtypes of the scan's operands (constants, carries, per-step inputs).
    """

    body: Callable
    body_order: tuple[int, ...]
    body_muls: int
    inner_muls: int
    mode: str
    chain_muls: int
    length: int
    float_carries: tuple[int, ...]
    carry_sources: tuple[int, ...]
    const_sources: tuple[int, ...]
    x_sources: tuple[int, ...]
    float_ys: tuple[int, ...]
    operands: tuple[jax.ShapeDtypeStruct, ...]

    @property
    def muls(self) -> int:
        """All multiplications of the loop's partials: the local Jacobians and the chain."""
        return self.length * (self.body_muls + self.inner_muls) + self.chain_muls


def chain_muls(mode: str, length: int, n: int, q: int, carry_columns: int, p: int, m: int) -> int:
    """Multiplications of the chain product across `length` iterations, with float carries of `n`
    entries, float per-step outputs of `q`, differentiated carries of `carry_columns`, constants of
    `p` and per-step inputs of `m` entries.

    Forward: a tangent state d c_k / d(sources) of n x N, N = carry_columns + p + length·m, is
    multiplied by each iteration's carry block (n x n) and read out by its output block (q x n):
    length·(n + q)·n·N. Reverse: an adjoint state d(outputs) / d c_k of M x n, M = n + length·q, is
    multiplied by each iteration's blocks w.r.t. the carry, the constants and the step's inputs:
    length·M·n·(n + p + m).
    """
    if mode == "forward":
        return length * (n + q) * n * (carry_columns + p + length * m)
    return length * (n + length * q) * n * (n + p + m)


def whole_loop_muls(length: int, n: int, q: int, carry_columns: int, p: int, m: int, body_forward: int,
                    body_reverse: int) -> float:
    """Estimated multiplications of differentiating the whole loop as JAX does (the dense fallback):
    tangent columns pushed through every iteration (jvp: carry_columns + p + length·m columns, each
    costing the body's forward elimination per input column, body_forward / (n + p + m)) or
    cotangent rows pulled back through every iteration (vjp: n + length·q rows, each costing
    body_reverse / (n + q)), whichever is cheaper. Arguments as for `chain_muls`; body_forward and
    body_reverse are the forward and reverse costs of the body's graph."""
    columns = carry_columns + p + length * m
    rows = n + length * q
    by_columns = length * columns * body_forward / max(1, n + p + m)
    by_rows = length * rows * body_reverse / max(1, n + q)
    return min(by_columns, by_rows)


#: A scan too long to unroll keeps its loop as a chain product only where that needs at most
#: 1/CHAIN_ADVANTAGE of the multiplications of differentiating the whole loop as JAX does
#: (`whole_loop_muls`): the chain multiplies many small dense blocks, each one XLA operation per
#: iteration, so at equal counts it runs slower (measured on a 1,000-step RK4 Lorenz scan with 3 carries
#: and 3 parameters: 0.66 ms per Jacobian against jax.jacfwd's 0.18 ms on the CPU).
CHAIN_ADVANTAGE = 2.0


def _floating(aval) -> bool:
    return jnp.issubdtype(aval.dtype, jnp.floating)


def _body_function(body: ClosedJaxpr, num_carry: int, float_carries, const_sources, x_sources, float_ys):
    """The scan body as a function of its differentiated operands (see `LoopPlan.body`)."""

    def fn(carries, consts, xs, rest):
        all_consts, all_carries, all_xs = (list(part) for part in rest)
        for i, v in zip(float_carries, carries):
            all_carries[i] = v
        for i, v in zip(const_sources, consts):
            all_consts[i] = v
        for i, v in zip(x_sources, xs):
            all_xs[i] = v
        outs = jax.core.eval_jaxpr(body.jaxpr, body.consts, *all_consts, *all_carries, *all_xs)
        return tuple(outs[i] for i in float_carries), tuple(outs[num_carry + j] for j in float_ys)

    return fn


def _spec(aval, drop_leading: bool = False):
    shape = tuple(aval.shape[1:] if drop_leading else aval.shape)
    return jax.ShapeDtypeStruct(shape, aval.dtype)


def loop_plan(eqn, sources: Sequence[bool]) -> LoopPlan | None:
    """The plan of a `scan` equation kept as a loop, whose operands at `sources` have edges to its
    outputs; None when it has no such operand, no floating-point output or no iteration (then no
    partial is computed, or the dense fallback computes it)."""
    from alphagrad.graph._orders import CLASSIC_ORDERS, cost, resolve_order
    from alphagrad.graph._trace import trace

    params = eqn.params
    num_consts, num_carry, length = params["num_consts"], params["num_carry"], params["length"]
    avals = [v.aval for v in eqn.invars]
    const_avals, carry_avals, x_avals = (avals[:num_consts], avals[num_consts : num_consts + num_carry],
                                         avals[num_consts + num_carry :])
    y_avals = [v.aval for v in eqn.outvars[num_carry:]]
    float_carries = tuple(i for i, a in enumerate(carry_avals) if _floating(a))
    carry_sources = tuple(i for i in range(num_carry) if sources[num_consts + i])
    const_sources = tuple(i for i in range(num_consts) if sources[i])
    x_sources = tuple(i for i in range(len(x_avals)) if sources[num_consts + num_carry + i])
    float_ys = tuple(j for j, a in enumerate(y_avals) if _floating(a))
    if length == 0 or not (carry_sources or const_sources or x_sources) or not (float_carries or float_ys):
        return None
    fn = _body_function(params["jaxpr"], num_carry, float_carries, const_sources, x_sources, float_ys)
    rest = ([_spec(a) for a in const_avals], [_spec(a) for a in carry_avals], [_spec(a, True) for a in x_avals])
    body_graph = trace(fn, tuple(rest[1][i] for i in float_carries), tuple(rest[0][i] for i in const_sources),
                       tuple(rest[2][i] for i in x_sources), rest, argnums=(0, 1, 2), cost_model="exact",
                       name="scan body")
    costs = {name: cost(body_graph, name) for name in CLASSIC_ORDERS}
    best = min(costs, key=costs.get)

    def size(avals_, indices, drop_leading=False):
        return sum(math.prod(avals_[i].shape[1:] if drop_leading else avals_[i].shape) for i in indices)

    dims = dict(length=length, n=size(carry_avals, float_carries), q=size(y_avals, float_ys, True),
                carry_columns=size(carry_avals, carry_sources), p=size(const_avals, const_sources),
                m=size(x_avals, x_sources, True))
    chains = {mode: chain_muls(mode, **dims) for mode in ("forward", "reverse")}
    mode = min(chains, key=chains.get)  # forward on ties
    inner = partial_muls(body_graph)
    chain_total = length * (costs[best] + inner) + chains[mode]
    whole_loop = whole_loop_muls(body_forward=costs["forward"] + inner, body_reverse=costs["reverse"] + inner, **dims)
    if chain_total * CHAIN_ADVANTAGE > whole_loop:
        return None  # JAX's own differentiation of the whole loop (the dense fallback) is as cheap
    return LoopPlan(fn, tuple(resolve_order(body_graph, best)), costs[best], inner, mode,
                    chains[mode], length,
                    float_carries, carry_sources, const_sources, x_sources, float_ys, tuple(map(_spec, avals)))


def partial_muls(graph) -> int:
    """Multiplications of the partials of the loops `graph` keeps (`LoopPlan.muls`), the same in every
    order; 0 for a graph without such loops (and a graph without a program).

    Like the evaluation of every partial they are outside `graph.cost` (the elimination's products),
    which the searches optimise and compare with their own sums; the interpreter checks that it
    performs exactly these (`MultiplicationCounter.loops`).
    """
    if graph.program is None:
        return 0
    return sum(e.loop.muls for e in graph.program.equations if getattr(e, "loop", None) is not None)
