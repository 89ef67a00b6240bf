"""Structured partial Jacobians as JAX values, and their exact products.

Every edge value is a `Partial`: its structure code, its normalised 2-D shapes, and either a
compact value array laid out as `structure_of(code).value_axes` says, nothing (an identity), or an
`IndexMap` (code 11, a linear map that only moves and adds data). Products follow the
`product_plan` of the structure algebra, so the multiplications they perform are exactly those the
`exact` cost model counts; `MultiplicationCounter` records them from the operands' actual shapes.
"""

from __future__ import annotations

import collections
import functools
import itertools
import math
import types
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import jaxpr_as_fun

from alphagrad.errors import AlphagradError
from alphagrad.graph import INDEX_MAP, VALUELESS, product_plan, structure_of
from alphagrad.graph import FIRST_EXTENDED_CODE, axis_sum
from alphagrad.interpreter._discard import RowCover, value_cover
from alphagrad.interpreter._tape_products import support
from alphagrad.interpreter._labelled import (
    Labelled, as_index_map, densify_labelled, elementwise_code, is_elementwise, labelled_product, relayout,
)

__all__ = [
    "IndexMap", "Partial", "Placed", "Term", "MultiplicationCounter", "multiply", "add", "densify", "convert",
    "extract", "read_constant", "contract", "broadcast_partial", "broadcast_pattern", "is_broadcast",
]

Shape2D = tuple[int, int]


class IndexMap(NamedTuple):
    """A linear map from p-shaped to v-shaped arrays (normalised 2-D shapes) that moves data only.

    Attributes:
      apply: [p1, p2] -> [v1, v2], linear.
      transpose: [v1, v2] -> [p1, p2], its adjoint.
    """

    apply: Callable[[jax.Array], jax.Array]
    transpose: Callable[[jax.Array], jax.Array]


class Term(NamedTuple):
    """One term of a `Placed` partial: ``where(pattern == 0, 0, pattern * weight)``.

    Attributes:
      pattern: [v1, v2, p1, p2], an index map's matrix (small non-negative integers, by which a float
        multiplies exactly); it depends on the data only where the map's indices do, so under vmap
        it is usually one array for the whole batch.
      weight: None (ones) or an array broadcastable to [v1, v2, p1, p2] (per example): a weight per
        row (size 1 on p1, p2), per column (size 1 on v1, v2), a scalar, or both.
    """

    pattern: jax.Array
    weight: jax.Array | None


class Placed(NamedTuple):
    """The value of a dense partial (code 1) kept as a sum of weighted index-map matrices, the sum of
    its `terms` (at most `PLACED_MAX_TERMS`).

    Products of index maps with weights per entry (a gather after an elementwise operation, a scatter
    of a squared slice, ...) stay in this form while later index maps compose with their patterns, and
    are materialised (`densify`) where a product needs the numbers: one fused elementwise loop over
    the entries, with the weights broadcast, instead of a batched scatter into a zero-filled [batch, v,
    p] buffer per product (serial on XLA:CPU; `scattered` at batch 32,768 ran 6x slower than
    jax.jacrev, whose program is such a loop).
    """

    terms: tuple[Term, ...]

    def __array__(self, dtype=None, copy=None):
        """The dense [v1, v2, p1, p2] array (numpy's protocol; concrete terms only)."""
        dtype = dtype or jnp.result_type(*(t.pattern if t.weight is None else t.weight for t in self.terms))
        shape = np.broadcast_shapes(*(np.shape(t.pattern) for t in self.terms))
        return np.asarray(_materialise(self, shape, dtype))


class Partial(NamedTuple):
    """A structured partial d(v)/d(p).

    Attributes:
      code: structure code.
      out_shape: v's normalised shape (v1, v2).
      in_shape: p's normalised shape (p1, p2).
      value: the value array (layout given by the code), None for an identity, an IndexMap (code
        11), or a `Placed` sum of weighted maps (code 1).
      support: for a plain dense value (code 1), the [v1, v2, p1, p2] entries its structure lets
        it hold where some are structural zeros (`_keeping_zeros`): bool NumPy where that is known
        while tracing, a `RunTimeSupport` where only at run time; else None. Outside them it holds
        zeros, or NaN in rows that a pole reaches (as jax.jacfwd has them).
      finite: whether every entry is finite wherever the primal values are (a partial of a
        primitive whose derivative has no pole, and products and sums of such partials); False
        where that is not known.
    """

    code: int
    out_shape: Shape2D
    in_shape: Shape2D
    value: Any
    support: Any = None
    finite: bool = False


class RunTimeSupport:
    """The entries a dense partial can hold where they are known only at run time (a conditional's
    taken branch): a traced bool array [v1, v2, p1, p2], computed on demand while tracing and once.
    Nothing is computed for a partial whose support no later product asks for
    (`_zeros_meeting_poles`).

    Index maps at run-time indices get none: a max-pool's selection times relu's partial (not
    known to be finite) was guarded in every product after it, and cnn_pool's Jacobian ran 20x
    slower at batch 256; `x[jnp.argmax(x)]` in reverse order stays NaN at the unread entries
    where sqrt's partial is infinite (jax.jacrev's answer)."""

    def __init__(self, compute: Callable[[], jax.Array], diagonal: Callable[[], jax.Array] | None = None,
                 rows: Callable[[], jax.Array] | None = None, static: np.ndarray | None = None):
        self._compute = compute
        self._value = None
        # For an elementwise partial (a select's case): its diagonal alone, [v1, v2] bool, so that a
        # product reads it without the [v1, v2, v1, v2] array (`_rows_taken`).
        self.diagonal = diagonal
        # Where the support is rows()[c] (flat, bool, run time) and static[c, p] (NumPy): a product
        # with a factor of known support further in keeps this form, its static part multiplied
        # while tracing (`_product_support`: a select's case times the partials before it, in
        # reverse order, with no product of supports at run time).
        self.rows, self.static = rows, static

    def __call__(self) -> jax.Array:
        if self._value is None:
            self._value = jnp.asarray(self._compute(), bool)
        return self._value


def _as_bool_array(held) -> jax.Array | np.ndarray:
    """A support (NumPy or `RunTimeSupport`) as an array."""
    return held() if isinstance(held, RunTimeSupport) else held


class MultiplicationCounter:
    """Counts the scalar multiplications the products perform (from their operands' shapes).

    Attributes:
      total: those of the elimination's products (``graph.cost``).
      loops: those of the partials of loops kept as loops (``graph._loops.partial_muls``).
    """

    def __init__(self):
        self.total = 0
        self.loops = 0

    def add(self, count: int) -> None:
        self.total += int(count)


def _sizes(shape_c: Shape2D, shape_v: Shape2D, shape_p: Shape2D) -> dict[str, int]:
    return {"a": shape_c[0], "b": shape_c[1], "x": shape_v[0], "y": shape_v[1], "m": shape_p[0], "n": shape_p[1]}


def _position_sizes(out_shape: Shape2D, in_shape: Shape2D) -> dict[int, int]:
    return {1: out_shape[0], 2: out_shape[1], 3: in_shape[0], 4: in_shape[1]}


def _identity_map(code: int, out_shape: Shape2D, in_shape: Shape2D) -> IndexMap:
    if code == -7:
        return IndexMap(lambda t: t.T.reshape(out_shape), lambda t: t.T.reshape(in_shape))
    return IndexMap(lambda t: t.reshape(out_shape), lambda t: t.reshape(in_shape))


def densify(partial: Partial, dtype) -> jax.Array:
    """The full [v1, v2, p1, p2] tensor, built by selection and broadcasting (no multiplications)."""
    (o1, o2), (p1, p2) = partial.out_shape, partial.in_shape
    if isinstance(partial.value, Labelled):
        return densify_labelled(partial.value, dtype).reshape(o1, o2, p1, p2)
    if isinstance(partial.value, Placed):
        return _materialise(partial.value, (o1, o2, p1, p2), dtype)
    if partial.code == INDEX_MAP:
        return _index_map_pattern(partial, dtype)
    structure = structure_of(partial.code)
    sizes = _position_sizes(partial.out_shape, partial.in_shape)
    if partial.value is None:
        values = jnp.ones((), dtype)
    else:
        values = jnp.asarray(partial.value, dtype)
    # Put the value axes at their positions, size-1 elsewhere, then broadcast and mask the ties.
    shape = [1, 1, 1, 1]
    for axis, pos in enumerate(structure.value_axes):
        shape[pos - 1] = values.shape[axis]
    full = values.reshape(shape)
    if tuple(shape) != (o1, o2, p1, p2):
        full = jnp.broadcast_to(full, (o1, o2, p1, p2))
    for a, b, _ in structure.ties:
        if sizes[a] == 1 and sizes[b] == 1:
            continue  # a 1x1 diagonal masks nothing
        eye = np.eye(sizes[a], sizes[b], dtype=bool)  # a constant: XLA does not fold a traced eye
        mask_shape = [1, 1, 1, 1]
        mask_shape[a - 1], mask_shape[b - 1] = sizes[a], sizes[b]
        full = jnp.where(eye.reshape(mask_shape), full, jnp.zeros((), dtype))
    return full


#: Index-map matrices of at most this many entries are built by applying the map to an identity
#: (`_index_map_matrix`), whichever side is smaller.
MAP_BY_ITSELF_MAX_ENTRIES = 2**12


#: The matrices of index maps computed while tracing (NumPy, read-only), by the map's `apply`
#: function (a plain function, held weakly: an entry goes with its map) and then by the dtype, the
#: shapes and whether x64 is on: a map's matrix is read again by later products (its support, a
#: `Placed` term, a dense product): 311 of 1,071 densified maps over 31 corpus functions' orders.
_INDEX_MAP_PATTERNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _index_map_pattern(partial: Partial, dtype):
    """The [v1, v2, p1, p2] matrix of an index map (code 11): `_index_map_matrix` at trace time
    (`_at_trace_time`), the same NumPy array again for the same map, dtype and shapes."""
    (o1, o2), (p1, p2) = partial.out_shape, partial.in_shape
    the_map = partial.value
    cacheable = type(the_map.apply) is types.FunctionType
    key = (np.dtype(dtype), tuple(partial.out_shape), tuple(partial.in_shape), jax.dtypes.canonicalize_dtype(np.int64))
    if cacheable:
        known = _INDEX_MAP_PATTERNS.get(the_map.apply, {}).get(key)
        if known is not None and known[0]() is the_map.transpose:
            return known[1]
    matrix = _at_trace_time(lambda: _index_map_matrix(partial, dtype), o1 * o2 * p1 * p2)
    if cacheable and isinstance(matrix, np.ndarray):
        try:
            transpose = weakref.ref(the_map.transpose)
        except TypeError:  # (not weakly referable: not kept)
            return matrix
        matrix.flags.writeable = False
        _INDEX_MAP_PATTERNS.setdefault(the_map.apply, {})[key] = (transpose, matrix)
    return matrix


def _index_map_matrix(partial: Partial, dtype) -> jax.Array:
    """The [v1, v2, p1, p2] matrix of an index map (code 11)."""
    (o1, o2), (p1, p2) = partial.out_shape, partial.in_shape
    # One-hot seeds on the smaller side: a reduction or selection of many entries into few
    # (an n-body energy's sums, a sort's slice) would otherwise take an identity of
    # (input entries)^2 (a sort of 5,000: 1.6 GB where jax.jacrev needs 0.5 GB). A small matrix
    # is built by the map itself (a gather of the identity stays a gather), not by its transpose
    # (a scatter-add of one-hot rows, a batched scatter per example under vmap, serial on XLA:CPU):
    # interpolate_table 1.7x, interp_traced_grid 1.5x faster at batch 256 (helper floor20).
    if o1 * o2 < p1 * p2 and o1 * o2 * p1 * p2 > MAP_BY_ITSELF_MAX_ENTRIES:
        basis = np.eye(o1 * o2, dtype=dtype).reshape(o1 * o2, o1, o2)
        rows = jax.vmap(partial.value.transpose)(basis)  # [o1*o2, p1, p2]
        return rows.reshape(o1, o2, p1, p2)
    basis = np.eye(p1 * p2, dtype=dtype).reshape(p1 * p2, p1, p2)
    columns = jax.vmap(partial.value.apply)(basis)  # [p1*p2, o1, o2]
    return jnp.moveaxis(columns.reshape(p1, p2, o1, o2), (0, 1), (2, 3))


#: Index-map matrices and the patterns moved through index maps (`Term.pattern`) with at most this
#: many entries are computed while tracing (`_at_trace_time`), wherever the maps' indices are known
#: then: as NumPy constants their supports are known, and a `Placed` sum is materialised by reading
#: each entry's weights alone (`_materialise_known`) instead of evaluating every term at every entry.
PATTERN_AT_TRACE_TIME_MAX = 2**16


def _at_trace_time(fn: Callable[[], jax.Array], entries: int,
                   numpy: Callable[[], np.ndarray | None] | None = None):
    """fn(), a NumPy array computed while tracing where it has at most PATTERN_AT_TRACE_TIME_MAX
    `entries` and depends on nothing known only at run time (indices passed as arguments); else
    fn() traced as usual.

    `numpy`, where given, computes the same array (values, shape and dtype) a cheaper way while
    tracing: in NumPy directly (a product of a `Placed` partial and a permutation moves each term's
    pattern by a reshape or a transpose: tracing fn cost ~0.6 ms against ~10 us, for 2,004 of
    lorenz_rk4's 2,582 patterns over four orders), or with an index map applied once to a NumPy
    batch (`_moved_numpy`); it returns None where it cannot (fn is then evaluated as below), or
    `_AT_RUN_TIME` where the array depends on run-time values (fn() is traced as usual)."""
    if entries > PATTERN_AT_TRACE_TIME_MAX:
        result = _evaluated_by_numpy(fn) if entries <= PATTERN_BY_NUMPY_MAX else None
        return fn() if result is None else result
    if numpy is not None:
        result = numpy()
        if result is _AT_RUN_TIME:
            return fn()
        if result is not None:
            return result
    result = _evaluated_now(fn)
    return fn() if result is _AT_RUN_TIME else result


#: What `_evaluated_now` returns for a computation that reads values known only at run time.
_AT_RUN_TIME = object()


