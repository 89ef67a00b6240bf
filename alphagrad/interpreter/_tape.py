"""The tape interpreter: Jacobians of long straight-line programs as a few compact XLA loops.

The straight-line interpreter (`_jacobian._eliminate_all`) emits one XLA operation per equation,
per partial and per product. XLA's compile time and memory grow about quadratically with the
number of such tiny operations, so past a thousand equations it (like ``jax.jacrev``) no longer
compiles in reasonable time. Here the program and the elimination plan become integer arrays
("tapes") that two `lax.scan` loops execute; what XLA compiles is the loop bodies, whose size does
not grow with the number of equations:

1. **Primal and partials.** A value buffer ``vals[num_value_slots]`` holds every scalar
   *component* of the program: the flattened arguments it reads, its constants and every vertex.
   One scan step per equation gathers the components of its operands (``ops[K]``), and a
   `lax.switch` over the program's distinct equation *kinds* (one branch per (primitive, params,
   operand avals, which operands carry an edge) signature) computes the output components and the
   partials with respect to each source node (JAX's JVP of the equation with unit tangents, as the
   straight-line path computes them; evaluating partials is not counted by the cost model). Two
   `dynamic_update_slice`\\ s write them, the outputs into ``vals`` and the partials into the edge
   buffer ``edges[num_edge_slots]``. The branches return only these small arrays, never a buffer,
   so under `jax.vmap` nothing of size num_slots is copied per step.
2. **Eliminations.** Every `graph.Product` of ``graph.plan(graph, order)`` (for the class below:
   v is a scalar, p and c have n_p and n_c components) becomes n_c * n_p scalar tape steps
   ``edges[dst] = (edges[dst] if the edge p->c existed else 0) + product``, where the product is
   ``out * in`` when both partials carry values (the cost model counts exactly these: the plan's
   ``muls`` is checked to equal n_c * n_p, or 0) and otherwise a selection: a partial without
   values (identity, copy, index map) has entries 0 or 1 here, so the product is the other factor
   where that entry is nonzero (``where(mask != 0, value, 0)``: data movement, free in the model,
   as in the straight-line path). The plan is executed in its own order, one product at a time, so
   ``count_muls == graph.cost`` holds by construction (and is asserted when the tape is built).
3. **Assembly.** The edges left between inputs and outputs are read from the edge buffer by
   static slices and handed to the straight-line path's assembly (jax.jacrev's structure).

Edge slots are allocated when an edge is created and freed when the elimination deletes it, so
the edge buffer holds the largest number of edges alive at once, not every edge ever made.

**The class the tape executes** (`build` raises `Unsupported` otherwise and `_jacobian` falls back
to the straight-line path, never to a wrong number): every eliminated vertex is a scalar
(normalised shape (1, 1), one component); inputs and outputs may be small arrays (at most
`MAX_COMPONENTS` entries; a state vector indexed into scalars, outputs made by ``jnp.stack``); every
equation has one output and no sub-jaxpr (no loops or branches: those are dense primitives whose
JVPs belong in the straight-line path); every value is of the program's one floating-point dtype
or boolean, except integer constants (exactly representable in that dtype); no zero-size arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from alphagrad.graph import INDEX_MAP, VALUELESS, Graph, LeafRef, Operand, Step, ValueRef, normalise_shape
from alphagrad.interpreter._structured import Partial

__all__ = ["TAPE_MIN_EQUATIONS", "MAX_COMPONENTS", "MAX_KINDS", "Tape", "Unsupported", "build", "run"]

#: Programs with at least this many equations run on the tape (when they are in its class);
#: smaller ones keep the straight-line path. Measured on an unrolled RK4 integrator
#: (benchmarks/compact_interpreter.py, docs/benchmarks.md "Compact interpreter at scale"): at
#: about 150 equations the straight-line program still compiles in under 2 s and runs about 6x
#: faster than the tape at batch 1,024 (XLA fuses it; the tape runs one loop step per equation and
#: per product), while at about 300 its first call takes 8 s (18 s under vmap), runs no faster,
#: and at about 600 it does not compile within 100 s. No registered task reaches the threshold.
TAPE_MIN_EQUATIONS = 250
#: Most components (array entries) an input, output or operand of the tape may have: every scan
#: step gathers the largest equation's operand components, so a large array would slow all steps.
MAX_COMPONENTS = 64
#: Most distinct equation kinds (switch branches); XLA compiles every branch.
MAX_KINDS = 256

# Product kinds of the elimination tape: (multiply or select) x (create or add into the edge).
_MUL_NEW, _MUL_ADD, _SELECT_NEW, _SELECT_ADD = range(4)


class _NodeOutput(NamedTuple):
    """An output held by a node: its first value slot and its shape."""

    base: int
    shape: tuple


class Unsupported(Exception):
    """The graph is outside the tape's class; the message says why (the straight-line path runs)."""


