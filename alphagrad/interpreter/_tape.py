"""The tape interpreter: Jacobians of long straight-line programs as a few compact XLA loops.

The straight-line interpreter (`_jacobian._eliminate_all`) emits one XLA operation per equation,
per partial and per product. XLA's compile time and memory grow about quadratically with the
number of such tiny operations, so past a thousand equations it (like ``jax.jacrev``) no longer
compiles in reasonable time. Here the program and the elimination plan become integer arrays
("tapes") that two `lax.scan` loops execute; what XLA compiles is the loop bodies, whose size does
not grow with the number of equations:

1. **Primal and partials.** A value buffer ``vals[num_value_slots]`` holds every scalar
   *component* of the program: the flattened arguments it reads, its constants and every vertex
   (arrays of up to `MAX_COMPONENTS` entries, flattened). One scan step per equation gathers the
   components of its operands (``ops[K]``), and a `lax.switch` over the program's distinct
   equation *kinds* (one branch per (primitive, params, operand avals, partial layouts)
   signature) computes the output components and the partials with respect to each source node
   (JVPs of the equation, one seed per index of the operand's untied positions, as the
   straight-line path computes them; evaluating partials is not counted by the cost model). Each
   partial is stored in its code's *value array* (a diagonal, a Kronecker factor, dense...),
   flattened. Two `dynamic_update_slice`\\ s write outputs and partials into ``vals`` and the edge
   buffer ``edges[num_edge_slots]``. The branches return only these small arrays, never a buffer,
   so under `jax.vmap` nothing of size num_slots is copied per step. Where some kind's partials
   have more than `FUSED_PARTIALS` entries (wide vectors: a step must not copy thousands of
   padded entries), those kinds' partials are computed after the loop for all their equations
   at once (one vmapped computation per kind: they read only the values, in chunks of
   equations, scattered into the buffer), the others' in it; under `jax.vmap` (a step writes
   its padded partials for the whole batch) also the largest kinds of a few equations
   (`_batched_limit`). A program whose long runs of tiny equations (at most `NARROW_WIDTH`
   entries) sit beside wide ones runs them in *narrow* segments of the loop: a second loop body
   with its own lanes, K, O and P, the two bodies taking turns over the segments
   (`Tape.segments`), so a scalar step no longer gathers and writes the wide equations' lanes.
   XLA compiles every branch (35-50 ms each on a 2-core CPU), so kinds are kept few whatever the
   shapes (generated programs use the same primitives on many shapes and slice at many
   offsets): an *elementwise* equation (and a whole sum or a dot product of two vectors) runs
   on ``width`` padded lanes (the largest such output; padding lanes read a zero constant, a
   broadcast scalar is read at every lane), one kind per primitive, parameters and operand
   dtypes, its partials (one per floating-point operand, used or not) the JVP responses to
   tangents of ones (gradients for the reductions), one lane per entry. Where a kind needs
   more than the operands to run without shapes, each equation carries an integer *row*
   (`Tape.rows`) that its kind reads besides the operands, and the value arrays of its partials are *read off*
   from local derivatives by the row (`_read_off`, through the structure code's `layout`, so
   any code serves): elementwise equations with operands broadcast along axes, reductions
   over axes (each operand entry scattered into the output entry its row names; sums and
   maxima), contractions (dot_general: each term's two operand positions and output entry;
   its partials are operand entries). An equation that only *moves data*
   (every output entry one operand entry or zero, at fixed positions) runs as a copy of its
   sources, all in one kind; equations computed from constants alone (index arithmetic) are
   evaluated when the tape is built and become constants; a ``split`` runs as one slice per output.
   Partials that only move data hold no values: identities (value-less codes) and *static* index
   maps (code 11 maps that depend neither on the values nor on computed indices: slices, squeeze,
   stack/concatenate, reshape, broadcasts, sums, cumsum, gathers at constant indices) are
   tabulated when the tape is built (with numpy for the common movements, else by binding the
   primitive on the basis of its operand; entries checked to be non-negative integer counts)
   and become copies. *Run-time* maps (sort, clamp, max pooling,
   gathers/scatters/dynamic slices at computed indices, whose JVPs select one entry, so every
   entry is exactly 0 or 1; cumulative maxima and minima, whose JVPs split a tie as JAX's
   ``lax.max`` does, 1/2 each, 1/4... down a plateau) are computed by the branch as masks (JVP
   responses, as jax.jacfwd's), applied by selections that weigh by them, each map held on the
   entries it may reach whatever the values and indices (`_mask_support`: an axis's fibers, a
   window's band, a diagonal; a product with a map is a selection per entry it holds).
   Before the eliminations, the entries of partials that reach the outputs only through a
   select's untaken case are zeroed, as jax.jacfwd drops them (`_discard`; one pass over the
   terms that keep the entries of the vertices that may be discarded, a depth of uses after
   another, `_discard_untaken`). Where a
   pole reaches a select's case that the discard cannot zero (the case is returned or read
   elsewhere too, or the pole came through a broadcast), the select's zeros are a run-time support
   of its case partial (`_Builder._case_support`, `Tape.case_flags`); and the partials of a
   primitive without a structural rule or of a convolution after a ruled pole hold the entries a
   NaN tangent cannot reach as structural zeros (`_Builder._dense_zeros`), as the straight-line
   path keeps both (its `_select_support`, `_static_reach`).
2. **Eliminations** (`_tape_products`). Every `graph.Product` of ``graph.plan(graph, order)``
   becomes operations on the edge buffer, planned with numpy a product at a time: between two
   value arrays, exactly the multiply-adds its `graph.product_plan` enumerates (one per point
   of the joint index space of the two value arrays, ``edges[dst] = (edges[dst] or 0) + out *
   in``: what the cost model counts); with a map on either side, selections ``where(mask != 0,
   value * mask, 0)`` (``value * 1`` is `value`; a tie of a cumulative maximum weighs) and
   additions (data movement, free in the model, as in the straight-line path; the composition
   of two run-time masks is their conjunction, one selection). A sum into an
   existing edge of another code first re-lays the old edge out in the sum code (copies). Two
   constant slots (1 and 0) make copies and structural ones selections too. A plan of up to
   `_tape_products.SCALAR_STEPS_MAX_MULS` multiplications runs one operation per loop step (the
   leanest loop body; under `jax.vmap` at a batch of 16 or more the independent operations of one
   level share a step, `_tape_products.packed_lanes`) unless its products average
   `_tape_products.LANE_MIN_MEAN_MULS` or more; a
   longer one (wide vectors: millions of multiply-adds) runs *lane steps*
   of up to 1,024 independent operations, read and written as slices where contiguous, and its
   dense products as *block steps* (64 x 64 tiles of a matrix product: small matrix products) and
   *chunks* (4,096 consecutive entries of a dense block scaled by a diagonal or a scalar, or
   copied by an identity, as slices); a product of a dense block and an identity holds the
   block's slots instead of copying them where no other edge shares them. The plan
   is executed in its own order, so ``count_muls == graph.cost`` holds by construction (and is
   asserted, product by product, when the tape is built).
3. **Assembly.** The edges left between inputs and outputs are laid out dense and read from the
   edge buffer by static slices for the straight-line path's assembly (jax.jacrev's structure,
   `run`), or, for ``jacobian(..., output="dense")``, as the whole dense Jacobian by one gather
   (`run_dense`): XLA compiles a slice and an output per block, which dominated the first call of
   programs with thousands of blocks.

Edge slots are allocated when a valued edge is created and freed when the elimination deletes it,
so the edge buffer holds the largest number of edge entries alive at once, not every edge ever
made (mask slots are kept: maps may share them).

**The class the tape executes** (`build` raises `Unsupported` otherwise and `_jacobian` falls back
to the straight-line path, never to a wrong number): every vertex has at most `MAX_COMPONENTS`
entries (empty values are fine), but for data movements run before or after the equation loop
(`Tape.early`, `Tape.late`); an argument leaf or constant of more is read only by data
movements (``W[l]`` of a stacked parameter: each reads the entries it moves); an equation of several results runs
as one equation per result used (a ``split`` as slices; a sort of several operands, top_k, a
``while`` or ``scan`` as the primitive with that result picked); no equation holds a sub-jaxpr
but a ``cond``, a ``while``, a ``scan`` whose loop plan takes its partials whole (mode "whole";
chained plans count products the tape does not perform), a scatter's combiner, a linear solve
(``custom_linear_solve``: ``jnp.linalg.solve``), a function with a custom JVP rule or one with a
custom VJP rule (bound whole, differentiated by JAX's JVP of it, its rule for a custom JVP, the
rows of its rule for a custom VJP, `_VJP_RULED`; the floating-point literals of
its sub-programs are constant operands, `_lift_literals`, so steps that differ only in their
coefficients share a kind); the
buffers are float64 when
the program has float64 values, else float32, and every value is floating-point (float16,
bfloat16, float32 each computed in its own dtype and held exactly in the buffer) or boolean,
except integer constants (exactly representable in the buffer's dtype), integers of a dtype
whose every value the buffer holds exactly (up to 32 bits in float64, 16 in float32: arguments
and values) and integers computed at run time whose range of values is bounded well inside the
buffer's exact integers (`_Builder._small_integer`: argmax/argmin indices, sums, products,
remainders, clamps, selections and movements of them; sums and products that may wrap around
in a dtype whose every value the buffer holds); an index map whose partial depends on the
values is one of the mask kinds above; at most `MAX_KINDS` equation kinds (one per
`EQUATIONS_PER_KIND` equations in longer programs).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import ClosedJaxpr, Literal, Var
from jax.extend.core.primitives import closed_call_p

from alphagrad.graph import (
    INDEX_MAP, SUPPORTED_PRIMITIVES, VALUELESS, Graph, LeafRef, Operand, Step, ValueRef, normalise_shape,
    product_plan, structure_of,
)
from alphagrad.interpreter._discard import (
    elementwise_code, entrywise_code, plan_discard, structural_reads, value_cover,
)
from alphagrad.interpreter import _ranges
from alphagrad.interpreter._poles import (
    BOUNDED_VALUES, NO_POLE, POLE_ENTRYWISE, POLE_SPREAD, away_from_zero_value, bounded_operand,
    has_finite_partials, pole_passes, reads_only_the_others,
)
from alphagrad.interpreter._structured import Partial
from alphagrad.interpreter._tape_products import (
    DOT, DOT_INNER, FIRST_EDGE_SLOT, FLAT, FLAT_GROUP_ENTRIES, GUARD_SCRATCH, MUL, ONE, SELECT, ZERO, Eliminator,
    FlatShape, Map, Unplannable, Valued,
    _positions, lanes_for, layout, run_steps, support, terms,
)

__all__ = [
    "TAPE_MIN_SIZE", "TAPE_MIN_EQUATIONS", "ARRAY_WEIGHT", "MAX_COMPONENTS", "MAX_VALUE_SLOTS", "LATE_MIN_ENTRIES",
    "FUSED_PARTIALS", "MAX_KINDS", "EQUATIONS_PER_KIND",
    "Tape", "Unsupported", "build", "dense_index", "run", "run_dense", "straight_line_size",
]

#: Programs whose straight-line form would have at least this many operations
#: (`straight_line_size`) run on the tape (when they are in its class); smaller ones keep the
#: straight-line path. Measured on an unrolled RK4 integrator (benchmarks/compact_interpreter.py,
#: docs/benchmarks.md "Compact interpreter at scale"): at about 150 scalar equations (size ~1,300)
#: the straight-line program still compiles in under 2 s and runs about 6x faster than the tape
#: at batch 1,024 (XLA fuses it; the tape runs one loop step per equation and per product), while
#: at about 300 (size ~2,500) its first call takes 8 s (18 s under vmap) and runs no faster; on
#: arrays each operation is several XLA operations: 240 equations of 16-entry vectors (size
#: ~10,000) took 51 s to compile. Programs of fewer than `TAPE_MIN_EQUATIONS` equations keep
#: the straight-line path whatever their size: no registered task or corpus function is long
#: enough (RoeFlux_3d, 138 equations on small vectors, has size ~3,000 and compiles in a few
#: seconds; the corpus's lorenz_rk4 has 152 equations).
TAPE_MIN_SIZE = 2000
TAPE_MIN_EQUATIONS = 200
#: Weight of an equation, partial or product on arrays against one on scalars in `straight_line_size`
#: (a structured product of arrays is a handful of XLA operations: reshapes, broadcasts, a multiply, a sum).
ARRAY_WEIGHT = 8
#: Whether one-operation product plans keep a select's discard as a run-time support (`_Discard.flags`,
#: `_tape_products.LaneSteps.support`): a discarded case's zeros guard the products that carry them
#: as the out factor against an infinity further up, as the straight-line path does; False gives
#: the plain products (for A/B measurements: ``--patch alphagrad.interpreter._tape.DISCARD_SUPPORT=False``).
DISCARD_SUPPORT = True
#: Whether one-operation product plans keep a select's zeros (its case partial's untaken entries)
#: as a run-time support where a pole reaches its case and the discard cannot zero it (the case is
#: read elsewhere too or returned, or the pole came through a broadcast: `_Builder._case_support`),
#: as the straight-line path's `_select_support` (its SHARED_CASE_SUPPORT); False for A/B
#: measurements.
CASE_SUPPORT = True
#: Whether the partials of a primitive without a structural rule (cumprod, a triangular solve, a
#: scan bound whole) and of a convolution, where a ruled partial's pole (sqrt's, a division's) may
#: reach their source, hold the entries a NaN tangent cannot reach as structural zeros, known
#: while building (`_Builder._dense_zeros`, the straight-line path's `_static_reach`); False for
#: A/B measurements.
DENSE_SUPPORT = True
#: Most components (array entries) a value of the tape may have: every step of the equation loop
#: gathers the largest equation's operand components and writes its output's, so a very large
#: array would slow every step (the 512- and 1,024-entry vectors of benchmarks/scale.py's `wide`
#: programs are in). A 1-D PDE integrator on an 8,192-point grid (3,406 equations) runs on the tape
#: in 10 s and 2 GB, where its straight-line program did not finish compiling in 10 minutes.
#: Argument leaves and constants may be larger where only data movements read them (a net of
#: 1,030 tiny layers reading ``W[l]`` of one stacked W [1030, 4, 4]: first call 8 s, 0.4 GB).
MAX_COMPONENTS = 16384
#: Most components of all the tape's values together (about 70 bytes of peak memory each in
#: float64, the partials and products included): the same integrator on a 16,384-point grid (56 M
#: components) peaked at 7 GB on the tape, and is left to the straight-line path.
MAX_VALUE_SLOTS = 2**25
#: A data movement of more entries than this that no equation reads (a returned trajectory,
#: ``jnp.stack`` of the states) runs after the equation loop (`_Builder._late`), not widening
#: every step of it to its size: 176 states of 30 stacked (3,000 equations) made every step
#: gather and write 5,280 entries.
LATE_MIN_ENTRIES = 1024
#: Programs whose equations' partials have at most this many entries each compute them in the
#: equation loop (as small arrays padded to the largest; one compiled loop); larger ones after
#: it, one vmapped computation per kind (a loop step must not copy thousands of entries).
FUSED_PARTIALS = 256
#: Most distinct equation kinds (switch branches); XLA compiles every branch.
MAX_KINDS = 256
#: ... and at most one per this many equations beyond: XLA compiles every branch (about 0.1 s
#: each on a 2-core CPU), but a long program's straight-line form compiles far longer still
#: (hours at 10,000 equations), so a long program with many kinds keeps the tape.
EQUATIONS_PER_KIND = 8

#: Most entries of an equation's output and operands in a *narrow* segment of the equation loop
#: (`_Builder._narrow`: a step of its own loop body gathers and writes only that many lanes), and
#: the most lanes of the other equations (`width`) beside which no segment is made (0: one loop).
#: soft-DTW by a Python double loop (588 equations of up to 3 entries after 5 of 60) ran each
#: step with the 60-entry equations' lanes (K = 180 operand slots gathered, O = 60 written): at
#: batch 256 the loop ran 8-10x faster in two segments (101 -> 23 ms at 8 lanes, 84 -> 7.8 ms at
#: the segment's own 3), and a 10,584-equation kinetics program's first call took no longer.
NARROW_WIDTH = 4
#: Fewest consecutive narrow equations that make a narrow segment (each class of segments is one
#: more loop body for XLA to compile, whatever the number of segments).
NARROW_MIN_RUN = 64

#: Most runs of consecutive value slots a step reads an equation's operands as (`Tape.eq_runs`;
#: an elementwise equation has one per operand, a select_n three); equations of more (a
#: transpose, a gather at scattered indices) read their slots from a table.
MAX_RUNS = 4

#: Primitives that may only move data (`_Builder._selection` checks each equation's map).
_MOVEMENTS = frozenset(
    "slice concatenate stack reshape squeeze transpose rev broadcast_in_dim dynamic_slice gather copy copy_p "
    "convert_element_type pad".split()
)


#: Integer primitives computed in their operands' dtype whose results wrap around (two's
#: complement) where they overflow (`_Builder._small_integer`).
_WRAPPING_ARITHMETIC = frozenset({"add", "sub", "mul", "neg"})


class _Selection:
    """The switch branch kind of equations that only move data (a stand-in for a primitive)."""

    name = "data movement"


_SELECTION = _Selection()

#: Elementwise primitives (graph's unary, binary and zero-derivative rules): they run lane by
#: lane on `width` lanes whatever their shape, so one switch kind serves every shape.
_LANEWISE = frozenset(
    "neg abs exp exp2 log log1p expm1 sin cos tan asin acos atan sinh cosh tanh asinh acosh atanh integer_pow sqrt "
    "rsqrt cbrt logistic erf erfc erf_inv square lgamma digamma add sub mul div pow atan2 max min add_any rem "
    "nextafter select_n eq ne lt le gt ge and or not sign floor ceil round is_finite stop_gradient "
    "convert_element_type copy copy_p".split()
)


#: Reductions of whole vectors to a scalar run on lanes too (`_Builder._lanes` checks the params).
_LANE_REDUCTIONS = frozenset({"reduce_sum", "dot_general"})


class _Segments(NamedTuple):
    """The switch branch kind of reductions over axes (stands in for reduce_sum / reduce_max):
    each operand entry is combined into the output entry its row names (`Tape.rows`)."""

    combine: str  # "sum" or "max"

    @property
    def name(self) -> str:
        return f"{self.combine} of segments"


#: Reductions over axes run as segments (`_Builder._segments`), by their combiner.
_SEGMENT_REDUCTIONS = {"reduce_sum": "sum", "reduce_max": "max"}
class _Bilinear:
    """The switch branch kind of contractions (dot_general), whatever their shapes and axes."""

    name = "contraction"


_BILINEAR = _Bilinear()
#: Most terms (products) of a contraction on the `_BILINEAR` kind (its row holds three
#: integers per term); larger ones keep a kind of their own.
BILINEAR_TERMS = 1024
#: A row entry naming no output entry (a scatter at it is dropped).
_NO_SEGMENT = 2**30


class _Lanes(NamedTuple):
    """The switch branch kind of an elementwise primitive on padded lanes (stands in for it);
    `gathered`: its partials are read off from the lanes' responses by the equation's row;
    `shape`: for an elementwise function of fixed shapes (`_Builder._generic`), the output shape
    and the operand shapes of the kind's representative equation, else None."""

    primitive: Any
    gathered: bool = False
    shape: tuple | None = None

    @property
    def name(self) -> str:
        return self.primitive.name


class _NodeOutput(NamedTuple):
    """An output held by a node: its first value slot and its shape."""

    base: int
    shape: tuple


class Unsupported(Exception):
    """The graph is outside the tape's class; the message says why (the straight-line path runs)."""


class _PartialKind(NamedTuple):
    """The partials of one equation kind: ``fn(ops[K], row[W]) -> [P]``; the operand runs int32
    [n, R, 4], table starts int32 [n] (`Tape.eq_runs`, `Tape.eq_table_at`), first edge slots
    int32 [n], row starts int32 [n] (`Tape.eq_row`) and partial sizes int32 [n] (at most P) of
    its n equations."""

    fn: Any
    runs: np.ndarray
    table_at: np.ndarray
    at: np.ndarray
    row_at: np.ndarray
    size: np.ndarray


class _Discard(NamedTuple):
    """The discard of a select's untaken cases (`_discard.plan_discard`) as tables over the D
    entries of the vertices it may discard: an entry is kept where one of its N *terms* keeps
    it (an entrywise use, or an entry of a moving use's pattern that reads it).

    Attributes:
      size: D.
      entry: int32[N + 1] the entry a term keeps...
      successor: int32[N + 1] ...where the successor's entry is kept (D: always, D + 1: never)...
      predicate: int32[N] ...the value slot of the predicate it reads...
      taken_by: int32[N] ...is one of the case indices its use is (a bit each; 0: not a masked
        case, always)...
      mask: int32[N] ...and the edge slot `mask` is not 0 (a map's entry; `ONE` for an entry of a
        valued partial's pattern or an entrywise use). Term N is padding (entry and successor
        D + 1: keeps nothing).
      terms: int32[S, C] the terms in S sweeps of C (padded with N): a term's successor entry is
        settled by earlier sweeps (the terms by the depth of their vertex, the longest chain of
        discards through uses below it, one depth after another), so one pass settles every
        entry, in work linear in N (a sweep over all terms per depth was quadratic in the
        program: 1,860 sweeps of [49,780 x 81] at 80 steps of a generated MD program).
      slots: int32[Z] edge slots of the value entries of the partials into those vertices, each
        zeroed where every row it stands for is discarded: the pairs
      entries, rows: int32[N] (index into `slots`, entry in [0, D)).
      flags: in one-operation product plans, the first of Z edge slots that get 1 where the slot
        of `slots` is kept, 0 where it is zeroed: the run-time support of the products that read
        it (`_tape_products.LaneSteps.support`); else -1.
    """

    size: int
    entry: np.ndarray
    successor: np.ndarray
    predicate: np.ndarray
    taken_by: np.ndarray
    mask: np.ndarray
    terms: np.ndarray
    slots: np.ndarray
    entries: np.ndarray
    rows: np.ndarray
    flags: int = -1


class _LoopSegment(NamedTuple):
    """A segment of the equation loop (`_Builder._loop_segments`): its equations' tables, as
    `Tape`'s, with kinds numbered among its own branches, and its operand vector length K."""

    eq_kind: np.ndarray
    eq_runs: np.ndarray
    eq_table_at: np.ndarray
    eq_table: np.ndarray
    eq_out: np.ndarray
    eq_row: np.ndarray
    K: int
    branches: tuple
    eq_partials: np.ndarray | None
    batched_branches: tuple
    batched_eq_partials: np.ndarray | None


