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
(``codes[src, dst]``, 0 = no edge). The shapes an edge p->c carries are always
``(dst_shape[c], src_shape[p])`` (`Graph.node_shapes`), and elimination keeps it that way,
so shapes live in static per-node arrays and the code matrix is the only part that changes.

Cost of one step (eliminating vertex v), REFERENCE.md sections 2.1-2.2: for every predecessor
p and successor c, the product (v->c)(p->v) costs the product of the size factors selected by
``mask[code(p->v), code(v->c)]`` among (c1, c2, |v1|, |v2|, p1, p2), factors <= 0 counting as 1,
0 where the mask is empty, exactly 1 for the model's unit pairs; the tables are those of
`graph.cost_model(graph.cost_model)`, so an episode's total equals `graph.cost`. A pair's cost
factorises into a p part, a c part and a v part chosen by 2-bit sub-masks, so the step's total
comes from per-code sums over predecessors and over successors (segment sums) and a 22 x 22
table, never pair by pair. The new codes come from one fused ``[old, in, out] -> code`` table
("MUL, then ADD into an existing edge"), gathered only for predecessor rows, which are
compacted and processed 8 at a time (see `_eliminate`).

Illegal actions are handled in one place, `_resolve_action`: the step becomes a no-op.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad.errors import AlphagradError
from alphagrad.graph import MAX_CODE, MIN_CODE, NUM_CODES, Graph
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

    A frozen pytree of arrays; ``cost_model`` is static metadata (a string), so states of
    different cost models never share a compiled step or a vmapped batch. Under `jax.vmap`
    every field gains a leading batch axis.

    Attributes:
      codes: int8[N, V]  # codes[src, dst] structure code of edge src->dst, 0 = no edge;
        rows 0..V-1 are vertices 1..V as sources, rows V..N-1 inputs 1..I.
      src_shape: int32[N, 2]  # 2-D shape of each node on the source side of its edges (0 = padding)
      dst_shape: int32[V, 2]  # 2-D shape of each vertex on the destination side of its edges
      eliminable: bool[V]  # intermediate and not yet eliminated: the legal actions
      is_output: bool[V]  # output vertex (never eliminable)
      vertex_mask: bool[V]  # a real vertex of the graph (False = padding slot)
      input_mask: bool[I]  # a real input of the graph (False = padding slot)
      order: int32[V]  # vertex numbers (1-based) eliminated so far, in order; -1 past step_count
      step_count: int32[]  # eliminations performed
      cost: int32[]  # multiplications so far (int32: totals must stay below 2**31)
      num_intermediates: int32[]  # eliminations a complete episode performs
      illegal: bool[]  # the last step's action was illegal (and was a no-op)
      cost_model: str  # static: name of the cost model the graph is scored with
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


class _Tables(NamedTuple):
    """The cost model re-expressed for vectorised lookups (numpy constants; indices = code + 10).

    Attributes:
      update: int8[22 * 22 * 22], ``update[(old * 22 + in) * 22 + out]``: the code of edge p->c
        after eliminating v, given its old code and the codes of p->v and v->c: unchanged when
        p->v or v->c is absent, else MUL[in, out], added into an existing edge with ADD[old, .].
      valid: bool[22, 22], ``valid[in, out]``: the pair of real edges costs something (its mask
        is not empty, or it is a unit pair).
      p_mask, c_mask, v_mask: int32[22, 22], the 2-bit sub-mask of the pair's mask over the
        (p1, p2), (c1, c2), (v1, v2) factors (bit 0: first dimension, bit 1: second); 0 for unit
        pairs, whose product costs exactly 1.
    """

    update: np.ndarray
    valid: np.ndarray
    p_mask: np.ndarray
    c_mask: np.ndarray
    v_mask: np.ndarray