class Tape(NamedTuple):
    """A program and an elimination plan as arrays, with the branches that execute them.

    Attributes:
      dtype: the buffers' dtype (the program's floating-point dtype).
      leaves: (flattened-argument index, first value slot) of every argument leaf the program reads.
      constants: [num_constant_slots] the constants' components, stored from slot `constants_at`.
      constants_at: first value slot of the constants.
      num_values, num_edges: buffer sizes, slack for the padded writes included.
      eq_kind: int32[E] branch of each equation.
      eq_ops: int32[E, K] value slots of its operand components (padded with slot 0).
      eq_out: int32[E] first value slot of its output.
      eq_partials: int32[E] first edge slot of its partials.
      branches: per kind, ``ops[K] -> (out[O], partials[P])``.
      width: (K, O, P).
      prod_kind, prod_x, prod_y, prod_dst: int32[M] the scalar product steps (kind, edge slots of
        the first and the second factor (a selection's value and mask), edge slot written).
      outputs: per flattened output of the program: a `_NodeOutput` (slot and shape), or the
        `Operand.value` of a constant output (a constant or a `LeafRef`).
      jacobian_edges: {(input node, output node): (first edge slot, out_shape, in_shape)}.
      muls: multiplications of the product steps (equals the plan's).
    """

    dtype: Any
    leaves: tuple[tuple[int, int], ...]
    constants: np.ndarray
    constants_at: int
    num_values: int
    num_edges: int
    eq_kind: np.ndarray
    eq_ops: np.ndarray
    eq_out: np.ndarray
    eq_partials: np.ndarray
    branches: tuple
    width: tuple[int, int, int]
    prod_kind: np.ndarray
    prod_x: np.ndarray
    prod_y: np.ndarray
    prod_dst: np.ndarray
    outputs: tuple
    jacobian_edges: dict
    muls: int


# ---- building the tape ----------------------------------------------------------------------