class Tape(NamedTuple):
    """A program and an elimination plan as arrays, with the branches that execute them.

    Attributes:
      dtype: the buffers' dtype (the program's floating-point dtype).
      leaves: (flattened-argument index, first value slot) of every argument leaf the program reads.
      constants: [num_constant_slots] the constants' components, stored from slot `constants_at`.
      constants_at: first value slot of the constants.
      num_values, num_edges: buffer sizes, slack for the padded writes included.
      eq_kind: int32[E] branch of each equation.
      eq_runs: int32[E, R, 4] each equation's operand slots as at most R runs of value slots
        (first slot, count, position in the operand vector ops[K], stride: 1 for consecutive
        slots, 0 for a scalar broadcast to lanes); positions no
        run covers read the zero slot (`zero`): lane padding. A slot per operand component was
        the largest constant XLA compiled (71 MB for `wide` at 10,888 equations: every lane
        operand padded to `width`), and XLA holds a constant several times while compiling.
      eq_table_at: int32[E] where an equation of more than R runs (a transpose, a gather at
        scattered indices) reads its K slots in `eq_table`, else -1.
      eq_table: int32[T + K] those equations' slots, one after another.
      zero: the value slot holding 0.
      eq_out: int32[E] first value slot of its output.
      eq_partials: int32[E] first edge slot of its partials where the equation loop computes them
        (kinds whose partials have at most `FUSED_PARTIALS` entries; the others' point at slack
        slots), or None when no kind's are computed there.
      eq_row: int32[E] where each equation's row starts in `rows` (0 for those without one).
      rows: int32[T + W] the equations' rows, one after another (deduplicated), W (`row_width`) the longest:
        integers a kind reads per equation besides its operands (`_rows`): the output entry of
        each operand position of a reduction over axes (`_Segments`), and the *read-off* of its
        partials (for each entry of their value arrays, the local derivative it is, or -1).
      branches: per kind, the equation loop's switch branch: ``(ops[K], row[W]) -> out[O]``, or
        ``-> (out[O], partials[P])`` when the loop computes the partials.
      partials: per kind whose partials are larger, a `_PartialKind`: its function
        ``ops[K] -> partials[P]`` and, per equation of the kind, its operand runs and the first
        edge slot of its partials (all of a kind are computed at once, after the values).
      batched_branches, batched_eq_partials, batched_partials: `branches`, `eq_partials` and
        `partials` under `jax.vmap`, where the loop computes only partials of up to the size
        `_batched_limit` chooses (a step writes its padded partials for the whole batch).
      width: (K, O).
      prod_steps, prod_patterns, prod_windowed: the lane steps of the products
        (`_tape_products.LaneSteps`).
      prod_records, prod_shapes: the records and shapes of their flat steps
        (`LaneSteps.emit_flat`), or None.
      outputs: per flattened output of the program: a `_NodeOutput` (slot and shape), or the
        `Operand.value` of a constant output (a constant or a `LeafRef`).
      jacobian_edges: {(input node, output node): (first edge slot, out_shape, in_shape)}.
      muls: multiplications of the product steps (equals the plan's).
      late: per data movement whose output has more than `MAX_COMPONENTS` entries, or more than
        `LATE_MIN_ENTRIES` that no equation reads (a trajectory returned by ``jnp.stack``), in
        equation order: (first value slot, int32 source slot of
        each output entry); computed after the equation loop (`_Builder._late`).
      early: the same for each data movement of more than `MAX_COMPONENTS` entries of argument
        leaves, constants and earlier early values that some equation reads; computed before
        the equation loop (`_Builder._early`).
      bounded_leaves: (flattened-argument index, bound) of the integer leaves whose dtype the
        buffer does not hold exactly (int32 in float32, int64 in float64: token ids, labels, edge
        lists): held where every entry is at most the bound in magnitude; beyond it the outputs
        and the Jacobian are NaN (`_buffers`), never rounded indices.
      bounded_values: (first value slot, entries, bound) of the integer results of loops and
        branches kept whole whose range their body's interval arithmetic does not bound within the
        buffer's exact integers (`_ranges`; float32 buffers): held where every entry is at most the
        bound in magnitude, as `bounded_leaves`.
      case_flags: (first flag slot, int32 [Z] edge slots of select partials kept as supports, int32
        [Z] the discard's flag slot of each or -1): after the discard, flag z is 1 where slot z is
        not 0 (the select takes the case) and the discard's flag, if any, is 1; or None
        (`_Builder._case_support`).
      segments: () for one equation loop, else (wide, narrow, schedule): the equations of the
        wide and of the narrow segments (`_LoopSegment`, `_Builder._narrow`) and, per turn,
        int32 [narrow start, narrow stop, wide start, wide stop) in their tables.
    """

    dtype: Any
    leaves: tuple[tuple[int, int], ...]
    constants: np.ndarray
    constants_at: int
    num_values: int
    num_edges: int
    eq_kind: np.ndarray
    eq_runs: np.ndarray
    eq_table_at: np.ndarray
    eq_table: np.ndarray
    zero: int
    eq_out: np.ndarray
    eq_partials: np.ndarray | None
    eq_row: np.ndarray
    rows: np.ndarray
    row_width: int
    branches: tuple
    partials: tuple
    batched_branches: tuple
    batched_eq_partials: np.ndarray | None
    batched_partials: tuple
    width: tuple[int, int]
    prod_steps: np.ndarray
    prod_patterns: np.ndarray
    prod_windowed: bool
    outputs: tuple
    jacobian_edges: dict
    muls: int
    prod_records: np.ndarray | None = None
    prod_shapes: np.ndarray | None = None
    discard: _Discard | None = None
    case_flags: tuple[int, np.ndarray, np.ndarray] | None = None
    bounded_leaves: tuple[tuple[int, float], ...] = ()
    bounded_values: tuple[tuple[int, int, float], ...] = ()
    late: tuple = ()
    early: tuple = ()
    segments: tuple = ()


# ---- partial layouts ------------------------------------------------------------------------

#: Codes whose partial the tape holds as a map (which entries move where), not as a value array.
_MAP_CODES = VALUELESS | {INDEX_MAP}
#: Index maps whose partial depends on the values: never tabulated when the tape is built.
_VALUE_DEPENDENT = frozenset("sort clamp reduce_window_max reduce_window_min cummax cummin top_k".split())
#: Index maps applied as run-time masks (value-dependent, or reading computed indices), their
#: [n_out, n_operand] matrices computed whole by JVPs, as jax.jacfwd's columns: most select one
#: tangent entry per output entry (every entry exactly 0 or 1); cummax/cummin weigh a tie as
#: JAX's associative scan of ``lax.max`` does (1/2 each, 1/4... along a plateau), and the
#: products' selections weigh by the entry (`_tape_products._select`: ``value * 1`` is `value`),
#: free in the cost model as every index map's product is (the straight-line path applies JAX's
#: linearisation there, also uncounted).
_MASK_MAPS = frozenset(
    "sort top_k clamp reduce_window_max reduce_window_min cummax cummin gather scatter scatter-add dynamic_slice "
    "dynamic_update_slice".split()
)


#: Run-time maps along one axis (their parameter naming it): an output entry depends only on the
#: operand entries of its *fiber*, those of the same index on every other axis.
_ALONG_AXIS = {"sort": "dimension", "cummax": "axis", "cummin": "axis", "top_k": "axis"}