#: A pattern (`_at_trace_time`) of more than PATTERN_AT_TRACE_TIME_MAX entries and at most this many
#: is still computed while tracing where NumPy alone computes it from the constants its traced
#: computation would embed (`_evaluated_by_numpy`: data movement and cumulative sums, nothing
#: compiled) and it is at most `NUMPY_GROWTH_MAX` times their size; else it is traced. Traced, XLA
#: folds it at compile time, which for `cumsum` (a reduce-window on XLA:CPU) took n^3: the first call
#: of jax.jit(jacobian(f)) for ``jnp.cumsum(jnp.tanh(x))`` of 400 entries 6.0 s, of 800 20.4 s, of
#: 2,500 210 s (jax.jacrev 0.5 s; now 0.2-0.7 s), of ``jnp.cumsum(x ** 2)[::-1] * x`` in reverse order at
#: 1,500 51.9 s, at 2,500 135 s (now 1.3 s and 3.2 s; jax.jacrev 1.0 s) (helper corpus26).
PATTERN_BY_NUMPY_MAX = 2**24
NUMPY_GROWTH_MAX = 4


def _evaluated_by_numpy(fn: Callable[[], jax.Array]) -> np.ndarray | None:
    """fn() computed while tracing by NumPy alone (`_numpy_eval`), or None where it reads a traced
    value, has an operation without a NumPy rule (nothing is compiled) or would be more than
    NUMPY_GROWTH_MAX times the size of the constants it is computed from."""
    closed = jax.make_jaxpr(fn)()
    if any(isinstance(c, jax.core.Tracer) for c in closed.consts):
        return None
    consts = [np.asarray(c) for c in closed.consts]
    out = closed.jaxpr.outvars[0].aval
    if math.prod(out.shape) > NUMPY_GROWTH_MAX * max(1, sum(c.size for c in consts)):
        return None
    result = _numpy_eval(closed.jaxpr, consts)
    return None if result is None else result[0]


def _evaluated_now(fn: Callable[[], jax.Array]):
    """fn() as a NumPy array computed while tracing, or `_AT_RUN_TIME` where it reads a traced value."""
    # fn is traced to one program, evaluated in NumPy or compiled as a whole (evaluated eagerly, JAX
    # compiles each of its operations apart the first time: 54 small compilations, 2 s under load,
    # for `scattered`). Where it reads a traced value (indices passed to f), it is traced as usual.
    closed = jax.make_jaxpr(fn)()
    if any(isinstance(c, jax.core.Tracer) for c in closed.consts):
        return _AT_RUN_TIME
    consts = [np.asarray(c) for c in closed.consts]
    result = _numpy_eval(closed.jaxpr, consts)
    if result is not None:
        return result[0]
    key = (str(closed.jaxpr), tuple((c.shape, str(c.dtype), c.tobytes()) for c in consts))
    if key not in _COMPILED_PATTERNS:
        if len(_COMPILED_PATTERNS) >= COMPILED_PATTERNS_MAX:
            _COMPILED_PATTERNS.clear()  # a long process tracing many functions: start over
        _COMPILED_PATTERNS[key] = jax.jit(lambda: jaxpr_as_fun(closed)()[0]).lower().compile()
    return np.asarray(_COMPILED_PATTERNS[key]())


def _moved_numpy(the_map: IndexMap, patterns, after: bool):
    """``jax.vmap(moved)(patterns)`` for NumPy `patterns` [k, 4 axes], where moved is
    ``_apply_on_v(the_map, .)`` (`after`) or ``_apply_on_p(., the_map)``, computed while tracing
    with the map applied once to all the patterns' [v1, v2] slices (one vmap over a NumPy batch,
    not a vmap of `moved`'s vmap, nor the masking and stacking traced): the same array; None where
    `patterns` is not NumPy (or its dtype not JAX's canonical one), `_AT_RUN_TIME` where the map
    reads run-time values (`_at_trace_time` then traces its fn as before)."""
    if not isinstance(patterns, np.ndarray) or patterns.ndim != 5:
        return None
    if patterns.dtype != jax.dtypes.canonicalize_dtype(patterns.dtype):
        return None
    k, a1, a2, b1, b2 = patterns.shape
    if 0 in patterns.shape:
        return None
    if after:  # the columns [p1, p2] of each: slices [v1, v2] moved to [c1, c2]
        batch, fn = np.moveaxis(patterns, (3, 4), (1, 2)).reshape(k * b1 * b2, a1, a2), the_map.apply
    else:  # the rows [c1, c2] of each: slices [v1, v2] pulled back to [p1, p2]
        batch, fn = patterns.reshape(k * a1 * a2, b1, b2), the_map.transpose
    moved = _evaluated_now(lambda: jax.vmap(fn)(batch))
    if moved is _AT_RUN_TIME:
        return moved
    if after:
        return np.moveaxis(moved.reshape(k, b1, b2, *moved.shape[1:]), (1, 2), (3, 4))
    return moved.reshape(k, a1, a2, *moved.shape[1:])


def _first(moved):
    """The first of `_moved_numpy`'s arrays (a batch of one), or what it returned instead."""
    return moved[0] if isinstance(moved, np.ndarray) else moved


#: Compiled pattern computations (`_at_trace_time`) by their program and constants: the same
#: computation recurs within a Jacobian (171 patterns of 50 distinct programs over eight corpus
#: functions).
_COMPILED_PATTERNS: dict[tuple, Any] = {}
COMPILED_PATTERNS_MAX = 1024


def _numpy_eval(jaxpr, consts: list[np.ndarray], args: list[np.ndarray] = ()) -> list[np.ndarray] | None:
    """The outputs of `jaxpr` evaluated with NumPy, or None where it has an operation outside the
    few that move data (`_NUMPY_RULES`): those compile nothing."""
    env = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))

    def read(v):
        return np.asarray(v.val) if isinstance(v, jax.extend.core.Literal) else env[v]

    for eqn in jaxpr.eqns:
        if eqn.primitive.name not in _NUMPY_RULES:
            return None
        rule = _NUMPY_RULES[eqn.primitive.name]
        args = [read(v) for v in eqn.invars]
        if eqn.primitive.name in ("jit", "pjit"):
            body = eqn.params["jaxpr"]
            outs = _numpy_eval(body.jaxpr, [np.asarray(c) for c in body.consts], args)
            if outs is None:
                return None
        else:
            outs = rule(*args, **eqn.params)
            outs = list(outs) if eqn.primitive.multiple_results else [outs]
        for var, value in zip(eqn.outvars, outs):
            env[var] = np.asarray(value, dtype=var.aval.dtype).reshape(var.aval.shape)
    return [read(v) for v in jaxpr.outvars]


def _np_pad(x, padding_value, *, padding_config):
    """lax.pad in NumPy: per axis, `interior` fill values between entries, then `lo` and `hi` at
    the ends (negative: entries cut)."""
    for axis, (lo, hi, interior) in enumerate(padding_config):
        if interior and x.shape[axis]:
            shape = list(x.shape)
            shape[axis] += (x.shape[axis] - 1) * interior
            spread = np.full(shape, padding_value, x.dtype)
            spread[(slice(None),) * axis + (slice(None, None, interior + 1),)] = x
            x = spread
        for amount, at_end in ((lo, False), (hi, True)):
            if amount > 0:
                shape = list(x.shape)
                shape[axis] = amount
                fill = np.full(shape, padding_value, x.dtype)
                x = np.concatenate([x, fill] if at_end else [fill, x], axis)
            elif amount < 0:
                cut = slice(None, x.shape[axis] + amount) if at_end else slice(-amount, None)
                x = x[(slice(None),) * axis + (cut,)]
    return x


def _np_select_n(which, *cases):
    return np.choose(np.asarray(which, np.int32), np.broadcast_arrays(*cases)) if which.shape else cases[int(which)]


def _np_cumsum(x, *, axis, reverse):
    return np.flip(np.cumsum(np.flip(x, axis), axis), axis) if reverse else np.cumsum(x, axis)


