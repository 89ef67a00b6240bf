"""Demonstrations: good orders found without the network, replayed into training examples.

Expert iteration's warm start. Before training, every task gets the forward, reverse and
Markowitz orders and the order of a short plain search (`alphagrad.agents.search`,
``demo_seconds`` per task). Each is replayed through the env core (`demo_episodes`) into
(state, one-hot target on the demonstrated action, true normalised return-to-go) examples, kept
in a buffer of their own that self-play never overwrites, and a fixed fraction of every
training minibatch comes from it. The network imitates the demonstrations while its search
improves on them.

The demonstrations only train the network: a run's best order is always one that a game of
the agent played (`alphagrad.agents.alphazero._train`), and the best demonstration's cost is
reported beside it, so a reader can tell the agent's result from the search that taught it.
Only a task that no game of the agent has finished yet (a time limit used up by the
demonstrations and compilation, or a Ctrl-C) gets the best demonstration or classic order as
its order file, labelled as such (`fallback_order`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad import graph as graph_lib
from alphagrad import orders
from alphagrad.agents.alphazero._config import AlphaZeroConfig
from alphagrad.agents.alphazero._core import Tasks, demo_episodes
from alphagrad.agents.alphazero._record import BestOrder, fallback_label
from alphagrad.agents.alphazero._replay import ReplayBuffer, replay_add
from alphagrad.errors import AlphagradError
from alphagrad.graph import Graph

__all__ = ["Demonstration", "demo_orders", "fallback_order", "fill_demos"]


@dataclasses.dataclass(frozen=True)
class Demonstration:
    """One demonstrated order.

    Attributes:
      task: index of its task.
      source: "forward", "reverse", "markowitz", "search:<method>", or "agent" for the agent's
        own best order (self-imitation; not a demonstration in the reports).
      order: the vertex numbers, every intermediate once.
      cost: its multiplications (``graph.cost``).
    """

    task: int
    source: str
    order: tuple[int, ...]
    cost: int


def demo_orders(graphs: Sequence[Graph], config: AlphaZeroConfig) -> list[Demonstration]:
    """The demonstrations of each graph: the classic orders and, if ``demo_seconds > 0``, the
    order of ``alphagrad.agents.search(graph, demo_method, seconds=demo_seconds, seed=seed)``
    (with ``minutes`` set, at most ``minutes / 4`` for all graphs together).
    Duplicate orders are kept once; orders costing more than ``demo_max_ratio`` times the
    graph's best demonstration are dropped. At most 4 per graph; none if not ``use_demos``."""
    if not config.use_demos:
        return []
    from alphagrad.agents import search

    seconds = config.demo_seconds
    if config.minutes is not None:  # leave most of a time-limited run to the agent
        seconds = min(seconds, 0.25 * 60.0 * config.minutes / len(graphs))
    found: list[Demonstration] = []
    for k, g in enumerate(graphs):
        mine: list[Demonstration] = []
        candidates = [(name, orders.resolve(g, name)) for name in ("forward", "reverse", "markowitz")]
        if seconds > 0:
            result = search(g, config.demo_method, seconds=seconds, seed=config.seed)
            candidates.append((f"search:{config.demo_method}", list(result.order)))
        for source, order in candidates:
            order = tuple(int(v) for v in order)
            if any(d.order == order for d in mine):
                continue
            mine.append(Demonstration(task=k, source=source, order=order, cost=graph_lib.cost(g, list(order))))
        best = min(d.cost for d in mine)
        found += [d for d in mine if d.cost <= config.demo_max_ratio * best]
    return found


def fallback_order(graph: Graph, demonstrations: Sequence[Mapping[str, Any]]) -> BestOrder:
    """The order file of a task that no game of the agent has finished: the cheapest of the
    classic orders and `demonstrations` (``{"source", "order"}`` each), re-scored with
    ``graph.cost``, its source labelled by `fallback_label` ("classic: reverse",
    "demonstration: search:best"). Ties go to the classic order."""
    candidates = [(name, orders.resolve(graph, name)) for name in graph_lib.CLASSIC_ORDERS]
    candidates += [(str(d["source"]), [int(v) for v in d["order"]]) for d in demonstrations]
    scored = [(graph_lib.cost(graph, order), k) for k, (_, order) in enumerate(candidates)]
    cost, k = min(scored)
    source, order = candidates[k]
    return BestOrder(tuple(order), cost, fallback_label(source))


def fill_demos(buffer: ReplayBuffer, tasks: Tasks, demos: Sequence[Demonstration], smoothing: float,
               xla_opt_level: int | None = None) -> ReplayBuffer:  # fmt: skip
    """Replays `demos` into the (empty) demonstration `buffer` and checks that the env scores each
    as ``graph.cost`` did. Returns the filled buffer (its size is the number of demonstrated
    moves; it must hold them all). `xla_opt_level` as in `AlphaZeroConfig`."""
    if not demos:
        return buffer
    V = tasks.initial.eliminable.shape[-1]
    length = max(len(d.order) for d in demos)
    actions = np.zeros((len(demos), length), np.int32)
    for i, d in enumerate(demos):
        actions[i, : len(d.order)] = np.asarray(d.order, np.int32) - 1
        if max(d.order) > V:
            raise AlphagradError(f"internal error: demonstration vertex {max(d.order)} beyond {V} slots")
    task = jnp.asarray([d.task for d in demos], jnp.int32)
    capacity = buffer.data.edges.shape[1]
    final, items, valid = _replay_fn(float(smoothing), capacity, xla_opt_level)(tasks, task, jnp.asarray(actions))
    costs = np.asarray(final.cost)
    for d, cost in zip(demos, costs):
        if int(cost) != d.cost:
            raise AlphagradError(f"internal error: the env scored a demonstration {int(cost)}, graph.cost {d.cost}")
    moves = int(np.asarray(valid).sum())
    if moves > buffer.capacity:
        raise AlphagradError(f"internal error: {moves} demonstrated moves exceed the buffer's {buffer.capacity}")
    return replay_add(buffer, items, valid)


@functools.cache
def _replay_fn(smoothing: float, capacity: int, xla_opt_level: int | None):
    options = None if xla_opt_level is None else {"xla_backend_optimization_level": xla_opt_level}
    return jax.jit(lambda tasks, task, actions: demo_episodes(tasks, task, actions, smoothing, capacity),
                   compiler_options=options)  # fmt: skip
