"""`jacobian(f, order)`: exact Jacobians by cross-country vertex elimination, as JAX computations."""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import math
import operator
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal
from jax.extend.core.primitives import closed_call_p

from alphagrad import orders as orders_lib
from alphagrad.errors import AlphagradError, AuxOutputError, TraceError, UnsupportedPrimitiveError
from alphagrad.graph import (
    ELEMENTWISE_BINARY,
    FIRST_EXTENDED_CODE,
    INDEX_MAP,
    LINEARISED_INDEX_MAPS,
    LINEAR_OPERANDS,
    VALUELESS,
    AxisTies,
    Equation,
    Graph,
    LeafRef,
    Operand,
    Program,
    Product,
    SUPPORTED_PRIMITIVES,
    Step,
    axis_ties_of,
    ValueRef,
    bind_python_leaves,
    cost_model_of,
    cost_models,
    jacobian_graph,
    plan,
    python_leaves,
    resolve_order,
    structure_of,
)
from alphagrad.interpreter import _loops, _tape
from alphagrad.interpreter._discard import (
    READS_MAX, RowCover, elementwise_code, entrywise_code, plan_discard, structural_reads, value_cover,
)
from alphagrad.interpreter._poles import (
    FINITE_PARTIALS, NO_POLE, POLE_ENTRYWISE, POLE_SPREAD, away_from_zero_value, bounded_operand, bounded_value, computed_from_constants,
    fold_constants, has_finite_partials, pole_passes, reads_only_the_others, tested_arguments,
)
from alphagrad.interpreter._convolution import convolution_values
from alphagrad.interpreter._labelled import Labelled, densify_labelled, labelled_partial
from alphagrad.interpreter._structured import (
    _NUMPY_RULES,
    IndexMap,
    MultiplicationCounter,
    PATTERN_AT_TRACE_TIME_MAX,
    Partial,
    Placed,
    RunTimeSupport,
    _at_trace_time,
    _diagonal_support,
    _support,
    add,
    broadcast_partial,
    broadcast_pattern,
    is_broadcast,
    contract,
    densify,
    extract,
    multiply,
    SharedReads,
    read_constant,
)
from alphagrad.interpreter._windows import WindowChoiceMap, window_choice_map

__all__ = ["jacobian", "unravel_jacobian", "count_muls", "graph_of", "OUTPUTS"]


def _dtype_of(value: Any):
    """The dtype of an array or Python scalar (PRNG keys keep their extended dtype)."""
    return value.dtype if hasattr(value, "dtype") else jnp.result_type(value)


def _is_float(value: Any) -> bool:
    return jnp.issubdtype(_dtype_of(value), jnp.floating)


#: What the interpreter counted when it traced a Jacobian: per function, {(input signature,
#: argnums, plan): multiplications}. `count_muls` returns a recorded count instead of tracing the
#: elimination again (an abstract trace of a 150-vertex program takes seconds); a function that
#: is gone takes its records with it.
_PERFORMED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _record_performed(f: Callable, args: tuple, argnums, steps: tuple, total: int) -> None:
    try:
        _PERFORMED.setdefault(f, {})[(_signature(args), argnums, steps)] = total
    except TypeError:  # an object without weak references (or unhashable): nothing recorded
        pass


def _signature(args: tuple) -> tuple:
    leaves, tree = jax.tree.flatten(args)
    return tree, tuple(
        (tuple(np.shape(x)), str(jnp.result_type(x)), isinstance(x, (int, float)) or getattr(x, "weak_type", False))
        for x in leaves
    )


def _argnum_positions(argnums: int | Sequence[int], count: int) -> tuple[int, ...]:
    """`argnums` as a tuple of positions among `count` arguments (negative ones counted from the
    end; out-of-range ones kept as they are, for the boundary to name)."""
    return tuple(k % count if -count <= k < 0 else k for k in ((argnums,) if isinstance(argnums, int) else argnums))


def _python_leaves(f: Callable, args: tuple, argnums, decided: dict | None = None) -> tuple[int, ...]:
    """The leaves of `args` that `graph.trace` binds as Python values for f (`graph.python_leaves`:
    strings and callables outside argnums always, numbers there where tracing them fails), so that
    the interpreter executes graph.jacobian_graph's graph. `decided` caches the numbers' verdict
    per signature (it needs a trace; it does not depend on their values)."""
    untraceable = python_leaves(args, argnums)
    if untraceable:
        return untraceable  # f with them bound decides about the numbers
    if not python_leaves(args, argnums, numbers=True):
        return ()
    key = _signature(args)
    if decided is None or key not in decided:
        leaves = jacobian_graph(f, *args, argnums=argnums).program.bound
        if decided is None:
            return leaves
        decided[key] = leaves
    return decided[key]


def graph_of(f: Callable, *args: Any, argnums: int | Sequence[int] = 0) -> Graph:
    """The elimination graph (exact cost model) the interpreter uses for `f` at these arguments
    (`alphagrad.graph.jacobian_graph`): arguments outside `argnums` that JAX cannot trace (a mode
    string), or numbers there that f loops on, are bound as Python values (``program.bound``), as
    `jacobian` binds them."""
    return jacobian_graph(f, *args, argnums=argnums)


# ---- evaluation ---------------------------------------------------------------------------


def _operand_value(op: Operand, env: dict[Any, Any], leaves: list[Any]) -> Any:
    """The value of an operand; `env` holds nodes by id and values without vertices by ValueRef."""
    if op.node is not None:
        return env[op.node]
    if isinstance(op.value, LeafRef):
        return leaves[op.value.index]
    if isinstance(op.value, ValueRef):
        return env[op.value]
    return op.value


def _bind_all(eqn: Equation, values: list[Any]) -> list[Any]:
    """All outputs of the equation at these operand values."""
    if eqn.primitive is None:  # an appended output copy
        return [values[0]]
    # Call primitives (a fused complex span, functions with custom derivatives) take their bodies
    # as bind arguments, as jax.core.eval_jaxpr passes them.
    result = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
    # Some primitives (device_put) return a list even for their single output.
    return list(result) if eqn.primitive.multiple_results else [result]


#: Read dot_general partials without tied operand indices off the other operand by selection
#: (False: always the seeded JVP; tests compare both).
DOT_BY_SELECTION = True

#: Values of `_dot_general_value` with at most this many entries gather at constant indices.
DOT_VALUE_CONSTANT_INDICES_MAX = 2**16

#: A dense partial (code 1) whose one-hot seeds would have more entries than this, of fewer output
#: entries than half its operand entries, is built by rows (one VJP per output entry, as jax.jacrev
#: does) instead: ``jnp.max`` of a 65,536-entry vector would otherwise seed 65,536 JVPs with an
#: identity of 32 GB (jax.jacrev: one VJP, 0.6 s). Below, the seeded JVP is kept (it fuses with the
#: primal; small per-example graphs run the programs the run-time benchmarks measured).
DENSE_SEEDS_MAX = 2**20

#: Build dot_general partials in their structure's layout straight off the other operand
#: (`_dot_general_tied_value`: slices, a transpose, a broadcast and one select, the value's size);
#: False (tests): the dense partial where no operand axis is tied, else the gather
#: (`_dot_general_value`). Never a seeded JVP: with a Kronecker tie it multiplied the other operand
#: by one-hot seeds along the tie and kept index 0 (x[16, 32] @ W1[32, 64]: 16*32*32*64
#: multiply-adds for the 512 entries of x; a 2-layer MLP's jit(jacobian(loss)) ran 4.5-8.9x
#: jax.jacrev's time, 0.6-1.1x built directly).
DOT_DIRECT = True


class _DotLayout(NamedTuple):
    """Where the axes of d dot_general(lhs, rhs) / d operand `me` sit in the full partial
    J[*out_axes, *me_axes]: J is `other` placed on the diagonals `ties` (pairs of axes of J)."""

    me: Any
    other: Any
    out_sizes: list[int]    # the output's (unflattened) shape
    target: dict[int, int]  # axis of `other` -> axis of J it runs along
    ties: list[tuple[int, int]]


def _dot_general_layout(values: list[Any], params: dict, wrt: int) -> _DotLayout:
    """The `_DotLayout` of d dot_general(lhs, rhs) / d operand `wrt` (0: lhs, 1: rhs)."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = params["dimension_numbers"]
    lhs, rhs = values
    me, other = (lhs, rhs) if wrt == 0 else (rhs, lhs)
    me_contract, other_contract = (lhs_contract, rhs_contract) if wrt == 0 else (rhs_contract, lhs_contract)
    me_batch, other_batch = (lhs_batch, rhs_batch) if wrt == 0 else (rhs_batch, lhs_batch)
    me_free = [d for d in range(np.ndim(me)) if d not in me_contract and d not in me_batch]
    other_free = [d for d in range(np.ndim(other)) if d not in other_contract and d not in other_batch]
    n_batch = len(lhs_batch)
    # Output axes: batch, lhs free, rhs free.
    lhs_free_count = np.ndim(lhs) - len(lhs_contract) - n_batch
    me_free_out = n_batch + (0 if wrt == 0 else lhs_free_count)
    other_free_out = n_batch + (lhs_free_count if wrt == 0 else 0)
    out_ndim = n_batch + len(me_free) + len(other_free)
    sizes_out = [None] * out_ndim
    for i in range(n_batch):
        sizes_out[i] = np.shape(me)[me_batch[i]]
    for j, d in enumerate(me_free):
        sizes_out[me_free_out + j] = np.shape(me)[d]
    for j, d in enumerate(other_free):
        sizes_out[other_free_out + j] = np.shape(other)[d]
    # Where each axis of `other` lands in the full [out..., me...] array.
    target = {}
    for i, d in enumerate(other_batch):
        target[d] = i
    for j, d in enumerate(other_free):
        target[d] = other_free_out + j
    for c_other, c_me in zip(other_contract, me_contract):
        target[c_other] = out_ndim + c_me
    ties = [(i, out_ndim + me_batch[i]) for i in range(n_batch)]
    ties += [(me_free_out + j, out_ndim + d) for j, d in enumerate(me_free)]
    return _DotLayout(me, other, sizes_out, target, ties)


def _dot_general_partial(values: list[Any], params: dict, wrt: int, dtype) -> jax.Array:
    """d dot_general(lhs, rhs) / d operand `wrt` as a dense [*out_shape, *operand_shape] array.

    The partial is the other operand placed on the right diagonals, so it is built by
    broadcasting and selection alone: a one-hot seeded JVP would run real (uncounted) dot
    products with identity matrices, which on small graphs cost more to launch than to run.
    """
    me, other, sizes_out, target, ties = _dot_general_layout(values, params, wrt)
    full_shape = sizes_out + list(np.shape(me))
    axes = sorted(range(np.ndim(other)), key=target.get)
    placed = jnp.transpose(jnp.asarray(other, dtype), axes)
    shape = [1] * len(full_shape)
    for d in axes:
        shape[target[d]] = np.shape(other)[d]
    full = jnp.broadcast_to(placed.reshape(shape), full_shape)
    mask = None
    for a, b in ties:
        eq = jax.lax.broadcasted_iota(jnp.int32, full_shape, a) == jax.lax.broadcasted_iota(jnp.int32, full_shape, b)
        mask = eq if mask is None else mask & eq
    return full if mask is None else jnp.where(mask, full, jnp.zeros((), dtype))


#: How an infinite partial may reach a node (`_eliminate_all`): not at all; only through partials
#: that send entry k to entry k (a pole's own node, then elementwise steps: a select's discard
#: zeroes the pole where its case is not taken, `_discard_masked_partials`); or through a partial
#: that spreads an entry over others (a broadcast, a dense partial), where the discard cannot.
_NO_POLE, _POLE_ENTRYWISE, _POLE_SPREAD = NO_POLE, POLE_ENTRYWISE, POLE_SPREAD


def _pole_passes(poles: dict[int, int], e, partial: Partial, finite: bool) -> None:
    """`_poles.pole_passes` for a `Partial` (entrywise where `_maps_entrywise`)."""
    pole_passes(poles, e, _maps_entrywise(partial), finite)


def _run_time_map_support(partial: Partial) -> Partial:
    """`partial`, an index map, with the entries it moves as a run-time support where its indices
    are known at run time only (``x[jnp.argmax(n)]``, ``x[jnp.argsort(n)[:3]]``) and it has at
    most PATTERN_AT_TRACE_TIME_MAX entries: in reverse order the entries it does not read are
    structural zeros of the products after it, which a pole (sqrt's at a zero row that is never
    selected) would otherwise turn to NaN where jax.jacfwd is finite. Asked for only where a pole
    may reach the map's operand."""
    shape = (*partial.out_shape, *partial.in_shape)
    if partial.support is not None or math.prod(shape) > PATTERN_AT_TRACE_TIME_MAX or _support(partial) is not None:
        return partial
    if isinstance(partial.value, WindowChoiceMap):  # a max-pool's choice: one comparison, no matrix
        choice = partial.value
        held = RunTimeSupport(lambda: choice.support().reshape(shape))
        # The support of rows @ this map ([r, v] bool -> [r, p]) by the map's own selections, for
        # a product's support (`_structured._product_support` reads it where it knows `pull`).
        held.pull = choice.pull_support
        return partial._replace(support=held)
    return partial._replace(support=RunTimeSupport(lambda: densify(partial, jnp.float32).reshape(shape) != 0))


def _select_support(values: list[Any], positions: list[int], partial: Partial) -> Partial:
    """`partial`, an elementwise d select_n / d case (the cases at `positions`), with the entries
    its case is taken at kept as its support (`Partial.support`, [v1, v2, v1, v2]: NumPy where the
    predicate is known while tracing, else a `RunTimeSupport` with its `diagonal`; the diagonal
    alone where the whole would have more than PATTERN_AT_TRACE_TIME_MAX entries): the select's
    zeros are structural (jax.jacfwd drops the untaken case's tangent), so a product that pairs
    them with a NaN that reached the case from further up (sqrt's pole at a zero row, then a
    broadcast into masked columns) keeps them 0. The discard (`_discard_masked_partials`) covers a
    pole in a partial into the untaken case itself."""
    n = math.prod(partial.out_shape)
    if not _is_elementwise(partial) or 0 in positions or partial.support is not None:
        return partial
    predicate = values[0]

    def taken(xp):
        cases = xp.asarray(predicate)
        if cases.dtype == bool:
            cases = cases.astype(np.int32)
        mask = functools.reduce(xp.logical_or, [cases == (i - 1) for i in positions])
        return xp.broadcast_to(mask, np.shape(values[positions[0]])).reshape(n)

    shape = (*partial.out_shape, *partial.in_shape)
    if n * n > PATTERN_AT_TRACE_TIME_MAX:
        # Too many entries to hold [v1, v2, v1, v2] while tracing: the diagonal alone, which the
        # products that read a support row by row take (`_structured._rows_taken`); the products
        # that would need the whole array check their sizes first and go without.
        xp = np if not isinstance(predicate, jax.core.Tracer) else jnp
        if xp is np and np.asarray(taken(np)).all():
            return partial
        return partial._replace(support=RunTimeSupport(lambda: _diagonal_support(taken(jnp), shape),
                                                       diagonal=lambda: taken(xp).reshape(partial.out_shape)))
    diagonal = np.eye(n, dtype=bool)
    if not isinstance(predicate, jax.core.Tracer):
        mask = np.asarray(taken(np))
        return partial if mask.all() else partial._replace(support=(diagonal & mask[None, :]).reshape(shape))
    held = RunTimeSupport(lambda: _diagonal_support(taken(jnp), shape),
                          diagonal=lambda: taken(jnp).reshape(partial.out_shape),
                          rows=lambda: taken(jnp), static=diagonal.reshape(shape))
    return partial._replace(support=held)


def _dot_general_support(values: list[Any], params: dict, positions: list[int], partial: Partial) -> Partial:
    """`partial`, a dense d dot_general / d operand (at `positions`: both, for ``x @ x.T``), with
    the entries it can hold kept (`Partial.support`: its ties' diagonals, NumPy) where some are
    structural zeros (a batched or a row-tied contraction) and they are few enough to hold while
    tracing: a product with an infinite partial keeps NaN off the rows that never read it."""
    if ((partial.code != 1 and not isinstance(partial.value, Labelled)) or isinstance(partial.value, Placed)
            or partial.support is not None):
        return partial
    held = None
    for wrt in positions:
        me, _, sizes_out, _, ties = _dot_general_layout(values, params, wrt)
        full_shape = sizes_out + list(np.shape(me))
        if not ties or math.prod(full_shape) > PATTERN_AT_TRACE_TIME_MAX:
            return partial
        mine = np.ones(full_shape, bool)
        for a, b in ties:
            grid = np.indices(full_shape, sparse=True)
            mine &= grid[a] == grid[b]
        held = mine if held is None else held | mine
    if held is None or held.all():
        return partial
    held = held.reshape(*partial.out_shape, *partial.in_shape)
    if isinstance(partial.value, Labelled) and np.array_equal(_support(partial), held):
        return partial  # its labelled ties hold the same zeros: its products never form them
    return partial._replace(support=held)


def _broadcast_support(eqn: Equation, values: list[Any], positions: list[int], partial: Partial, output: int) -> Partial:
    """`partial`, a dense d out / d operand of a binary elementwise equation whose operand (at
    `positions`) is broadcast to the output along size-1 axes that the 2-D normalisation flattens
    with others (``x / n`` with n [b, s, 1] against x [b, s, d]: dense over (s*d) x s per row, where
    `graph._rules._broadcast_operand_code` has no tie), with the broadcast's pattern as its support
    (`Partial.support`, NumPy) where it has at most PATTERN_AT_TRACE_TIME_MAX entries: a product
    with an infinite partial further up (sqrt of a zero norm, guarded by ``jnp.maximum`` and a
    padding mask) keeps its off-pattern zeros 0 in every row, and a product with a select's
    support keeps the select's zeros (``jnp.where(mask, x / norm, 0)`` in reverse order), where the
    dense pattern would give NaN in the rows of the other tokens. Labelled structures (programs of
    at most `graph`'s LABELLED_MAX_EQUATIONS equations) tie these axes instead."""
    if (partial.code != 1 or partial.support is not None or len(positions) != 1 or eqn.primitive is None
            or eqn.primitive.name not in ELEMENTWISE_BINARY):
        return partial
    operand_shape, result_shape = np.shape(values[positions[0]]), eqn.avals[output].shape
    entries_out, entries_in = math.prod(partial.out_shape), math.prod(partial.in_shape)
    if (entries_in <= 1 or not is_broadcast(operand_shape, result_shape)
            or entries_out * entries_in > PATTERN_AT_TRACE_TIME_MAX):
        return partial
    held = broadcast_pattern(operand_shape, result_shape)
    return partial._replace(support=held.reshape(*partial.out_shape, *partial.in_shape))


