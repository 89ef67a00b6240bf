"""The pure JAX core of the vertex elimination game: a fixed-size array `State` and `step`.

Everything here except `init_state` (which encodes a `Graph` with numpy) is a pure function of
arrays: jittable, vmappable over a batch of states, and compiled once per state size. Graphs
smaller than the state size are padded with masked vertices and inputs, so one compiled `step`
serves every graph of at most that size.

Node layout (N = V + I nodes for a state of V vertex slots and I input slots):

- index ``a`` in ``0..V-1`` is vertex ``a + 1`` (so action ``a`` eliminates vertex ``a + 1``);
- index ``V + i - 1`` is input ``i`` (``i`` in ``1..I``);
- slots past the graph's own vertices and inputs are padding: no edges, never eliminable.

Edges only ever end at vertices, so the edge codes form an ``[N, V]`` matrix
(``codes[src, dst]``, 0 = no edge). The dims an edge p->c carries are always
``(dst_shape[c], src_shape[p])`` (`Graph.node_shapes`), and elimination keeps it that way,
so dims live in static per-node arrays and the code matrix is the only part that changes.

Codes and dims come from the graph's cost model: C = ``model.mask.shape[0]`` codes (table index
``code - MIN_CODE``; the 22 codes -10..11 of the paper, plus any extended codes 12, 13, ... of a
graph with arrays of rank >= 3) and a structural rank R = ``model.mask.shape[2] // 3`` (2 for
the paper's 2-D shapes): every node has R dims, and a pair's mask selects among the 3R size
factors (c_1..c_R, v_1..v_R, p_1..p_R). `_graph_tables` is the one place that reads them off
a graph.

Cost of one step (eliminating vertex v), REFERENCE.md sections 2.1-2.2: for every predecessor
p and successor c, the product (v->c)(p->v) costs the product of the size factors selected by
``mask[code(p->v), code(v->c)]`` among (c_1..c_R, |v_1|..|v_R|, p_1..p_R), factors <= 0 counting
as 1, 0 where the mask is empty, exactly 1 for the model's unit pairs; the tables are the
graph's cost model's, so an episode's total equals `graph.cost`. A pair's cost factorises into
a p part, a c part and a v part chosen by R-bit sub-masks, so the step's total comes from
per-code sums over predecessors and over successors (segment sums) and a C x C table, never
pair by pair. The new codes come from one fused ``[old, in, out] -> code`` table ("MUL, then
ADD into an existing edge"), gathered only for predecessor rows, which are compacted and
processed 8 at a time (see `_eliminate`).

Illegal actions are handled in one place, `_resolve_action`: the step becomes a no-op.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad.errors import AlphagradError
from alphagrad.graph import MIN_CODE, CostModel, Graph, cost_model_of
from alphagrad.graph import cost_model as _load_cost_model

__all__ = [
    "State",
    "init_state",
    "step",
    "legal_actions",
    "is_terminal",
    "observe",
    "node_observation",
    "edge_list",
    "rollout",
    "order_of",
    "stack",
    "StateSizeError",
    "NODE_PADDING",
    "NODE_INPUT",
    "NODE_INTERMEDIATE",
    "NODE_ELIMINATED",
    "NODE_OUTPUT",
]

_ZERO = -MIN_CODE  # table index of code 0 (no edge)

#: Values of ``observe(state)["node_type"]``.
NODE_PADDING = 0
NODE_INPUT = 1
NODE_INTERMEDIATE = 2  # not yet eliminated: a legal action
NODE_ELIMINATED = 3
NODE_OUTPUT = 4


class StateSizeError(AlphagradError, ValueError):
    """A graph does not fit the state size (or is not a valid elimination graph)."""


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "codes",
        "src_shape",
        "dst_shape",
        "eliminable",
        "is_output",
        "vertex_mask",
        "input_mask",
        "order",
        "step_count",
        "cost",
        "num_intermediates",
        "illegal",
    ],
    meta_fields=["cost_model"],
)
@dataclasses.dataclass(frozen=True, eq=False)
class State:
    """The state of one elimination game, padded to V vertex slots and I input slots (N = V + I).

    A frozen pytree of arrays; ``cost_model`` is static metadata (a string naming the tables),
    so states of different tables never share a compiled step or a vmapped batch. Under
    `jax.vmap` every field gains a leading batch axis. R is the structural rank of the graph's
    cost model (2 for graphs of 2-D shapes; see the module docstring).

    Attributes:
      codes: int8[N, V]  # codes[src, dst] structure code of edge src->dst, 0 = no edge;
        rows 0..V-1 are vertices 1..V as sources, rows V..N-1 inputs 1..I.
      src_shape: int32[N, R]  # dims of each node on the source side of its edges (0 = padding;
        a node of lower rank is padded with 1s)
      dst_shape: int32[V, R]  # dims of each vertex on the destination side of its edges
      eliminable: bool[V]  # intermediate and not yet eliminated: the legal actions
      is_output: bool[V]  # output vertex (never eliminable)
      vertex_mask: bool[V]  # a real vertex of the graph (False = padding slot)
      input_mask: bool[I]  # a real input of the graph (False = padding slot)
      order: int32[V]  # vertex numbers (1-based) eliminated so far, in order; -1 past step_count
      step_count: int32[]  # eliminations performed
      cost: int32[]  # multiplications so far (int32: totals must stay below 2**31)
      num_intermediates: int32[]  # eliminations a complete episode performs
      illegal: bool[]  # the last step's action was illegal (and was a no-op)
      cost_model: str  # static: name of the cost model the graph is scored with; for per-graph
        tables that differ from the named model's (extended codes, a padded rank) the name
        followed by ``#`` and a digest of the tables
    """

    codes: jax.Array
    src_shape: jax.Array
    dst_shape: jax.Array
    eliminable: jax.Array
    is_output: jax.Array
    vertex_mask: jax.Array
    input_mask: jax.Array
    order: jax.Array
    step_count: jax.Array
    cost: jax.Array
    num_intermediates: jax.Array
    illegal: jax.Array
    cost_model: str = "alphagrad-2024"

    @property
    def num_vertex_slots(self) -> int:
        """V, the number of vertex slots (= the number of actions)."""
        return self.codes.shape[-1]

    @property
    def num_input_slots(self) -> int:
        """I, the number of input slots."""
        return self.codes.shape[-2] - self.codes.shape[-1]


# ----------------------------------------------------------------------------------------------
# Cost tables
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class _Tables:
    """A cost model re-expressed for vectorised lookups (numpy constants; indices = code - MIN_CODE).

    C codes, structural rank R, K = 2**R sub-masks per factor group.

    Attributes:
      key: the `State.cost_model` string of these tables.
      rank: R.
      update: int8[C * C * C], ``update[(old * C + in) * C + out]``: the code of edge p->c
        after eliminating v, given its old code and the codes of p->v and v->c: unchanged when
        p->v or v->c is absent, else MUL[in, out], added into an existing edge with ADD[old, .].
      valid: bool[C, C], ``valid[in, out]``: the pair of real edges costs something (its mask
        is not empty, or it is a unit pair).
      p_mask, c_mask, v_mask: int32[C, C], the R-bit sub-mask of the pair's mask over the
        (p_1..p_R), (c_1..c_R), (v_1..v_R) factors (bit i: dimension i + 1); 0 for unit
        pairs, whose product costs exactly 1.
    """

    key: str
    rank: int
    update: np.ndarray
    valid: np.ndarray
    p_mask: np.ndarray
    c_mask: np.ndarray
    v_mask: np.ndarray

    @property
    def num_codes(self) -> int:
        """C, the length of each code axis."""
        return self.valid.shape[0]


#: Tables by `State.cost_model` key (a state names its tables; a jitted `step` looks them up
#: while tracing). Per-graph tables are registered by `_encode`; the named models' on first use.
_TABLES: dict[str, _Tables] = {}


def _graph_tables(graph: Graph) -> tuple[CostModel, np.ndarray, np.ndarray]:
    """The graph-side inputs of the env, read in this one place: (the graph's cost model (C codes,
    rank R = mask.shape[2] // 3), as_source int[num_inputs + num_vertices + 1, R], as_destination
    int[same]) with the dims of `Graph.node_dims` (row = node id, row 0 unused).

    A graph with labelled structures (arrays of rank 3 or more) is scored by its labelled model,
    closed here into fixed tables (`graph.LabelledCostModel.tables`).

    Raises:
      ValueError: two edges disagree about a node's dims (not a valid elimination graph).
      AlphagradError: the graph names an unknown cost model, or its labelled structures do not
        close within the codes the env's int8 code matrix holds.
    """
    model = cost_model_of(graph)
    if not isinstance(model, CostModel):  # a labelled model names products on demand: close it
        model = model.tables(graph)
    as_source, as_destination = graph.node_dims()
    return model, as_source, as_destination


def _model_rank(model: CostModel) -> int:
    """R of a cost model (its mask is bool[C, C, 3R]); AlphagradError if the tables do not fit."""
    mask = np.asarray(model.mask)
    C = mask.shape[0] if mask.ndim == 3 else -1
    if mask.ndim != 3 or mask.shape[1] != C or mask.shape[2] % 3 or mask.shape[2] < 6:
        raise AlphagradError(
            f"cost model {model.name!r} has a mask of shape {mask.shape}; the env needs bool[C, C, 3R] with R >= 2"
        )
    if np.shape(model.mul) != (C, C) or np.shape(model.add) != (C, C) or C <= -MIN_CODE:
        raise AlphagradError(
            f"cost model {model.name!r} has mul {np.shape(model.mul)} and add {np.shape(model.add)} tables for a "
            f"mask of {C} codes; the env needs int[C, C] tables with C > {-MIN_CODE} (code 0 included)"
        )
    return mask.shape[2] // 3


def _tables_key(model: CostModel) -> str:
    """The `State.cost_model` of a model's tables: its name when they are the named model's,
    else the name, ``#`` and a digest of the tables (equal tables share one key, so graphs with
    the same per-graph tables share one compiled step)."""
    try:
        named = _load_cost_model(model.name)
    except AlphagradError:
        named = None
    parts = (np.asarray(model.mask, bool), np.asarray(model.mul, np.int64), np.asarray(model.add, np.int64))
    if named is model or (
        named is not None
        and named.unit_pairs == model.unit_pairs
        and all(np.array_equal(x, y) for x, y in zip(parts, (named.mask, named.mul, named.add)))
    ):
        return model.name
    digest = hashlib.sha256(repr((parts[0].shape, sorted(model.unit_pairs))).encode())
    for part in parts:
        digest.update(np.ascontiguousarray(part).tobytes())
    return f"{model.name}#{digest.hexdigest()[:16]}"


def _tables_of(model: CostModel) -> _Tables:
    """The (registered) vectorised tables of `model`."""
    key = _tables_key(model)
    tables = _TABLES.get(key)
    if tables is None:
        tables = _TABLES[key] = _build_tables(model, key)
    return tables


def _tables(key: str) -> _Tables:
    """The tables a state's ``cost_model`` names (a named model's are built on first use)."""
    tables = _TABLES.get(key)
    if tables is None:
        if "#" in key:
            raise AlphagradError(f"no env tables {key!r} in this process; build the state with env.init_state")
        tables = _tables_of(_load_cost_model(key))
    return tables


def _build_tables(model: CostModel, key: str) -> _Tables:
    """The vectorised tables of `model` (validated to be representable)."""
    name = model.name
    R = _model_rank(model)
    mask = np.asarray(model.mask, dtype=bool)
    mul = np.asarray(model.mul, dtype=np.int64)
    add = np.asarray(model.add, dtype=np.int64)
    C = mask.shape[0]
    top = MIN_CODE + C - 1  # the largest code
    if top > np.iinfo(np.int8).max:
        raise AlphagradError(
            f"cost model {name!r} has {C} codes ({MIN_CODE}..{top}); the env's int8 code matrix holds codes up "
            f"to {np.iinfo(np.int8).max}, so a graph may have at most {np.iinfo(np.int8).max - MIN_CODE + 1} codes"
        )
    idx = np.arange(C)
    nonzero = idx != _ZERO
    # The code matrix uses 0 for "no edge": products and sums of real edges must stay nonzero,
    # and an edge of code 0 must behave like no edge (this also makes code-0 edges of a Graph
    # equivalent to absent ones).
    both = nonzero[:, None] & nonzero[None, :]
    if (mul[both] == 0).any() or (add[both] == 0).any():
        raise AlphagradError(f"cost model {name!r} maps two real edges to code 0; the env cannot represent it")
    neutral = (add[:, _ZERO] == idx + MIN_CODE).all() and (add[_ZERO] == idx + MIN_CODE).all()
    if (mul[_ZERO] != 0).any() or (mul[:, _ZERO] != 0).any() or not neutral or any(0 in p for p in model.unit_pairs):
        raise AlphagradError(f"cost model {name!r} does not treat code 0 as 'no edge'; the env cannot represent it")
    if ((mul < MIN_CODE) | (mul > top) | (add < MIN_CODE) | (add > top)).any():
        raise AlphagradError(f"cost model {name!r} produces codes outside {MIN_CODE}..{top}")

    # [old, in, out] by broadcasting (C**3 entries: 2.6 million at the int8 limit).
    old = idx.astype(np.int32)[:, None, None]
    product = mul.astype(np.int32)[None]
    summed = np.where(old == _ZERO, product, add.astype(np.int32)[old, product - MIN_CODE])
    present = both[None]  # p->v and v->c both real edges
    update = np.where(present, summed, old + MIN_CODE).astype(np.int8).reshape(-1)

    unit = np.zeros((C, C), dtype=bool)
    for a, b in model.unit_pairs:
        unit[a - MIN_CODE, b - MIN_CODE] = True
    valid = (mask.any(-1) | unit) & both

    def sub_mask(group: int) -> np.ndarray:  # factors group * R .. group * R + R - 1 of (c.., v.., p..)
        bits = sum(mask[..., group * R + i].astype(np.int32) << i for i in range(R))
        return np.where(unit | ~valid, 0, bits).astype(np.int32)

    tables = _Tables(key, R, update=update, valid=valid, p_mask=sub_mask(2), c_mask=sub_mask(0), v_mask=sub_mask(1))
    for arr in (update, valid, tables.p_mask, tables.c_mask, tables.v_mask):
        arr.setflags(write=False)
    return tables


def _pad_rank(model: CostModel, rank: int) -> CostModel:
    """`model` over `rank` axes: each factor group (c, v, p) gains unselected factors after its
    own R, so every pair costs the same when every node's dims are padded with 1s."""
    R = _model_rank(model)
    mask = np.asarray(model.mask, bool).reshape(*model.mask.shape[:2], 3, R)
    padded = np.zeros((*mask.shape[:3], rank), dtype=bool)
    padded[..., :R] = mask
    return dataclasses.replace(model, mask=padded.reshape(*mask.shape[:2], 3 * rank))


