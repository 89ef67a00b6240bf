"""Packing the graphs of a run into arrays: task names, the padded `Tasks`, the device mesh."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from alphagrad import env
from alphagrad import graph as graph_lib
from alphagrad.agents.alphazero._core import AXIS, Tasks
from alphagrad.errors import AlphagradError
from alphagrad.graph import Graph

__all__ = ["default_mesh", "make_tasks", "normalise_graphs", "task_names"]

_BASELINES = ("forward", "reverse", "markowitz")


def task_names(graphs: Sequence[Graph]) -> list[str]:
    """Distinct labels for the graphs (their names, numbered where missing or repeated)."""
    names = []
    for i, g in enumerate(graphs):
        base = g.name or f"task{i}"
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}#{k}"
        names.append(name)
    return names


def normalise_graphs(graphs: Graph | Sequence[Graph] | Mapping[str, Graph]) -> tuple[list[Graph], list[str]]:
    """The graphs of `train`'s argument (a graph, a list, or a mapping name -> graph) and their task names.

    Raises:
      AlphagradError: no graph, or something that is not a `Graph`.
    """
    if isinstance(graphs, Graph):
        graphs = [graphs]
    if isinstance(graphs, Mapping):
        names, graphs = list(graphs.keys()), list(graphs.values())
    else:
        graphs = list(graphs)
        names = task_names(graphs)
    if not graphs:
        raise AlphagradError("train needs at least one graph")
    if not all(isinstance(g, Graph) for g in graphs):
        raise AlphagradError("train takes Graph objects (use alphagrad.tasks.load_graph('ref:NAME') to get one)")
    return graphs, [str(n) for n in names]


def make_tasks(graphs: Sequence[Graph], *, max_vertices: int | None = None, max_inputs: int | None = None):
    """Pads `graphs` to one state size. Returns (`Tasks`, baselines: list of {name: cost}).

    Raises:
      AlphagradError: the graphs use different cost models, or one has no intermediate vertex.
    """
    models = {g.cost_model for g in graphs}
    if len(models) > 1:
        raise AlphagradError(
            f"the tasks use different cost models ({', '.join(sorted(models))}); train them in separate runs"
        )
    for g in graphs:
        if g.num_intermediates == 0:
            raise AlphagradError(f"graph {g.name!r} has no intermediate vertex: there is nothing to order")
    V = max_vertices or max(g.num_vertices for g in graphs)
    I = max_inputs or max(g.num_inputs for g in graphs)
    baselines = [{name: graph_lib.cost(g, name) for name in _BASELINES} for g in graphs]
    initial = env.stack([env.init_state(g, max_vertices=V, max_inputs=I) for g in graphs])
    scale = jnp.asarray([max(1, min(b.values())) for b in baselines], jnp.float32)
    return Tasks(initial=initial, scale=scale), baselines


def default_mesh() -> Mesh:
    """A 1-D mesh over all devices (of all hosts after `jax.distributed.initialize()`), axis "games"."""
    return Mesh(np.asarray(jax.devices()), (AXIS,))