def _np_reduce_window_sum(x, *, window_dimensions, window_strides, padding, base_dilation, window_dilation):
    """lax.reduce_window_sum in NumPy: the base dilated and padded (`_np_pad`), then each window's
    (dilated) entries at each stride summed over a strided view (nothing copied but the sums)."""
    x = _np_pad(x, np.zeros((), x.dtype),
                padding_config=[(lo, hi, d - 1) for (lo, hi), d in zip(padding, base_dilation)])
    spans = [(w - 1) * d + 1 for w, d in zip(window_dimensions, window_dilation)]
    if any(span > n for span, n in zip(spans, x.shape)):  # no whole window: an empty output
        return np.zeros([max(0, (n - span) // s + 1) for n, span, s in zip(x.shape, spans, window_strides)], x.dtype)
    view = np.lib.stride_tricks.sliding_window_view(x, spans)
    view = view[tuple(slice(None, None, s) for s in window_strides)
                + tuple(slice(None, None, d) for d in window_dilation)]
    return view.sum(axis=tuple(range(x.ndim, 2 * x.ndim)), dtype=x.dtype)


def _np_iota(*, dtype, shape, dimension, **_):
    index = [1] * len(shape)
    index[dimension] = shape[dimension]
    return np.broadcast_to(np.arange(shape[dimension], dtype=dtype).reshape(index), shape)


def _np_broadcast_in_dim(x, shape, broadcast_dimensions):
    """Operand axis k becomes output axis broadcast_dimensions[k] (in any order), the others new."""
    if not x.ndim:
        return np.broadcast_to(x, shape)
    order = np.argsort(broadcast_dimensions)  # the operand's axes in the order of their output axes
    x = np.transpose(x, order)
    kept = sorted(broadcast_dimensions)
    return np.broadcast_to(np.expand_dims(x, [d for d in range(len(shape)) if d not in kept]), shape)


#: NumPy forms of the operations that index maps' patterns are moved by (`_numpy_eval`).
_NUMPY_RULES: dict[str, Callable] = {
    "jit": None, "pjit": None,  # evaluated recursively
    # A reshape with `dimensions` transposes first (jnp.reshape(x, s, order="F")).
    "reshape": lambda x, *, new_sizes, dimensions=None, **_: np.reshape(
        x if dimensions is None else np.transpose(x, dimensions), new_sizes),
    "transpose": lambda x, *, permutation: np.transpose(x, permutation),
    "rev": lambda x, *, dimensions: np.flip(x, tuple(dimensions)),
    "broadcast_in_dim": lambda x, *, shape, broadcast_dimensions, **_: _np_broadcast_in_dim(
        x, shape, broadcast_dimensions),
    "squeeze": lambda x, *, dimensions: np.squeeze(x, tuple(dimensions)),
    "expand_dims": lambda x, *, dimensions: np.expand_dims(x, tuple(dimensions)),
    "convert_element_type": lambda x, *, new_dtype, **_: x.astype(new_dtype),
    "add": lambda x, y, **_: np.add(x, y), "sub": lambda x, y, **_: np.subtract(x, y),
    "mul": lambda x, y, **_: np.multiply(x, y), "neg": lambda x, **_: np.negative(x),
    "eq": lambda x, y, **_: np.equal(x, y), "ne": lambda x, y, **_: np.not_equal(x, y),
    "lt": lambda x, y, **_: np.less(x, y), "le": lambda x, y, **_: np.less_equal(x, y),
    "gt": lambda x, y, **_: np.greater(x, y), "ge": lambda x, y, **_: np.greater_equal(x, y),
    "select_n": _np_select_n,
    "concatenate": lambda *xs, dimension: np.concatenate(xs, dimension),
    "reduce_window_sum": _np_reduce_window_sum,
    "split": lambda x, *, sizes, axis: np.split(x, np.cumsum(sizes)[:-1], axis),
    "slice": lambda x, *, start_indices, limit_indices, strides: x[tuple(
        slice(a, b, s) for a, b, s in zip(start_indices, limit_indices, strides or [1] * x.ndim))],
    "pad": _np_pad,
    "cumsum": _np_cumsum,
    "reduce_sum": lambda x, *, axes, **_: np.sum(x, tuple(axes)),
    "iota": _np_iota,
    "copy": lambda x, **_: np.copy(x), "copy_p": lambda x, **_: np.copy(x),
}


def read_constant(x: jax.Array, axes) -> jax.Array:
    """`x` read at index 0 along `axes`, along which it is constant (the sides of Kronecker ties).

    An empty one of these axes leaves no entry to read, but then the partial's tensor has that
    zero-size axis and no entries at all: its constant is taken as zero, which keeps every product
    through it exact (the sum over an empty axis is zero; a product with an empty axis is empty).
    """
    axes = sorted(set(axes))
    if not axes:
        return x
    kept = [n for i, n in enumerate(x.shape) if i not in axes]
    if any(x.shape[i] == 0 for i in axes):
        return jnp.zeros(kept, x.dtype)
    return x[tuple(0 if i in axes else slice(None) for i in range(x.ndim))]


def extract(dense: jax.Array, code: int) -> Any:
    """The value array of `code` read off a dense [v1, v2, p1, p2] tensor that has its structure."""
    if code in VALUELESS:
        return None
    structure = structure_of(code)
    letters = ["i", "j", "k", "l"]
    for a, b, _ in structure.ties:
        letters[b - 1] = letters[a - 1]
    # A Kronecker tie is a constant times a delta: read it at index 0 of both its positions.
    constant = {pos for a, b, kind in structure.ties if kind == "K" for pos in (a, b)}
    x = read_constant(dense, [pos - 1 for pos in constant])
    kept_letters = [letters[pos - 1] for pos in (1, 2, 3, 4) if pos not in constant]
    out = "".join(letters[pos - 1] for pos in structure.value_axes)
    return jnp.einsum(f"{''.join(kept_letters)}->{out}", x)


def convert(partial: Partial, code: int, dtype) -> Partial:
    """The same partial laid out as a less structured `code` (free: selection only)."""
    if partial.code == code:
        return partial
    if isinstance(partial.value, Labelled) and code == 1:
        return Partial(1, partial.out_shape, partial.in_shape, densify(partial, dtype))
    if code == 1 and (partial.code == INDEX_MAP or partial.code in VALUELESS):
        return Partial(1, partial.out_shape, partial.in_shape, Placed(tuple(_terms(partial, dtype))))
    if code != 1:
        relaxed = _relaxed(partial, code, dtype)
        if relaxed is not None:
            return relaxed
    dense = densify(partial, dtype)
    if code == 1:
        return Partial(1, partial.out_shape, partial.in_shape, dense)
    return Partial(code, partial.out_shape, partial.in_shape, extract(dense, code))


#: The codes described by ties alone (not dense, not an index map, not a rank-n extended code).
_TIED_CODES = frozenset(c for c in range(-10, 11) if c not in (0, 1))


def _relaxed(partial: Partial, code: int, dtype) -> Partial | None:
    """`convert` to a `code` whose ties are some of `partial`'s (a diagonal from a multiple of the
    identity, a full [v, p] Kronecker block from a diagonal one, ...), read straight off the value
    array: broadcast to the target's value axes, times a delta mask for each tie the target drops.
    The same numbers as `extract(densify(partial))`, without the dense [v1, v2, p1, p2] tensor
    (allen_cahn_step: a scalar times the identity laid out as a [4, 4] diagonal went through a
    [256, 4, 4, 4, 4] select and two reductions). None where a tie of `code` is not one of
    `partial`'s (a D tie from a K tie counts), `code` has no values, or `partial`'s value is not a
    plain array."""
    if partial.code not in _TIED_CODES or code not in _TIED_CODES or code in VALUELESS:
        return None
    if partial.value is not None and not isinstance(partial.value, (jax.Array, np.ndarray)):
        return None
    source, target = structure_of(partial.code), structure_of(code)
    kinds = {(a, b): kind for a, b, kind in source.ties}
    if any(kinds.get((a, b)) not in (("K",) if kind == "K" else ("D", "K")) for a, b, kind in target.ties):
        return None
    sizes = dict(zip((1, 2, 3, 4), (*partial.out_shape, *partial.in_shape)))
    letter = {pos: pos for pos in sizes}  # positions tied in the target share a letter
    for a, b, _ in target.ties:
        letter[b] = letter[a]
    target_letters = [letter[pos] for pos in target.value_axes]
    target_shape = tuple(sizes[pos] for pos in target.value_axes)
    source_letters = [letter[pos] for pos in source.value_axes]
    value = jnp.ones((), dtype) if partial.value is None else jnp.asarray(partial.value, dtype)
    order = sorted(range(len(source_letters)), key=lambda i: target_letters.index(source_letters[i]))
    if order != list(range(len(order))):
        value = jnp.transpose(value, order)
    value = value.reshape(tuple(n if t in source_letters else 1 for t, n in zip(target_letters, target_shape)))
    value = jnp.broadcast_to(value, target_shape)
    for a, b, _ in source.ties:
        if letter[a] != letter[b]:  # a tie the target drops: its delta, as a constant mask
            i, j = target_letters.index(letter[a]), target_letters.index(letter[b])
            mask_shape = [1] * len(target_shape)
            mask_shape[i], mask_shape[j] = target_shape[i], target_shape[j]
            eye = np.eye(target_shape[i], target_shape[j], dtype=bool).reshape(mask_shape)
            value = jnp.where(eye, value, jnp.zeros((), dtype))
    return Partial(code, partial.out_shape, partial.in_shape, value)


def add(old: Partial, new: Partial, code: int, dtype) -> Partial:
    """old + new, laid out as `code` (the cost model's sum code). Additions are free. A dense sum
    keeps the structural zeros both its terms have (`_keeping_zeros`)."""
    total = _add(old, new, code, dtype)
    finite = old.finite and new.finite
    if total.finite != finite:
        total = total._replace(finite=finite)
    return _keeping_zeros(total, lambda: _union(_support(old), _support(new)),
                          explicit=old.support is not None or new.support is not None)


def _union(a, b):
    """The union of two supports (NumPy or `RunTimeSupport`), None where either is unknown."""
    if a is None or b is None:
        return None
    if isinstance(a, RunTimeSupport) or isinstance(b, RunTimeSupport):
        return RunTimeSupport(lambda: jnp.logical_or(_as_bool_array(a), _as_bool_array(b)))
    return a | b


def _add(old: Partial, new: Partial, code: int, dtype) -> Partial:
    if code >= FIRST_EXTENDED_CODE:  # two labelled partials: the ties both share
        ties = axis_sum(old.value.ties, new.value.ties)
        a, b = relayout(old.value, ties, dtype), relayout(new.value, ties, dtype)
        return Partial(code, old.out_shape, old.in_shape, a._replace(values=jnp.asarray(a.values, dtype) + b.values))
    if code == 1:
        terms_old, terms_new = _terms(old, dtype), _terms(new, dtype)
        if terms_old is not None and terms_new is not None:
            return _placed(old.out_shape, old.in_shape, terms_old + terms_new, dtype)
    a, b = (_unplaced(convert(x, code, dtype), dtype) for x in (old, new))
    if code in VALUELESS:
        raise AssertionError("a sum always carries values")
    return Partial(code, old.out_shape, old.in_shape, a.value + b.value)


def _compose(first: IndexMap, second: IndexMap) -> IndexMap:
    """second after first."""
    return IndexMap(lambda t: second.apply(first.apply(t)), lambda t: first.transpose(second.transpose(t)))


def _paired(code: int) -> dict[int, int] | None:
    """For a code whose ties pair every v entry with one p entry (a permutation, here an identity or
    a transpose, times a weight per entry): v position -> its tied p position; else None."""
    if code == INDEX_MAP or code == 0 or code >= FIRST_EXTENDED_CODE:
        return None
    partner = {a: b for a, b, _ in structure_of(code).ties}
    return partner if set(partner) == {1, 2} else None


def _permutation_code(code: int) -> int:
    """The value-less code of the permutation a `_paired` code weights: identity or transpose."""
    return -6 if _paired(code)[1] == 3 else -7


def _weights(partial: Partial, side: str, dtype) -> jax.Array:
    """The weights of a `_paired` partial as an array broadcastable to its v shape (`side` "out") or
    its p shape ("in"): value axes sit at their tied positions, Kronecker ties are size 1."""
    partner = _paired(partial.code)
    axes = structure_of(partial.code).value_axes  # v positions (1, 2): every p position is tied
    values = jnp.asarray(partial.value, dtype)
    at = [pos - 1 if side == "out" else partner[pos] - 3 for pos in axes]
    shape = [1, 1]
    for axis, target in enumerate(at):
        shape[target] = values.shape[axis]
    if at != sorted(at):
        values = jnp.transpose(values, np.argsort(at))
    return values.reshape(shape)


def _place(pattern: jax.Array, weights: jax.Array) -> jax.Array:
    """pattern * weights where the pattern (a map's matrix: small non-negative integers, mostly
    ones, by which a float multiplies exactly) is nonzero, exactly zero elsewhere (an infinite or
    NaN weight stays only where the map puts it, as when the map moves it)."""
    return jnp.where(pattern == 0, jnp.zeros((), pattern.dtype), pattern * weights)


#: A `Placed` partial keeps at most this many terms; a sum or product that would need more is
#: materialised (a dense array, as without the lazy form).
PLACED_MAX_TERMS = 16
#: A term whose weight varies along the entries that an index map moves (a weight per v entry with
#: the map after it, M diag(w) P) is split into one term per such entry, each with the weight of that
#: entry, while they are at most this many; a larger one is materialised and the map applied to it.
PLACED_SPLIT_MAX = 16


#: Under a jax.vmap of at least KEEP_PRODUCTS_MIN_BATCH examples, a product with more than
#: KEEP_PRODUCTS_ABOVE entries per example is computed once, in a kernel of its own (`_kept`).
#: XLA:CPU has no multi-output fusion: it fuses a cheap product (multiplies, adds) into every fusion
#: that reads it and recomputes it there, per entry read, so a product read by several later
#: products (the shared intermediate products of an elimination) is evaluated many times over
#: (lorenz_rk4 at batch 32,768: 195 -> 19 ms kept, jax.jacfwd 22). Scalar products stay fusible
#: (kept, each is one more small kernel: RoeFlux_1d's 49 kernels became 172, slower), and so does
#: everything at small batch, where a kernel's launch costs more than the recomputation
#: (softmax_cross_entropy at batch 256: 0.077 -> 0.13 ms kept; 29 -> 16 ms at 32,768). CPU only:
#: XLA:GPU fuses a producer into several consumers as one multi-output kernel, and this was
#: measured on XLA:CPU alone.
KEEP_PRODUCTS_ABOVE = 1
KEEP_PRODUCTS_MIN_BATCH = 4096


def _vmapped_examples(x) -> int:
    """How many examples the jax.vmap traces that `x` belongs to batch together (1 outside vmap,
    or where JAX does not show it: then nothing is kept). Reads JAX's batching tracer, which carries
    the axis size; a JAX without it reads as 1, the behaviour before products were kept."""
    examples = 1
    while type(x).__name__ == "BatchTracer":
        size = getattr(getattr(getattr(x, "_trace", None), "axis_data", None), "size", None)
        if not isinstance(size, int):
            return 1
        examples *= size
        x = getattr(x, "val", None)
    return examples


def _keeps(value) -> bool:
    """Whether `value` (per example) is under a vmap large enough, and has enough entries, to be
    computed in a kernel of its own on this backend (`_kept`, `_gathered`)."""
    return (math.prod(np.shape(value)) > KEEP_PRODUCTS_ABOVE and jax.default_backend() == "cpu"
            and _vmapped_examples(value) >= KEEP_PRODUCTS_MIN_BATCH)


def _kept(x: jax.Array) -> jax.Array:
    """`x`, exactly (divided by a 1 computed at run time from its bits, which XLA cannot fold): a
    division is an expensive operation to XLA, which therefore computes it, and what `x` is computed
    from, once, instead of fusing it into each of several readers."""
    bits_type = _bits_type(x)
    if bits_type is None:
        return x
    return x / jax.lax.convert_element_type(_run_time_one(x, bits_type), x.dtype)


#: Under a smaller vmap (or none), a partial's value array of more than SHARED_KEEP_ABOVE entries
#: (per example) that one elimination step reads in several products, and that XLA would already
#: compute more than once where it is fused, is computed once (`SharedReads`). None: only the
#: large-batch rule (`_keeps`).
SHARED_KEEP_ABOVE: int | None = 1


def shared(partial: Partial, reads: int) -> Partial:
    """`partial`, its value array computed once (`_kept`) where `reads` (>= 2) products read it and
    it holds more than SHARED_KEEP_ABOVE entries, on XLA:CPU, under a vmap smaller than the one that
    keeps every product (`_keeps`)."""
    value = partial.value
    if (SHARED_KEEP_ABOVE is None or reads < 2 or not isinstance(value, jax.core.Tracer)
            or math.prod(np.shape(value)) <= SHARED_KEEP_ABOVE or jax.default_backend() != "cpu"
            or _keeps(value)):  # (a large-batch product is kept already)
        return partial
    return partial._replace(value=_kept(value))


#: A partial read by several products of a step is computed once (`SharedReads`) where that saves
#: XLA at least this many operations per call: (reads - 1) x the operations of one fused evaluation
#: per entry (its own and those of the partials it descends from that no kernel computed, each as
#: often as it is read on the way) x its entries x the examples of the vmap. A kernel of its own
#: costs about as much as that many operations on XLA:CPU (at batch 256, float32, same process:
#: Perceptron's [1, 8] row of ~30 fused operations read twice, 63k operations, ran 1.2-2x slower kept).
SHARED_SAVED_MIN = 2**17


def _by_dot(out: Partial, inp: Partial) -> tuple[bool, bool, bool]:
    """Whether `multiply(out, inp)` computes the product in a dot_general (`contract`'s "dot": a
    summed index beyond the unrolling caps), and whether that dot reads out's and in's value arrays
    as they are. XLA:CPU fuses no producer into a dot: its operand is computed once, in a kernel,
    however many dots read it, and the dot's result is a kernel's output. Every other product
    (elementwise, an unrolled sum, a data move, `Placed` terms, labelled) is fusible, and a factor
    the product first materialises (`Placed`) or guards (in's finite part or rows, where it may be
    infinite) is read by that fusible step."""
    if isinstance(out.value, Labelled) or isinstance(inp.value, Labelled) or INDEX_MAP in (out.code, inp.code):
        return False, False, False
    placed_out, placed_in = isinstance(out.value, Placed), isinstance(inp.value, Placed)
    if placed_out != placed_in:
        other = inp if placed_out else out
        if (_is_scalar_row(other, out.in_shape) or other.code in VALUELESS
                or _paired(other.code) is not None):  # (`_weighted_terms`: the product is terms)
            return False, False, False
    shapes = [(*x.out_shape, *x.in_shape) if placed else np.shape(x.value) if hasattr(x.value, "shape") else None
              for x, placed in ((out, placed_out), (inp, placed_in))]
    if None in shapes:
        return False, False, False
    plan = product_plan(inp.code, out.code)
    size = {c: n for letters, shape in zip((plan.out_letters, plan.in_letters), shapes) for c, n in zip(letters, shape)}
    large_batch = max(_vmapped_examples(out.value), _vmapped_examples(inp.value)) >= KEEP_PRODUCTS_MIN_BATCH
    if _contraction_kind(plan.out_letters, plan.in_letters, plan.result_letters, size, large_batch) != "dot":
        return False, False, False
    return True, not placed_out, not placed_in and inp.finite


class SharedReads:
    """Which partials of an elimination to compute once (`shared`), step by step.

    XLA:CPU fuses a cheap producer (multiplies, adds, selects) into every fusion that reads it, and a
    reverse sweep reads the partial of an output through a vertex once per predecessor of the
    vertex, whose products are read once per predecessor of theirs: the recomputation compounds
    along the sweep. van_leer_advection (4 steps of a 16-cell stencil, two or three predecessors per
    vertex) in reverse order at batch 256 fused [16, 16] products 30-68 multiplies deep into each of
    20 fusions: 75 ms, 1.7 ms with the shared partials computed once (jax.jacrev 2.3; float32, same
    process). A partial is computed once where that saves SHARED_SAVED_MIN operations per call: its
    work (the operations one fused evaluation performs per entry, back to the last kernel output: a
    dot's result, a kept partial, a constant) times its entries, its reads less one and the examples.
    Not every partial read twice (that added 3-16 kernels to osborne2, power_iteration and dh_chain
    at batch 256), nor where reads compound only through scalars and dot_generals: Perceptron's
    [1, 8] rows read twice behind matrix products (f885f62's count of reads kept three: 0.84 of
    jax.jacrev against 0.94 without). Scalars stay fusible (RoeFlux_1d: a kernel each cost more
    than their recomputation)."""

    def __init__(self):
        self.work: dict[tuple[int, int], int] = {}  # edge -> operations per evaluation of its value, fused
        self.dots: set[tuple[int, int, int]] = set()  # this step's products computed by a dot_general
        self.computed: set[tuple[int, int]] = set()  # edges whose value is a kernel's output (kept, a dot's)

    def read(self, edges: dict, products) -> None:
        """Before a step's `products` (planned, with pred, vertex, succ): computes once the partials
        in `edges` they read several times where that saves SHARED_SAVED_MIN operations per call. A
        fusible product evaluates what it reads once per product; the dots of a step read a factor
        computed once, however many they are (`_by_dot`); a value computed once already (a kernel's
        output, a constant) or without values is read, not evaluated."""
        fused, dotted = collections.Counter(), set()
        self.dots = set()
        for planned in products:
            keys = ((planned.vertex, planned.succ), (planned.pred, planned.vertex))
            dot, *by_dot = _by_dot(*(edges[key] for key in keys))
            if dot:
                self.dots.add((planned.pred, planned.vertex, planned.succ))
            for key, dot in zip(keys, by_dot):
                if dot:
                    dotted.add(key)
                else:
                    fused[key] += 1
        for key in set(fused) | dotted:
            count = fused[key] + (key in dotted)
            value = edges[key].value
            if count < 2 or key in self.computed or not isinstance(value, (jax.core.Tracer, Placed)):
                continue
            entries = math.prod(np.shape(value)) if isinstance(value, jax.core.Tracer) else 0
            if (count - 1) * self.work.get(key, 1) * entries * _vmapped_examples(value) >= SHARED_SAVED_MIN:
                kept = shared(edges[key], count)
                if kept is not edges[key]:
                    edges[key] = kept
                    self.computed.add(key)

    def _evaluated(self, key) -> int:
        return 0 if key in self.computed else self.work.get(key, 1)

    def made(self, planned, summed: bool) -> None:
        """After the product of `planned` went into edge (pred, succ) (added to one there: `summed`).
        A dot's result is a kernel's output: reading it evaluates nothing it was computed from."""
        p, v, c = planned.pred, planned.vertex, planned.succ
        dot = (p, v, c) in self.dots
        work = 0 if dot else 1 + self._evaluated((v, c)) + self._evaluated((p, v))
        self.work[(p, c)] = work + 1 + self._evaluated((p, c)) if summed else work
        if dot and not summed:
            self.computed.add((p, c))
        else:
            self.computed.discard((p, c))


def _bits_type(x: jax.Array):
    """The integer type of `x`'s bits, or None where `x` is not a float of 2, 4 or 8 bytes."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return None
    return {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}.get(x.dtype.itemsize)


def _run_time_one(x: jax.Array, bits_type) -> jax.Array:
    """1 for every entry of `x`, computed from its bits (XLA cannot fold it to a constant)."""
    return (jax.lax.bitcast_convert_type(x, bits_type) | 1) & 1


#: Under the same large vmaps as products are kept (`_keeps`), a dense value of at least
#: KEEP_PLACED_MIN_ENTRIES entries placed by an index map into a result of at least KEEP_PLACED_WIDER
#: times its entries (a column of a wider Jacobian block, through a pad) is read by a gather first
#: (`_gathered`). The placement reads each of its entries once, so XLA fuses it, division or not,
#: into the placing fusion; there each entry of the wide result evaluates its own branch, and the
#: exponentials and powers the columns share are evaluated once per column that reads them, in
#: loops that do not vectorise. At batch 32,768 (A/B in one process): osborne1 ([11]-columns of an
#: [11, 5] block) 9.6 -> 2.0 ms, 1 -> 7 kernels, jax.jacfwd 2.0; gulf_research ([5]-columns of
#: [5, 3]) 7.5 -> 2.5 ms, jax.jacfwd 2.4. lorenz_rk4's [3]-columns of [3, 3] blocks, already kept
#: products read by several others, doubled the kernels (59 -> 130) and ran 6% slower, hence the
#: minimum entries.
KEEP_PLACED_WIDER = 2
KEEP_PLACED_MIN_ENTRIES = 4


def _gathered(dense: jax.Array, entries: int) -> jax.Array:
    """`dense` (exactly) read through a gather at indices XLA cannot know where it is placed into
    `entries` entries per example, at least KEEP_PLACED_WIDER times its own (of at least
    KEEP_PLACED_MIN_ENTRIES), under a large vmap (`_keeps`); else `dense` itself. XLA does not fuse
    what an expensive value is computed from into a gather (which may read an entry many times), so
    it is computed once, in a kernel."""
    bits_type, size = _bits_type(dense), math.prod(np.shape(dense))
    if (bits_type is None or size < KEEP_PLACED_MIN_ENTRIES or entries < KEEP_PLACED_WIDER * size
            or not _keeps(dense)):
        return dense
    flat = dense.reshape(-1)
    index = jnp.arange(flat.shape[0], dtype=jnp.int32) * _run_time_one(flat[0], bits_type).astype(jnp.int32)
    return flat.at[index].get(mode="promise_in_bounds").reshape(dense.shape)


def _materialise(placed: Placed, shape, dtype) -> jax.Array:
    """The dense [v1, v2, p1, p2] array of a `Placed` value: one fused elementwise sum of placed
    products (the patterns, computed from constants wherever the maps' indices are, are folded by
    XLA into constants)."""
    if not placed.terms:  # a product through a vertex with no entries (an empty slice)
        return jnp.zeros(shape, dtype)
    known = _materialise_known(placed, shape, dtype)
    if known is not None:
        return known
    total = None
    for term in placed.terms:
        pattern = jnp.asarray(term.pattern, dtype)
        dense = pattern if term.weight is None else _place(pattern, jnp.asarray(term.weight, dtype))
        total = dense if total is None else total + dense
    return jnp.broadcast_to(total, shape)


#: A `Placed` sum of known patterns with at least this many terms is built by slabs
#: (`_materialise_by_slabs`) where that saves selects.
SLAB_MIN_TERMS = 3
#: ... and only where the slabs evaluate at most this fraction of the selects of one chain over the
#: whole array: a concatenation of slabs costs XLA:CPU's fused loop a branch per entry. Measured on
#: the corpus at batch 256 and 32,768 (session 20): splits that save 75-85% of the selects ran
#: 1.3-5x faster (kinks_at_zero, segment_mean_messages, chebyquad, linear_recurrence), one saving
#: 50% (planar_arm) 1.5-2x faster, one saving 46% (powell_singular: slabs of 6, 1 and 1 rows) 3x
#: slower at 32,768.
SLAB_GAIN = 0.5


def _materialise_known(placed: Placed, shape, dtype) -> jax.Array | None:
    """`_materialise` where every pattern is known while tracing (a NumPy array), else None.

    Each term is selected onto its support (a constant mask), and multiplied by its pattern only
    where that is not 1: ``where(mask, w, 0)`` instead of ``where(pattern == 0, 0, pattern * w)``,
    the same numbers; a term whose support meets none of the earlier terms' is selected into the sum
    (``where(mask, w, total)``) instead of added. XLA still evaluates every term at every entry of
    the fused loop, but a select where it evaluated a compare, a multiply, a select and an add (a
    [batch, 64] sum of 8 terms at batch 32,768: 1.44 -> 0.53 ms, XLA:CPU). Terms with an empty
    support are dropped, and where the supports lie in separate slabs along an axis (the rows of a
    ``jnp.stack``) each slab is built from its own terms (`_materialise_by_slabs`).
    """
    if not placed.terms or not all(isinstance(t.pattern, np.ndarray) for t in placed.terms):
        return None
    shape = tuple(shape)
    terms = []
    for term in placed.terms:
        pattern = np.broadcast_to(term.pattern, shape)
        if not np.any(pattern):
            continue
        weight = None
        if term.weight is not None:
            weight = jnp.asarray(term.weight, dtype)
            weight = weight.reshape((1,) * (len(shape) - weight.ndim) + weight.shape)
        terms.append((pattern, weight))
    entries = math.prod(shape)
    if entries >= SPARSE_MATERIALISE_MIN_ENTRIES:
        held = sum(int(np.count_nonzero(pattern)) for pattern, _ in terms)
        if held * SPARSE_MATERIALISE_FRACTION <= entries:
            return _materialise_sparse(terms, shape, dtype)
    return jnp.broadcast_to(_materialise_by_slabs(terms, shape, dtype), shape)


#: A `Placed` sum of known patterns of at least this many entries, of which its terms hold at most
#: 1/SPARSE_MATERIALISE_FRACTION, is built by one scatter of the entries its terms hold
#: (`_materialise_sparse`): a select per term over the whole array takes each term's support as a
#: constant of the array's size, and the finite differences of ``jnp.stack(jnp.gradient(u))`` on a
#: 24 x 24 grid compiled a 94 MB program (ten constants of 331,776 entries) in 4.5 s, 17 s at 32 x 32
#: (jax.jacrev: 0.2 s; helper corpus26's finding).
SPARSE_MATERIALISE_MIN_ENTRIES = 2**18
SPARSE_MATERIALISE_FRACTION = 8


def _materialise_sparse(terms: list[tuple[np.ndarray, jax.Array | None]], shape: tuple, dtype) -> jax.Array:
    """The dense sum of placed terms (patterns known while tracing, weights broadcast against the
    whole `shape`) by one scatter-add of the entries the patterns hold: the constants are their
    coordinates, not masks of the whole array. A pattern's entry times the weight there, as `_place`
    (entries a pattern does not hold stay 0, whatever the weight)."""
    flat_shape = math.prod(shape)
    index_type = np.int32 if flat_shape < 2**31 else np.int64
    positions, values = [], []
    for pattern, weight in terms:
        held = np.nonzero(pattern)
        scale = pattern[held]
        positions.append(np.ravel_multi_index(held, shape).astype(index_type))
        if weight is None:
            values.append(jnp.asarray(scale, dtype))
            continue
        at = tuple(np.zeros_like(i) if n == 1 else i for i, n in zip(held, weight.shape))
        picked = weight[at]
        values.append(picked if np.all(scale == 1) else picked * jnp.asarray(scale, dtype))
    total = jnp.zeros(flat_shape, dtype).at[np.concatenate(positions)].add(jnp.concatenate(values))
    return total.reshape(shape)


def _slabs(supports: list[np.ndarray], axis: int) -> list[tuple[int, int, list[int]]]:
    """The contiguous slabs [start, stop) of `axis` that no term's support crosses, in order, each
    with the indices of its terms (a slab between supports has none)."""
    spans = []
    for k, support in enumerate(supports):
        touched = np.flatnonzero(np.any(support, axis=tuple(i for i in range(support.ndim) if i != axis)))
        spans.append((int(touched[0]), int(touched[-1]) + 1, k))
    merged: list[list] = []
    for start, stop, k in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
            merged[-1][2].append(k)
        else:
            merged.append([start, stop, [k]])
    slabs, at = [], 0
    for start, stop, ks in merged:
        if start > at:
            slabs.append((at, start, []))
        slabs.append((start, stop, ks))
        at = stop
    if at < supports[0].shape[axis]:
        slabs.append((at, supports[0].shape[axis], []))
    return slabs


def _materialise_by_slabs(terms: list[tuple[np.ndarray, jax.Array | None]], shape: tuple, dtype) -> jax.Array:
    """The sum of `terms` ((pattern of `shape`, weight of rank len(shape) or None), nonempty
    supports) as one [shape] array: concatenated slabs along the axis whose slabs need the fewest
    selects (each built the same way from the terms inside it), where that is at most `SLAB_GAIN` of
    one chain's; else one chain of selects over the whole array."""
    if not terms:
        return jnp.zeros(shape, dtype)
    entries = math.prod(shape)
    best = None
    if len(terms) >= SLAB_MIN_TERMS:
        supports = [pattern != 0 for pattern, _ in terms]
        for axis, size in enumerate(shape):
            if size > 1:
                slabs = _slabs(supports, axis)
                selects = sum((stop - start) * (entries // size) * len(ks) for start, stop, ks in slabs)
                if len(slabs) > 1 and (best is None or selects < best[0]):
                    best = (selects, axis, slabs)
    if best is None or best[0] > SLAB_GAIN * len(terms) * entries:
        return _select_chain(terms, shape, dtype)
    _, axis, slabs = best
    pieces = []
    for start, stop, ks in slabs:
        inside = []
        for k in ks:
            pattern, weight = terms[k]
            if weight is not None and weight.shape[axis] != 1:
                weight = jax.lax.slice_in_dim(weight, start, stop, axis=axis)
            inside.append((pattern[(slice(None),) * axis + (slice(start, stop),)], weight))
        pieces.append(_materialise_by_slabs(inside, shape[:axis] + (stop - start,) + shape[axis + 1:], dtype))
    return jnp.concatenate(pieces, axis=axis)


def _select_chain(terms: list[tuple[np.ndarray, jax.Array | None]], shape: tuple, dtype) -> jax.Array:
    """The sum of `terms` (as `_materialise_by_slabs` takes them), each selected onto its support."""
    total, covered = None, np.zeros(shape, bool)
    for pattern, weight in terms:
        support = pattern != 0
        if weight is None:
            value = pattern.astype(np.dtype(dtype))
        else:
            value = weight if np.all(pattern[support] == 1) else np.asarray(pattern, np.dtype(dtype)) * weight
        if total is None:
            total = jnp.where(support, value, jnp.zeros((), dtype))
        elif not np.any(support & covered):
            total = jnp.where(support, value, total)
        else:
            total = total + jnp.where(support, value, jnp.zeros((), dtype))
        covered |= support
    return jnp.broadcast_to(total, shape)


def broadcast_partial(out_shape: Shape2D, in_shape: Shape2D, operand_shape: tuple, result_shape: tuple,
                      weight: Callable[[], jax.Array], dtype) -> Partial | None:
    """The dense partial of an elementwise operation's output (`result_shape`, normalised
    `out_shape`) with respect to an operand broadcast to it along size-1 axes (`operand_shape`,
    normalised `in_shape`), as a `Placed` term: the broadcast's 0/1 matrix [v1, v2, p1, p2] (a NumPy
    constant) times ``weight()``, the local derivative at every output entry ([v1, v2]), one number
    where they are all equal. None where the operand is not such a broadcast, has a single entry (its
    dense partial is a column already), the matrix would exceed PATTERN_AT_TRACE_TIME_MAX entries,
    or ``weight()`` is not known while tracing.

    Products with it then stay lazy (a map composes with the pattern, an elementwise partial scales
    the weights) where a dense [v, p] array was built and multiplied: the pair differences of
    ``x[:, None] - x[None, :]`` (lennard_jones) gave a dense [48, 12] partial of -1s."""
    entries_out, entries_in = math.prod(out_shape), math.prod(in_shape)
    if (entries_in <= 1 or not is_broadcast(operand_shape, result_shape)
            or entries_out * entries_in > PATTERN_AT_TRACE_TIME_MAX):
        return None
    values = _at_trace_time(weight, entries_out)
    if not isinstance(values, np.ndarray):
        return None
    values = np.asarray(values, np.dtype(dtype)).reshape(*out_shape, 1, 1)
    if values.size and np.all(values == values.flat[0]):
        values = values.reshape(-1)[:1].reshape(1, 1, 1, 1)  # one number: it varies along no axis a map meets
    pattern = broadcast_pattern(operand_shape, result_shape).astype(np.dtype(dtype))
    return Partial(1, out_shape, in_shape, Placed((Term(pattern.reshape(*out_shape, *in_shape), values),)))


def is_broadcast(operand_shape: tuple, result_shape: tuple) -> bool:
    """Whether an operand of `operand_shape` is broadcast to `result_shape` along size-1 axes (and
    is not the result's shape itself)."""
    operand_shape, result_shape = tuple(operand_shape), tuple(result_shape)
    return (operand_shape != result_shape and len(operand_shape) == len(result_shape)
            and all(n in (1, m) for n, m in zip(operand_shape, result_shape)))


def broadcast_pattern(operand_shape: tuple, result_shape: tuple) -> np.ndarray:
    """bool [result entries, operand entries]: which operand entry each result entry is, for an
    operand broadcast to `result_shape` along size-1 axes (`is_broadcast`)."""
    entries_out, entries_in = math.prod(result_shape), math.prod(operand_shape)
    source = np.broadcast_to(np.arange(entries_in).reshape(operand_shape), tuple(result_shape)).reshape(-1)
    pattern = np.zeros((entries_out, entries_in), bool)
    pattern[np.arange(entries_out), source] = True
    return pattern


#: Whether `_placed` merges the terms that share a pattern (False: the terms as they come, for A/B
#: measurements).
MERGE_PLACED_TERMS = True


def _merged(terms: list[Term]) -> list[Term]:
    """`terms` with those of one pattern (equal NumPy arrays, or the same traced array) and weights
    of nested shapes (a scalar and a weight per column, two per column: the sum's shape is one of
    theirs) as one term whose weight is their sum, at the first one's place. P w1 + P w2 = P (w1 + w2)
    on P's support, and both are exactly zero off it, so the numbers are those of the sum of the
    terms (up to the order of the additions). A reverse sweep through a stencil adds the terms of
    each shift once per path: van_leer_advection's [16, 16] partials held 9-16 terms of 3 patterns,
    each materialised term a select per entry (and per reading fusion). Weights of unrelated shapes
    (per row and per column) stay apart: their sum would vary along both sides, which an index map
    composing with the term then splits entry by entry."""
    if not MERGE_PLACED_TERMS or len(terms) < 2:
        return terms
    merged: list[Term] = []
    at: dict[Any, int] = {}
    for term in terms:
        pattern = term.pattern
        key = ((np.shape(pattern), np.asarray(pattern).dtype.str, pattern.tobytes())
               if isinstance(pattern, np.ndarray) else id(pattern))
        k = at.get(key)
        if k is not None:
            first = merged[k]
            shapes = [(1,) * (4 - np.ndim(w)) + tuple(np.shape(w)) if w is not None else (1, 1, 1, 1)
                      for w in (first.weight, term.weight)]
            joint = np.broadcast_shapes(*shapes)
            if joint in shapes and (isinstance(pattern, np.ndarray) or first.pattern is pattern):
                one = np.ones((), pattern.dtype)
                a = one if first.weight is None else first.weight
                b = one if term.weight is None else term.weight
                merged[k] = Term(first.pattern, jnp.reshape(a + b, joint) if not all(
                    isinstance(w, np.ndarray) for w in (a, b)) else np.reshape(a + b, joint))
                continue
        at[key] = len(merged)
        merged.append(term)
    return merged


def _placed(out_shape: Shape2D, in_shape: Shape2D, terms, dtype) -> Partial:
    """A dense partial of these terms: `Placed` while they are few, else materialised."""
    shape = (*out_shape, *in_shape)
    terms = _merged([t if t.weight is None else t._replace(weight=_in_pattern_split(t.weight, shape)) for t in terms])
    value = Placed(tuple(terms))
    if len(terms) > PLACED_MAX_TERMS:
        value = _materialise(value, (*out_shape, *in_shape), dtype)
    return Partial(1, out_shape, in_shape, value)


def _unplaced(partial: Partial, dtype) -> Partial:
    """`partial` with a `Placed` value materialised."""
    if isinstance(partial.value, Placed):
        return partial._replace(value=densify(partial, dtype))
    return partial


def _terms(partial: Partial, dtype) -> list[Term] | None:
    """`partial` as `Term`s (index maps, identities, permutations times weights, `Placed`), or None."""
    if isinstance(partial.value, Labelled):
        return None
    if isinstance(partial.value, Placed):
        return list(partial.value.terms)
    if partial.code in VALUELESS:
        return [Term(_permutation_pattern(partial.code, partial.out_shape, partial.in_shape, dtype), None)]
    if partial.code == INDEX_MAP:
        return [Term(densify(partial, dtype), None)]
    if _paired(partial.code) is not None:
        pattern = _permutation_pattern(_permutation_code(partial.code), partial.out_shape, partial.in_shape, dtype)
        return [Term(pattern, _weights(partial, "out", dtype)[:, :, None, None])]
    return None


def _permutation_pattern(code: int, out_shape: Shape2D, in_shape: Shape2D, dtype) -> np.ndarray:
    """The [v1, v2, p1, p2] tensor of a value-less (permutation) code as a numpy constant (traced
    jnp.eye masks are not folded by XLA: they were recomputed in every entry of the fused loop)."""
    sizes = _position_sizes(out_shape, in_shape)
    full = np.ones((*out_shape, *in_shape), dtype)
    for a, b, _ in structure_of(code).ties:
        shape = [1, 1, 1, 1]
        shape[a - 1], shape[b - 1] = sizes[a], sizes[b]
        full = full * np.eye(sizes[a], sizes[b], dtype=dtype).reshape(shape)
    return full


#: Where a map known only at run time (a scatter-add onto receivers passed as an argument) meets
#: the entries along which a term's weight varies, the split terms' patterns are computed per
#: example, each of the moved size: more than RUN_TIME_SPLIT_MAX parts cost more than the product
#: materialised and moved once (message_passing at batch 256: 15 parts of [4, 3, 4, 3] scattered,
#: 2,160 entries per example, against the [5, 3, 4, 3] product moved). None: always split.
RUN_TIME_SPLIT_MAX: int | None = 2


def _varies(weight, axes) -> bool:
    """Whether a term's weight varies along any of these of its axes."""
    return weight is not None and any(np.shape(weight)[a] != 1 for a in axes)


def _in_pattern_split(weight, shape: tuple) -> Any:
    """A term's `weight` [4] laid out as its pattern's `shape` splits each side: a vertex's entries
    are one flat axis, split in two as each partial's normalised shape says, and a weight read off
    a partial of another split (``jnp.trace`` of a [2, 2, 2, 2] broadcast reshaped to [4, 4]: the
    weight [1, 1, 4, 4] of a pattern [1, 1, 2, 8]) is the same entries in the same order."""
    if weight is None:
        return weight
    wshape = list(np.shape(weight))
    for side in (0, 2):
        pair, wanted = wshape[side:side + 2], list(shape[side:side + 2])
        if pair == wanted or all(n in (1, m) for n, m in zip(pair, wanted)) or math.prod(pair) == 1:
            continue
        if math.prod(pair) != math.prod(wanted):
            raise AlphagradError(f"internal error: a weight of shape {tuple(np.shape(weight))} for a pattern "
                                 f"of shape {shape}")
        wshape[side:side + 2] = wanted
    return weight if wshape == list(np.shape(weight)) else jnp.reshape(weight, wshape)


def _split(term: Term, axes: tuple[int, int]) -> tuple[np.ndarray, list]:
    """`term` as one term per entry of its `axes` (0, 1: its rows; 2, 3: its columns): the masks
    [entries, ...] that keep its pattern at one entry each (broadcastable against the pattern's [4]
    shape after the leading axis), and the weight of each entry (size 1 along `axes`)."""
    shape = np.shape(term.pattern)
    weight = _in_pattern_split(term.weight, shape)
    weight = jnp.broadcast_to(weight, [shape[a] if a in axes else n for a, n in enumerate(np.shape(weight))])
    mask_shape = [shape[a] if a in axes else 1 for a in range(4)]
    masks, weights = [], []
    for i in range(shape[axes[0]]):
        for j in range(shape[axes[1]]):
            index = [slice(None)] * 4
            index[axes[0]], index[axes[1]] = slice(i, i + 1), slice(j, j + 1)
            mask = np.zeros(mask_shape, bool)
            mask[tuple(index)] = True
            masks.append(mask)
            weights.append(weight[tuple(index)])
    return np.stack(masks) if masks else np.zeros((0, *mask_shape), bool), weights


def _map_terms(the_map: IndexMap, terms: list[Term], shape, after: bool) -> list[Term] | None:
    """(map v->c) @ the sum of `terms` (p->v) where `after`, else the sum of `terms` (v->c) @ (map
    p->v), as terms; None where too many would be needed. `shape` is the terms' [4] shape."""
    axes = (0, 1) if after else (2, 3)  # the terms' axes the map meets

    def moved(pattern):
        return _apply_on_v(the_map, pattern) if after else _apply_on_p(pattern, the_map)

    def moved_numpy(patterns):  # jax.vmap(moved)(patterns) while tracing (`_moved_numpy`)
        return _moved_numpy(the_map, patterns, after)

    entries = math.prod(shape)  # the moved patterns' size is about that of those they are moved from
    groups, weights, done = [], [], []  # groups: (pattern, masks of its split entries or None)
    for term in terms:
        if _varies(term.weight, axes):
            reindexed = _reindexed(term, moved, axes, shape, moved_numpy)
            if reindexed is not None:
                done.append(reindexed)
                continue
            if shape[axes[0]] * shape[axes[1]] > PLACED_SPLIT_MAX:
                return None
            masks, entry_weights = _split(term, axes)
            groups.append((term.pattern, masks))
            weights += entry_weights
        else:
            groups.append((term.pattern, None))
            weights.append(term.weight)
    if len(weights) + len(done) > PLACED_MAX_TERMS:
        return None
    if not weights:
        return done
    if len(groups) == 1 and groups[0][1] is None:  # one part: nothing to mask or stack
        pattern = groups[0][0]
        return done + [Term(_at_trace_time(lambda: moved(pattern), entries, lambda: _first(
            moved_numpy(pattern[None] if isinstance(pattern, np.ndarray) and pattern.ndim == 4 else None))),
            weights[0])]

    def stacked():
        # A split term's entries are masked in one operation (not one per entry, then stacked), and
        # the map moves every part's pattern in one vmapped application: where its indices are known
        # only at run time (a scatter-add onto receivers passed as an argument), a few kernels
        # instead of a few per part (message_passing: 57 -> 31 kernels at batch 256 by the vmapped
        # map, 31 -> 15 by the masking). Where the indices are constants XLA folds the patterns
        # either way.
        pieces = []
        for pattern, masks in groups:
            full = jnp.broadcast_to(pattern, shape)[None]
            pieces.append(full if masks is None else jnp.where(masks, full, jnp.zeros((), full.dtype)))
        return jax.vmap(moved)(pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces))

    def stacked_numpy():  # the same parts masked and stacked in NumPy, then moved (`_moved_numpy`)
        if not all(isinstance(pattern, np.ndarray) for pattern, _ in groups):
            return None
        if len({pattern.dtype for pattern, _ in groups}) != 1:
            return None  # (jnp.concatenate would promote)
        pieces = []
        for pattern, masks in groups:
            full = np.broadcast_to(pattern, shape)[None]
            pieces.append(full if masks is None else np.where(masks, full, np.zeros((), full.dtype)))
        return moved_numpy(np.concatenate(pieces))

    patterns = _at_trace_time(stacked, len(weights) * entries, stacked_numpy)
    if (RUN_TIME_SPLIT_MAX is not None and not isinstance(patterns, np.ndarray) and len(weights) > RUN_TIME_SPLIT_MAX
            and any(masks is not None for _, masks in groups)):
        return None  # (the product materialised, then moved: `patterns` is not used, and XLA drops it)
    return done + [Term(pattern, weight) for pattern, weight in zip(patterns, weights)]


def _reindexed(term: Term, moved: Callable, axes: tuple[int, int], shape,
               moved_numpy: Callable | None = None) -> Term | None:
    """`term` moved by an index map that meets the axes along which its weight varies (`axes` of
    its [4] `shape`), as one term whose weight is the old one reshaped, where every entry of the
    moved pattern comes from a single entry of those axes and the weight read there keeps its order
    (a sum over a broadcast's copies); else None (the term is split per entry, or materialised).

    (M diag(w) P)[c, p] = M[c, v] w[v] P[v, p] for the single v that reaches (c, p): the weight at
    (c, p) is w[v(c, p)], an array of the moved shape that is constant along the axes on which v
    (and the weight's other axes) do not depend, so it keeps size 1 there. lennard_jones's squared
    pair differences summed over the coordinate axis: a [4, 4 | 4, 3] term weighted by the
    differences as [4, 4, 1, 3], where the sum was materialised as [4, 12 | 4, 3] and moved through
    a transposing copy per example (peer/auto 0.22 -> 0.48 at batch 32,768). A weight read in another
    order would need a gather per example under a vmap, which ran slower than the split
    (embed_and_pool at batch 32,768: 1.6x), so it is not taken.
    """
    pattern = term.pattern
    sides, entries = shape[axes[0]] * shape[axes[1]], math.prod(shape)
    if not isinstance(pattern, np.ndarray) or 0 in shape or sides * entries > PATTERN_AT_TRACE_TIME_MAX:
        return None
    full = np.broadcast_to(pattern, shape)
    # The support restricted to each single entry of the axes the map meets, moved: which entries
    # of those axes reach each moved entry (0/1 sums of small integers: exact in any float dtype).
    one_hot_shape = [sides, 1, 1, 1, 1]
    one_hot_shape[1 + axes[0]], one_hot_shape[1 + axes[1]] = shape[axes[0]], shape[axes[1]]
    one_hot = np.eye(sides, dtype=full.dtype).reshape(one_hot_shape)
    by_entry = (full != 0).astype(full.dtype)[None] * one_hot
    moved_now = moved_numpy or (lambda _: None)  # (`_moved_numpy`: the same arrays while tracing)
    moved_pattern = _at_trace_time(lambda: moved(full), entries, lambda: _first(moved_now(full[None])))
    reaching = _at_trace_time(lambda: jax.vmap(moved)(by_entry), sides * entries, lambda: moved_now(by_entry))
    if not isinstance(moved_pattern, np.ndarray) or not isinstance(reaching, np.ndarray) or moved_pattern.size == 0:
        return None
    hits = reaching != 0
    if np.any(hits.sum(axis=0) > 1):  # several weighted entries add into one moved entry
        return None
    reached = hits.any(axis=0)
    v = np.where(reached, hits.argmax(axis=0), -1)
    # Index of the old weight read at each moved entry, -1 where nothing is.
    weight = jnp.asarray(term.weight)
    weight_shape = (1,) * (4 - weight.ndim) + tuple(weight.shape)
    out_shape = moved_pattern.shape
    grids = list(np.indices(out_shape, sparse=True))
    grids[axes[0]], grids[axes[1]] = np.unravel_index(np.maximum(v, 0), (shape[axes[0]], shape[axes[1]]))
    index = np.ravel_multi_index(
        [np.broadcast_to(g, out_shape) if n > 1 else np.zeros(out_shape, np.int64)
         for g, n in zip(grids, weight_shape)], weight_shape)
    index = np.where(reached, index, -1)
    # The weight is taken as a reshape only: some choice of axes of size 1 (those the read index does
    # not vary on where reached; on the support two axes may carry the same index, a broadcast copy:
    # c1 == p1) must leave the old weight's entries in order. A gather per example under a vmap ran
    # slower than the split or the dense product.
    for dropped in itertools.product((False, True), repeat=4):
        kept = index
        for axis in (a for a in range(4) if dropped[a]):
            kept = kept.max(axis=axis, keepdims=True)
        if (kept.size == math.prod(weight_shape) and np.array_equal(kept.reshape(-1), np.arange(kept.size))
                and np.array_equal(np.where(reached, index, 0), np.where(reached, np.broadcast_to(kept, index.shape), 0))):
            return Term(moved_pattern, weight.reshape(kept.shape))
    return None


def _is_scalar_row(partial: Partial, v_shape: Shape2D) -> bool:
    """Whether `partial` is a dense partial (a plain value array) whose side on the shared vertex v has
    a single entry: its product with a `Placed` partial scales each term by it (an outer product)."""
    return (partial.code == 1 and math.prod(v_shape) == 1 and partial.value is not None
            and not isinstance(partial.value, (Placed, Labelled)))


def _scaled_terms(out: Partial, inp: Partial, placed_out: bool, dtype) -> list[Term]:
    """out @ inp as terms, where v has a single entry and the partial that is not `Placed` is dense:
    every term's pattern is broadcast over the dense side's entries, its weight multiplied by them
    (a [c, 1] x [1, p] outer product, kept lazy: reverse mode through a division by a constant
    reaches a stencil's index maps this way, burgers_upwind's, which a materialised product turned
    into dense [7, 7] blocks)."""
    c_shape, p_shape = out.out_shape, inp.in_shape
    full = (*c_shape, *p_shape)
    if placed_out:  # terms (v->c) [c1, c2, 1, 1] times the row [1, 1, p1, p2]
        extra, terms = jnp.asarray(inp.value, dtype).reshape(1, 1, *p_shape), out.value.terms
    else:  # the column [c1, c2, 1, 1] times terms (p->v) [1, 1, p1, p2]
        extra, terms = jnp.asarray(out.value, dtype).reshape(*c_shape, 1, 1), inp.value.terms
    done = []
    for term in terms:
        pattern = term.pattern
        pattern = (np.broadcast_to(pattern, full) if isinstance(pattern, np.ndarray)
                   else jnp.broadcast_to(pattern, full))
        done.append(Term(pattern, extra if term.weight is None else term.weight * extra))
    return done


def _through_one_entry(out: Partial, inp: Partial, dtype) -> list[Term] | None:
    """out @ inp as one term where one is an index map whose matrix is known while tracing and the
    other a dense partial whose side on v (a single entry) is shared: the map's matrix broadcast
    over the dense side's entries, weighted by them (`_scaled_terms`). A reverse sweep reaches each
    scalar parameter ``x[k]`` this way; the columns stay lazy, and their sum is written column by
    column (`_materialise_by_slabs`), where a pad per column summed made XLA evaluate every column
    at every entry (osborne2: 11 columns, each with its exponentials). None where the matrix
    depends on run-time indices."""
    the_map = inp if inp.code == INDEX_MAP else out
    pattern = densify(the_map, dtype)
    if not isinstance(pattern, np.ndarray):
        return None
    lazy = the_map._replace(code=1, value=Placed((Term(pattern, None),)))
    if the_map is inp:
        return _scaled_terms(out, lazy, False, dtype)
    return _scaled_terms(lazy, inp, True, dtype)


def _weighted_terms(out: Partial, inp: Partial, dtype) -> list[Term] | None:
    """out @ inp as terms where one is `Placed` and the other a permutation times weights (or an
    identity): the permutation moves the patterns (and weights), the weights multiply the terms'."""
    placed_out = isinstance(out.value, Placed)
    other = inp if placed_out else out
    if _is_scalar_row(other, out.in_shape):
        return _scaled_terms(out, inp, placed_out, dtype)
    if not (other.code in VALUELESS or _paired(other.code) is not None):
        return None
    permutation_code = other.code if other.code in VALUELESS else _permutation_code(other.code)
    transposes = permutation_code == -7
    c_shape, p_shape = out.out_shape, inp.in_shape
    if other.code in VALUELESS:
        extra = None
    elif placed_out:
        extra = _weights(other, "in", dtype)[None, None]
    else:
        extra = _weights(other, "out", dtype)[:, :, None, None]
    permutation = _identity_map(permutation_code, *((other.out_shape, other.in_shape)))
    done = []
    for term in (out.value if placed_out else inp.value).terms:
        weight = term.weight
        entries = math.prod(c_shape) * math.prod(p_shape)
        if placed_out:  # term (v->c) @ (permutation p->v) * weights on p
            pattern = _at_trace_time(lambda: _apply_on_p(term.pattern, permutation), entries,
                                     lambda: _permuted_numpy(term.pattern, transposes, other.in_shape, False))
            if transposes and _varies(weight, (2, 3)):
                weight = jnp.transpose(weight, (0, 1, 3, 2))
        else:  # weights on c * (permutation v->c) @ term (p->v)
            pattern = _at_trace_time(lambda: _apply_on_v(permutation, term.pattern), entries,
                                     lambda: _permuted_numpy(term.pattern, transposes, other.out_shape, True))
            if transposes and _varies(weight, (0, 1)):
                weight = jnp.transpose(weight, (1, 0, 2, 3))
        if extra is not None:
            weight = extra if weight is None else weight * extra
        done.append(Term(pattern.reshape(*c_shape, *p_shape), weight))
    return done


def _permuted_numpy(pattern, transposes: bool, to_shape: Shape2D, on_v: bool) -> np.ndarray | None:
    """A NumPy `pattern` moved by `_identity_map`'s permutation (transposing where `transposes`)
    to `to_shape`, in NumPy: ``_apply_on_v(permutation, pattern)`` where `on_v` (its [v1, v2] axes
    become `to_shape`), else ``_apply_on_p(pattern, permutation)`` (its last two axes), with the
    same values, shape and dtype (JAX's canonical one: float64 only under x64). None where the
    pattern is not such a NumPy array (traced: `_at_trace_time` goes on as usual)."""
    if not isinstance(pattern, np.ndarray) or np.ndim(pattern) != 4:
        return None
    if pattern.dtype != jax.dtypes.canonicalize_dtype(pattern.dtype):
        return None  # (JAX would convert it; left to the traced path)
    a1, a2, b1, b2 = pattern.shape
    if on_v:  # _apply_on_v: the [v1, v2] slices of each column [p1, p2] moved
        moved = np.moveaxis(pattern, (2, 3), (0, 1)).reshape(b1 * b2, a1, a2)
    else:  # _apply_on_p: the [v1, v2] slices of each row [c1, c2] moved
        moved = pattern.reshape(a1 * a2, b1, b2)
    if math.prod(moved.shape[1:]) != math.prod(to_shape):
        return None  # (the traced path raises as before)
    if transposes:
        moved = moved.transpose(0, 2, 1)
    if on_v:
        moved = np.moveaxis(moved.reshape(b1, b2, *to_shape), (0, 1), (2, 3))
    else:
        moved = moved.reshape(a1, a2, *to_shape)
    return np.array(moved)  # a copy: never a view of the term's pattern


#: Most points of the joint index space (c x v x p) of a product whose result's support is
#: computed while tracing (`_product_support`, one NumPy matrix product).
SUPPORT_PRODUCT_MAX = 2**24
#: Whether products keep a dense factor's structural zeros away from infinite partials
#: (`_zeros_meeting_poles`); False gives the plain products (for A/B measurements).
KEEP_STRUCTURAL_ZEROS = True


def _support(partial: Partial) -> np.ndarray | None:
    """The [v1, v2, p1, p2] entries `partial` can hold (bool, NumPy): those of its code's ties, its
    labelled ties, its index map's matrix or its `Placed` patterns; None where that is known only
    at run time (a map at indices passed as arguments) or has more than PATTERN_AT_TRACE_TIME_MAX
    entries."""
    shape = (*partial.out_shape, *partial.in_shape)
    entries = math.prod(shape)
    if partial.support is not None:
        return partial.support
    if entries > PATTERN_AT_TRACE_TIME_MAX:
        return None
    if isinstance(partial.value, Placed):
        if not all(isinstance(t.pattern, np.ndarray) for t in partial.value.terms):
            return None
        found = np.zeros(shape, bool)
        for term in partial.value.terms:
            found |= np.broadcast_to(term.pattern, shape) != 0
        return found
    if isinstance(partial.value, Labelled):
        ones = partial.value._replace(values=None)  # its ties' selections and broadcasts of ones
        matrix = _at_trace_time(lambda: densify_labelled(ones, jnp.float32), entries)
    elif partial.code == INDEX_MAP:
        matrix = densify(partial, jnp.float32)
    elif partial.code == 1 or partial.code >= FIRST_EXTENDED_CODE:
        return np.ones(shape, bool)
    else:
        out, inp, _ = support(partial.code, tuple(partial.out_shape), tuple(partial.in_shape))
        found = np.zeros((math.prod(partial.out_shape), math.prod(partial.in_shape)), bool)
        found[out, inp] = True
        return found.reshape(shape)
    return np.asarray(matrix).reshape(shape) != 0 if isinstance(matrix, np.ndarray) else None


def _product_support(out: Partial, inp: Partial, supports: Callable[[], tuple]):
    """The entries of out(v->c) @ in(p->v) that some pair of entries the factors can hold reaches
    (bool, NumPy; a `RunTimeSupport` where a factor's is one), or None where a factor's support is
    unknown. `supports()`: the factors' `_support`s (computed once per product for this and
    `_zeros_meeting_poles`)."""
    c, v, p = (math.prod(s) for s in (out.out_shape, out.in_shape, inp.in_shape))
    if c * p > PATTERN_AT_TRACE_TIME_MAX or c * v * p > SUPPORT_PRODUCT_MAX:
        return None
    held_out, held_in = supports()
    if held_out is None or held_in is None:
        return None
    shape = (*out.out_shape, *inp.in_shape)
    if isinstance(held_out, RunTimeSupport) and held_out.static is not None and isinstance(held_in, np.ndarray):
        static = (held_out.static.reshape(c, v).astype(np.float32) @ held_in.reshape(v, p).astype(np.float32)) > 0
        rows = held_out.rows
        return RunTimeSupport(lambda: (jnp.reshape(rows(), (c, 1)) & static).reshape(shape), rows=rows,
                              static=static.reshape(shape))
    diagonal_out, diagonal_in = (held.diagonal if isinstance(held, RunTimeSupport) else None
                                 for held in (held_out, held_in))
    if diagonal_out is not None and diagonal_in is not None:  # two elementwise factors
        return RunTimeSupport(lambda: _diagonal_support(diagonal_out() & diagonal_in(), shape),
                              diagonal=lambda: diagonal_out() & diagonal_in())
    if diagonal_out is not None:
        # An elementwise factor's support (a select's case): its entries of the other's rows.
        return RunTimeSupport(lambda: (jnp.reshape(diagonal_out(), (c, 1))
                                       & jnp.reshape(_as_bool_array(held_in), (v, p))).reshape(shape))
    if diagonal_in is not None:
        return RunTimeSupport(lambda: (jnp.reshape(_as_bool_array(held_out), (c, v))
                                       & jnp.reshape(diagonal_in(), (1, v))).reshape(shape))
    pull = getattr(held_in, "pull", None)
    if pull is not None:
        # A run-time index map that pulls rows back by its own selections (a max-pool's choice,
        # `_windows.WindowChoiceMap.pull_support`): out's rows through it, no [v, p] array and no
        # matmul of 0/1 values (cnn_pool: [16, 64] @ [64, 100] per example, run as a transposed
        # copy and a matmul of [64, batch * 100], about half of its "auto" Jacobian's time).
        return RunTimeSupport(lambda: jnp.reshape(pull(jnp.reshape(_as_bool_array(held_out), (c, v))), shape))
    if isinstance(held_out, RunTimeSupport) or isinstance(held_in, RunTimeSupport):
        # Known at run time: computed only where a later product asks (a [c, v] @ [v, p] matmul of
        # 0/1 values).
        return RunTimeSupport(lambda: (jnp.reshape(_as_bool_array(held_out), (c, v)).astype(jnp.float32)
                                       @ jnp.reshape(_as_bool_array(held_in), (v, p)).astype(jnp.float32)
                                       > 0).reshape(shape))
    if v and held_out.all() and held_in.all():
        return np.ones(shape, bool)
    reached = (held_out.reshape(c, v).astype(np.float32) @ held_in.reshape(v, p).astype(np.float32)) > 0
    return reached.reshape(shape)


def _diagonal_support(diagonal, shape) -> jax.Array:
    """The support [v1, v2, v1, v2] (`shape`) of an elementwise partial holding `diagonal` ([v1, v2])."""
    n = math.prod(shape[:2])
    return (jnp.asarray(np.eye(n, dtype=bool)) & jnp.reshape(diagonal, (1, n))).reshape(shape)


def _keeping_zeros(partial: Partial, support: Callable[[], np.ndarray | None], explicit: bool = False) -> Partial:
    """`partial`, with its structural support (`support()`, known while tracing) kept where it is a
    plain dense array with structural zeros (`Partial.support`): a later product with it as the
    factor nearer the outputs multiplies those zeros (`_zeros_meeting_poles`). `explicit`: a factor
    or term held a support of its own (a select's case: zeros among its values; a run-time index
    map's entries, kept through the maps composed with it), kept whatever the code, as the code's
    ties alone do not say where those zeros are."""
    if (not KEEP_STRUCTURAL_ZEROS or (partial.code != 1 and not explicit) or partial.value is None
            or (isinstance(partial.value, (IndexMap, Placed, Labelled)) and not explicit)):
        return partial
    held = support()
    if held is None or (not isinstance(held, RunTimeSupport) and held.all()):
        return partial
    return partial._replace(support=held)


def _zeros_meeting_poles(out: Partial, inp: Partial, supports: Callable[[], tuple]):
    """out's support ([c, v] bool: NumPy, or traced where it is a `RunTimeSupport`) where
    out(v->c) @ in(p->v) pairs a structural zero of a dense `out` with an entry of `in` that may be
    infinite (`Partial.finite`); else None. `supports()`: the factors' `_support`s, as for
    `_product_support`.

    Such a term is NaN (0 x inf), and the sum it enters reaches row c, which jax.jacfwd keeps
    finite: row c reads nothing of vertex entry v there, and jax.jacfwd's NaN stays in the rows
    reachable from a pole (a derivative's infinity: sqrt's at 0). A structured factor's ties pair
    values alone, and an infinite entry of `out` at (c, v) lies on a path from a pole to c."""
    if (not KEEP_STRUCTURAL_ZEROS or (out.code != 1 and out.support is None) or inp.finite or inp.value is None
            or isinstance(inp.value, IndexMap) or (isinstance(inp.value, Labelled) and inp.value.values is None)):
        return None  # a partial without values moves data: nothing in it is infinite
    c, v, p = (math.prod(s) for s in (out.out_shape, out.in_shape, inp.in_shape))
    if c * v * p > SUPPORT_PRODUCT_MAX:
        return None
    held_out, held_in = supports()
    if held_out is None or held_in is None:
        return None
    if isinstance(held_out, RunTimeSupport):
        return jnp.reshape(held_out(), (c, v))
    if held_out.all():
        return None
    if isinstance(held_in, RunTimeSupport):
        return held_out.reshape(c, v)
    zeros = 1 - held_out.reshape(c, v).astype(np.float32)
    if not np.any((zeros @ held_in.reshape(v, p).astype(np.float32)) > 0):
        return None
    return held_out.reshape(c, v)


def _finite_part(partial: Partial, dtype) -> Partial:
    """`partial` with every entry that is not finite set to 0 (selects on its value array)."""
    def finite(x):
        x = jnp.asarray(x, dtype)
        return jnp.where(jnp.isfinite(x), x, jnp.zeros((), dtype))

    value = partial.value
    if value is None or isinstance(value, IndexMap):
        return partial
    if isinstance(value, Labelled):
        value = value if value.values is None else value._replace(values=finite(value.values))
    elif isinstance(value, Placed):
        value = Placed(tuple(t if t.weight is None else t._replace(weight=finite(t.weight)) for t in value.terms))
    else:
        value = finite(value)
    return partial._replace(value=value)


def _poles_of(partial: Partial, dtype) -> Partial:
    """`partial` with each entry of its value array 1 where it is not finite, else 0 (same code)."""
    def poles(x):
        return (~jnp.isfinite(jnp.asarray(x, dtype))).astype(dtype)

    value = partial.value
    if isinstance(value, Labelled):
        value = value._replace(values=poles(value.values))
    elif isinstance(value, Placed):
        value = Placed(tuple(t._replace(weight=poles(t.weight)) for t in value.terms if t.weight is not None))
    else:
        value = poles(value)
    return partial._replace(value=value, finite=True)


def _poles_kept(product: Partial, out: Partial, held_out, inp: Partial, code: int, dtype) -> Partial:
    """`product` (of `out` and `in`'s finite part) with NaN where a pair of entries out can hold
    (`held_out`, [c, v], NumPy or traced) and in's entries that are not finite meet: jax.jacfwd's
    NaN, without the terms that pair out's structural zeros with them. The pairs are found by the
    same product of out's support and in's poles (0/1 indicators, in in's own structure:
    elementwise for a diagonal); bookkeeping, not a product of partials, so the cost model does
    not count it."""
    met = _poles_met(out, held_out, inp, dtype, code)
    value = jnp.where(met, jnp.asarray(jnp.nan, dtype), densify(product, dtype))
    return Partial(1, product.out_shape, product.in_shape, value)


def _tied_poles_kept(product: Partial, out: Partial, held_out, inp: Partial, code: int, dtype) -> Partial | None:
    """`_poles_kept` in the product's own layout where `out` and the product have codes described by
    ties (a diagonal, a Kronecker block...): out's support read into out's value layout, times in's
    poles as the same structured product, NaN where it is positive; no dense tensor. None where a
    layout does not allow it (the dense `_poles_kept` then)."""
    if (out.code not in _TIED_CODES or code not in _TIED_CODES or code in VALUELESS or out.code in VALUELESS
            or not isinstance(product.value, (jax.Array, np.ndarray))
            or any(kind == "K" for c in (out.code, code) for _, _, kind in structure_of(c).ties)):
        return None  # (a Kronecker tie's one value stands for a whole diagonal: not a support's layout)
    held = jnp.reshape(held_out, (*out.out_shape, *out.in_shape)).astype(dtype)
    support = Partial(out.code, out.out_shape, out.in_shape, extract(held, out.code))
    met = _multiply(support, _poles_of(inp, dtype), code, MultiplicationCounter(), dtype)
    if met.code != code or not isinstance(met.value, (jax.Array, np.ndarray)) or np.shape(met.value) != np.shape(product.value):
        return None
    return product._replace(value=jnp.where(met.value > 0, jnp.asarray(jnp.nan, dtype), product.value))


def _poles_met(out: Partial, held_out, inp: Partial, dtype, code: int = 1) -> jax.Array:
    """Where out's support (`held_out`, [c, v]) meets in's entries that are not finite: bool
    [c1, c2, p1, p2] (a product of 0/1 indicators laid out as `code`, in in's own structure:
    elementwise for a diagonal; bookkeeping, not counted)."""
    held = held_out.reshape(*out.out_shape, *out.in_shape)
    support = Partial(1, out.out_shape, out.in_shape, held.astype(np.dtype(dtype)))
    met = _multiply(support, _poles_of(inp, dtype), code, MultiplicationCounter(), dtype)
    return densify(met, dtype).reshape(*out.out_shape, *inp.in_shape) > 0


def _labelled_poles_kept(product: Partial, out: Partial, held_out, inp: Partial, dtype) -> Partial:
    """`_poles_kept` for a labelled `product`: NaN in each entry of its value array that stands
    for an entry where out's support meets in's poles (`_poles_met`, read at the value array's
    layout by one einsum: a tie's two axes share a letter, a Kronecker-tied axis is summed), the
    product keeping its labelled structure."""
    value = product.value
    ties = value.ties
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    out_letters = [next(letters) for _ in value.out_dims]
    tied = {i: o for o, i, _ in ties.ties}
    in_letters = [out_letters[tied[i]] if i in tied else next(letters) for i in range(len(value.in_dims))]
    wanted = "".join(out_letters[k] if side == "out" else in_letters[k] for side, k in ties.value_axes)
    met = _poles_met(out, held_out, inp, dtype).reshape(*value.out_dims, *value.in_dims).astype(np.dtype(dtype))
    at_values = jnp.einsum(f"{''.join(out_letters + in_letters)}->{wanted}", met) > 0
    values = jnp.broadcast_to(jnp.asarray(value.values, dtype), at_values.shape)
    return product._replace(value=value._replace(values=jnp.where(at_values, jnp.asarray(jnp.nan, dtype), values)))


def _apply_on_v(out_map: IndexMap, dense_in: jax.Array) -> jax.Array:
    """(map v->c) @ dense [v1, v2, p1, p2] -> [c1, c2, p1, p2]."""
    v1, v2, p1, p2 = dense_in.shape
    columns = jnp.moveaxis(dense_in, (2, 3), (0, 1)).reshape(p1 * p2, v1, v2)
    mapped = jax.vmap(out_map.apply)(columns)  # [p1*p2, c1, c2]
    c1, c2 = mapped.shape[1:]
    return jnp.moveaxis(mapped.reshape(p1, p2, c1, c2), (0, 1), (2, 3))


def _apply_on_p(dense_out: jax.Array, in_map: IndexMap) -> jax.Array:
    """dense [c1, c2, v1, v2] @ (map p->v) -> [c1, c2, p1, p2]."""
    c1, c2, v1, v2 = dense_out.shape
    rows = dense_out.reshape(c1 * c2, v1, v2)
    pulled = jax.vmap(in_map.transpose)(rows)  # [c1*c2, p1, p2]
    return pulled.reshape(c1, c2, *pulled.shape[1:])


#: Matrix products (each operand has a kept index of its own) whose summed indices have at most
#: UNROLL_CONTRACTION joint entries and whose joint index space has at most UNROLL_JOINT points are
#: written as a sum of broadcast products (one per summed entry), which XLA fuses into one
#: elementwise loop. Under vmap a dot_general of such small matrices becomes a batched matmul, which
#: XLA:CPU runs 3-75x slower at batch 32,768 ([27,3]x[3,3]: 17 ms against 0.8 ms; [4,4]x[4,4]: 25
#: against 0.33 ms; [16,16]x[16,16]: 49 against 16 ms; 2 CPU cores). Larger ones keep dot_general
#: (one BLAS call beats an elementwise loop there), and so do matrix-vector and dot products: alone
#: they are only up to 2x slower as a dot_general, and a dot_general's operands are computed once,
#: where a fused sum lets XLA recompute an expensive operand in every consumer (RoeFlux_3d's
#: [3]-vector dot products unrolled: 1.3x slower at batch 32,768). Same multiplications; the
#: additions run in another order. Capped at 9 summed entries (3x3 matrices contracted over both
#: indices, as eigh's and cholesky's rules do): at 64 the Encoder task's test (jacfwd and five
#: orders in one jit) compiled 2.5x slower than before the rewrite (36 against 14 s), at 16 38 s,
#: at 9 24 s.
UNROLL_CONTRACTION = 9
UNROLL_JOINT = 2**14
#: Under a smaller vmap (fewer than KEEP_PRODUCTS_MIN_BATCH examples, or none) the joint space is
#: capped at UNROLL_JOINT_SMALL_BATCH: at batch 256 the unrolled sum lost to dot_general on larger
#: joints (A/B in one process: padded_attention, joints 768-6,144, 3.6 -> 1.8 ms; layer_norm, 3,456,
#: 0.94 -> 0.40 ms; dh_chain, 576, 1.23 -> 1.08 ms; cnn_pool 16.7 -> 18.5 ms, within the noise) and won on
#: small ones (cholesky's and eigen_energy's 243: 0.42 -> 0.28 and 0.45 -> 0.37 ms unrolled); at batch
#: 32,768 the larger joints still gain from unrolling (layer_norm 208 -> 175 ms, dh_chain 381 -> 339).
UNROLL_JOINT_SMALL_BATCH = 512


def _unrolled_contract(letters_a: str, a: jax.Array, letters_b: str, b: jax.Array, result: str,
                       size: dict[str, int], summed: list[str]) -> jax.Array:
    """`_contract` as sum over the summed indices' entries k of a[..k..] * b[..k..]."""
    kept = [c for c in dict.fromkeys(letters_a + letters_b) if c in result and size[c] != 1]
    order = summed + kept  # summed indices first, then the kept ones in a fixed order
    count = math.prod(size[c] for c in summed)

    def arrange(x, letters):
        """x with the axes of `order` ([summed entries, *kept], size 1 where x lacks a kept one)."""
        x = x.reshape([n for c, n in zip(letters, x.shape) if size[c] != 1])
        mine = "".join(c for c in letters if size[c] != 1)
        x = x.reshape([size[c] for c in mine])
        ordered = [c for c in order if c in mine]
        if list(mine) != ordered:
            x = jnp.transpose(x, [mine.index(c) for c in ordered])
        x = x.reshape([size[c] if c in mine else 1 for c in order])
        x = jnp.broadcast_to(x, [size[c] for c in summed] + list(x.shape[len(summed):]))
        return x.reshape(count, *x.shape[len(summed):])

    if count == 0:  # an empty sum
        return jnp.zeros([size[c] for c in result], jnp.result_type(a, b))
    xa, xb = arrange(a, letters_a), arrange(b, letters_b)
    total = xa[0] * xb[0]
    for k in range(1, count):
        total = total + xa[k] * xb[k]
    total = jnp.broadcast_to(total, [size[c] for c in kept])
    target = [c for c in result if size[c] != 1]
    if kept != target:
        total = jnp.transpose(total, [kept.index(c) for c in target])
    return total.reshape([size[c] for c in result])


def _contraction_kind(letters_a: str, letters_b: str, result: str, size: dict[str, int], large_batch: bool) -> str:
    """How `contract` computes einsum(a, b) of these letters (`size`: each letter's size): "unrolled"
    (`_unrolled_contract`, a fusible elementwise sum), "dot" (a dot_general: summed indices beyond
    the unrolling caps) or "broadcast" (a broadcast multiply, summed or not: fusible)."""
    live = [c for c in dict.fromkeys(letters_a + letters_b) if size[c] != 1]
    summed = [c for c in live if c not in result]
    own_a = [c for c in live if c in result and c in letters_a and c not in letters_b]
    own_b = [c for c in live if c in result and c in letters_b and c not in letters_a]
    if not summed:
        return "broadcast"
    if (own_a and own_b and math.prod(size[c] for c in summed) <= UNROLL_CONTRACTION
            and math.prod(size[c] for c in live) <= (UNROLL_JOINT if large_batch else UNROLL_JOINT_SMALL_BATCH)):
        return "unrolled"
    return "dot"


def contract(letters_a: str, a: jax.Array, letters_b: str, b: jax.Array, result: str,
             result_order: bool = False) -> jax.Array:
    """einsum(a, b) as one broadcast multiply over the joint index space, then a sum.

    Exactly one multiplication per point of the joint index space, which is what the cost model
    counts. For the small factors of elimination graphs (and under vmap, with a leading batch
    axis) XLA fuses this into elementwise loops, where a batched dot_general of tiny matrices is
    slow. Size-1 indices are dropped first so that scalar graphs become plain multiplies.
    `result_order`: lay the joint space out in the result's order (the labelled products: a
    bilinear resize's product [b, 4, 5, 3, 3] was transposed whole, 34 -> 15 ms at batch 32,768);
    else in the order the letters first appear (the 2-D products, as measured for them).
    """
    size = {c: n for letters, x in ((letters_a, a), (letters_b, b)) for c, n in zip(letters, x.shape)}
    live = "".join(c for c in dict.fromkeys(letters_a + letters_b) if size[c] != 1)
    if result_order:
        # The joint index space in the result's order, then the summed letters: a broadcast product
        # then needs no transpose of itself (the largest array), only of its factors.
        live = "".join(c for c in result if c in live) + "".join(c for c in live if c not in result)

    def spread(x, letters):
        x = x.reshape([n for c, n in zip(letters, x.shape) if size[c] != 1])
        mine = "".join(c for c in letters if size[c] != 1)
        ordered = "".join(c for c in live if c in mine)
        if mine != ordered:
            x = jnp.transpose(x, [mine.index(c) for c in ordered])
        return x.reshape([size[c] if c in mine else 1 for c in live])

    summed_letters = [c for c in live if c not in result]
    large_batch = max(_vmapped_examples(a), _vmapped_examples(b)) >= KEEP_PRODUCTS_MIN_BATCH
    kind = _contraction_kind(letters_a, letters_b, result, size, large_batch)
    if kind == "unrolled":
        return _unrolled_contract(letters_a, a, letters_b, b, result, size, summed_letters)
    if kind == "dot":
        # A real contraction: one dot_general performs the same multiplications with far less
        # memory traffic than materialising the joint index space.
        mine_a = "".join(c for c in letters_a if size[c] != 1)
        mine_b = "".join(c for c in letters_b if size[c] != 1)
        target = "".join(c for c in result if size[c] != 1)
        reduced = jnp.einsum(
            f"{mine_a},{mine_b}->{target}",
            a.reshape([size[c] for c in mine_a]),
            b.reshape([size[c] for c in mine_b]),
        )
        return reduced.reshape([size[c] for c in result])
    product = spread(a, letters_a) * spread(b, letters_b)
    summed = tuple(i for i, c in enumerate(live) if c not in result)
    reduced = product.sum(axis=summed) if summed else product
    kept = "".join(c for c in live if c in result)
    target = "".join(c for c in result if size[c] != 1)
    if kept != target:
        reduced = jnp.transpose(reduced, [kept.index(c) for c in target])
    return reduced.reshape([size[c] for c in result])


def _unlabelled(partial: Partial, dtype) -> Partial:
    """`partial` with a 2-D code, for a product with an index map: a labelled relabelling as the
    index map it is, an elementwise labelled partial as its 2-D code, any other one dense."""
    value = partial.value
    if not isinstance(value, Labelled):
        return partial
    elementwise = elementwise_code(value, dtype)
    if elementwise is not None:
        code, values = elementwise
        return Partial(code, partial.out_shape, partial.in_shape,
                       values.reshape(partial.out_shape) if code == 6 else values, support=partial.support)
    if not value.ties.has_values:
        return Partial(INDEX_MAP, partial.out_shape, partial.in_shape,
                       as_index_map(value, partial.out_shape, partial.in_shape))
    return _keeping_zeros(Partial(1, partial.out_shape, partial.in_shape, densify(partial, dtype)),
                          lambda: _support(partial))


def multiply(out: Partial, inp: Partial, code: int, counter: MultiplicationCounter, dtype) -> Partial:
    """The product out(v->c) @ in(p->v), laid out as `code` (the cost model's product code).

    Where a dense `out` has structural zeros that would meet entries of `in` that may be
    infinite (`_zeros_meeting_poles`: an index map's sum times a partial tied along rows is dense,
    zero between rows; times sqrt's infinite partial at an all-zero row the zeros were NaN in every
    row), the product is of in's finite part, and NaN is put back where out's support meets in's
    poles (`_poles_kept`), as jax.jacfwd has it."""
    supports = functools.cache(lambda: (_support(out), _support(inp)))  # (read by both checks, once)
    taken = _rows_taken(out, inp)
    held_out = None if taken is not None else _zeros_meeting_poles(out, inp, supports)
    if taken is not None:
        product = _multiply(out, _rows_zeroed(inp, taken, dtype), code, counter, dtype)
    elif held_out is None:
        product = _multiply(out, inp, code, counter, dtype)
    else:
        product = _multiply(out, _finite_part(inp, dtype), code, counter, dtype)
        if isinstance(product.value, Labelled):
            product = _labelled_poles_kept(product, out, held_out, inp, dtype)
        else:
            product = (_tied_poles_kept(product, out, held_out, inp, code, dtype)
                       or convert(_poles_kept(product, out, held_out, inp, code, dtype), code, dtype))
    finite = out.finite and inp.finite
    if product.finite != finite:
        product = product._replace(finite=finite)
    return _keeping_zeros(product, lambda: _product_support(out, inp, supports),
                          explicit=out.support is not None or inp.support is not None)


def _rows_taken(out: Partial, inp: Partial):
    """Where `out` is an elementwise partial (a diagonal) with a support of its own (a select's
    case, `Partial.support`) and `in` may be infinite and has a 2-D value array whose entries stand
    for one row each (`_one_row_each`): the
    entries of v the diagonal holds ([v1, v2] bool, NumPy or traced); else None. Row v of the
    product out @ in is out's entry v times in's row v, so zeroing in's rows outside them keeps the
    select's zeros 0 without the dense guard of `_zeros_meeting_poles` (NaN where jax.jacfwd has
    it: in's pole on a row the case is taken at stays)."""
    if (not KEEP_STRUCTURAL_ZEROS or out.support is None or inp.finite or out.out_shape != out.in_shape
            or isinstance(inp.value, (Placed, Labelled, IndexMap)) or inp.value is None
            or _one_row_each(inp) is None):
        return None
    if isinstance(out.value, Labelled):  # (a select's case in a program of arrays of rank 3 or more)
        if not is_elementwise(out.value):
            return None
    elif out.code != 6 or tuple(np.shape(out.value)) != tuple(out.out_shape):
        return None
    held = out.support
    if isinstance(held, RunTimeSupport):
        if held.diagonal is not None:
            return held.diagonal()
        held = held()
    n = math.prod(out.out_shape)
    diagonal = held.reshape(n, n).diagonal() if isinstance(held, np.ndarray) else jnp.diagonal(held.reshape(n, n))
    return diagonal.reshape(out.out_shape)


def _one_row_each(partial: Partial) -> RowCover | None:
    """The `RowCover` of a 2-D partial's full value array where each of its entries stands for
    exactly one row (no Kronecker tie on v), else None."""
    cover = value_cover(partial.code, partial.out_shape, partial.in_shape)
    if (cover is None or any(c is None for c in cover.coordinates)
            or math.prod(np.shape(partial.value)) != cover.count):
        return None
    return cover


def _rows_zeroed(inp: Partial, rows, dtype) -> Partial:
    """`inp` (a 2-D partial d v / d p whose value entries stand for one row each) with 0 in v's
    entries outside `rows` ([v1, v2] bool), by a select (a NaN there is replaced, not multiplied)."""
    value = jnp.asarray(inp.value, dtype)
    kept = ~_one_row_each(inp).dropped(~jnp.reshape(rows, (-1,)))
    return inp._replace(value=jnp.where(kept.reshape(np.shape(value)), value, jnp.zeros((), dtype)))


def _multiply(out: Partial, inp: Partial, code: int, counter: MultiplicationCounter, dtype) -> Partial:
    c_shape, v_shape, p_shape = out.out_shape, out.in_shape, inp.in_shape
    if isinstance(out.value, Labelled) or isinstance(inp.value, Labelled):
        labelled, other = (out, inp) if isinstance(out.value, Labelled) else (inp, out)
        scales_placed = isinstance(other.value, Placed) and elementwise_code(labelled.value, dtype) is not None
        if INDEX_MAP not in (out.code, inp.code) and not scales_placed:
            result, value = labelled_product(out, inp, counter, dtype, code, lambda x: densify(x, dtype))
            return Partial(result, c_shape, p_shape, value)
        # With an index map: a relabelling is one too, an elementwise partial its 2-D code (which the
        # map keeps lazy, `Placed`), another labelled partial with values is dense. An elementwise
        # partial times a `Placed` one scales its terms' weights, as a 2-D diagonal does.
        out, inp = (_unlabelled(x, dtype) for x in (out, inp))
    moves_only = {INDEX_MAP} | VALUELESS
    lazy_out, lazy_in = isinstance(out.value, Placed), isinstance(inp.value, Placed)
    if out.code == INDEX_MAP or inp.code == INDEX_MAP:
        if out.code in moves_only and inp.code in moves_only:
            first = inp.value if inp.code == INDEX_MAP else _identity_map(inp.code, v_shape, p_shape)
            second = out.value if out.code == INDEX_MAP else _identity_map(out.code, c_shape, v_shape)
            return convert(Partial(INDEX_MAP, c_shape, p_shape, _compose(first, second)), code, dtype)
        terms = None
        if out.code == INDEX_MAP and _paired(inp.code) is not None:
            # in = (permutation p->v) * weights per p entry: move the permutation's ones through the
            # map (values independent of the data wherever the map's indices are, e.g. one pattern
            # for a whole vmapped batch); the weights stay on the entries it reaches.
            permutation = _identity_map(_permutation_code(inp.code), v_shape, p_shape)
            pattern = densify(Partial(INDEX_MAP, c_shape, p_shape, _compose(permutation, out.value)), dtype)
            terms = [Term(pattern, _weights(inp, "in", dtype)[None, None])]
        elif out.code == INDEX_MAP and lazy_in:
            terms = _map_terms(out.value, list(inp.value.terms), (*v_shape, *p_shape), after=True)
        elif _paired(out.code) is not None:
            permutation = _identity_map(_permutation_code(out.code), c_shape, v_shape)
            pattern = densify(Partial(INDEX_MAP, c_shape, p_shape, _compose(inp.value, permutation)), dtype)
            terms = [Term(pattern, _weights(out, "out", dtype)[:, :, None, None])]
        elif lazy_out:
            terms = _map_terms(inp.value, list(out.value.terms), (*c_shape, *v_shape), after=False)
        elif _is_scalar_row(out if inp.code == INDEX_MAP else inp, v_shape):
            terms = _through_one_entry(out, inp, dtype)
        if terms is not None:
            return convert(_placed(c_shape, p_shape, terms, dtype), code, dtype)
        placed = math.prod(c_shape) * math.prod(p_shape)
        if out.code == INDEX_MAP:
            dense = _apply_on_v(out.value, _gathered(densify(inp, dtype), placed))
        else:
            dense = _apply_on_p(_gathered(densify(out, dtype), placed), inp.value)
        return convert(Partial(1, c_shape, p_shape, dense), code, dtype)

    plan = product_plan(inp.code, out.code)
    if lazy_out != lazy_in:
        terms = _weighted_terms(out, inp, dtype)
        if terms is not None:
            if out.value is not None and inp.value is not None:
                sizes = _sizes(c_shape, v_shape, p_shape)
                counter.add(math.prod(sizes[c] for c in set(plan.out_letters) | set(plan.in_letters)))
            return convert(_placed(c_shape, p_shape, terms, dtype), code, dtype)
    out, inp = _unplaced(out, dtype), _unplaced(inp, dtype)
    if out.value is None and inp.value is None:
        value = None
    elif out.value is None or inp.value is None:
        letters, value = (plan.in_letters, inp.value) if out.value is None else (plan.out_letters, out.value)
        value = jnp.einsum(f"{letters}->{plan.result_letters}", value)
    else:
        sizes = _sizes(c_shape, v_shape, p_shape)
        counter.add(math.prod(sizes[c] for c in set(plan.out_letters) | set(plan.in_letters)))
        value = contract(plan.out_letters, out.value, plan.in_letters, inp.value, plan.result_letters)
        if _keeps(value):
            value = _kept(value)
    return convert(Partial(plan.result_code, c_shape, p_shape, value), code, dtype)