#: Primitives linear in each operand whose partials hold the exact zeros of windows (a convolution:
#: the lhs entries a strided, dilated or cropped window skips; the kernel taps that meet only the
#: padding), whatever the other operand's values: `_window_support`.
_WINDOWED = frozenset({"conv_general_dilated"})


def _window_support(eqn: Equation, values: list[Any], positions: list[int], partial: Partial, output: int) -> Partial:
    """`partial`, of a `_WINDOWED` equation w.r.t. the operand at `positions` (read once), with the
    entries its windows reach as its support (`Partial.support`, NumPy, computed while tracing where
    it has at most PATTERN_AT_TRACE_TIME_MAX entries): the equation applied to one-hot seeds of the
    operand with every other operand all ones, so no product of values cancels and each output
    entry is nonzero exactly where its window reads the seed. Those are the entries XLA's
    convolution of jax.jacfwd's tangents multiplies (a kernel's zero too: NaN there in jax.jacfwd),
    so a product that pairs an entry outside them with a pole before the convolution (sqrt at 0 in
    a column a stride-2 window skips) keeps it 0 (`_structured.multiply`)."""
    shape = (*partial.out_shape, *partial.in_shape)
    entries = math.prod(shape)
    if partial.support is not None or len(positions) != 1 or entries > PATTERN_AT_TRACE_TIME_MAX:
        return partial
    position = positions[0]
    x_shape, dtype = np.shape(values[position]), _dtype_of(values[position])
    ones = [np.ones(np.shape(v), _dtype_of(v)) if _is_float(v) else v for v in values]
    size = math.prod(partial.in_shape)

    def columns():  # [operand entries, output entries]
        def of_seed(t):
            return _bind_all(eqn, [t if i == position else v for i, v in enumerate(ones)])[output].reshape(-1)

        return jax.vmap(of_seed)(np.eye(size, dtype=dtype).reshape(size, *x_shape))

    found = _at_trace_time(columns, entries)
    if not isinstance(found, np.ndarray):
        return partial
    held = (np.asarray(found).reshape(size, -1).T != 0).reshape(shape)
    return partial if held.all() else partial._replace(support=held)


def _dot_general_value(values: list[Any], params: dict, wrt: int, dtype, code: int, out_shape, in_shape) -> jax.Array:
    """The value array of structure `code` of d dot_general / d operand `wrt` (as `extract` reads
    it off the dense [v1, v2, p1, p2] partial), gathered off the other operand entry by entry.

    Its size is the value's, never the dense partial's nor a seeded JVP's: for x [32, 784] @
    W [784, 128] the partial by W is x itself (a Kronecker tie on the 128 axis); seeding it built
    784 x 784 x 128 one-hots and ran 784 products of x with them (656 MB, 128 times the work).
    """
    layout = _dot_general_layout(values, params, wrt)
    structure = structure_of(code)
    positions = list(out_shape) + list(in_shape)
    value_shape = [positions[pos - 1] for pos in structure.value_axes]
    if math.prod(value_shape) == 0:
        return jnp.zeros(value_shape, dtype)
    constant = {pos for a, b, kind in structure.ties if kind == "K" for pos in (a, b)}
    partner = {b: a for a, b, kind in structure.ties if kind == "D"}
    # The indices depend on the shapes alone: NumPy constants (one gather and one select in the
    # program) unless they would be large constants, then computed in the program.
    xp = np if math.prod(value_shape) <= DOT_VALUE_CONSTANT_INDICES_MAX else jnp

    def index(pos):  # the index of position `pos` (v1, v2, p1, p2) at every entry of the value
        if pos in constant:  # a Kronecker tie is read at index 0 of both its positions
            return xp.zeros((), np.int32)
        axis = structure.value_axes.index(partner.get(pos, pos))
        shape = [1] * len(value_shape)
        shape[axis] = value_shape[axis]
        return xp.arange(value_shape[axis], dtype=np.int32).reshape(shape)

    v1, v2, p1, p2 = (index(pos) for pos in (1, 2, 3, 4))
    full = [*xp.unravel_index(v1 * out_shape[1] + v2, layout.out_sizes),
            *xp.unravel_index(p1 * in_shape[1] + p2, np.shape(layout.me))]
    gathered = jnp.asarray(layout.other, dtype)[tuple(full[layout.target[d]] for d in range(np.ndim(layout.other)))]
    mask = functools.reduce(xp.logical_and, [full[a] == full[b] for a, b in layout.ties], xp.bool_(True))
    return jnp.broadcast_to(jnp.where(mask, gathered, jnp.zeros((), dtype)), value_shape)