def _freeze(value: Any) -> Any:
    """A hashable stand-in for a primitive parameter (equal parameters give equal keys)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    hash(value)  # raises TypeError for anything else unhashable
    return value


def _is_jaxpr(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_is_jaxpr(v) for v in value)
    return type(value).__name__ in ("Jaxpr", "ClosedJaxpr")


def _float_dtype(graph: Graph) -> Any:
    """The one floating-point dtype of the program's values (Unsupported if several or none)."""
    program = graph.program
    dtypes = set()
    avals = [aval for eqn in program.equations for aval in eqn.avals if aval is not None]
    avals += [program.leaf_avals[leaf] for leaf in program.input_leaves]
    for aval in avals:
        dtype = np.dtype(aval.dtype) if not jax.dtypes.issubdtype(aval.dtype, jax.dtypes.extended) else None
        if dtype is None:
            raise Unsupported("the program carries PRNG keys")
        if jnp.issubdtype(dtype, jnp.floating):
            dtypes.add(dtype)
    if len(dtypes) != 1 or next(iter(dtypes)) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise Unsupported(f"the program's floating-point dtypes are {sorted(map(str, dtypes))}, not one of float32/float64")
    return next(iter(dtypes))


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
        self.dtype = _float_dtype(graph)
        self.node_base: dict[int, int] = {}
        self.node_shape: dict[int, tuple] = {}
        self.leaf_base: dict[int, int] = {}
        self.num_values = 0
        self.constants: list[np.ndarray] = []
        self.constant_base: dict[Any, int] = {}

    def _allocate_value(self, size: int) -> int:
        base = self.num_values
        self.num_values += size
        return base

    def _check_size(self, shape, what: str) -> int:
        size = math.prod(shape)
        if size == 0 or size > MAX_COMPONENTS:
            raise Unsupported(f"{what} has shape {tuple(shape)} (the tape takes 1 to {MAX_COMPONENTS} entries)")
        return size

    def _value_dtype_ok(self, dtype) -> bool:
        return np.dtype(dtype) in (self.dtype, np.dtype(bool))

    def _leaf(self, index: int) -> int:
        if index not in self.leaf_base:
            aval = self.program.leaf_avals[index]
            if jax.dtypes.issubdtype(aval.dtype, jax.dtypes.extended) or not self._value_dtype_ok(aval.dtype):
                raise Unsupported(f"argument leaf {index} has dtype {aval.dtype}")
            self.leaf_base[index] = self._allocate_value(self._check_size(aval.shape, f"argument leaf {index}"))
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
        self._check_size(value.shape, "a constant")
        key = (value.dtype.str, value.shape, value.tobytes())
        if key not in self.constant_base:
            self.constant_base[key] = self._allocate_value(value.size)
            self.constants.append(value.reshape(-1).astype(self.dtype))
        return self.constant_base[key], tuple(value.shape), value.dtype

    def build(self) -> Tape:
        graph, program = self.graph, self.program
        intermediates = set(graph.intermediates)
        # Inputs first: their leaves' slots.
        self.node_dtype: dict[int, Any] = {}
        for node, leaf in enumerate(program.input_leaves, start=1):
            aval = program.leaf_avals[leaf]
            if np.dtype(aval.dtype) != self.dtype:
                raise Unsupported(f"differentiated argument leaf {leaf} has dtype {aval.dtype}")
            self.node_base[node] = self._leaf(leaf)
            self.node_shape[node] = tuple(aval.shape)
            self.node_dtype[node] = self.dtype
        # Operands of every equation (leaves and constants), before the vertices' slots, so that
        # the vertices' slots increase with the equation order (see `_padded_writes`).
        incoming: dict[int, list] = {}
        for e in graph.edges:
            if e.code != 0:
                incoming.setdefault(e.dst, []).append(e)
        for k, eqn in enumerate(program.equations):
            where = f"equation {k + 1}" + (f" ({eqn.primitive.name})" if eqn.primitive is not None else " (output copy)")
            if eqn.primitive is not None and any(_is_jaxpr(v) for v in eqn.params.values()):
                raise Unsupported(f"{where} holds a sub-program (a loop or a branch)")
            if eqn.primitive is not None and (eqn.primitive.multiple_results or len(eqn.outputs) != 1):
                raise Unsupported(f"{where} has several outputs")
        # Leaves, then the constants in one contiguous block (written at once by `run`).
        for wanted in (LeafRef, object):
            for eqn in program.equations:
                for op in eqn.operands:
                    if op.node is None and isinstance(op.value, wanted):
                        self._operand(op)
            if wanted is LeafRef:
                constants_at = self.num_values
        # Vertices, in equation order.
        eq_rows = []  # (signature, operand slots, out slot, partial layout)
        kinds: dict[Any, int] = {}
        templates: list[tuple] = []
        initial_edges: list[tuple[int, int, int]] = []  # (src, dst, size) in slot order
        for k, eqn in enumerate(program.equations):
            where = f"equation {k + 1}"
            node = eqn.outputs[0].node
            if node is None:
                raise Unsupported(f"{where} has no vertex")
            aval = eqn.aval
            shape = tuple(aval.shape) if aval is not None else ()
            if aval is None or not self._value_dtype_ok(aval.dtype):
                raise Unsupported(f"{where} makes a value of dtype {getattr(aval, 'dtype', None)}")
            size = self._check_size(shape, where)
            if node - graph.num_inputs in intermediates and size != 1:
                raise Unsupported(f"{where} makes a non-scalar intermediate of shape {shape}")
            operands = [self._operand(op) for op in eqn.operands]
            slots = [base + i for base, shp, _ in operands for i in range(math.prod(shp))]
            # Partials: one block per source node with an edge, [size, source size] row-major.
            groups = []
            for e in incoming.get(node, ()):
                positions = tuple(i for i, op in enumerate(eqn.operands) if op.node == e.src)
                if not positions:
                    raise Unsupported(f"{where}: edge from node {e.src} matches no operand")
                if self.node_dtype[e.src] != self.dtype:
                    raise Unsupported(f"{where}: edge from a non-float node")
                groups.append((positions, e.src))
                initial_edges.append((e.src, node, size * math.prod(self.node_shape[e.src])))
            op_avals = tuple((shp, np.dtype(dt).str) for _, shp, dt in operands)
            signature = (
                eqn.primitive, _freeze(eqn.params) if eqn.primitive is not None else None, op_avals,
                (shape, np.dtype(aval.dtype).str), tuple(p for p, _ in groups),
            )
            if signature not in kinds:
                kinds[signature] = len(kinds)
                templates.append((signature, eqn.params))
                if len(kinds) > MAX_KINDS:
                    raise Unsupported(f"more than {MAX_KINDS} distinct equation kinds")
            self.node_base[node] = self._allocate_value(size)
            self.node_shape[node] = shape
            self.node_dtype[node] = np.dtype(aval.dtype)
            eq_rows.append((kinds[signature], slots, self.node_base[node]))
        return self._finish(eq_rows, templates, initial_edges, constants_at)

    def _finish(self, eq_rows, templates, initial_edges, constants_at) -> Tape:
        graph, program = self.graph, self.program
        K = max([len(slots) for _, slots, _ in eq_rows] + [1])
        O = max([math.prod(sig[3][0]) for sig, _ in templates] + [1])
        # Edge slots: the initial edges in equation order (contiguous per equation), then the
        # products' edges, reusing the slots of deleted edges.
        edge_base: dict[tuple[int, int], int] = {}
        sizes: dict[tuple[int, int], int] = {}
        next_slot = 0
        partial_base_of: dict[int, int] = {}
        widths: dict[int, int] = {}
        for src, dst, size in initial_edges:
            partial_base_of.setdefault(dst, next_slot)
            widths[dst] = widths.get(dst, 0) + size
            edge_base[(src, dst)] = next_slot
            sizes[(src, dst)] = size
            next_slot += size
        P = max(list(widths.values()) + [1])
        free: dict[int, list[int]] = {}

        def allocate(size: int) -> int:
            nonlocal next_slot
            if free.get(size):
                return free[size].pop()
            base = next_slot
            next_slot += size
            return base

        prod = []  # (kind, x, y, dst)
        muls = 0
        for step in self.steps:
            for planned in step.products:
                p, v, c = planned.pred, planned.vertex, planned.succ
                n_c, n_p = math.prod(self.node_shape[c]), math.prod(self.node_shape[p])
                if math.prod(self.node_shape[v]) != 1:
                    raise Unsupported(f"vertex {v - graph.num_inputs} is eliminated but not a scalar")
                out_valued = planned.out_code not in VALUELESS and planned.out_code != INDEX_MAP
                in_valued = planned.in_code not in VALUELESS and planned.in_code != INDEX_MAP
                expected = n_c * n_p if out_valued and in_valued else 0
                if planned.muls != expected:
                    raise Unsupported(f"product {planned} counts {planned.muls} multiplications, not {expected}")
                old = edge_base.get((p, c))
                if (old is None) != (planned.old_code == 0):
                    raise Unsupported(f"product {planned} does not match the edges the tape holds")
                dst = allocate(n_c * n_p) if old is None else old
                if old is None:
                    edge_base[(p, c)], sizes[(p, c)] = dst, n_c * n_p
                out_at, in_at = edge_base[(v, c)], edge_base[(p, v)]
                for i in range(n_c):
                    for j in range(n_p):
                        slot = dst + i * n_p + j
                        if out_valued and in_valued:
                            prod.append((_MUL_NEW if old is None else _MUL_ADD, out_at + i, in_at + j, slot))
                        elif out_valued:  # the in-partial is an identity or an index map: a mask
                            prod.append((_SELECT_NEW if old is None else _SELECT_ADD, out_at + i, in_at + j, slot))
                        else:
                            prod.append((_SELECT_NEW if old is None else _SELECT_ADD, in_at + j, out_at + i, slot))
                muls += expected
            vertex = graph.node_id(step.vertex)
            for key in [(p, vertex) for p in step.preds] + [(vertex, c) for c in step.succs]:
                free.setdefault(sizes.pop(key), []).append(edge_base.pop(key))
        if muls != sum(step.cost for step in self.steps):
            raise AssertionError("internal error: the tape's multiplications differ from the plan's")

        inputs = set(range(1, graph.num_inputs + 1))
        outputs_set = {graph.node_id(k) for k in graph.outputs}
        jacobian_edges = {}
        for (src, dst), base in edge_base.items():
            if src in inputs and dst in outputs_set:
                jacobian_edges[(src, dst)] = (base, normalise_shape(self.node_shape[dst]), normalise_shape(self.node_shape[src]))
        outputs = []
        for op in program.outputs:
            if op.node is not None:
                outputs.append(_NodeOutput(self.node_base[op.node], self.node_shape[op.node]))
            elif isinstance(op.value, ValueRef):
                raise Unsupported("an output is a value of a multi-output equation")
            else:
                outputs.append(op.value)  # a constant or a LeafRef: its Jacobian is zero

        eq_kind = np.asarray([kind for kind, _, _ in eq_rows], np.int32)
        eq_ops = np.zeros((len(eq_rows), K), np.int32)
        for row, (_, slots, _) in enumerate(eq_rows):
            eq_ops[row, : len(slots)] = slots
        eq_out = np.asarray([out for _, _, out in eq_rows], np.int32)
        # An equation without edges writes its (padded) partials into the slack at the end.
        num_edges = next_slot + P
        eq_partials = np.asarray(
            [partial_base_of.get(eqn.outputs[0].node, next_slot) for eqn in program.equations], np.int32
        )
        branches = tuple(_branch(sig, params, O, P, self.dtype) for sig, params in templates)
        for branch, (signature, _) in zip(branches, templates):
            # Traced once here, so that an equation the branch cannot re-bind from buffer values
            # (a constant whose dtype the primitive does not take) falls back instead of failing.
            try:
                jax.eval_shape(branch, jax.ShapeDtypeStruct((K,), self.dtype))
            except Exception as err:  # JAX reports binding errors with many exception types
                name = signature[0].name if signature[0] is not None else "copy"
                raise Unsupported(f"a {name} equation cannot run from the tape's buffers: {err}") from err
        prod_arr = np.asarray(prod, np.int32).reshape(-1, 4)
        constants = np.concatenate(self.constants) if self.constants else np.zeros(0, self.dtype)
        return Tape(
            dtype=self.dtype,
            leaves=tuple(sorted(self.leaf_base.items())),
            constants=constants,
            constants_at=constants_at,
            num_values=self.num_values + O,
            num_edges=num_edges,
            eq_kind=eq_kind,
            eq_ops=eq_ops,
            eq_out=eq_out,
            eq_partials=eq_partials,
            branches=branches,
            width=(K, O, P),
            prod_kind=prod_arr[:, 0].copy(),
            prod_x=prod_arr[:, 1].copy(),
            prod_y=prod_arr[:, 2].copy(),
            prod_dst=prod_arr[:, 3].copy(),
            outputs=tuple(outputs),
            jacobian_edges=jacobian_edges,
            muls=muls,
        )