@functools.cache
def _tables(name: str) -> _Tables:
    """The vectorised tables of cost model `name` (validated to be representable)."""
    model = _load_cost_model(name)
    mask = np.asarray(model.mask, dtype=bool)
    mul = np.asarray(model.mul, dtype=np.int64)
    add = np.asarray(model.add, dtype=np.int64)
    idx = np.arange(NUM_CODES)
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
    if ((mul < MIN_CODE) | (mul > MAX_CODE) | (add < MIN_CODE) | (add > MAX_CODE)).any():
        raise AlphagradError(f"cost model {name!r} produces codes outside {MIN_CODE}..{MAX_CODE}")

    old, inn, out = np.meshgrid(idx, idx, idx, indexing="ij")
    product = mul[inn, out]
    summed = np.where(old == _ZERO, product, add[old, product - MIN_CODE])
    present = (inn != _ZERO) & (out != _ZERO)
    update = np.where(present, summed, old + MIN_CODE).astype(np.int8).reshape(-1)

    unit = np.zeros((NUM_CODES, NUM_CODES), dtype=bool)
    for a, b in model.unit_pairs:
        unit[a - MIN_CODE, b - MIN_CODE] = True
    valid = (mask.any(-1) | unit) & both

    def sub_mask(k: int) -> np.ndarray:  # factors k, k + 1 of (c1, c2, v1, v2, p1, p2)
        return np.where(unit | ~valid, 0, mask[..., k] + 2 * mask[..., k + 1]).astype(np.int32)

    tables = _Tables(update=update, valid=valid, p_mask=sub_mask(4), c_mask=sub_mask(0), v_mask=sub_mask(2))
    for arr in tables:
        arr.setflags(write=False)
    return tables


def _factors(shape: jax.Array) -> jax.Array:
    """int32[..., 2] sizes -> int32[..., 4] products of the dimensions selected by m = 0..3.

    A negative size counts as 1 (REFERENCE.md 2.2); a zero-size axis (an empty array, or a
    padding node, which has no edges) counts as 0, as in `graph.CostModel.pair_cost`.
    """
    f = jnp.where(shape >= 0, shape, 1)
    one = jnp.ones_like(f[..., 0])
    return jnp.stack([one, f[..., 0], f[..., 1], f[..., 0] * f[..., 1]], axis=-1)


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


def _encode(graph: Graph, num_vertices: int, num_inputs: int) -> State:
    """`init_state` with numpy arrays (used to build batches on the host)."""
    V, I = num_vertices, num_inputs
    gv, gi = graph.num_vertices, graph.num_inputs
    label = f"graph {graph.name!r}" if graph.name else "the graph"
    if gv > V or gi > I:
        raise StateSizeError(
            f"{label} has {gv} vertices and {gi} inputs, which does not fit a state of {V} vertex "
            f"and {I} input slots; pass max_vertices >= {gv} and max_inputs >= {gi}"
        )
    _tables(graph.cost_model)  # validates the model early, outside jit
    try:
        as_source, as_destination = graph.node_shapes()
    except ValueError as err:
        raise StateSizeError(f"{label} is not a valid elimination graph: {err}") from None

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
        if not MIN_CODE <= e.code <= MAX_CODE:
            raise StateSizeError(f"{label} has an edge {e.src}->{e.dst} with unknown structure code {e.code}")
        # A code-0 edge behaves exactly like no edge under the cost model (checked in _tables).
        codes[index(e.src), index(e.dst)] = e.code

    _check_acyclic(graph, label)

    src_shape = np.zeros((n, 2), dtype=np.int32)
    dst_shape = np.zeros((V, 2), dtype=np.int32)
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
        cost_model=graph.cost_model,
    )


def init_state(graph: Graph, *, max_vertices: int | None = None, max_inputs: int | None = None) -> State:
    """Encodes `graph` as the initial state of its elimination game.

    Args:
      graph: the elimination graph; its ``cost_model`` scores the game.
      max_vertices: V, the number of vertex slots (default: the graph's vertex count). States of
        the same (V, I) and cost model share one compiled `step` and can be stacked for `vmap`.
      max_inputs: I, the number of input slots (default: the graph's input count).

    Returns:
      A `State` of device arrays (see `State` for the shapes).

    Raises:
      StateSizeError: the graph is larger than (V, I), or is not a valid elimination graph (a
        cycle, an edge not ending at a vertex, an unknown code, an output that is not a vertex,
        or nodes whose edges disagree about their shape).
    """
    V = graph.num_vertices if max_vertices is None else int(max_vertices)
    I = graph.num_inputs if max_inputs is None else int(max_inputs)
    return jax.device_put(_encode(graph, V, I))