def _common_refinement(a: Sequence[int], b: Sequence[int]) -> list[int] | None:
    """The coarsest row-major factorisation (sizes > 1) of which both `a` and `b` (factorisations of
    the same count) are groupings of consecutive factors; None if there is none ((2, 3) and (3, 2))."""
    def cuts(sizes):
        return set(itertools.accumulate(sizes, operator.mul))

    refined, previous = [], 1
    for cut in sorted(cuts(a) | cuts(b)):
        if cut % previous:
            return None
        if cut > previous:
            refined.append(cut // previous)
        previous = cut
    return refined


def _groups(sizes: Sequence[int], refined: Sequence[int]) -> list[list[int]]:
    """The indices into `refined` that each axis of `sizes` (a grouping of them) spans."""
    groups, at = [], 0
    for size in sizes:
        group, count = [], 1
        while count < size:
            count *= refined[at]
            group.append(at)
            at += 1
        groups.append(group)
    return groups


def _dot_general_tied_value(values: list[Any], params: dict, wrt: int, ties: AxisTies, out_dims, in_dims,
                            dtype) -> jax.Array | None:
    """The value array of d dot_general / d operand `wrt` in the layout `ties` (between the
    structural dims `out_dims` of the output and `in_dims` of the operand), built off the other
    operand by slicing, transposing, broadcasting and one select: no multiplication, no gather,
    nothing larger than the value itself.

    The partial is the other operand placed on the diagonals of the product's ties
    (`_dot_general_layout`); a Kronecker tie of `ties` reads it at index 0 of both its sides, a
    diagonal one keeps its output side. Works on the common refinement of the product's axes and
    the structural dims (a dim that merges or splits axes). None where they have none, where a tie
    of `ties` is not one of the product's, or where the other operand would be read on a diagonal
    (the caller then gathers a 2-D code's value, and seeds a labelled one: `labelled_partial`).
    """
    layout = _dot_general_layout(values, params, wrt)
    out_axes, me_axes = list(layout.out_sizes), list(np.shape(layout.me))
    value_shape = [(out_dims if side == "out" else in_dims)[k] for side, k in ties.value_axes]
    if 0 in out_axes or 0 in me_axes:
        return jnp.zeros(value_shape, dtype)
    out_ref = _common_refinement(out_axes, out_dims)
    me_ref = _common_refinement(me_axes, in_dims)
    if out_ref is None or me_ref is None:
        return None
    n_out = len(out_axes)
    product_ties = {a: b - n_out for a, b in layout.ties}  # output axis -> operand axis

    # Refine both sides until every tie (the product's, by axes; a diagonal one of `ties`, by dims)
    # pairs runs of equal factors.
    def spans():
        return (_groups(out_axes, out_ref), _groups(me_axes, me_ref),
                _groups(out_dims, out_ref), _groups(in_dims, me_ref))

    for _ in range(64):
        out_g, me_g, odim_g, idim_g = spans()
        pairs = [(out_g[a], me_g[b]) for a, b in product_ties.items()]
        pairs += [(odim_g[o], idim_g[i]) for o, i, kind in ties.ties if kind == "D"]
        for left, right in pairs:
            sizes_l, sizes_r = [out_ref[r] for r in left], [me_ref[r] for r in right]
            if sizes_l != sizes_r:
                common = _common_refinement(sizes_l, sizes_r)
                if common is None:
                    return None
                if left:
                    out_ref[left[0]:left[-1] + 1] = common
                if right:
                    me_ref[right[0]:right[-1] + 1] = common
                break
        else:
            break
    else:
        return None
    out_g, me_g, odim_g, idim_g = spans()
    # Every tie of `ties` must be one of the product's, factor by factor.
    tied_to = {}  # (out refined axis) <-> (operand refined axis) pairs of the product's ties
    for a, b in product_ties.items():
        for r, s in zip(out_g[a], me_g[b]):
            tied_to[("out", r)], tied_to[("in", s)] = ("in", s), ("out", r)
    other_on = {}  # refined axes of J the other operand runs along
    for d in range(np.ndim(layout.other)):
        t = layout.target[d]
        for r in (out_g[t] if t < n_out else me_g[t - n_out]):
            other_on[("out" if t < n_out else "in", r)] = True
    for o, i, kind in ties.ties:
        if len(odim_g[o]) != len(idim_g[i]):
            return None
        for r, s in zip(odim_g[o], idim_g[i]):
            if tied_to.get(("out", r)) != ("in", s) or (kind == "K" and (("out", r) in other_on or ("in", s) in other_on)):
                return None
    # Where each refined axis of J is read: at 0 (a Kronecker tie) or along a refined value axis.
    value_ref = []  # refined value axes: (side, refined axis)
    for side, k in ties.value_axes:
        value_ref += [(side, r) for r in (odim_g[k] if side == "out" else idim_g[k])]
    read = {}
    for o, i, kind in ties.ties:
        for r, s in zip(odim_g[o], idim_g[i]):
            read[("out", r)] = None if kind == "K" else value_ref.index(("out", r))
            read[("in", s)] = read[("out", r)]
    for u, axis in enumerate(value_ref):
        read.setdefault(axis, u)
    # The other operand, its axes split into their refined factors.
    other = jnp.asarray(layout.other, dtype)
    split, along = [], []
    for d in range(np.ndim(other)):
        t = layout.target[d]
        for r in (out_g[t] if t < n_out else me_g[t - n_out]):
            split.append(out_ref[r] if t < n_out else me_ref[r])
            along.append(read[("out" if t < n_out else "in", r)])
    placed = [u for u in along if u is not None]
    if len(set(placed)) < len(placed):
        return None  # the other operand read on a diagonal
    other = other.reshape(split)[tuple(0 if u is None else slice(None) for u in along)]
    other = jnp.transpose(other, np.argsort(placed)) if placed != sorted(placed) else other
    value_sizes = [out_ref[r] if side == "out" else me_ref[r] for side, r in value_ref]
    shape = [1] * len(value_sizes)
    for u in placed:
        shape[u] = value_sizes[u]
    full = jnp.broadcast_to(other.reshape(shape), value_sizes)
    # The product's ties that `ties` drops: a delta between two value axes, or index 0 of one.
    mask = None
    for r, s in ((r, s) for (side, r), (_, s) in tied_to.items() if side == "out"):
        u, w = read[("out", r)], read[("in", s)]
        if u == w:
            continue
        size = out_ref[r]
        iota = functools.partial(jax.lax.broadcasted_iota, jnp.int32, value_sizes)
        eq = (iota(u) == iota(w)) if u is not None and w is not None else (iota(u if w is None else w) == 0)
        mask = eq if mask is None else mask & eq
    value = full if mask is None else jnp.where(mask, full, jnp.zeros((), dtype))
    return value.reshape(value_shape)


#: Linearised index maps whose operands have at most this many entries each are linearised at
#: trace time where their inputs are known then (`_linearised_index_map`).
LINEARISE_AT_TRACE_TIME_MAX = 2**14


def _linearised_index_map(eqn: Equation, values: list[Any], positions: list[int], output: int,
                          out_shape, in_shape) -> IndexMap:
    """The partial of output `output` w.r.t. the operand at `positions` of a primitive whose
    derivative only selects, moves or adds entries (`graph.LINEARISED_INDEX_MAPS`): JAX's own
    linearisation of the equation at the primal values, and its transpose."""
    x = jnp.asarray(values[positions[0]])

    def of_operand(y):
        return _bind_all(eqn, [y if i in positions else v for i, v in enumerate(values)])[output]

    # Small maps are linearised at trace time wherever their inputs are known then: the residuals
    # that depend on the indices alone (a scatter's winning updates) become constants, from which
    # XLA folds the map's matrix and the patterns composed from it (`_structured.Placed`) instead
    # of running them as small kernels per call (scattered: 19 kernels -> 1). Large ones are traced
    # as they are (their constants would bloat the program).
    small = max(math.prod(np.shape(v)) for v in values) <= LINEARISE_AT_TRACE_TIME_MAX
    with jax.ensure_compile_time_eval() if small else contextlib.nullcontext():
        result, linear = jax.linearize(of_operand, x)
        if eqn.primitive.name in ("reduce_window_max", "reduce_window_min"):
            chosen = window_choice_map(eqn, x, linear, out_shape, in_shape)
            if chosen is not None:
                return chosen
    transposed = jax.linear_transpose(linear, jax.ShapeDtypeStruct(x.shape, x.dtype))

    def apply(t):
        return linear(t.reshape(x.shape).astype(x.dtype)).reshape(out_shape)

    untransposable = []  # set once JAX is found to lack the transpose: not tried again

    def transpose(ct):
        ct = ct.reshape(result.shape).astype(result.dtype)
        if not untransposable:
            try:
                return transposed(ct)[0].reshape(in_shape)
            except NotImplementedError:
                untransposable.append(True)
        # JAX has no transpose of this linearisation (a max reduce_window with window dilation:
        # select_and_gather's): the adjoint read off the map's columns, each cotangent entry taken
        # where a column holds a count (never 0 * inf).
        columns = jax.vmap(lambda t: apply(t).reshape(-1))(jnp.eye(x.size, dtype=x.dtype).reshape(-1, *x.shape))
        flat = ct.reshape(-1).astype(columns.dtype)
        return jnp.where(columns != 0, columns * flat, 0).sum(-1).astype(x.dtype).reshape(in_shape)

    return IndexMap(apply, transpose)


def _partial_of(eqn: Equation, values: list[Any], positions: list[int], code: int,
                out_shape, in_shape, output: int = 0) -> Partial:
    """Evaluates the partial d(eqn's output `output`)/d(operands at `positions`) in the layout of
    `code` (only the linearised index maps have several outputs)."""
    if code in VALUELESS:
        return Partial(code, out_shape, in_shape, None)
    if code == INDEX_MAP and eqn.primitive.name in LINEARISED_INDEX_MAPS:
        return Partial(code, out_shape, in_shape,
                       _linearised_index_map(eqn, values, positions, output, out_shape, in_shape))
    p_aval_shape = np.shape(values[positions[0]])
    dtype = jnp.result_type(values[positions[0]])

    def of_operand(x):
        # The other operands are closed over, so the JVP carries no zero tangents for them
        # (XLA cannot drop a float multiply by zero).
        return _bind_all(eqn, [x if i in positions else v for i, v in enumerate(values)])[output]

    def tangent_map(t_norm):
        """[p1, p2] tangent of the operand -> [v1, v2] tangent of the output (linear)."""
        t = t_norm.reshape(p_aval_shape).astype(dtype)
        _, out = jax.jvp(of_operand, (values[positions[0]],), (t,))
        return out.reshape(out_shape)

    if code == INDEX_MAP:
        # Index-map primitives (reshape, slice, pad, concatenate, sums, broadcasts, ...) are linear
        # in their floating-point operands jointly, so the map is the primitive itself with the
        # other floating-point operands set to zero; integer operands (indices) keep their values.
        def index_map(t_norm):
            t = t_norm.reshape(p_aval_shape).astype(dtype)
            # NumPy zeros (not jnp.zeros_like of a traced value, itself traced): the map then depends
            # on nothing traced where its indices are constants, and its matrix is computed while
            # tracing (`_structured._at_trace_time`).
            operands = [
                t if i in positions
                else (np.zeros(np.shape(v), _dtype_of(v)) if _is_float(v) else v)
                for i, v in enumerate(values)
            ]
            return _bind_all(eqn, operands)[output].reshape(out_shape)

        # Transpose the primitive jointly in all its floating-point operands (it is linear in all
        # of them; transposing in one while another is a constant trips pad's transpose rule),
        # then keep the cotangents of ours.
        floats = [i for i, v in enumerate(values) if _is_float(v)]

        def joint_map(*linear):
            operands = list(values)
            for i, x in zip(floats, linear):
                operands[i] = x
            return _bind_all(eqn, operands)[output].reshape(out_shape)

        joint_transpose = jax.linear_transpose(
            joint_map, *(jax.ShapeDtypeStruct(np.shape(values[i]), jnp.result_type(values[i])) for i in floats)
        )

        out_dtype = jax.eval_shape(joint_map, *(values[i] for i in floats)).dtype

        def transpose(ct):
            # The map computes in its own dtype (a float32 softmax inside a float64 program): the
            # cotangent is cast to it, and the result back to the operand's.
            cotangents = joint_transpose(ct.astype(out_dtype))
            total = sum(cotangents[floats.index(i)] for i in positions)
            return jnp.asarray(total, dtype).reshape(in_shape)

        return Partial(code, out_shape, in_shape, IndexMap(index_map, transpose))

    if code == 1 and len(positions) == 1:
        local = _constant_local_derivative(eqn, values, positions[0], output)
        if local is not None:
            broadcast = broadcast_partial(out_shape, in_shape, p_aval_shape, eqn.avals[output].shape, local, dtype)
            if broadcast is not None:
                return broadcast
    structure = structure_of(code)
    sizes = {3: in_shape[0], 4: in_shape[1]}
    tied_p = {b for _, b, _ in structure.ties}
    free_p = [pos for pos in (3, 4) if pos not in tied_p]
    # Seeds: ones along tied operand indices (the tie picks one entry), a one-hot per free index.
    num_seeds = math.prod(sizes[pos] for pos in free_p)
    if DOT_BY_SELECTION and DOT_DIRECT and eqn.primitive is jax.lax.dot_general_p:
        # One operand, or both (x @ x.T): the sum of both operands' partials, each in this layout.
        terms = [_dot_general_tied_value(values, eqn.params, p, axis_ties_of(code), out_shape, in_shape, dtype)
                 for p in positions]
        if all(term is not None for term in terms):
            return Partial(code, out_shape, in_shape, functools.reduce(operator.add, terms))
    if DOT_BY_SELECTION and eqn.primitive is jax.lax.dot_general_p and len(positions) == 1:
        if num_seeds == math.prod(in_shape):
            # Every operand entry needs its own seed anyway, so the dense partial is no larger than
            # the seeded responses, and selection spares the dot products with identity seeds.
            dense = _dot_general_partial(values, eqn.params, positions[0], dtype)
            dense = dense.reshape(*out_shape, *in_shape)
            return Partial(code, out_shape, in_shape, dense if code == 1 else extract(dense, code))
        # Tied operand positions: gathered, the value's size (seeds would cost it times the ties).
        return Partial(code, out_shape, in_shape,
                       _dot_general_value(values, eqn.params, positions[0], dtype, code, out_shape, in_shape))
    if (code == 1 and num_seeds * math.prod(in_shape) > DENSE_SEEDS_MAX
            and _ROW_COST * math.prod(out_shape) < num_seeds):
        _, by_rows = _dense_partials_by_rows(lambda x: (of_operand(x),), (jnp.asarray(values[positions[0]]),), [0],
                                             {0: ([0], in_shape)}, [out_shape])
        return by_rows[0][0]
    seeds = jnp.ones((num_seeds, *in_shape), dtype)
    if num_seeds > 1:
        onehots = jnp.eye(num_seeds, dtype=dtype).reshape(num_seeds, *(sizes[pos] for pos in free_p))
        expand = [1 if pos in tied_p else sizes[pos] for pos in (3, 4)]
        seeds = jnp.broadcast_to(onehots.reshape(num_seeds, *expand), (num_seeds, *in_shape))
    # [num_seeds, v1, v2]; a single seed (elementwise partials) needs no vmap.
    # The dense partial of an equation with a sub-program (a custom JVP rule: slogdet's LU solves)
    # takes its small products and triangular solves fused, as `_dense_partials` does.
    seeded = jax.vmap(tangent_map)
    if code == 1 and _sub_jaxprs(eqn.params):
        seeded = _small_dots_fused(seeded)
    responses = tangent_map(seeds[0])[None] if num_seeds == 1 else seeded(seeds)
    responses = responses.reshape(*(sizes[pos] for pos in free_p), *out_shape)
    # Axes of `responses`: free operand positions, then v positions 1 and 2.
    axis_of = {pos: i for i, pos in enumerate(free_p)}
    axis_of.update({1: len(free_p), 2: len(free_p) + 1})
    k_tied_v = [a for a, _, kind in structure.ties if kind == "K"]
    reduced = read_constant(responses, [axis_of[a] for a in k_tied_v])  # constant along a Kronecker tie
    remaining = [pos for pos in sorted(axis_of, key=axis_of.get) if pos not in k_tied_v]
    permutation = [remaining.index(pos) for pos in structure.value_axes]
    value = reduced if permutation == sorted(permutation) else jnp.transpose(reduced, permutation)
    return Partial(code, out_shape, in_shape, value)


def _constant_local_derivative(eqn: Equation, values: list[Any], position: int, output: int) -> Callable | None:
    """The derivative of each output entry of an elementwise equation with respect to its operand
    at `position`, as a function computing it from constants alone, where it is a constant: the
    operand enters linearly (`graph.LINEAR_OPERANDS`) and what it is multiplied by is known while
    tracing (+-1 for a sum or difference whatever the other operand; the other operand of a
    product or quotient where it is a constant). None otherwise.

    Such an operand broadcast along some axes (``x[:, None] - x[None, :]``) has a partial that is
    the broadcast's 0/1 matrix times a constant (`_structured.broadcast_partial`), kept lazy where
    a dense [v, p] partial was built. Only constants: a weight per example (``x[senders] *
    w[:, None]``) was split into a term per entry by the next index map, slower than the dense
    partial (message_passing, flax_batchnorm at batch 32,768: 1.4x)."""
    name = eqn.primitive.name if eqn.primitive is not None else None
    if position not in LINEAR_OPERANDS.get(name, ()):
        return None
    either = name in ("add", "add_any", "sub")  # the derivative does not depend on the other operand
    if not either and any(isinstance(v, jax.core.Tracer) for i, v in enumerate(values) if i != position):
        return None
    # NumPy operands: the derivative is computed while tracing (`_structured._at_trace_time`).
    operands = [np.zeros(np.shape(v), _dtype_of(v)) if either or i == position else np.asarray(v)
                for i, v in enumerate(values)]

    def of_operand(x):
        return _bind_all(eqn, [x if i == position else v for i, v in enumerate(operands)])[output]

    def local():
        primal = operands[position]
        return jax.jvp(of_operand, (primal,), (np.ones(primal.shape, primal.dtype),))[1]

    return local


#: A convolution's labelled partials gathered from its operands (`_convolution.convolution_values`),
#: not by one JVP per entry of the operand's untied axes; False for A/B.
CONVOLUTION_VALUES = True


def _labelled_partial_of(graph: Graph, eqn: Equation, values: list[Any], positions: list[int], edge,
                         output: int) -> Partial:
    """The partial of an edge with a labelled structure (code 12 on: `graph.Graph.structures`),
    between the structural dims of its two arrays (`_labelled.labelled_partial`)."""
    x = values[positions[0]]

    def of_operand(y):
        return _bind_all(eqn, [y if i in positions else v for i, v in enumerate(values)])[output]

    ties = graph.structures[edge.code - FIRST_EXTENDED_CODE]
    out_dims, in_dims, dtype = graph.dims[edge.dst - 1], graph.dims[edge.src - 1], jnp.result_type(x)
    if CONVOLUTION_VALUES and eqn.primitive is jax.lax.conv_general_dilated_p and len(positions) == 1:
        gathered = convolution_values(eqn.params, values[0], values[1], positions[0], ties, eqn.avals[output].shape,
                                      out_dims, in_dims, dtype)
        if gathered is not None:
            value = Labelled(ties, tuple(out_dims), tuple(in_dims), gathered.astype(dtype))
            return Partial(edge.code, edge.out_shape, edge.in_shape, value)
    if DOT_BY_SELECTION and DOT_DIRECT and eqn.primitive is jax.lax.dot_general_p and ties.has_values:
        terms = [_dot_general_tied_value(values, eqn.params, p, ties, out_dims, in_dims, dtype) for p in positions]
        if all(term is not None for term in terms):
            return Partial(edge.code, edge.out_shape, edge.in_shape,
                           Labelled(ties, tuple(out_dims), tuple(in_dims), functools.reduce(operator.add, terms)))
    value = labelled_partial(of_operand, x, ties, out_dims, in_dims, dtype)
    return Partial(edge.code, edge.out_shape, edge.in_shape, value)


def _dense_partials(eqn: Equation, values: list[Any], sources: Mapping[int, tuple[list[int], tuple]],
                    outputs: list[int], out_shapes: list,
                    probe: bool = False) -> tuple[tuple, dict[int, list[Partial]]]:
    """Dense partials (code 1) of outputs of an equation without a structural rule w.r.t. each of its
    source nodes (JAX's own derivative of the primitive: the dense fallback).

    The equation is differentiated once for all its sources: one vmapped JVP with one one-hot
    tangent per entry of every source (its columns), or one vmapped VJP with one one-hot cotangent
    per output entry (its rows), whichever is cheaper. Differentiating it once per source would run a
    loop or a factorisation once per source, plus once for its value. Which other operands JAX
    varies (with zero tangents) is tried in turn (see the code); none of it is counted by the cost
    model.

    Args:
      sources: per source node, the operand positions it occupies and its normalised shape (p1, p2).
      outputs: the equation's outputs reached from the sources; out_shapes: their normalised shapes.
      probe: whether a ruled partial's pole may reach a source (`_eliminate_all`'s ruled_poles): the
        partials then carry the entries a NaN tangent reaches as their support (`_static_reach`,
        `_nan_reach`).

    Returns:
      (the values of `outputs` computed with the partials, or None where they could not be: a
      second evaluation of the equation, which XLA cannot always merge with the first (eigh's JVP
      rule symmetrises its operand; two concurrent LAPACK calls also deadlocked XLA:CPU on a
      batched eigh), is left unused and removed; per source node, per entry of `outputs`, the
      partial with value [v1, v2, p1, p2]).
    """
    every_float = [i for i, v in enumerate(values) if _is_float(v)]
    # The operands that are graph nodes are varied first, the constants kept out of JAX's
    # differentiation: a zero tangent for a constant still makes JAX evaluate the derivative in it
    # and multiply it by a zero XLA cannot drop (igamma's derivative in a is a series while loop:
    # gamma_regression_nll ran 98-107 kernels against jax.jacrev's 34). Some JVP rules refuse any
    # tangent for an operand they have no derivative for (polygamma's order, betainc's a and b):
    # then only the sources' own operands are varied; others fail on all-symbolic-zero tangents
    # (custom_linear_solve's, when only its solver's operands vary), or need their operands'
    # tangents alike (a generic reduce): then every floating-point operand is varied.
    nodes = [i for i in every_float if eqn.operands[i].node is not None]
    own = sorted({i for positions, _ in sources.values() for i in positions})
    # A while loop varies its sources' operands first: a zero tangent given to another carry's
    # initial value is a tangent JAX must carry through every iteration (bisection_cube_root's
    # brackets, where jax.jacfwd's symbolic zeros drop the loop: 17 kernels against its 1).
    first = (own, nodes) if eqn.primitive.name in _SOURCES_FIRST else (nodes, own)
    attempts = list(dict.fromkeys(tuple(a) for a in (*first, every_float)))
    for k, floats in enumerate(attempts):
        try:
            return _dense_partials_over(eqn, values, sources, outputs, out_shapes, list(floats), probe)
        except AlphagradError:
            raise
        except Exception as err:  # noqa: BLE001 - JAX reports a missing rule with many types
            if k + 1 < len(attempts):
                continue
            raise _undifferentiable(eqn, err) from err


#: Primitives whose dense partials vary only their sources' operands where JAX allows it.
_SOURCES_FIRST = frozenset({"while"})


def _undifferentiable(eqn: Equation, err: Exception) -> UnsupportedPrimitiveError:
    """The error for a primitive whose derivative JAX itself cannot take (nextafter, a scatter
    multiply at repeated indices): alphagrad's partials come from JAX's derivative rules."""
    name = eqn.primitive.name if eqn.primitive is not None else "copy"
    said = str(err).splitlines()[0] if str(err) else ""
    # A vertex that fuses several equations (a call, a span of complex arithmetic) is named by the
    # primitive inside it that JAX could not differentiate, where JAX's message names one.
    inner = re.search(r"rule for '([^']+)'", said)
    where = f"{inner.group(1)!r} (inside {name!r})" if inner and inner.group(1) != name else repr(name)
    if not inner:  # JAX's message names none (eig's eigenvectors): name what the call holds
        held = list(dict.fromkeys(e.primitive.name for body in _sub_jaxprs(getattr(eqn, "params", None) or {})
                                  for e in body.eqns))
        if held:
            where += f" (a call of {', '.join(held[:8])}{', ...' if len(held) > 8 else ''})"
    return UnsupportedPrimitiveError(
        f"JAX cannot differentiate the primitive {where} here ({type(err).__name__}: {said}), so "
        "neither can alphagrad, which takes its partials from JAX's derivative rules (jax.jacfwd and "
        "jax.jacrev use the same rule and fail on it too wherever a differentiated input reaches it). "
        "Rewrite that part of the function with differentiable operations (e.g. unique indices for a "
        "scatter multiply), or wrap it in jax.lax.stop_gradient if its derivative is not needed."
    )


def _dense_partials_over(eqn: Equation, values: list[Any], sources: Mapping[int, tuple[list[int], tuple]],
                         outputs: list[int], out_shapes: list, floats: list[int],
                         probe: bool = False) -> tuple[tuple, dict[int, list[Partial]]]:
    """`_dense_partials` with the operands at `floats` as JAX primals (the others constant)."""
    dtype = jnp.result_type(*(values[positions[0]] for positions, _ in sources.values()))
    sizes = {src: math.prod(in_shape) for src, (_, in_shape) in sources.items()}
    offsets = dict(zip(sizes, np.cumsum([0, *sizes.values()])[:-1].tolist()))
    total = sum(sizes.values())
    source_at = {i: src for src, (positions, _) in sources.items() for i in positions}
    primals = tuple(jnp.asarray(values[i]) for i in floats)
    of_floats = _of_floats(eqn, values, floats, outputs)

    def tangents(t):  # t: one column of all the sources' entries, [total]
        def tangent(i, primal):
            if i not in source_at:
                return jnp.zeros_like(primal)
            src = source_at[i]
            return t[offsets[src] : offsets[src] + sizes[src]].reshape(np.shape(primal)).astype(primal.dtype)

        return tuple(tangent(i, p) for i, p in zip(floats, primals))

    def by_columns():
        # The outputs' values come from the same computation as the columns (unbatched: they do
        # not depend on the tangent). jax.linearize would split a loop into a primal loop that
        # stores every iteration's residuals and a tangent loop (10x slower on a 1,000-step scan).
        def column(t):
            return jax.jvp(of_floats, primals, tangents(t))

        seeds = jnp.eye(total, dtype=dtype)
        # The seeds' axis comes out last, where the partials keep their operand entries: a leading
        # one would need a transposing copy of every partial (a pass over [batch, out, in] under vmap).
        try:
            results, columns = _small_dots_fused(jax.vmap(column, out_axes=(None, -1)))(seeds)  # [*shape, total]
        except ValueError:  # a rule that batches the values too: they are recomputed apart
            results, columns = None, _small_dots_fused(jax.vmap(lambda t: column(t)[1], out_axes=-1))(seeds)
        partials = {}
        for src, (_, in_shape) in sources.items():
            partials[src] = []
            for column, out_shape in zip(columns, out_shapes):
                block = column.reshape(math.prod(out_shape), total)[:, offsets[src] : offsets[src] + sizes[src]]
                partials[src].append(Partial(1, out_shape, in_shape, block.reshape(*out_shape, *in_shape)))
        return results, partials

    def by_rows():
        return _dense_partials_by_rows(of_floats, primals, floats, sources, out_shapes)

    # Rows (reverse mode) where they are fewer than half the columns: a VJP runs the primal, keeps
    # its residuals and runs the transpose, about twice a JVP's work. A function with a custom VJP
    # rule is differentiated by that rule, in reverse mode, as jax.jacrev does. A primitive may
    # support only one mode (a while loop with a value-dependent trip count has no transpose): then
    # the other is used.
    if eqn.primitive.name in _VJP_RULED:
        _check_linear_vjp_rule(eqn, of_floats, primals)
    rows = sum(math.prod(s) for s in out_shapes)
    if eqn.primitive.name in _VJP_RULED:
        rows_first = True
    elif eqn.primitive.name in _ROWS_WHEN_NOT_MORE:
        # (by columns where a branch may hold an infinite partial: a VJP row pulls a cotangent's
        # zeros through it, 0 * inf = NaN beside the pole, where a JVP column, as jax.jacfwd, has 0)
        rows_first = rows <= total and not (POLE_BRANCHES_BY_COLUMNS and _may_hold_a_pole(eqn))
    else:
        rows_first = rows * total > _COLUMNS_MAX_ENTRIES and _ROW_COST * rows < total
    first, second = (by_rows, by_columns) if rows_first else (by_columns, by_rows)
    try:
        result = first()
    except Exception:  # noqa: BLE001 - JAX reports a missing JVP or transpose rule with many types
        result = second()
    else:
        if first is by_rows and eqn.primitive.name not in _VJP_RULED and _holds_a_select(eqn):
            result = _finite_or_columns(result, by_columns)
    # For any primitive after a pole, the exact zeros of its partial that jax.jacfwd never multiplies
    # (a cumulative product's upper triangle, a triangular solve's): while tracing where they do not
    # depend on the values, else at run time where RUN_TIME_PROBE says so.
    probe = probe and DENSE_SUPPORT_PROBE
    static = _static_reach(of_floats, primals, tangents, total, dtype) if probe and STATIC_REACH else None
    if static is not None:
        result = _with_static_supports(result, static, offsets, sizes)
    elif ((probe and (RUN_TIME_PROBE or eqn.primitive.name in _COUNTED_AT_RUN_TIME))
          or (eqn.primitive.name in _BRANCHING and not eqn.params.get("branches_platforms"))):
        # The entries the taken branch can hold (a conditional's, always: `_BRANCHING`). A
        # platform-dependent conditional (jnp.linalg's LU and QR choose their pivoting code by
        # backend) takes the same branch on every run: its partials are left as they are.
        result = _with_run_time_supports(result, _nan_reach(of_floats, primals, tangents, total, dtype),
                                         offsets, sizes)
    return result


#: Whether `_static_reach` may give a dense partial's support while tracing (False: the run-time
#: probe where RUN_TIME_PROBE allows it; for A/B measurements).
STATIC_REACH = True

#: Whether a dense partial after a pole whose support `_static_reach` cannot give (a select by run-time
#: values, a gather by run-time indices or a collective on its tangents' path: psum,
#: custom_linear_solve, a scatter-max by computed segment ids) takes it at
#: run time (`_nan_reach`). Off: the probe, a JVP per source entry beside the partial's, and the
#: guards it brings cost 1.4-2.2x at batch 256 on the corpus functions that have one after a pole
#: (edge_message_scatter_max forward 2.15x, fem_1d_assembly_segment_sum 1.7-2.2x,
#: batchnorm_by_collectives 1.3-1.4x), where none of corpus23's forms needs it. Conditionals
#: (`_BRANCHING`) take it whatever this says.
RUN_TIME_PROBE = False

#: Primitives that send a NaN tangent to the same entries whatever the values of their operands that
#: carry none (sums, products by a value, data movement at static positions): `_static_reach` reads
#: those operands as ones.
_REACH_STATIC = frozenset(
    "mul neg add add_any sub div dot_general conv_general_dilated transpose reshape broadcast_in_dim squeeze "
    "expand_dims slice pad concatenate reduce_sum cumsum convert_element_type rev copy copy_p real imag conj "
    "complex".split())
#: ... and those that do so where only the operands at these positions carry a tangent (a triangular
#: solve reads its matrix's triangle alone, every entry of it, zeros included).
_REACH_STATIC_AT = {"triangular_solve": (1,)}
#: ... and those that move their tangents by indices: where only the operands at these positions
#: carry a tangent and the others (the indices) are known while tracing (constants).
_REACH_INDEXED = {"gather": (0,), "scatter-add": (0, 2), "scatter_add": (0, 2), "dynamic_slice": (0,),
                  "dynamic_update_slice": (0, 1)}


def _is_float_array(value: Any) -> bool:
    """Whether a constant holds floating-point values (read as ones on the tangents' path, never as
    indices: their values need not be carried into the reach's evaluation)."""
    return jnp.issubdtype(jnp.result_type(value), jnp.inexact)
_REACH_CALLS = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr"}


def _static_flow(jaxpr, carrying: Sequence[bool], constants: Mapping | None = None) -> list[bool] | None:
    """Which outputs of `jaxpr` the tangents entering it at `carrying` reach, where they pass through
    `_REACH_STATIC` primitives alone (calls and scans of such programs included), or `_REACH_INDEXED`
    ones by indices known while tracing: the entries they reach then do not depend on any value known
    only at run time; else None. `constants`: the values of `jaxpr`'s constvars known while tracing."""
    reached = {v for v, c in zip(jaxpr.invars, carrying) if c}
    known: set = set(constants or ())  # values computed from literals and known constants alone (a mask from iotas)
    for eqn in jaxpr.eqns:
        hit = [not isinstance(v, Literal) and v in reached for v in eqn.invars]
        if not any(hit):
            if all(isinstance(v, Literal) or v in known for v in eqn.invars) and not _sub_jaxprs(eqn.params):
                known.update(eqn.outvars)
            continue
        name = eqn.primitive.name
        if name == "select_n" and not hit[0] and (isinstance(eqn.invars[0], Literal) or eqn.invars[0] in known):
            reached.update(eqn.outvars)  # a select by a mask known while tracing
            continue
        if name in _REACH_CALLS:
            body = eqn.params[_REACH_CALLS[name]]
            outs = _static_flow(getattr(body, "jaxpr", body), hit)
            if outs is None:
                return None
            reached.update(v for v, o in zip(eqn.outvars, outs) if o)
            continue
        if name == "scan":  # a carry reached once is reached from then on: until no new one is
            consts, carries = eqn.params["num_consts"], eqn.params["num_carry"]
            while True:
                outs = _static_flow(eqn.params["jaxpr"].jaxpr, hit)
                if outs is None:
                    return None
                more = [h or o for h, o in zip(hit[consts : consts + carries], outs[:carries])]
                if more == hit[consts : consts + carries]:
                    break
                hit[consts : consts + carries] = more
            reached.update(v for v, o in zip(eqn.outvars, outs) if o)
            continue
        if name == "while":  # the carries reached after some number of steps
            if not _trip_count_known(eqn, [isinstance(v, Literal) or v in known for v in eqn.invars]):
                return None  # a trip count known only at run time: the reach depends on it (`_nan_reach`)
            carried = _while_reach_flow(eqn, hit)
            if carried is None:
                return None
            reached.update(v for v, o in zip(eqn.outvars, carried) if o)
            continue
        if name in _REACH_INDEXED:
            if any(i not in _REACH_INDEXED[name] and (h or not (isinstance(v, Literal) or v in known))
                   for i, (v, h) in enumerate(zip(eqn.invars, hit))):
                return None
        elif name in _REACH_STATIC_AT:
            if any(h for i, h in enumerate(hit) if i not in _REACH_STATIC_AT[name]):
                return None
        elif name not in _REACH_STATIC:
            return None
        reached.update(eqn.outvars)
    return [not isinstance(v, Literal) and v in reached for v in jaxpr.outvars]


def _reach_eval(jaxpr, args: list, constants: Mapping | None = None) -> list:
    """`jaxpr` evaluated on the equations a tangent reaches (`args`: None where an input carries
    none), every value no tangent reaches read as ones (finite, without zeros: a stand-in that
    neither cancels nor adds a NaN). A scan runs as it is on such stand-ins (its body's values
    computed from ones: an infinity among them can only add entries, never drop one)."""
    env = {v: a for v, a in zip(jaxpr.invars, args) if a is not None}
    known: dict = dict(constants or {})  # values computed from literals and known constants alone

    def read(v):
        if isinstance(v, Literal):
            return v.val
        if v in known:
            return known[v]
        return env[v] if v in env else np.ones(v.aval.shape, v.aval.dtype)

    for eqn in jaxpr.eqns:
        hit = [not isinstance(v, Literal) and v in env for v in eqn.invars]
        if not any(hit):
            if all(isinstance(v, Literal) or v in known for v in eqn.invars) and not _sub_jaxprs(eqn.params):
                result = eqn.primitive.bind(*(read(v) for v in eqn.invars), **eqn.params)
                known.update(zip(eqn.outvars, list(result) if eqn.primitive.multiple_results else [result]))
            continue
        name = eqn.primitive.name
        if name in _REACH_CALLS:
            body = eqn.params[_REACH_CALLS[name]]
            outs = _reach_eval(getattr(body, "jaxpr", body), [read(v) if h else None for v, h in zip(eqn.invars, hit)])
        elif name == "while":  # its trip count known while tracing (`_static_flow`): run as it is
            outs = list(eqn.primitive.bind(*(read(v) for v in eqn.invars), **eqn.params))
        else:
            result = eqn.primitive.bind(*(read(v) for v in eqn.invars), **eqn.params)
            outs = list(result) if eqn.primitive.multiple_results else [result]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def _while_reach_flow(eqn, hit: list[bool]) -> list[bool] | None:
    """`_static_flow` of a while loop (`hit`: which of its operands a tangent reaches): the carries
    a tangent may reach after some number of steps (the loop's condition reads the primal carries
    alone), None where its body's are not static."""
    cond_consts, body_consts = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
    if any(hit[:cond_consts]):
        return None
    consts, carried = hit[cond_consts : cond_consts + body_consts], hit[cond_consts + body_consts :]
    while True:  # a carry reached once is reached from then on: until no new one is
        outs = _static_flow(eqn.params["body_jaxpr"].jaxpr, consts + carried)
        if outs is None:
            return None
        more = [c or o for c, o in zip(carried, outs)]
        if more == carried:
            return carried
        carried = more


def _trip_count_known(eqn, known: list[bool]) -> bool:
    """Whether a while loop's trip count is known while tracing (`known`: which of its operands are):
    its condition reads only known constants and carries that stay known (a carry whose start is
    known and whose body computes it from known values alone, a counter from a constant)."""
    cond_consts, body_consts = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
    body, cond = eqn.params["body_jaxpr"].jaxpr, eqn.params["cond_jaxpr"].jaxpr
    carried = known[cond_consts + body_consts :]
    while True:
        values = {v for v, k in zip(body.invars, known[cond_consts : cond_consts + body_consts] + carried) if k}
        for inner in body.eqns:
            if all(isinstance(v, Literal) or v in values for v in inner.invars) and not _sub_jaxprs(inner.params):
                values.update(inner.outvars)
        more = [c and (isinstance(v, Literal) or v in values) for c, v in zip(carried, body.outvars)]
        if more == carried:
            break
        carried = more
    reads = {v for inner in cond.eqns for v in inner.invars if not isinstance(v, Literal)}
    reads |= {v for v in cond.outvars if not isinstance(v, Literal)}
    inputs = known[:cond_consts] + carried
    # values computed inside the condition from its inputs: what it reads must trace back to known inputs
    needed = set(reads)
    for inner in reversed(cond.eqns):
        if any(v in needed for v in inner.outvars):
            needed.update(v for v in inner.invars if not isinstance(v, Literal))
    return all(k for v, k in zip(cond.invars, inputs) if v in needed) and not any(
        _sub_jaxprs(inner.params) for inner in cond.eqns)


def _static_reach(of_floats: Callable, primals: tuple, tangents: Callable, total: int, dtype) -> list | None:
    """`_nan_reach`'s result computed while tracing (per output, [out entries, `total`] bool NumPy)
    where the JVP rule's tangents pass only through `_REACH_STATIC` primitives (a cumulative
    product's or log-sum-exp's prefix sums and products, a triangular solve with a constant matrix):
    which entries a NaN tangent reaches is then the same whatever the primal values, so the
    products see the support's zeros while tracing (no probe at run time, and no guard where no
    zero meets a pole). None otherwise (a select, a gather or a loop on the tangents' path: the
    run-time probe), or where it has more than PATTERN_AT_TRACE_TIME_MAX entries."""
    try:
        closed = jax.make_jaxpr(lambda t: jax.jvp(of_floats, primals, tangents(t))[1])(
            jax.ShapeDtypeStruct((total,), dtype))
    except Exception:  # noqa: BLE001 - JAX reports a missing JVP rule with many types
        return None
    rows = [math.prod(v.aval.shape) for v in closed.jaxpr.outvars]
    # Constants known while tracing (a segment_max's segment ids): indices whose reach is fixed.
    constants = {v: c for v, c in zip(closed.jaxpr.constvars, closed.consts)
                 if not isinstance(c, jax.core.Tracer) and not _is_float_array(c)}
    if sum(rows) * total > PATTERN_AT_TRACE_TIME_MAX or _static_flow(closed.jaxpr, [True], constants) is None:
        return None

    def reach():
        seeds = np.where(np.eye(total, dtype=bool), np.nan, 0).astype(dtype)
        columns = jax.vmap(lambda t: _reach_eval(closed.jaxpr, [t], constants), out_axes=-1)(seeds)
        return jnp.concatenate([jnp.isnan(c).reshape(-1, total) for c in columns])

    try:
        found = _at_trace_time(reach, sum(rows) * total)
    except Exception:  # noqa: BLE001 - a rule's operation JAX cannot batch or bind on stand-ins
        return None
    if not isinstance(found, np.ndarray):
        return None
    return np.split(found.astype(bool), np.cumsum(rows)[:-1])


def _with_static_supports(result: tuple, static: list, offsets: dict, sizes: dict) -> tuple:
    """Dense partials with the entries `_static_reach` found as their NumPy supports (none where
    every entry is held)."""
    results, partials = result

    def held(k: int, src: int, partial: Partial | None) -> Partial | None:
        if partial is None:
            return None
        found = static[k][:, offsets[src] : offsets[src] + sizes[src]]
        shape = (*partial.out_shape, *partial.in_shape)
        return partial if found.all() else partial._replace(support=found.reshape(shape))

    return results, {src: [held(k, src, p) for k, p in enumerate(ps)] for src, ps in partials.items()}


#: Whether the partials of a primitive without a structural rule that an infinite partial may meet
#: carry the entries a NaN tangent reaches as their support (`_static_reach` while tracing, else
#: `_nan_reach` at run time), and a convolution's its windows' (`_window_support`); False for A/B
#: measurements: the plain products, NaN where the partial's exact zeros meet a pole.
DENSE_SUPPORT_PROBE = True


def _nan_reach(of_floats: Callable, primals: tuple, tangents: Callable, total: int, dtype) -> Callable[[], list]:
    """A function computing where a NaN tangent of each source entry reaches each output entry
    (per output, [out entries, `total`] bool; `tangents(t)`: the operands' tangents for a column t
    of all the sources' entries), as jax.jacfwd propagates a pole's infinity through the primitive:
    the same JVP rule, one NaN seed per source entry (vmapped), so an exact zero of the partial that
    the rule never multiplies (XLA's convolution outside a window, a triangular solve's upper
    triangle) is no entry, and one it multiplies (``x * 0``) is, NaN in jax.jacfwd too. It runs
    only where a product asks for the support (`RunTimeSupport`), as a JVP beside the partial's:
    bookkeeping, not a product of partials, so the cost model does not count it."""
    def reached():
        seeds = jnp.where(jnp.eye(total, dtype=bool), jnp.asarray(jnp.nan, dtype), jnp.zeros((), dtype))
        # Its triangular solves by substitution, as the partial's own (`_small_dots_fused`): one
        # LAPACK solve per seed was 3-30x slower under vmap.
        columns = _small_dots_fused(jax.vmap(lambda t: jax.jvp(of_floats, primals, tangents(t))[1], out_axes=-1))(seeds)
        return [jnp.isnan(c).reshape(-1, total) for c in columns]

    return reached


#: Primitives whose dense partials' structural zeros are known only at run time: a conditional's
#: taken branch may ignore an operand entry that another branch reads.
_BRANCHING = frozenset({"cond"})

#: Primitives whose dense partials after a ruled pole take their support at run time whatever
#: RUN_TIME_PROBE says, where `_static_reach` cannot give it: a while loop whose trip count is known
#: only at run time (its carry's entries move step by step: which a pole reaches depends on how
#: many steps run). No corpus function has one after a pole; there it costs a JVP per source entry.
_COUNTED_AT_RUN_TIME = frozenset({"while"})


def _with_run_time_supports(result: tuple, reached: Callable[[], list], offsets: dict, sizes: dict) -> tuple:
    """Dense partials (`_dense_partials_over`'s result) with the entries they can hold as a
    `RunTimeSupport` each, sliced from `reached()` (per output, [out entries, all sources' entries]
    bool), which runs only if a product asks for one: a product that pairs a zero there with a
    pole (sqrt's infinite derivative at 0, in an entry the taken branch ignores) then keeps it 0, as
    jax.jacfwd does (`_structured.multiply`). Where `reached` cannot be traced (a branch JAX can
    differentiate only in reverse), every entry is taken as held: the plain product."""
    results, partials = result
    reach = functools.cache(reached)

    def held(k: int, src: int, partial: Partial) -> RunTimeSupport:
        shape = (*partial.out_shape, *partial.in_shape)

        def compute():
            try:
                columns = reach()
            except Exception:  # noqa: BLE001 - JAX reports a missing JVP rule with many types
                return jnp.ones(shape, bool)
            return columns[k][:, offsets[src] : offsets[src] + sizes[src]].reshape(shape)

        return RunTimeSupport(compute)

    return results, {src: [p if p is None else p._replace(support=held(k, src, p)) for k, p in enumerate(ps)]
                     for src, ps in partials.items()}


#: Primitives whose VJP multiplies the untaken case's partials by a zero cotangent (NaN where one
#: is infinite), where their JVP drops that case's tangent (jax.jacrev's answer against jax.jacfwd's).
_SELECTING = frozenset({"select_n", "clamp"})


def _holds_a_select(eqn: Equation) -> bool:
    """Whether a sub-program of `eqn` (a loop's body, a branch, a call) selects among floats
    (`_SELECTING`; a select of integers, as indexing wraps negative indices, has no partials) where
    the select's value reaches the sub-program's outputs other than through ``stop_gradient``
    (logsumexp's ``where(isfinite(max), max, 0)`` has no derivative: rows built past it need no
    run-time check, which under vmap computed the columns too: sinkhorn_log's fori_loop ran 9 rows
    and 29 columns)."""
    return any(_selects_into_outputs(inner) for inner in _sub_jaxprs(eqn.params))


def _selects_into_outputs(jaxpr) -> bool:
    """`_holds_a_select` of one jaxpr, by backward liveness from its outputs (every output of a
    jaxpr inside it taken as live)."""
    live = {v for v in jaxpr.outvars if not isinstance(v, Literal)}
    for eqn in reversed(jaxpr.eqns):
        if eqn.primitive.name == "stop_gradient" or not any(v in live for v in eqn.outvars):
            continue
        if ((eqn.primitive.name in _SELECTING and jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.inexact))
                or any(_selects_into_outputs(inner) for inner in _sub_jaxprs(eqn.params))):
            return True
        live.update(v for v in eqn.invars if not isinstance(v, Literal))
    return False