def _factors(shape: jax.Array) -> jax.Array:
    """int32[..., R] sizes -> int32[..., 2**R]: entry m is the product of the dimensions i with
    bit i of m set (for R = 2: 1, d1, d2, d1 * d2).

    A negative size counts as 1 (REFERENCE.md 2.2); a zero-size axis (an empty array, or a
    padding node, which has no edges) counts as 0, as in `graph.CostModel.pair_cost`.
    """
    f = jnp.where(shape >= 0, shape, 1)
    products = [jnp.ones_like(f[..., 0])]
    for i in range(f.shape[-1]):
        products += [f[..., i]] + [p * f[..., i] for p in products[1:]]
    return jnp.stack(products, axis=-1)


# ----------------------------------------------------------------------------------------------
# Encoding a Graph
# ----------------------------------------------------------------------------------------------


def _check_acyclic(graph: Graph, label: str) -> None:
    """Raises StateSizeError if the edges contain a cycle (Kahn's algorithm)."""
    succs: dict[int, list[int]] = {}
    indegree: dict[int, int] = {}
    for e in graph.edges:
        succs.setdefault(e.src, []).append(e.dst)
        indegree[e.dst] = indegree.get(e.dst, 0) + 1
    ready = [node for node in succs if node not in indegree]
    seen = 0
    while ready:
        node = ready.pop()
        seen += 1
        for dst in succs.get(node, ()):
            indegree[dst] -= 1
            if indegree[dst] == 0:
                ready.append(dst)
    if seen < len(set(succs) | set(indegree)):
        stuck = sorted(k for k, d in indegree.items() if d > 0)[:10]
        raise StateSizeError(f"{label} has a cycle through node(s) {stuck}; an elimination graph is a DAG")


