"""Batched, jitted scoring of elimination orders (the inner loop of annealing and beam search).

An `Evaluator` wraps one graph as a pure ``step(state, action) -> state`` over a fixed-size
pytree, so that thousands of orders are scored at once with ``jax.vmap``. Two back ends:

- ``"bitset"`` for scalar graphs (every edge dense 1x1 and the model's dense x dense product costs
  1): the state is the successor sets as bit words, ``succ: uint32[N, W]`` (W = ceil(V / 32)), and
  eliminating v costs |preds(v)| * |succs(v)| (REFERENCE.md 2.2). A step is O(N * W) word
  operations, which is what makes ten thousands of complete orders per second possible on CPU.
- ``"env"`` for every other graph: `alphagrad.env.step` with the graph's cost model tables.

Actions are vertex numbers minus one, as in `alphagrad.env`. An illegal action (a vertex that is
eliminated, an output, or padding) is a no-op in both back ends, so an order can be completed by
replaying any full order: vertices already eliminated are skipped.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad import env as env_lib
from alphagrad.graph import Graph, cost_model

__all__ = ["Evaluator", "evaluator", "is_scalar_graph"]


class BitsetState(NamedTuple):
    """State of the scalar back end (node layout of `alphagrad.env`: vertices 0..V-1, then inputs).

    Attributes:
      succ: uint32[N, W]  # bit a of row n: edge n -> vertex a + 1
      eliminable: bool[V]  # not yet eliminated intermediates
      cost: int32[]  # multiplications so far
    """

    succ: jax.Array
    eliminable: jax.Array
    cost: jax.Array


def is_scalar_graph(graph: Graph) -> bool:
    """Whether every edge is a dense 1x1 partial whose products and sums stay dense and cost 1."""
    model = cost_model(graph.cost_model)
    one = (1, 1)
    if model.pair_cost(1, 1, one, one, one) != 1 or model.product_code(1, 1) != 1 or model.sum_code(1, 1) != 1:
        return False
    return all(e.code == 1 and e.out_shape == one and e.in_shape == one for e in graph.edges)


def _bitset_init(graph: Graph) -> BitsetState:
    V, I = graph.num_vertices, graph.num_inputs
    W = max(1, (V + 31) // 32)
    succ = np.zeros((V + I, W), dtype=np.uint32)
    for e in graph.edges:
        row = e.src - I - 1 if e.src > I else V + e.src - 1
        a = e.dst - I - 1
        succ[row, a >> 5] |= np.uint32(1) << np.uint32(a & 31)
    eliminable = np.zeros(V, dtype=bool)
    eliminable[[k - 1 for k in graph.intermediates]] = True
    return BitsetState(jnp.asarray(succ), jnp.asarray(eliminable), jnp.zeros((), jnp.int32))


def _bitset_step(state: BitsetState, action) -> BitsetState:
    """Eliminates vertex ``action + 1`` (a no-op if it is not eliminable). Pure; vmappable."""
    succ = state.succ
    V = state.eliminable.shape[0]
    a = jnp.clip(jnp.asarray(action, jnp.int32), 0, V - 1)
    legal = state.eliminable[a] & (action >= 0) & (action < V)
    word, bit = a >> 5, (a & 31).astype(jnp.uint32)
    column_bit = jnp.left_shift(jnp.uint32(1), bit)
    is_pred = ((succ[:, word] & column_bit) != 0) & legal  # [N]
    out = succ[a]  # [W]
    cost = jnp.sum(is_pred.astype(jnp.int32)) * jnp.sum(jax.lax.population_count(out).astype(jnp.int32))
    succ = jnp.where(is_pred[:, None], succ | out[None, :], succ)
    keep_word = jnp.where((jnp.arange(succ.shape[1]) == word) & legal, ~column_bit, jnp.uint32(0xFFFFFFFF))
    succ = succ & keep_word[None, :]
    succ = succ.at[a].set(jnp.where(legal, jnp.zeros_like(out), succ[a]))
    return BitsetState(succ, state.eliminable & ~((jnp.arange(V) == a) & legal), state.cost + cost)


def _env_step(state: env_lib.State, action) -> env_lib.State:
    return env_lib.step(state, action)[0]


@dataclasses.dataclass(frozen=True, eq=False)
class Evaluator:
    """Scores orders of one graph in batches with jitted, vmapped steps.

    Attributes:
      graph: the graph.
      backend: "bitset" (scalar graphs) or "env" (`alphagrad.env` core).
      init: the initial state (a pytree of device arrays, unbatched).
      step: pure ``(state, action int32[]) -> state``; an illegal action is a no-op.
      actions: int32[T] the legal actions (intermediate vertex numbers minus one), T = number of
        intermediates.
    """

    graph: Graph
    backend: str
    init: Any
    step: Callable[[Any, Any], Any]
    actions: np.ndarray

    @property
    def num_actions(self) -> int:
        """V, the number of action slots (vertex slots)."""
        return self.graph.num_vertices

    @staticmethod
    def cost_of(state) -> jax.Array:
        """int32[...]: multiplications accumulated by (a batch of) states."""
        return state.cost

    @staticmethod
    def legal_of(state) -> jax.Array:
        """bool[..., V]: eliminable vertices of (a batch of) states."""
        return state.eliminable

    def play(self, state, actions):
        """Plays ``actions`` (int32[L]) from one state with `lax.scan`; pure, vmappable."""
        def body(s, a):
            return self.step(s, a), None

        return jax.lax.scan(body, state, actions)[0]

    @functools.cached_property
    def order_costs_fn(self) -> Callable[[jax.Array], jax.Array]:
        """Jitted ``int32[B, T] actions -> int32[B]`` costs of complete orders from the start."""
        return jax.jit(jax.vmap(lambda acts: self.play(self.init, acts).cost))

    def order_costs(self, orders) -> np.ndarray:
        """int64[B] costs of the orders ``orders`` (vertex numbers, int[B, T])."""
        acts = jnp.asarray(np.asarray(orders, dtype=np.int32) - 1)
        return np.asarray(self.order_costs_fn(acts)).astype(np.int64)

    def batch(self, size: int):
        """The initial state broadcast to a batch of ``size`` (leading axis)."""
        return jax.tree.map(lambda x: jnp.broadcast_to(x, (size,) + x.shape), self.init)


_CACHE: dict[tuple[str, str, str], Evaluator] = {}
_CACHE_SIZE = 16


def evaluator(graph: Graph, *, backend: str = "auto") -> Evaluator:
    """An `Evaluator` for `graph`, shared by later calls for the same graph structure (so that
    the jitted searches built on it compile once per graph and process).

    Args:
      graph: the graph.
      backend: "auto" (bitset for scalar graphs, else env), "bitset" or "env".

    Raises:
      ValueError: "bitset" requested for a graph that is not scalar.
    """
    if backend == "auto":
        backend = "bitset" if is_scalar_graph(graph) else "env"
    key = (graph.fingerprint, graph.cost_model, backend)
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _make(graph, backend)
    return _CACHE[key]


def _make(graph: Graph, backend: str) -> Evaluator:
    actions = np.asarray(graph.intermediates, dtype=np.int32) - 1
    if backend == "bitset":
        if not is_scalar_graph(graph):
            raise ValueError("the bitset back end needs a scalar graph (all edges dense 1x1)")
        return Evaluator(graph, "bitset", _bitset_init(graph), _bitset_step, actions)
    if backend == "env":
        return Evaluator(graph, "env", env_lib.init_state(graph), _env_step, actions)
    raise ValueError(f"backend must be 'auto', 'bitset' or 'env', got {backend!r}")