def _branch(signature, params: dict, O: int, P: int, dtype):
    """The switch branch of one equation kind: ``ops[K] -> (out[O], partials[P])``; `params` are
    those of the kind's first equation (equal to every other's, by the signature)."""
    primitive, _, op_avals, (out_shape, _), groups = signature
    shapes = [shape for shape, _ in op_avals]
    dtypes = [np.dtype(dt) for _, dt in op_avals]
    offsets = np.cumsum([0] + [math.prod(s) for s in shapes]).tolist()
    n_out = math.prod(out_shape)

    def bind(values):
        if primitive is None:  # an appended output copy
            return values[0]
        return primitive.bind(*values, **params)

    def branch(ops):
        values = [ops[offsets[i]:offsets[i + 1]].reshape(shapes[i]).astype(dtypes[i]) for i in range(len(shapes))]
        out = bind(values)
        pieces = []
        for positions in groups:
            x = values[positions[0]]

            def of_x(y, positions=positions):
                return bind([y if i in positions else v for i, v in enumerate(values)])

            size = x.size
            if size == 1:
                tangent = jnp.ones(x.shape, x.dtype)
                columns = jax.jvp(of_x, (x,), (tangent,))[1].reshape(1, n_out)
            else:
                basis = jnp.eye(size, dtype=x.dtype).reshape(size, *x.shape)
                columns = jax.vmap(lambda t: jax.jvp(of_x, (x,), (t,))[1])(basis).reshape(size, n_out)
            pieces.append(columns.T.reshape(-1).astype(dtype))  # [n_out, size] row-major
        flat_out = jnp.asarray(out).reshape(-1).astype(dtype)
        flat_out = jnp.pad(flat_out, (0, O - n_out))
        partials = jnp.concatenate(pieces) if pieces else jnp.zeros((0,), dtype)
        partials = jnp.pad(partials, (0, P - partials.shape[0]))
        return flat_out, partials

    return branch