def _label(graph: Graph) -> str:
    return f"graph {graph.name!r}" if graph.name else "the graph"


def _state_tables(graph: Graph, rank: int | None = None) -> tuple[_Tables, np.ndarray, np.ndarray]:
    """The tables a state of `graph` is stepped with and its nodes' dims, padded to `rank`.

    Returns:
      (tables, as_source int[num_inputs + num_vertices + 1, R], as_destination int[same]), R =
      ``rank`` (default: the rank of the graph's cost model).

    Raises:
      StateSizeError: the graph's edges disagree about a node's dims, or `rank` is below the
        graph's rank.
      AlphagradError: the cost model's tables cannot be represented (see `_build_tables`).
    """
    label = _label(graph)
    try:
        model, as_source, as_destination = _graph_tables(graph)
    except ValueError as err:
        raise StateSizeError(f"{label} is not a valid elimination graph: {err}") from None
    R = _model_rank(model)
    for dims in (as_source, as_destination):
        if np.ndim(dims) != 2 or np.shape(dims)[1] != R:
            raise AlphagradError(
                f"{label}: its node dims have shape {np.shape(dims)} but its cost model {model.name!r} has rank {R}"
            )
    if rank is not None and rank != R:
        if rank < R:
            raise StateSizeError(
                f"{label} has structural rank {R} (arrays of rank {R}), which does not fit a state of rank "
                f"{rank} (init_state's rank; an env's is its task's, or the largest of its ChoiceGenerator's "
                f"graphs); pass rank >= {R}"
            )
        model = _pad_rank(model, rank)
        as_source, as_destination = (np.pad(d, ((0, 0), (0, rank - R)), constant_values=1) for d in (as_source, as_destination))
    return _tables_of(model), np.asarray(as_source), np.asarray(as_destination)