def _finite_or_columns(result: tuple, by_columns: Callable) -> tuple:
    """Dense partials built by rows, or, where any entry is not finite, by columns (decided at run
    time): a ``jnp.where`` inside a loop or branch whose untaken case has an infinite partial
    (``jnp.sqrt`` at 0, ``jnp.log`` at a negative) gives NaN rows, as jax.jacrev, where the columns
    follow jax.jacfwd (the discard's rule, `_discard`). Under vmap both are computed."""
    results, partials = result
    values, tree = jax.tree.flatten({src: [p.value for p in ps] for src, ps in partials.items()})
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in values]))

    def columns(_):
        again = jax.tree.leaves({src: [p.value for p in ps] for src, ps in by_columns()[1].items()})
        return [c.astype(v.dtype).reshape(np.shape(v)) for c, v in zip(again, values)]

    values = jax.tree.unflatten(tree, jax.lax.cond(finite, lambda _: values, columns, None))
    return results, {src: [p._replace(value=v) for p, v in zip(ps, values[src])] for src, ps in partials.items()}


#: The work of one VJP row against one JVP column, for choosing how a dense partial is built.
_ROW_COST = 2

#: Partials of at most this many entries are built by columns: one JVP, which XLA fuses with the
#: primal, where the VJP's stored residuals and transposed operations are separate kernels
#: (jnp.prod of 4 entries at batch 32,768: rows 1.5x slower than 4 columns).
_COLUMNS_MAX_ENTRIES = 8

#: Primitives built by rows whenever the rows are not more than the columns: a conditional's VJP
#: costs about its JVP (no stored iterations, unlike a loop's), and rows come out in the partials'
#: [out, in] layout, where columns would need a transposing pass over every partial that XLA cannot
#: fuse across the conditional (lax.switch of an elementwise branch at batch 32,768: 2.3x slower).
_ROWS_WHEN_NOT_MORE = frozenset({"cond"})

#: Whether a conditional whose branches may hold an infinite partial is built by columns (False: by
#: rows whenever the rows are not more, as the other conditionals; for A/B measurements).
POLE_BRANCHES_BY_COLUMNS = True


def _may_hold_a_pole(eqn: Equation) -> bool:
    """Whether a sub-program of `eqn` has a floating-point equation whose partial may be infinite
    where its operands are finite: one outside `_poles.FINITE_PARTIALS` (a square root, a log, a
    division), calls looked into."""
    def may_be_infinite(inner) -> bool:
        return (inner.primitive.name not in FINITE_PARTIALS and not _sub_jaxprs(inner.params)
                and any(jnp.issubdtype(v.aval.dtype, jnp.inexact) for v in inner.outvars))
    return any(_has_equation(inner, may_be_infinite) for inner in _sub_jaxprs(eqn.params))


#: Primitives whose derivative is a user's VJP rule: their partials are built by rows.
_VJP_RULED = frozenset({"custom_vjp_call", "custom_vjp_call_jaxpr"})


def _check_linear_vjp_rule(eqn: Equation, of_floats, primals) -> None:
    """Refuses a custom VJP rule that is not linear in its cotangent (gradient clipping).

    Such a rule is no Jacobian: jax.jacrev's rows depend on the scale of the cotangent each row
    brings, which no product of partials reproduces. JAX transposes the pullback only if it is
    linear in the cotangent, which is the test. A pullback with a while loop cannot be transposed
    whatever it computes (jax.experimental.ode.odeint's adjoint solve, linear in the cotangent up
    to the solver's tolerance): such a rule is applied, by rows as jax.jacrev applies it.
    """
    results, pullback = jax.vjp(of_floats, *primals)
    cotangents = tuple(jax.ShapeDtypeStruct(np.shape(r), r.dtype) for r in results)
    try:
        transposed = jax.linear_transpose(pullback, cotangents)
        jax.eval_shape(transposed, tuple(jax.ShapeDtypeStruct(np.shape(p), p.dtype) for p in primals))
    except Exception as err:  # noqa: BLE001 - JAX reports a missing transpose rule with many types
        if _has_equation(jax.make_jaxpr(pullback)(cotangents).jaxpr, lambda e: e.primitive.name == "while"):
            return
        body = eqn.params.get("call_jaxpr")
        info = getattr(getattr(body, "jaxpr", None), "debug_info", None)
        name = getattr(info, "func_src_info", None) or "a custom_vjp function"
        raise UnsupportedPrimitiveError(
            f"the custom VJP rule of {name} is not linear in its cotangent (it clips or otherwise "
            f"transforms gradients; JAX says: {str(err).splitlines()[0]}): a Jacobian cannot represent "
            "it, and jax.jacrev's rows depend on the cotangent each brings. Use jax.jacrev for this "
            "function, or make the rule linear in the cotangent."
        ) from err