def build(graph: Graph, steps: Sequence[Step]) -> Tape:
    """The tape of `graph`'s program and the plan `steps` (``graph.plan(graph, order)``).

    Raises:
      Unsupported: the graph is outside the tape's class (the message says where).
    """
    try:
        return _Builder(graph, steps).build()
    except TypeError as err:  # an unhashable primitive parameter
        raise Unsupported(f"a primitive parameter cannot be compared: {err}") from err


# ---- running the tape -------------------------------------------------------------------------


def _products(edges: jax.Array, row) -> tuple[jax.Array, None]:
    """One scalar product step on the edge buffer [num_edges, *batch]."""
    kind, x, y, dst = row
    a = lax.dynamic_index_in_dim(edges, x, keepdims=False)
    b = lax.dynamic_index_in_dim(edges, y, keepdims=False)
    old = lax.dynamic_index_in_dim(edges, dst, keepdims=False)
    zero = jnp.zeros((), edges.dtype)
    # A switch on the (never batched) tape entry: only the chosen branch runs, so a selection
    # multiplies nothing and the multiply steps are exactly the counted multiplications.
    new = lax.switch(kind, (
        lambda a, b, old: a * b,
        lambda a, b, old: old + a * b,
        lambda a, b, old: jnp.where(b != 0, a, zero),
        lambda a, b, old: old + jnp.where(b != 0, a, zero),
    ), a, b, old)
    return lax.dynamic_update_index_in_dim(edges, new, dst, 0), None


