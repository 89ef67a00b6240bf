"""Loops in the trace: which `scan`s are unrolled into the graph, and the pieces of the unrolling.

A `scan` (``lax.scan``, ``lax.map``, ``lax.fori_loop`` with static bounds) is unrolled where both
hold (`unrolls`):

- it fits: its unrolled form has at most `UNROLL_MAX_EQUATIONS` equations (`fits`; above that it is
  never unrolled, whatever it costs), and
- unrolling costs clearly less: the cheapest classic elimination (forward, reverse, Markowitz) of
  the graph of the loop alone, unrolled (`unrolled_graph`: its differentiated operands as inputs,
  the outputs something reads as outputs), is at most `UNROLL_ADVANTAGE` (1/4) times what its
  partials would cost with the loop kept whole (`Body.kept_muls`: JAX's differentiation of the
  whole loop, `whole_loop_muls`: one JVP column or VJP row of the body per iteration and tangent
  column or cotangent row, each priced on the body's graph with its seed, `seeded_graph`, so that
  the first equations' products with the incoming tangents count; the body is traced once by
  `analyse`).

The rule is measured, not derived: unrolled, a loop's partials are structural, but where its body
mixes index maps (``jnp.roll``) with diagonals the interpreter materialises their products, and
one counted multiplication of the unrolled elimination runs slower than one of JAX's tangents
through the whole loop (fused elementwise kernels). Kept/unrolled counts and what ran faster at
batch 32,768 on the CPU: heat_fori 720 / 541 (kept; 6x slower unrolled), rk_two_carries 648 / 201
(kept; 2x slower unrolled), bouncing_ball 168 / 110 (kept; 8x), lstm_sequence 44,064 / 33,714
(kept; unrolled did not finish), power_iteration 1,088 / 205 (unrolled; 2.2x faster), dh_chain
19,200 / 2,304 (unrolled; 3x faster), fori_static 320 / 48 (unrolled; 5x faster): the
factor 4 separates 3.2 (rk_two_carries, kept) from 5.3 (power_iteration, unrolled). A scan with
no differentiated operand or no floating-point output (no partials either way) is unrolled where
it fits. The decision depends on the operands only through which are differentiated, known and
read, so it is deterministic.

Unrolled, a scan is traced as the straight-line program a Python loop would give: per iteration,
each per-step input ``xs[k]`` is a ``slice`` and a ``squeeze`` of ``xs`` (index maps, free), the
body's equations are numbered in place with the carries of the previous iteration as operands, and
each stacked output is one ``stack`` of the iterations' outputs (an index map). Its partials are
then structural (diagonal, index maps, ...) and its products are counted like straight-line code's.
Integer arithmetic on constants inside an unrolled body (the loop counter of a ``fori_loop``, the
index wrapping of ``x[i]``) is evaluated at trace time, as a Python loop's ``range`` index would be,
so ``x[i]`` becomes a slice at a known offset.

A scan that is not unrolled stays a loop: one dense vertex per floating-point output. Its partials
are JAX's differentiation of the whole loop (`LoopPlan` mode "whole": the dense fallback, on a body
whose small sums the interpreter writes out), or where that needs at least
`CHAIN_ADVANTAGE` times as many multiplications, a chain product of each iteration's local
Jacobian blocks that the interpreter accumulates (`LoopPlan`: the blocks by eliminating inside the
body, the chain across the iterations bracketed by dynamic programming, `chain_plan`: forward,
reverse, split between them at a carry block, or in nested segments: the pure mode that counts
least, or the cheapest bracketing where it counts at most 1/`BRACKETED_ADVANTAGE` of both);
`partial_muls` reports the chain's multiplications beside the elimination's `graph.cost`. Every
`while`/`cond` is one dense vertex per output whose partials JAX computes (docs/cost-model.md,
"Loops").

A kept loop (a scan not unrolled, or a `while`) whose values reach only f's own outputs, and fewer
of their entries than the loop's partial would have rows (a scalar cost after a Sinkhorn
fori_loop, a CRF's forward scan, an LQR rollout), is one large-span vertex with the equations that
read its values (`narrow_tail_span`): its partial is then built by one VJP row per output entry
(jax.jacrev's program for a scalar f) instead of the loop's full partial, by rows or columns, times
the output's adjoint. Measured at batch 256 (same process, float32, CPU): sinkhorn_log 5.99 ->
0.88 ms, crf_neg_log_likelihood 0.37 -> 0.10, lqr_riccati_scan 8.72 -> 1.40, flax_lstm_scan
6.55 -> 4.40 (each jax.jacrev's kernel count).
"""

from __future__ import annotations

import contextvars
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, DebugInfo, DropVar, Jaxpr, JaxprEqn, Literal, new_jaxpr_eqn
from jax.extend.core.primitives import closed_call_p

from alphagrad.graph import _rules, _structure