def _encode(graph: Graph, num_vertices: int, num_inputs: int, rank: int | None = None) -> State:
    """`init_state` with numpy arrays (used to build batches on the host)."""
    V, I = num_vertices, num_inputs
    gv, gi = graph.num_vertices, graph.num_inputs
    label = _label(graph)
    if gv > V or gi > I:
        raise StateSizeError(
            f"{label} has {gv} vertices and {gi} inputs, which does not fit a state of {V} vertex "
            f"and {I} input slots; pass max_vertices >= {gv} and max_inputs >= {gi}"
        )
    # Validates the model early, outside jit, and registers its tables under the state's key.
    tables, as_source, as_destination = _state_tables(graph, rank)
    C, R = tables.num_codes, tables.rank

    def index(node: int) -> int:
        return V + node - 1 if node <= gi else node - gi - 1

    n = V + I
    codes = np.zeros((n, V), dtype=np.int8)
    for e in graph.edges:
        if not (1 <= e.src <= gi + gv and gi < e.dst <= gi + gv) or e.src == e.dst:
            raise StateSizeError(
                f"{label} has an edge {e.src}->{e.dst}; edges must join two different nodes and end at "
                f"a vertex (node ids 1..{gi + gv}, vertices {gi + 1}..{gi + gv})"
            )
        if not MIN_CODE <= e.code < MIN_CODE + C:
            raise StateSizeError(
                f"{label} has an edge {e.src}->{e.dst} with unknown structure code {e.code} (its cost model "
                f"has codes {MIN_CODE}..{MIN_CODE + C - 1})"
            )
        # A code-0 edge behaves exactly like no edge under the cost model (checked in _tables).
        codes[index(e.src), index(e.dst)] = e.code

    _check_acyclic(graph, label)

    src_shape = np.zeros((n, R), dtype=np.int32)
    dst_shape = np.zeros((V, R), dtype=np.int32)
    src_shape[:gv] = as_source[gi + 1 : gi + gv + 1]
    src_shape[V : V + gi] = as_source[1 : gi + 1]
    dst_shape[:gv] = as_destination[gi + 1 : gi + gv + 1]

    bad_outputs = [k for k in graph.outputs if not 1 <= k <= gv]
    if bad_outputs:
        raise StateSizeError(f"{label} lists outputs {bad_outputs} that are not vertex numbers 1..{gv}")
    vertex_mask = np.arange(V) < gv
    is_output = np.zeros(V, dtype=bool)
    is_output[[k - 1 for k in set(graph.outputs)]] = True
    eliminable = vertex_mask & ~is_output
    return State(
        codes=codes,
        src_shape=src_shape,
        dst_shape=dst_shape,
        eliminable=eliminable,
        is_output=is_output,
        vertex_mask=vertex_mask,
        input_mask=np.arange(I) < gi,
        order=np.full(V, -1, dtype=np.int32),
        step_count=np.zeros((), np.int32),
        cost=np.zeros((), np.int32),
        num_intermediates=np.asarray(int(eliminable.sum()), np.int32),
        illegal=np.zeros((), bool),
        cost_model=tables.key,
    )