def stack(states: list[State]) -> State:
    """Stacks states of one size and cost model into a batch (leading axis B)."""
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


def _predecessor_sums(in_codes, src_factors, rows) -> jax.Array:
    """int32[22, 4]: per code j of p->v, the sum over predecessors p in `rows` of p's factors.

    Rows past the predecessors (index N) read code 0, whose table entries cost nothing.
    """
    j = in_codes.at[rows].get(mode="fill", fill_value=0)
    return jax.ops.segment_sum(src_factors.at[rows].get(mode="clip"), j - MIN_CODE, num_segments=NUM_CODES)


def _step_cost(state: State, tables: _Tables, index, s_in, out_codes) -> jax.Array:
    """int32[]: multiplications of eliminating vertex `index`.

    Args:
      s_in: int32[22, 4], `_predecessor_sums` over all predecessors of v.
      out_codes: int32[V], codes of the edges v->c (0 = none).

    The pair (p, c) costs ``valid[j, k] * P[p, p_mask[j, k]] * C[c, c_mask[j, k]] *
    Vf[v_mask[j, k]]`` with j, k the codes of p->v and v->c and P, C, Vf the factor products
    of p, c, v. Summing over p and c first, per code, leaves a 22 x 22 sum.
    """
    s_out = jax.ops.segment_sum(_factors(state.dst_shape), out_codes - MIN_CODE, num_segments=NUM_CODES)
    v_factor = _factors(jnp.abs(state.src_shape[index]))  # [4]
    # Select by sub-mask with constant masks (cheaper than gathers under vmap).
    p_part = sum(jnp.where(tables.p_mask == m, s_in[:, m][:, None], 0) for m in range(4))  # [22 in, 22 out]
    c_part = sum(jnp.where(tables.c_mask == m, s_out[:, m][None, :], 0) for m in range(4))
    v_part = sum(jnp.where(tables.v_mask == m, v_factor[m], 0) for m in range(4))
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
    flat = ((old.astype(jnp.int32) - MIN_CODE) * NUM_CODES + (j - MIN_CODE)[:, None]) * NUM_CODES
    new = jnp.asarray(tables.update)[flat + (out_codes - MIN_CODE)[None, :]]
    new = jnp.where(jnp.arange(codes.shape[1]) == column, jnp.int8(0), new)
    return codes.at[rows].set(new, mode="drop")


def _chunk(tables: _Tables, codes, s_in, rows, in_codes, out_codes, column, src_factors, start):
    """Processes predecessor rows ``rows[start : start + _ROW_CHUNK]``."""
    chunk = jax.lax.dynamic_slice(rows, (start,), (_ROW_CHUNK,))
    codes = _update_rows(codes, tables, chunk, in_codes, out_codes, column)
    return codes, s_in + _predecessor_sums(in_codes, src_factors, chunk)


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
      (codes int8[N, V] without v's in-edges, s_in int32[22, 4] as `_predecessor_sums`).
    """
    codes = state.codes
    n = codes.shape[0]
    src_factors = _factors(state.src_shape)
    is_pred = in_codes != 0
    position = jnp.cumsum(is_pred, dtype=jnp.int32) - 1  # int32 under jax_enable_x64 too
    num_preds = jnp.sum(is_pred, dtype=jnp.int32)
    rows = jnp.full(n + _ROW_CHUNK, n, dtype=jnp.int32)
    rows = rows.at[jnp.where(is_pred, position, n + _ROW_CHUNK)].set(jnp.arange(n, dtype=jnp.int32), mode="drop")
    s_in = jnp.zeros((NUM_CODES, 4), jnp.int32)
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
    in place; the work per step is O((N + V) * 22 + 8 * V), plus 8 * V per further 8
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
      (shapes int32[N, 4] per node (src d1, src d2, dst d1, dst d2; inputs repeat their shape),
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
      shapes: int32[N, 4]  # per node (src d1, src d2, dst d1, dst d2); inputs repeat their shape
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