__all__ = [
    "UNROLL_MAX_EQUATIONS", "UNROLL_ADVANTAGE", "fits", "unrolls", "unrolled_graph", "unrolled_muls",
    "unrolled_size", "index_jaxpr", "stack_jaxpr", "evaluate", "Body", "analyse", "LoopPlan", "loop_plan",
    "chain_muls", "split_muls", "fuse_large_spans", "is_large_span", "span_call", "narrow_tail_span",
    "tail_may_be_narrow", "float_entries",
    "COLUMNS_PER_ROW", "DENSE_SPAN_MIN_ENTRIES", "best_split", "chain_plan", "cheapest_bracketing",
    "BRACKETED_ADVANTAGE", "bracketing_muls", "chain_mode", "whole_loop_muls", "seeded_graph", "CHAIN_ADVANTAGE",
    "partial_muls",
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


def fits(eqn, inlined: Mapping[str, str]) -> bool:
    """Whether the `scan` equation `eqn` is small enough to be unrolled: at least one iteration (a
    scan of none has empty stacked outputs) and at most `UNROLL_MAX_EQUATIONS` equations unrolled."""
    return eqn.params["length"] > 0 and _scan_size(eqn.params, *_counts(eqn), inlined) <= UNROLL_MAX_EQUATIONS


def unrolled_size(jaxpr: Jaxpr, inlined: Mapping[str, str]) -> int:
    """Equations the trace makes of `jaxpr` at most: calls in `inlined` (primitive -> body parameter)
    count their bodies, a scan that `fits` its unrolled size (whether or not `unrolls` keeps it, which
    depends on its operands: an upper bound), every other equation one."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in inlined:
            body = eqn.params[inlined[name]]
            total += unrolled_size(body.jaxpr if isinstance(body, ClosedJaxpr) else body, inlined)
        elif name == "scan" and fits(eqn, inlined):
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
      mode: how the chain is bracketed (`chain_mode` of `levels`): "forward" or "reverse" accumulation
        across the iterations, "bracketed" for a split or segmented bracketing chosen by `chain_plan`;
        "whole": no chain, JAX's differentiation of the whole loop (then body_order and levels are empty
        and every count 0).
      chain_muls: multiplications of the chain product (`chain_plan`).
      length: the number of iterations.
      float_carries, carry_sources, const_sources, x_sources, float_ys: which carries are floating
        point, which carries, constants and per-step inputs are differentiated (edge sources), which
        stacked outputs are floating point.
      operands: the shapes and dtypes of the scan's operands (constants, carries, per-step inputs).
      levels: the chain's bracketing (`chain_plan`): per level, innermost first, (b, s): b consecutive
        super-steps of the level below (single iterations at the first) are composed, forward over
        the first s and reverse over the other b - s (`split_muls`); the b's multiply to `length`.
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
    levels: tuple[tuple[int, int], ...] = ()

    @property
    def muls(self) -> int:
        """All multiplications of the loop's partials: the local Jacobians and the chain."""
        return self.length * (self.body_muls + self.inner_muls) + self.chain_muls


def chain_muls(mode: str, length: int, n: int, q: int, carry_columns: int, p: int, m: int) -> int:
    """Multiplications of the chain product across `length` iterations bracketed all forward or all
    reverse (`split_muls` at s = length or s = 0), with float carries of `n` entries, float per-step
    outputs of `q`, differentiated carries of `carry_columns`, constants of `p` and per-step inputs of
    `m` entries.

    Forward: a tangent state d c_k / d(sources) of n x N, N = carry_columns + p + length·m, is
    multiplied by each iteration's carry block (n x n) and read out by its output block (q x n):
    length·(n + q)·n·N. Reverse: an adjoint state d(outputs) / d c_k of M x n, M = n + length·q, is
    multiplied by each iteration's blocks w.r.t. the carry, the constants and the step's inputs:
    length·M·n·(n + p + m).
    """
    return split_muls(length, length if mode == "forward" else 0, n, q, carry_columns, p, m)


def split_muls(length: int, s: int, n: int, q: int, carry_columns: int, p: int, m: int) -> int:
    """Multiplications of one chain over `length` steps (iterations, or super-steps of a level below:
    `chain_plan`) split at step `s`: forward over steps 0..s-1, reverse over s..length-1, meeting at
    the carry c_s. Dimensions per step as for `chain_muls` (carry_columns: the carry's columns, all n
    for a segment inside the loop).

    Forward over the first s steps: a tangent state T of n x (carry_columns + p + s·m), multiplied by
    each step's carry block and read out by its output block, s·(n + q)·n·(carry_columns + p + s·m).
    Reverse over the other r = length - s: an adjoint state W of (n + r·q) x n, multiplied by each
    step's blocks w.r.t. carry, constants and inputs, r·(n + r·q)·n·(n + p + m). Where both run, the
    rows of the second part w.r.t. the sources of the first are W_s·T_s, (n + r·q)·n·(carry_columns +
    p + s·m) more. s = length is the forward chain, s = 0 the reverse one."""
    r = length - s
    columns = carry_columns + p + s * m
    total = s * (n + q) * n * columns + r * (n + r * q) * n * (n + p + m)
    return total + (n + r * q) * n * columns * ((0 < s) & (s < length))  # (s may be an array: `best_split`)


def best_split(length: int, n: int, q: int, carry_columns: int, p: int, m: int) -> tuple[int, int]:
    """(multiplications, s): the cheapest `split_muls` over s = 0..length; on ties forward (s =
    length), then reverse (s = 0), then the smallest s. The cost is a cubic in s, evaluated at every s
    in floating point; the few candidates around its minimum are recounted exactly."""
    k = int(np.argmin(split_muls(length, np.arange(length + 1, dtype=np.float64), n, q, carry_columns, p, m)))
    candidates = [length, 0, *sorted({max(k - 1, 0), k, min(k + 1, length)})]
    return min((split_muls(length, c, n, q, carry_columns, p, m), i, c) for i, c in enumerate(candidates))[::2]


#: A bracketed chain (split or in levels: stored blocks, vmapped scans over runs, the Jacobian
#: assembled per level) is taken over the pure mode only where that mode multiplies at least this many
#: times as much: measured per multiplication against the forward chain, which runs in the scan of
#: the iterations without storing a block, and against the reverse one (stored blocks, one scan). An
#: RNN with fixed 16 x 16 weights, one input and one output per step, batch 256, CPU at load 12 (in
#: one process, /work/notes/loops_dp): L = 128: forward 5,013,504, bracketed 1,339,392 (3.7x fewer):
#: 118 / 190 ms (forward faster), reverse 316 ms; L = 250: 5.6x fewer, 772 / 781 ms, reverse 1,431;
#: L = 256: 5.7x fewer, 776 / 590 ms, reverse 1,389 (jax.jacrev 1,074, the whole loop 1,803).
BRACKETED_ADVANTAGE = {"forward": 5.0, "reverse": 2.0}


def chain_plan(length: int, n: int, q: int, carry_columns: int, p: int,
               m: int) -> tuple[int, tuple[tuple[int, int], ...]]:
    """How the interpreter brackets a loop's chain product: (multiplications, levels), `levels` as in
    `LoopPlan`. The `cheapest_bracketing` where it multiplies at most 1/`BRACKETED_ADVANTAGE` of
    each pure mode (a bracketed multiplication runs slower), else the cheaper of forward and reverse
    (forward on ties). Dimensions as for `chain_muls`."""
    pure = {mode: chain_muls(mode, length, n, q, carry_columns, p, m) for mode in ("forward", "reverse")}
    muls, levels = cheapest_bracketing(length, n, q, carry_columns, p, m)
    if chain_mode(length, levels) == "bracketed" and all(
            muls * BRACKETED_ADVANTAGE[mode] <= count for mode, count in pure.items()):
        return muls, levels
    mode = min(pure, key=pure.get)
    return pure[mode], ((length, length if mode == "forward" else 0),)


@functools.lru_cache(maxsize=256)
def cheapest_bracketing(length: int, n: int, q: int, carry_columns: int, p: int,
                        m: int) -> tuple[int, tuple[tuple[int, int], ...]]:
    """The bracketing of a loop's chain product that multiplies least among those the interpreter
    builds, by dynamic programming: (multiplications, levels), `levels` as in `LoopPlan` (innermost
    first, (b, s) each). Dimensions as for `chain_muls`.

    **What is optimal** (Griewank & Walther, *Evaluating Derivatives*, ch. 9; Naumann's Jacobian chain
    product). Iteration k maps (c_k, C, x_k) to (c_{k+1}, y_k) with local blocks A_k = d c_{k+1}/d c_k
    (n x n), E_k (n x p), B_k (n x m) and GA_k = d y_k/d c_k (q x n), GE_k, GB_k. The loop's Jacobian is
    block lower triangular: d y_j/d x_i = GA_j·A_{j-1}···A_{i+1}·B_i for i < j (semiseparable: rank n
    at most), GB_j for i = j, 0 for i > j. A run of l consecutive iterations is itself an iteration
    (a super-step) with the same carry n, inputs l·m and outputs l·q, and composing a run of l1 with
    the following run of l2 multiplies the later's carry columns (n + l2·q) x n by the earlier's carry
    rows n x (n + p + l1·m): (n + l2·q)·n·(n + p + l1·m). Every bracketing of the chain is a binary
    tree of L - 1 such compositions, and expanding the product, its total is
        q·n·m·Σ l1·l2 + n²·(n + p)·(L - 1) + n²·m·Σ l1 + q·n·(n + p)·Σ l2.
    Σ l1·l2 = L(L - 1)/2 in every tree (each pair of iterations meets at exactly one composition): the
    cross blocks d y_j/d x_i of the output itself, which no bracketing avoids. Only the last two terms
    depend on the tree: a left comb (all forward) has Σ l1 = L(L - 1)/2 and Σ l2 = L - 1, a right comb
    (all reverse) the opposite, a balanced tree Σ l1 ≈ Σ l2 ≈ (L/2)·log2 L. So a mixed bracketing
    saves up to n²·min(m, q·(n + p)/n)·L²/2 against the better pure mode: much where the carry is
    large against the per-step inputs and outputs (n ≫ q, m), little where it is small (n ≪ q, m:
    then q·n·m·L²/2 dominates, and no bracketing beats it).

    **What is built.** Inside a compiled ``lax.scan`` a state has one width, so a chain over a run
    carries all the run's columns (forward) or rows (reverse), zeros of the triangle included. One
    level composes b super-steps forward over the first s and reverse over the rest, meeting at a
    carry block (`split_muls`; s = b and s = 0 are the pure modes); on such full-width states the
    split at s ≈ b/2 already saves a quarter of the cross term where the carry is small. Levels nest:
    L = b_1·b_2···b_T, level t composes runs of b_t super-steps of the level below (a vmap over the
    runs of one chain each) into super-steps of b_1···b_t iterations, whose blocks feed level t + 1
    (inner levels carry all n carry columns, the top one the differentiated carries). With two levels
    of forward chains the cost is about L²·q·n·m + L·b·n²·m + L²·n²·m/b, least at b ≈ √L, against
    L²·(q + n)·n·m all forward. The dynamic programme runs over the divisors of L (the blocks are
    homogeneous, so a level's cost depends only on its run length and the super-step size): f(l), the
    cheapest way to form the super-steps of l iterations, is min over b | l, b > 1, of
    f(l/b) + (L/l)·min_s split_muls(b, s, n, (l/b)·q, n, p, (l/b)·m), f(1) = 0; the plan is min over
    l | L, l < L (or l = 1), of f(l) + min_s split_muls(L/l, s, n, l·q, carry_columns, p, l·m). On
    ties the fewest levels and forward win, so a loop the pure modes serve keeps its plan. Runs are of
    equal length (a prime L gets one level, split or pure). Counts are not times: a bracketed chain's
    multiplication runs slower than a pure mode's, and `chain_plan` takes it only with a margin
    (`BRACKETED_ADVANTAGE`).
    """
    divisors = [d for d in range(1, length + 1) if length % d == 0]
    built: dict[int, tuple[int, tuple[tuple[int, int], ...]]] = {1: (0, ())}
    for size in divisors[1:-1]:
        options = []
        for b in (d for d in divisors if d > 1 and size % d == 0):
            inner = size // b
            muls, s = best_split(b, n, inner * q, n, p, inner * m)
            below = built[inner]
            options.append((below[0] + (length // size) * muls, len(below[1]) + 1, below[1] + ((b, s),)))
        built[size] = min(options)[::2]
    plans = []
    for size in divisors[:-1] or [1]:
        top = length // size
        muls, s = best_split(top, n, size * q, carry_columns, p, size * m)
        plans.append((built[size][0] + muls, len(built[size][1]) + 1, s != top, built[size][1] + ((top, s),)))
    best = min(plans)
    return best[0], best[3]


def bracketing_muls(levels: Sequence[tuple[int, int]], length: int, n: int, q: int, carry_columns: int, p: int,
                    m: int) -> int:
    """Multiplications of the chain product bracketed by `levels` (as in `LoopPlan`; the b's multiply
    to `length`): per level, `split_muls` of each of its runs; inner levels carry all n carry columns."""
    total, size = 0, 1
    for level, (b, s) in enumerate(levels):
        top = level == len(levels) - 1
        total += length // (size * b) * split_muls(b, s, n, size * q, carry_columns if top else n, p, size * m)
        size *= b
    if size != length:
        raise ValueError(f"the levels {tuple(levels)} bracket {size} iterations, not {length}")
    return total


def chain_mode(length: int, levels: Sequence[tuple[int, int]]) -> str:
    """The `LoopPlan.mode` of a chain bracketed by `levels`: "forward" or "reverse" for one level
    that is pure, "bracketed" otherwise."""
    if tuple(levels) == ((length, length),):
        return "forward"
    return "reverse" if tuple(levels) == ((length, 0),) else "bracketed"


def whole_loop_muls(length: int, n: int, q: int, carry_columns: int, p: int, m: int, column: float,
                    row: float) -> float:
    """Estimated multiplications of differentiating the whole loop as JAX does (the dense fallback):
    tangent columns pushed through every iteration (jvp: carry_columns + p + length·m columns, each
    costing `column` per iteration) or cotangent rows pulled back through every iteration (vjp:
    n + length·q rows, each costing `row`), whichever is cheaper. Arguments as for `chain_muls`;
    `column` and `row` are the multiplications of one JVP column and one VJP row of the body
    (`seeded_graph`: every partial of the body times the dense tangent or cotangent it receives,
    the first equations' products with the incoming tangents included)."""
    columns = carry_columns + p + length * m
    rows = n + length * q
    return min(length * columns * column, length * rows * row)


def seeded_graph(g, side: str):
    """`g` with one seed of a single entry added, whose elimination prices one JVP column (side
    "columns") or one VJP row (side "rows") of the function `g` describes, as JAX computes them.

    Columns: a new input s of shape (1, 1), the old inputs as the first vertices, each with a dense
    edge from s (its tangent, of the input's entries); the forward elimination then multiplies every
    partial by the tangent it receives, the first equations' too (the body's own forward elimination
    takes its input edges as they are, free, and exploits their structure: a diagonal input edge
    costs nothing there, the input's entries per column in a JVP). Rows: a new output vertex t of
    shape (1, 1) with a dense edge from every old output (its cotangent), the old outputs
    intermediates; its reverse elimination is one VJP row.
    """
    from alphagrad.graph._graph import Edge, Graph, Vertex

    if side == "columns":
        k = g.num_inputs
        vertices = [Vertex(i + 1, "tangent", shape) for i, shape in enumerate(g.input_shapes)]
        vertices += [Vertex(v.number + k, v.primitive, v.shape, v.source) for v in g.vertices]
        edges = [Edge(e.src + 1, e.dst + 1, e.code, e.out_shape, e.in_shape) for e in g.edges]
        edges += [Edge(1, i + 2, 1, shape, (1, 1)) for i, shape in enumerate(g.input_shapes)]
        return Graph(1, ((1, 1),), tuple(vertices), tuple(edges), tuple(o + k for o in g.outputs), g.cost_model,
                     f"{g.name} (one column)", structures=g.structures,
                     dims=((1, 1), *g.dims) if g.dims else ())
    shapes = {v.number: v.shape for v in g.vertices}
    t = g.num_vertices + 1
    edges = [*g.edges, *(Edge(g.node_id(o), g.node_id(t), 1, (1, 1), shapes[o]) for o in dict.fromkeys(g.outputs))]
    return Graph(g.num_inputs, g.input_shapes, (*g.vertices, Vertex(t, "cotangent", (1, 1))), tuple(edges), (t,),
                 g.cost_model, f"{g.name} (one row)", structures=g.structures,
                 dims=(*g.dims, (1, 1)) if g.dims else ())


#: A scan too long to unroll keeps its loop as a chain product only where that needs at most
#: 1/CHAIN_ADVANTAGE of the multiplications of differentiating the whole loop as JAX does
#: (`whole_loop_muls`): the chain multiplies many small dense blocks and computes each iteration's
#: local Jacobian by elimination, so at equal counts it runs slower. Measured on a 1,000-step RK4
#: Lorenz scan with 3 carries and 3 parameters (chain 227,000 multiplications against the whole
#: loop's 198,000): 1.39 ms per Jacobian by the chain against 0.31 ms for the whole loop's JVPs
#: (jax.jacfwd 0.29 ms) on the CPU, 4x at batch 256; the factor 4 asks the chain to make up for that.
CHAIN_ADVANTAGE = 4.0


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


class Body(NamedTuple):
    """A `scan` body traced as a graph, with what keeping the loop whole would cost (`analyse`).

    Attributes:
      fn: the body as a function of its differentiated operands (`LoopPlan.body`).
      graph: its graph (argnums 0, 1, 2: float carries, differentiated constants and per-step inputs).
      costs: ``graph.cost`` of its graph per classic order (forward, reverse, Markowitz).
      column, row: multiplications of one JVP column and one VJP row of the body (`seeded_graph`).
      inner: multiplications of the partials of loops kept inside the body (`partial_muls`), per iteration.
      dims: the loop's dimensions, the keyword arguments of `chain_muls` and `whole_loop_muls`.
      float_carries, carry_sources, const_sources, x_sources, float_ys: as in `LoopPlan`.
      operands: the shapes and dtypes of the scan's operands.
    """

    fn: Callable
    graph: Any
    costs: Mapping[str, int]
    column: int
    row: int
    inner: int
    dims: Mapping[str, int]
    float_carries: tuple[int, ...]
    carry_sources: tuple[int, ...]
    const_sources: tuple[int, ...]
    x_sources: tuple[int, ...]
    float_ys: tuple[int, ...]
    operands: tuple[jax.ShapeDtypeStruct, ...]

    def chain(self) -> tuple[int, tuple[tuple[int, int], ...]]:
        """`chain_plan`: the chain product's cheapest bracketing, (multiplications, levels)."""
        return chain_plan(**self.dims)

    def chain_total(self) -> int:
        """Multiplications of the loop's partials as a chain product (`LoopPlan.muls`): the local
        Jacobians and the chain bracketed by `chain_plan`."""
        return self.dims["length"] * (min(self.costs.values()) + self.inner) + self.chain()[0]

    def whole_loop(self) -> float:
        """`whole_loop_muls`: JAX's differentiation of the whole loop, one JVP column or VJP row of the
        body per iteration and column or row (a loop kept inside the body is one dense vertex there:
        JAX pushes each tangent through it, priced by its dense partial)."""
        return whole_loop_muls(column=self.column, row=self.row, **self.dims)

    def kept_muls(self) -> float:
        """What the loop's partials cost kept whole, in multiplications of JAX's whole-loop
        differentiation: `whole_loop`, or the chain's count times `CHAIN_ADVANTAGE` (a chain's
        multiplication runs that much slower) where `loop_plan` takes the chain."""
        return min(self.chain_total() * CHAIN_ADVANTAGE, self.whole_loop())


def analyse(eqn, sources: Sequence[bool]) -> Body | None:
    """The body of a `scan` equation whose operands at `sources` have edges to its outputs, traced
    once (exact cost model); None when it has no such operand, no floating-point output or no
    iteration (then its outputs have no partials to compute)."""
    from alphagrad.graph._orders import CLASSIC_ORDERS, cost
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

    def size(avals_, indices, drop_leading=False):
        return sum(math.prod(avals_[i].shape[1:] if drop_leading else avals_[i].shape) for i in indices)

    dims = dict(length=length, n=size(carry_avals, float_carries), q=size(y_avals, float_ys, True),
                carry_columns=size(carry_avals, carry_sources), p=size(const_avals, const_sources),
                m=size(x_avals, x_sources, True))
    return Body(fn, body_graph, {name: cost(body_graph, name) for name in CLASSIC_ORDERS},
                cost(seeded_graph(body_graph, "columns"), "forward"), cost(seeded_graph(body_graph, "rows"), "reverse"),
                partial_muls(body_graph),
                dims, float_carries, carry_sources, const_sources, x_sources, float_ys, tuple(map(_spec, avals)))


def loop_plan(eqn, sources: Sequence[bool], body: Body | None = None) -> LoopPlan | None:
    """The plan of a `scan` equation kept as a loop, whose operands at `sources` have edges to its
    outputs; None when it has no such operand, no floating-point output or no iteration (then no
    partial is computed). Where the chain does not pay, its mode is "whole": JAX's differentiation
    of the whole loop computes its partials (the dense fallback, by JVP columns or VJP rows), on a
    body whose small sums the interpreter writes out as adds, and it
    multiplies nothing counted (`LoopPlan.muls` 0). `body`: its `analyse`, if done."""
    from alphagrad.graph._orders import resolve_order

    body = body if body is not None else analyse(eqn, sources)
    if body is None:
        return None
    best = min(body.costs, key=body.costs.get)
    chain, levels = body.chain()  # forward on ties
    if body.chain_total() * CHAIN_ADVANTAGE > body.whole_loop():
        # JAX's own differentiation of the whole loop, of a body with its small sums written out
        # (`interpreter._loops`), outside the count like every dense partial
        return LoopPlan(body.fn, (), 0, 0, "whole", 0, body.dims["length"], body.float_carries, body.carry_sources,
                        body.const_sources, body.x_sources, body.float_ys, body.operands)
    length = body.dims["length"]
    return LoopPlan(body.fn, tuple(resolve_order(body.graph, best)), body.costs[best], body.inner,
                    chain_mode(length, levels), chain, length, body.float_carries, body.carry_sources,
                    body.const_sources, body.x_sources, body.float_ys, body.operands, levels)


#: A scan that `fits` is unrolled where its unrolled graph's cheapest classic elimination costs at
#: most UNROLL_ADVANTAGE times what its partials cost kept whole (`Body.kept_muls`). 1/4: measured
#: (module docstring): on the CPU an unrolled elimination's multiplication runs up to about 3x
#: slower than one of JAX's fused tangents through the whole loop (rk_two_carries: 201 against 648
#: multiplications, 2x slower unrolled); power_iteration at 205 against 1,088 ran 2.2x faster
#: unrolled. (``math.inf`` unrolls every scan that fits, 0 keeps every one with sources.)
UNROLL_ADVANTAGE = 0.25


#: Set by `unrolled_graph` for the trace of one scan alone: that scan is unrolled (asking `unrolls`
#: again would trace it again, endlessly).
_UNROLL_NEXT: contextvars.ContextVar[bool] = contextvars.ContextVar("alphagrad_unroll_next", default=False)


def unrolled_graph(eqn, inputs: Sequence[Any], constants: Sequence[Any], live: Sequence[bool]):
    """The graph of the `scan` equation `eqn` alone, unrolled (exact cost model).

    Args:
      eqn: the scan equation.
      inputs: per operand, a key (the outer graph's node) where it is differentiated, else None;
        operands with the same key are one input of the graph (its edges add up as in the outer one).
      constants: per operand, its value where it is known at trace time (folded as the outer trace
        folds it: a loop counter's start, constant per-step inputs), else None.
      live: per output of the scan, whether anything reads it (an output nothing reads is a vertex
        whose Jacobian no elimination forms, in the outer graph as here).

    Returns:
      A graph whose inputs are the distinct keys (in order of first appearance) and whose outputs
      are the scan's live outputs; the other operands are arguments that are not differentiated.
    """
    from alphagrad.graph._trace import trace

    avals = [v.aval for v in eqn.invars]
    keys = list(dict.fromkeys(k for k in inputs if k is not None))
    others = [i for i, (k, c) in enumerate(zip(inputs, constants)) if k is None and c is None]
    first = {k: inputs.index(k) for k in keys}

    def scan_alone(differentiated, abstract):
        values = [None if c is None else jnp.asarray(c, a.dtype) for c, a in zip(constants, avals)]
        for i, k in enumerate(inputs):
            if k is not None:
                values[i] = differentiated[keys.index(k)]
        for i, v in zip(others, abstract):
            values[i] = v
        outs = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
        return [out for out, used in zip(outs, live) if used]

    token = _UNROLL_NEXT.set(True)  # this scan, the first its trace meets, is unrolled without asking
    try:
        return trace(scan_alone, tuple(_spec(avals[first[k]]) for k in keys),
                     tuple(_spec(avals[i]) for i in others), argnums=0, cost_model="exact", name="unrolled scan")
    finally:
        _UNROLL_NEXT.reset(token)


def unrolled_muls(eqn, inputs: Sequence[Any], constants: Sequence[Any], live: Sequence[bool]) -> int:
    """The cheapest classic elimination (forward, reverse, Markowitz) of `unrolled_graph`, plus the
    partials of the loops kept inside it (`partial_muls`)."""
    from alphagrad.graph._orders import CLASSIC_ORDERS, cost

    g = unrolled_graph(eqn, inputs, constants, live)
    return min(cost(g, name) for name in CLASSIC_ORDERS) + partial_muls(g)


#: Whether a scan with no floating-point output that reads values known only at run time is
#: unrolled (False: kept as one equation without vertices; its constant-only cousins still fold).
UNROLL_WITHOUT_DERIVATIVE = False


def unrolls(eqn, inlined: Mapping[str, str], inputs: Sequence[Any], constants: Sequence[Any],
            live: Sequence[bool]) -> tuple[bool, Body | None]:
    """Whether the trace unrolls the `scan` equation `eqn` (arguments as for `unrolled_graph`), and
    the `analyse` of its body where it was made (for `loop_plan` when the loop is kept).

    It is unrolled where it `fits` and its unrolled graph's cheapest classic elimination costs at
    most `UNROLL_ADVANTAGE` times its partials kept whole (`Body.kept_muls`); one without a
    differentiated operand or floating-point output (no partials either way) is unrolled where it
    fits, except one without a floating-point output that reads a value known only at run time
    (`UNROLL_WITHOUT_DERIVATIVE`): that one is kept whole, an equation without vertices.
    """
    if not fits(eqn, inlined):
        return False, None
    if (not UNROLL_WITHOUT_DERIVATIVE and not any(_floating(v.aval) for v in eqn.outvars)
            and any(c is None for c in constants)):
        # Integers or booleans out of values known only at run time (jnp.searchsorted's binary
        # search): no derivative passes, and unrolled, every step of every such loop would be
        # several more XLA operations to compile.
        return False, None
    if _UNROLL_NEXT.get():
        _UNROLL_NEXT.set(False)  # the scans inside its body are decided as everywhere
        return True, None
    body = analyse(eqn, [k is not None for k in inputs])
    if body is None:
        return True, None
    if UNROLL_ADVANTAGE == math.inf:
        return True, body
    return unrolled_muls(eqn, inputs, constants, live) <= UNROLL_ADVANTAGE * body.kept_muls(), body


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


# ---- per-step outputs summed after the loop ----------------------------------------------------

#: A scan's stacked output read only by a sum over its steps is folded into the loop (`fold_step_sums`)
#: where its partial with respect to the per-step inputs, L·q x L·m entries for L iterations, q
#: entries of the output and m of the inputs per step, would have at least this many entries.
FOLD_STEP_SUMS_MIN_ENTRIES = 2**22


#: Elementwise primitives that may stand between a stacked output and the sum over its steps
#: (``jnp.sum(0.5 * ys ** 2)``): applied to each step's output inside the loop instead.
_STEPWISE_UNARY = frozenset(
    "neg abs exp exp2 log log1p expm1 sin cos tan tanh sinh cosh logistic sqrt rsqrt cbrt "
    "integer_pow square erf".split())
_STEPWISE_BINARY = frozenset("add sub mul div max min pow".split())


class _Fold(NamedTuple):
    """A stacked output of a scan summed over its steps: the elementwise equations between them
    (in order), each with the position of the value the chain carries, and the sum's index; or
    read by nothing (no chain, reader None: dropped)."""
    chain: tuple[tuple[int, int], ...]
    reader: int | None


def _step_sum_folds(jaxpr: Jaxpr) -> dict[int, dict[int, _Fold]]:
    """{scan equation index: {stacked output j: its `_Fold`}} for the scans of `jaxpr` (top level)
    whose partials would be large and whose stacked output j nothing reads, or only an elementwise
    chain of `_STEPWISE_UNARY` equations and `_STEPWISE_BINARY` ones with a literal, or a scalar or
    an array of the stacked shape defined before the scan (data per step: ``ys - target``), each
    read once, and then a sum over the step axis."""
    large = [i for i, eqn in enumerate(jaxpr.eqns) if eqn.primitive.name == "scan" and _block_entries(
        eqn, max((math.prod(y.aval.shape[1:]) for y in eqn.outvars[eqn.params["num_carry"]:] if _floating(y.aval)),
                 default=0)) > 0]
    if not large:  # the common case: no scan's block can reach the threshold
        return {}
    uses: dict[Any, list[tuple[int, int]]] = {}
    defined: dict[Any, int] = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for position, v in enumerate(eqn.invars):
            if not isinstance(v, Literal):
                uses.setdefault(v, []).append((i, position))
        for v in eqn.outvars:
            defined[v] = i
    returned = {v for v in jaxpr.outvars if not isinstance(v, Literal)}
    folds: dict[int, dict[int, _Fold]] = {}
    for i in large:
        eqn = jaxpr.eqns[i]
        num_carry = eqn.params["num_carry"]
        for j, y in enumerate(eqn.outvars[num_carry:]):
            if not _floating(y.aval) or _block_entries(eqn, math.prod(y.aval.shape[1:])) == 0:
                continue
            if isinstance(y, DropVar) or (not uses.get(y) and y not in returned):  # read by nothing: dropped
                folds.setdefault(i, {})[j] = _Fold((), None)
                continue
            chain, v = [], y
            while True:
                readers = uses.get(v, [])
                if v in returned or len(readers) != 1:
                    break
                reader, position = readers[0]
                r = jaxpr.eqns[reader]
                name = r.primitive.name
                if name == "reduce_sum" and 0 in r.params["axes"]:
                    folds.setdefault(i, {})[j] = _Fold(tuple(chain), reader)
                    break
                others = [w for k, w in enumerate(r.invars) if k != position]
                stepwise = name in _STEPWISE_UNARY or (name in _STEPWISE_BINARY and all(
                    isinstance(w, Literal) or (w.aval.shape in ((), v.aval.shape) and defined.get(w, -1) < i)
                    for w in others))
                if not stepwise or len(r.outvars) != 1 or r.outvars[0].aval.shape != v.aval.shape:
                    break
                chain.append((reader, position))
                v = r.outvars[0]
    return folds


def _block_entries(eqn: JaxprEqn, per_step: int) -> int:
    """Entries of scan `eqn`'s partial of a stacked output of `per_step` entries a step with
    respect to its floating-point per-step inputs, or 0 below FOLD_STEP_SUMS_MIN_ENTRIES."""
    num_consts, num_carry, length = eqn.params["num_consts"], eqn.params["num_carry"], eqn.params["length"]
    xs_entries = sum(math.prod(v.aval.shape[1:]) for v in eqn.invars[num_consts + num_carry:] if _floating(v.aval))
    entries = length * per_step * length * xs_entries
    return entries if entries >= FOLD_STEP_SUMS_MIN_ENTRIES else 0


#: Calls whose bodies `fold_step_sums` folds as well (the graph inlines them).
_FOLDED_CALLS = frozenset({"jit", "pjit"})


def fold_step_sums(closed: ClosedJaxpr) -> ClosedJaxpr:
    """`closed` with each large scan's stacked output that only a sum over the steps reads
    (``jnp.sum(ys)``) accumulated in an extra carry instead (the same sum, added in step order),
    and each one that nothing reads (``lax.scan(...)[0]``) dropped.

    Kept as a loop, a scan is one vertex whose partial of a stacked output with respect to the
    stacked per-step inputs is block lower-triangular, L·q x L·m for L steps (a 10,000-step scan
    with 2 inputs per step: 1.6 GB in float64, and gigabytes more in the copies around it), where
    the Jacobian of the sum is one row per entry. Accumulated, the output is a carry: its partials
    are the carry's, q x L·m. At the top level and in jitted calls' bodies; scans whose partial
    would have fewer than FOLD_STEP_SUMS_MIN_ENTRIES entries are left as they are."""
    jaxpr = closed.jaxpr
    folds = _step_sum_folds(jaxpr)
    # A jitted function's body (a call the graph inlines anyway) is folded too.
    calls = {}
    for i, eqn in enumerate(jaxpr.eqns):
        if eqn.primitive.name in _FOLDED_CALLS and isinstance(eqn.params.get("jaxpr"), ClosedJaxpr):
            inner = fold_step_sums(eqn.params["jaxpr"])
            if inner is not eqn.params["jaxpr"]:
                calls[i] = eqn.replace(params={**eqn.params, "jaxpr": inner})
    if not folds and not calls:
        return closed
    replaced = {k for per_scan in folds.values() for fold in per_scan.values()
                for k in (*(e for e, _ in fold.chain), fold.reader) if k is not None}

    def run(*args):
        env: dict[Any, Any] = {}

        def read(v):
            return v.val if isinstance(v, Literal) else env[v]

        for v, a in zip(jaxpr.constvars, closed.consts):
            env[v] = a
        for v, a in zip(jaxpr.invars, args):
            env[v] = a
        for i, eqn in enumerate(jaxpr.eqns):
            if i in replaced:
                continue
            invals = [read(v) for v in eqn.invars]
            if i in calls:
                outvals = _bind(calls[i], invals)
            elif i in folds:
                outvals, sums = _folded_scan(eqn, invals, folds[i], jaxpr.eqns, read)
                for reader, total in sums.items():
                    env[jaxpr.eqns[reader].outvars[0]] = total
            else:
                outvals = _bind(eqn, invals)
            for v, val in zip(eqn.outvars, outvals):
                if not isinstance(v, DropVar):
                    env[v] = val
        return [read(v) for v in jaxpr.outvars]

    return jax.make_jaxpr(run)(*(jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in jaxpr.invars))


def _bind(eqn: JaxprEqn, operands: Sequence[Any]) -> list[Any]:
    """The outputs of `eqn`'s primitive applied to `operands`, as jax.core.eval_jaxpr binds it."""
    result = eqn.primitive.bind(*operands, **eqn.primitive.get_bind_params(eqn.params))
    return list(result) if eqn.primitive.multiple_results else [result]


def _folded_scan(eqn: JaxprEqn, invals: list[Any], folded: dict[int, _Fold], eqns,
                 read: Callable[[Any], Any]) -> tuple[list[Any], dict[int, Any]]:
    """The outputs of scan `eqn` at `invals` (None for the stacked outputs in `folded`), and per
    equation index of a sum that read one of those, its value: each step's output through its
    chain, accumulated in an extra carry (`fold_step_sums`). `read` gives the chain's other operands."""
    params = eqn.params
    num_consts, num_carry = params["num_consts"], params["num_carry"]
    body = params["jaxpr"]
    consts, carry0, xs = invals[:num_consts], invals[num_consts:num_consts + num_carry], invals[num_consts + num_carry:]
    num_ys = len(eqn.outvars) - num_carry
    order = sorted(j for j, fold in folded.items() if fold.reader is not None)
    step_axes = {j: tuple(a - 1 for a in eqns[folded[j].reader].params["axes"] if a != 0) for j in order}
    # The chains' other operands: literals and scalars as they are, arrays of the stacked shape
    # as extra per-step inputs of the loop (an int: the index of that input).
    stepped: list[Any] = []
    others: dict[int, list[list[Any]]] = {}
    for j in order:
        others[j] = []
        for e, position in folded[j].chain:
            row = []
            for k, w in enumerate(eqns[e].invars):
                if k == position:
                    continue
                if isinstance(w, Literal) or w.aval.shape == ():
                    row.append((read(w),))
                else:
                    row.append(len(stepped))
                    stepped.append(read(w))
            others[j].append(row)

    def through_chain(j, value, extra):
        for (e, position), row in zip(folded[j].chain, others[j]):
            operands = [extra[w] if isinstance(w, int) else w[0] for w in row]
            operands.insert(position, value)
            value = _bind(eqns[e], operands)[0]
        return value

    def step(state, x):
        carry, sums = state
        x, extra = x[:len(xs)], x[len(xs):]
        outs = jax.core.eval_jaxpr(body.jaxpr, body.consts, *consts, *carry, *x)
        ys = outs[num_carry:]
        sums = [s + jnp.sum(through_chain(j, ys[j], extra), axis=step_axes[j]).astype(s.dtype)
                for s, j in zip(sums, order)]
        return (outs[:num_carry], sums), [y for j, y in enumerate(ys) if j not in folded]

    zeros = []
    for j in order:
        result = eqns[folded[j].reader].outvars[0].aval
        zeros.append(jnp.zeros(result.shape, result.dtype))
    (carry, sums), rest = jax.lax.scan(step, (list(carry0), zeros), [*xs, *stepped], length=params["length"],
                                       reverse=params["reverse"], unroll=params["unroll"])
    rest = iter(rest)
    outvals = list(carry) + [None if j in folded else next(rest) for j in range(num_ys)]
    return outvals, {folded[j].reader: total for j, total in zip(order, sums)}


# ---- large spans: a scan or a huge dense partial fused with what feeds and reads its large values ----

#: The name (``DebugInfo.traced_for``) of the calls `fuse_large_spans` makes: the graph keeps them as
#: one vertex (it inlines other calls).
LARGE_SPAN = "alphagrad large span"


def span_call(span: Sequence[JaxprEqn], read_after: Callable[[Any], bool], label: str) -> JaxprEqn | None:
    """One `closed_call` equation running the contiguous equations `span`: from the values they
    read and do not compute to those they compute that `read_after` says are read after them (None
    where there are none), its body named `label` (``DebugInfo.traced_for``), so that the graph
    can tell the calls it keeps whole (a span of complex arithmetic, a large span) from those it
    inlines."""
    inside = {v for e in span for v in e.outvars}
    invars = list(dict.fromkeys(v for e in span for v in e.invars if not isinstance(v, Literal) and v not in inside))
    outvars = [v for e in span for v in e.outvars if not isinstance(v, DropVar) and read_after(v)]
    if not outvars:
        return None
    effects = frozenset().union(*(e.effects for e in span))
    names = DebugInfo(label, None, tuple(f"in{k}" for k in range(len(invars))),
                      tuple(f"out{k}" for k in range(len(outvars))))
    body = ClosedJaxpr(Jaxpr([], invars, outvars, list(span), effects, names), [])
    return new_jaxpr_eqn(invars, outvars, closed_call_p, {"call_jaxpr": body}, effects, span[0].source_info)


def is_large_span(eqn: JaxprEqn) -> bool:
    """Whether `eqn` is a call made by `fuse_large_spans` (kept whole by the graph, not inlined)."""
    if eqn.primitive is not closed_call_p:
        return False
    info = getattr(eqn.params["call_jaxpr"].jaxpr, "debug_info", None)
    return getattr(info, "traced_for", None) == LARGE_SPAN


def _depends_on_inputs(jaxpr: Jaxpr) -> set:
    """The variables of `jaxpr` computed (at any distance) from its inputs."""
    reached = set(jaxpr.invars)
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, Literal) and v in reached for v in eqn.invars):
            reached.update(eqn.outvars)
    return reached


def _large_stacked_partial(eqn: JaxprEqn, reached: set, read: set) -> bool:
    """Whether scan `eqn` would be a vertex whose partial of a stacked output something reads with
    respect to its per-step inputs computed from the function's inputs has at least
    FOLD_STEP_SUMS_MIN_ENTRIES entries (L·q x L·m)."""
    num_consts, num_carry, length = eqn.params["num_consts"], eqn.params["num_carry"], eqn.params["length"]
    per_step_in = sum(math.prod(v.aval.shape[1:]) for v in eqn.invars[num_consts + num_carry:]
                      if not isinstance(v, Literal) and _floating(v.aval) and v in reached)
    per_step_out = sum(math.prod(v.aval.shape[1:]) for v in eqn.outvars[num_carry:]
                       if not isinstance(v, DropVar) and _floating(v.aval) and v in read)
    return per_step_out * per_step_in > 0 and length * per_step_out * length * per_step_in >= FOLD_STEP_SUMS_MIN_ENTRIES


#: An equation other than a scan starts a span (`fuse_large_spans`) where its partial of an output with
#: respect to an operand would hold at least this many values (32 MB in float64).
DENSE_SPAN_MIN_ENTRIES = 2**22


def _large_dense_partial(eqn: JaxprEqn, reached: set, read: set) -> int | None:
    """For an equation (not a scan) whose partial of an output something reads with respect to an
    operand computed from the function's inputs would hold at least DENSE_SPAN_MIN_ENTRIES values
    (a dense partial, or one dense along an axis: ``jnp.cumprod``, a convolution of a long signal, a
    Cholesky factor of a 120 x 120 matrix, a while loop over a large state), the smaller of that
    output's and that operand's entries; else None."""
    floor = None
    operands = [(i, v) for i, v in enumerate(eqn.invars)
                if not isinstance(v, Literal) and _floating(v.aval) and v in reached]
    for k, out in enumerate(eqn.outvars):
        if isinstance(out, DropVar) or out not in read or not _floating(out.aval):
            continue
        out_entries = math.prod(out.aval.shape)
        candidates = [(i, v) for i, v in operands if out_entries * math.prod(v.aval.shape) >= DENSE_SPAN_MIN_ENTRIES]
        if not candidates:
            continue
        in_shapes = [tuple(getattr(v.aval, "shape", ())) for v in eqn.invars]
        try:
            codes = _rules.edge_codes(eqn.primitive.name, in_shapes, tuple(out.aval.shape), eqn.params,
                                      [any(i == j for j, _ in operands) for i in range(len(eqn.invars))],
                                      model="exact", output=k)
        except Exception:  # noqa: BLE001 - the graph builder reports what it cannot take, not this pass
            continue
        v1, v2 = _rules.normalise(out.aval.shape)
        for i, v in candidates:
            code = codes.get(i, 0)
            if code in (0, _structure.INDEX_MAP) or code in _structure.VALUELESS:
                continue
            p1, p2 = _rules.normalise(v.aval.shape)
            sizes = {1: v1, 2: v2, 3: p1, 4: p2}
            if math.prod(sizes[a] for a in _structure.structure_of(code).value_axes) >= DENSE_SPAN_MIN_ENTRIES:
                entries = min(out_entries, math.prod(v.aval.shape))
                floor = entries if floor is None else min(floor, entries)
    return floor


def _inner_dense_floor(call: JaxprEqn, inlined: Mapping[str, str]) -> int | None:
    """The smallest floor (`_large_dense_partial`) of the equations inside a call the graph inlines
    (``jnp.cumprod`` and ``jnp.convolve`` are jitted functions), nested calls included; None where
    none would start a span (``jnp.roll``: slices and a concatenation)."""
    body = call.params[inlined[call.primitive.name]]
    body = body.jaxpr if isinstance(body, ClosedJaxpr) else body
    reached = _depends_on_inputs(body)
    read = {v for e in body.eqns for v in e.invars if not isinstance(v, Literal)}
    read.update(v for v in body.outvars if not isinstance(v, Literal))
    floors = [_inner_dense_floor(e, inlined) if e.primitive.name in inlined else _large_dense_partial(e, reached, read)
              for e in body.eqns if e.primitive.name != "scan"]
    return min((f for f in floors if f is not None), default=None)


def fuse_large_spans(jaxpr: Jaxpr, inlined: Mapping[str, str]) -> Jaxpr:
    """`jaxpr` with each equation whose partial would be too large to hold fused with the equations
    around it into one call that the graph keeps as a single dense vertex (`is_large_span`).

    Two kinds of equation start a span (a *seed*), each where its partial would hold at least
    FOLD_STEP_SUMS_MIN_ENTRIES (scans) or DENSE_SPAN_MIN_ENTRIES (others) values:

    - a scan whose stacked outputs are read after it (and not only summed over the steps:
      `fold_step_sums` folds those): kept as a loop vertex, its partial of the stacked outputs with
      respect to its stacked per-step inputs is L·q x L·m entries (a 10,000-step scan with one
      input and one output per step: 800 MB in float64, and several copies), even where what reads
      them is small (``ys @ w``, ``jnp.max(ys)``, ``ys[::100]``) and the per-step inputs are computed
      from a few parameters (a forcing ``jnp.sin(omega * ts)``); the span's floor is L;
    - any other equation with a dense partial (or one dense along an axis) between large arrays:
      ``jnp.cumprod`` or a convolution of a 65,536-entry signal (a 32-64 GB partial where
      jax.jacrev runs one VJP), a Cholesky factor of a 120 x 120 matrix; the floor is the smaller of
      the two arrays' entries.

    The span runs from the first equation that computes a value of at least floor entries the span
    reads to the last one that reads a value of at least floor entries the span computes (a
    contiguous range, grown to a fixed point), so that only values of fewer entries, the
    function's inputs and its outputs cross its border; its partials, JAX's differentiation of the
    span by rows or columns (whichever side is smaller, the interpreter's dense fallback), then
    have as many entries as those borders allow. A seed whose span would be itself alone (its
    large values are the function's inputs or outputs) is left as it is. A call the graph inlines
    (`inlined`: jit, checkpoint, ... bodies) is a seed where an equation inside it would be one
    (`_inner_dense_floor`), never for its own sake."""
    eqns = list(jaxpr.eqns)
    # The cheap test first: an equation between arrays whose sizes multiply to the threshold.
    candidates = [i for i, e in enumerate(eqns) if e.primitive.name == "scan" or (
        max((math.prod(getattr(v.aval, "shape", ())) for v in e.outvars if not isinstance(v, DropVar)), default=0)
        * max((math.prod(getattr(v.aval, "shape", ())) for v in e.invars), default=0)
        >= DENSE_SPAN_MIN_ENTRIES)]
    if not candidates:
        return jaxpr
    reached = _depends_on_inputs(jaxpr)
    read = {v for e in eqns for v in e.invars if not isinstance(v, Literal)}
    read.update(v for v in jaxpr.outvars if not isinstance(v, Literal))
    floors: dict[int, int] = {}
    for i in candidates:
        if eqns[i].primitive.name == "scan":
            if _large_stacked_partial(eqns[i], reached, read):
                floors[i] = eqns[i].params["length"]
        else:
            floor = (_inner_dense_floor(eqns[i], inlined) if eqns[i].primitive.name in inlined
                     else _large_dense_partial(eqns[i], reached, read))
            if floor is not None:
                floors[i] = floor
    large = sorted(floors)
    if not large:
        return jaxpr
    defined = {v: i for i, e in enumerate(eqns) for v in e.outvars if not isinstance(v, DropVar)}
    last_use: dict[Any, int] = {}
    for i, e in enumerate(eqns):
        for v in e.invars:
            if not isinstance(v, Literal):
                last_use[v] = i
    returned = {v for v in jaxpr.outvars if not isinstance(v, Literal)}
    spans: list[tuple[int, int]] = []
    for i in large:
        if spans and i <= spans[-1][1]:
            continue  # inside the previous span
        floor = floors[i]

        def big(v) -> bool:
            return not isinstance(v, (Literal, DropVar)) and math.prod(v.aval.shape) >= floor

        start, end, grown = i, i, True
        while grown:
            grown = False
            for e in eqns[start:end + 1]:
                for v in e.invars:
                    if big(v) and defined.get(v, start) < start:
                        start, grown = defined[v], True
                for v in e.outvars:
                    if big(v) and v not in returned and last_use.get(v, end) > end:
                        end, grown = last_use[v], True
        if spans and start <= spans[-1][1]:
            start = spans[-1][0]
            spans.pop()
        if start < end:
            spans.append((start, end))
    if not spans:
        return jaxpr
    fused_eqns: list[JaxprEqn] = []
    at = 0
    for start, end in spans:
        fused_eqns.extend(eqns[at:start])
        call = span_call(eqns[start:end + 1], lambda v: last_use.get(v, -1) > end or v in returned, LARGE_SPAN)
        fused_eqns.extend(eqns[start:end + 1] if call is None else [call])
        at = end + 1
    fused_eqns.extend(eqns[at:])
    return jaxpr.replace(eqns=fused_eqns)


#: A kept loop is fused with its narrow tail (`narrow_tail_span`) where the loop's partial would
#: otherwise be built by columns and the tail's output entries are at most 1/COLUMNS_PER_ROW of
#: those columns: a VJP row runs the primal, stores its residuals and runs the transpose, several
#: JVP columns' work on a small body (welford_scan: 12 rows against 36 columns ran 1.8x slower,
#: lqr_riccati_scan: 1 row against 15 columns 6x faster).
COLUMNS_PER_ROW = 8


def float_entries(atoms) -> int:
    """The floating-point entries of the variables among `atoms` (literals and dropped ones aside)."""
    return sum(math.prod(getattr(v.aval, "shape", ())) for v in atoms
               if not isinstance(v, (Literal, DropVar)) and _floating(v.aval))


def tail_may_be_narrow(loop: JaxprEqn, least_exit: int | None, differentiated: Callable[[Any], bool]) -> bool:
    """Whether `narrow_tail_span` may fuse the kept loop `loop` with its tail, `least_exit` being the
    fewest float entries of any value the walked jaxpr returns (None: it returns none): its tail's
    width is at least that, and the narrowness it needs falls with the width. Checked before the
    tail is walked, which takes each kept loop through the rest of the program (a chain of 300
    small loops at 10,000 equations: 2.2 of its 5.5 tracing CPU-seconds)."""
    if least_exit is None:
        return False
    rows = float_entries([v for v in loop.outvars if not isinstance(v, DropVar)])
    columns = float_entries([v for v in loop.invars if not isinstance(v, Literal) and differentiated(v)])
    loop_by_rows = rows * columns > 8 and 2 * rows < columns
    return least_exit < rows if loop_by_rows else least_exit * COLUMNS_PER_ROW <= columns


def narrow_tail_span(eqns: Sequence[JaxprEqn], k: int, returned: Callable[[Any], bool | None],
                     differentiated: Callable[[Any], bool]) -> tuple[JaxprEqn, list[int]] | None:
    """The kept loop `eqns[k]` (a scan the trace does not unroll, or a while loop; or a large span
    `fuse_large_spans` made: a CNN's layers before its loss) fused with the equations that read its
    values (at any distance: its descendants) into one large-span call, where what they return is
    narrow; else None.

    The loop's values reach only `returned` values (f's own outputs that nothing else reads:
    `returned(v)` is True; None for a value that is not returned, False for a returned value that
    something else reads or that is not f's output), of W float entries in all, and W is smaller
    than the rows the loop's dense partial would have: fewer than its output entries R where it
    would be built by rows, at most 1/COLUMNS_PER_ROW of its differentiated operand entries N where
    by columns; the span's own partial is then built by W VJP rows (at least twice fewer than the
    span's differentiated operand entries), for a scalar f one cotangent through the tail and the
    loop, as jax.jacrev, where the loop vertex alone had its full R x N partial multiplied by the
    output's adjoint. The span is an ordinary dense vertex: its products are counted as any.

    Args:
      eqns: the equations of the jaxpr being walked, from the loop on or all of them.
      k: the loop's index in `eqns`.
      returned: as above, per variable.
      differentiated: whether a variable read by the span gets an edge (computed from f's
        differentiated inputs).

    Returns:
      (the call, the indices in `eqns` of the equations it replaces, the loop's first); the call
      may stand where the last of them stood or anywhere after: nothing outside them reads their values.
    """
    loop = eqns[k]
    outs = [v for v in loop.outvars if not isinstance(v, DropVar)]
    if any(returned(v) is not None for v in outs):
        return None  # a loop value that is f's output: the tail cannot be narrower
    reached = set(outs)
    members = [k]
    for i in range(k + 1, len(eqns)):
        if any(not isinstance(v, Literal) and v in reached for v in eqns[i].invars):
            members.append(i)
            reached.update(v for v in eqns[i].outvars if not isinstance(v, DropVar))
    if len(members) == 1:
        return None
    span = [eqns[i] for i in members]
    computed = [v for e in span for v in e.outvars if not isinstance(v, DropVar)]
    exits = [v for v in computed if returned(v) is not None]
    if not exits or not all(returned(v) for v in exits):
        return None
    width = float_entries(exits)
    rows = float_entries(outs)
    columns = float_entries([v for v in loop.invars if not isinstance(v, Literal) and differentiated(v)])
    inside = set(computed)
    read = dict.fromkeys(v for e in span for v in e.invars if not isinstance(v, Literal) and v not in inside)
    span_columns = float_entries([v for v in read if differentiated(v)])
    loop_by_rows = rows * columns > 8 and 2 * rows < columns
    narrow = width < rows if loop_by_rows else width * COLUMNS_PER_ROW <= columns
    if width == 0 or not narrow or 2 * width >= span_columns:
        return None
    exit_set = set(exits)
    call = span_call(span, lambda v: v in exit_set, LARGE_SPAN)
    return None if call is None else (call, members)
