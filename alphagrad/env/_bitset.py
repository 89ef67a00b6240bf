"""The bitset core: a jitted elimination step specialised to scalar graphs.

On a scalar graph (every edge a dense 1x1 partial whose products and sums stay dense 1x1 and
cost 1 under the graph's cost model) eliminating v costs |preds(v)| * |succs(v)| (REFERENCE.md
2.2) and every edge keeps code 1, so the state needs only the edges' presence: the successor
sets as bit words, ``succ: uint32[N, W]`` with W = ceil(V / 32). A step is O(N * W) word
operations, against the table-driven `step`'s O((N + V) * C) work on int8 codes, which is what
makes tens of thousands of complete orders per second possible on CPU.

The node layout and the actions are those of `alphagrad.env.step`: index ``a`` in ``0..V-1`` is
vertex ``a + 1`` (action ``a`` eliminates it), index ``V + i - 1`` is input ``i``; slots past the
graph's own vertices and inputs are padding, so one compiled `bitset_step` serves every scalar
graph of at most (V, I). An illegal action (a vertex that is eliminated, an output, padding, out
of range) is a no-op, so an order can be completed by replaying any full order.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad.env import _core
from alphagrad.env._core import StateSizeError
from alphagrad.graph import MIN_CODE, Graph

__all__ = ["BitsetState", "is_scalar_graph", "bitset_init", "bitset_step"]


class BitsetState(NamedTuple):
    """State of the bitset core, padded to V vertex slots and I input slots (N = V + I).

    A pytree of arrays; under `jax.vmap` every field gains a leading batch axis.

    Attributes:
      succ: uint32[N, W]  # bit ``a`` (word a >> 5, bit a & 31) of row n: edge n -> vertex a + 1
      eliminable: bool[V]  # intermediate and not yet eliminated: the legal actions
      cost: int32[]  # multiplications so far
    """

    succ: jax.Array
    eliminable: jax.Array
    cost: jax.Array


def is_scalar_graph(graph: Graph) -> bool:
    """Whether every edge is a dense 1x1 partial (code 1, every dim of both ends 1) whose
    products and sums, under the graph's cost model, stay dense and cost 1: the graphs the
    bitset core scores exactly."""
    if any(e.code != 1 for e in graph.edges):
        return False
    try:
        model, as_source, as_destination = _core._graph_tables(graph)
    except ValueError:  # edges that disagree about a node's dims: not a valid graph
        return False
    one = 1 - MIN_CODE  # the table index of code 1
    # With every dim 1, any selection of factors multiplies to 1: the pair costs 1 iff it costs anything.
    costs_one = bool(np.asarray(model.mask)[one, one].any()) or (1, 1) in model.unit_pairs
    if not costs_one or model.product_code(1, 1) != 1 or model.sum_code(1, 1) != 1:
        return False
    return all((as_source[e.src] == 1).all() and (as_destination[e.dst] == 1).all() for e in graph.edges)


def bitset_init(graph: Graph, *, max_vertices: int | None = None, max_inputs: int | None = None) -> BitsetState:
    """Encodes a scalar graph as the initial state of the bitset core.

    Args:
      graph: a scalar graph (`is_scalar_graph`).
      max_vertices: V, the number of vertex slots (default: the graph's vertex count). States of
        the same (V, I) share one compiled `bitset_step` and can be stacked for `vmap`.
      max_inputs: I, the number of input slots (default: the graph's input count).

    Returns:
      A `BitsetState` of device arrays.

    Raises:
      StateSizeError: the graph is not scalar, or has more vertices or inputs than (V, I).
    """
    gv, gi = graph.num_vertices, graph.num_inputs
    V = gv if max_vertices is None else int(max_vertices)
    I = gi if max_inputs is None else int(max_inputs)
    label = f"graph {graph.name!r}" if graph.name else "the graph"
    if not is_scalar_graph(graph):
        raise StateSizeError(
            f"{label} is not a scalar graph (every edge dense 1x1 with code 1, costing 1 under cost model "
            f"{graph.cost_model!r}); the bitset core cannot score it, use alphagrad.env.init_state"
        )
    if gv > V or gi > I:
        raise StateSizeError(
            f"{label} has {gv} vertices and {gi} inputs, which does not fit a state of {V} vertex "
            f"and {I} input slots; pass max_vertices >= {gv} and max_inputs >= {gi}"
        )
    W = max(1, (V + 31) // 32)
    succ = np.zeros((V + I, W), dtype=np.uint32)
    for e in graph.edges:
        row = e.src - gi - 1 if e.src > gi else V + e.src - 1
        a = e.dst - gi - 1
        succ[row, a >> 5] |= np.uint32(1) << np.uint32(a & 31)
    eliminable = np.zeros(V, dtype=bool)
    eliminable[[k - 1 for k in graph.intermediates]] = True
    return BitsetState(jnp.asarray(succ), jnp.asarray(eliminable), jnp.zeros((), jnp.int32))


def bitset_step(state: BitsetState, action) -> BitsetState:
    """Eliminates vertex ``action + 1`` (int32[] in 0..V-1; anything else is a no-op).

    Every predecessor p gains v's successors (p -> c for each c; an existing edge absorbs the
    product), and v loses its edges. Pure; jittable and vmappable. The step's multiplications
    are ``next.cost - state.cost``.
    """
    succ = state.succ
    V = state.eliminable.shape[0]
    action = jnp.asarray(action, jnp.int32)
    a = jnp.clip(action, 0, V - 1)
    legal = state.eliminable[a] & (action >= 0) & (action < V)
    word, bit = a >> 5, (a & 31).astype(jnp.uint32)
    column_bit = jnp.left_shift(jnp.uint32(1), bit)
    is_pred = ((succ[:, word] & column_bit) != 0) & legal  # [N]
    out = succ[a]  # [W]
    # dtype=int32: reductions default to int64 under jax_enable_x64; the cost stays int32 in both modes.
    cost = jnp.sum(is_pred, dtype=jnp.int32) * jnp.sum(jax.lax.population_count(out), dtype=jnp.int32)
    succ = jnp.where(is_pred[:, None], succ | out[None, :], succ)
    keep_word = jnp.where((jnp.arange(succ.shape[1]) == word) & legal, ~column_bit, jnp.uint32(0xFFFFFFFF))
    succ = succ & keep_word[None, :]
    succ = succ.at[a].set(jnp.where(legal, jnp.zeros_like(out), succ[a]))
    return BitsetState(succ, state.eliminable & ~((jnp.arange(V) == a) & legal), state.cost + cost)