def _execute(tape: Tape, vals: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Both loops on buffers whose slot axis comes first: vals [num_values, *batch] (its leaves
    and constants filled in) -> (vals, edges [num_edges, *batch]), with at most one batch axis.

    With the batch axis last, each step reads and writes whole contiguous rows of the batch.
    """
    batch = vals.shape[1:]
    edges = jnp.zeros((tape.num_edges, *batch), vals.dtype)

    def kinds(kind, ops):
        return lax.switch(kind, tape.branches, ops)

    if batch:  # the branches are written for one example; the kind is the same for all
        kinds = jax.vmap(kinds, in_axes=(None, 1), out_axes=1)

    def equation(carry, row):
        vals, edges = carry
        kind, ops, out_at, partials_at = row
        out, partials = kinds(kind, vals[ops])
        vals = lax.dynamic_update_slice_in_dim(vals, out, out_at, axis=0)
        edges = lax.dynamic_update_slice_in_dim(edges, partials, partials_at, axis=0)
        return (vals, edges), None

    (vals, edges), _ = lax.scan(
        equation, (vals, edges), (tape.eq_kind, tape.eq_ops, tape.eq_out, tape.eq_partials)
    )
    if tape.prod_kind.size:
        edges, _ = lax.scan(_products, edges, (tape.prod_kind, tape.prod_x, tape.prod_y, tape.prod_dst))
    return vals, edges


def run(tape: Tape, leaves: list[Any]) -> tuple[list[Any], dict[tuple[int, int], Partial]]:
    """Executes the tape on the flattened arguments.

    Under `jax.vmap` the loops run on [slots, batch] buffers (a `custom_vmap` rule moves the
    batch axis last): vmap's own batching of a loop carry puts the batch axis first, and then
    every scalar step reads and writes a strided column of the buffer, several times slower.

    Returns:
      (outputs: per flattened output its primal value, edges:
      ``{(input node, output node): Partial}`` (dense, code 1), the Jacobian's blocks, as
      `_jacobian._eliminate_all` returns them for `_jacobian._assemble`).
    """
    dtype = tape.dtype
    vals = jnp.zeros((tape.num_values,), dtype)
    for leaf, base in tape.leaves:
        vals = lax.dynamic_update_slice(vals, jnp.asarray(leaves[leaf]).reshape(-1).astype(dtype), (base,))
    if tape.constants.size:
        vals = lax.dynamic_update_slice(vals, jnp.asarray(tape.constants, dtype), (tape.constants_at,))

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