def init_state(
    graph: Graph, *, max_vertices: int | None = None, max_inputs: int | None = None, rank: int | None = None
) -> State:
    """Encodes `graph` as the initial state of its elimination game.

    Args:
      graph: the elimination graph; its ``cost_model`` scores the game.
      max_vertices: V, the number of vertex slots (default: the graph's vertex count). States of
        the same (V, I, R) and tables share one compiled `step` and can be stacked for `vmap`.
      max_inputs: I, the number of input slots (default: the graph's input count).
      rank: R, the number of dims per node (default: the structural rank of the graph's cost
        model, 2 for graphs of 2-D shapes). A larger R pads every node's dims with 1s and the
        masks with unselected factors, which scores exactly the same.

    Returns:
      A `State` of device arrays (see `State` for the shapes).

    Raises:
      StateSizeError: the graph is larger than (V, I) or of a higher rank than R, or is not a
        valid elimination graph (a cycle, an edge not ending at a vertex, an unknown code, an
        output that is not a vertex, or nodes whose edges disagree about their shape).
      AlphagradError: the graph's cost model cannot be represented (e.g. more codes than int8
        holds).
    """
    V = graph.num_vertices if max_vertices is None else int(max_vertices)
    I = graph.num_inputs if max_inputs is None else int(max_inputs)
    return jax.device_put(_encode(graph, V, I, None if rank is None else int(rank)))


def stack(states: list[State]) -> State:
    """Stacks states of one size (V, I, R) and tables into a batch (leading axis B).

    Raises:
      StateSizeError: the states differ in size or in tables (``cost_model``).
    """
    first = states[0]
    for s in states[1:]:
        if s.cost_model != first.cost_model or s.codes.shape != first.codes.shape or s.src_shape.shape != first.src_shape.shape:
            raise StateSizeError(
                f"cannot stack a state of tables {s.cost_model!r}, codes {s.codes.shape} and dims {s.src_shape.shape} "
                f"with one of {first.cost_model!r}, {first.codes.shape} and {first.src_shape.shape}: a batch shares one "
                "state size (max_vertices, max_inputs, rank) and one set of tables"
            )
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


# ----------------------------------------------------------------------------------------------
# The game
# ----------------------------------------------------------------------------------------------


def legal_actions(state: State) -> jax.Array:
    """bool[V]: the actions that eliminate a vertex now (all False in a terminal state)."""
    return state.eliminable


def is_terminal(state: State) -> jax.Array:
    """bool[]: every intermediate vertex has been eliminated."""
    return ~jnp.any(state.eliminable, axis=-1)