def _sub_jaxprs(params: Mapping[str, Any]) -> list:
    """The (open) jaxprs among an equation's parameters."""
    subs = [getattr(sub, "jaxpr", sub) for param in params.values()
            for sub in (param if isinstance(param, (tuple, list)) else (param,))]
    return [sub for sub in subs if hasattr(sub, "eqns")]


def _has_equation(jaxpr, test: Callable) -> bool:
    """Whether `jaxpr` or a jaxpr in its equations' parameters has an equation that passes `test`."""
    return any(test(eqn) or any(_has_equation(inner, test) for inner in _sub_jaxprs(eqn.params))
               for eqn in jaxpr.eqns)


#: Call primitives whose bodies `_small_dots_fused` evaluates equation by equation.
_INLINED_CALLS = frozenset({"pjit", "jit", "closed_call", "core_call"})


def _small_dots_fused(fn: Callable) -> Callable:
    """`fn` with the small matrix products of its program (JAX's derivative rules multiply the seeds
    by factors: eigh's and cholesky's JVPs are products of 3x3 matrices, per seed) done as fused
    sums of broadcast products (`_structured.contract`), its small triangular solves (inside a
    custom linear solve's solvers too) by substitution (`_triangular_solve_by_substitution`); other
    equations bound as they are.

    Under vmap a dot_general of small matrices becomes a batched matmul, which XLA:CPU runs many
    times slower than an elementwise loop at batch 32,768. The products are those of the rule, so
    the dense partials are the same numbers up to the order of their additions.
    """

    def run(*args):
        closed, shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        out = _eval_small_dots(closed.jaxpr, closed.consts, jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(shape), out)

    return run


def _eval_small_dots(jaxpr, consts, args) -> list[Any]:
    """jax.core.eval_jaxpr, with dot_general by `_structured.contract` and calls inlined."""
    env = {}

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    for var, val in zip(jaxpr.constvars, consts):
        env[var] = val
    for var, val in zip(jaxpr.invars, args):
        env[var] = val
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name == "dot_general" and not eqn.params.get("out_sharding"):
            outvals = [_dot_general_by_contract(*invals, **eqn.params)]
        elif name == "triangular_solve" and np.shape(invals[0])[-1] <= _SUBSTITUTION_MAX:
            outvals = [_triangular_solve_by_substitution(*invals, **eqn.params)]
        elif name == "custom_linear_solve":  # its solves (jnp.linalg.solve's LU) rewritten alike
            jaxprs = type(eqn.params["jaxprs"])(*(_small_dots_closed(j) for j in eqn.params["jaxprs"]))
            outvals = eqn.primitive.bind(*invals, **{**eqn.params, "jaxprs": jaxprs})
        elif name in _INLINED_CALLS and hasattr(eqn.params.get("jaxpr"), "jaxpr"):
            body = eqn.params["jaxpr"]
            outvals = _eval_small_dots(body.jaxpr, body.consts, invals)
        else:
            result = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            outvals = list(result) if eqn.primitive.multiple_results else [result]
        for var, val in zip(eqn.outvars, outvals):
            env[var] = val
    return [read(v) for v in jaxpr.outvars]


#: Triangular solves of matrices up to this order inside a dense partial's derivative program are
#: done by substitution in fused elementwise steps (`_triangular_solve_by_substitution`); LAPACK's
#: trsm with one set of right-hand sides per seed took, per Cholesky of order n at batch 256, 0.31 ms
#: (n = 3), 32 ms (6), 234 ms (8), 2.0 s (12), 5.7 s (16); by substitution 0.20, 2.7, 25, 300 ms,
#: 1.6 s; with the inverse (`_INVERSE_FROM`) 1.9, 6.0, 170 ms, 0.94 s.
_SUBSTITUTION_MAX = 16

#: From this order on, a solve with more right-hand sides than rows is the inverse (by substitution
#: on the identity) times them: XLA:CPU runs one product faster than the substitution's m fused
#: steps over every seed (n = 8: 6.0 against 25 ms); below it, the steps are faster (n = 3, 4).
_INVERSE_FROM = 5


def _triangular_solve_by_substitution(a, b, *, left_side, lower, transpose_a, conjugate_a, unit_diagonal, **_):
    """lax.linalg.triangular_solve(a, b) by forward or back substitution, one elementwise step per
    row of the [m, m] matrix, for `_eval_small_dots`.

    The derivative rules of cholesky, lu, triangular_solve and jnp.linalg.solve solve with the
    factor for every seed at once: under vmap, one LAPACK trsm per example with (seeds x m)
    right-hand sides, which XLA:CPU runs 3-30x slower than the same arithmetic as fused loops (a
    4 x 4 Cholesky's 16 seeds at batch 256: two trsm calls of 0.5 ms each), and far slower from
    order 6 on (`_SUBSTITUTION_MAX`). The steps are dtrsm's own (each row's remainder is divided by
    the diagonal, then subtracted from the rows after it): the same numbers up to the rounding of
    fused multiply-adds. From order `_INVERSE_FROM` on, more right-hand sides than rows are
    multiplied by the inverse instead (itself by substitution): the same solution up to rounding.
    """
    dtype = jnp.result_type(a, b)
    a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    if conjugate_a and jnp.issubdtype(dtype, jnp.complexfloating):
        a = jnp.conj(a)
    m = a.shape[-1]
    # op(a) x = b on the left; x op(a) = b on the right is op(a)^T x^T = b^T.
    matrix = jnp.swapaxes(a, -1, -2) if transpose_a != (not left_side) else a
    lower_matrix = lower != (transpose_a != (not left_side))
    rhs = b if left_side else jnp.swapaxes(b, -1, -2)  # [..., m, k]
    if m >= _INVERSE_FROM and rhs.shape[-1] > m:
        # Many right-hand sides (one per seed): the inverse by substitution, then one product.
        inverse = _triangular_solve_by_substitution(
            matrix, jnp.broadcast_to(jnp.eye(m, dtype=dtype), matrix.shape), left_side=True,
            lower=lower_matrix, transpose_a=False, conjugate_a=False, unit_diagonal=unit_diagonal)
        batch = tuple(range(matrix.ndim - 2))
        x = _dot_general_by_contract(inverse, rhs, dimension_numbers=(((matrix.ndim - 1,), (matrix.ndim - 2,)), (batch, batch)))
        return x if left_side else jnp.swapaxes(x, -1, -2)
    rest = [rhs[..., i, :] for i in range(m)]
    solution = [None] * m
    for i in (range(m) if lower_matrix else range(m - 1, -1, -1)):
        x = rest[i] if unit_diagonal else rest[i] / matrix[..., i, i, None]
        solution[i] = x
        for j in (range(i + 1, m) if lower_matrix else range(i)):
            rest[j] = rest[j] - matrix[..., j, i, None] * x
    x = jnp.stack(solution, axis=-2)
    return x if left_side else jnp.swapaxes(x, -1, -2)


def _small_dots_closed(closed):
    """A closed jaxpr (or None) evaluated by `_eval_small_dots`, as a closed jaxpr again."""
    if closed is None:
        return None
    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in closed.jaxpr.invars]
    return jax.make_jaxpr(lambda *args: _eval_small_dots(closed.jaxpr, closed.consts, args))(*avals)


