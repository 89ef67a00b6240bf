"""Using a trained network: search for an order of a graph, without training."""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp

from alphagrad import graph as graph_lib
from alphagrad.agents.alphazero._config import AlphaZeroConfig
from alphagrad.agents.alphazero._core import compiler_options, play_episode
from alphagrad.agents.alphazero._search import SearchSettings, make_network
from alphagrad.agents.alphazero._checkpoints import load_params
from alphagrad.agents.alphazero._tasks import make_tasks
from alphagrad.agents.alphazero._train import TrainResult
from alphagrad.errors import AlphagradError
from alphagrad.graph import Graph

__all__ = ["solve", "SolveResult"]


@dataclasses.dataclass(frozen=True)
class SolveResult:
    """The outcome of `solve`.

    Attributes:
      order: the cheapest order the games found (vertex numbers).
      cost: its multiplications (``graph.cost``).
      costs: the cost of every game played.
      baselines: ``{"forward", "reverse", "markowitz"}`` costs of the graph.
    """

    order: list[int]
    cost: int
    costs: list[int]
    baselines: dict[str, int]


@functools.cache
def _episode_fn(config: AlphaZeroConfig, settings: SearchSettings, length: int):
    net = make_network(config)

    def run(params, tasks, key):
        task = jnp.zeros((config.num_games,), jnp.int32)
        final, _, _ = play_episode(net, params, tasks, task, key, settings, length)
        return final.order, final.cost

    return jax.jit(run, compiler_options=compiler_options(config))


def solve(
    graph: Graph,
    model: str | os.PathLike | TrainResult,
    *,
    num_simulations: int | None = None,
    num_games: int = 8,
    gumbel_scale: float | None = None,
    seed: int = 0,
) -> SolveResult:
    """Plays `num_games` games of `graph` in parallel, each move chosen by search with a trained
    network, and returns the cheapest order. The graph need not be one the network trained on.

    Args:
      graph: the graph to order.
      model: a run directory written by `train` (``--out`` of ``alphagrad train``; its latest
        checkpoint is used) or a `TrainResult`.
      num_simulations: search simulations per move (default: the training config's).
      num_games: games played (a batch; they differ by their Gumbel noise).
      gumbel_scale: root noise (default: the training config's; 0 with one game, which makes
        the search deterministic).
      seed: PRNG seed.
    """
    if isinstance(model, TrainResult):
        params, config = model.params, model.config
    else:
        params, config = load_params(os.fspath(model))
    if num_games < 1:
        raise AlphagradError(f"num_games must be >= 1, got {num_games}")
    if gumbel_scale is None:
        gumbel_scale = config.gumbel_scale if num_games > 1 else 0.0
    settings = SearchSettings.from_config(
        config, num_simulations=num_simulations or config.num_simulations, gumbel_scale=float(gumbel_scale)
    )
    tasks, (baselines,) = make_tasks([graph])
    run = _episode_fn(dataclasses.replace(config, num_games=num_games), settings, graph.num_intermediates)
    order, cost = jax.device_get(run(params, tasks, jax.random.PRNGKey(seed)))
    best = int(cost.argmin())
    steps = [int(v) for v in order[best][: graph.num_intermediates]]
    checked = graph_lib.cost(graph, steps)
    if checked != int(cost[best]):
        raise AlphagradError(f"internal error: the env scored the order {int(cost[best])}, graph.cost {checked}")
    return SolveResult(order=steps, cost=checked, costs=[int(c) for c in cost], baselines=baselines)