def _resolve_action(state: State, action: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The one place where illegal actions are handled.

    An action is legal iff it is in ``0..V-1`` and its vertex is eliminable: a real intermediate
    vertex not yet eliminated. Everything else (an eliminated vertex, an output, a padding slot,
    an out-of-range number, any action in a terminal state) makes `step` a no-op: the state is
    returned unchanged except for its ``illegal`` flag, the reward is 0, and nothing is counted
    as an elimination. In a terminal state the no-op is the absorbing transition and does *not*
    set ``illegal``.

    Returns:
      (legal: bool[], index: int32[] clipped into 0..V-1 (safe to gather with), illegal flag).
    """
    V = state.num_vertex_slots
    action = jnp.asarray(action, dtype=jnp.int32)
    in_range = (action >= 0) & (action < V)
    index = jnp.clip(action, 0, V - 1)
    legal = in_range & state.eliminable[index]
    illegal = ~legal & jnp.any(state.eliminable)
    return legal, index, illegal


def _predecessor_sums(in_codes, src_factors, rows, num_codes: int) -> jax.Array:
    """int32[C, 2**R]: per code j of p->v, the sum over predecessors p in `rows` of p's factors.

    Rows past the predecessors (index N) read code 0, whose table entries cost nothing.
    """
    j = in_codes.at[rows].get(mode="fill", fill_value=0)
    return jax.ops.segment_sum(src_factors.at[rows].get(mode="clip"), j - MIN_CODE, num_segments=num_codes)


def _step_cost(state: State, tables: _Tables, index, s_in, out_codes) -> jax.Array:
    """int32[]: multiplications of eliminating vertex `index`.

    Args:
      s_in: int32[C, 2**R], `_predecessor_sums` over all predecessors of v.
      out_codes: int32[V], codes of the edges v->c (0 = none).

    The pair (p, c) costs ``valid[j, k] * P[p, p_mask[j, k]] * C[c, c_mask[j, k]] *
    Vf[v_mask[j, k]]`` with j, k the codes of p->v and v->c and P, C, Vf the factor products
    of p, c, v. Summing over p and c first, per code, leaves a C x C sum.
    """
    s_out = jax.ops.segment_sum(_factors(state.dst_shape), out_codes - MIN_CODE, num_segments=tables.num_codes)
    v_factor = _factors(jnp.abs(state.src_shape[index]))  # [2**R]
    if tables.rank == 2:
        # Select by sub-mask with constant masks (cheaper than gathers under vmap).
        p_part = sum(jnp.where(tables.p_mask == m, s_in[:, m][:, None], 0) for m in range(4))  # [C in, C out]
        c_part = sum(jnp.where(tables.c_mask == m, s_out[:, m][None, :], 0) for m in range(4))
        v_part = sum(jnp.where(tables.v_mask == m, v_factor[m], 0) for m in range(4))
    else:  # 2**R sub-masks: gathers, whose work does not grow with 2**R
        p_part = jnp.take_along_axis(s_in, jnp.asarray(tables.p_mask), axis=1)  # [j, k] = s_in[j, p_mask[j, k]]
        c_part = jnp.take_along_axis(s_out, jnp.asarray(tables.c_mask.T), axis=1).T  # s_out[k, c_mask[j, k]]
        v_part = v_factor[jnp.asarray(tables.v_mask)]
    # dtype: a reduction of int32 would give int64 under jax_enable_x64, and the cost is an
    # int32 field of State (scan carries and vmapped batches need one dtype in both modes).
    return jnp.sum(jnp.where(tables.valid, p_part * c_part * v_part, 0), dtype=jnp.int32)


#: Predecessor rows updated per pass of `_eliminate`. Most vertices have fewer predecessors,
#: so a step usually does one pass over [_ROW_CHUNK, V] entries.
_ROW_CHUNK = 8


def _update_rows(codes, tables: _Tables, rows, in_codes, out_codes, column):
    """Writes the new codes of rows `rows` (int32[K], N = none) of `codes`, zeroing `column`."""
    old = codes.at[rows].get(mode="clip")  # [K, V]; rows == N read row N - 1 and are dropped below
    j = in_codes.at[rows].get(mode="clip")  # [K]
    C = tables.num_codes
    flat = ((old.astype(jnp.int32) - MIN_CODE) * C + (j - MIN_CODE)[:, None]) * C
    new = jnp.asarray(tables.update)[flat + (out_codes - MIN_CODE)[None, :]]
    new = jnp.where(jnp.arange(codes.shape[1]) == column, jnp.int8(0), new)
    return codes.at[rows].set(new, mode="drop")


def _chunk(tables: _Tables, codes, s_in, rows, in_codes, out_codes, column, src_factors, start):
    """Processes predecessor rows ``rows[start : start + _ROW_CHUNK]``."""
    chunk = jax.lax.dynamic_slice(rows, (start,), (_ROW_CHUNK,))
    codes = _update_rows(codes, tables, chunk, in_codes, out_codes, column)
    return codes, s_in + _predecessor_sums(in_codes, src_factors, chunk, tables.num_codes)


@functools.cache
def _more_chunks(cost_model: str):
    """The passes after the first over the predecessor rows, as a function with its own batching
    rule: under `vmap` the loop runs as often as the state with most predecessors needs, on the
    whole batch (rows past a state's predecessors are dropped), instead of `while_loop`'s
    batching, which would select between old and new code matrices of the whole batch on every
    pass."""
    tables = _tables(cost_model)

    def run(step_chunk, codes, s_in, limit):
        def body(carry):
            codes, s_in, start = carry
            codes, s_in = step_chunk(codes, s_in, start)
            return codes, s_in, start + _ROW_CHUNK

        codes, s_in, _ = jax.lax.while_loop(lambda c: c[2] < limit, body, (codes, s_in, jnp.int32(_ROW_CHUNK)))
        return codes, s_in

    @jax.custom_batching.custom_vmap
    def more_chunks(codes, s_in, rows, in_codes, out_codes, column, src_factors, num_preds):
        def step_chunk(codes, s_in, start):
            return _chunk(tables, codes, s_in, rows, in_codes, out_codes, column, src_factors, start)

        return run(step_chunk, codes, s_in, num_preds)

    @more_chunks.def_vmap
    def more_chunks_batched(axis_size, in_batched, *args):
        args = [a if b else jnp.broadcast_to(a, (axis_size,) + jnp.shape(a)) for a, b in zip(args, in_batched)]
        codes, s_in, rows, in_codes, out_codes, column, src_factors, num_preds = args
        batched = jax.vmap(functools.partial(_chunk, tables), in_axes=(0,) * 7 + (None,))

        def step_chunk(codes, s_in, start):
            return batched(codes, s_in, rows, in_codes, out_codes, column, src_factors, start)

        return run(step_chunk, codes, s_in, jnp.max(num_preds)), (True, True)

    return more_chunks


def _eliminate(state: State, tables: _Tables, in_codes, out_codes, column):
    """The new code matrix and the predecessor sums of eliminating the vertex with in-edge
    codes `in_codes` (int32[N]) and out-edge codes `out_codes` (int32[V]).

    Adds every product (v->c)(p->v) into p->c and deletes the in-edges of v (``column``: v's
    index, or V to keep them). Only predecessor rows change (the in-edges of v are exactly
    their entries in column v). They are compacted to the front of a row list and processed
    `_ROW_CHUNK` rows at a time: one pass always, further passes (`_more_chunks`) only for
    vertices with more predecessors.

    Returns:
      (codes int8[N, V] without v's in-edges, s_in int32[C, 2**R] as `_predecessor_sums`).
    """
    codes = state.codes
    n = codes.shape[0]
    src_factors = _factors(state.src_shape)
    is_pred = in_codes != 0
    position = jnp.cumsum(is_pred, dtype=jnp.int32) - 1  # int32 under jax_enable_x64 too
    num_preds = jnp.sum(is_pred, dtype=jnp.int32)
    rows = jnp.full(n + _ROW_CHUNK, n, dtype=jnp.int32)
    rows = rows.at[jnp.where(is_pred, position, n + _ROW_CHUNK)].set(jnp.arange(n, dtype=jnp.int32), mode="drop")
    s_in = jnp.zeros((tables.num_codes, 2**tables.rank), jnp.int32)
    codes, s_in = _chunk(tables, codes, s_in, rows, in_codes, out_codes, column, src_factors, 0)
    more = _more_chunks(state.cost_model)
    return more(codes, s_in, rows, in_codes, out_codes, column, src_factors, num_preds)


def step(state: State, action, *, reward_scale: float = 1.0) -> tuple[State, jax.Array, jax.Array]:
    """Eliminates vertex ``action + 1``.

    Args:
      state: the current state (unbatched; use `jax.vmap` for a batch).
      action: int32[] in 0..V-1. An illegal action is a no-op (see `_resolve_action`).
      reward_scale: multiplier of the reward.

    Returns:
      (next state, reward: float32[] = -multiplications * reward_scale, terminated: bool[]).
      The multiplications of the step are ``next.cost - state.cost``, exact in int32 (the
      float32 reward is exact below 2**24 multiplications per step).

    Under ``jax.jit(..., donate_argnums=0)`` (or inside ``lax.scan``) the code matrix is updated
    in place; the work per step is O((N + V) * C + 8 * V), plus 8 * V per further 8
    predecessors of the eliminated vertex.
    """
    tables = _tables(state.cost_model)
    legal, a, illegal = _resolve_action(state, action)
    V = state.num_vertex_slots

    codes = state.codes
    in_codes = jnp.where(legal, codes[:, a].astype(jnp.int32), 0)  # p -> v, [N]
    out_codes = jnp.where(legal, codes[a, :].astype(jnp.int32), 0)  # v -> c, [V]
    # Add the products and delete v: its in-edges (column a, inside the predecessor rows) and
    # its out-edges (row a).
    codes, s_in = _eliminate(state, tables, in_codes, out_codes, jnp.where(legal, a, V))
    codes = codes.at[a, :].set(jnp.where(legal, jnp.int8(0), codes[a, :]))
    cost = _step_cost(state, tables, a, s_in, out_codes)

    slot = jnp.arange(V) == a
    at_step = jnp.arange(V) == state.step_count
    new_state = dataclasses.replace(
        state,
        codes=codes,
        eliminable=state.eliminable & ~(legal & slot),
        order=jnp.where(legal & at_step, a + 1, state.order),
        step_count=state.step_count + legal.astype(jnp.int32),
        cost=state.cost + cost,
        illegal=illegal,
    )
    reward = -cost.astype(jnp.float32) * reward_scale
    return new_state, reward, is_terminal(new_state)


def rollout(state: State, actions, *, reward_scale: float = 1.0) -> tuple[State, jax.Array, jax.Array]:
    """Plays `actions` (int32[T]) with `jax.lax.scan`.

    Returns:
      (final state, rewards: float32[T], terminated: bool[T]).
    """

    def body(s, a):
        s, r, t = step(s, a, reward_scale=reward_scale)
        return s, (r, t)

    final, (rewards, terminated) = jax.lax.scan(body, state, jnp.asarray(actions, jnp.int32))
    return final, rewards, terminated


def node_observation(src_shape, dst_shape, vertex_mask, is_output, eliminable, input_mask):
    """The per-node part of the observation, from the `State` fields of the same names.

    Returns:
      (shapes int32[N, 2R] per node (its R source dims, then its R destination dims; for R = 2:
       src d1, src d2, dst d1, dst d2; inputs repeat their dims),
       node_type int8[N] NODE_PADDING, NODE_INPUT, NODE_INTERMEDIATE, NODE_ELIMINATED or NODE_OUTPUT).
    """
    V = eliminable.shape[-1]
    dst = jnp.concatenate([dst_shape, src_shape[V:]], axis=0)
    vertex_type = jnp.where(
        ~vertex_mask,
        NODE_PADDING,
        jnp.where(is_output, NODE_OUTPUT, jnp.where(eliminable, NODE_INTERMEDIATE, NODE_ELIMINATED)),
    )
    input_type = jnp.where(input_mask, NODE_INPUT, NODE_PADDING)
    shapes = jnp.concatenate([src_shape, dst], axis=-1)
    return shapes, jnp.concatenate([vertex_type, input_type]).astype(jnp.int8)


def observe(state: State) -> dict[str, jax.Array]:
    """The observation a policy sees: fixed-width features per node plus the edge-code matrix.

    Returns a dict (add a leading batch axis under vmap):
      codes: int8[N, V]  # codes[src, dst] of the current graph, 0 = no edge (node layout above)
      shapes: int32[N, 2R]  # per node (R source dims, then R destination dims; for R = 2: src d1,
        src d2, dst d1, dst d2); inputs repeat their dims
      node_type: int8[N]  # NODE_PADDING, NODE_INPUT, NODE_INTERMEDIATE, NODE_ELIMINATED, NODE_OUTPUT
      action_mask: int8[V]  # 1 = legal action (the same as `legal_actions`)
    """
    shapes, node_type = node_observation(
        state.src_shape, state.dst_shape, state.vertex_mask, state.is_output, state.eliminable, state.input_mask
    )
    return {
        "codes": state.codes,
        "shapes": shapes,
        "node_type": node_type,
        "action_mask": state.eliminable.astype(jnp.int8),
    }


#: Entries per block of `edge_list`'s two-level search (a row is cut into blocks).
_EDGE_BLOCK = 32


def edge_list(codes: jax.Array, capacity: int) -> tuple[jax.Array, jax.Array]:
    """The edges of a code matrix as a padded list: memory that grows with the edges, not N x V.

    Args:
      codes: int8[N, V], a `State`'s ``codes`` (unbatched; vmap for a batch).
      capacity: E, the list's length (static).

    Returns:
      (edges int32[E]: ``src * V + dst`` of each edge, in row-major order (vertex rows first,
       then inputs), 0 in the unused slots; codes int8[E]: its code, 0 in the unused slots). A
       matrix of more than E edges keeps its first E in that order (the rest is dropped).

    Work: one pass over the N * V codes (edges per block of 32 entries of a row), then per slot
    a binary search over the blocks and a look into one block: no scan or scatter over N * V
    entries (`jnp.nonzero`'s cumulative sum of 4 million entries takes 100 ms on a CPU core).
    """
    V = codes.shape[1]
    wide = V + (-V % _EDGE_BLOCK)  # row length in whole blocks
    blocks = jnp.pad(codes, ((0, 0), (0, wide - V))).reshape(-1, _EDGE_BLOCK)
    present = blocks != 0
    count = jnp.sum(present, axis=1, dtype=jnp.int32)  # [number of blocks]
    ends = jnp.cumsum(count, dtype=jnp.int32)  # edges up to each block's end
    slot = jnp.arange(capacity, dtype=jnp.int32)
    used = slot < ends[-1]
    block = jnp.minimum(jnp.searchsorted(ends, slot, side="right"), blocks.shape[0] - 1).astype(jnp.int32)
    rank = slot - (ends[block] - count[block])  # the slot's edge is the rank-th (0-based) of its block
    inside = present[block]  # [E, block]
    before = jnp.cumsum(inside, axis=1, dtype=jnp.int32)
    offset = jnp.argmax(inside & (before == rank[:, None] + 1), axis=1).astype(jnp.int32)
    position = block * _EDGE_BLOCK + offset  # in the rows of `wide` entries
    edges = jnp.where(used, position // wide * V + position % wide, 0)
    return edges, jnp.where(used, blocks[block, offset], jnp.int8(0))


def order_of(state: State) -> list[int]:
    """The elimination order played so far (vertex numbers), read on the host."""
    order = np.asarray(state.order)
    return [int(k) for k in order[: int(state.step_count)]]
