"""Batched, jitted scoring of elimination orders (the inner loop of annealing and beam search).

An `Evaluator` wraps one graph as a pure ``step(state, action) -> state`` over a fixed-size
pytree, so that thousands of orders are scored at once with ``jax.vmap``. It runs on one of the
two jitted cores of `alphagrad.env`:

- ``"bitset"`` for scalar graphs (`alphagrad.env.is_scalar_graph`): `alphagrad.env.bitset_step`,
  successor sets as bit words, O(N * W) word operations a step.
- ``"env"`` for every other graph: `alphagrad.env.step` with the graph's cost model tables.

Actions are vertex numbers minus one, as in `alphagrad.env`. An illegal action (a vertex that is
eliminated, an output, or padding) is a no-op in both back ends, so an order can be completed by
replaying any full order: vertices already eliminated are skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad import env as env_lib
from alphagrad.errors import AlphagradError
from alphagrad.graph import CostModel, Graph, cost_model_of

__all__ = ["Evaluator", "evaluator", "order_seconds"]


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


#: Conservative throughput of the two cores on a CPU (state words or cells touched per second,
#: measured near 1.7e9 and 1.6e10 on a 2-core VM): only for predicting, before anything is built
#: or compiled, whether a search can score enough orders within its time limit.
_CELLS_PER_SECOND = {"bitset": 1e9, "env": 5e9}


def _backend_of(graph: Graph, backend: str) -> str:
    if backend == "auto":
        return "bitset" if env_lib.is_scalar_graph(graph) else "env"
    if backend not in ("bitset", "env"):
        raise ValueError(f"backend must be 'auto', 'bitset' or 'env', got {backend!r}")
    return backend


def order_seconds(graph: Graph, *, backend: str = "auto") -> float:
    """Predicted seconds to score one complete order of `graph` on the batched core (conservative).

    Infinite where the batched cores cannot hold the graph at all (labelled structures whose
    tables do not close within the env's codes). Each of the T steps of an order touches the whole state: (V + I) x ceil(V / 32) bit words on
    the bitset core, the (V + I) x V code matrix on the env core. So a step grows with V² and an
    order with T·V²: about 0.3 ms per order at 200 vertices on the bitset core but 30 ms at 1,000
    and 3 s at 10,000, where annealing and beam search cannot score enough orders to matter (and
    the env core's state alone would take 400 MB per order scored at once).
    """
    model = cost_model_of(graph)
    if not isinstance(model, CostModel):  # labelled structures: the env needs them closed
        try:
            model.tables(graph)
        except AlphagradError:
            return math.inf  # the batched cores cannot hold this graph's tables
    backend = _backend_of(graph, backend)
    V, N = graph.num_vertices, graph.num_vertices + graph.num_inputs
    cells = N * max(1, (V + 31) // 32) if backend == "bitset" else N * V
    return graph.num_intermediates * cells / _CELLS_PER_SECOND[backend]


_CACHE: dict[tuple[str, str, str], Evaluator] = {}
_CACHE_SIZE = 16


def evaluator(graph: Graph, *, backend: str = "auto") -> Evaluator:
    """An `Evaluator` for `graph`, shared by later calls for the same graph structure (so that
    the jitted searches built on it compile once per graph and process).

    Args:
      graph: the graph.
      backend: "auto" (bitset for scalar graphs, else env), "bitset" or "env".

    Raises:
      ValueError: an unknown back end, or "bitset" requested for a graph that is not scalar
        (`alphagrad.env.StateSizeError`).
    """
    backend = _backend_of(graph, backend)
    key = (graph.fingerprint, graph.cost_model, backend)
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        # Concrete arrays even when called under a caller's jit or vmap trace: the cached
        # evaluator outlives that trace, and a leaked tracer would break every later search.
        with jax.ensure_compile_time_eval():
            _CACHE[key] = _make(graph, backend)
    return _CACHE[key]


def _make(graph: Graph, backend: str) -> Evaluator:
    actions = np.asarray(graph.intermediates, dtype=np.int32) - 1
    if backend == "bitset":
        return Evaluator(graph, "bitset", env_lib.bitset_init(graph), env_lib.bitset_step, actions)
    return Evaluator(graph, "env", env_lib.init_state(graph), _env_step, actions)