def _dot_general_by_contract(lhs, rhs, *, dimension_numbers, preferred_element_type=None, **_):
    """lax.dot_general(lhs, rhs) through `_structured.contract` (fused when small)."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    letters = iter("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    lhs_letters = [next(letters) for _ in range(np.ndim(lhs))]
    rhs_letters = [None] * np.ndim(rhs)
    for l, r in zip(lhs_contract, rhs_contract):
        rhs_letters[r] = lhs_letters[l]
    for l, r in zip(lhs_batch, rhs_batch):
        rhs_letters[r] = lhs_letters[l]
    rhs_letters = [c if c is not None else next(letters) for c in rhs_letters]
    lhs_free = [lhs_letters[d] for d in range(np.ndim(lhs)) if d not in lhs_contract and d not in lhs_batch]
    rhs_free = [rhs_letters[d] for d in range(np.ndim(rhs)) if d not in rhs_contract and d not in rhs_batch]
    result = "".join([lhs_letters[d] for d in lhs_batch] + lhs_free + rhs_free)
    dtype = preferred_element_type or jnp.result_type(lhs, rhs)
    return contract("".join(lhs_letters), jnp.asarray(lhs, dtype), "".join(rhs_letters), jnp.asarray(rhs, dtype),
                    result)


def _dense_partials_by_rows(of_floats, primals, floats, sources, out_shapes) -> tuple[tuple, dict[int, list[Partial]]]:
    """`_dense_partials` by one vmapped VJP, one one-hot cotangent per output entry (all reached
    outputs at once); the cotangents of a source's operands are its partials' rows."""
    results, pullback = jax.vjp(of_floats, *primals)
    total = sum(math.prod(np.shape(r)) for r in results)
    seeds, start = [], 0
    for r in results:
        n = math.prod(np.shape(r))
        block = jnp.eye(total, dtype=r.dtype)[:, start : start + n]  # [total, n]: one-hot rows
        seeds.append(block.reshape(total, *np.shape(r)))
        start += n
    cotangents = _small_dots_fused(jax.vmap(pullback))(tuple(seeds))  # per float operand: [total, *operand shape]
    partials = {}
    for src, (positions, in_shape) in sources.items():
        rows = sum(cotangents[floats.index(i)] for i in positions).reshape(total, math.prod(in_shape))
        partials[src], start = [], 0
        for out_shape in out_shapes:
            n = math.prod(out_shape)
            partials[src].append(Partial(1, out_shape, in_shape, rows[start : start + n].reshape(*out_shape, *in_shape)))
            start += n
    return results, partials


def _eliminate_all(graph: Graph, steps: Sequence[Step], leaves: list[Any], counter: MultiplicationCounter):
    """Evaluates the primal and the partials, then replays the elimination engine's plan `steps`
    (``graph.plan(graph, order)``).

    Returns:
      (outputs: the primal output values, edges: ``{(src, dst): Partial}`` left after the
      eliminations, whose input -> output entries are the Jacobian, performed: one
      `graph.Product` per product, as read off the arrays; equal to ``graph.plan(graph, order)``'s).
    """
    program: Program = graph.program
    env: dict[Any, Any] = {}
    for node, leaf in enumerate(program.input_leaves, start=1):
        env[node] = leaves[leaf]
    incoming: dict[int, list] = {}
    for e in graph.edges:
        if e.code != 0:  # a zero partial is no edge (as in the engine)
            incoming.setdefault(e.dst, []).append(e)
    # Vertices read by more than one edge or returned too: where one of them is a select's case, the
    # discard (`_discard_masked_partials`) cannot zero a pole the other use keeps (a norm returned
    # beside the rows it safely divides), so the select's own zeros must hold (`_select_support`).
    shared = {src for src, n in collections.Counter(e.src for e in graph.edges if e.code != 0).items() if n > 1}
    shared |= {op.node for op in program.outputs if op.node is not None}
    # ... and the vertices a ruled pole reaches through such a vertex (``where(c, sqrt(x) * sqrt(y), 0)``
    # beside sqrt(x) returned: the product is read once, its pole's source twice).
    pole_shared: set[int] = set()

    def share_pole(e) -> None:
        if ruled_poles.get(e.src, _NO_POLE) != _NO_POLE and (e.src in shared or e.src in pole_shared):
            pole_shared.add(e.dst)
    read = _read_nodes(graph)
    edges: dict[tuple[int, int], Partial] = {}
    bounded: dict[Any, bool] = {}  # node or ValueRef -> finite wherever the arguments are (`bounded_operand`)
    # ... and the arguments a value tested for NaN or infinity is computed from are not: the function
    # expects them non-finite somewhere (missing labels masked by jnp.nanmean).
    bounded.update(dict.fromkeys(tested_arguments(program), False))
    # node -> how an infinite partial may reach it (`_pole_passes`): only then do the partials it
    # enters keep supports (`_dot_general_support`, `_select_support`); elsewhere no product could
    # meet a pole, and a support would only cost guards.
    poles: dict[int, int] = {}
    # The same, for the poles of ruled partials alone (sqrt's at 0, a division's): a dense vertex's
    # own partial (cholesky's at a singular matrix) adds none. Only these give the partials after
    # them the support of their exact zeros (`_window_support`, `_static_reach`, `_nan_reach`): their
    # guards cost 1.5-2.6x on the linear-algebra corpus (cho_solve_spd, mvn_logpdf at batch 256),
    # for matrices singular only where jax.jacfwd is NaN too.
    ruled_poles: dict[int, int] = {}
    away_from_zero: dict[Any, bool] = {}  # node or ValueRef -> at least a positive constant in magnitude
    defined_by: dict[Any, Equation] = {}  # node or ValueRef -> its equation (`_poles.away_from_zero_value`)
    folded: dict[Any, Any] = {}  # node or ValueRef -> its value, computed from constants alone
    for eqn in program.equations:
        values = [_operand_value(op, env, leaves) for op in eqn.operands]
        results = _bind_constant(eqn, values)  # evaluated once, whatever its number of outputs
        # The pole rules see values computed from constants alone as constants (`fold_constants`).
        judged = fold_constants(eqn, folded)
        seen = [j.value if j is not o else v for j, o, v in zip(judged.operands, eqn.operands, values)]
        if computed_from_constants(judged):
            known = _folded_values(judged, results)
            if known is not None:
                folded.update((out.node if out.node is not None else out.value, r) for out, r in zip(eqn.outputs, known))
        operand_bounds = [bounded_operand(op, value, bounded) for op, value in zip(judged.operands, seen)]
        operands_bounded = all(operand_bounds)
        outputs_bounded = bounded_value(judged, seen, operand_bounds, away_from_zero, defined_by)
        for out in eqn.outputs:
            defined_by[out.node if out.node is not None else out.value] = judged
        if len(eqn.outputs) == 1 and away_from_zero_value(judged, seen, away_from_zero, defined_by):
            out = eqn.outputs[0]
            away_from_zero[out.node if out.node is not None else out.value] = True
        for out, result in zip(eqn.outputs, results):
            env[out.node if out.node is not None else out.value] = result
            bounded[out.node if out.node is not None else out.value] = outputs_bounded
        # Structured partials for primitives with rules; a fused complex span (a closed_call the
        # trace did not inline) has none.
        if eqn.primitive is None or (eqn.primitive.name in SUPPORTED_PRIMITIVES and eqn.primitive is not closed_call_p):
            for k, out in enumerate(eqn.outputs):
                for e in incoming.get(out.node, ()) if out.node is not None else ():
                    positions = [i for i, op in enumerate(eqn.operands) if op.node == e.src]
                    try:
                        if e.code >= FIRST_EXTENDED_CODE:
                            partial = _labelled_partial_of(graph, eqn, values, positions, e, k)
                        else:
                            partial = _partial_of(eqn, values, positions, e.code, e.out_shape, e.in_shape, k)
                    except AlphagradError:
                        raise
                    except Exception as err:  # noqa: BLE001 - a missing JVP rule has many types
                        raise _undifferentiable(eqn, err) from err
                    # A support matters only where a product meets an infinite partial from further
                    # up, which needs one on some path into the operand.
                    if eqn.primitive is jax.lax.dot_general_p and poles.get(e.src, _NO_POLE) != _NO_POLE:
                        partial = _dot_general_support(values, eqn.params, positions, partial)
                    elif eqn.primitive is jax.lax.select_n_p and (
                            poles.get(e.src, _NO_POLE) == _POLE_SPREAD
                            or (SHARED_CASE_SUPPORT and ruled_poles.get(e.src, _NO_POLE) == _POLE_ENTRYWISE
                                and (e.src in shared or e.src in pole_shared))):
                        partial = _select_support(values, positions, partial)
                    elif partial.code == INDEX_MAP and poles.get(e.src, _NO_POLE) != _NO_POLE:
                        partial = _run_time_map_support(partial)
                    elif (partial.code == 1 and eqn.primitive is not None and eqn.primitive.name in ELEMENTWISE_BINARY
                          and poles.get(e.src, _NO_POLE) != _NO_POLE):
                        partial = _broadcast_support(eqn, values, positions, partial, k)
                    elif (DENSE_SUPPORT_PROBE and eqn.primitive is not None and eqn.primitive.name in _WINDOWED
                          and ruled_poles.get(e.src, _NO_POLE) != _NO_POLE):
                        partial = _window_support(eqn, values, positions, partial, k)
                    moves = partial.code in VALUELESS or partial.code == INDEX_MAP  # no values to be infinite
                    finite = ((operands_bounded or moves or reads_only_the_others(judged, positions, operand_bounds))
                              and has_finite_partials(judged, seen, partial.code, away_from_zero, defined_by))
                    edges[(e.src, e.dst)] = partial._replace(finite=finite)
                    _pole_passes(poles, e, partial, finite)
                    _pole_passes(ruled_poles, e, partial, finite)
                    share_pole(e)
            continue
        # No structural rule (every multi-output primitive): dense partials, one JVP per source for
        # all the outputs it reaches.
        by_source: dict[int, list] = {}
        for k, out in enumerate(eqn.outputs):
            for e in incoming.get(out.node, ()) if out.node is not None else ():
                if out.node in read:
                    by_source.setdefault(e.src, []).append((k, e))
                else:  # an output nothing reads: its partials are dropped unused (`_read_nodes`)
                    zeros = jnp.zeros((*e.out_shape, *e.in_shape))
                    edges[(e.src, e.dst)] = Partial(1, e.out_shape, e.in_shape, zeros, finite=True)
        if eqn.loop is not None:  # a scan kept as a loop: its partials by the plan's chain product
            looped = _loops.loop_partials(eqn, values, by_source, counter, jacobian, count_muls)
            if DENSE_SUPPORT_PROBE and any(ruled_poles.get(src, _NO_POLE) != _NO_POLE for src in by_source):
                looped = _loop_supports(eqn, values, by_source, looped)
            edges.update(looped)
            for reached in by_source.values():
                for _, e in reached:
                    loop_partial = edges.get((e.src, e.dst))
                    if loop_partial is None:
                        poles[e.dst] = _POLE_SPREAD
                        if ruled_poles.get(e.src, _NO_POLE) != _NO_POLE:
                            ruled_poles[e.dst] = _POLE_SPREAD
                    else:
                        _pole_passes(poles, e, loop_partial, loop_partial.finite)
                        _pole_passes(ruled_poles, e, loop_partial, True)
                    share_pole(e)
            continue
        if not by_source:
            continue
        sources = {src: ([i for i, op in enumerate(eqn.operands) if op.node == src], reached[0][1].in_shape)
                   for src, reached in by_source.items()}
        out_shape_of = {k: e.out_shape for reached in by_source.values() for k, e in reached}
        outputs = sorted(out_shape_of)
        probe = any(ruled_poles.get(src, _NO_POLE) != _NO_POLE for src in sources)
        results, partials = _dense_partials(eqn, values, sources, outputs, [out_shape_of[k] for k in outputs], probe)
        for k, result in zip(outputs, results or ()):  # later equations read the values computed with them
            out = eqn.outputs[k]
            env[out.node if out.node is not None else out.value] = result
        for src, reached in by_source.items():
            for k, e in reached:
                if e.code != 1:
                    raise AlphagradError(f"internal error: edge {e} of a primitive without rule is not dense")
                edges[(e.src, e.dst)] = partials[src][outputs.index(k)]
                _pole_passes(poles, e, edges[(e.src, e.dst)], False)
                _pole_passes(ruled_poles, e, edges[(e.src, e.dst)], True)
                share_pole(e)

    # The dtype of the partials: that of the numbers the graph computes (not of PRNG keys).
    numbers = [v for n, v in env.items()
               if isinstance(n, int) and not jax.dtypes.issubdtype(_dtype_of(v), jax.dtypes.extended)]
    dtype = jnp.result_type(*numbers) if numbers else jnp.float32
    _discard_masked_partials(graph, edges, env, leaves)
    performed = _replay(graph, steps, edges, counter, dtype)
    outputs = [_operand_value(op, env, leaves) for op in program.outputs]
    return outputs, edges, performed


def _of_floats(eqn: Equation, values: list[Any], floats: list[int], outputs: list[int]) -> Callable:
    """The equation's `outputs` as a function of its operands at `floats` (the others as in `values`)."""
    def of_floats(*xs):
        # Constants captured by the trace are numpy arrays; a rule may index one with a traced
        # integer (odeint's VJP indexes its times in a scan), which only a JAX array allows.
        operands = [jnp.asarray(v) if isinstance(v, np.ndarray) else v for v in values]
        for i, y in zip(floats, xs):
            operands[i] = y
        results = _bind_all(eqn, operands)
        return tuple(results[k] for k in outputs)

    return of_floats


def _loop_supports(eqn: Equation, values: list[Any], by_source: dict[int, list], looped: dict) -> dict:
    """The partials of a scan kept as a loop (`_loops.loop_partials`, dense) with the entries a NaN
    tangent of each source entry reaches through the scan as their support (`_static_reach` while
    tracing, else `_nan_reach` at run time where RUN_TIME_PROBE says so; else as they are), for a
    pole before it: a running product's carry times a factor it has not read yet is an exact zero
    that jax.jacfwd never multiplies."""
    sources = {src: [i for i, op in enumerate(eqn.operands) if op.node == src] for src in by_source}
    floats = sorted({i for positions in sources.values() for i in positions})
    outputs = sorted({k for reached in by_source.values() for k, _ in reached})
    sizes = {src: math.prod(np.shape(values[positions[0]])) for src, positions in sources.items()}
    offsets = dict(zip(sizes, np.cumsum([0, *sizes.values()])[:-1].tolist()))
    total = sum(sizes.values())
    dtype = jnp.result_type(*(values[positions[0]] for positions in sources.values()))
    primals = tuple(jnp.asarray(values[i]) for i in floats)
    source_at = {i: src for src, positions in sources.items() for i in positions}
    of_floats = _of_floats(eqn, values, floats, outputs)

    def tangents(t):
        return tuple(t[offsets[source_at[i]] : offsets[source_at[i]] + sizes[source_at[i]]]
                     .reshape(np.shape(p)).astype(p.dtype) for i, p in zip(floats, primals))

    # Per source, its partial into each of `outputs` (None where it reaches none there).
    dst_of = {(src, k): e.dst for src, reached in by_source.items() for k, e in reached}
    partials = {src: [looped.get((src, dst_of.get((src, k)))) for k in outputs] for src in sources}
    static = _static_reach(of_floats, primals, tangents, total, dtype) if STATIC_REACH else None
    if static is not None:
        _, held = _with_static_supports((None, partials), static, offsets, sizes)
    elif not RUN_TIME_PROBE:
        return looped
    else:
        _, held = _with_run_time_supports((None, partials), _nan_reach(of_floats, primals, tangents, total, dtype),
                                          offsets, sizes)
    result = dict(looped)
    for (src, k), dst in dst_of.items():
        if (src, dst) in looped:
            result[(src, dst)] = held[src][outputs.index(k)]
    return result


def _read_nodes(graph: Graph) -> set[int]:
    """The nodes something reads: the source of an edge, or an output. Partials into any other node
    are only dropped by the elimination (a vertex without out-edges forms no product), so a
    multi-output equation's dense partials leave those outputs out: flax's ``nn.RNN`` returns its
    scan's final carry from an inlined call whose caller drops it, and the whole-loop VJP pulled
    back 6 cotangent rows where the 4 of the stacked outputs are read (flax_gru_sequence)."""
    return {e.src for e in graph.edges if e.code != 0} | {graph.node_id(o) for o in graph.outputs}


#: An equation whose operands are all known while tracing (constants, and values computed from
#: them alone: an index array built inside f) and whose outputs have at most this many entries is
#: evaluated while tracing (`_bind_constant`).
CONSTANT_AT_TRACE_TIME_MAX = 2**16


#: Values of at most this many entries computed from constants alone are evaluated in NumPy for the
#: pole rules where the program leaves them to XLA's constant folding (`_folded_values`).
FOLDED_MAX_ENTRIES = 64


def _folded_values(eqn: Equation, results: list[Any]) -> list[Any] | None:
    """The outputs of `eqn`, whose operands are all constants, as values known while tracing: its
    results where they are (`_bind_constant`), else computed in NumPy where the primitive has a NumPy
    form and the outputs are small (float arithmetic on constants is traced for XLA to fold: e.g.
    ``jnp.var``'s normaliser ``n - ddof``, whose sign decides its select), else None. Used by the
    pole rules alone (`_poles.fold_constants`): the program's own values are `results`."""
    if not any(isinstance(r, jax.core.Tracer) for r in results):
        return results
    rule = _NUMPY_RULES.get(eqn.primitive.name) if eqn.primitive is not None else None
    if rule is None or sum(math.prod(aval.shape) for aval in eqn.avals) > FOLDED_MAX_ENTRIES:
        return None
    try:
        return _by_numpy_rule(eqn, rule, [op.value for op in eqn.operands])
    except Exception:  # noqa: BLE001 - a NumPy form that does not take these operands: not folded
        return None


def _by_numpy_rule(eqn: Equation, rule: Callable, values: list[Any]) -> list[np.ndarray]:
    """The outputs of `eqn` computed by its NumPy form `rule` (`_NUMPY_RULES`), in its avals' dtypes
    and shapes."""
    results = rule(*(np.asarray(v) for v in values), **eqn.params)
    results = list(results) if eqn.primitive.multiple_results else [results]
    return [np.asarray(r, aval.dtype).reshape(aval.shape) for r, aval in zip(results, eqn.avals)]


def _bind_constant(eqn: Equation, values: list[Any]) -> list[Any]:
    """`_bind_all`, evaluated while tracing where every operand is known then (no tracer) and the
    outputs are small: the values stay concrete, so index maps on indices computed inside f
    (``x.at[jnp.array([0, 2])].set(...)``) have matrices known while tracing, whose `Placed` sums
    are written on their supports (`_structured._materialise_known`)."""
    if (eqn.primitive is None or any(isinstance(v, jax.core.Tracer) for v in values)
            or sum(math.prod(aval.shape) for aval in eqn.avals if hasattr(aval, "shape")) > CONSTANT_AT_TRACE_TIME_MAX):
        return _bind_all(eqn, values)
    rule = _NUMPY_RULES.get(eqn.primitive.name)
    dtypes = [aval.dtype for aval in eqn.avals] + [_dtype_of(v) for v in values]
    if rule is not None and all(not jax.dtypes.issubdtype(d, jax.dtypes.extended)
                                and (jnp.issubdtype(d, jnp.integer) or jnp.issubdtype(d, jnp.bool_)) for d in dtypes):
        # Index arithmetic in NumPy: JAX would compile the operation first (tens of ms each); floats
        # are left to JAX's own arithmetic.
        return _by_numpy_rule(eqn, rule, values)
    if any(not jax.dtypes.issubdtype(d, jax.dtypes.extended) and jnp.issubdtype(d, jnp.inexact) for d in dtypes):
        # Float arithmetic is traced and left to XLA's constant folding: evaluated here, JAX compiles
        # each operation apart (about 11 ms each: jax.image.resize's 183 constant equations of
        # interpolation weights made its first call 5.6 s against 1.3 s).
        return _bind_all(eqn, values)
    with jax.ensure_compile_time_eval():
        return _bind_all(eqn, values)


def _is_elementwise(partial: Partial) -> bool:
    """Whether `partial` ties v and p entry by entry (same shape) with a value per entry."""
    if isinstance(partial.value, Labelled):  # a diagonal on every axis of equal dims
        value = partial.value
        return (value.out_dims == value.in_dims and value.ties.has_values
                and len(value.ties.ties) == len(value.out_dims)
                and all(o == i and kind == "D" for o, i, kind in value.ties.ties))
    if not hasattr(partial.value, "shape") or not elementwise_code(partial.code, partial.out_shape, partial.in_shape):
        return False
    # A diagonal's value array has v's shape (not a constant broadcast along it).
    return partial.code != 6 or tuple(np.shape(partial.value)) == tuple(partial.out_shape)


def _maps_entrywise(partial: Partial) -> bool:
    """Whether `partial` sends entry k of p to entry k of v only (same shape; valued or not): an
    identity (add, sub), a constant multiple of it (neg, x * 2), a diagonal."""
    if isinstance(partial.value, Labelled):
        value = partial.value
        return (value.out_dims == value.in_dims and len(value.ties.ties) == len(value.out_dims)
                and all(o == i for o, i, _ in value.ties.ties))
    return entrywise_code(partial.code, partial.out_shape, partial.in_shape)


def _readers(partial: Partial) -> Callable[[jax.Array], jax.Array] | None:
    """For a partial d(v)/d(p) through which a discard passes back (`_discard`): the function from
    v's kept entries [size v] to the entries of p some kept entry of v reads [size p]; or None.
    An index map's readers are its adjoint's image (no matrix); any other 2-D code's, its pattern
    (`_discard.structural_reads`)."""
    size = math.prod(partial.in_shape)
    if partial.code == INDEX_MAP and isinstance(partial.value, IndexMap):
        def read(kept):
            return partial.value.transpose(kept.astype(jnp.float32).reshape(partial.out_shape)).reshape(size) > 0
        return read
    if isinstance(partial.value, Labelled):
        value, n_out = partial.value, math.prod(partial.out_shape)
        if (n_out * size > READS_MAX or math.prod(value.out_dims) != n_out
                or math.prod(value.in_dims) != size):
            return None
        ones = None if value.values is None else np.ones(np.shape(value.values), np.float32)
        with jax.ensure_compile_time_eval():  # the pattern alone: concrete
            pattern = np.asarray(densify_labelled(value._replace(values=ones), jnp.float32)).reshape(n_out, size)
        out, inp = np.nonzero(pattern)
    elif (reads := structural_reads(partial.code, partial.out_shape, partial.in_shape)) is not None:
        out, inp = reads
    else:
        return None
    return lambda kept: jnp.zeros(size, bool).at[inp].max(kept[out])


#: Whether custom JVP rules that select their tangent discard like selects (`_rule_takes`); False
#: only for A/B measurements.
DISCARD_BY_RULES = True

#: Whether a select whose case is read elsewhere too (or returned) keeps its zeros as a support
#: where an entrywise pole reaches the case (`_eliminate_all`'s `shared`); False only for A/B
#: measurements.
SHARED_CASE_SUPPORT = True


def _discard_masked_partials(graph: Graph, edges: dict[tuple[int, int], Partial], env: dict, leaves: list) -> None:
    """Zeroes, in place, the entries of elementwise partials that only reach the outputs through the
    case a select (``jnp.where``) does not take, as jax.jacfwd discards those tangents
    (`_discard.plan_discard`, evaluated here vertex by vertex).

    ``jnp.where(x > 0, jnp.sqrt(x), 0.0)`` at x < 0, ``jnp.where(p > 0, p * jnp.log(p), 0.0)`` at
    p = 0, or a norm at 0 behind ``jnp.where(r > 0, r, 1.0)``: the partials of the discarded case are
    NaN or infinite there, and the select's zero would multiply them into NaN (jax.jacrev's answer).
    """
    plan = plan_discard(graph.program, edges,
                        is_elementwise=lambda p, u: (p, u) in edges and _is_elementwise(edges[(p, u)]),
                        maps_entrywise=lambda p, u: _maps_entrywise(edges[(p, u)]),
                        has_pattern=lambda p, u: _readers(edges[(p, u)]) is not None,
                        can_zero=lambda p, u: not edges[(p, u)].finite and _cover(edges[(p, u)]) is not None,
                        rules=DISCARD_BY_RULES)
    if plan is None or not plan.zeroed:  # nothing to zero that may be infinite: a finite partial
        return  # times the select's zero is zero anyway (relu after a matrix product)
    equation_of = {eqn.outputs[0].node: eqn for eqn in graph.program.equations if eqn.outputs}
    taken: dict[tuple[int, int], jax.Array] = {}  # (case node, select node) -> [size] where the select takes it
    for case in plan.cases:
        shape = np.shape(env[case.select])
        if case.predicate is None:  # a custom JVP rule: where it lets a NaN tangent through
            here = _rule_takes(equation_of[case.select], env, leaves, case.index).reshape(math.prod(shape))
        else:
            pred = jnp.broadcast_to(_operand_value(case.predicate, env, leaves), shape).reshape(math.prod(shape))
            here = pred == case.index
        key = (case.case, case.select)
        taken[key] = taken[key] | here if key in taken else here
    kept: dict[int, jax.Array] = {}  # node -> [size] entries some output needs
    for u, uses in plan.nodes:
        alive = None
        for w, through, by_pattern in uses:
            here = kept[w] if through else None
            if (u, w) in taken:
                here = taken[(u, w)] if here is None else here & taken[(u, w)]
            if by_pattern:  # the entries of u that a kept entry of w reads
                here = _readers(edges[(u, w)])(here)
            if here is None:  # an output's use of itself: every entry
                here = jnp.ones(math.prod(np.shape(env[u])), bool)
            alive = here if alive is None else alive | here
        kept[u] = alive
    discarded = {u: ~alive for u, alive in kept.items()}
    for p, u in plan.zeroed:
        partial = edges[(p, u)]
        labelled = isinstance(partial.value, Labelled)
        value = partial.value.values if labelled else partial.value
        drop = _cover(partial).dropped(discarded[u]).reshape(np.shape(value))
        value = jnp.where(drop, jnp.zeros((), value.dtype), value)
        edges[(p, u)] = partial._replace(value=partial.value._replace(values=value) if labelled else value)


def _rule_takes(eqn: Equation, env: dict, leaves: list, position: int) -> jax.Array:
    """Where the JVP rule of `eqn` (a ``custom_jvp_call``) passes operand `position`'s tangent to its
    output: where the output's tangent is not finite for a NaN tangent of that operand (and zero
    tangents of the others). ``jax.nn.relu``'s rule, ``where(x > 0, t, 0)``, drops it at x <= 0, as
    jax.jacfwd then drops an infinite partial before it; a rule that multiplies (``t * mask``)
    passes it everywhere. One more evaluation of the rule (elementwise: no multiplication the cost
    model counts)."""
    values = [_operand_value(op, env, leaves) for op in eqn.operands]
    tangents = [jnp.full(np.shape(v), jnp.nan, _dtype_of(v)) if i == position
                else jnp.zeros(np.shape(v), _dtype_of(v)) if _is_float(v)
                else np.zeros(np.shape(v), jax.dtypes.float0) for i, v in enumerate(values)]
    _, out = jax.jvp(lambda *a: _bind_all(eqn, list(a))[0], values, tangents)
    return ~jnp.isfinite(out)


def _labelled_cover(value: Labelled, size: int) -> RowCover | None:
    """`_cover` of a labelled partial: an output axis is a value axis, or tied as a diagonal to an
    input value axis (its coordinate is that axis's), or the value is constant along it."""
    ties = value.ties
    if value.values is None or math.prod(value.out_dims) != size:
        return None
    axes = list(ties.value_axes)
    extent = [(value.out_dims if side == "out" else value.in_dims)[k] for side, k in axes]
    if tuple(np.shape(value.values)) != tuple(extent):
        return None
    grid = np.indices(extent).reshape(len(extent), -1) if extent else np.zeros((0, 1), np.int64)
    coordinate = {axis: grid[n] for n, axis in enumerate(axes)}
    diagonal = {o: i for o, i, kind in ties.ties if kind == "D"}
    return RowCover(tuple(value.out_dims), tuple(
        coordinate.get(("out", o), coordinate.get(("in", diagonal.get(o, -1)))) for o in range(len(value.out_dims))),
        grid.shape[1])


def _cover(partial: Partial) -> RowCover | None:
    """Which rows each entry of a partial's value array (flattened) stands for (`_discard.RowCover`),
    or None where the interpreter cannot zero the partial by rows: elementwise partials (rank-n
    too), labelled ones, and 2-D codes whose value array is laid out in full."""
    if _is_elementwise(partial):
        size = math.prod(partial.out_shape)
        return RowCover((size,), (np.arange(size),), size)
    if isinstance(partial.value, Labelled):
        return _labelled_cover(partial.value, math.prod(partial.out_shape))
    if not hasattr(partial.value, "shape"):
        return None
    cover = value_cover(partial.code, partial.out_shape, partial.in_shape)
    return cover if cover is not None and math.prod(np.shape(partial.value)) == cover.count else None


def _replay(graph: Graph, steps: Sequence[Step], edges: dict[tuple[int, int], Partial],
            counter: MultiplicationCounter, dtype) -> list[Product]:
    """Performs the engine's `steps` on the partials in `edges` (in place); returns what it did.

    Each product is checked against its plan entry at trace time: the codes of the two partials,
    whether it adds into an edge, the codes of the product and the sum, and the multiplications
    the structured product counted. The engine and the structured products implement one cost
    model, so a mismatch is a bug, reported as an AlphagradError naming the vertex.
    """
    performed = []
    labelled = cost_model_of(graph) if graph.structures else None
    sharing = SharedReads()
    for step in steps:
        sharing.read(edges, step.products)
        for planned in step.products:
            p, v, c = planned.pred, planned.vertex, planned.succ
            out, inp = edges[(v, c)], edges[(p, v)]
            before = counter.total
            product = multiply(out, inp, planned.code, counter, dtype)
            if labelled is not None and product.code >= FIRST_EXTENDED_CODE and (
                    labelled.structures[product.code - FIRST_EXTENDED_CODE] != product.value.ties):
                raise AlphagradError(
                    f"internal error while eliminating {graph.describe_vertex(step.vertex)}: the product's structure "
                    f"{product.value.ties} is not that of code {product.code} in the engine's model; please report this")
            old = edges.get((p, c))
            edges[(p, c)] = product if old is None else add(old, product, planned.sum_code, dtype)
            sharing.made(planned, old is not None)
            done = Product(p, v, c, inp.code, out.code, product.code, 0 if old is None else old.code,
                           0 if old is None else edges[(p, c)].code, counter.total - before)
            if done != planned:
                raise AlphagradError(
                    f"internal error while eliminating {graph.describe_vertex(step.vertex)}: the interpreter "
                    f"performed {done} where the elimination engine planned {planned}; please report this"
                )
            performed.append(done)
        node = graph.node_id(step.vertex)
        for p in step.preds:
            del edges[(p, node)]
        for c in step.succs:
            del edges[(node, c)]
    return performed


@functools.lru_cache(maxsize=None)
def _block_dtype(in_dtype, out_dtype):
    """The dtype of the Jacobian block of a flattened input of `in_dtype` and an output of
    `out_dtype`: float0 for a non-floating input (as ``jax.grad(..., allow_int=True)``), else the
    wider of the two floating dtypes (jax.jacrev's blocks take the input's dtype, jax.jacfwd's the
    output's: the wider keeps every digit, so float32 flax parameters of a float64 model give
    float64 blocks); an integer output's block (its zeros) takes the output's dtype, as jax.jacfwd's
    (jax.jacrev refuses such outputs; a float block there differed from jax.jacfwd's in dtype only).
    Cached: a Jacobian of 40,200 blocks spent 1.5 s here."""
    if jax.dtypes.issubdtype(in_dtype, jax.dtypes.extended):  # a typed PRNG key: float0, as its tangent
        return jax.dtypes.float0
    dtype = jnp.result_type(in_dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        return jax.dtypes.float0
    out_dtype = jnp.result_type(out_dtype)
    if jnp.issubdtype(out_dtype, jnp.integer):
        return out_dtype
    return jnp.promote_types(dtype, out_dtype) if jnp.issubdtype(out_dtype, jnp.floating) else dtype


def _layout(graph: Graph) -> tuple[list[tuple], list[tuple], list[list[Any]]]:
    """The Jacobian's grid of blocks, from the graph alone: the shape of every flattened output,
    the shape of every differentiated input leaf (in argnums order), and per output and input the
    block's dtype (`_block_dtype`; the dtypes f's outputs have, not the computed values': the tape
    computes a program that mixes float32 and float64 in float64)."""
    program: Program = graph.program
    out_shapes, out_dtypes = zip(*_output_avals(graph)) if program.outputs else ((), ())
    in_avals = [program.leaf_avals[leaf] for leaf in program.input_leaves]
    in_shapes = [tuple(aval.shape) for aval in in_avals]
    dtypes = [[_block_dtype(aval.dtype, out_dtype) for aval in in_avals] for out_dtype in out_dtypes]
    return list(out_shapes), in_shapes, dtypes


def _blocks(graph: Graph, edges, grouped_min: int | None = None) -> list[list[Any]]:
    """Per flattened output, per differentiated input leaf: the dense block [*out_shape, *in_shape]
    in its dtype (`_layout`), read off the edges left after the eliminations; the zero blocks of a
    shape and dtype one array. With at least `grouped_min` blocks read off edges, those are written
    a group at a time (`_written_in_groups`)."""
    program: Program = graph.program
    out_shapes, in_shapes, dtypes = _layout(graph)
    blocks, computed, zeros = [], [], {}
    for o, (op, out_shape, row) in enumerate(zip(program.outputs, out_shapes, dtypes)):
        per_input = []
        for node, (in_shape, dtype) in enumerate(zip(in_shapes, row), start=1):
            shape = out_shape + in_shape
            if dtype == jax.dtypes.float0:
                per_input.append(np.zeros(shape, dtype))
                continue
            partial = edges.get((node, op.node)) if op.node is not None else None
            if partial is None:
                key = (shape, np.dtype(dtype))
                if key not in zeros:
                    zeros[key] = jnp.zeros(shape, dtype)
                per_input.append(zeros[key])
            else:
                per_input.append(densify(partial, dtype).reshape(shape).astype(dtype))
                computed.append((o, node - 1))
        blocks.append(per_input)
    if grouped_min is not None and len(computed) >= grouped_min:
        for (o, i), block in zip(computed, _written_in_groups([blocks[o][i] for o, i in computed])):
            blocks[o][i] = block
    return blocks


def _assemble(graph: Graph, edges, argnums, args: tuple):
    """Dense Jacobian blocks in jax.jacrev's output structure (under a trace: the caller's jax.jit
    or jax.vmap, or `jacobian`'s own jax.jit of few blocks), many written in groups."""
    return _grouped(graph, _blocks(graph, edges, GROUPED_MIN_BLOCKS), argnums, args)


#: `_assemble` writes the blocks read off edges in groups of `GROUP_BLOCKS` (`_written_in_groups`)
#: when there are at least this many. Each block an output of the caller's computation by itself,
#: XLA:CPU compiled a kernel for each, about 10 ms of its fusion emitters: jax.jit of the Jacobian
#: of a random scalar program of 50 scalar arguments and 50 outputs (2,500 blocks, 741 nonzero, at
#: 1,000 equations) compiled in 8.6 s of CPU and 0.9 GB, in groups of 32 in 1.9 s and 0.44 GB (the
#: dense output: 0.8 s); at 10,000 equations (1,877 nonzero) in 25 s and 1.9 GB, in groups in 4-6 s
#: and 0.55 GB (dense 0.7 s). Groups of 16 to 64 compiled alike; one group of all 741 as slowly as
#: the slices.
GROUPED_MIN_BLOCKS = 64
GROUP_BLOCKS = 32


@jax.custom_jvp
def _copied(blocks: tuple) -> tuple:
    """The arrays `blocks` (one shape and dtype), unchanged, as the outputs of one XLA operation:
    a variadic max-reduction of each over a leading axis of two copies of it (max(x, x) is x,
    NaN and -0.0 too; -inf the initial value). XLA:CPU fuses it, the reads of the blocks' values
    included, into one kernel with an output per block (slices, or a split, are a kernel each)."""
    low = np.array(-np.inf, blocks[0].dtype)
    return tuple(jax.lax.reduce([jax.lax.broadcast(block, (2,)) for block in blocks], [low] * len(blocks),
                                _max_each, (0,)))


def _max_each(a: list, b: list) -> list:  # `_copied`'s reduction (one function: JAX caches its trace)
    return [jax.lax.max(x, y) for x, y in zip(a, b)]


@_copied.defjvp
def _copied_jvp(primals, tangents):  # the identity: the Jacobian stays differentiable
    return _copied(*primals), tangents[0]


def _written_in_groups(arrays: list) -> list:
    """`arrays`, each unchanged: grouped by size and dtype, `GROUP_BLOCKS` at a time through one
    `_copied` (in the shape of the group's first; an array alone of its size and dtype stays as
    it is)."""
    kinds: dict[tuple, list[int]] = {}
    for k, array in enumerate(arrays):
        kinds.setdefault((array.size, np.dtype(array.dtype)), []).append(k)
    out = list(arrays)
    for ks in kinds.values():
        shape = arrays[ks[0]].shape
        for g in range(0, len(ks) if len(ks) > 1 else 0, GROUP_BLOCKS):
            group = ks[g:g + GROUP_BLOCKS]
            written = _copied(tuple(arrays[k] if arrays[k].shape == shape else arrays[k].reshape(shape)
                                    for k in group))
            for k, array in zip(group, written):
                out[k] = array if array.shape == arrays[k].shape else array.reshape(arrays[k].shape)
    return out


def _grouped(graph: Graph, blocks: list[list[Any]], argnums, args: tuple):
    """The grid of blocks (per flattened output, per differentiated input leaf) in jax.jacrev's
    output structure."""
    single = isinstance(argnums, int)
    selected = (argnums,) if single else tuple(argnums)
    arg_trees = [jax.tree.structure(args[k]) for k in selected]
    blocks_per_output = []
    for per_input in blocks:
        # Regroup the flat input blocks by argument.
        grouped, start = [], 0
        for tree in arg_trees:
            count = tree.num_leaves
            grouped.append(tree.unflatten(per_input[start : start + count]))
            start += count
        blocks_per_output.append(grouped[0] if single else tuple(grouped))
    return graph.program.out_tree.unflatten(blocks_per_output)


#: An eagerly called ``output="pytree"`` Jacobian of at least this many blocks (outputs times
#: differentiated input leaves) makes its zero blocks outside the compiled function
#: (`_SplitPytree`), and one of at least `SPLIT_MIN_NONZERO` nonzero blocks returns those as one
#: array, split into the blocks after the call. XLA compiles an operation and an output buffer
#: per output of a computation, and assigns the output buffers in time quadratic in their number:
#: the 40,200 blocks of benchmarks/scale.py's ``many-io`` form at 1,000 equations (37,523 of
#: them zero) took minutes and over 13 GB to compile as outputs.
SPLIT_MIN_BLOCKS = 256
#: Splitting costs a dispatch per nonzero block and call (about 40 us on a CPU): 1.5 ms against
#: 10 ms a call for 256 blocks of 64 x 64, where XLA compiled the blocks as outputs in 0.6 s. On
#: the tape (`SPLIT_MIN_NONZERO_TAPE`) each block as an output is a slice of the edge buffer, about
#: 20 ms of compilation each (the 2,677 of many-io at 1,000 equations: 65 s and 2.9 GB against 8 s
#: and 0.7 GB split).
SPLIT_MIN_NONZERO = 1024
SPLIT_MIN_NONZERO_TAPE = 128


@functools.partial(jax.jit, static_argnums=(2, 3))
def _block_of(flat: jax.Array, start, shape: tuple, dtype) -> jax.Array:
    """The block of `shape` and `dtype` raveled in `flat` from `start` (a traced offset: one
    compilation per block shape and dtype, not per block)."""
    return jax.lax.dynamic_slice_in_dim(flat, start, math.prod(shape)).reshape(shape).astype(dtype)


class _SplitPytree:
    """`jacobian`'s eager ``output="pytree"`` call of a Jacobian of many blocks
    (`SPLIT_MIN_BLOCKS`), per input signature. One compiled function computes the nonzero blocks
    (those read off an edge): as its outputs, or, when there are many (`SPLIT_MIN_NONZERO`,
    `SPLIT_MIN_NONZERO_TAPE`), as one array, the blocks raveled one after another (on the tape one
    gather out of its edge buffer: `_tape.run_blocks`), cut into the blocks after the call by a
    dynamic slice each (compiled once per block shape). The zero blocks are arrays made once per
    shape and dtype and shared by every block and call that has them (JAX arrays are immutable;
    where one was deleted, by donation, they are made again). The values are `_assemble`'s:
    each block is computed in the same dtype and cast to its block's, the one array holding the
    widest (exactly). Under a trace (the caller's jax.jit or jax.vmap) the blocks are outputs of
    the caller's computation and `_assemble` builds them there (many in groups: `_written_in_groups`)."""

    def __init__(self, graph: Graph, steps: Sequence[Step], tape: _tape.Tape | None, treedef, argnums,
                 on_counted: Callable):
        self.graph, self.steps, self.tape, self.treedef = graph, steps, tape, treedef
        self.argnums, self.on_counted = argnums, on_counted
        out_shapes, in_shapes, dtypes = _layout(graph)
        # Per output, per input leaf: (shape, dtype) of the block.
        self.template = [[(out_shape + in_shape, dtype) for in_shape, dtype in zip(in_shapes, row)]
                         for out_shape, row in zip(out_shapes, dtypes)]
        self.nonzero: list[tuple[int, int]] | None = None  # (output, input leaf) of the computed blocks, set by tracing
        self.float0 = [(o, i) for o, row in enumerate(self.template) for i, (_, dtype) in enumerate(row)
                       if dtype == jax.dtypes.float0]
        self.zeros: dict[tuple, jax.Array] = {}  # (shape, dtype) -> the shared zero block
        self.zero_grid: list[list[Any]] | None = None
        self.compute = jax.jit(self._compute)

    def _nonzero(self, has_edge: Callable[[tuple[int, int]], bool]) -> list[tuple[int, int]]:
        """(output, input leaf) of the blocks read off an edge: floating, not empty, in row-major order."""
        return [(o, i) for o, (op, row) in enumerate(zip(self.graph.program.outputs, self.template))
                for i, (shape, dtype) in enumerate(row)
                if dtype != jax.dtypes.float0 and op.node is not None and math.prod(shape) > 0
                and has_edge((i + 1, op.node))]

    def _compute(self, leaves: list[Any]) -> jax.Array | list[jax.Array]:
        outputs = self.graph.program.outputs
        if self.tape is not None:
            nonzero = self._nonzero(lambda key: key in self.tape.jacobian_edges)
            self.nonzero = nonzero
            keys = [(i + 1, outputs[o].node) for o, i in nonzero]
            if len(nonzero) >= SPLIT_MIN_NONZERO_TAPE:
                return _tape.run_blocks(self.tape, leaves, keys)
            edges = _tape.run(self.tape, leaves)[1]
        else:
            counter = MultiplicationCounter()
            edges = _eliminate_all(self.graph, self.steps, leaves, counter)[1]
            self.on_counted(jax.tree.unflatten(self.treedef, leaves), counter.total)
            nonzero = self._nonzero(lambda key: key in edges)
            self.nonzero = nonzero
        blocks = []
        for o, i in nonzero:  # as `_blocks`
            shape, dtype = self.template[o][i]
            blocks.append(densify(edges[(i + 1, outputs[o].node)], dtype).reshape(shape).astype(dtype))
        if len(nonzero) < SPLIT_MIN_NONZERO:
            return _written_in_groups(blocks) if len(blocks) >= GROUPED_MIN_BLOCKS else blocks
        dtype = _dense_dtype([[d for _, d in row] for row in self.template])
        return jnp.concatenate([block.reshape(-1).astype(dtype) for block in blocks])

    def _zeros(self, shape: tuple, dtype) -> jax.Array:
        key = (shape, np.dtype(dtype))
        zeros = self.zeros.get(key)
        if zeros is None or zeros.is_deleted():  # a transfer: jnp.zeros compiles per shape
            zeros = self.zeros[key] = jax.device_put(np.zeros(shape, dtype))
        return zeros

    def _zero_grid(self) -> list[list[Any]]:
        """The grid of the zero blocks (the shared arrays; None at the computed and the float0
        blocks), made again where one of its arrays was deleted."""
        if self.zero_grid is None or any(zeros.is_deleted() for zeros in self.zeros.values()):
            computed = set(self.nonzero)
            self.zero_grid = [[None if dtype == jax.dtypes.float0 or (o, i) in computed else self._zeros(shape, dtype)
                               for i, (shape, dtype) in enumerate(row)] for o, row in enumerate(self.template)]
        return self.zero_grid

    def __call__(self, leaves: list[Any]) -> Any:
        computed = self.compute(leaves)
        grid = [row.copy() for row in self._zero_grid()]
        for o, i in self.float0:  # NumPy arrays, which can be written: made per call
            grid[o][i] = np.zeros(self.template[o][i][0], jax.dtypes.float0)
        if isinstance(computed, list):
            for (o, i), block in zip(self.nonzero, computed):
                grid[o][i] = block
        else:
            start = 0
            for o, i in self.nonzero:
                shape, dtype = self.template[o][i]
                grid[o][i] = _block_of(computed, start, shape, dtype)
                start += math.prod(shape)
        return _grouped(self.graph, grid, self.argnums, jax.tree.unflatten(self.treedef, leaves))


def _dense_dtype(dtypes: list[list[Any]]):
    """The dense Jacobian's dtype: the widest of its blocks' (float0 where every block is)."""
    floating = [d for row in dtypes for d in row if d != jax.dtypes.float0]
    return functools.reduce(jnp.promote_types, floating) if floating else jax.dtypes.float0


def _assemble_dense(graph: Graph, edges) -> Any:
    """The Jacobian as one dense [total output entries, total input entries] array (`jacobian`'s
    ``output="dense"``) from the blocks: small programs (the straight-line path), so one
    concatenation per output row and one of the rows."""
    out_shapes, in_shapes, dtypes = _layout(graph)
    dtype = _dense_dtype(dtypes)
    rows, cols = sum(map(math.prod, out_shapes)), sum(map(math.prod, in_shapes))
    if dtype == jax.dtypes.float0 or rows == 0 or cols == 0:
        return (np.zeros if dtype == jax.dtypes.float0 else jnp.zeros)((rows, cols), dtype)
    grid = []
    for out_shape, per_input in zip(out_shapes, _blocks(graph, edges)):
        n = math.prod(out_shape)
        # float0 blocks (integer inputs) are zero columns of the dense array.
        grid.append(jnp.concatenate([
            jnp.zeros((n, math.prod(in_shape)), dtype) if block.dtype == jax.dtypes.float0
            else block.reshape(n, math.prod(in_shape)).astype(dtype)
            for in_shape, block in zip(in_shapes, per_input)], axis=1))
    return jnp.concatenate(grid, axis=0)


def _tape_dense(graph: Graph, tape: _tape.Tape, leaves: list[Any]) -> Any:
    """`_assemble_dense` on the tape path: one gather from the tape's edge buffer
    (`_tape.run_dense`). Reading every block out as its own slice made XLA compile a slice
    operation and an output per block (82 s for the 2,677 blocks of benchmarks/scale.py's
    ``many-io`` form at 1,008 equations, against 5.7 s for one gather)."""
    out_shapes, in_shapes, dtypes = _layout(graph)
    dtype = _dense_dtype(dtypes)
    if dtype == jax.dtypes.float0:
        return np.zeros((sum(map(math.prod, out_shapes)), sum(map(math.prod, in_shapes))), dtype)
    out_nodes = [op.node for op in graph.program.outputs]
    # Integer inputs have no edges: their columns stay zero (the buffer's zero slot).
    in_nodes = [node if any(row[node - 1] != jax.dtypes.float0 for row in dtypes) else None
                for node in range(1, len(in_shapes) + 1)]
    return _tape.run_dense(tape, leaves, out_nodes, [math.prod(s) for s in out_shapes], in_nodes,
                           [math.prod(s) for s in in_shapes]).astype(dtype)


def _tape_of(graph: Graph, steps: Sequence[Step]) -> _tape.Tape | None:
    """The tape of a program in the tape's class (module _tape) whose straight-line form would be
    large (`_tape.straight_line_size` at least `_tape.TAPE_MIN_SIZE`: XLA's compile time grows
    faster than linearly with it) and long (`_tape.TAPE_MIN_EQUATIONS`), else None: the
    straight-line path (one XLA operation per equation, partial and product) runs. Both perform
    the plan's products exactly."""
    if (graph.program is None or len(graph.program.equations) < _tape.TAPE_MIN_EQUATIONS
            or _tape.straight_line_size(graph, steps) < _tape.TAPE_MIN_SIZE):
        return None
    try:
        return _tape.build(graph, steps)
    except _tape.Unsupported:
        return None


# ---- public API -----------------------------------------------------------------------------

#: The values of `jacobian`'s ``output``: jax.jacrev's pytree of blocks, or one dense array.
OUTPUTS = ("pytree", "dense")


def _output_avals(graph: Graph) -> list[tuple[tuple, Any]]:
    """The (shape, dtype) of each flattened output of the graph's function."""
    program = graph.program
    aval_of = {out.node if out.node is not None else out.value: aval
               for eqn in program.equations for out, aval in zip(eqn.outputs, eqn.avals)}
    avals = []
    for op in program.outputs:
        if op.node is None and isinstance(op.value, ValueRef):
            aval = aval_of[op.value]
        elif op.node is None:
            value = program.leaf_avals[op.value.index] if isinstance(op.value, LeafRef) else op.value
            aval = jax.ShapeDtypeStruct(np.shape(value), jnp.result_type(value.dtype if hasattr(value, "dtype") else value))
        elif op.node <= graph.num_inputs:
            aval = program.leaf_avals[program.input_leaves[op.node - 1]]
        else:
            aval = aval_of[op.node]
        avals.append((tuple(aval.shape), aval.dtype))
    return avals


def _output_dtypes(graph: Graph) -> list[Any]:
    """The dtype of each flattened output of the graph's function."""
    return [dtype for _, dtype in _output_avals(graph)]


def _check_real_outputs(graph: Graph) -> None:
    """Like ``jax.jacrev``, refuses complex outputs (whose Jacobian needs a convention)."""
    dtypes = _output_dtypes(graph)
    complex_ = [i for i, dtype in enumerate(dtypes) if jnp.issubdtype(dtype, jnp.complexfloating)]
    if complex_:
        paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(
            graph.program.out_tree.unflatten(range(len(dtypes))))[0]]
        where = "the output" if not paths[complex_[0]] else f"output {jax.tree_util.keystr(paths[complex_[0]])}"
        raise TraceError(
            f"{where} of {graph.name!r} has dtype {dtypes[complex_[0]]}: jacobian needs real-valued outputs, as "
            "jax.jacrev does without holomorphic=True. Compute the output's real and imaginary parts as "
            "separate real arrays, or use jax.jacrev(f, holomorphic=True) or jax.vjp."
        )


def _aux_pair(result: Any, f: Callable) -> Any:
    """`result` if it is a pair ``(output, aux)`` (a tuple or list, as ``jax.jacrev`` accepts)."""
    if isinstance(result, (tuple, list)) and len(result) == 2:
        return result
    if isinstance(result, (tuple, list)):
        got = f"a {type(result).__name__} of length {len(result)}"
    elif isinstance(result, dict):
        got = f"a dict with keys {list(result)}"
    elif hasattr(result, "shape") and hasattr(result, "dtype"):
        got = f"an array of shape {tuple(np.shape(result))} and dtype {jnp.result_type(result)}"
    else:
        got = f"a {type(result).__name__}"
    name = getattr(f, "__name__", type(f).__name__)
    raise AuxOutputError(
        f"has_aux=True needs f ({name!r}) to return a pair (output, aux); it returned {got}. Return "
        "(output, aux), e.g. ((y1, y2), aux) for several outputs, or drop has_aux."
    )


def _resolve(graph: Graph, order, f: Callable, args: tuple, argnums) -> list[int]:
    """Validates `order` for the interpreter's graph of f.

    An order file made under another cost model (e.g. on ``graph.trace(f, ...)`` with the default
    AlphaGrad model) is checked against f's graph in that model; vertex numbers are the same in
    every model, so the checked order then applies here.
    """
    if isinstance(order, orders_lib.OrderFile) and order.cost_model and order.cost_model != graph.cost_model:
        if order.cost_model not in cost_models():
            raise AlphagradError(f"the order file names an unknown cost model {order.cost_model!r}")
        original = jacobian_graph(f, *args, argnums=argnums, cost_model=order.cost_model)
        order.check_graph(original)
        return resolve_order(graph, list(order.order))
    return resolve_order(graph, order)


def jacobian(
    f: Callable,
    order: Any = "reverse",
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
    output: str = "pytree",
) -> Callable:
    """Jacobian of `f` by cross-country elimination in `order`, used like ``jax.jacrev(f, argnums, has_aux)``.

    Args:
      f: a function of pytrees of arrays (or Python scalars) returning a pytree of arrays (or
        ``(output, aux)`` with ``has_aux``). Arrays may have any rank: in programs of at most
        ``graph.LABELLED_MAX_EQUATIONS`` (199) equations with an array of 3 or more dimensions,
        every array's axes are labelled structural axes (partials described by ties between axes,
        docs/cost-model.md); in longer ones such an array keeps its leading axis and flattens the
        rest. Any primitive may occur (loops, branches, sorts,
        gathers, linear algebra, ...): gathers, scatters, sorts, cumulative sums and pooling are
        index maps, one without a structural rule is differentiated by JAX as one dense partial
        (docs/cost-model.md).
      order: "forward", "reverse", "markowitz", "auto", a list of vertex numbers of
        ``graph_of(f, *args, argnums=argnums)``, a callable ``Graph -> order`` (called once per
        input signature), or an `OrderFile` made for that graph. "auto" (registered by
        `alphagrad.agents`) searches once per graph (`alphagrad.agents.AUTO_SECONDS`, or
        $ALPHAGRAD_AUTO_SECONDS) and caches the order file on disk under
        `alphagrad.agents.cache_dir()`, keyed by the graph's fingerprint.
      argnums: which positional argument(s) to differentiate.
      has_aux: whether `f` returns ``(output, aux)``; aux is returned unchanged.
      output: "pytree" (jax.jacrev's structure of blocks) or "dense": the whole Jacobian as one
        array [total output entries, total differentiated input entries], rows in the order of
        ``jax.tree_util`` leaves of f's output, columns in that of the differentiated arguments'
        leaves (argnums' order), each leaf row-major: the order of ``jax.flatten_util.ravel_pytree``
        (``J @ ravel_pytree(dx)[0]`` is ``ravel_pytree(jvp)[0]``). Its dtype is the widest of the
        blocks' (below); integer and boolean inputs give zero columns (a float0 array if every
        input is one); under ``jax.vmap`` it gains the leading batch axis. Programs whose
        Jacobian has thousands of blocks compile fastest this way under ``jax.jit``, where
        every block of the pytree is an output of the caller's computation with a buffer of its
        own (the nonzero blocks written a group at a time, one XLA operation per group, the zero
        ones copied from one constant: 2,500 scalar blocks compile in about twice the dense
        output's time; jax.jacrev's took minutes); a long program on the tape reads the whole
        array out of the tape's edge buffer with one gather. `unravel_jacobian` splits it into the
        pytree outside ``jax.jit``. Called outside ``jax.jit``, the pytree output of many blocks compiles in
        seconds too: its zero blocks are made outside the compiled function and many nonzero
        blocks come out of it as one array, split after the call.

    Returns:
      A function with f's signature (keyword arguments are passed on, never differentiated)
      returning, with ``output="pytree"``, like ``jax.jacrev``, for each output leaf the
      Jacobian blocks [*out_shape, *in_shape] in the argument's pytree structure (a tuple over
      argnums when `argnums` is a tuple), or with ``output="dense"`` the one array above, plus
      aux with ``has_aux``. A block's dtype is the wider
      of its input's and output's: jax.jacrev's input dtype, except that float32 inputs of a float64
      output (flax parameters in a float64 model) get float64 blocks with every digit, as jax.jacfwd, and an
      integer output's blocks (zeros) the output's dtype, as jax.jacfwd's. It works under ``jax.jit`` and
      ``jax.vmap``. The graph is traced once per input signature. Zero-size arrays are fine (their
      blocks are empty or zero, as jax.jacrev's); integer and boolean arguments get float0 blocks
      (as ``jax.grad(..., allow_int=True)`` gives). A long straight-line program (at least
      ``interpreter._tape.TAPE_MIN_SIZE`` straight-line operations, values of at most ``_tape.MAX_COMPONENTS`` entries) runs as a compact
      tape: two XLA loops whose compiled size does not grow with the program, performing the same
      products (module ``interpreter._tape``); other programs run one XLA operation per
      equation and product. On the tape an integer argument whose dtype its float buffer does
      not hold exactly (int32 in a float32 program, int64 in a float64 one) must stay within
      2^(mantissa bits - 4) in magnitude (524,288 in float32): beyond that the outputs and the
      Jacobian are NaN rather than computed at a rounded index.

    Raises (when the returned function is called):
      TraceError: f cannot be traced into a graph; in particular a differentiated argument leaf,
        an output, or a value computed from a differentiated argument is complex: alphagrad's
        partials are real, so it refuses rather than lose that derivative (the message names the
        leaf, output or equation and says what to do).
      AuxOutputError: with ``has_aux``, f did not return a pair ``(output, aux)`` (a TypeError too,
        as jax.jacrev raises).
      AlphagradError (when `jacobian` is called): `argnums` is not an int or a tuple of ints, or
        `output` is not one of `OUTPUTS`.
    """
    if isinstance(argnums, bool) or not isinstance(argnums, (int, tuple, list)):
        raise AlphagradError(f"argnums must be an int or a tuple of ints, got {argnums!r}")
    if not isinstance(output, str) or output not in OUTPUTS:
        raise AlphagradError(
            f"output must be one of {', '.join(map(repr, OUTPUTS))} (the Jacobian as jax.jacrev's pytree of "
            f"blocks, or as one dense [output entries, input entries] array), got {output!r}")
    if isinstance(argnums, list):
        argnums = tuple(argnums)
    # With has_aux, every call checks f's result before tracing, so `target` sees a pair; it
    # keeps f's name for messages.
    target = functools.wraps(f)(lambda *a: f(*a)[0]) if has_aux else f

    # Per input signature: the graph, the engine's plan of the order and, for a long program in
    # its class, the tape (traced, resolved, planned and taped once; every later trace or eager
    # call only replays them).
    cache: dict[Any, tuple[Graph, tuple[Step, ...], _tape.Tape | None]] = {}

    def prepare(args):
        key = _signature(args)
        if key not in cache:
            g = graph_of(target, *args, argnums=argnums)
            _check_real_outputs(g)
            steps = plan(g, _resolve(g, order, target, args, argnums))
            cache[key] = (g, steps, _tape_of(g, steps))
        return cache[key]

    # Keyword arguments are never differentiated (as in jax.jacrev): they travel as one more
    # positional argument, a dict, of a function that passes them on by name.
    with_keywords: dict[tuple, Callable] = {}

    # Python values (`_python_leaves`): each set of them gets its own jacobian of f with them bound
    # (its own graphs and compilations); unhashable ones are bound afresh on every call.
    with_static: dict[Any, Callable] = {}
    decided: dict[Any, tuple[int, ...]] = {}

    def jacobian_fn(*args, **kwargs):
        numbers = _argnum_positions(argnums, len(args))
        if kwargs:
            key = numbers[0] if isinstance(argnums, int) else numbers
            if key not in with_keywords:
                by_name = functools.wraps(f)(lambda *a: f(*a[:-1], **a[-1]))
                with_keywords[key] = jacobian(by_name, order, key, has_aux, output)
            return with_keywords[key](*args, kwargs)
        python = _python_leaves(target, args, argnums, decided)
        if python:
            bound = bind_python_leaves(f, args, python)
            if bound.key is None or bound.key not in with_static:
                bound_fn = jacobian(bound.fn, order, argnums, has_aux, output)
                if bound.key is None:
                    return bound_fn(*bound.args)
                with_static[bound.key] = bound_fn
            return with_static[bound.key](*bound.args)
        aux = _aux_pair(f(*args), f)[1] if has_aux else None
        leaves = jax.tree.leaves(args)
        if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
            jac = evaluate(args)
        else:
            # Called eagerly: the elimination compiled once per input signature (op by op, a
            # small network's Jacobian took 20 s of dispatch; jit(jacobian(f)) runs the same).
            graph, steps, tape = prepare(args)
            key = _signature(args)
            if key not in compiled:
                treedef = jax.tree.structure(args)
                if output == "pytree" and len(graph.program.outputs) * len(graph.program.input_leaves) >= SPLIT_MIN_BLOCKS:
                    # Many blocks: one compiled output, split after the call (`_SplitPytree`).
                    compiled[key] = _SplitPytree(graph, steps, tape, treedef, argnums,
                                                 lambda a, total: _record_performed(target, a, argnums, steps, total))
                else:
                    compiled[key] = jax.jit(lambda leaves: evaluate(jax.tree.unflatten(treedef, leaves)))
            try:
                jac = compiled[key](leaves) if compiled[key] is not None else evaluate(args)
            except NotImplementedError:  # a primitive with an implementation but no lowering
                compiled[key] = None
                jac = evaluate(args)
        return (jac, aux) if has_aux else jac

    compiled: dict[Any, Callable | None] = {}  # None: run eagerly (the program has no lowering)

    def evaluate(args):
        graph, steps, tape = prepare(args)
        leaves = jax.tree.leaves(args)
        if tape is not None and output == "dense":
            return _tape_dense(graph, tape, leaves)
        if tape is not None:
            edges = _tape.run(tape, leaves)[1]
        else:
            counter = MultiplicationCounter()
            edges = _eliminate_all(graph, steps, leaves, counter)[1]
            _record_performed(target, args, argnums, steps, counter.total)
        return _assemble_dense(graph, edges) if output == "dense" else _assemble(graph, edges, argnums, args)

    return jacobian_fn


def unravel_jacobian(dense: Any, f: Callable, *args: Any, argnums: int | Sequence[int] = 0,
                     has_aux: bool = False) -> Any:
    """Splits a dense Jacobian (``jacobian(f, ..., output="dense")``'s) into the pytree that
    ``jacobian(f, ..., argnums=argnums)`` (and ``jax.jacrev``) returns, outside ``jax.jit``.

    Args:
      dense: [*batch, total output entries, total differentiated input entries] (any leading
        batch axes, e.g. ``jax.vmap``'s), a concrete array.
      f, args, argnums, has_aux: as given to `jacobian` (only the shapes and dtypes of `args`
        matter: f is traced abstractly, by ``jax.eval_shape``).

    Returns:
      Per leaf of f's output, the blocks [*batch, *out_shape, *in_shape] in the differentiated
      arguments' pytree structure (a tuple over argnums when `argnums` is a tuple), each in its
      block's dtype (the wider of its input's and output's; float0 zeros for integer and boolean
      inputs). The blocks are NumPy views of one host copy of `dense`: splitting does no device
      work (one JAX operation per block would take seconds for tens of thousands of blocks).

    Raises:
      AlphagradError: `dense` is a tracer (split inside ``jax.jit``: use ``output="pytree"``
        there) or its last two axes are not [total output entries, total input entries].
    """
    if isinstance(dense, jax.core.Tracer):
        raise AlphagradError(
            "unravel_jacobian splits a concrete dense Jacobian outside jax.jit (into NumPy views); inside a "
            "traced function use jacobian(f, ..., output=\"pytree\"), which gives the blocks directly")
    if isinstance(argnums, list):
        argnums = tuple(argnums)
    selected = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    out = jax.eval_shape(lambda *a: _aux_pair(f(*a), f)[0] if has_aux else f(*a), *args)
    out_leaves, out_tree = jax.tree.flatten(out)
    arg_leaves = [jax.tree.leaves(args[k]) for k in _argnum_positions(selected, len(args))]
    in_leaves = [jax.ShapeDtypeStruct(np.shape(x), _dtype_of(x)) for leaves in arg_leaves for x in leaves]
    rows = sum(math.prod(leaf.shape) for leaf in out_leaves)
    cols = sum(math.prod(leaf.shape) for leaf in in_leaves)
    matrix = np.asarray(dense)
    if matrix.ndim < 2 or matrix.shape[-2:] != (rows, cols):
        raise AlphagradError(
            f"unravel_jacobian expected a dense Jacobian of shape [..., {rows}, {cols}] (output entries, input "
            f"entries) for these arguments and argnums={argnums!r}, got shape {matrix.shape}")
    batch = matrix.shape[:-2]
    row_starts = np.cumsum([0] + [math.prod(leaf.shape) for leaf in out_leaves])
    col_starts = np.cumsum([0] + [math.prod(leaf.shape) for leaf in in_leaves])
    per_output = []
    for o, out_leaf in enumerate(out_leaves):
        blocks = []
        for i, in_leaf in enumerate(in_leaves):
            shape = batch + tuple(out_leaf.shape) + tuple(in_leaf.shape)
            dtype = _block_dtype(in_leaf.dtype, out_leaf.dtype)
            if dtype == jax.dtypes.float0:
                blocks.append(np.zeros(shape, dtype))
                continue
            block = matrix[..., row_starts[o]:row_starts[o + 1], col_starts[i]:col_starts[i + 1]].reshape(shape)
            blocks.append(block if block.dtype == dtype else block.astype(dtype))
        grouped, start = [], 0
        for k, leaves in zip(selected, arg_leaves):
            grouped.append(jax.tree.structure(args[k]).unflatten(blocks[start : start + len(leaves)]))
            start += len(leaves)
        per_output.append(grouped[0] if isinstance(argnums, int) else tuple(grouped))
    return out_tree.unflatten(per_output)


def count_muls(f: Callable, order: Any, *args: Any, argnums: int | Sequence[int] = 0) -> int:
    """Multiplications that ``jacobian(f, order, argnums)(*args)`` performs in its eliminations.

    Counted from the shapes of the products the interpreter actually builds (traced abstractly,
    nothing is computed); each product's count is checked against the engine's plan as it is
    built, so this equals ``graph.cost(graph_of(f, *args, argnums=argnums), order)``. Where
    ``jacobian(f, order, argnums)`` has already been traced at arguments of these shapes and
    dtypes (the same f, the same plan), the count that trace made is returned instead of tracing
    the elimination again.
    """
    if isinstance(argnums, list):
        argnums = tuple(argnums)
    graph = graph_of(f, *args, argnums=argnums)
    if graph.program.bound:  # evaluated, as the interpreter does, on the other leaves
        bound = bind_python_leaves(f, args, graph.program.bound)
        f, args = bound.fn, bound.args
    _check_real_outputs(graph)
    steps = plan(graph, _resolve(graph, order, f, args, argnums))
    tape = _tape_of(graph, steps)
    if tape is not None:
        return tape.muls  # one multiply step per counted multiplication, checked against the plan
    try:
        return _PERFORMED[f][(_signature(args), argnums, steps)]
    except (KeyError, TypeError):
        pass
    counter = MultiplicationCounter()

    def run(*xs):
        _eliminate_all(graph, steps, jax.tree.leaves(xs), counter)
        return 0

    jax.eval_shape(run, *args)
    return counter.total