def _mask_support(eqn, position: int | None, out_shape: tuple, in_shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(output entry, operand entry) of every entry of a run-time map's [n_out, n_operand] matrix
    (of operand `position`; None: of several operands at once, the same node) that may be nonzero whatever the values and indices, row-major: the
    fibers of a map along one axis (`_ALONG_AXIS`: a sort or cumulative maximum along an axis of a
    [4, 4, 4] array has 256 of 4,096), the diagonal of an operand a clamp, scatter or dynamic
    update keeps entrywise, the bands of windows at computed offsets (`_window_bands`: a gather's
    axes taken whole, ``jnp.take`` along one axis of a [4, 4, 4, 4] array has 1,024 of 65,536),
    else all. The branch computes the whole matrix; its other entries are 0 whatever the values,
    and the products' selections skip them."""
    n_out, n_in = math.prod(out_shape), math.prod(in_shape)
    name = eqn.primitive.name if eqn.primitive is not None else None
    axis = eqn.params.get(_ALONG_AXIS[name]) if name in _ALONG_AXIS else None
    rank = len(out_shape)
    if axis is not None and len(in_shape) == rank and all(
            o == i for k, (o, i) in enumerate(zip(out_shape, in_shape)) if k != axis % rank):
        axis %= rank
        other = [k for k in range(rank) if k != axis]
        dims = [out_shape[k] for k in other]

        def fiber(shape):  # the fiber of each entry, numbered row-major over the other axes
            at = np.indices(shape).reshape(rank, -1)
            return np.ravel_multi_index(at[other], dims) if other else np.zeros(at.shape[1], np.int64)

        length = in_shape[axis]
        members = np.argsort(fiber(in_shape), kind="stable").reshape(-1, length)  # [fibers, length], ascending
        return np.repeat(np.arange(n_out), length), members[fiber(out_shape)].reshape(-1)
    out, inp = (a.reshape(-1) for a in np.indices((n_out, n_in)))
    bands = _window_bands(name, eqn.params, position, tuple(out_shape), tuple(in_shape))
    if bands:
        at_out, at_in = np.unravel_index(out, out_shape), np.unravel_index(inp, in_shape)
        keep = np.ones(len(out), bool)
        for out_axis, in_axis, low, high in bands:
            offset = at_in[in_axis] - at_out[out_axis]
            keep &= (low <= offset) & (offset <= high)
        out, inp = out[keep], inp[keep]
    return out, inp


def _window_bands(name, params: dict, position: int | None, out_shape: tuple, in_shape: tuple) -> list[tuple]:
    """Bands (output axis, operand axis, least, greatest) of ``operand index - output index``
    outside which a run-time map of operand `position` is 0 whatever its computed indices: a
    window moved by a start index in ``[0, size - window]`` (clamped, or dropped out of bounds
    with a zero derivative), an operand entry kept entrywise (0, 0 on every axis); [] where
    nothing is known."""
    if position is None:
        return []
    same = [(k, k, 0, 0) for k in range(len(out_shape))] if out_shape == in_shape else []
    if name == "clamp" or (name in ("scatter", "scatter-add", "dynamic_update_slice") and position == 0):
        return same
    if name == "dynamic_slice" and position == 0 and len(out_shape) == len(in_shape):
        return [(k, k, 0, n - w) for k, (w, n) in enumerate(zip(out_shape, in_shape))]
    if name == "dynamic_update_slice" and position == 1 and len(out_shape) == len(in_shape):
        return [(k, k, w - n, 0) for k, (n, w) in enumerate(zip(out_shape, in_shape))]
    if name == "gather" and position == 0:
        dn, sizes = params["dimension_numbers"], params["slice_sizes"]
        skipped = set(dn.collapsed_slice_dims) | set(getattr(dn, "operand_batching_dims", ()))
        kept = [a for a in range(len(in_shape)) if a not in skipped]  # in the order of offset_dims
        return [(o, a, 0, in_shape[a] - sizes[a]) for o, a in zip(dn.offset_dims, kept)]
    if name in ("scatter", "scatter-add") and position == 2:
        dn = params["dimension_numbers"]
        skipped = set(dn.inserted_window_dims) | set(getattr(dn, "operand_batching_dims", ()))
        kept = [a for a in range(len(out_shape)) if a not in skipped]  # in the order of update_window_dims
        return [(a, u, in_shape[u] - out_shape[a], 0) for u, a in zip(dn.update_window_dims, kept)]
    return []


#: Tabulated static index maps by equation signature, operand positions and integer constants
#: (shared by every tape: programs repeat the same few maps; cleared when it grows large).
_STATIC_MAPS: dict[Any, tuple[np.ndarray, ...] | None] = {}


def _tied_sizes_agree(code: int, out_shape: tuple, in_shape: tuple) -> bool:
    sizes = _positions(out_shape, in_shape)
    return all(sizes[a] == sizes[b] for a, b, _ in structure_of(code).ties)


# ---- building the tape ----------------------------------------------------------------------


def _freeze(value: Any) -> Any:
    """A hashable stand-in for a primitive parameter (equal parameters give equal keys)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, np.ndarray):
        return (value.dtype.name, value.shape, value.tobytes())
    if _is_jaxpr(value):  # a branch or loop body: made anew at every call, compared by its text
        return ("jaxpr", str(value), _freeze([np.asarray(c) for c in getattr(value, "consts", ())]))
    hash(value)  # raises TypeError for anything else unhashable
    return value


#: Primitives with sub-programs the tape binds whole, with partials by their JVP: branches, while
#: loops, scans whose partials the graph's loop plan takes whole (small fori_loops and scans inside
#: long generated code; a scan whose plan chains local Jacobians takes the straight-line path),
#: functions with custom JVP rules, linear solves (``jnp.linalg.solve``, ``jax.scipy.linalg.cho_solve``:
#: JAX's JVP solves again), and the calls the graph keeps whole (a span of complex arithmetic, a
#: large loop fused with what feeds and reads its stacked values: `graph._loops.fuse_large_spans`);
#: and functions with custom VJP rules, whose partials are built by rows of their rule (`_VJP_RULED`).
_SUB_PROGRAMS = frozenset({"cond", "while", "scan", "custom_jvp_call", "custom_linear_solve", "closed_call",
                           "custom_vjp_call", "custom_vjp_call_jaxpr"})
#: Primitives whose derivative is a user's VJP rule (no JVP): their partials are the rule's rows for
#: one-hot cotangents, as jax.jacrev and the straight-line path build them. A long program with a
#: gradient-reversal or straight-through function took the straight-line path: a generated program
#: of 372 equations with one such function among its steps, 26.8 s to its first call.
_VJP_RULED = frozenset({"custom_vjp_call", "custom_vjp_call_jaxpr"})


def _params_key(eqn) -> Any:
    """A hashable key of an equation's parameters: equal keys, interchangeable equations.

    A function with a custom JVP rule (jax.nn.relu, softplus, logaddexp) carries its primal and
    its rule as objects made anew at every call: it is keyed by the text and constants of both
    (the rule traced once by JAX's own thunk), so every call of one function shares a kind."""
    if eqn.primitive.name in _VJP_RULED:
        # Its primal by its text; its rules by the user's functions (made once, shared by every
        # call of one custom_vjp function; a closure made per call is a function of its own).
        params = eqn.params
        try:
            call = params["call_jaxpr"]
            rules = tuple(getattr(params.get(k), "f", params.get(k)) for k in ("fwd_jaxpr_thunk", "bwd"))
            hash(rules)
            return ("custom_vjp_call", str(call), _freeze([np.asarray(c) for c in call.consts]), rules,
                    params.get("num_consts"), params.get("symbolic_zeros"))
        except Exception as err:  # noqa: BLE001 - JAX's internals: any failure keeps the tape off
            raise Unsupported(f"the VJP rule of a custom_vjp function cannot be compared: {err}") from err
    if eqn.primitive.name != "custom_jvp_call":
        return _freeze(eqn.params)
    params = eqn.params
    try:
        rule, consts, _ = params["jvp_jaxpr_fun"].call_wrapped(*([False] * len(eqn.operands)))
        call = params["call_jaxpr"]
        return ("custom_jvp_call", str(call), _freeze([np.asarray(c) for c in call.consts]), str(rule),
                _freeze([np.asarray(c) for c in consts]), params["num_consts"], params["symbolic_zeros"])
    except Exception as err:  # noqa: BLE001 - JAX's internals: any failure keeps the tape off
        raise Unsupported(f"the JVP rule of a custom_jvp function cannot be compared: {err}") from err


def _lifted_jaxpr(closed) -> tuple[Any, list[np.ndarray]]:
    """`closed` (a ClosedJaxpr) with its floating-point literals, at every depth of the loops,
    branches and calls it binds (`_lift_literals`), as new leading inputs, and their values
    (none: `closed` itself). One input per literal, in the order of the program's text."""
    jaxpr = closed.jaxpr
    new_vars, values, eqns = [], [], []

    def lift(atom):
        if (isinstance(atom, Literal) and np.shape(atom.val) == ()
                and not jax.dtypes.issubdtype(atom.aval.dtype, jax.dtypes.extended) and _floating(atom.aval.dtype)):
            var = Var(atom.aval.update(weak_type=False))
            new_vars.append(var)
            values.append(np.asarray(atom.val, atom.aval.dtype))
            return var
        return atom

    for e in jaxpr.eqns:
        before = len(values)
        invars = [lift(a) for a in e.invars]
        params, pieces = _lift_literals(e.primitive.name, e.params)
        for at, vals in reversed(pieces):  # (ascending positions: inserted from the last)
            inner = [Var(jax.core.ShapedArray((), v.dtype)) for v in vals]
            invars[at:at] = inner
            new_vars.extend(inner)
            values.extend(vals)
        eqns.append(e.replace(invars=invars, params=params) if len(values) > before else e)
    outvars = [lift(a) for a in jaxpr.outvars]
    if not values:
        return closed, []
    lifted = jaxpr.replace(invars=new_vars + list(jaxpr.invars), eqns=eqns, outvars=outvars)
    return ClosedJaxpr(lifted, closed.consts), values


def _lift_literals(name: str, params: dict) -> tuple[dict, list[tuple[int, list[np.ndarray]]]]:
    """The parameters of a ``cond``, ``scan``, ``while`` or ``closed_call`` whose sub-programs'
    floating-point literals are inputs (`_lifted_jaxpr`), and where their values go among its
    operands: [(position in the original operands, values)], ascending (none: `params` itself).

    A generated program runs one loop or branch per step, each with its own coefficients
    (``lax.cond(p, lambda h: h * c, ...)``): as literals they made every step's program text, so
    its tape kind (a branch XLA compiles), its own; as operands (constants of the buffer, without
    edges: the graph and its cost are unchanged, and the kind computes no partial for them) the
    steps share one kind."""
    if name == "cond":
        lifted = [_lifted_jaxpr(b) for b in params["branches"]]
        if not any(vals for _, vals in lifted):
            return params, []
        counts = [len(vals) for _, vals in lifted]
        branches = []
        for i, (branch, vals) in enumerate(lifted):  # every branch takes all branches' values, reads its own
            before = [Var(jax.core.ShapedArray((), v.dtype)) for _, vs in lifted[:i] for v in vs]
            after = [Var(jax.core.ShapedArray((), v.dtype)) for _, vs in lifted[i + 1:] for v in vs]
            own, rest = branch.jaxpr.invars[:counts[i]], branch.jaxpr.invars[counts[i]:]
            branches.append(ClosedJaxpr(branch.jaxpr.replace(invars=before + own + after + rest), branch.consts))
        return {**params, "branches": tuple(branches)}, [(1, [v for _, vals in lifted for v in vals])]
    if name == "scan":
        body, vals = _lifted_jaxpr(params["jaxpr"])
        if not vals:
            return params, []
        new = {**params, "jaxpr": body, "num_consts": params["num_consts"] + len(vals)}
        if "linear" in params:
            new["linear"] = (False,) * len(vals) + tuple(params["linear"])
        return new, [(0, vals)]
    if name == "while":
        cond, cond_vals = _lifted_jaxpr(params["cond_jaxpr"])
        body, body_vals = _lifted_jaxpr(params["body_jaxpr"])
        if not cond_vals and not body_vals:
            return params, []
        new = {**params, "cond_jaxpr": cond, "cond_nconsts": params["cond_nconsts"] + len(cond_vals),
               "body_jaxpr": body, "body_nconsts": params["body_nconsts"] + len(body_vals)}
        return new, [(0, cond_vals), (params["cond_nconsts"], body_vals)]
    if name == "closed_call":
        body, vals = _lifted_jaxpr(params["call_jaxpr"])
        return ({**params, "call_jaxpr": body}, [(0, vals)]) if vals else (params, [])
    return params, []


#: Primitives that call a sub-program: one whose equations are all elementwise (`_elementwise`)
#: runs on lanes, one kind per program text whatever its shape (`_Builder._generic`).
_CALLS = frozenset({"custom_jvp_call", "cond", "closed_call", "pjit", "jit"})


def _call_jaxprs(name: str, params: dict) -> list | None:
    """The sub-programs a call primitive runs (a cond: its branches), or None."""
    if name == "cond":
        return list(params.get("branches", ())) or None
    jaxpr = params.get("call_jaxpr", params.get("jaxpr"))
    return None if jaxpr is None else [jaxpr]


def _elementwise(jaxpr, shape: tuple) -> bool:
    """Whether every value of `jaxpr` (its inputs, constants, outputs and every equation's) has
    `shape` or is a scalar and every equation is elementwise (`_LANEWISE`, a scalar broadcast, a
    call or cond of such programs): each output entry then depends only on the same entry of
    each array input, whatever `shape` is."""
    inner = getattr(jaxpr, "jaxpr", jaxpr)
    if any(np.shape(c) != () for c in getattr(jaxpr, "consts", ())):
        return False

    def fits(v):
        return tuple(getattr(getattr(v, "aval", None), "shape", (None,))) in ((), shape)

    if not all(fits(v) for v in (*inner.invars, *inner.constvars, *inner.outvars)):
        return False
    for e in inner.eqns:
        name = e.primitive.name
        if not all(fits(v) for v in (*e.invars, *e.outvars)):
            return False
        if name in _LANEWISE or (name == "broadcast_in_dim" and tuple(e.invars[0].aval.shape) == ()):
            continue
        subs = _call_jaxprs(name, e.params) if name in _CALLS else None
        if subs is None or not all(_elementwise(j, shape) for j in subs):
            return False
    return True


def _erase_shapes(key: Any) -> str:
    """`key`'s text with the shapes of its programs' values erased (``f64[4,2]`` -> ``f64[]``,
    a broadcast's ``shape=(4, 2)`` -> ``shape=()``: `_elementwise` checked that each is the
    output's shape)."""
    return re.sub(r"shape=\([0-9, ]*\)", "shape=()", re.sub(r"\[[0-9,]*\]", "[]", repr(key)))


def _is_jaxpr(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_is_jaxpr(v) for v in value)
    return type(value).__name__ in ("Jaxpr", "ClosedJaxpr")


def _floating(dtype) -> bool:
    try:  # (called per operand of every map: 744,000 times for a stack of 588 operands)
        return _floating_dtype(dtype)
    except TypeError:  # an unhashable dtype
        return jnp.issubdtype(dtype, jnp.floating)


@functools.lru_cache(maxsize=64)
def _floating_dtype(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.floating)


#: Floating-point dtypes the buffers hold exactly (float16 and bfloat16 values in a float32 one).
_EXACT_IN = {np.dtype(np.float64): {"float16", "bfloat16", "float32", "float64"},
             np.dtype(np.float32): {"float16", "bfloat16", "float32"}}


def _float_dtype(graph: Graph) -> tuple[Any, set]:
    """The buffers' dtype (float64 if the program has float64 values, else float32) and the
    program's floating-point dtypes, every one exactly representable in it (Unsupported if the
    program carries PRNG keys or another floating type)."""
    program = graph.program
    dtypes = set()
    avals = [aval for eqn in program.equations for aval in eqn.avals if aval is not None]
    avals += [program.leaf_avals[leaf] for leaf in program.input_leaves]
    for aval in avals:
        dtype = np.dtype(aval.dtype) if not jax.dtypes.issubdtype(aval.dtype, jax.dtypes.extended) else None
        if dtype is None:
            raise Unsupported("the program carries PRNG keys")
        if _floating(dtype):
            dtypes.add(dtype)
    buffer = np.dtype(np.float64) if np.dtype(np.float64) in dtypes else np.dtype(np.float32)
    if not dtypes or not {d.name for d in dtypes} <= _EXACT_IN[buffer]:
        raise Unsupported(f"the program's floating-point dtypes are {sorted(map(str, dtypes))}")
    return buffer, dtypes


def _storable(value: np.ndarray, dtype) -> bool:
    """Whether a constant survives the round trip through the buffer's dtype exactly."""
    with np.errstate(all="ignore"):
        back = value.astype(dtype).astype(value.dtype)
    return bool(np.array_equal(back, value, equal_nan=value.dtype.kind == "f"))


class _Builder:
    """Lays out the value and edge buffers and writes the tapes (one pass over program and plan)."""

    def __init__(self, graph: Graph, steps: Sequence[Step]):
        self.graph, self.steps = graph, steps
        self.program = graph.program
        if self.program is None:
            raise Unsupported("the graph has no program (a loaded graph)")
        self.dtype, self.float_dtypes = _float_dtype(graph)
        self.node_base: dict[int, int] = {}
        self.node_shape: dict[int, tuple] = {}
        self.leaf_base: dict[int, int] = {}
        self.bounded_leaves: dict[int, float] = {}  # integer leaves held within a bound (`Tape.bounded_leaves`)
        self.bounded_values: dict[Any, float] = {}  # loops' integer results held within one (`Tape.bounded_values`)
        self.num_values = 0
        self.constants: list[np.ndarray] = []
        self.constant_base: dict[Any, int] = {}
        self.int_range: dict[int, tuple[float, float]] = {}  # integer vertex -> (least, greatest) value
        self.int_exact: set[int] = set()  # integer vertices held exactly whatever their range (`_small_integer`)
        self.lifted: dict[int, frozenset] = {}  # id(equation) -> positions of its lifted literals (`_lift`)
        # node -> how an infinite partial may reach it (`_reach`: `NO_POLE`...), from any partial
        # and from ruled partials alone (sqrt's, a division's; not a dense vertex's own).
        self.poles: dict[int, int] = {}
        self.ruled_poles: dict[int, int] = {}
        self.away: dict[Any, bool] = {}  # node -> at least a positive constant in magnitude (`_poles`)
        self.defined_by: dict[Any, Any] = {}  # node -> its equation
        # Vertices read by more than one edge or returned, and those a ruled pole reaches through
        # one of them: a select's case among them keeps the select's zeros (`_case_support`).
        counts: dict[int, int] = {}
        for e in graph.edges:
            if e.code != 0:
                counts[e.src] = counts.get(e.src, 0) + 1
        self.shared = {src for src, n in counts.items() if n > 1}
        self.shared |= {op.node for op in self.program.outputs if op.node is not None}
        self.pole_shared: set[int] = set()
        self.case_slots: list[np.ndarray] = []  # edge slots of select partials kept as supports
        self.reach_of: dict[Any, np.ndarray | None] = {}  # `_dense_zeros`'s, by kind and positions
        self.vjp_rules_checked: set = set()  # custom VJP rules found linear (`_check_vjp_rule`), by kind

    def _allocate_value(self, size: int) -> int:
        base = self.num_values
        self.num_values += size
        if self.num_values > MAX_VALUE_SLOTS:
            raise Unsupported(f"the program's values have more than {MAX_VALUE_SLOTS} entries in all")
        return base

    def _check_size(self, shape, what: str) -> int:
        size = math.prod(shape)
        if size > MAX_COMPONENTS:
            raise Unsupported(f"{what} has shape {tuple(shape)} (the tape takes up to {MAX_COMPONENTS} entries)")
        return size

    def _value_dtype_ok(self, dtype) -> bool:
        return np.dtype(dtype) in self.float_dtypes or np.dtype(dtype) == np.dtype(bool)

    def _exact_integers(self, dtype) -> bool:
        """Whether every value of the integer `dtype` is well within the buffer's exact integers."""
        if np.dtype(dtype).kind not in "iu":
            return False
        info, limit = np.iinfo(dtype), 2.0 ** (np.finfo(self.dtype).nmant - 1)
        return -limit < float(info.min) and float(info.max) < limit

    def _leaf(self, index: int) -> int:
        if index not in self.leaf_base:
            aval = self.program.leaf_avals[index]
            if jax.dtypes.issubdtype(aval.dtype, jax.dtypes.extended) or not (
                    self._value_dtype_ok(aval.dtype) or np.dtype(aval.dtype).kind in "iu"):
                raise Unsupported(f"argument leaf {index} has dtype {aval.dtype}")
            if not (self._value_dtype_ok(aval.dtype) or self._exact_integers(aval.dtype)):
                self.bounded_leaves[index] = self._leaf_bound()  # (int32 in float32: checked at run time)
            # Any size (the slots of all values are bounded by MAX_VALUE_SLOTS): an equation
            # reading a value of more than MAX_COMPONENTS entries must move data (`build`), so
            # no step gathers it whole.
            self.leaf_base[index] = self._allocate_value(math.prod(aval.shape))
        return self.leaf_base[index]

    def _operand(self, op: Operand) -> tuple[int, tuple, Any]:
        """(first value slot, shape, dtype) of an operand, laying out leaves and constants."""
        if op.node is not None:
            return self.node_base[op.node], self.node_shape[op.node], self.node_dtype[op.node]
        if isinstance(op.value, ValueRef):
            raise Unsupported("an equation reads a value of a multi-output equation")
        if isinstance(op.value, LeafRef):
            aval = self.program.leaf_avals[op.value.index]
            return self._leaf(op.value.index), tuple(aval.shape), np.dtype(aval.dtype)
        value = np.asarray(op.value)
        dtype = np.dtype(jnp.result_type(op.value))
        value = value.astype(dtype)
        if value.dtype.kind not in "biuf" or not _storable(value, self.dtype):
            raise Unsupported(f"a constant of dtype {value.dtype} is not exactly representable in {self.dtype}")
        key = (value.dtype.name, value.shape, value.tobytes())
        if key not in self.constant_base:
            self.constant_base[key] = self._allocate_value(value.size)
            self.constants.append(value.reshape(-1).astype(self.dtype))
        return self.constant_base[key], tuple(value.shape), value.dtype

    def _leaf_bound(self) -> float:
        """The largest magnitude an integer leaf whose dtype the buffer does not hold exactly may
        have (`Tape.bounded_leaves`): 2^(mantissa bits - 4) (float32: 524,288; float64: 2^48),
        leaving room for the index arithmetic of `_small_integer` within the exact integers."""
        return float(2 ** (np.finfo(self.dtype).nmant - 4))

    def _integer_range(self, op: Operand) -> tuple[float, float] | None:
        """(least, greatest) value an integer or boolean operand may take (None: a float, or unknown)."""
        if isinstance(op.value, ValueRef) and op.node is None:
            return None
        if op.node is not None:
            if op.node in self.int_range:
                return self.int_range[op.node]
            dtype = self.node_dtype[op.node]
        elif isinstance(op.value, LeafRef):
            dtype = np.dtype(self.program.leaf_avals[op.value.index].dtype)
            if dtype.kind in "iu" and not self._exact_integers(dtype):  # `Tape.bounded_leaves`
                return (0.0 if dtype.kind == "u" else -self._leaf_bound()), self._leaf_bound()
        else:
            value = np.asarray(op.value)
            if value.dtype.kind not in "biu":
                return None
            return (float(value.min()), float(value.max())) if value.size else (0.0, 0.0)
        if dtype == np.dtype(bool):
            return 0.0, 1.0
        if dtype.kind in "iu":  # any value of its dtype
            return float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
        return None

    def _sub_program_range(self, eqn, ranges: list) -> tuple[float, float] | None:
        """The range of a loop's, branch's or call's integer result (`_ranges`), or None."""
        primitive, k = (eqn.primitive.primitive, eqn.primitive.k) if isinstance(eqn.primitive, _OutputOf) else (
            eqn.primitive, 0)
        in_avals = [jax.core.ShapedArray(self._shape_of(op), self._dtype_of(op)) for op in eqn.operands]
        return _ranges.sub_program_range(primitive, eqn.params, ranges, in_avals, k)

    def _bounded_value_slots(self) -> tuple[tuple[int, int, float], ...]:
        """`Tape.bounded_values` from the vertices held within a bound."""
        slots = []
        for node, bound in self.bounded_values.items():
            if node not in self.node_base:
                raise Unsupported("an integer result of a loop that its body does not bound is not in the buffer")
            slots.append((self.node_base[node], math.prod(self.node_shape[node]), bound))
        return tuple(sorted(slots))

    def _dtype_of(self, op: Operand):
        """The dtype of an operand (a vertex, an argument leaf or a constant)."""
        if op.node is not None:
            return self.node_dtype[op.node]
        if isinstance(op.value, LeafRef):
            return np.dtype(self.program.leaf_avals[op.value.index].dtype)
        return np.dtype(jnp.result_type(op.value))

    def _shape_of(self, op: Operand) -> tuple:
        """The shape of an operand (a vertex, an argument leaf or a constant)."""
        if op.node is not None:
            return tuple(self.node_shape[op.node])
        if isinstance(op.value, LeafRef):
            return tuple(self.program.leaf_avals[op.value.index].shape)
        return tuple(np.shape(op.value))

    def _small_integer(self, eqn, aval) -> bool:
        """Whether an integer value is bounded well within the integers the buffer's dtype holds
        exactly (so it survives being stored there), by the range of values its operands may take
        (interval arithmetic): an index from argmax/argmin, lu's pivots, small integers combined by additions,
        sums (``jnp.cumsum(x > 0)``), scatters (``jnp.bincount``), products, remainders,
        quotients, selections, clamps and data movement (as indexing
        computes them: ``x[(jnp.argmax(y) + 1) % n]``); any value of an integer dtype whose every
        value the buffer holds exactly (`_exact_integers`: int32 in float64), a sum, difference
        or product that may wrap around included (`_WRAPPING_ARITHMETIC`: computed in its dtype
        in the kind, as in JAX), and so is a conversion between integer dtypes that may wrap
        (`_wrapping_conversion`, in floats: a plain one read from and written to the buffer in
        one kind was folded by XLA's CPU compiler into no conversion, f64 -> u32 -> s32 -> f64
        giving 4294967216 for -80), and any integer result of a loop or call bound
        whole (`_SUB_PROGRAMS`: jnp.searchsorted's binary search). Any other result that may
        overflow its dtype is refused. A float converted to an integer is held exactly whatever its
        range (an integer-valued float of at most the buffer's precision; out of range, XLA
        saturates it, and the buffer's rounding of the bound saturates back to it), and so is a
        selection, clamp or movement of such values (every integer operand being held exactly, a
        result is refused only where its range may hold integers the buffer rounds):
        ``jnp.clip(jnp.floor(t).astype(int), 0, n - 1) + 1`` and ``jnp.floor(t).astype(int) % n``
        are exact, ``jnp.floor(t).astype(int) + 1`` is not (an int64 in a float64 buffer)."""
        dtype = np.dtype(aval.dtype)
        if dtype.kind not in "iu" or eqn.primitive is None:
            return False
        name = eqn.primitive.name
        ranges = [self._integer_range(op) for op in eqn.operands]
        full = float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
        limit = 2.0 ** (np.finfo(self.dtype).nmant - 1)
        if name in ("argmax", "argmin") or (name == "top_k" and isinstance(eqn.primitive, _OutputOf)):
            r = 0.0, float(MAX_COMPONENTS)  # an index into an operand of at most that many entries
        elif name == "lu" and isinstance(eqn.primitive, _OutputOf):
            r = 0.0, float(self._shape_of(eqn.operands[0])[-2] - 1)  # pivots and permutation: row numbers
        elif name == "sort" and isinstance(eqn.primitive, _OutputOf) and ranges[eqn.primitive.k] is not None:
            r = ranges[eqn.primitive.k]  # a permutation of that operand (argsort: of an iota)
        elif name == "convert_element_type" and ranges[0] is None:
            r = full  # from a float: any value of the dtype
            op = eqn.operands[0]
            source = (self.node_dtype.get(op.node) if op.node is not None else
                      np.dtype(self.program.leaf_avals[op.value.index].dtype) if isinstance(op.value, LeafRef) else None)
            if source is not None and _floating(source) and np.finfo(source).nmant <= np.finfo(self.dtype).nmant:
                self.int_exact.add(eqn.outputs[0].node)
        elif (self._exact_integers(dtype) and name != "convert_element_type"
              and all(x is None or x == (0.0, 1.0) for x in ranges)):
            r = full  # computed from floats and booleans in its own dtype (lu's pivots)
        elif name in _SUB_PROGRAMS and self._exact_integers(dtype):
            r = full  # a loop's or call's integer result (jnp.searchsorted's binary search): any value of its dtype
        elif name in _SUB_PROGRAMS:  # bounded by its body's interval arithmetic (the binary search: [0, n])
            r = self._sub_program_range(eqn, ranges)
            if r is None or not (-limit < r[0] and r[1] < limit):
                # Intervals cannot bound it (jnp.searchsorted's ``low + (high - low) // 2`` in
                # uint32: they do not know high >= low): held within the leaves' bound, checked
                # at run time (`Tape.bounded_values`).
                r = (0.0 if dtype.kind == "u" else -self._leaf_bound()), self._leaf_bound()
                self.bounded_values[eqn.outputs[0].node] = self._leaf_bound()
        elif None in ranges or not ranges:
            return False
        elif name == "add":
            r = ranges[0][0] + ranges[1][0], ranges[0][1] + ranges[1][1]
        elif name == "sub":
            r = ranges[0][0] - ranges[1][1], ranges[0][1] - ranges[1][0]
        elif name == "mul":
            products = [a * b for a in ranges[0] for b in ranges[1]]
            r = min(products), max(products)
        elif name == "neg":
            r = -ranges[0][1], -ranges[0][0]
        elif name == "abs":
            low, high = ranges[0]
            r = 0.0 if low <= 0 <= high else min(abs(low), abs(high)), max(abs(low), abs(high))
        elif name == "sign":
            r = -1.0, 1.0
        elif name == "max":
            r = max(x[0] for x in ranges), max(x[1] for x in ranges)
        elif name == "min":
            r = min(x[0] for x in ranges), min(x[1] for x in ranges)
        elif name == "clamp":  # clamp(low, x, high) = min(max(x, low), high)
            low, x, high = ranges
            r = min(max(x[0], low[0]), high[0]), min(max(x[1], low[1]), high[1])
        elif name == "select_n":
            r = min(x[0] for x in ranges[1:]), max(x[1] for x in ranges[1:])
        elif name == "rem":  # the dividend's sign, no larger than it (XLA: x rem 0 is x), smaller than the divisor
            size = max(abs(ranges[0][0]), abs(ranges[0][1]))
            if not ranges[1][0] <= 0 <= ranges[1][1]:
                size = min(size, max(abs(ranges[1][0]), abs(ranges[1][1])) - 1)
            r = 0.0 if ranges[0][0] >= 0 else -size, 0.0 if ranges[0][1] <= 0 else size
            if max(abs(ranges[1][0]), abs(ranges[1][1])) < limit:  # the (exact) dividend, or less than the divisor
                self.int_exact.add(eqn.outputs[0].node)
        elif name == "div":  # no larger than the dividend (XLA: x / 0 is -1, or the largest unsigned value)
            size = max(abs(ranges[0][0]), abs(ranges[0][1]), 1.0)
            r = (-size, size) if dtype.kind == "i" else full
        elif name in ("cumsum", "reduce_sum"):  # a sum of at most `terms` operand entries
            in_shape, out_shape = self._shape_of(eqn.operands[0]), tuple(aval.shape)
            terms = in_shape[eqn.params["axis"]] if name == "cumsum" else math.prod(in_shape) // max(1, math.prod(out_shape))
            r = min(ranges[0][0], terms * ranges[0][0]), max(ranges[0][1], terms * ranges[0][1])
        elif name in ("scatter", "scatter-add") and len(ranges) == 3:  # operand entries, updates (or their sums)
            updates = math.prod(self._shape_of(eqn.operands[2]))
            (low, high), (u_low, u_high) = ranges[0], ranges[2]
            r = ((min(low, u_low), max(high, u_high)) if name == "scatter"
                 else (low + updates * min(0.0, u_low), high + updates * max(0.0, u_high)))
        elif name in ("concatenate", "reduce_max", "reduce_min"):
            r = min(x[0] for x in ranges), max(x[1] for x in ranges)
        elif name in ("convert_element_type", "broadcast_in_dim", "reshape", "squeeze", "expand_dims", "slice",
                      "transpose", "rev", "copy", "copy_p", "dynamic_slice", "gather"):  # the operand's entries
            r = ranges[0]
        else:
            return False
        if not (full[0] <= r[0] and r[1] <= full[1]):
            if not ((name in _WRAPPING_ARITHMETIC or name == "convert_element_type") and self._exact_integers(dtype)):
                return False  # it may overflow and wrap
            # Integer arithmetic wraps in its own dtype, in the kind as in JAX, and the buffer
            # holds every value of the dtype: indexing's ``where(i < 0, i + n, i)`` of an index
            # converted from a float (any int32; an int32 in float64); so does a conversion
            # between integer dtypes (`_wrapping_conversion`).
            r = full
        if name in ("max", "min", "clamp", "select_n", "concatenate", "reduce_max", "reduce_min", "neg", "abs",
                    "broadcast_in_dim", "reshape", "squeeze", "expand_dims", "slice", "transpose", "rev", "copy",
                    "copy_p", "dynamic_slice", "gather"):
            # Each entry is an entry of an operand or its negation, and every integer operand is
            # held exactly (the builder takes no other): so is the result.
            self.int_exact.add(eqn.outputs[0].node)
        if not (-limit < r[0] and r[1] < limit or eqn.outputs[0].node in self.int_exact
                or self._exact_integers(dtype)):
            return False
        self.int_range[eqn.outputs[0].node] = r
        return True

    def _static_map(self, eqn, operands, positions, signature) -> tuple[np.ndarray, ...] | None:
        """The nonzero entries (output index, operand index, count; each [N], row-major) of the
        [n_out, n_operand] matrix of an index-map partial that depends neither on the values
        nor on computed integer operands (tabulated here, so the tape applies it by moving data),
        or None. Its entries are counts (how often an operand entry is added into an output
        entry): checked to be non-negative integers, equal at two random draws of the values."""
        if eqn.primitive is not None and eqn.primitive.name in _VALUE_DEPENDENT:
            return None
        fixed = []
        for op, (_, shape, dtype) in zip(eqn.operands, operands):
            if _floating(dtype):
                fixed.append(None)  # drawn at random below (the map is linear in the floats jointly)
            elif op.node is None and not isinstance(op.value, (LeafRef, ValueRef)):
                fixed.append(np.asarray(op.value).astype(dtype))
            else:
                return None  # computed indices
        key = (signature, positions, tuple(None if v is None else (v.shape, v.tobytes()) for v in fixed))
        if key not in _STATIC_MAPS:
            if len(_STATIC_MAPS) >= 4096:
                _STATIC_MAPS.clear()
            _STATIC_MAPS[key] = self._tabulate(eqn, operands, positions, fixed)
        return _STATIC_MAPS[key]

    def _fold(self, equations, incoming: dict) -> list:
        """The equations left once those computed from constants alone (index arithmetic on
        constant index arrays: bounds checks, wrap-around of negative indices) are evaluated here;
        their values become constants of the later ones (`self.known`), so a gather at constant
        indices is a static data movement."""
        self.known: dict[int, np.ndarray] = {}
        sources = {e.src for e in self.graph.edges}
        left = []
        for eqn in equations:
            operands = tuple(Operand(None, self.known[op.node]) if op.node in self.known else op for op in eqn.operands)
            eqn = eqn._replace(operands=operands)
            node = eqn.outputs[0].node if len(eqn.outputs) == 1 else None
            constant = all(op.node is None and not isinstance(op.value, (LeafRef, ValueRef)) for op in operands)
            if (constant and eqn.primitive is not None and node is not None and node not in incoming
                    and node not in sources and not any(_is_jaxpr(v) for v in eqn.params.values())
                    and np.dtype(eqn.aval.dtype).kind in "biuf"):
                values = [np.asarray(op.value) for op in operands]
                value = _numpy_eval(eqn.primitive.name, eqn.params, values)
                if value is None or value.shape != tuple(eqn.aval.shape):
                    with jax.ensure_compile_time_eval():  # concrete, also while an outer jit traces
                        value = np.asarray(_bind(eqn.primitive, eqn.params, [jnp.asarray(v) for v in values]))
                self.known[node] = value.astype(eqn.aval.dtype)
                continue
            left.append(eqn)
        return left

    def _generic(self, equations, widths: list) -> None:
        """Finds the calls (`_CALLS`: jax.nn.relu, logaddexp, a cond's branches) whose programs
        are elementwise (`_elementwise`; a custom JVP rule too): they run on lanes, one kind per
        program text with its shapes erased, by the program of the kind's largest equation (its
        `self.generic_rep`: size, output shape, operand shapes, params) on the lanes reshaped to
        its shape. A generated program calls them on many shapes: 42 kinds of custom_jvp_call and
        19 of cond at 10,000 equations of benchmarks/scale.py's `many-io`, each compiled by XLA.
        Calls of more entries than the elementwise primitives' lanes (`width`) keep kinds of
        their own (wider lanes would slow every elementwise step). Sets ``self.generic``:
        {id(equation): kind key}."""
        self.generic: dict[int, Any] = {}
        self.generic_rep: dict[Any, tuple] = {}
        for eqn, width in zip(equations, widths):
            name = eqn.primitive.name if eqn.primitive is not None else None
            if name not in _CALLS or eqn.aval is None or len(eqn.outputs) != 1:
                continue
            shape = tuple(eqn.aval.shape)
            subs = _call_jaxprs(name, eqn.params)
            if not subs or math.prod(shape) > width:
                continue
            try:
                in_avals = list(subs[0].in_avals)
                if name == "cond":
                    in_avals = [jax.core.ShapedArray((), np.int32)] + in_avals
                checked = list(subs)
                if name == "custom_jvp_call":
                    rule, consts, _ = eqn.params["jvp_jaxpr_fun"].call_wrapped(*([False] * len(eqn.operands)))
                    if any(np.shape(c) != () for c in consts):
                        continue
                    checked.append(rule)
                if len(in_avals) != len(eqn.operands) or not all(_elementwise(j, shape) for j in checked):
                    continue
                # Per operand: a scalar beside an array output? (A scalar call runs on lane 0 of
                # any representative: its operands are read as lanes.)
                key = (name, _erase_shapes(_params_key(eqn)),
                       tuple((tuple(a.shape) == () and shape != (), np.dtype(a.dtype).name) for a in in_avals),
                       np.dtype(eqn.aval.dtype).name, width)
            except Exception:  # noqa: BLE001 - JAX's internals: such a call keeps a kind of its own
                continue
            self.generic[id(eqn)] = key
            size = math.prod(shape)
            if key not in self.generic_rep or size > self.generic_rep[key][0]:
                self.generic_rep[key] = (size, shape, tuple(tuple(a.shape) for a in in_avals), eqn.params)

    def _lanes_kind(self, eqn, gathered: bool, params_key, pattern, width: int, lane_groups) -> tuple:
        """(signature, params) of a lanes kind: an elementwise call's is its kind's largest call
        (`_generic`), bound on the lanes reshaped; another's its primitive and parameters."""
        if id(eqn) in self.generic:
            key = self.generic[id(eqn)]
            _, rep_shape, rep_operands, params = self.generic_rep[key]
            return (_Lanes(eqn.primitive, gathered, (rep_shape, rep_operands)), key, pattern,
                    ((width,), self.dtype.name), lane_groups), params
        return (_Lanes(eqn.primitive, gathered), params_key, pattern, ((width,), self.dtype.name), lane_groups), eqn.params

    def _static_edge(self, e, eqn, operands, positions, head) -> Map | None:
        """The edge `e` as a map when its partial moves data at fixed positions (an identity, or a
        static index map: `_static_map`), else None."""
        out_shape, in_shape = tuple(e.out_shape), tuple(e.in_shape)
        if e.code in VALUELESS:
            out, inp, _ = support(e.code, out_shape, in_shape)
            return Map(e.code, out, inp, np.full(len(out), ONE, np.int64), out_shape, in_shape)
        entries = self._static_map(eqn, operands, positions, head)
        if entries is None:
            return None
        rows, cols, counts = entries  # an entry added several times: a sum of structural ones
        out, inp = np.repeat(rows, counts), np.repeat(cols, counts)
        return Map(INDEX_MAP, out, inp, np.full(len(out), ONE, np.int64), out_shape, in_shape)

    def _lanes(self, eqn, operands, shape, incoming, width: int, head):
        """For an elementwise equation (every operand of the output's shape or a scalar): its
        operand pattern (per operand: broadcast scalar?, dtype) and the operand positions of each
        partial it computes (one per floating-point vertex it reads, an edge or not), else None.
        Each partial is the JVP response to a tangent of ones, lane by lane: the edge's value
        array must be that response (a diagonal, a column from a scalar, or one constant
        multiple), else the equation keeps a kind of its own."""
        name = eqn.primitive.name if eqn.primitive is not None else None
        if name in _LANE_REDUCTIONS:  # a whole sum or a dot product of two vectors: lanes summed
            rank = 1 if name == "dot_general" else 2
            if shape != () or len({shp for _, shp, _ in operands}) != 1 or len(operands[0][1]) > rank:
                return None
            if name == "dot_general" and tuple(eqn.params["dimension_numbers"]) != (((0,), (0,)), ((), ())):
                return None
            if name == "reduce_sum" and tuple(eqn.params["axes"]) != tuple(range(len(operands[0][1]))):
                return None
        elif name not in _LANEWISE and id(eqn) not in self.generic:
            return None
        if any(shp not in ((), shape) for _, shp, _ in operands) and name not in _LANE_REDUCTIONS:
            return None
        pattern = tuple((shp == () and shape != (), np.dtype(dt).name) for _, shp, dt in operands)
        # A partial per floating-point operand, a vertex or not (a vertex read twice: one for
        # both), so that the operands' being constants or vertices makes no kinds of its own.
        groups: dict[Any, list[int]] = {}
        lifted = self.lifted.get(id(eqn), ())  # (constants in every equation of the kind: no partial)
        for i, (op, (_, _, dt)) in enumerate(zip(eqn.operands, operands)):
            if _floating(dt) and name != "reduce_sum" and i not in lifted:
                groups.setdefault(op.node if op.node is not None else ("operand", i), []).append(i)
        lane_groups = tuple(tuple(g) for g in groups.values())
        n_out = math.prod(shape)
        for e in incoming:
            if e.code in VALUELESS or (e.code == INDEX_MAP and name == "reduce_sum"):
                continue
            positions = tuple(i for i, op in enumerate(eqn.operands) if op.node == e.src)
            if e.code == INDEX_MAP and self._static_map(eqn, operands, positions, head) is not None:
                continue  # a broadcast scalar vertex: moved by the products, no partial to compute
            if positions not in lane_groups or e.code == INDEX_MAP:
                return None
            out_shape, in_shape = tuple(e.out_shape), tuple(e.in_shape)
            if out_shape != normalise_shape(shape) or in_shape != normalise_shape(self.node_shape[e.src]):
                return None
            lay_out, lay_in = layout(e.code, out_shape, in_shape)
            scalar = pattern[positions[0]][0]
            if name in _LANE_REDUCTIONS:  # the gradient, one lane per operand entry
                lanes = np.arange(math.prod(in_shape))
                expected = (np.zeros_like(lanes), lanes)
            else:  # the JVP response to ones, one lane per output entry
                lanes = np.arange(n_out)
                expected = (lanes, np.zeros_like(lanes) if scalar else lanes)
            one_constant = len(lay_out) == 1 and lay_out[0] == 0 and lay_in[0] == 0
            if not one_constant and not (np.array_equal(lay_out, expected[0]) and np.array_equal(lay_in, expected[1])):
                return None
        return pattern, lane_groups

    def _gathered_lanes(self, eqn, operands, shape, incoming, head):
        """For an elementwise equation that `_lanes` does not take (an operand broadcast along
        some axes, such as x - mean(x, axis=0, keepdims=True), or partials whose value arrays are
        not laid out lane by lane): per operand the operand entry each output entry reads [n_out],
        the operand positions of each partial it computes, and per valued edge (by source node)
        its group's index; else None. Its partials are read off from the lanes' responses
        (`_read_off`), so any structure code's value array serves."""
        name = eqn.primitive.name if eqn.primitive is not None else None
        generic = id(eqn) in self.generic  # (its operands reshaped to its kind's: no broadcasts)
        if (name not in _LANEWISE and not generic) or not shape:
            return None
        sources = []
        for _, op_shape, _ in operands:
            if generic and op_shape not in ((), shape):
                return None
            if op_shape != () and (len(op_shape) != len(shape) or any(a not in (1, b) for a, b in zip(op_shape, shape))):
                return None
            entries = np.arange(math.prod(op_shape)).reshape(op_shape)
            sources.append(np.broadcast_to(entries, shape).reshape(-1))
        groups: dict[Any, list[int]] = {}
        lifted = self.lifted.get(id(eqn), ())
        for i, (op, (_, _, dt)) in enumerate(zip(eqn.operands, operands)):
            if _floating(dt) and i not in lifted:
                groups.setdefault(op.node if op.node is not None else ("operand", i), []).append(i)
        lane_groups = tuple(tuple(g) for g in groups.values())
        for e in incoming:
            positions = tuple(i for i, op in enumerate(eqn.operands) if op.node == e.src)
            if e.code in VALUELESS or (e.code == INDEX_MAP and self._static_map(eqn, operands, positions, head) is not None):
                continue  # moved by the products: no partial to compute
            if (positions not in lane_groups or e.code == INDEX_MAP
                    or any(not np.array_equal(sources[i], sources[positions[0]]) for i in positions)
                    or tuple(e.out_shape) != normalise_shape(shape)
                    or tuple(e.in_shape) != normalise_shape(self.node_shape[e.src])):
                return None
        return sources, lane_groups

    def _selection(self, eqn, operands, head, shape, zero: int) -> list[int] | None:
        """For an equation that only moves data (every output entry is one entry of a
        floating-point operand, or zero, at fixed positions): the value slot of each output
        entry (`zero` for a zero), else None. Such equations run as copies of their sources, all
        of one kind, so the slices, gathers and shifts of a program (each with its own
        parameters) add no switch branches. An appended output copy (primitive None) is one too."""
        if eqn.primitive is None and len(operands) == 1 and _floating(eqn.aval.dtype):
            base, op_shape, dtype = operands[0]
            if tuple(op_shape) == tuple(shape) and np.dtype(dtype) == np.dtype(eqn.aval.dtype):
                return (base + np.arange(math.prod(shape))).tolist()
            return None
        if eqn.primitive is None or eqn.primitive.name not in _MOVEMENTS or not _floating(eqn.aval.dtype):
            return None
        n_out = math.prod(shape)
        sources = np.full(n_out, zero, np.int64)
        filled = np.zeros(n_out, np.int64)
        for i, (base, op_shape, dtype) in enumerate(operands):
            if not _floating(dtype):
                continue
            entries = self._static_map(eqn, operands, (i,), head)
            if entries is None:
                return None
            rows, cols, counts = entries
            if np.any(counts != 1):
                return None
            filled[rows] += 1
            sources[rows] = base + cols
        if np.any(filled > 1):
            return None
        return sources.tolist()

    def _segments(self, eqn, operands, shape, groups) -> tuple[np.ndarray, np.ndarray | None] | None:
        """For a reduction over axes (`_SEGMENT_REDUCTIONS`) of one floating-point operand: its
        row, (the output entry of each operand entry, the read-off of its partials: for each
        entry of their value arrays the operand entry whose local derivative it is, or -1),
        else None. Such reductions run as one kind per combiner, whatever the axes and shapes:
        a 10,000-equation `tensor` program had 141 kinds of sums over axes and 48 of maxima."""
        if eqn.primitive is None or eqn.primitive.name not in _SEGMENT_REDUCTIONS or len(operands) != 1:
            return None
        _, op_shape, dtype = operands[0]
        axes = tuple(eqn.params.get("axes", ()))
        kept = [d for d in range(len(op_shape)) if d not in axes]
        if (not _floating(dtype) or np.dtype(dtype) != np.dtype(eqn.aval.dtype)
                or tuple(op_shape[d] for d in kept) != tuple(shape) or math.prod(op_shape) == 0):
            return None
        index = np.indices(op_shape).reshape(len(op_shape), -1)
        seg = np.ravel_multi_index(tuple(index[kept]), tuple(shape)) if kept else np.zeros(index.shape[1], np.int64)
        if not groups:
            return seg, None
        readoff = []
        for positions, code, out_shape, in_shape in groups:
            if code == INDEX_MAP or positions != (0,):
                return None
            readoff.append(_read_off(code, out_shape, in_shape, seg, np.arange(len(seg)), 0))
        return seg, np.concatenate(readoff)

    def _bilinear(self, eqn, operands, shape, groups) -> tuple | None:
        """For a dot_general of two floating-point operands of the output's dtype with at most
        `BILINEAR_TERMS` terms: its row (the operand positions a and b and the output entry of
        each term, the read-off of its partials: d out / d a-entry is the b-entry of its term),
        else None. Contractions run as one kind per dtype, whatever the shapes and axes: a
        10,000-equation `tensor` program had 54 kinds of them."""
        if eqn.primitive is None or eqn.primitive.name != "dot_general" or len(operands) != 2:
            return None
        (_, a_shape, a_dtype), (_, b_shape, b_dtype) = operands
        out_dtype = np.dtype(eqn.aval.dtype)
        if not (np.dtype(a_dtype) == np.dtype(b_dtype) == out_dtype and _floating(out_dtype)):
            return None
        if eqn.params.get("preferred_element_type") not in (None, out_dtype):
            return None
        (a_contract, b_contract), (a_batch, b_batch) = eqn.params["dimension_numbers"]
        a_free = [d for d in range(len(a_shape)) if d not in a_contract and d not in a_batch]
        b_free = [d for d in range(len(b_shape)) if d not in b_contract and d not in b_batch]
        size = lambda dims, shp: math.prod(shp[d] for d in dims)  # noqa: E731
        B, C = size(a_batch, a_shape), size(a_contract, a_shape)
        Fa, Fb = size(a_free, a_shape), size(b_free, b_shape)
        if B * Fa * Fb != math.prod(shape) or B * Fa * Fb * C > BILINEAR_TERMS or B * Fa * Fb * C == 0:
            return None
        n_a = math.prod(a_shape)
        a = np.arange(n_a).reshape(a_shape).transpose(*a_batch, *a_free, *a_contract).reshape(B, Fa, 1, C)
        b = n_a + np.arange(math.prod(b_shape)).reshape(b_shape).transpose(*b_batch, *b_free, *b_contract)
        b = b.reshape(B, 1, Fb, C)
        a, b = (np.broadcast_to(x, (B, Fa, Fb, C)).reshape(-1) for x in (a, b))
        seg = np.repeat(np.arange(B * Fa * Fb), C)
        readoff = []
        for positions, code, out_shape, in_shape in groups:
            if code == INDEX_MAP or len(positions) != 1:
                return None
            mine, other = (a, b) if positions == (0,) else (b, a)
            entry = mine - (0 if positions == (0,) else n_a)  # the operand entry of each term
            found = _read_off(code, out_shape, in_shape, seg, entry, 0)
            readoff.append(np.where(found >= 0, other[np.maximum(found, 0)], -1))
        return a, b, seg, (np.concatenate(readoff) if readoff else None)

    def _tabulate(self, eqn, operands, positions, fixed) -> tuple[np.ndarray, ...] | None:
        """The map's nonzero entries (`_static_map`): the equation is linear in its floating-point
        operands jointly, so with those at `positions` set to one basis vector each and the others
        to zero, its output is one column of the map's matrix. The common movements are applied to the whole basis with numpy; any other
        index map is bound once, vmapped over the basis (no compilation of a derivative)."""
        shapes = [shape for _, shape, _ in operands]
        n_in = math.prod(shapes[positions[0]])
        if n_in == 0:  # an empty operand moves nothing
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        name = eqn.primitive.name if eqn.primitive is not None else None
        if name in ("concatenate", "stack") and len(positions) == 1:
            # The operand's slab of the output, directly: the basis below holds every other
            # operand's zeros, [n_in, n_out] per operand (jnp.stack of a 588-step trajectory: 29 s).
            at = positions[0]
            if name == "stack":
                axis, out_shape = eqn.params["axis"], list(shapes[at])
                out_shape.insert(axis, len(shapes))
                slab = np.asarray(at)
            else:
                axis, out_shape = eqn.params["dimension"], list(shapes[at])
                out_shape[axis] = sum(shape[axis] for shape in shapes)
                start = sum(shape[axis] for shape in shapes[:at])
                slab = np.arange(start, start + shapes[at][axis])
            rows = np.take(np.arange(math.prod(out_shape)).reshape(out_shape), slab, axis=axis).reshape(-1)
            return rows, np.arange(n_in), np.ones(n_in, np.int64)
        if len(positions) == 1 and name is not None:
            selection = _selection_map(name, eqn.params, shapes, positions[0], fixed)
            if selection is not None:
                return selection
        basis = np.eye(n_in).reshape(n_in, *shapes[positions[0]])
        batch = [basis if i in positions else (np.zeros((n_in, *shapes[i])) if v is None else v)
                 for i, v in enumerate(fixed)]
        columns = _numpy_map(eqn.primitive.name, eqn.params, batch, fixed) if eqn.primitive is not None else None
        if columns is None:
            def column(t):
                values = [t if i in positions else jnp.zeros(shapes[i], operands[i][2]) if v is None else jnp.asarray(v)
                          for i, v in enumerate(fixed)]
                return _bind(eqn.primitive, eqn.params, values)

            with jax.ensure_compile_time_eval():  # concrete, also while an outer jit traces
                columns = np.asarray(jax.vmap(column)(jnp.asarray(basis, operands[positions[0]][2])))
        matrix = np.asarray(columns, np.float64).reshape(n_in, -1).T
        if not np.all((matrix >= 0) & (matrix == np.round(matrix))):
            return None
        # Kept sparse (cached for every tape: a dense 1,024 x 1,024 map is 8 MB).
        rows, cols = np.nonzero(matrix)
        return rows, cols, matrix[rows, cols].astype(np.int64)


    def build(self) -> Tape:
        graph, program = self.graph, self.program
        # Inputs first: their leaves' slots.
        self.node_dtype: dict[int, Any] = {}
        for node, leaf in enumerate(program.input_leaves, start=1):
            aval = program.leaf_avals[leaf]
            if not _floating(aval.dtype):
                raise Unsupported(f"differentiated argument leaf {leaf} has dtype {aval.dtype}")
            self.node_base[node] = self._leaf(leaf)
            self.node_shape[node] = tuple(aval.shape)
            self.node_dtype[node] = np.dtype(aval.dtype)
        # Operands of every equation (leaves and constants), before the vertices' slots, so that
        # the vertices' slots increase with the equation order (see `_padded_writes`).
        incoming: dict[int, list] = {}
        for e in graph.edges:
            if e.code != 0:
                incoming.setdefault(e.dst, []).append(e)
        # Values of multi-output equations that no vertex holds but some equation reads (a sort's
        # permutation: argsort) get equations of their own, keyed ("ref", equation, output).
        read = {op.value for eqn in program.equations for op in eqn.operands
                if op.node is None and isinstance(op.value, ValueRef)}
        equations = [piece._replace(operands=tuple(_read_ref(op) for op in piece.operands))
                     for index, eqn in enumerate(program.equations) for piece in _split_pieces(eqn, index, read)]
        for k, eqn in enumerate(equations):
            name = eqn.primitive.name if eqn.primitive is not None else "output copy"
            where = f"equation {k + 1} ({name})"
            # (A scatter's update_jaxpr is its combiner, keyed by its text: not a sub-program.)
            if (eqn.primitive is not None and eqn.primitive.name not in _SUB_PROGRAMS
                    and any(_is_jaxpr(v) for key, v in eqn.params.items() if key != "update_jaxpr")):
                raise Unsupported(f"{where} holds a sub-program (a loop or a branch)")
            if getattr(eqn, "loop", None) is not None and eqn.loop.mode != "whole":  # (whole: JAX's JVP, uncounted)
                raise Unsupported(f"{where} is a loop whose partials the plan chains ({eqn.loop.mode} mode)")
            if len(eqn.outputs) != 1:  # (a sort of one array has one result, in a list)
                raise Unsupported(f"{where} has several outputs")
        equations = [self._lift(eqn) for eqn in self._fold(equations, incoming)]
        # Leaves, then the constants in one contiguous block (written at once by `run`).
        for wanted in (LeafRef, object):
            for eqn in equations:
                for op in eqn.operands:
                    if op.node is None and isinstance(op.value, wanted):
                        self._operand(op)
            if wanted is LeafRef:
                constants_at = self.num_values
        # A zero constant: the source of output entries that a data movement fills with zeros.
        zero = self._operand(Operand(node=None, value=np.zeros((), self.dtype)))[0]
        # Vertices, in equation order.
        eq_rows = []  # (kind, operand runs [r, 4], operand vector length, out slot, first partial slot)
        eq_segment: list[int] = []  # the loop segment of each row (`_narrow`)
        kinds: dict[Any, int] = {}
        templates: list[tuple] = []
        edges: dict[tuple[int, int], Any] = {}
        next_slot = FIRST_EDGE_SLOT
        # Lanes of the elementwise kinds: the largest elementwise output.
        sizes = {n: math.prod(self.node_shape[n]) for n in range(1, graph.num_inputs + 1)}
        sizes.update((eqn.outputs[0].node, math.prod(eqn.aval.shape)) for eqn in equations if eqn.aval is not None)
        width = max([sizes[eqn.outputs[0].node] for eqn in equations
                     if eqn.primitive is not None and eqn.primitive.name in _LANEWISE and eqn.aval is not None
                     and sizes[eqn.outputs[0].node] <= MAX_COMPONENTS]
                    + [size for eqn in equations if eqn.primitive is not None and eqn.primitive.name in _LANE_REDUCTIONS
                       for op in eqn.operands
                       for size in [sizes.get(op.node, np.size(op.value)) if op.node is not None
                                    or not isinstance(op.value, LeafRef)
                                    else math.prod(program.leaf_avals[op.value.index].shape)]
                       if size <= MAX_COMPONENTS]  # (a larger operand may only be moved: see below)
                    + [1])
        wide_width = width
        narrow = self._narrow(equations, sizes, wide_width)
        self.segment_of = np.cumsum([0] + [int(a != b) for a, b in zip(narrow[:-1], narrow[1:])]) if narrow else []
        # A narrow segment's lanes: its largest elementwise output or whole reduction's operand.
        need = [max([sizes.get(eqn.outputs[0].node, 1)] + ([sizes.get(op.node, 1) if op.node is not None else
                     int(np.prod(self._shape_of(op))) for op in eqn.operands]
                    if eqn.primitive is not None and eqn.primitive.name in _LANE_REDUCTIONS else []))
                if eqn.aval is not None and len(eqn.outputs) == 1 else 1 for eqn in equations]
        segment_width: dict[int, int] = {}
        for k, n in enumerate(narrow):
            if n:
                segment_width[self.segment_of[k]] = max(segment_width.get(self.segment_of[k], 1), need[k])
        self.segment_narrow = {int(self.segment_of[k]): n for k, n in enumerate(narrow)}
        eq_widths = [min(segment_width[self.segment_of[k]], wide_width) if n else wide_width
                     for k, n in enumerate(narrow)]
        self._generic(equations, eq_widths)
        self.early: list[tuple[int, np.ndarray]] = []
        self.early_base = self._early(equations, read_by={op.node for eqn in equations for op in eqn.operands})
        self.predicates: dict[int, tuple] = {}  # select vertex -> (slot, shape, dtype) of its predicate
        self.late: list[tuple[int, np.ndarray]] = []
        self.late_nodes: set[int] = set()
        read = {op.node for eqn in equations for op in eqn.operands if op.node is not None}
        bounded: dict[Any, bool] = {}  # node -> finite wherever the arguments are (module `_poles`)
        self.finite: list[tuple[int, int]] = []  # edge slots of partials without poles (`Eliminator`)
        self.zeros: list[np.ndarray] = []  # edge slots of partials' structural zeros (`Eliminator`)
        for k, eqn in enumerate(equations):
            where = f"equation {k + 1}"
            width = eq_widths[k]
            node = eqn.outputs[0].node
            if node is None:
                raise Unsupported(f"{where} has no vertex")
            constants = [op.value if op.node is None else None for op in eqn.operands]
            operand_bounds = [bounded_operand(op, value, bounded) for op, value in zip(eqn.operands, constants)]
            operands_bounded = all(operand_bounds)
            bounded[node] = operands_bounded and (eqn.primitive is None or eqn.primitive.name in BOUNDED_VALUES)
            if CASE_SUPPORT or DENSE_SUPPORT:
                self._reach(eqn, incoming.get(node, ()), constants, operand_bounds)
            aval = eqn.aval
            shape = tuple(aval.shape) if aval is not None else ()
            if aval is None or not (self._value_dtype_ok(aval.dtype) or self._small_integer(eqn, aval)):
                raise Unsupported(f"{where} makes a value of dtype {getattr(aval, 'dtype', None)}")
            if node in self.early_base and self._late(eqn, node, shape, incoming.get(node, ()), edges, zero,
                                                      early=self.early_base[node]):
                continue
            reads_late = any(op.node in self.late_nodes for op in eqn.operands)  # (traj[-1] of a late traj)
            large = math.prod(shape) > MAX_COMPONENTS or (math.prod(shape) > LATE_MIN_ENTRIES and node not in read)
            if (reads_late or large) and self._late(eqn, node, shape, incoming.get(node, ()), edges, zero):
                continue
            if reads_late:
                raise Unsupported(f"{where} reads a value of more than {MAX_COMPONENTS} entries")
            if self._check_size(shape, where) == 0:  # an empty slice (jnp.roll by 0 makes one): nothing to run
                for e in incoming.get(node, ()):
                    out_shape, in_shape = tuple(e.out_shape), tuple(e.in_shape)
                    nothing = np.zeros(0, np.int64)
                    edges[(e.src, node)] = (Map(e.code, nothing, nothing, nothing, out_shape, in_shape)
                                            if e.code in _MAP_CODES else Valued(e.code, ZERO, out_shape, in_shape))
                self.node_base[node], self.node_shape[node], self.node_dtype[node] = 0, shape, np.dtype(aval.dtype)
                continue
            operands = [self._operand(op) for op in eqn.operands]
            if eqn.primitive is not None and eqn.primitive.name in _VJP_RULED:
                self._check_vjp_rule(eqn, operands)
            # An operand of more than MAX_COMPONENTS entries (a stacked parameter W [L, 4, 4] read
            # as W[l], an early movement of one): only a data movement may read it, as copies of
            # the entries it moves (`_selection`), so no step gathers the operand whole.
            moves_large = any(math.prod(shp) > MAX_COMPONENTS for _, shp, _ in operands)
            if eqn.primitive is not None and eqn.primitive.name == "select_n":
                self.predicates[node] = operands[0]  # for the select's discard (`_discard_tables`)
            sizes_in = [math.prod(shp) for _, shp, _ in operands]
            runs = np.stack([[base for base, _, _ in operands], sizes_in, np.cumsum([0] + sizes_in[:-1]),
                             [1] * len(operands)], axis=1).reshape(-1, 4) if operands else np.zeros((0, 4), np.int64)
            length = sum(sizes_in)
            op_avals = tuple((shp, np.dtype(dt).name) for _, shp, dt in operands)
            head = (eqn.primitive, _params_key(eqn) if eqn.primitive is not None else None, op_avals,
                    (shape, np.dtype(aval.dtype).name))
            partials_at = next_slot
            kind_params = eqn.params  # the parameters its kind's branch binds
            row = None  # integer parts the kind reads besides its operands, the last the partials' read-off (`_rows`)
            lanes = None if moves_large else self._lanes(eqn, operands, shape, incoming.get(node, ()), width, head)
            gathered = None if lanes is not None or moves_large else self._gathered_lanes(
                eqn, operands, shape, incoming.get(node, ()), head)
            if gathered is not None:  # one kind per primitive and dtypes, whatever the shapes and codes
                sources, lane_groups = gathered
                n_out = math.prod(shape)
                slots = np.full(len(operands) * width, zero, np.int64)
                for i, ((base, _, _), source) in enumerate(zip(operands, sources)):
                    slots[i * width:i * width + n_out] = base + source
                runs, length = _runs_of(slots, zero), len(slots)
                readoff = []
                for e in incoming.get(node, ()):
                    positions = tuple(i for i, op in enumerate(eqn.operands) if op.node == e.src)
                    out_shape, in_shape = tuple(e.out_shape), tuple(e.in_shape)
                    if e.code in _MAP_CODES:  # an identity or a static map (checked by `_gathered_lanes`)
                        edges[(e.src, node)] = self._static_edge(e, eqn, operands, positions, head)
                        continue
                    group = lane_groups.index(positions)
                    edges[(e.src, node)] = Valued(e.code, next_slot, out_shape, in_shape)
                    next_slot += edges[(e.src, node)].size
                    lanes_out = np.arange(n_out)
                    readoff.append(_read_off(e.code, out_shape, in_shape, lanes_out, sources[positions[0]],
                                             group * width))
                row = (np.concatenate(readoff),) if readoff else None
                pattern = tuple((False, np.dtype(dt).name) for _, _, dt in operands)
                signature, kind_params = self._lanes_kind(eqn, True, head[1], pattern, width, lane_groups)
                has_partials = row is not None
            elif lanes is not None:  # one kind per primitive and operand pattern, whatever the shape
                pattern, lane_groups = lanes
                runs[:, 2] = np.arange(len(operands)) * width  # operand i in lanes [i * width, (i + 1) * width)
                # A broadcast scalar is read at each of the output's lanes (a run of stride 0), so
                # x * s and x * y are one kind (their partials lane by lane are the same responses).
                broadcast = np.asarray([scalar for scalar, _ in pattern], bool)
                runs[broadcast, 1], runs[broadcast, 3] = math.prod(shape), 0
                pattern = tuple((False, dt) for _, dt in pattern)
                length = len(operands) * width
                for e in incoming.get(node, ()):
                    positions = tuple(i for i, op in enumerate(eqn.operands) if op.node == e.src)
                    out_shape, in_shape = tuple(e.out_shape), tuple(e.in_shape)
                    if e.code in _MAP_CODES:  # an identity, a sum or a broadcast (checked static by `_lanes`)
                        edges[(e.src, node)] = self._static_edge(e, eqn, operands, positions, head)
                    else:
                        at = partials_at + lane_groups.index(positions) * width
                        edges[(e.src, node)] = Valued(e.code, at, out_shape, in_shape)
                next_slot += len(lane_groups) * width
                reduction = eqn.primitive.name in _LANE_REDUCTIONS  # parameters fixed by `_lanes`
                signature, kind_params = self._lanes_kind(eqn, False, None if reduction else head[1], pattern, width,
                                                          lane_groups)
                has_partials = bool(lane_groups)
            else:
                # Partials, one per source node with an edge: value arrays and run-time masks are
                # computed by the branch into consecutive edge slots; static maps need none.
                groups = []
                for e in incoming.get(node, ()):
                    positions = tuple(i for i, op in enumerate(eqn.operands) if op.node == e.src)
                    if not positions:
                        raise Unsupported(f"{where}: edge from node {e.src} matches no operand")
                    if not _floating(self.node_dtype[e.src]):
                        raise Unsupported(f"{where}: edge from a non-float node")
                    out_shape, in_shape = tuple(e.out_shape), tuple(e.in_shape)
                    if (out_shape != normalise_shape(shape) or in_shape != normalise_shape(self.node_shape[e.src])
                            or (e.code != INDEX_MAP and not _tied_sizes_agree(e.code, out_shape, in_shape))):
                        raise Unsupported(f"{where}: edge shapes {out_shape} <- {in_shape} do not match the values")
                    n_out, n_in = math.prod(out_shape), math.prod(in_shape)
                    static = self._static_edge(e, eqn, operands, positions, head) if e.code in _MAP_CODES else None
                    if static is not None:
                        edges[(e.src, node)] = static
                        continue
                    if e.code == INDEX_MAP:
                        name = eqn.primitive.name if eqn.primitive is not None else "copy"
                        if name not in _MASK_MAPS:
                            raise Unsupported(f"{where}: the index map of {name} depends on the values")
                        groups.append((positions, INDEX_MAP, out_shape, in_shape))
                        out, inp = _mask_support(eqn, positions[0] if len(positions) == 1 else None, shape,
                                                 operands[positions[0]][1])
                        edges[(e.src, node)] = Map(INDEX_MAP, out, inp, next_slot + out * n_in + inp, out_shape, in_shape)
                        next_slot += n_out * n_in
                        continue
                    groups.append((positions, e.code, out_shape, in_shape))
                    edges[(e.src, node)] = Valued(e.code, next_slot, out_shape, in_shape)
                    next_slot += edges[(e.src, node)].size
                signature = (*head, tuple(groups))
                sources = None if groups else self._selection(eqn, operands, head, shape, zero)
                if moves_large and sources is None:
                    raise Unsupported(f"{where} reads a value of more than {MAX_COMPONENTS} entries (and does not "
                                      "only move data)")
                segments = None if sources is not None else self._segments(eqn, operands, shape, groups)
                bilinear = None if sources is not None or segments is not None else self._bilinear(
                    eqn, operands, shape, groups)
                if sources is not None:  # one kind, whatever the movement
                    signature = (_SELECTION, None, (), ((1,), self.dtype.name), ())
                    runs, length = _runs_of(np.asarray(sources, np.int64), zero), len(sources)
                elif segments is not None:  # one kind per combiner and dtype, whatever the axes and shapes
                    row = segments
                    signature = (_Segments(_SEGMENT_REDUCTIONS[eqn.primitive.name]), None, op_avals[0][1],
                                 ((1,), np.dtype(aval.dtype).name), bool(groups))
                elif bilinear is not None:  # one kind per dtype, whatever the shapes and axes
                    row = bilinear
                    signature = (_BILINEAR, None, op_avals[0][1], ((1,), np.dtype(aval.dtype).name), bool(groups))
                has_partials = bool(groups)
            if signature not in kinds:
                kinds[signature] = len(kinds)
                templates.append((signature, kind_params))
                if len(kinds) > max(MAX_KINDS, len(equations) // EQUATIONS_PER_KIND):
                    raise Unsupported(f"more than {max(MAX_KINDS, len(equations) // EQUATIONS_PER_KIND)} "
                                      "distinct equation kinds")
            for e in incoming.get(node, ()):
                edge = edges.get((e.src, node))
                if (isinstance(edge, Valued) and edge.size and operands_bounded
                        and has_finite_partials(eqn, constants, e.code)):
                    self.finite.append((edge.base, edge.size))
                if isinstance(edge, Valued) and edge.size:
                    self._case_support(eqn, e, edge)
                    if (DENSE_SUPPORT and edge.size > 1 and self.ruled_poles.get(e.src, NO_POLE) != NO_POLE
                            and (not _has_rule(eqn) or eqn.primitive.name in _WINDOWED)
                            and eqn.primitive.name not in _BRANCHING):
                        self._dense_zeros(eqn, e, edge, operands, head)
            if has_partials and row is not None and row[-1] is not None:
                # Partials read off from local derivatives (`_read_off`): the entries of their
                # value arrays (consecutive from partials_at) that none is are structural zeros.
                self.zeros.append(partials_at + np.flatnonzero(np.asarray(row[-1]) < 0))
            self.node_base[node] = self._allocate_value(math.prod(shape))
            self.node_shape[node] = shape
            self.node_dtype[node] = np.dtype(aval.dtype)
            eq_rows.append((kinds[signature], runs[runs[:, 1] > 0], length, self.node_base[node],
                            partials_at if has_partials else None, row, math.prod(shape)))
            eq_segment.append(int(self.segment_of[k]))
        self.eq_segment = eq_segment
        return self._finish(eq_rows, templates, edges, next_slot, constants_at, zero)

    def _lift(self, eqn):
        """`eqn` with the floating-point literals of the sub-programs it binds whole as constant
        operands (`_lift_literals`: steps of a generated program that differ only in their
        coefficients share a kind), their positions in ``self.lifted`` (by id of the equation)."""
        if eqn.primitive is None or eqn.primitive.name not in _SUB_PROGRAMS:
            return eqn
        params, pieces = _lift_literals(eqn.primitive.name, eqn.params)
        if not pieces or not all(_storable(v, self.dtype) for _, vals in pieces for v in vals):
            return eqn  # (a float64 literal of a body in a float32 program: kept in the text)
        operands, lifted = list(eqn.operands), []
        for at, vals in reversed(pieces):
            operands[at:at] = [Operand(None, v) for v in vals]
            lifted = [p + len(vals) for p in lifted] + list(range(at, at + len(vals)))
        eqn = eqn._replace(params=params, operands=tuple(operands))
        self.lifted[id(eqn)] = frozenset(lifted)
        return eqn

    def _reach(self, eqn, incoming, constants: list, operand_bounds: list[bool]) -> None:
        """How an infinite partial may reach the equation's vertex (`self.poles`, `self.ruled_poles`)
        and whether a ruled pole reaches it through a shared vertex (`self.pole_shared`), from its
        sources' and its partials' (its `incoming` graph edges), as the straight-line path's
        `_eliminate_all` tracks them (`_poles.pole_passes`, `share_pole`, with `_poles.away_from_zero_value`
        on the constants alone: values computed at run time are unknown, a pole more, never one less)."""
        node = eqn.outputs[0].node
        self.defined_by[node] = eqn
        if away_from_zero_value(eqn, constants, self.away, self.defined_by):
            self.away[node] = True
        ruled = _has_rule(eqn)
        for e in incoming:
            entrywise = entrywise_code(e.code, tuple(e.out_shape), tuple(e.in_shape))
            if ruled:
                positions = [i for i, op in enumerate(eqn.operands) if op.node == e.src]
                moves = e.code in _MAP_CODES  # no values to be infinite
                finite = ((all(operand_bounds) or moves or reads_only_the_others(eqn, positions, operand_bounds))
                          and has_finite_partials(eqn, constants, e.code, self.away))
            pole_passes(self.poles, e, entrywise, finite if ruled else False)
            pole_passes(self.ruled_poles, e, entrywise, finite if ruled else True)
            if self.ruled_poles.get(e.src, NO_POLE) != NO_POLE and (e.src in self.shared or e.src in self.pole_shared):
                self.pole_shared.add(e.dst)

    def _case_support(self, eqn, e, edge: Valued) -> None:
        """Keeps the value slots of a select's partial w.r.t. a case (`edge`, 1 where the case is
        taken, else 0) as a run-time support (`CASE_SUPPORT`, `_finish`) where a pole reaches the
        case through a partial that spreads it (a broadcast) or a ruled pole reaches it entrywise
        and the case is read elsewhere too or returned (or the pole came through such a vertex):
        the discard (`_discard_untaken`) cannot zero that pole, so the products that pair the
        select's zeros with it are guarded (`_tape_products.LaneSteps.support`), as the straight-line
        path's `_select_support` keeps them."""
        if not CASE_SUPPORT or eqn.primitive is not lax.select_n_p or eqn.operands[0].node == e.src:
            return
        if (self.poles.get(e.src, NO_POLE) == POLE_SPREAD
                or (self.ruled_poles.get(e.src, NO_POLE) == POLE_ENTRYWISE
                    and (e.src in self.shared or e.src in self.pole_shared))):
            self.case_slots.append(edge.base + np.arange(edge.size))

    def _check_vjp_rule(self, eqn, operands: list) -> None:
        """Refuses a custom VJP rule that is not linear in its cotangent (gradient clipping: no
        Jacobian), as the straight-line path does (`_jacobian._check_linear_vjp_rule`), on abstract
        operands, once per function."""
        from alphagrad.interpreter import _jacobian  # (_jacobian imports this module)

        key = _params_key(eqn)
        if key in self.vjp_rules_checked:
            return
        floats = [i for i, (_, _, dtype) in enumerate(operands) if _floating(dtype)]
        fixed = [np.asarray(op.value) if op.node is None and not isinstance(op.value, (LeafRef, ValueRef))
                 else np.zeros(shape, dtype) for op, (_, shape, dtype) in zip(eqn.operands, operands)]

        def check(*xs):
            def of_floats(*ys):
                values = [jnp.asarray(v) for v in fixed]
                for i, y in zip(floats, ys):
                    values[i] = y
                return (_bind(eqn.primitive, eqn.params, values),)

            _jacobian._check_linear_vjp_rule(eqn, of_floats, xs)

        jax.eval_shape(check, *(jax.ShapeDtypeStruct(operands[i][1], operands[i][2]) for i in floats))
        self.vjp_rules_checked.add(key)

    def _dense_zeros(self, eqn, e, edge: Valued, operands: list, head) -> None:
        """Adds to `self.zeros` the value slots of `edge` (a partial of a primitive without a
        structural rule, or of a convolution, after a ruled pole) that a NaN tangent of its source
        cannot reach through the primitive's JVP rule: exact zeros jax.jacfwd never multiplies (a
        cumulative product's upper triangle, a convolution's entries outside its windows, a kernel
        tap that meets only the padding), so a product with a pole reads 0 for it
        (`_tape_products.LaneSteps.guarded`). The entries are the straight-line path's
        (`_jacobian._static_reach`: computed while building where the tangents pass only through
        sums, products and static data movement, whatever the values; none otherwise), one
        computation per equation kind and operand positions."""
        positions = tuple(i for i, op in enumerate(eqn.operands) if op.node == e.src)
        key = (head, positions)
        if key not in self.reach_of:
            self.reach_of[key] = _static_support(eqn, operands, positions)
        held = self.reach_of[key]
        if held is None or held.shape != (math.prod(edge.out_shape), math.prod(edge.in_shape)):
            return
        out, inp = layout(edge.code, edge.out_shape, edge.in_shape)
        off = np.flatnonzero(~held[out, inp])
        if len(off):
            self.zeros.append(edge.base + off)

    def _narrow(self, equations, sizes: dict, width: int) -> list[bool]:
        """Per equation: whether it runs in a *narrow* segment of the equation loop, one whose
        steps gather, compute and write at most `NARROW_WIDTH` lanes (their own K and O, their
        lanes kinds `NARROW_WIDTH` wide). An equation is narrow where its output and (but for a
        data movement, which reads only the entries it moves) its operands have at most
        `NARROW_WIDTH` entries; runs of fewer than `NARROW_MIN_RUN` narrow equations stay in the
        wide loop, and a program with no narrow run keeps one loop (all False)."""
        def size(op):
            if op.node is not None:
                return sizes.get(op.node, 0)
            if isinstance(op.value, LeafRef):
                return math.prod(self.program.leaf_avals[op.value.index].shape)
            return int(np.size(op.value)) if not isinstance(op.value, ValueRef) else MAX_COMPONENTS + 1
        small = []
        for eqn in equations:
            out = math.prod(eqn.aval.shape) if eqn.aval is not None else MAX_COMPONENTS + 1
            moves = eqn.primitive is None or eqn.primitive.name in _MOVEMENTS
            small.append(out <= NARROW_WIDTH and (moves or all(size(op) <= NARROW_WIDTH for op in eqn.operands)))
        narrow = [False] * len(equations)
        start = 0
        for k in range(1, len(equations) + 1):
            if k == len(equations) or small[k] != small[start]:
                if small[start] and k - start >= NARROW_MIN_RUN:
                    narrow[start:k] = [True] * (k - start)
                start = k
        if not any(narrow) or NARROW_WIDTH <= 0 or width <= 2 * NARROW_WIDTH:
            return [False] * len(equations)
        return narrow

    def _early(self, equations, read_by: set) -> dict[int, int]:
        """Lays out the *early* data movements: equations whose output has more than
        `MAX_COMPONENTS` entries, some equation reads it, and that may only move entries of
        argument leaves, constants and earlier early values (``W.reshape(L, 4, 4)`` of a large
        flat parameter, then read as ``W[l]``). Each is one gather of its sources before the
        equation loop (`Tape.early`, `_late`), and the loop's data movements read only the
        entries they move from it. Returns {node: first value slot}; the slots come before every
        vertex's, so no step's padded write (`_finish`'s O entries from its output slot)
        reaches them."""
        before = set(range(1, self.graph.num_inputs + 1))
        early = {}
        for eqn in equations:
            node = eqn.outputs[0].node if len(eqn.outputs) == 1 else None
            if (node is None or node not in read_by or eqn.aval is None
                    or math.prod(eqn.aval.shape) <= MAX_COMPONENTS
                    or not (eqn.primitive is None or eqn.primitive.name in _MOVEMENTS)
                    or any(op.node is not None and op.node not in before for op in eqn.operands)):
                continue
            early[node] = self._allocate_value(math.prod(eqn.aval.shape))
            before.add(node)
        return early

    def _late(self, eqn, node: int, shape: tuple, incoming, edges: dict, zero: int, early: int | None = None) -> bool:
        """Lays out an equation whose output has more than `MAX_COMPONENTS` entries (or more than
        `LATE_MIN_ENTRIES` and no equation reads it) as a *late* data movement when it only moves
        data (`_selection`) and its partials are static maps: its value is one gather of its
        sources after the equation loop (`Tape.late`), so no step of the loop is widened to its
        size, and its partials are copies like any static map's.
        A trajectory returned by ``jnp.stack`` (an unrolled 10,000-equation integrator of 588
        steps of 30 states: 17,640 entries) ran on the straight-line path (did not finish in 150 s).
        A data movement reading a late value is late too, whatever its size (``traj[-1]``); only
        outputs and late movements may read one (checked by the caller). False (nothing laid out)
        for any other equation."""
        operands = [self._operand(op) for op in eqn.operands]
        op_avals = tuple((shp, np.dtype(dt).name) for _, shp, dt in operands)
        head = (eqn.primitive, _params_key(eqn) if eqn.primitive is not None else None, op_avals,
                (shape, np.dtype(eqn.aval.dtype).name))
        sources = self._selection(eqn, operands, head, shape, zero)
        if sources is None:
            return False
        maps = {}
        for e in incoming:
            positions = tuple(i for i, op in enumerate(eqn.operands) if op.node == e.src)
            static = self._static_edge(e, eqn, operands, positions, head) if positions and e.code in _MAP_CODES else None
            if static is None:
                return False
            maps[(e.src, node)] = static
        edges.update(maps)
        self.node_base[node] = self._allocate_value(math.prod(shape)) if early is None else early
        self.node_shape[node], self.node_dtype[node] = shape, np.dtype(eqn.aval.dtype)
        if early is not None:  # (`_early`: computed before the loop, from leaves, constants and early values)
            self.early.append((early, np.asarray(sources, np.int32)))
            return True
        self.late.append((self.node_base[node], np.asarray(sources, np.int32)))
        self.late_nodes.add(node)
        return True

    def _finish(self, eq_rows, templates, edges, next_slot, constants_at, zero) -> Tape:
        graph, program = self.graph, self.program
        K = max([length for _, _, length, *_ in eq_rows] + [1])
        O = max([math.prod(sig[3][0]) for sig, _ in templates] + [1] + [n_out for *_, n_out in eq_rows]
                + [length for kind, _, length, *_ in eq_rows if templates[kind][0][0] is _SELECTION])
        discard = self._discard_tables(edges, zero)
        # Product edges reuse the slots of deleted edges (value arrays only; maps keep theirs).
        elim = Eliminator(edges, next_slot, lanes_for([p.muls for s in self.steps for p in s.products if p.muls]),
                          self.finite, self.zeros)
        if DISCARD_SUPPORT and discard is not None and elim.steps.lanes == 1 and len(discard.slots):
            # The discard's zeroed entries are a run-time support: a product of one of them (as the
            # out factor) and a possible infinity is guarded by its flag, and so on down every
            # product it reaches (jax.jacfwd drops the terms through an untaken case: 0 * inf
            # further up); `LaneSteps._term` says which terms keep it.
            flags = elim.allocate(len(discard.slots))
            elim.steps.scratch = elim.allocate(GUARD_SCRATCH)
            elim.steps.pole[flags:flags + len(discard.slots)] = False
            elim.steps.support[discard.slots] = flags + np.arange(len(discard.slots))
            elim.steps.new_flag = functools.partial(elim.allocate, 1)
            discard = discard._replace(flags=flags)
        case_flags = None
        if self.case_slots and elim.steps.lanes == 1:
            # A select's zeros kept as a run-time support (`_case_support`): a flag per value slot
            # of its case partials, 1 where the case is taken (the partial's own 0/1, copied after
            # the equation loop: the partial's slots are freed with its edge), guarding as the
            # discard's flags do, and as the flags of a select's zeros (`LaneSteps.kills`: the
            # select drops whatever reaches its case there, so a term keeps the flag whatever its out
            # factor); a slot the discard flags gets the conjunction of both (its discard flag's, read).
            slots = np.unique(np.concatenate(self.case_slots))
            elim.steps.flags_to(int(slots.max()) + 1)
            prior = elim.steps.support[slots].copy()
            flags = elim.allocate(len(slots))
            if elim.steps.scratch < 0:
                elim.steps.scratch = elim.allocate(GUARD_SCRATCH)
                elim.steps.new_flag = functools.partial(elim.allocate, 1)
            targets = flags + np.arange(len(slots))
            elim.steps.pole[targets] = False
            elim.steps.support[slots] = targets
            elim.steps.kill(targets)
            case_flags = (flags, slots.astype(np.int32), prior.astype(np.int32))
        muls = 0
        identities: dict[int, tuple] = {}
        maps: dict[int, tuple] = {}
        for step in self.steps:
            products, flat_muls = _flat_products(elim, step.products, identities, maps)
            muls += flat_muls
            for planned in products:
                muls += self._product(elim, planned)
            vertex = graph.node_id(step.vertex)
            elim.release_all([edges.pop((p, vertex)) for p in step.preds] + [edges.pop((vertex, c)) for c in step.succs])
        if muls != sum(step.cost for step in self.steps):
            raise AssertionError("internal error: the tape's multiplications differ from the plan's")

        # The Jacobian's blocks, dense (code 1): what is left between inputs and outputs.
        inputs = set(range(1, graph.num_inputs + 1))
        outputs_set = {graph.node_id(k) for k in graph.outputs}
        jacobian_edges = {}
        for (src, dst), edge in edges.items():
            if src in inputs and dst in outputs_set:
                if not (isinstance(edge, Valued) and edge.code == 1):
                    dense = Valued(1, elim.allocate(math.prod(edge.out_shape) * math.prod(edge.in_shape)),
                                   edge.out_shape, edge.in_shape)
                    elim.write(dense.base, 1, edge.out_shape, edge.in_shape, terms(edge), fresh=True)
                    edge = dense
                jacobian_edges[(src, dst)] = (edge.base, edge.out_shape, edge.in_shape)
        prod_steps, prod_patterns, prod_records, prod_shapes = elim.steps.finish()
        outputs = []
        for op in program.outputs:
            if op.node in self.known:
                outputs.append(self.known[op.node])  # computed from constants: its Jacobian is zero
            elif op.node is not None:
                outputs.append(_NodeOutput(self.node_base[op.node], self.node_shape[op.node]))
            elif isinstance(op.value, ValueRef):
                raise Unsupported("an output is a value of a multi-output equation")
            else:
                outputs.append(op.value)  # a constant or a LeafRef: its Jacobian is zero

        eq_kind = np.asarray([kind for kind, *_ in eq_rows], np.int32)
        eq_runs, eq_table_at, eq_table = _operand_tables([(runs, length) for _, runs, length, *_ in eq_rows], K, zero)
        eq_out = np.asarray([out for _, _, _, out, *_ in eq_rows], np.int32)
        widths, eq_row, rows = _rows([(kind, row) for kind, *_, row, _ in eq_rows], len(templates))
        functions, sizes = [], []
        for kind, (signature, params) in enumerate(templates):
            value_fn, partial_fn = _branch(signature, params, O, self.dtype, widths[kind])
            # Traced once here, so that an equation the branch cannot re-bind from buffer values
            # (a constant whose dtype the primitive does not take) falls back instead of failing.
            try:
                shapes = (jax.ShapeDtypeStruct((K,), self.dtype), jax.ShapeDtypeStruct((rows.width,), np.int32))
                jax.eval_shape(value_fn, *shapes)
                size = 0 if partial_fn is None else jax.eval_shape(partial_fn, *shapes).shape[0]
            except Exception as err:  # JAX reports binding errors with many exception types
                name = signature[0].name if signature[0] is not None else "copy"
                raise Unsupported(f"a {name} equation cannot run from the tape's buffers: {err}") from err
            functions.append((value_fn, partial_fn))
            sizes.append(size)
        # Kinds whose partials have at most FUSED_PARTIALS entries compute them in the equation
        # loop (padded to the largest of those), the others after it, a kind at a time: a few
        # wide partials no longer send every kind's partials out of the loop (each kind out of
        # it is a vmapped computation and a write loop of its own for XLA to compile: at 1,000
        # equations of the `control` form, 60 of them took 4 of its 7 s of lowering and compiling).
        taken = [[r for r, (k, _, _, _, at, *_) in enumerate(eq_rows) if k == kind and at is not None]
                 for kind in range(len(functions))]
        # Under vmap a step writes its P padded partial entries for the whole batch (256 x 1,024
        # where a multiplication has 32: two thirds of the loop's time at 1,000 equations of the
        # `control` form): the loop computes only the partials of up to the size that leaves at
        # most one equation in `BATCHED_AFTER` to the kinds after it.
        counts = [len(t) if partial_fn is not None else 0 for t, (_, partial_fn) in zip(taken, functions)]
        limit = min(FUSED_PARTIALS, _batched_limit(sizes, counts, len(eq_rows)))

        def loop(limit):  # (branches, eq_partials, whether each kind's partials are in the loop)
            fused = [0 < size <= limit for size in sizes]
            P = max([size for size, f in zip(sizes, fused) if f] + [0])
            if not P:
                return tuple(value_fn for value_fn, _ in functions), None, fused
            # The loop writes P partial entries per equation (the others' into the slack).
            branches = tuple(_fused(value_fn, partial_fn if f else None, P, self.dtype)
                             for (value_fn, partial_fn), f in zip(functions, fused))
            eq_partials = np.asarray([at if at is not None and fused[k] else elim.next_slot
                                      for k, _, _, _, at, *_ in eq_rows], np.int32)
            return branches, eq_partials, fused

        branches, eq_partials, fused = loop(FUSED_PARTIALS)
        batched_branches, batched_eq_partials, batched_fused = loop(limit)
        P = max([size for size, f in zip(sizes, fused) if f] + [0])
        num_edges = elim.next_slot + max(elim.steps.slack, P, 1)  # slack for windows, chunks and padded writes
        partials, batched_partials = [], []
        for kind, (_, partial_fn) in enumerate(functions):
            if taken[kind] and partial_fn is not None and not batched_fused[kind]:
                rows_of = taken[kind]
                at = np.asarray([eq_rows[r][4] for r in rows_of], np.int32)
                # A kind of read-off partials has one size per equation (its value arrays').
                size = np.asarray([sizes[kind] if eq_rows[r][5] is None or eq_rows[r][5][-1] is None
                                   else len(eq_rows[r][5][-1]) for r in rows_of], np.int32)
                batched_partials.append(_PartialKind(partial_fn, eq_runs[rows_of], eq_table_at[rows_of], at,
                                                     eq_row[rows_of], size))
                if not fused[kind]:
                    partials.append(batched_partials[-1])
        segments = self._loop_segments(eq_rows, templates, widths, sizes, fused, batched_fused, eq_out, eq_row,
                                       zero, elim.next_slot)
        constants = np.concatenate(self.constants) if self.constants else np.zeros(0, self.dtype)
        return Tape(
            dtype=self.dtype,
            leaves=tuple(sorted(self.leaf_base.items())),
            bounded_leaves=tuple(sorted(self.bounded_leaves.items())),
            bounded_values=self._bounded_value_slots(),
            constants=constants,
            constants_at=constants_at,
            num_values=self.num_values + O,
            num_edges=num_edges,
            eq_kind=eq_kind,
            eq_runs=eq_runs,
            eq_table_at=eq_table_at,
            eq_table=eq_table,
            zero=zero,
            eq_out=eq_out,
            eq_partials=eq_partials,
            eq_row=eq_row,
            rows=rows.table,
            row_width=rows.width,
            branches=branches,
            partials=tuple(partials),
            batched_branches=batched_branches,
            batched_eq_partials=batched_eq_partials,
            batched_partials=tuple(batched_partials),
            width=(K, O),
            prod_steps=prod_steps,
            prod_patterns=prod_patterns,
            prod_windowed=elim.steps.windowed,
            outputs=tuple(outputs),
            jacobian_edges=jacobian_edges,
            muls=muls,
            prod_records=prod_records,
            prod_shapes=prod_shapes,
            discard=discard,
            case_flags=case_flags,
            late=tuple(self.late),
            early=tuple(self.early),
            segments=segments,
        )

    def _loop_segments(self, eq_rows, templates, widths, sizes, fused, batched_fused, eq_out, eq_row, zero,
                       slack_slot) -> tuple:
        """The equation loop as consecutive segments (`_narrow`), each with its own operand vector
        length K, output width O, partials P and branches (of the kinds it runs), or () for one loop."""
        segment = np.asarray(self.eq_segment, np.int64)
        if not len(segment) or segment.max() == 0:
            return ()
        # Segments alternate between the two classes (`_narrow`); each class runs as one loop body,
        # over the ranges of its equations the schedule gives (so XLA compiles two bodies, whatever
        # the number of segments).
        narrow_class = np.asarray([self.segment_narrow[s] for s in segment], bool)
        out = []
        for cls in (False, True):
            idx = np.flatnonzero(narrow_class == cls)
            rows = [eq_rows[i] for i in idx]
            K = max([length for _, _, length, *_ in rows] + [1])
            used = sorted({kind for kind, *_ in rows})
            local = {kind: i for i, kind in enumerate(used)}
            O = max([math.prod(templates[kind][0][3][0]) for kind in used] + [1] + [n_out for *_, n_out in rows]
                    + [length for kind, _, length, *_ in rows if templates[kind][0][0] is _SELECTION])
            functions = [_branch(templates[kind][0], templates[kind][1], O, self.dtype, widths[kind]) for kind in used]

            def loop(flags):
                P = max([sizes[kind] for kind in used if flags[kind] and sizes[kind] > 0] + [0])
                if not P:
                    return tuple(value_fn for value_fn, _ in functions), None
                branches = tuple(_fused(value_fn, partial_fn if flags[kind] and sizes[kind] > 0 else None, P, self.dtype)
                                 for kind, (value_fn, partial_fn) in zip(used, functions))
                at = np.asarray([a if a is not None and flags[k] and sizes[k] > 0 else slack_slot
                                 for k, _, _, _, a, *_ in rows], np.int32)
                return branches, at

            runs, table_at, table = _operand_tables([(r, length) for _, r, length, *_ in rows], K, zero)
            branches, eq_partials = loop(fused)
            batched_branches, batched_eq_partials = loop(batched_fused)
            out.append(_LoopSegment(np.asarray([local[kind] for kind, *_ in rows], np.int32), runs, table_at, table,
                                    eq_out[idx], eq_row[idx], K, branches, eq_partials, batched_branches,
                                    batched_eq_partials))
        # Schedule: per alternation, [narrow start, narrow end, wide start, wide end) in the classes' tables.
        position = np.zeros(len(segment), np.int64)
        for cls in (False, True):
            position[narrow_class == cls] = np.arange(int(np.sum(narrow_class == cls)))
        schedule = []
        for s in range(int(segment.max()) + 1):
            idx = np.flatnonzero(segment == s)
            if not len(idx):
                continue
            lo, hi = int(position[idx[0]]), int(position[idx[-1]]) + 1
            if self.segment_narrow[s]:
                schedule.append([lo, hi, 0, 0])
            elif schedule and schedule[-1][3] == 0 and schedule[-1][1] > schedule[-1][0]:
                schedule[-1][2:] = [lo, hi]
            else:
                schedule.append([0, 0, lo, hi])
        return (out[0], out[1], np.asarray(schedule, np.int32))

    def _discard_tables(self, edges: dict, zero: int) -> _Discard | None:
        """The discard of a select's untaken cases (`_discard.plan_discard`) as tables over the
        plan's entries (`_Discard`), or None when there is nothing to discard."""
        def is_elementwise(p, u):
            edge = edges.get((p, u))
            return isinstance(edge, Valued) and elementwise_code(edge.code, edge.out_shape, edge.in_shape)

        def maps_entrywise(p, u):
            edge = edges[(p, u)]
            return entrywise_code(edge.code, edge.out_shape, edge.in_shape)

        def reads(p, u):  # (out, inp, mask slots) of the entries a partial can hold, or None
            edge = edges[(p, u)]
            if isinstance(edge, Map):
                return edge.out, edge.inp, edge.mask
            pattern = structural_reads(edge.code, edge.out_shape, edge.in_shape)
            return None if pattern is None else (*pattern, np.full(len(pattern[0]), ONE))

        def cover(p, u):  # the rows each value entry of a valued edge stands for
            edge = edges[(p, u)]
            return value_cover(edge.code, edge.out_shape, edge.in_shape) if isinstance(edge, Valued) else None

        plan = plan_discard(self.program, edges, is_elementwise=is_elementwise, maps_entrywise=maps_entrywise,
                            has_pattern=lambda p, u: reads(p, u) is not None,
                            can_zero=lambda p, u: cover(p, u) is not None)
        if plan is None:
            return None
        offset, D = {}, 0
        for u, _ in plan.nodes:
            offset[u], D = D, D + math.prod(self.node_shape[u])
        cases: dict[tuple[int, int], int] = {}  # (case, select) -> bit set of the case indices it is
        for case in plan.cases:
            cases[(case.case, case.select)] = cases.get((case.case, case.select), 0) | (1 << case.index)
        # Per term: (entry, successor entry, predicate slot, case bits, mask slot, depth).
        terms: list[tuple[np.ndarray, ...]] = []
        depth = {}  # a vertex's uses come before it in plan.nodes
        for u, uses in plan.nodes:
            entries = np.arange(math.prod(self.node_shape[u]))
            depth[u] = 1 + max([depth[w] for w, through, _ in uses if through] + [0])
            for w, through, by_pattern in uses:
                if by_pattern:  # entry j is kept where a kept entry of w reads it
                    out, inp, mask_slots = reads(u, w)
                    n = len(inp)
                    terms.append((offset[u] + inp, offset[w] + out, np.full(n, zero), np.zeros(n), mask_slots,
                                  np.full(n, depth[u])))
                    continue
                bits = cases.get((u, w), 0)
                slot, shape, _ = self.predicates.get(w, (zero, (), None))
                if bits >= 2**31 or (bits and w not in self.predicates):
                    bits = 0  # a case index past 30, or an empty select: kept by this use
                n = len(entries)
                terms.append((offset[u] + entries, offset[w] + entries if through else np.full(n, D),
                              slot + (entries if math.prod(shape) > 1 else np.zeros(n, np.int64)), np.full(n, bits),
                              np.full(n, ONE), np.full(n, depth[u])))
        keeper, successor, predicate, taken_by, mask, level = (np.concatenate(column).astype(np.int64)
                                                              for column in zip(*terms))
        # Sweeps of C terms, one depth after another (ceil(count / C) sweeps per depth): C about
        # N / depths, so that the sweeps hold at most about 2N terms and are at most twice the depths.
        N, levels = len(keeper), max(depth.values())
        C = 1 << min(12, max(0, math.ceil(math.log2(max(1.0, N / levels)))))
        order = np.argsort(level, kind="stable")
        counts = np.bincount(level, minlength=levels + 1)
        sweeps = -(-counts // C)
        within = np.arange(N) - (np.cumsum(counts) - counts)[level[order]]
        sweep_of = (np.cumsum(sweeps) - sweeps)[level[order]] + within // C
        table = np.full((int(sweeps.sum()), C), N, np.int64)
        table[sweep_of, within % C] = order
        zeroed_slots, zeroed_entries, zeroed_rows = [], [], []
        for p, u in plan.zeroed:
            rows = cover(p, u)
            entry, row = rows.pairs()
            zeroed_entries.append(sum(map(len, zeroed_slots)) + entry)
            zeroed_rows.append(offset[u] + row)
            zeroed_slots.append(edges[(p, u)].base + np.arange(rows.count))
        as_int32 = functools.partial(np.concatenate, dtype=np.int32)
        return _Discard(D, as_int32([keeper, [D + 1]]), as_int32([successor, [D + 1]]), predicate.astype(np.int32),
                        taken_by.astype(np.int32), mask.astype(np.int32), table.astype(np.int32),
                        as_int32(zeroed_slots or [np.zeros(0, np.int64)]),
                        as_int32(zeroed_entries or [np.zeros(0, np.int64)]),
                        as_int32(zeroed_rows or [np.zeros(0, np.int64)]))

    def _product(self, elim: Eliminator, planned) -> int:
        """One planned product (the plan's `graph.Product`) as lane steps; its multiplications."""
        edges = elim.edges
        p, v, c = planned.pred, planned.vertex, planned.succ
        out_edge, in_edge = edges[(v, c)], edges[(p, v)]
        old = edges.get((p, c))
        if (out_edge.code, in_edge.code) != (planned.out_code, planned.in_code) or (
                (old is None) != (planned.old_code == 0)):
            raise Unsupported(f"product {planned} does not match the edges the tape holds")
        c_shape, p_shape = out_edge.out_shape, in_edge.in_shape
        valued = isinstance(out_edge, Valued) and isinstance(in_edge, Valued)
        if valued and product_plan(in_edge.code, out_edge.code).result_code != planned.code:
            raise Unsupported(f"product {planned}: the tape's product has another code")

        def fresh_array(code: int) -> Valued:
            edge = Valued(code, 0, c_shape, p_shape)
            return edge._replace(base=elim.allocate(edge.size))

        count = 0
        if old is None and valued:
            new = fresh_array(planned.code)
            count = elim.multiply(out_edge, in_edge, new.base, fresh=True)
        elif old is None and (shared := _identity_product(elim, out_edge, in_edge, planned.code)) is not None:
            new = shared._replace(out_shape=c_shape, in_shape=p_shape)  # no copy: the same value array
        elif old is None:
            maps = isinstance(out_edge, Map) and isinstance(in_edge, Map)  # (`moved` gives a map)
            if maps != (planned.code in _MAP_CODES):
                raise Unsupported(f"product {planned}: the tape's product has another code")
            if maps:
                new = Map(planned.code, *elim.moved(out_edge, in_edge), c_shape, p_shape)
            else:
                new = fresh_array(planned.code)
                if not elim.dense_times_map(out_edge, in_edge, new.base, new.code, fresh=True):
                    elim.write(new.base, new.code, c_shape, p_shape, elim.moved(out_edge, in_edge), fresh=True)
        else:
            code = planned.sum_code
            if code in _MAP_CODES:
                raise Unsupported(f"product {planned}: a sum without values")
            if isinstance(old, Valued) and old.code == code:
                new = old
            else:
                new = fresh_array(code)
                elim.write(new.base, code, c_shape, p_shape, terms(old), fresh=True)
                elim.release(old)
            if valued and planned.code == code:
                count = elim.multiply(out_edge, in_edge, new.base, fresh=False)
            elif valued:
                product = fresh_array(planned.code)
                count = elim.multiply(out_edge, in_edge, product.base, fresh=True)
                elim.write(new.base, code, c_shape, p_shape, terms(product), fresh=False)
                elim.release(product)
            elif not elim.dense_times_map(out_edge, in_edge, new.base, code, fresh=False):
                result = elim.moved(out_edge, in_edge)
                if len(result) == 3:  # two maps: their masks are the values
                    result = (*result, np.full(len(result[0]), ONE, np.int64))
                elim.write(new.base, code, c_shape, p_shape, result, fresh=False)
        if count != planned.muls:
            raise Unsupported(f"product {planned} counts {planned.muls} multiplications, the tape {count}")
        edges[(p, c)] = new
        return count


#: Value-less codes of an identity between values of one shape (`_identity_product`).
_IDENTITIES = frozenset({-1, -6})


def _identity_product(elim: Eliminator, out_edge, in_edge, code: int) -> Valued | None:
    """Of a product of a value array and an identity (an addition's or a copy's partial), the
    value array, when the product may hold its slots (`Eliminator.share`) instead of copying
    them: the same code on the same shapes has the same layout. Else None."""
    for valued, identity in ((out_edge, in_edge), (in_edge, out_edge)):
        if (isinstance(valued, Valued) and isinstance(identity, Map) and identity.code in _IDENTITIES
                and valued.code == code and tuple(identity.out_shape) == tuple(identity.in_shape)
                and len(identity.out) == math.prod(identity.out_shape)
                and np.array_equal(identity.out, identity.inp) and np.all(identity.mask == ONE)
                and elim.share(valued)):
            return valued
    return None


#: A step's products run as flat steps (`LaneSteps.emit_flat`) when at least this many of them
#: can, with at least `FLAT_MIN_ENTRIES` result entries in all (a wide program's elimination
#: writes hundreds of output blocks a step: one record each, planned at once, where planning
#: each product's lane steps cost 100-150 us of Python); the others keep their lane steps, whose
#: one-operation loop is the fastest for a few small products.
FLAT_MIN_PRODUCTS = 8
FLAT_MIN_ENTRIES = 256
#: Contractions of more terms than this keep their lane steps or blocks.
FLAT_MAX_INNER = 8 * DOT_INNER


def _is_identity(edge, identities: dict[int, tuple]) -> bool:
    """Whether a map is an identity between values of one shape (an addition's or a copy's
    partial; memoised by object, the object held so that its id is not reused)."""
    found = identities.get(id(edge))
    if found is None:
        found = identities[id(edge)] = (edge, (
            edge.code in _IDENTITIES and tuple(edge.out_shape) == tuple(edge.in_shape)
            and len(edge.out) == math.prod(edge.out_shape) and np.array_equal(edge.out, edge.inp)
            and np.array_equal(edge.out, np.arange(len(edge.out))) and bool(np.all(edge.mask == ONE))))
    return found[1]


def _flat_spec(out_edge, in_edge, old, planned, identities: dict) -> tuple | None:
    """How flat records compute the product (v->c)(p->v) of `planned` into a dense p->c (`old`:
    the dense edge it adds to, or None): (kind, op, a base, f base, the `FlatShape` fields but
    `inner` and `new`, contracted terms, multiplications), ("map", ...) for a dense block times
    a map (`_map_records`), or None where they do not (the product's lane steps run it).
    Products of a dense block and a diagonal, a scalar multiple of the identity or a dense
    block (either side), and copies and sums of a dense block into a dense one (`op` SELECT, the
    dense block's base as `a`)."""
    out_code, in_code = out_edge.code, in_edge.code
    if planned.code != 1 or out_code != planned.out_code or in_code != planned.in_code:
        return None
    if old is None:
        if planned.old_code != 0:
            return None
    elif old.code != 1 or planned.sum_code != 1 or not isinstance(old, Valued):
        return None
    out_valued, in_valued = isinstance(out_edge, Valued), isinstance(in_edge, Valued)
    n = _size_of(in_edge.in_shape)
    # Strides (cols, a_row, a_col, f_row, f_col, c_row, c_col, a_k, f_k) of a result C [nc, n].
    if out_valued and in_valued:
        if out_code == 1:
            if in_code == 6:  # C[i, j] = A[i, j] d[j]
                return FLAT, MUL, out_edge.base, in_edge.base, (n, n, 1, 0, 1, n, 1, 0, 0), 1, _size_of(out_edge.out_shape) * n
            if in_code == 10:  # C = A s
                return FLAT, MUL, out_edge.base, in_edge.base, (n, n, 1, 0, 0, n, 1, 0, 0), 1, _size_of(out_edge.out_shape) * n
            if in_code == 1:
                nv = _size_of(out_edge.in_shape)
                muls = _size_of(out_edge.out_shape) * nv * n
                if nv == 1:  # C[i, j] = A[i, 0] B[0, j]
                    return FLAT, MUL, out_edge.base, in_edge.base, (n, 1, 0, 0, 1, n, 1, 0, 0), 1, muls
                if nv <= FLAT_MAX_INNER:  # C[i, j] = sum_k A[i, k] B[k, j]
                    return DOT, MUL, out_edge.base, in_edge.base, (n, nv, 0, 0, 1, n, 1, 1, n), nv, muls
            return None
        if in_code == 1 and out_code == 6:  # C[i, j] = d[i] B[i, j]
            return FLAT, MUL, in_edge.base, out_edge.base, (n, n, 1, 1, 0, n, 1, 0, 0), 1, _size_of(out_edge.out_shape) * n
        if in_code == 1 and out_code == 10:  # C = s B
            return FLAT, MUL, in_edge.base, out_edge.base, (n, n, 1, 0, 0, n, 1, 0, 0), 1, _size_of(out_edge.in_shape) * n
        return None
    if out_valued and out_code == 1 and isinstance(in_edge, Map):
        if _is_identity(in_edge, identities):  # C (+)= A
            return FLAT, SELECT, out_edge.base, ONE, (n, n, 1, 0, 0, n, 1, 0, 0), 1, 0
        return _MAP_SPEC
    if in_valued and in_code == 1 and _is_identity(out_edge, identities):  # C (+)= B
        return FLAT, SELECT, in_edge.base, ONE, (n, n, 1, 0, 0, n, 1, 0, 0), 1, 0
    return None


_MAP_SPEC = ("map", SELECT, None, None, None, 1, 0)


@functools.lru_cache(maxsize=4096)
def _size_of(shape: tuple) -> int:
    return math.prod(shape)


def _map_moves(moves: Map, maps: dict) -> tuple:
    """Of a map (v -> p, mask entries, memoised by object like `_is_identity`): its entries in
    rounds (entries adding into one column in successive rounds, as a step writes a slot once):
    [(v, p, mask) arrays per round], and the columns no entry reaches."""
    found = maps.get(id(moves))
    if found is None:
        v, p, mask = moves.out, moves.inp, moves.mask
        order = np.argsort(p, kind="stable")
        starts = np.r_[0, np.nonzero(np.diff(p[order]))[0] + 1] if len(p) else np.zeros(0, np.int64)
        rank = np.empty(len(p), np.int64)
        rank[order] = np.arange(len(p)) - np.repeat(starts, np.diff(np.r_[starts, len(p)]))
        rounds = [(v[rank == r], p[rank == r], mask[rank == r]) for r in range(int(rank.max(initial=-1)) + 1)]
        untouched = np.setdiff1d(np.arange(_size_of(moves.in_shape)), p)
        found = maps[id(moves)] = (moves, rounds, untouched)
    return found[1], found[2]


def _map_records(groups: list, maps: dict, steps, batches: dict) -> None:
    """Flat records of products C[c, p] (+)= sum over a map's entries (v -> p, mask) of
    select(mask, A[c, v]) (dense A [nc, nv], C [nc, n]), a column of C a record, by groups of
    products of one map, nv and freshness (`groups`: (map, nv, fresh, [(A base, C base, nc)])),
    added to `batches` by round; fresh, the columns no entry reaches are written zeros (their
    slots may hold anything)."""
    for moves, nv, fresh, products in groups:
        rounds, untouched = _map_moves(moves, maps)
        n = _size_of(moves.in_shape)
        a_base, c_base, nc = (np.asarray(x, np.int64) for x in zip(*products))
        column = FlatShape(1, nv, 0, 0, 0, n, 0, 0, 0, 1, 0)
        for r, (v, p, mask) in enumerate(rounds):
            shape = steps.flat_shape(column._replace(new=int(fresh and r == 0)))
            batches.setdefault((FLAT, SELECT, r), []).append(np.stack([
                np.repeat(nc, len(v)), (a_base[:, None] + v).reshape(-1), np.tile(mask, len(nc)),
                (c_base[:, None] + p).reshape(-1), np.full(len(nc) * len(v), shape)], axis=1))
        if fresh and len(untouched):
            shape = steps.flat_shape(column._replace(a_row=0, new=1))
            count = len(nc) * len(untouched)
            batches.setdefault((FLAT, SELECT, 0), []).append(np.stack([
                np.repeat(nc, len(untouched)), np.full(count, ZERO), np.full(count, ONE),
                (c_base[:, None] + untouched).reshape(-1), np.full(count, shape)], axis=1))


def _flat_products(elim: Eliminator, products: Sequence, identities: dict, maps: dict) -> tuple[list, int]:
    """The products of one elimination that flat steps can run (`_flat_spec`), as flat records
    (`LaneSteps.emit_flat`: they read the eliminated vertex's edges and write distinct edges,
    so all of them are independent), when there are enough of them (`FLAT_MIN_PRODUCTS`,
    `FLAT_MIN_ENTRIES`); returns the other products (for their lane steps) and the flat ones'
    multiplications (each checked against the plan's)."""
    if len(products) < FLAT_MIN_PRODUCTS:
        return list(products), 0
    edges = elim.edges
    get = edges.get
    found, rest, entries = [], [], 0
    for planned in products:
        out_edge, in_edge = edges[(planned.vertex, planned.succ)], edges[(planned.pred, planned.vertex)]
        old = get((planned.pred, planned.succ))
        spec = _flat_spec(out_edge, in_edge, old, planned, identities)
        if spec is None or spec[-1] != planned.muls:
            rest.append(planned)
            continue
        size = _size_of(out_edge.out_shape) * _size_of(in_edge.in_shape)
        if size > FLAT_GROUP_ENTRIES:
            rest.append(planned)
            continue
        found.append((planned, out_edge, in_edge, old, spec, size))
        entries += size
    if len(found) < FLAT_MIN_PRODUCTS or entries < FLAT_MIN_ENTRIES:
        return list(products), 0
    # Fresh results are allocated before the other products' lane steps free anything (no flat
    # result takes slots a lane step of this elimination still reads), side by side (freed
    # together when their source is eliminated: `Eliminator.release_all`).
    fresh_sizes = [size for _, _, _, old, spec, size in found if old is None and spec[1] != SELECT]
    bases = iter(elim.allocate_all(fresh_sizes))
    batches: dict[tuple[int, int, int], list] = {}  # (kind, op, round) -> records
    map_groups: dict[tuple, list] = {}
    steps, muls = elim.steps, 0
    shape_ids: dict[tuple, int] = {}
    for planned, out_edge, in_edge, old, (kind, op, a, f, strides, inner, count), size in found:
        key = (planned.pred, planned.succ)
        c_shape, p_shape = out_edge.out_shape, in_edge.in_shape
        if old is not None:
            base = old.base
        elif op != SELECT:
            base = next(bases)
            edges[key] = Valued(1, base, c_shape, p_shape)
        elif kind == FLAT and (dense := out_edge if isinstance(out_edge, Valued) else in_edge).size and elim.share(dense):
            edges[key] = dense._replace(out_shape=c_shape, in_shape=p_shape)  # a copy holding the block's slots
            continue
        else:
            base = elim.allocate(size)
            edges[key] = Valued(1, base, c_shape, p_shape)
        muls += count
        if kind == "map":
            map_groups.setdefault((id(in_edge), _size_of(out_edge.in_shape), old is None), (in_edge, []))[1].append(
                (out_edge.base, base, _size_of(c_shape)))
            continue
        fresh = int(old is None)
        if steps.lanes == 1 and op == MUL and out_edge.code in (6, 10):
            # A diagonal or scalar times a dense block: the out factor first, as every
            # multiplication of a one-operation plan (`LaneSteps._term`: which side a flag is on).
            cols, a_row, a_col, f_row, f_col, c_row, c_col, a_k, f_k = strides
            a, f, strides = f, a, (cols, f_row, f_col, a_row, a_col, c_row, c_col, f_k, a_k)
        if kind == FLAT:
            shape = shape_ids.get((strides, fresh))
            if shape is None:
                shape = shape_ids[(strides, fresh)] = steps.flat_shape(FlatShape(*strides, 1, fresh))
            batch = batches.get((FLAT, op, 0))
            if batch is None:
                batch = batches[(FLAT, op, 0)] = []
            batch.append((size, a, f, base, shape))
            continue
        a_k, f_k = strides[7], strides[8]
        for r, k in enumerate(range(0, inner, DOT_INNER)):  # a contraction's rounds, in order
            shape = steps.flat_shape(FlatShape(*strides, min(DOT_INNER, inner - k), int(fresh and r == 0)))
            batches.setdefault((kind, op, r), []).append((size, a + k * a_k, f + k * f_k, base, shape))
    _map_records([(moves, nv, fresh, group) for (_, nv, fresh), (moves, group) in map_groups.items()], maps, steps,
                 batches)
    for (kind, op, _), parts in sorted(batches.items()):
        tables = [part for part in parts if isinstance(part, np.ndarray)]
        rows = [part for part in parts if not isinstance(part, np.ndarray)]
        table = np.concatenate([np.asarray(rows, np.int64).reshape(-1, 5), *tables])
        steps.emit_flat(kind, op, *table.T)
    return rest, muls


class _Rows(NamedTuple):
    table: np.ndarray
    width: int


def _rows(rows: list, num_kinds: int) -> tuple[list[tuple[int, ...]], np.ndarray, _Rows]:
    """The rows of equations given as (kind, row: None or a tuple of parts, int arrays, the
    last the read-off of its partials or None): per kind the longest of each part (the last:
    its partials' size), where each equation's row starts, and the table (`Tape.rows`): a row
    is its parts one after another, each padded to its kind's longest (the read-off with -1,
    the others with `_NO_SEGMENT`)."""
    widths: list[list[int]] = [[] for _ in range(num_kinds)]
    for kind, row in rows:
        if row is not None:
            lengths = [0 if part is None else len(part) for part in row]
            widths[kind] = [max(a, b) for a, b in zip(widths[kind] or lengths, lengths)]
    table, start, used = [], {}, 0
    eq_row = np.zeros(len(rows), np.int32)
    for e, (kind, row) in enumerate(rows):
        if row is None:
            continue
        parts = [np.pad(np.zeros(0) if part is None else part, (0, width - (0 if part is None else len(part))),
                        constant_values=-1 if last else _NO_SEGMENT)
                 for part, width, last in zip(row, widths[kind], [False] * (len(row) - 1) + [True])]
        entries = np.concatenate(parts).astype(np.int32)
        key = entries.tobytes()
        if key not in start:
            start[key], used = used, used + len(entries)
            table.append(entries)
        eq_row[e] = start[key]
    width = max([len(t) for t in table] + [1])
    return [tuple(w) for w in widths], eq_row, _Rows(np.concatenate(table + [np.full(width, -1, np.int32)]), width)


def _read_off(code: int, out_shape: tuple, in_shape: tuple, out_of: np.ndarray, in_of: np.ndarray,
              offset: int) -> np.ndarray:
    """For each entry of a partial's value array (`layout` of its code): ``offset + p`` where
    the local derivative p is the one of its (output entry, operand entry) pair (``out_of[p]``,
    ``in_of[p]``; pairs distinct), or -1 where no local derivative is (a structural zero)."""
    out_index, in_index = layout(code, out_shape, in_shape)
    n_in = math.prod(in_shape)
    keys = np.asarray(out_of, np.int64) * n_in + np.asarray(in_of, np.int64)
    order = np.argsort(keys, kind="stable")
    wanted = np.asarray(out_index, np.int64) * n_in + np.asarray(in_index, np.int64)
    at = np.minimum(np.searchsorted(keys[order], wanted), len(keys) - 1)
    return np.where(keys[order][at] == wanted, offset + order[at], -1)


def _runs_of(slots: np.ndarray, zero: int) -> np.ndarray:
    """The maximal runs of consecutive slots in `slots` [n] as [r, 4] (first slot, count, position, stride 1);
    positions reading the `zero` slot are in none (a step reads the zero slot where no run is)."""
    if not len(slots):
        return np.zeros((0, 4), np.int64)
    breaks = np.r_[True, (np.diff(slots) != 1) | (slots[1:] == zero) | (slots[:-1] == zero)]
    starts = np.nonzero(breaks)[0]
    runs = np.stack([slots[starts], np.diff(np.r_[starts, len(slots)]), starts, np.ones_like(starts)], axis=1)
    return runs[runs[:, 0] != zero]


def _operand_tables(rows: list[tuple[np.ndarray, int]], K: int, zero: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`Tape.eq_runs`, `eq_table_at` and `eq_table` of equations given as (runs [r, 4], length of
    their operand vector): runs for those of at most `MAX_RUNS` (or as many as any has), the
    others' slots in the table."""
    R = max(1, min(MAX_RUNS, max([len(runs) for runs, _ in rows] + [0])))
    eq_runs = np.zeros((len(rows), R, 4), np.int32)
    table_at = np.full(len(rows), -1, np.int32)
    pieces, used = [], 0
    for row, (runs, length) in enumerate(rows):
        if len(runs) <= R:
            eq_runs[row, :len(runs)] = runs
            continue
        slots = np.full(length, zero, np.int64)
        for first, count, at, stride in runs:
            slots[at:at + count] = first + np.arange(count) * stride
        pieces.append(slots)
        table_at[row], used = used, used + length
    return eq_runs, table_at, np.concatenate(pieces + [np.full(K, zero, np.int64)]).astype(np.int32)


def _operand_slots(runs: jax.Array, table_at: jax.Array, table: jax.Array | None, K: int, zero: int) -> jax.Array:
    """The value slots int32 [K] of one equation's operand vector from its runs [R, 4] (the zero
    slot where none is) or, where `table_at` >= 0, from `table` (None: no equation uses it)."""
    position = jnp.arange(K, dtype=jnp.int32)
    slots = jnp.full((K,), zero, jnp.int32)
    for r in range(runs.shape[0]):
        first, count, at, stride = runs[r, 0], runs[r, 1], runs[r, 2], runs[r, 3]
        slots = jnp.where((position >= at) & (position < at + count), first + (position - at) * stride, slots)
    if table is None:
        return slots
    return jnp.where(table_at >= 0, lax.dynamic_slice_in_dim(table, jnp.maximum(table_at, 0), K), slots)


def _selection_map(name: str, params: dict, shapes: list, at: int, fixed: list) -> tuple[np.ndarray, ...] | None:
    """`_static_map`'s entries of a map that moves each output entry from at most one entry of
    operand `at` (a slice, a static gather, a reshape...), found with `_numpy_map` from three
    numberings of the operand (ones, 1..n, a permutation of them) instead of its n x n identity
    basis: one [n] pass where the basis costs n^2 (``W[l]`` of a stacked [L, 4, 4] parameter in each of
    L layers tabulated L^3 numbers: 2.2 GB per call at L = 1,030). None where the map sums entries,
    or numpy has no rule for it."""
    n_in = math.prod(shapes[at])
    numberings = (np.ones(n_in), np.arange(1.0, n_in + 1), np.random.default_rng(0).permutation(n_in) + 1.0)
    outputs = []
    for numbering in numberings:
        batch = [numbering.reshape(1, *shapes[at]) if i == at else (np.zeros((1, *shapes[i])) if v is None else v)
                 for i, v in enumerate(fixed)]
        moved = _numpy_map(name, params, batch, fixed)
        if moved is None:
            return None
        outputs.append(np.asarray(moved, np.float64).reshape(-1))
    ones, first, second = outputs
    rows = np.flatnonzero(ones)
    if not (np.all(ones[rows] == 1) and np.all(first[ones == 0] == 0) and np.all(second[ones == 0] == 0)):
        return None  # an output entry sums entries (or reads one with a count other than 1)
    sources = first[rows] - 1
    if not np.all((sources >= 0) & (sources < n_in) & (sources == np.round(sources))):
        return None
    sources = sources.astype(np.int64)
    if not np.array_equal(second[rows], numberings[2][sources]):
        return None
    return rows, sources, np.ones(rows.size, np.int64)


def _numpy_map(name: str, params: dict, batch: list, fixed: list) -> np.ndarray | None:
    """The common data movements applied with numpy to operands with a leading batch axis (the
    basis of one operand, zeros for the other floating-point ones): [n_in, *out_shape], or None
    for a primitive (or parameters) handled by binding it."""
    x = batch[0]
    if name == "slice":
        strides = params.get("strides") or (1,) * (x.ndim - 1)
        return x[(slice(None),) + tuple(slice(a, b, c) for a, b, c in
                                         zip(params["start_indices"], params["limit_indices"], strides))]
    if name == "concatenate":
        return np.concatenate(batch, axis=params["dimension"] + 1)
    if name == "reshape" and params.get("dimensions") is None:
        return x.reshape(x.shape[0], *params["new_sizes"])
    if name == "squeeze":
        return x.reshape(x.shape[0], *(d for i, d in enumerate(x.shape[1:]) if i not in params["dimensions"]))
    if name == "transpose":
        return x.transpose(0, *(p + 1 for p in params["permutation"]))
    if name == "rev":
        return np.flip(x, axis=tuple(d + 1 for d in params["dimensions"]))
    if name == "broadcast_in_dim" and len(batch) == 1:
        shape, dims = tuple(params["shape"]), tuple(params["broadcast_dimensions"])
        placed = [1] * len(shape)
        for d, size in zip(dims, x.shape[1:]):
            placed[d] = size
        return np.broadcast_to(x.reshape(x.shape[0], *placed), (x.shape[0], *shape))
    if name == "reduce_sum":
        return x.sum(axis=tuple(a + 1 for a in params["axes"]))
    if name == "gather" and x.ndim == 2 and fixed[1] is not None:  # x[index_array] on a vector (jnp indexing)
        numbers = params["dimension_numbers"]
        if (tuple(numbers.offset_dims), tuple(numbers.collapsed_slice_dims), tuple(numbers.start_index_map)) == (
                (), (0,), (0,)) and tuple(params["slice_sizes"]) == (1,) and fixed[1].shape[-1:] == (1,):
            if not getattr(numbers, "operand_batching_dims", ()) and np.all((fixed[1] >= 0) & (fixed[1] < x.shape[1])):
                return x[:, fixed[1][..., 0]]
    if name == "dynamic_slice" and all(v is not None and v.ndim == 0 for v in fixed[1:]):
        sizes = params["slice_sizes"]
        starts = [min(max(int(v), 0), dim - size) for v, dim, size in zip(fixed[1:], x.shape[1:], sizes)]
        return x[(slice(None),) + tuple(slice(a, a + size) for a, size in zip(starts, sizes))]
    # Each of the rest was bound eagerly before, one XLA compilation per shape (35 of them, about
    # 2 s, in the first call of a 1,000-equation `control` program).
    if name == "stack":
        return np.stack(batch, axis=params["axis"] + 1)
    if name == "cumsum":
        axis = params["axis"] + 1
        return np.flip(np.cumsum(np.flip(x, axis), axis), axis) if params["reverse"] else np.cumsum(x, axis)
    if name in ("add", "sub", "mul", "neg"):  # linear: a constant operand or the basis and zeros
        rank = max(np.ndim(b) for b in batch)
        # Batched operands [n, *shape] and scalar ones [n] against constants [*shape] or [].
        values = [b.reshape(b.shape + (1,) * (rank - b.ndim)) if v is None and b.ndim == 1 else b
                  for b, v in zip(batch, fixed)]
        return {"add": np.add, "sub": np.subtract, "mul": np.multiply, "neg": np.negative}[name](*values)
    if name in ("scatter", "scatter-add") and len(batch) == 3 and fixed[1] is not None and fixed[0] is None:
        return _numpy_scatter(name, params, x, fixed[1], batch[2])
    return None


def _numpy_scatter(name: str, params: dict, operand: np.ndarray, index: np.ndarray,
                   updates: np.ndarray) -> np.ndarray | None:
    """``x.at[index].set(updates)`` / ``.add`` along the first axis (jnp indexing by an integer
    array: whole slices of the other axes) on a batch [n, *shape], or None for other dimension
    numbers, indices out of bounds, or a set at repeated indices (which update wins is XLA's)."""
    numbers = params["dimension_numbers"]
    rank = operand.ndim - 1
    if ((tuple(numbers.inserted_window_dims), tuple(numbers.scatter_dims_to_operand_dims)) != ((0,), (0,))
            or tuple(numbers.update_window_dims) != tuple(range(1, rank))
            or getattr(numbers, "operand_batching_dims", ()) or index.ndim != 2 or index.shape[1] != 1
            or updates.shape[1:] != (index.shape[0], *operand.shape[2:])):
        return None
    index = index[:, 0].astype(np.int64)
    if not np.all((index >= 0) & (index < operand.shape[1])):
        return None
    if name == "scatter" and len(np.unique(index)) != len(index):
        return None
    result = np.array(operand, np.float64)
    for k, i in enumerate(index):
        result[:, i] = result[:, i] + updates[:, k] if name == "scatter-add" else updates[:, k]
    return result


#: Elementwise primitives `_numpy_eval` applies with numpy (index arithmetic on constants).
_NUMPY_ELEMENTWISE = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "neg": np.negative, "max": np.maximum, "min": np.minimum,
    "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal, "eq": np.equal, "ne": np.not_equal,
    "and": np.logical_and, "or": np.logical_or, "not": np.logical_not, "abs": np.abs,
}


class _OutputOf(NamedTuple):
    """Stands in for a primitive of several results: its result `k` (`_split_pieces`)."""

    primitive: Any
    k: int

    @property
    def name(self) -> str:
        return self.primitive.name

    multiple_results = False

    def get_bind_params(self, params: dict) -> dict:
        return self.primitive.get_bind_params(params)

    def bind(self, *args, **params):
        return self.primitive.bind(*args, **params)[self.k]


def _read_ref(op: Operand) -> Operand:
    """An operand reading a value no vertex holds (`ValueRef`) as one reading its piece's output."""
    if op.node is None and isinstance(op.value, ValueRef):
        return Operand(("ref", op.value.equation, op.value.output))
    return op


def _split_pieces(eqn, index: int, read: set) -> list:
    """An equation of several outputs as one equation per output that has a vertex or that an
    equation reads (`read`: `ValueRef`s): a `split` (jnp.split) as slices, any other (a sort of
    several operands: argsort; top_k; a cond or while of several results) as its primitive with
    that result picked (`_OutputOf`: the primitive runs once per such output). Any other equation
    as itself."""
    if eqn.primitive is None or len(eqn.outputs) <= 1:
        return [eqn]
    if eqn.primitive.name != "split" or len(eqn.operands) != 1:
        pieces = []
        for k, (out, aval) in enumerate(zip(eqn.outputs, eqn.avals)):
            if out.node is None and ValueRef(index, k) in read:
                out = Operand(("ref", index, k))
            if out.node is not None:
                pieces.append(eqn._replace(primitive=_OutputOf(eqn.primitive, k), aval=aval, outputs=(out,),
                                           avals=(aval,)))
        return pieces
    axis, pieces, start = eqn.params["axis"], [], 0
    for out, aval, size in zip(eqn.outputs, eqn.avals, eqn.params["sizes"]):
        begin = [0] * len(aval.shape)
        begin[axis] = start
        limit = list(aval.shape)
        limit[axis] = start + int(size)
        start += int(size)
        if out.node is not None:
            params = {"start_indices": tuple(begin), "limit_indices": tuple(limit), "strides": None}
            pieces.append(eqn._replace(primitive=lax.slice_p, params=params, aval=aval, outputs=(out,), avals=(aval,)))
    return pieces


def _numpy_eval(name: str, params: dict, values: list) -> np.ndarray | None:
    """An equation on constants evaluated with numpy, for the primitives that index arithmetic
    uses (comparisons, additions, selections, conversions, data movement), or None."""
    if name in _NUMPY_ELEMENTWISE and all(v.dtype.kind in "biu" for v in values):
        return np.asarray(_NUMPY_ELEMENTWISE[name](*values))
    if name == "select_n" and values[0].dtype.kind in "biu":
        return np.choose(values[0].astype(np.int64), np.broadcast_arrays(*values[1:]))
    if name == "convert_element_type":
        return values[0].astype(params["new_dtype"])
    if not values:  # iota and other equations without operands: bound by the caller
        return None
    moved = _numpy_map(name, params, [v[None] for v in values], [None] + values[1:])
    return None if moved is None else moved[0]


def _wrapping_conversion(x: jax.Array, new_dtype) -> jax.Array:
    """`x` (integers) converted to the integer `new_dtype` as XLA converts them, wrapping around
    modulo 2^bits, with no conversion that changes a value: a kind reads its operands from the
    float buffer and writes its result back, and LLVM folded f64 -> uint32 -> int32 -> f64 (a plain
    conversion, or a bit cast) into no conversion (4294967216 for -80). The wrap-around is
    computed in floats instead, exactly: every integer of at most 32 bits is one in float64 (in
    float32 the builder holds only 8- and 16-bit integers of any value, `_Builder._small_integer`)."""
    source, target = np.dtype(x.dtype), np.dtype(new_dtype)
    info, real = np.iinfo(target), jax.dtypes.canonicalize_dtype(np.float64)
    if ((np.iinfo(source).min >= info.min and np.iinfo(source).max <= info.max)
            or 8 * max(source.itemsize, target.itemsize) > np.finfo(real).nmant + 1):
        return lax.convert_element_type(x, target)  # every value kept (or none held beyond the float's integers)
    value = lax.convert_element_type(x, real)
    span = real.type(2.0 ** (8 * target.itemsize))
    wrapped = value - span * lax.floor((value - real.type(info.min)) / span)
    return lax.convert_element_type(wrapped, target)


#: How an infinite partial may reach a vertex (`_Builder._reach`), as in the straight-line path:
#: not at all; only through partials that send entry k to entry k; or through one that spreads an
#: entry over others (a broadcast, a dense partial), where a select's discard cannot zero it.
#: Primitives with a structural rule whose partials hold the exact zeros of windows (`_Builder._dense_zeros`).
_WINDOWED = frozenset({"conv_general_dilated"})
#: Conditionals: which entries a NaN tangent reaches depends on the branch taken, which
#: `_jacobian._static_reach` never says while building (the straight-line path probes them at run
#: time, `_jacobian._BRANCHING`); `_Builder._dense_zeros` does not trace their JVPs (6-30 ms each).
_BRANCHING = frozenset({"cond"})


def _has_rule(eqn) -> bool:
    """Whether the graph gives the equation's partials by a structural rule (else JAX's dense JVP)."""
    return eqn.primitive is None or (eqn.primitive.name in SUPPORTED_PRIMITIVES
                                     and getattr(eqn.primitive, "primitive", eqn.primitive) is not closed_call_p)




def _static_support(eqn, operands: list, positions: tuple) -> np.ndarray | None:
    """[output entries, operand entries] bool: where a NaN tangent of the operand at `positions`
    reaches the equation's output through its JVP rule, computed while building by the
    straight-line path's `_jacobian._static_reach` (other float operands read as ones, so no
    product cancels), or None where that depends on the values or cannot be computed."""
    from alphagrad.interpreter import _jacobian  # (_jacobian imports this module)

    values = []
    for op, (_, shape, dtype) in zip(eqn.operands, operands):
        if _floating(dtype):
            values.append(np.ones(shape, dtype))
        elif op.node is None and not isinstance(op.value, (LeafRef, ValueRef)):
            values.append(np.asarray(op.value))
        else:
            values.append(np.zeros(shape, dtype))
    x = values[positions[0]]
    if not _floating(x.dtype) or x.size == 0:
        return None

    def of_floats(y):
        return (_bind(eqn.primitive, eqn.params, [y if i in positions else jnp.asarray(v) for i, v in enumerate(values)]),)

    def tangents(t):
        return (t.reshape(x.shape).astype(x.dtype),)

    try:
        found = _jacobian._static_reach(of_floats, (jnp.asarray(x),), tangents, x.size, x.dtype)
    except Exception:  # noqa: BLE001 - a rule JAX cannot trace on stand-ins: no support
        return None
    return None if found is None else np.asarray(found[0], bool)


def _bind(primitive, params: dict, values: list) -> jax.Array:
    """The one output of an equation (an appended output copy when `primitive` is None); a
    conversion between integer dtypes by `_wrapping_conversion`."""
    if primitive is None:
        return values[0]
    if (primitive is lax.convert_element_type_p and np.dtype(values[0].dtype).kind in "iu"
            and np.dtype(params["new_dtype"]).kind in "iu"):
        return _wrapping_conversion(values[0], params["new_dtype"])
    # get_bind_params: call primitives (custom_jvp_call) take their bodies as bind arguments.
    result = primitive.bind(*values, **primitive.get_bind_params(params))
    if primitive.multiple_results:
        if len(result) != 1:
            raise Unsupported(f"a {primitive.name} equation has {len(result)} outputs")
        return result[0]
    return result


def _branch(signature, params: dict, O: int, dtype, widths: tuple[int, ...]):
    """The functions of one equation kind: ``values(ops[K], row[W]) -> out[O]`` (a switch branch
    of the equation loop) and ``partials(ops[K], row[W]) -> [P]`` (its partials' value arrays,
    concatenated, vmapped over the kind's equations), or None when the kind computes no
    partial; `params` are those of the kind's first equation (equal to every other's, by the
    signature); `widths`: the lengths of the parts of the kind's rows (`_rows`).

    Each partial is computed as the straight-line path computes it: a JVP of the equation per
    seed, one seed per index of the operand's untied positions (ones along tied ones), and the
    code's value array read off the responses by a static gather; a run-time index map (code 11)
    is computed whole, [n_out, n_operand] row-major."""
    primitive, _, op_avals, out_shape, groups = signature
    if isinstance(primitive, _Lanes):
        out_shape = out_shape[0]
        return _lanes_branch(primitive.primitive, params, op_avals, out_shape[0], groups, O, dtype,
                             (widths[-1] if widths else 0) if primitive.gathered else None, primitive.shape)
    if primitive is _SELECTION:  # the operand slots are the output's sources, in order
        def select(ops, row):
            return jnp.pad(ops, (0, max(0, O - ops.shape[0])))[:O].astype(dtype)

        return select, None
    if isinstance(primitive, _Segments):
        return _segments_branch(primitive.combine, jnp.dtype(op_avals), groups, O, dtype, widths)
    if primitive is _BILINEAR:
        return _bilinear_branch(jnp.dtype(op_avals), groups, O, dtype, widths)
    out_shape = out_shape[0]
    shapes = [shape for shape, _ in op_avals]
    dtypes = [jnp.dtype(dt) for _, dt in op_avals]
    offsets = np.cumsum([0] + [math.prod(s) for s in shapes]).tolist()
    n_out = math.prod(out_shape)
    plans = []
    for positions, code, out_norm, in_norm in groups:
        sizes = _positions(out_norm, in_norm)
        tied = set() if code == INDEX_MAP else {b for _, b, _ in structure_of(code).ties}
        free = [pos for pos in (3, 4) if pos not in tied]
        num_seeds = math.prod(sizes[pos] for pos in free)
        if code == INDEX_MAP:
            gather = np.arange(n_out * num_seeds).reshape(num_seeds, n_out).T.reshape(-1)
        else:
            out_index, in_index = layout(code, out_norm, in_norm)
            at = {3: in_index // in_norm[1], 4: in_index % in_norm[1]}
            seed = np.zeros(len(in_index), np.int64)
            for pos in free:
                seed = seed * sizes[pos] + at[pos]
            gather = (seed * n_out + out_index).astype(np.int32)
        plans.append((positions, tuple(free), tuple(in_norm), _permutation(gather, num_seeds, n_out)))

    def bind(values):
        return _bind(primitive, params, values)

    def operand_values(ops):
        return [ops[offsets[i]:offsets[i + 1]].reshape(shapes[i]).astype(dtypes[i]) for i in range(len(shapes))]

    def value(ops, row):
        out = jnp.asarray(bind(operand_values(ops))).reshape(-1).astype(dtype)
        return jnp.pad(out, (0, O - n_out))

    def partials(ops, row):
        values = operand_values(ops)
        pieces = []
        for positions, free, in_norm, gather in plans:
            x = values[positions[0]]

            def of_x(y, positions=positions):
                return bind([y if i in positions else v for i, v in enumerate(values)])

            def response(t, x=x, of_x=of_x):
                return jax.jvp(of_x, (x,), (t.reshape(x.shape).astype(x.dtype),))[1].reshape(-1)

            seeds = _seeds(free, in_norm)
            if primitive is not None and primitive.name in _VJP_RULED:
                # No JVP: the rule's rows (one-hot cotangents, [n_out, operand entries]), read as
                # the seeds' responses (a 0/1 matrix product: bookkeeping, not counted).
                y, pull = jax.vjp(of_x, x)
                basis = jnp.eye(n_out, dtype=y.dtype).reshape(n_out, *np.shape(y))
                rows = jax.vmap(lambda ct, pull=pull: pull(ct)[0].reshape(-1))(basis)
                responses = seeds.reshape(len(seeds), -1).astype(rows.dtype) @ rows.T
            else:
                responses = response(seeds[0]) if len(seeds) == 1 else jax.vmap(response)(seeds)
            if isinstance(gather, str):  # the responses in order, or transposed
                responses = responses.reshape(len(seeds), n_out).T if gather == "transpose" else responses
                pieces.append(responses.reshape(-1).astype(dtype))
            else:
                pieces.append(responses.reshape(-1)[gather].astype(dtype))
        return jnp.concatenate(pieces)

    return value, (partials if plans else None)


def _seeds(free: tuple, in_norm: tuple) -> jax.Array:
    """[num_seeds, *in_norm] the JVP seeds of a partial: one per index of its free operand
    positions (3: rows, 4: columns of the normalised operand; row-major), ones along the others.
    Made from iotas (not constants: a dense partial's seeds, an identity of 1,024 x 1,024, were
    8 MB constants XLA held several times while compiling)."""
    rows, cols = in_norm
    count = (rows if 3 in free else 1) * (cols if 4 in free else 1)
    seed = lax.broadcasted_iota(jnp.int32, (count, rows, cols), 0)
    row = lax.broadcasted_iota(jnp.int32, (count, rows, cols), 1)
    col = lax.broadcasted_iota(jnp.int32, (count, rows, cols), 2)
    ok = jnp.ones((count, rows, cols), bool)
    if 3 in free:
        ok &= row == (seed // cols if 4 in free else seed)
    if 4 in free:
        ok &= col == seed % cols
    return ok.astype(jnp.float32)


def _permutation(gather: np.ndarray, num_seeds: int, n_out: int) -> np.ndarray | str:
    """A gather of the responses [num_seeds * n_out] as "identity" or "transpose" where it is one
    (no index constant), else itself."""
    if len(gather) == num_seeds * n_out:
        if np.array_equal(gather, np.arange(len(gather))):
            return "identity"
        if np.array_equal(gather, np.arange(len(gather)).reshape(num_seeds, n_out).T.reshape(-1)):
            return "transpose"
    return gather


#: Under vmap the equation loop computes the partials of the smallest kinds, such that at most
#: one equation in this many computes its partials after the loop (`_batched_limit`).
BATCHED_AFTER = 16


def _batched_limit(sizes: Sequence[int], counts: Sequence[int], equations: int) -> int:
    """The largest partial size the equation loop computes under vmap: the smallest size such
    that the kinds of larger partials (`sizes`, `counts` of their equations) have at most
    ``equations // BATCHED_AFTER`` equations (each kind after the loop is one more computation
    for XLA to compile; each entry of the loop's partials is written at every step)."""
    for limit in sorted({0, *sizes}):
        if sum(c for size, c in zip(sizes, counts) if size > limit) <= equations // BATCHED_AFTER:
            return limit
    return max(sizes, default=0)


def _fused(value_fn, partial_fn, P: int, dtype):
    """A switch branch computing an equation's output and its partials, padded to `P` entries."""
    def branch(ops, row):
        if partial_fn is None:
            return value_fn(ops, row), jnp.zeros((P,), dtype)
        partials = partial_fn(ops, row)
        return value_fn(ops, row), jnp.pad(partials, (0, P - partials.shape[0]))

    return branch


def _segments_branch(combine: str, op_dtype, has_partials: bool, O: int, dtype, widths: tuple[int, ...]):
    """The functions of a reduction over axes: operand position i combined into output entry
    ``row[i]`` (`_NO_SEGMENT`: none; the row's first part); the partials of a maximum, JAX's
    (each maximal entry of a segment 1 / their count, as `lax.reduce_max`'s JVP), read off into
    their value arrays by the row's second part."""
    K, readoff = widths[0], widths[-1]

    def combined(x, seg):
        if combine == "sum":
            return jnp.zeros((O,), op_dtype).at[seg].add(x, mode="drop")
        return jnp.full((O,), -jnp.inf, op_dtype).at[seg].max(x, mode="drop")

    def value(ops, row):
        return combined(ops[:K].astype(op_dtype), row[:K]).astype(dtype)

    def partials(ops, row):
        x, seg = ops[:K].astype(op_dtype), row[:K]
        at = jnp.minimum(seg, O - 1)
        hit = (seg < O) & (x == combined(x, seg)[at])
        count = jnp.zeros((O,), op_dtype).at[seg].add(hit.astype(op_dtype), mode="drop")
        local = jnp.where(hit, hit.astype(op_dtype) / jnp.where(hit, count[at], 1), 0)
        index = row[K:K + readoff]
        return jnp.where(index >= 0, local[jnp.maximum(index, 0)], 0).astype(dtype)

    return value, (partials if has_partials else None)


def _bilinear_branch(op_dtype, has_partials: bool, O: int, dtype, widths: tuple[int, ...]):
    """The functions of a contraction (`_Builder._bilinear`): term t adds ``ops[a[t]] *
    ops[b[t]]`` into output entry ``segment[t]`` (the row's parts a, b, segment); its partials
    are operand entries, read off by the row's last part (positions in ops, or -1)."""
    T, readoff = widths[0], widths[-1]

    def value(ops, row):
        x = ops.astype(op_dtype)
        a, b, seg = row[:T], row[T:2 * T], row[2 * T:3 * T]
        return jnp.zeros((O,), op_dtype).at[seg].add(x[a] * x[b], mode="drop").astype(dtype)

    def partials(ops, row):
        index = row[3 * T:3 * T + readoff]
        return jnp.where(index >= 0, ops[jnp.maximum(index, 0)], 0).astype(dtype)

    return value, (partials if has_partials else None)


def _lanes_branch(primitive, params: dict, pattern, width: int, groups, O: int, dtype, readoff: int | None = None,
                  shape: tuple | None = None):
    """The functions of an elementwise kind: operand i in lanes [i * width, (i + 1) * width) of
    the operand slots (a broadcast scalar in the first); the output and each group's partial
    (the JVP response to a tangent of ones) on `width` lanes, or, given `readoff`, the value
    arrays read off from those responses by the first `readoff` entries of the row. Given
    `shape` (an elementwise call's output and operand shapes, `_Builder._generic`), the call
    is bound on the first lanes reshaped to them (the rest of the lanes are padding)."""

    reduction = primitive.name in _LANE_REDUCTIONS

    def full(values):
        if reduction:  # padding lanes read the zero slot: they add nothing
            return jnp.sum(values[0] * values[1] if len(values) == 2 else values[0])
        if shape is not None:
            out_shape, op_shapes = shape
            n = math.prod(out_shape)
            shaped = [(v if v.ndim == 0 else v[0]) if s == () else v[:n].reshape(s) for v, s in zip(values, op_shapes)]
            out = jnp.reshape(_bind(primitive, params, shaped), (-1,))
            return jnp.pad(out, (0, width - n))
        return _bind(primitive, params, [jnp.broadcast_to(v, (width,)) for v in values])

    def operand_values(ops):
        return [(ops[i * width] if scalar else ops[i * width:(i + 1) * width]).astype(jnp.dtype(dt))
                for i, (scalar, dt) in enumerate(pattern)]

    def value(ops, row):
        out = jnp.asarray(full(operand_values(ops))).astype(dtype)
        out = jnp.broadcast_to(out, (width,)) if reduction else out
        return jnp.pad(out, (0, O - width))

    def partials(ops, row):
        raw = operand_values(ops)
        pieces = []
        for positions in groups:
            def of_x(y, positions=positions):
                return full([y if i in positions else v for i, v in enumerate(raw)])

            x = raw[positions[0]]
            piece = jax.grad(of_x)(x) if reduction else jax.jvp(of_x, (x,), (jnp.ones_like(x),))[1]
            pieces.append(jnp.broadcast_to(piece, (width,)).astype(dtype))
        if readoff is None:
            return jnp.concatenate(pieces)
        local, index = jnp.concatenate(pieces), row[:readoff]
        return jnp.where(index >= 0, local[jnp.maximum(index, 0)], 0)

    return value, (partials if groups else None)


def straight_line_size(graph: Graph, steps: Sequence[Step]) -> int:
    """About how many XLA operations the straight-line path would emit for `graph` and its plan:
    one per equation, per partial (edge) and per product, `ARRAY_WEIGHT` for one on arrays
    (XLA's compile time grows faster than linearly with this number)."""
    program = graph.program
    size = {node: math.prod(program.leaf_avals[leaf].shape) for node, leaf in enumerate(program.input_leaves, start=1)}
    total = 0
    for eqn in program.equations:
        entries = math.prod(eqn.aval.shape) if eqn.aval is not None else 1
        for out in eqn.outputs:
            if out.node is not None:
                size[out.node] = entries
        total += 1 if entries <= 1 else ARRAY_WEIGHT
    for e in graph.edges:
        total += 1 if math.prod(e.out_shape) * math.prod(e.in_shape) <= 1 else ARRAY_WEIGHT
    for step in steps:
        for product in step.products:
            scalar = max(size.get(n, 1) for n in (product.pred, product.vertex, product.succ)) <= 1
            total += 1 if scalar else ARRAY_WEIGHT
    return total


def build(graph: Graph, steps: Sequence[Step]) -> Tape:
    """The tape of `graph`'s program and the plan `steps` (``graph.plan(graph, order)``).

    Raises:
      Unsupported: the graph is outside the tape's class (the message says where).
    """
    if graph.structures:  # labelled structures (rank >= 3 arrays in programs under 200 equations)
        raise Unsupported("the tape executes the 2-D codes only, not labelled structures")
    try:
        return _Builder(graph, steps).build()
    except TypeError as err:  # an unhashable primitive parameter; any other TypeError is a bug
        if "unhashable" not in str(err):
            raise
        raise Unsupported(f"a primitive parameter cannot be compared: {err}") from err
    except Unplannable as err:
        raise Unsupported(str(err)) from err


# ---- running the tape -------------------------------------------------------------------------


#: Most entries (operand slots or partials, times the batch) a step of `_write_partials` gathers
#: or computes at once: bounds the temporaries of partials computed after the equation loop.
PARTIALS_CHUNK_ENTRIES = 1 << 22


def _write_partials(edges: jax.Array, vals: jax.Array, kind: _PartialKind, K: int, slots_of, row_of) -> jax.Array:
    """The partials of every equation of one kind, computed at once (vmapped over its equations:
    they read only the values) in chunks of equations, and scattered into edges [num_edges,
    *batch]: equation i's first ``size[i]`` entries from slot ``at[i]`` (the rest dropped)."""
    batch = vals.shape[1:]
    fn = jax.vmap(kind.fn)
    if batch:
        fn = jax.vmap(fn, in_axes=(2, None), out_axes=2)
    P = int(jax.eval_shape(kind.fn, jax.ShapeDtypeStruct((K,), vals.dtype),
                           jax.ShapeDtypeStruct(row_of(0).shape, jnp.int32)).shape[0])
    n = len(kind.at)
    chunk = max(1, min(n, PARTIALS_CHUNK_ENTRIES // (max(K, P) * math.prod(batch))))
    count = -(-n // chunk)

    def padded(table, fill=0):  # [count, chunk, ...]; padding equations have size 0: write nothing
        table = np.asarray(table)
        extra = np.full((count * chunk - n, *table.shape[1:]), fill, table.dtype)
        return jnp.asarray(np.concatenate([table, extra]).reshape(count, chunk, *table.shape[1:]))

    tables = (padded(kind.runs), padded(kind.table_at, -1), padded(kind.row_at), padded(kind.at), padded(kind.size))
    inside = jnp.arange(P, dtype=jnp.int32)

    def body(edges, tables):
        runs, table_at, row_at, at, size = tables
        values = fn(vals[jax.vmap(slots_of)(runs, table_at)], jax.vmap(row_of)(row_at))  # [chunk, P, *batch]
        index = jnp.where(inside[None, :] < size[:, None], at[:, None] + inside[None, :], edges.shape[0])
        return edges.at[index.reshape(-1)].set(values.reshape(chunk * P, *batch), mode="drop"), None

    if count == 1:
        return body(edges, jax.tree.map(lambda t: t[0], tables))[0]
    return lax.scan(body, edges, tables)[0]


def _discard_untaken(edges: jax.Array, vals: jax.Array, discard: _Discard) -> jax.Array:
    """Zeroes the partial entries that only reach the outputs through a select's untaken case
    (`_Discard`), as the straight-line path does (`_jacobian._discard_masked_partials`):
    edges [num_edges, *batch], vals [num_values, *batch]."""
    batch = vals.shape[1:]
    predicate = jnp.clip(vals[jnp.asarray(discard.predicate)].astype(jnp.int32), 0, 30)  # [N, *batch]
    taken_by = jnp.asarray(discard.taken_by).reshape(-1, *(1,) * len(batch))
    keeps = ((taken_by == 0) | ((taken_by >> predicate) & 1 == 1)) & (edges[jnp.asarray(discard.mask)] != 0)
    keeps = jnp.concatenate([keeps, jnp.zeros((1, *batch), bool)])  # the padding term
    entry, successor = jnp.asarray(discard.entry), jnp.asarray(discard.successor)

    def sweep(kept, terms):  # kept [D + 2, *batch]: entries D (always kept) and D + 1 (never)
        return kept.at[entry[terms]].max(keeps[terms] & kept[successor[terms]]), None

    kept = jnp.zeros((discard.size + 2, *batch), bool).at[discard.size].set(True)
    kept, _ = lax.scan(sweep, kept, jnp.asarray(discard.terms))
    slots = jnp.asarray(discard.slots)
    needed = jnp.zeros((len(discard.slots), *batch), bool).at[jnp.asarray(discard.entries)].max(
        kept[jnp.asarray(discard.rows)])
    edges = edges.at[slots].set(jnp.where(needed, edges[slots], jnp.zeros((), edges.dtype)))
    if discard.flags >= 0:
        edges = lax.dynamic_update_slice_in_dim(edges, needed.astype(edges.dtype), discard.flags, axis=0)
    return edges


def _execute(tape: Tape, vals: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The tape on buffers whose slot axis comes first: vals [num_values, *batch] (its leaves and
    constants filled in) -> (vals, edges [num_edges, *batch]), with at most one batch axis.

    With the batch axis last, each step reads and writes whole contiguous rows of the batch.
    Batched, the loop computes fewer kinds' partials (`Tape.batched_branches`).
    """
    batch = vals.shape[1:]

    rows = jnp.asarray(tape.rows)
    W = tape.row_width

    def row_of(at):
        return lax.dynamic_slice_in_dim(rows, at, W)

    after = tape.batched_partials if batch else tape.partials

    # The constant slot's 1 behind a barrier: a buffer of zeros with a constant 1 written in is
    # folded by XLA into a constant of the whole buffer (268 MB for `control` at 1,000 equations
    # and batch 1,024), held in the executable and copied at every call.
    one = lax.optimization_barrier(jnp.ones((1, *batch), vals.dtype))
    edges = lax.dynamic_update_slice_in_dim(jnp.zeros((tape.num_edges, *batch), vals.dtype), one, ONE, axis=0)
    for base, sources in tape.early:  # large data movements of the arguments and constants, in equation order
        vals = lax.dynamic_update_slice_in_dim(vals, vals[jnp.asarray(sources)], base, axis=0)
    K = tape.width[0]
    table = jnp.asarray(tape.eq_table) if np.any(tape.eq_table_at >= 0) else None
    slots_of = functools.partial(_operand_slots, table=table, K=K, zero=tape.zero)
    if not tape.segments:
        whole = _LoopSegment(tape.eq_kind, tape.eq_runs, tape.eq_table_at, tape.eq_table, tape.eq_out, tape.eq_row, K,
                             tape.branches, tape.eq_partials, tape.batched_branches, tape.batched_eq_partials)
        vals, edges = _run_segment(whole, vals, edges, batch, row_of, tape.zero)
    else:
        wide, narrow, schedule = tape.segments

        def alternation(carry, bounds):
            vals, edges = carry
            vals, edges = _run_segment(narrow, vals, edges, batch, row_of, tape.zero, bounds[0], bounds[1])
            vals, edges = _run_segment(wide, vals, edges, batch, row_of, tape.zero, bounds[2], bounds[3])
            return (vals, edges), None

        (vals, edges), _ = lax.scan(alternation, (vals, edges), jnp.asarray(schedule))
    for base, sources in tape.late:  # data movements too large for the loop's steps, in equation order
        vals = lax.dynamic_update_slice_in_dim(vals, vals[jnp.asarray(sources)], base, axis=0)
    # The partials of every equation of a kind at once: they read only the values.
    for kind in after:
        edges = _write_partials(edges, vals, kind, K, slots_of, row_of)
    if tape.discard is not None:
        edges = _discard_untaken(edges, vals, tape.discard)
    if tape.case_flags is not None:  # a select's zeros as a support (`_Builder._case_support`)
        base, slots, prior = tape.case_flags
        taken = edges[jnp.asarray(slots)] != 0
        if np.any(prior >= 0):  # and kept by the discard
            taken &= (prior < 0).reshape(-1, *(1,) * (edges.ndim - 1)) | (edges[jnp.asarray(np.maximum(prior, 0))] != 0)
        edges = lax.dynamic_update_slice_in_dim(edges, taken.astype(edges.dtype), base, axis=0)
    return vals, run_steps(edges, tape.prod_steps, tape.prod_patterns, tape.prod_windowed, tape.prod_records,
                           tape.prod_shapes)


def _run_segment(seg: _LoopSegment, vals: jax.Array, edges: jax.Array, batch: tuple, row_of, zero: int,
                 start=None, stop=None):
    """The equation loop over a segment's equations (all, by a scan; or those in [start, stop),
    by a loop of as many trips): (vals, edges)."""
    branches, eq_partials = (seg.batched_branches, seg.batched_eq_partials) if batch else (seg.branches, seg.eq_partials)

    def kinds(kind, ops, row_at):
        return lax.switch(kind, branches, ops, row_of(row_at))

    if batch:  # the branches are written for one example; the kind and the row are the same for all
        kinds = jax.vmap(kinds, in_axes=(None, 1, None), out_axes=1)
    table = jnp.asarray(seg.eq_table) if np.any(seg.eq_table_at >= 0) else None
    slots_of = functools.partial(_operand_slots, table=table, K=seg.K, zero=zero)
    if eq_partials is not None:
        def equation(carry, row):
            vals, edges = carry
            kind, runs, table_at, out_at, partials_at, row_at = row
            out, partials = kinds(kind, vals[slots_of(runs, table_at)], row_at)
            vals = lax.dynamic_update_slice_in_dim(vals, out, out_at, axis=0)
            return (vals, lax.dynamic_update_slice_in_dim(edges, partials, partials_at, axis=0)), None

        steps = (seg.eq_kind, seg.eq_runs, seg.eq_table_at, seg.eq_out, eq_partials, seg.eq_row)
        if start is not None:
            tables = tuple(jnp.asarray(t) for t in steps)
            return lax.fori_loop(start, stop, lambda i, c: equation(c, tuple(t[i] for t in tables))[0], (vals, edges))
        (vals, edges), _ = lax.scan(equation, (vals, edges), steps)
        return vals, edges

    def equation(vals, row):
        kind, runs, table_at, out_at, row_at = row
        out = kinds(kind, vals[slots_of(runs, table_at)], row_at)
        return lax.dynamic_update_slice_in_dim(vals, out, out_at, axis=0), None

    steps = (seg.eq_kind, seg.eq_runs, seg.eq_table_at, seg.eq_out, seg.eq_row)
    if start is not None:
        tables = tuple(jnp.asarray(t) for t in steps)
        return lax.fori_loop(start, stop, lambda i, v: equation(v, tuple(t[i] for t in tables))[0], vals), edges
    vals, _ = lax.scan(equation, vals, steps)
    return vals, edges


def _buffers(tape: Tape, leaves: list[Any]) -> tuple[jax.Array, jax.Array]:
    """Executes the tape on the flattened arguments: (vals [num_values], edges [num_edges]).

    Under `jax.vmap` the loops run on [slots, batch] buffers (a `custom_vmap` rule moves the
    batch axis last): vmap's own batching of a loop carry puts the batch axis first, and then
    every scalar step reads and writes a strided column of the buffer, several times slower.
    """
    dtype = tape.dtype
    # One concatenation of the leaves and the constants at their slots, zeros between: an update
    # of the buffer per leaf was an XLA kernel each to compile (200 arguments of benchmarks/
    # scale.py's many-io: about 1 s of its first call).
    pieces = [(base, jnp.asarray(leaves[leaf]).reshape(-1).astype(dtype)) for leaf, base in tape.leaves]
    if tape.constants.size:
        pieces.append((tape.constants_at, jnp.asarray(tape.constants, dtype)))
    parts, at = [], 0
    for base, value in sorted(pieces, key=lambda piece: piece[0]):
        if base > at:
            parts.append(jnp.zeros((base - at,), dtype))
        parts.append(value)
        at = base + value.shape[0]
    if tape.num_values > at:
        parts.append(jnp.zeros((tape.num_values - at,), dtype))
    vals = jnp.concatenate(parts) if parts else jnp.zeros((tape.num_values,), dtype)

    def plain(vals):
        return _execute(tape, vals)

    @jax.custom_batching.custom_vmap
    def rows_batched(vals):
        return _execute(tape, vals)

    @rows_batched.def_vmap
    def _batched(axis_size, in_batched, vals):  # vals [batch, num_values]
        vals, edges = _execute(tape, vals.T)
        return (vals.T, edges.T), (True, True)

    # custom_vmap functions cannot be differentiated in reverse mode (nor, nested, in forward
    # mode): derivatives of the Jacobian go through the plain loops.
    @jax.custom_jvp
    def execute(vals):
        return rows_batched(vals)

    @execute.defjvp
    def _jvp(primals, tangents):
        return jax.jvp(plain, primals, tangents)

    vals, edges = execute(vals)
    if tape.bounded_leaves:  # an integer leaf beyond its bound: NaN, not rounded indices
        held = functools.reduce(jnp.logical_and, [jnp.all(jnp.abs(jnp.asarray(leaves[leaf])) <= bound)
                                                  for leaf, bound in tape.bounded_leaves])
        vals, edges = (jnp.where(held, a, jnp.asarray(jnp.nan, a.dtype)) for a in (vals, edges))
    if tape.bounded_values:  # a loop's integer result beyond its bound (stored rounded): NaN as well
        held = functools.reduce(jnp.logical_and, [jnp.all(jnp.abs(vals[at:at + size]) <= bound)
                                                  for at, size, bound in tape.bounded_values])
        vals, edges = (jnp.where(held, a, jnp.asarray(jnp.nan, a.dtype)) for a in (vals, edges))
    return vals, edges


def run(tape: Tape, leaves: list[Any]) -> tuple[list[Any], dict[tuple[int, int], Partial]]:
    """Executes the tape on the flattened arguments (`_buffers`).

    Returns:
      (outputs: per flattened output its primal value, edges:
      ``{(input node, output node): Partial}`` (dense, code 1), the Jacobian's blocks, as
      `_jacobian._eliminate_all` returns them for `_jacobian._assemble`).
    """
    vals, edges = _buffers(tape, leaves)
    outputs = []
    for out in tape.outputs:
        if isinstance(out, LeafRef):
            outputs.append(leaves[out.index])
        elif isinstance(out, _NodeOutput):
            outputs.append(vals[out.base : out.base + math.prod(out.shape)].reshape(out.shape))
        else:
            outputs.append(out)
    blocks = {}
    for key, (base, out_shape, in_shape) in tape.jacobian_edges.items():
        value = edges[base : base + math.prod(out_shape) * math.prod(in_shape)]
        blocks[key] = Partial(1, out_shape, in_shape, value.reshape(*out_shape, *in_shape))
    return outputs, blocks


def dense_index(tape: Tape, out_nodes: Sequence[int | None], out_sizes: Sequence[int],
                in_nodes: Sequence[int | None], in_sizes: Sequence[int]) -> jax.Array:
    """int32[R, C]: the edge slot of every entry of the dense Jacobian (R = sum(out_sizes) rows,
    C = sum(in_sizes) columns), the zero slot where no edge joins the two nodes (a node None:
    a constant output, an integer input).

    Entry (r, c) in the block of output o and input i is entry (r - row0[o], c - col0[i]) of that
    block's dense value array (`Tape.jacobian_edges`, row-major [out entries, in entries]). The
    index is computed in the program from tables of one entry per block, row and column, not held
    as an [R, C] constant (which would grow with the Jacobian: 30 M entries for a ten times larger
    ``many-io`` program); an optimization barrier keeps XLA from folding it into one while compiling.
    """
    base = np.full((len(out_nodes), len(in_nodes)), -1, np.int64)
    for o, dst in enumerate(out_nodes):
        for i, src in enumerate(in_nodes):
            if src is not None and dst is not None and (src, dst) in tape.jacobian_edges:
                base[o, i] = tape.jacobian_edges[(src, dst)][0]
    if base.max(initial=-1) >= 2**31:
        raise Unsupported("the edge buffer has more slots than an int32 index reaches")

    def spans(sizes):  # per entry: its block and its offset in the block
        block = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
        offset = np.arange(len(block), dtype=np.int32) - np.repeat(np.cumsum([0, *sizes])[:-1], sizes).astype(np.int32)
        return block, offset

    row_block, row_offset = spans(list(out_sizes))
    col_block, col_offset = spans(list(in_sizes))
    tables = lax.optimization_barrier(tuple(jnp.asarray(t) for t in (
        base.astype(np.int32), row_block, row_offset, col_block, col_offset, np.asarray(in_sizes, np.int32))))
    base, row_block, row_offset, col_block, col_offset, in_size = tables
    at = base[row_block[:, None], col_block[None, :]]
    index = at + row_offset[:, None] * in_size[col_block][None, :] + col_offset[None, :]
    return jnp.where(at < 0, ZERO, index)


def run_dense(tape: Tape, leaves: list[Any], out_nodes: Sequence[int | None], out_sizes: Sequence[int],
              in_nodes: Sequence[int | None], in_sizes: Sequence[int]) -> jax.Array:
    """Executes the tape on the flattened arguments and reads the whole Jacobian out of its edge
    buffer with one gather (`dense_index`): [sum(out_sizes), sum(in_sizes)] in the tape's dtype.

    One slice per block (`run`) makes XLA compile an operation and an output buffer per block,
    which dominated the first call of programs with thousands of blocks (benchmarks/scale.py's
    ``many-io``: 82 s of compilation for 2,677 blocks, the tape itself 6.7 s).
    """
    edges = _buffers(tape, leaves)[1]
    return edges[dense_index(tape, out_nodes, out_sizes, in_nodes, in_sizes)]


def run_blocks(tape: Tape, leaves: list[Any], keys: Sequence[tuple[int, int]]) -> jax.Array:
    """Executes the tape on the flattened arguments and reads the Jacobian blocks of `keys` (keys
    of `Tape.jacobian_edges`) out of its edge buffer with one gather: their value arrays raveled,
    one after another ([their entries], the tape's dtype). `_jacobian._SplitPytree` cuts the
    blocks out of it after the call: a slice per block, each an output of the compiled
    computation, made XLA compile for minutes when a Jacobian had thousands of blocks (`run_dense`).

    The index is computed in the program from tables of one entry per block (`dense_index`).
    """
    spans = [tape.jacobian_edges[key] for key in keys]
    sizes = np.asarray([math.prod(out_shape) * math.prod(in_shape) for _, out_shape, in_shape in spans], np.int64)
    total = int(sizes.sum())
    if total == 0:
        return jnp.zeros((0,), tape.dtype)
    bases = np.asarray([base for base, _, _ in spans], np.int64)
    if int((bases + sizes).max()) >= 2**31 or total >= 2**31:
        raise Unsupported("the edge buffer has more slots than an int32 index reaches")
    starts = np.cumsum(sizes) - sizes
    tables = lax.optimization_barrier(tuple(jnp.asarray(t.astype(np.int32)) for t in (bases, starts, sizes)))
    base, start, size = tables
    block = jnp.repeat(jnp.arange(len(spans), dtype=np.int32), size, total_repeat_length=total)
    index = base[block] + jnp.arange(total, dtype=np.int32) - start[block]
    edges = _buffers(tape, leaves)[1]
    return edges[index]
